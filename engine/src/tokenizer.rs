//! Tokenizer: from `tokenizer.json` when a model has one, otherwise built from GGUF metadata
//! (`tokenizer.ggml.*`), with the model's chat template and a vocabulary fingerprint.

use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::gguf::GgufFile;

/// GGUF token types (llama.cpp `llama_token_type`).
const TOKEN_TYPE_CONTROL: u64 = 3;
const TOKEN_TYPE_USER_DEFINED: u64 = 4;

pub struct Tokenizer {
    /// Parses special tokens such as `<|im_start|>` in the input text.
    special: tokenizers::Tokenizer,
    /// Treats all input as plain text.
    plain: tokenizers::Tokenizer,
    vocab: Vec<String>,
    pub bos_id: Option<u32>,
    /// Tokens that end generation.
    pub eos_ids: Vec<u32>,
    pub chat_template: Option<String>,
    fingerprint: String,
}

fn fingerprint_of(vocab: &[String]) -> String {
    let mut h = Sha256::new();
    for t in vocab {
        h.update(t.as_bytes());
        h.update([0xffu8]);
    }
    hex::encode(&h.finalize()[..8])
}

/// The pre-tokenizer of llama.cpp's `tokenizer.ggml.pre` name, as a tokenizers JSON value.
fn pre_tokenizer(pre: &str) -> Result<serde_json::Value> {
    let byte_level = |use_regex: bool| json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": use_regex});
    Ok(match pre {
        // GPT-2 regex with every digit split (llama.cpp groups these names together).
        "smollm" | "starcoder" | "refact" | "command-r" | "codeshell" | "exaone" | "minerva-7b" => json!({
            "type": "Sequence",
            "pretokenizers": [{"type": "Digits", "individual_digits": true}, byte_level(true)]
        }),
        "gpt2" | "default" | "gpt-2" => byte_level(true),
        "llama3" | "llama-bpe" | "llama-v3" | "falcon3" | "pixtral" => json!({
            "type": "Sequence",
            "pretokenizers": [
                {"type": "Split", "pattern": {"Regex": "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"}, "behavior": "Isolated", "invert": false},
                byte_level(false)
            ]
        }),
        "qwen2" | "deepseek-r1-qwen" => json!({
            "type": "Sequence",
            "pretokenizers": [
                {"type": "Split", "pattern": {"Regex": "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"}, "behavior": "Isolated", "invert": false},
                byte_level(false)
            ]
        }),
        other => bail!(
            "GGUF pre-tokenizer {other:?} is not supported when building the tokenizer from GGUF metadata; put the model's tokenizer.json beside it"
        ),
    })
}

