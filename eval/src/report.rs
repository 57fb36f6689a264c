//! Summaries of `results.jsonl`: one row per config (accuracy with a Wilson 95 % interval,
//! fidelity to the target-only run, NLL, α, E, speedup against target-only on the same problems
//! and seeds, budget spent), as CSV and Markdown.

use std::collections::{BTreeSet, HashMap};

use serde::Serialize;

use crate::runner::{Record, BASELINE};

#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub config: String,
    pub n: usize,
    pub errors: usize,
    pub accuracy: f64,
    pub accuracy_ci95: (f64, f64),
    pub fidelity: f64,
    pub mean_nll: f64,
    pub alpha: f64,
    #[serde(rename = "E")]
    pub e: f64,
    pub tokens_per_s: f64,
    pub speedup: f64,
    pub budget_spent: f64,
    pub lossy_accepted: f64,
}

/// Wilson score interval at 95 %.
pub fn wilson(successes: usize, n: usize) -> (f64, f64) {
    if n == 0 {
        return (0.0, 0.0);
    }
    let z = 1.959_963_984_540_054f64;
    let nf = n as f64;
    let p = successes as f64 / nf;
    let denom = 1.0 + z * z / nf;
    let center = (p + z * z / (2.0 * nf)) / denom;
    let half = z * (p * (1.0 - p) / nf + z * z / (4.0 * nf * nf)).sqrt() / denom;
    ((center - half).max(0.0), (center + half).min(1.0))
}

/// One row per config, in order of first appearance (the baseline first).
pub fn summarize(records: &[Record]) -> Vec<Row> {
    let mut names: Vec<String> = vec![BASELINE.to_owned()];
    for r in records {
        if !names.contains(&r.config) && r.config != "-" {
            names.push(r.config.clone());
        }
    }
    let baseline: HashMap<(usize, u64), &Record> = records
        .iter()
        .filter(|r| r.ok && r.config == BASELINE)
        .map(|r| ((r.problem, r.seed), r))
        .collect();
    names
        .into_iter()
        .filter_map(|name| {
            let rs: Vec<&Record> = records.iter().filter(|r| r.config == name).collect();
            if rs.is_empty() {
                return None;
            }
            let ok: Vec<&&Record> = rs.iter().filter(|r| r.ok).collect();
            let n = ok.len();
            let nf = n.max(1) as f64;
            let correct = ok.iter().filter(|r| r.correct).count();
            let tokens: usize = ok.iter().map(|r| r.completion_tokens).sum();
            let calls: usize = ok.iter().map(|r| r.target_calls).sum();
            let (acc, rej): (usize, usize) = ok
                .iter()
                .fold((0, 0), |a, r| (a.0 + r.accepted_tokens, a.1 + r.rejections));
            let secs: f64 = ok.iter().map(|r| r.decode_s).sum();
            // Speed against target-only over the same (problem, seed) pairs.
            let keys: BTreeSet<(usize, u64)> = ok
                .iter()
                .map(|r| (r.problem, r.seed))
                .filter(|k| baseline.contains_key(k))
                .collect();
            let (bt, bs) = keys.iter().fold((0usize, 0f64), |a, k| {
                (
                    a.0 + baseline[k].completion_tokens,
                    a.1 + baseline[k].decode_s,
                )
            });
            let (ct, cs) = ok
                .iter()
                .filter(|r| keys.contains(&(r.problem, r.seed)))
                .fold((0usize, 0f64), |a, r| {
                    (a.0 + r.completion_tokens, a.1 + r.decode_s)
                });
            let speedup = if bs > 0.0 && cs > 0.0 && bt > 0 {
                (ct as f64 / cs) / (bt as f64 / bs)
            } else {
                0.0
            };
            Some(Row {
                config: name.clone(),
                n,
                errors: rs.len() - n,
                accuracy: correct as f64 / nf,
                accuracy_ci95: wilson(correct, n),
                fidelity: if name == BASELINE {
                    1.0
                } else {
                    ok.iter().filter(|r| r.fidelity == Some(true)).count() as f64 / nf
                },
                mean_nll: if tokens > 0 {
                    ok.iter().map(|r| r.nll_sum).sum::<f64>() / tokens as f64
                } else {
                    0.0
                },
                alpha: if acc + rej > 0 {
                    acc as f64 / (acc + rej) as f64
                } else {
                    0.0
                },
                e: if calls > 0 {
                    tokens as f64 / calls as f64
                } else {
                    0.0
                },
                tokens_per_s: if secs > 0.0 {
                    tokens as f64 / secs
                } else {
                    0.0
                },
                speedup,
                budget_spent: ok.iter().map(|r| r.budget_spent).sum::<f64>() / nf,
                lossy_accepted: ok.iter().map(|r| r.lossy_accepted as f64).sum::<f64>() / nf,
            })
        })
        .collect()
}

