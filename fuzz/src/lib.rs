//! What the fuzzing targets share: GGUF images of tokenizers built from fuzzed metadata.

use std::collections::BTreeMap;
use std::path::Path;

use specd_engine::gguf::{write_gguf, GgufFile, Value};
use specd_engine::tokenizer::Tokenizer;

/// GPT-2's byte-level alphabet: the token of each byte.
pub fn byte_tokens() -> Vec<String> {
    let printable =
        |b: u32| (33..=126).contains(&b) || (161..=172).contains(&b) || (174..=255).contains(&b);
    let mut next = 256;
    (0..256u32)
        .map(|b| {
            let c = if printable(b) {
                b
            } else {
                next += 1;
                next - 1
            };
            char::from_u32(c).unwrap().to_string()
        })
        .collect()
}

/// A GGUF image holding only `metadata` (no tensors).
pub fn metadata_image(metadata: &BTreeMap<String, Value>) -> Vec<u8> {
    let mut out = Vec::new();
    write_gguf(&mut out, metadata, &[]).expect("writing to memory");
    out
}

/// The tokenizer specd builds from `metadata`, if it builds one.
pub fn tokenizer_of(metadata: &BTreeMap<String, Value>) -> Option<Tokenizer> {
    let f = GgufFile::from_bytes(Path::new("fuzz.gguf"), &metadata_image(metadata)).ok()?;
    Tokenizer::from_gguf(&f).ok()
}

/// A byte-level BPE tokenizer with no merges, an end-of-text token and a chat template.
pub fn tiny_tokenizer() -> Tokenizer {
    let mut tokens = byte_tokens();
    tokens.push("<|end|>".into());
    let n = tokens.len();
    let mut m = BTreeMap::new();
    m.insert("tokenizer.ggml.model".into(), Value::String("gpt2".into()));
    m.insert(
        "tokenizer.ggml.tokens".into(),
        Value::Array(tokens.into_iter().map(Value::String).collect()),
    );
    let mut types = vec![Value::I32(1); n];
    types[n - 1] = Value::I32(3);
    m.insert("tokenizer.ggml.token_type".into(), Value::Array(types));
    m.insert("tokenizer.ggml.merges".into(), Value::Array(Vec::new()));
    m.insert(
        "tokenizer.ggml.eos_token_id".into(),
        Value::U32(n as u32 - 1),
    );
    m.insert(
        "tokenizer.chat_template".into(),
        Value::String("{% for m in messages %}{{ m.role }}: {{ m.content }}\n{% endfor %}".into()),
    );
    tokenizer_of(&m).expect("the tiny tokenizer builds")
}
