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

// ---- SentencePiece vocabularies (Gemma-3) ----

use specd_engine::gguf::{write_gguf, GgufFile, Value};
use specd_engine::pipeline::encode_prompt;
use specd_engine::presets;
use specd_engine::tokenizer::Tokenizer;

/// The Gemma-3-270M preset's tokenizer, built from its GGUF metadata.
fn gemma() -> Tokenizer {
    let p = presets::find("gemma3-270m-q4_k_m").expect("preset");
    let path = presets::ensure(p, &|m| eprintln!("{m}"))
        .unwrap_or_else(|e| panic!("cannot fetch {}: {e:#}", p.name));
    let f = GgufFile::open(&path).unwrap();
    Tokenizer::from_gguf(&f).unwrap()
}

struct FixtureLine {
    text: String,
    parse_special: bool,
    ids: Vec<u32>,
    /// What llama.cpp decodes `ids` to.
    decoded: String,
}

fn gemma_fixture() -> Vec<FixtureLine> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/tokenizer/gemma3-270m.tokenizer-fixture.jsonl");
    std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .lines()
        .map(|line| {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            FixtureLine {
                text: v["text"].as_str().unwrap().to_owned(),
                parse_special: v["parse_special"].as_bool().unwrap(),
                ids: v["ids"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|x| x.as_u64().unwrap() as u32)
                    .collect(),
                decoded: v["decoded"].as_str().unwrap().to_owned(),
            }
        })
        .collect()
}

#[test]
fn gemma_reproduces_the_llama_cpp_fixture() {
    let t = gemma();
    let lines = gemma_fixture();
    assert_eq!(lines.len(), 100);
    let (mut bad_ids, mut bad_text) = (Vec::new(), Vec::new());
    for (i, l) in lines.iter().enumerate() {
        let got = t.encode(&l.text, l.parse_special).unwrap();
        if got != l.ids {
            bad_ids.push(format!(
                "line {} ({:?}, parse_special={}):\n  got  {got:?}\n  want {:?}",
                i + 1,
                l.text,
                l.parse_special,
                l.ids
            ));
        }
        let back = t.decode(&l.ids).unwrap();
        if back != l.decoded {
            bad_text.push(format!(
                "line {}: decode gives {back:?}, llama.cpp {:?}",
                i + 1,
                l.decoded
            ));
        }
    }
    eprintln!(
        "gemma3-270m: {} of {} fixture lines give llama.cpp's ids, {} of {} its decoded text",
        lines.len() - bad_ids.len(),
        lines.len(),
        lines.len() - bad_text.len(),
        lines.len()
    );
    assert!(bad_ids.is_empty(), "{}", bad_ids.join("\n"));
    assert!(bad_text.is_empty(), "{}", bad_text.join("\n"));
}

/// decode(encode(text)) gives the text back (without special-token parsing), except that a
/// literal "▁" comes back as a space, as in llama.cpp (the fixture's `decoded`).
#[test]
fn gemma_round_trips_the_fixture_texts_and_gsm8k() {
    let t = gemma();
    let mut texts: Vec<(String, String)> = gemma_fixture()
        .into_iter()
        .filter(|l| !l.parse_special)
        .map(|l| (l.text, l.decoded))
        .collect();
    assert_eq!(texts.len(), 50);
    for file in ["gsm8k/train.jsonl", "gsm8k/test_dev.jsonl"] {
        let data = std::fs::read_to_string(shared(file)).expect("GSM8K data");
        for line in data.lines() {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            for field in ["question", "answer"] {
                let text = v[field].as_str().unwrap().to_owned();
                texts.push((text.clone(), text));
            }
        }
    }
    let mut bad = Vec::new();
    for (text, want) in &texts {
        let ids = t.encode(text, false).unwrap();
        let back = t.decode(&ids).unwrap();
        if &back != want {
            bad.push(format!("{text:?} -> {ids:?} -> {back:?}"));
        }
    }
    eprintln!(
        "gemma3-270m: {} of {} texts round-trip",
        texts.len() - bad.len(),
        texts.len()
    );
    assert!(bad.is_empty(), "{}", bad[..bad.len().min(5)].join("\n"));
    let literal = texts.iter().filter(|(t, d)| t != d).count();
    assert_eq!(
        literal, 1,
        "only the text with a literal ▁ decodes differently"
    );
}