const HEADER: [&str; 12] = [
    "config",
    "n",
    "accuracy",
    "accuracy_ci95",
    "fidelity",
    "mean_nll",
    "alpha",
    "E",
    "speedup",
    "budget_spent",
    "lossy_accepted",
    "errors",
];

fn cells(r: &Row) -> [String; 12] {
    [
        r.config.clone(),
        r.n.to_string(),
        format!("{:.3}", r.accuracy),
        format!("{:.3}-{:.3}", r.accuracy_ci95.0, r.accuracy_ci95.1),
        format!("{:.3}", r.fidelity),
        format!("{:.4}", r.mean_nll),
        format!("{:.3}", r.alpha),
        format!("{:.2}", r.e),
        format!("{:.2}", r.speedup),
        format!("{:.2}", r.budget_spent),
        format!("{:.2}", r.lossy_accepted),
        r.errors.to_string(),
    ]
}

pub fn to_csv(rows: &[Row]) -> String {
    let quote = |s: &str| {
        if s.contains([',', '"']) {
            format!("\"{}\"", s.replace('"', "\"\""))
        } else {
            s.to_owned()
        }
    };
    let mut out = HEADER.join(",") + "\n";
    for r in rows {
        out += &cells(r)
            .iter()
            .map(|c| quote(c))
            .collect::<Vec<_>>()
            .join(",");
        out.push('\n');
    }
    out
}

pub fn to_markdown(rows: &[Row]) -> String {
    let mut out = format!(
        "| {} |\n|{}\n",
        HEADER.join(" | "),
        "---|".repeat(HEADER.len())
    );
    for r in rows {
        let mut c = cells(r);
        c[0] = format!("`{}`", c[0]);
        out += &format!("| {} |\n", c.join(" | "));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(
        problem: usize,
        config: &str,
        answer: &str,
        gold: &str,
        tokens: usize,
        secs: f64,
    ) -> Record {
        Record {
            problem,
            config: config.into(),
            ok: true,
            answer: Some(answer.into()),
            gold: Some(gold.into()),
            correct: answer == gold,
            fidelity: if config == BASELINE { None } else { Some(true) },
            completion_tokens: tokens,
            target_calls: tokens / 2,
            decode_s: secs,
            ..Default::default()
        }
    }

    #[test]
    fn summarizes_accuracy_fidelity_and_speedup() {
        let mut rs = vec![
            rec(0, BASELINE, "1", "1", 100, 1.0),
            rec(1, BASELINE, "2", "3", 100, 1.0),
        ];
        rs.push(rec(0, "topk:3@budget=2", "1", "1", 100, 0.5));
        let mut r = rec(1, "topk:3@budget=2", "5", "3", 100, 0.5);
        r.fidelity = Some(false);
        rs.push(r);
        rs.push(Record {
            problem: 2,
            config: "topk:3@budget=2".into(),
            error: Some("boom".into()),
            ..Default::default()
        });
        let rows = summarize(&rs);
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].config, BASELINE);
        assert_eq!(rows[0].accuracy, 0.5);
        assert_eq!(rows[1].n, 2);
        assert_eq!(rows[1].errors, 1);
        assert_eq!(rows[1].fidelity, 0.5);
        assert!((rows[1].speedup - 2.0).abs() < 1e-9);
        assert_eq!(rows[1].e, 2.0);
        let (lo, hi) = wilson(5, 10);
        assert!(lo < 0.5 && hi > 0.5 && (lo - 0.2366).abs() < 1e-3);
        let csv = to_csv(&rows);
        assert!(csv.starts_with(
            "config,n,accuracy,accuracy_ci95,fidelity,mean_nll,alpha,E,speedup,budget_spent"
        ));
        assert!(to_markdown(&rows).contains("| `topk:3@budget=2` | 2 |"));
    }
}
