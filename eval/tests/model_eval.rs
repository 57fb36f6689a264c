//! A small real GSM8K run: results, reports, and resumption without duplicates after an
//! interruption (a torn last line).

use std::collections::HashSet;
use std::path::PathBuf;

use specd_engine::pipeline::LoadedModel;
use specd_eval::config::parse_configs;
use specd_eval::runner::{load_results, EvalOptions};

fn data() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/data/gsm8k/test_dev.jsonl")
}

#[test]
fn small_run_reports_and_resumes() {
    let log = |m: &str| eprintln!("{m}");
    let target = LoadedModel::load("smollm2-135m-q8_0", &log).unwrap();
    let draft = LoadedModel::load("smollm2-135m-q4_0", &log).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let opts = |limit: usize| EvalOptions {
        data: data(),
        train: None,
        offset: 0,
        limit: Some(limit),
        configs: parse_configs("exact;topk:3@budget=2").unwrap(),
        temperature: 0.0,
        gamma: 4,
        max_tokens: 24,
        seeds: vec![0],
        shots: 0,
        system: None,
        out: dir.path().to_path_buf(),
        coordinator: None,
    };
    specd_eval::run_eval(&opts(1), &target, &draft, "test").unwrap();
    let results = dir.path().join("results.jsonl");
    let first = load_results(&results).unwrap();
    assert_eq!(first.len(), 3, "baseline + 2 configs for one problem");
    assert!(first.iter().all(|r| r.ok && r.completion_tokens > 0));
    let exact = first.iter().find(|r| r.config == "exact").unwrap();
    assert_eq!(
        exact.fidelity,
        Some(true),
        "greedy exact must give the target-only answer"
    );
    // Interrupted mid-write: a torn line at the end.
    let mut text = std::fs::read_to_string(&results).unwrap();
    text.push_str("{\"problem\":1,\"seed\":0,\"config\":\"ex");
    std::fs::write(&results, text).unwrap();
    specd_eval::run_eval(&opts(2), &target, &draft, "test").unwrap();
    let all = load_results(&results).unwrap();
    assert_eq!(all.len(), 6, "two problems × (baseline + 2 configs)");
    let keys: HashSet<_> = all
        .iter()
        .map(|r| (r.problem, r.seed, r.config.clone()))
        .collect();
    assert_eq!(keys.len(), 6);
    // The first problem's records were not run again.
    let raw = std::fs::read_to_string(&results).unwrap();
    assert_eq!(
        raw.lines().filter(|l| l.contains("\"problem\":0,")).count(),
        3
    );
    // Reports.
    let csv = std::fs::read_to_string(dir.path().join("summary.csv")).unwrap();
    let header = csv.lines().next().unwrap();
    for col in [
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
    ] {
        assert!(
            header.split(',').any(|h| h == col),
            "summary.csv lacks {col}: {header}"
        );
    }
    assert_eq!(csv.lines().count(), 4, "header + target-only + 2 configs");
    assert!(std::fs::read_to_string(dir.path().join("summary.md"))
        .unwrap()
        .contains("`topk:3@budget=2`"));
    assert!(std::fs::read_to_string(dir.path().join("pareto.svg"))
        .unwrap()
        .starts_with("<svg"));
    assert_eq!(
        &std::fs::read(dir.path().join("pareto.png")).unwrap()[1..4],
        b"PNG"
    );
    let run: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("run.json")).unwrap())
            .unwrap();
    assert_eq!(run["target"]["name"], "smollm2-135m-q8_0");
    assert_eq!(run["target"]["sha256"].as_str().unwrap().len(), 64);
}

#[test]
fn bad_data_lines_are_recorded_and_do_not_stop_the_run() {
    let log = |m: &str| eprintln!("{m}");
    let target = LoadedModel::load("smollm2-135m-q8_0", &log).unwrap();
    let draft = LoadedModel::load("smollm2-135m-q4_1", &log).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("d.jsonl");
    let good = std::fs::read_to_string(data_path())
        .unwrap()
        .lines()
        .next()
        .unwrap()
        .to_owned();
    std::fs::write(&data, format!("not json\n{good}\n")).unwrap();
    let opts = EvalOptions {
        data,
        train: None,
        offset: 0,
        limit: None,
        configs: parse_configs("exact").unwrap(),
        temperature: 0.0,
        gamma: 4,
        max_tokens: 8,
        seeds: vec![0],
        shots: 0,
        system: None,
        out: dir.path().join("out"),
        coordinator: None,
    };
    specd_eval::run_eval(&opts, &target, &draft, "test").unwrap();
    let rs = load_results(&dir.path().join("out/results.jsonl")).unwrap();
    let bad = rs.iter().find(|r| !r.ok).expect("the bad line is recorded");
    assert!(
        bad.error.as_ref().unwrap().contains("d.jsonl:1"),
        "{:?}",
        bad.error
    );
    assert_eq!(rs.iter().filter(|r| r.ok).count(), 2);
}

fn data_path() -> PathBuf {
    data()
}