#[test]
fn gemma_prompts_start_with_bos_once() {
    let t = gemma();
    assert!(t.add_bos);
    assert_eq!(t.bos_id, Some(2));
    assert_eq!(t.token(2), Some("<bos>"));
    assert!(t.is_eos(1) && t.is_eos(106), "{:?}", t.eos_ids);
    assert_eq!(t.vocab_size(), 262144);
    assert!(t.source().contains("GGUF metadata"), "{}", t.source());
    let plain = t.encode("Hello world", true).unwrap();
    assert_eq!(plain, [9259, 1902]);
    assert_eq!(
        encode_prompt(&t, "Hello world", false).unwrap(),
        [2, 9259, 1902]
    );
    // A text that already starts with <bos> keeps a single one.
    assert_eq!(
        encode_prompt(&t, "<bos>Hello world", false).unwrap(),
        [2, 9259, 1902]
    );
    assert!(
        t.apply_chat_template("Hi").is_err(),
        "a base model has no chat template"
    );
}

#[test]
fn smollm2_prompts_get_no_bos() {
    let d = common::draft();
    assert!(!d.tokenizer.add_bos);
    let text = "Janet has 3 apples.";
    assert_eq!(
        encode_prompt(&d.tokenizer, text, false).unwrap(),
        d.tokenizer.encode(text, true).unwrap()
    );
    let chat = d.tokenizer.apply_chat_template(text).unwrap();
    assert_eq!(
        encode_prompt(&d.tokenizer, text, true).unwrap(),
        d.tokenizer.encode(&chat, true).unwrap()
    );
}

fn write_metadata_gguf(path: &std::path::Path, kv: &[(&str, Value)]) {
    let md: std::collections::BTreeMap<String, Value> =
        kv.iter().map(|(k, v)| (k.to_string(), v.clone())).collect();
    let mut w = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    write_gguf(&mut w, &md, &[]).unwrap();
}

#[test]
fn unsupported_tokenizer_models_fail_clearly() {
    let dir = tempfile::tempdir().unwrap();
    for model in ["bert", "t5", "rwkv"] {
        let path = dir.path().join(format!("{model}.gguf"));
        write_metadata_gguf(
            &path,
            &[
                ("tokenizer.ggml.model", Value::String(model.into())),
                (
                    "tokenizer.ggml.tokens",
                    Value::Array(vec![Value::String("a".into())]),
                ),
            ],
        );
        let err = Tokenizer::from_gguf(&GgufFile::open(&path).unwrap())
            .err()
            .expect("unsupported model must fail");
        let msg = format!("{err:#}");
        assert!(
            msg.contains(&path.display().to_string())
                && msg.contains(&format!("{model:?}"))
                && msg.contains("\"gpt2\"")
                && msg.contains("\"llama\""),
            "{msg}"
        );
    }
}

#[test]
fn tokenizer_json_beside_a_gguf_wins() {
    let d = common::draft();
    let dir = tempfile::tempdir().unwrap();
    d.tokenizer.save_hf_dir(dir.path()).unwrap();
    // Metadata the GGUF path could not build a tokenizer from: tokenizer.json must be used.
    let path = dir.path().join("model.gguf");
    write_metadata_gguf(
        &path,
        &[("tokenizer.ggml.model", Value::String("bert".into()))],
    );
    let f = GgufFile::open(&path).unwrap();
    assert!(Tokenizer::from_gguf(&f).is_err());
    let t = Tokenizer::for_gguf(&f).unwrap();
    assert!(t.source().contains("tokenizer.json"), "{}", t.source());
    assert_eq!(t.fingerprint(), d.tokenizer.fingerprint());
    assert!(!t.add_bos);
    let text = "<|im_start|>user\nWhat is 2+3?<|im_end|>\n";
    assert_eq!(
        t.encode(text, true).unwrap(),
        d.tokenizer.encode(text, true).unwrap()
    );
    assert_eq!(t.chat_template, d.tokenizer.chat_template);
}