impl Tokenizer {
    /// Builds the tokenizer from GGUF metadata (byte-level BPE models).
    pub fn from_gguf(f: &GgufFile) -> Result<Self> {
        let ctx = || {
            format!(
                "{}: building the tokenizer from GGUF metadata",
                f.path.display()
            )
        };
        let model = f.get_str("tokenizer.ggml.model").unwrap_or("<missing>");
        if model != "gpt2" {
            bail!(
                "{}: tokenizer model {model:?} is not supported from GGUF metadata (supported: gpt2-style BPE); put the model's tokenizer.json beside it",
                ctx()
            );
        }
        let tokens: Vec<String> = f
            .get("tokenizer.ggml.tokens")
            .and_then(|v| v.as_array())
            .ok_or_else(|| anyhow!("{}: tokenizer.ggml.tokens is missing", ctx()))?
            .iter()
            .map(|v| {
                v.as_str()
                    .map(str::to_owned)
                    .ok_or_else(|| anyhow!("{}: a token is not a string", ctx()))
            })
            .collect::<Result<_>>()?;
        let merges: Vec<String> = f
            .get("tokenizer.ggml.merges")
            .and_then(|v| v.as_array())
            .ok_or_else(|| anyhow!("{}: tokenizer.ggml.merges is missing", ctx()))?
            .iter()
            .filter_map(|v| v.as_str().map(str::to_owned))
            .collect();
        let types: Vec<u64> = f
            .get("tokenizer.ggml.token_type")
            .and_then(|v| v.as_array())
            .map(|a| a.iter().map(|v| v.as_u64().unwrap_or(1)).collect())
            .unwrap_or_else(|| vec![1; tokens.len()]);
        let pre = f.get_str("tokenizer.ggml.pre").unwrap_or("default");
        let vocab: serde_json::Map<String, serde_json::Value> = tokens
            .iter()
            .enumerate()
            .map(|(i, t)| (t.clone(), json!(i)))
            .collect();
        let added: Vec<serde_json::Value> = tokens
            .iter()
            .enumerate()
            .filter(|(i, _)| matches!(types.get(*i), Some(&TOKEN_TYPE_CONTROL) | Some(&TOKEN_TYPE_USER_DEFINED)))
            .map(|(i, t)| {
                json!({"id": i, "content": t, "single_word": false, "lstrip": false, "rstrip": false,
                       "normalized": false, "special": types[i] == TOKEN_TYPE_CONTROL})
            })
            .collect();
        let build = |added: &[serde_json::Value]| -> Result<tokenizers::Tokenizer> {
            let j = json!({
                "version": "1.0",
                "truncation": null,
                "padding": null,
                "added_tokens": added,
                "normalizer": null,
                "pre_tokenizer": pre_tokenizer(pre)?,
                "post_processor": null,
                "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
                "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
                          "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false,
                          "ignore_merges": false, "vocab": vocab, "merges": merges}
            });
            j.to_string()
                .parse::<tokenizers::Tokenizer>()
                .map_err(|e| anyhow!("{}: {e}", ctx()))
        };
        let special = build(&added)?;
        let plain = build(&[])?;
        let id = |k: &str| f.get(k).and_then(|v| v.as_u64()).map(|v| v as u32);
        let mut eos_ids: Vec<u32> = id("tokenizer.ggml.eos_token_id").into_iter().collect();
        eos_ids.extend(id("tokenizer.ggml.eot_token_id"));
        for name in ["<|im_end|>", "<|endoftext|>", "<|eot_id|>", "<end_of_turn>"] {
            if let Some(i) = tokens.iter().position(|t| t == name) {
                if types.get(i) == Some(&TOKEN_TYPE_CONTROL) {
                    eos_ids.push(i as u32);
                }
            }
        }
        eos_ids.sort_unstable();
        eos_ids.dedup();
        Ok(Tokenizer {
            fingerprint: fingerprint_of(&tokens),
            special,
            plain,
            vocab: tokens,
            bos_id: id("tokenizer.ggml.bos_token_id"),
            eos_ids,
            chat_template: f.get_str("tokenizer.chat_template").map(str::to_owned),
        })
    }

    /// Loads `tokenizer.json` (and `tokenizer_config.json` for the chat template and special
    /// tokens, when present) from an HF model directory.
    pub fn from_hf_dir(dir: &Path) -> Result<Self> {
        let path = dir.join("tokenizer.json");
        let special = tokenizers::Tokenizer::from_file(&path)
            .map_err(|e| anyhow!("cannot load tokenizer {}: {e}", path.display()))?;
        let mut plain_json: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path)?)
                .with_context(|| format!("{} is not valid JSON", path.display()))?;
        plain_json["added_tokens"] = json!([]);
        let plain: tokenizers::Tokenizer = plain_json
            .to_string()
            .parse()
            .map_err(|e| anyhow!("cannot load tokenizer {}: {e}", path.display()))?;
        let n = special.get_vocab_size(true);
        let vocab: Vec<String> = (0..n as u32)
            .map(|i| special.id_to_token(i).unwrap_or_default())
            .collect();
        let cfg: serde_json::Value = std::fs::read_to_string(dir.join("tokenizer_config.json"))
            .ok()
            .and_then(|s| serde_json::from_str(&s).ok())
            .unwrap_or(json!({}));
        let tok_id = |key: &str| -> Option<u32> {
            let v = &cfg[key];
            let s = v.as_str().or_else(|| v["content"].as_str())?;
            special.token_to_id(s)
        };
        let mut eos_ids: Vec<u32> = tok_id("eos_token").into_iter().collect();
        for name in ["<|im_end|>", "<|endoftext|>", "<|eot_id|>", "<end_of_turn>"] {
            eos_ids.extend(
                special
                    .get_added_vocabulary()
                    .token_to_id(name, special.get_model()),
            );
        }
        eos_ids.sort_unstable();
        eos_ids.dedup();
        Ok(Tokenizer {
            fingerprint: fingerprint_of(&vocab),
            bos_id: tok_id("bos_token"),
            eos_ids,
            chat_template: cfg["chat_template"].as_str().map(str::to_owned),
            special,
            plain,
            vocab,
        })
    }

    /// Writes `tokenizer.json` and `tokenizer_config.json` into `dir`.
    pub fn save_hf_dir(&self, dir: &Path) -> Result<()> {
        self.special
            .save(dir.join("tokenizer.json"), false)
            .map_err(|e| anyhow!("cannot write tokenizer.json: {e}"))?;
        let name = |id: Option<u32>| id.and_then(|i| self.vocab.get(i as usize).cloned());
        let cfg = json!({
            "bos_token": name(self.bos_id),
            "eos_token": name(self.eos_ids.first().copied()),
            "chat_template": self.chat_template,
        });
        std::fs::write(
            dir.join("tokenizer_config.json"),
            serde_json::to_string_pretty(&cfg)?,
        )?;
        Ok(())
    }

    pub fn vocab_size(&self) -> usize {
        self.vocab.len()
    }

    /// Hash of the id → token table: two models can share a speculative session only if equal.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    pub fn token(&self, id: u32) -> Option<&str> {
        self.vocab.get(id as usize).map(String::as_str)
    }

    /// Encodes text (no BOS is added). `parse_special` recognises special tokens in the text.
    pub fn encode(&self, text: &str, parse_special: bool) -> Result<Vec<u32>> {
        let t = if parse_special {
            &self.special
        } else {
            &self.plain
        };
        Ok(t.encode(text, false)
            .map_err(|e| anyhow!("tokenizer error: {e}"))?
            .get_ids()
            .to_vec())
    }

    /// Decodes ids to text, skipping special tokens.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.special
            .decode(ids, true)
            .map_err(|e| anyhow!("tokenizer error: {e}"))
    }

    pub fn is_eos(&self, id: u32) -> bool {
        self.eos_ids.contains(&id)
    }

    /// Renders a single user message with the model's chat template (generation prompt added).
    pub fn apply_chat_template(&self, user: &str) -> Result<String> {
        self.apply_chat_template_messages(&[("user", user)])
    }

    /// Renders a conversation of `(role, content)` messages with the model's chat template
    /// (generation prompt added).
    pub fn apply_chat_template_messages(&self, messages: &[(&str, &str)]) -> Result<String> {
        let tpl = self.chat_template.as_deref().ok_or_else(|| {
            anyhow!("--chat: this model has no chat template (tokenizer.chat_template)")
        })?;
        let mut env = minijinja::Environment::new();
        env.add_function(
            "raise_exception",
            |msg: String| -> Result<String, minijinja::Error> {
                Err(minijinja::Error::new(
                    minijinja::ErrorKind::InvalidOperation,
                    msg,
                ))
            },
        );
        env.add_template("chat", tpl)
            .map_err(|e| anyhow!("invalid chat template: {e}"))?;
        let name = |id: Option<u32>| id.and_then(|i| self.token(i)).unwrap_or("").to_owned();
        env.get_template("chat")?
            .render(minijinja::context! {
                messages => messages
                    .iter()
                    .map(|(role, content)| minijinja::context! { role => *role, content => *content })
                    .collect::<Vec<_>>(),
                add_generation_prompt => true,
                bos_token => name(self.bos_id),
                eos_token => name(self.eos_ids.first().copied()),
            })
            .map_err(|e| anyhow!("cannot render the chat template: {e}"))
    }
}
