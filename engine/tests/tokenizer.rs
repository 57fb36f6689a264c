//! The tokenizer built from GGUF metadata reproduces llama.cpp's reference ids, round-trips GSM8K,
//! and renders the chat template.

mod common;

use std::path::PathBuf;

fn shared(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/data")
        .join(rel)
}

#[test]
fn reproduces_the_llama_cpp_fixture() {
    let t = common::draft();
    let fixture = std::fs::read_to_string(shared(
        "tokenizer/smollm2-135m-instruct.tokenizer-fixture.jsonl",
    ))
    .expect("fixture file");
    let mut n = 0;
    for (i, line) in fixture.lines().enumerate() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        let text = v["text"].as_str().unwrap();
        let parse_special = v["parse_special"].as_bool().unwrap();
        let want: Vec<u32> = v["ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as u32)
            .collect();
        let got = t.tokenizer.encode(text, parse_special).unwrap();
        assert_eq!(
            got,
            want,
            "fixture line {} ({text:?}, parse_special={parse_special})",
            i + 1
        );
        n += 1;
    }
    assert!(n >= 50, "fixture has {n} lines");
}

#[test]
fn round_trips_gsm8k() {
    let t = common::draft();
    let mut n = 0;
    for file in ["gsm8k/train.jsonl", "gsm8k/test_dev.jsonl"] {
        let data = std::fs::read_to_string(shared(file)).expect("GSM8K data");
        for line in data.lines() {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            for field in ["question", "answer"] {
                let text = v[field].as_str().unwrap();
                let ids = t.tokenizer.encode(text, false).unwrap();
                assert_eq!(t.tokenizer.decode(&ids).unwrap(), text);
                n += 1;
            }
        }
    }
    assert!(n > 16000);
}

#[test]
fn chat_template_and_fingerprint() {
    let (t, d) = (common::target(), common::draft());
    let s = t.tokenizer.apply_chat_template("Hi").unwrap();
    assert!(
        s.starts_with("<|im_start|>system\n")
            && s.ends_with("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"),
        "{s:?}"
    );
    let ids = t.tokenizer.encode(&s, true).unwrap();
    assert_eq!(ids[0], 1, "<|im_start|> is one special token");
    assert_eq!(t.tokenizer.fingerprint(), d.tokenizer.fingerprint());
    assert_eq!(t.tokenizer.fingerprint().len(), 16);
    assert!(t.tokenizer.is_eos(2));
}