/// llama.cpp's own SentencePiece test vocabulary (Llama-2, with the dummy prefix) and its expected
/// ids, when a llama.cpp checkout is named by SPECD_LLAMA_CPP_DIR (not part of this repository).
#[test]
fn llama_cpp_spm_test_vocabulary() {
    let Some(root) = std::env::var_os("SPECD_LLAMA_CPP_DIR") else {
        eprintln!("SPECD_LLAMA_CPP_DIR is not set: skipped");
        return;
    };
    let models = PathBuf::from(root).join("models");
    let gguf = models.join("ggml-vocab-llama-spm.gguf");
    let t = Tokenizer::from_gguf(&GgufFile::open(&gguf).unwrap()).unwrap();
    assert!(t.add_bos);
    let inp = std::fs::read_to_string(models.join("ggml-vocab-llama-spm.gguf.inp")).unwrap();
    let out = std::fs::read_to_string(models.join("ggml-vocab-llama-spm.gguf.out")).unwrap();
    let sep = "\n__ggml_vocab_test__\n";
    let mut texts: Vec<&str> = inp.split(sep).collect();
    if texts.last() == Some(&"") {
        texts.pop();
    }
    let outs: Vec<&str> = out.lines().collect();
    assert_eq!(texts.len(), outs.len());
    let mut bad = Vec::new();
    for (text, o) in texts.iter().zip(&outs) {
        let want: Vec<u32> = o.split_whitespace().map(|x| x.parse().unwrap()).collect();
        let got = t.encode(text, false).unwrap();
        if got != want {
            bad.push(format!("{text:?}: got {got:?}, want {want:?}"));
        }
        let back = t.decode(&got).unwrap();
        assert_eq!(&back, text, "round trip");
    }
    eprintln!(
        "llama-spm: {} of {} texts match",
        texts.len() - bad.len(),
        texts.len()
    );
    assert!(bad.is_empty(), "{}", bad.join("\n"));
}

/// The chat templates of Llama 3.1/3.2, Qwen 2.5/3, Mistral Nemo and Gemma 2 (from llama.cpp's
/// models/templates) render as Python's jinja2 renders them the way transformers does
/// (fixtures/chat_templates/make_expected.py), and a template's raise_exception is an error.
#[test]
fn chat_templates_render_as_jinja2_does() {
    use specd_engine::tokenizer::{render_chat_template, strftime_utc_now};
    let dir =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/chat_templates");
    let expected = std::fs::read_to_string(dir.join("expected.jsonl")).unwrap();
    let (mut rendered, mut raised) = (0, 0);
    for line in expected.lines() {
        let e: serde_json::Value = serde_json::from_str(line).unwrap();
        let name = e["template"].as_str().unwrap();
        let tpl = std::fs::read_to_string(dir.join(format!("{name}.jinja"))).unwrap();
        let msgs: Vec<(String, String)> = e["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| {
                (
                    m[0].as_str().unwrap().to_owned(),
                    m[1].as_str().unwrap().to_owned(),
                )
            })
            .collect();
        let refs: Vec<(&str, &str)> = msgs.iter().map(|(r, c)| (r.as_str(), c.as_str())).collect();
        let got = render_chat_template(
            &tpl,
            &refs,
            e["bos"].as_str().unwrap(),
            e["eos"].as_str().unwrap(),
        );
        match (e.get("expected").and_then(|v| v.as_str()), got) {
            (Some(want), Ok(got)) => {
                let got = got.replace(&strftime_utc_now("%d %b %Y"), "@DATE@");
                assert_eq!(got, want, "{name} {msgs:?}");
                rendered += 1;
            }
            (None, Err(err)) => {
                let want = e["error"].as_str().unwrap();
                assert!(
                    format!("{err:#}").contains(want),
                    "{name}: {err:#} vs {want}"
                );
                raised += 1;
            }
            (want, got) => panic!("{name} {msgs:?}: expected {want:?}, got {got:?}"),
        }
    }
    assert_eq!((rendered, raised), (17, 1));
}
