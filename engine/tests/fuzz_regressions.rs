//! Inputs `scripts/fuzz.sh` found crashing (docs/fuzzing.md), replayed through what the fuzzing
//! target ran: each must end in a value or an error, never a panic.

use std::path::Path;

use specd_engine::gguf::GgufFile;
use specd_engine::tokenizer::Tokenizer;

fn inputs(target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/fuzz")
        .join(target);
    let mut out: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| {
            let p = e.unwrap().path();
            (p.display().to_string(), std::fs::read(&p).unwrap())
        })
        .collect();
    out.sort();
    out
}

#[test]
fn gguf_inputs_that_crashed_are_errors_now() {
    let found = inputs("gguf");
    assert!(!found.is_empty());
    for (name, bytes) in found {
        // As fuzz/fuzz_targets/gguf.rs: parse, then the configuration and the tokenizer.
        let Ok(f) = GgufFile::from_bytes(Path::new(&name), &bytes) else {
            continue;
        };
        let _ = specd_engine::model::config::from_gguf(&f, None);
        if let Ok(t) = Tokenizer::from_gguf(&f) {
            if let Ok(ids) = t.encode("Hello, world! 12 × 7 = 84", true) {
                let _ = t.decode(&ids);
            }
        }
    }
}
