//! Tokenizer: from `tokenizer.json` when a model has one, otherwise built from GGUF metadata
//! (`tokenizer.ggml.*`: byte-level BPE for `gpt2`, SentencePiece for `llama`), with the model's
//! chat template, whether it wants BOS, and a vocabulary fingerprint.

mod spm;

use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::gguf::GgufFile;

/// GGUF token types (llama.cpp `llama_token_type`).
const TOKEN_TYPE_CONTROL: u64 = 3;
const TOKEN_TYPE_USER_DEFINED: u64 = 4;
/// Padding entries (llama.cpp writes `[PAD…]` of this type for embedding rows past the vocabulary).
const TOKEN_TYPE_UNUSED: u64 = 5;

/// The tokenizer models that can be built from GGUF metadata (`tokenizer.ggml.model`).
const SUPPORTED_GGUF_MODELS: &str =
    "\"gpt2\" (byte-level BPE) and \"llama\" (SentencePiece with byte fallback)";

enum Engine {
    /// A `tokenizers` tokenizer (tokenizer.json, or byte-level BPE built from GGUF metadata).
    Hf {
        /// Parses special tokens such as `<|im_start|>` in the input text.
        special: Box<tokenizers::Tokenizer>,
        /// Treats all input as plain text.
        plain: Box<tokenizers::Tokenizer>,
    },
    /// SentencePiece vocabulary from GGUF metadata, tokenized as llama.cpp does.
    Spm(Box<spm::Spm>),
}

pub struct Tokenizer {
    engine: Engine,
    vocab: Vec<String>,
    pub bos_id: Option<u32>,
    /// The model wants BOS in front of a prompt (`tokenizer.ggml.add_bos_token`, or
    /// `add_bos_token` of tokenizer_config.json); [`crate::pipeline::encode_prompt`] adds it.
    pub add_bos: bool,
    /// Tokens that end generation.
    pub eos_ids: Vec<u32>,
    pub chat_template: Option<String>,
    /// Tokens defined: the vocabulary without trailing padding entries.
    defined: usize,
    fingerprint: String,
    source: String,
}

/// A boolean metadata value.
fn gguf_bool(f: &GgufFile, key: &str) -> Option<bool> {
    match f.get(key)? {
        crate::gguf::Value::Bool(b) => Some(*b),
        v => v.as_u64().map(|x| x != 0),
    }
}

/// `tokenizer.json` in the directory of a GGUF file, if there is one.
pub fn tokenizer_json_beside(gguf: &Path) -> Option<PathBuf> {
    let p = gguf.parent()?.join("tokenizer.json");
    p.is_file().then_some(p)
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

/// The `tokenizer.ggml.*` fields both GGUF vocabulary kinds share.
struct GgufVocab {
    tokens: Vec<String>,
    types: Vec<u64>,
    bos_id: Option<u32>,
    eos_id: Option<u32>,
    eot_id: Option<u32>,
    add_bos: Option<bool>,
    chat_template: Option<String>,
}

impl GgufVocab {
    fn read(f: &GgufFile, ctx: &dyn Fn() -> String) -> Result<Self> {
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
        let types: Vec<u64> = f
            .get("tokenizer.ggml.token_type")
            .and_then(|v| v.as_array())
            .map(|a| a.iter().map(|v| v.as_u64().unwrap_or(1)).collect())
            .unwrap_or_else(|| vec![1; tokens.len()]);
        let id = |k: &str| {
            f.get(k)
                .and_then(|v| v.as_u64())
                .map(|v| v as u32)
                .filter(|&i| (i as usize) < tokens.len())
        };
        Ok(GgufVocab {
            bos_id: id("tokenizer.ggml.bos_token_id"),
            eos_id: id("tokenizer.ggml.eos_token_id"),
            eot_id: id("tokenizer.ggml.eot_token_id"),
            add_bos: gguf_bool(f, "tokenizer.ggml.add_bos_token"),
            chat_template: f.get_str("tokenizer.chat_template").map(str::to_owned),
            tokens,
            types,
        })
    }

    /// Tokens defined: the vocabulary without its trailing padding entries (type unused), which
    /// stand for embedding rows padded past the tokenizer (Qwen2.5: 152064 rows for 7B, 151936 for
    /// 0.5B, 151665 tokens).
    fn defined(&self) -> usize {
        if self.types.len() != self.tokens.len() {
            return self.tokens.len();
        }
        let pad = self
            .types
            .iter()
            .rev()
            .take_while(|&&t| t == TOKEN_TYPE_UNUSED)
            .count();
        self.tokens.len() - pad
    }

    /// End-of-generation tokens: EOS, EOT and the usual end-of-turn tokens of control type.
    fn eos_ids(&self, is_control: impl Fn(usize) -> bool) -> Vec<u32> {
        let mut eos_ids: Vec<u32> = self.eos_id.into_iter().chain(self.eot_id).collect();
        for name in ["<|im_end|>", "<|endoftext|>", "<|eot_id|>", "<end_of_turn>"] {
            if let Some(i) = self.tokens.iter().position(|t| t == name) {
                if is_control(i) {
                    eos_ids.push(i as u32);
                }
            }
        }
        eos_ids.sort_unstable();
        eos_ids.dedup();
        eos_ids
    }
}

impl Tokenizer {
    /// The tokenizer of a GGUF model: the `tokenizer.json` in the file's directory when there is
    /// one (with `tokenizer_config.json` when present; what it lacks — chat template, BOS/EOS —
    /// comes from the GGUF metadata), otherwise built from the metadata ([`Self::from_gguf`]).
    /// [`Self::source`] says which was used.
    pub fn for_gguf(f: &GgufFile) -> Result<Self> {
        let Some(json) = tokenizer_json_beside(&f.path) else {
            return Self::from_gguf(f);
        };
        let dir = json.parent().unwrap_or(Path::new("."));
        let mut t = Self::from_hf_dir(dir)
            .with_context(|| format!("{} is beside {}", json.display(), f.path.display()))?;
        let ctx = || f.path.display().to_string();
        let meta = GgufVocab::read(f, &ctx).ok();
        if let Some(m) = meta {
            let has_cfg = dir.join("tokenizer_config.json").is_file();
            if t.chat_template.is_none() {
                t.chat_template = m.chat_template.clone();
            }
            let name = |id: Option<u32>| id.and_then(|i| m.tokens.get(i as usize).cloned());
            let same = |id: Option<u32>| {
                name(id).and_then(|n| t.vocab.iter().position(|v| *v == n).map(|i| i as u32))
            };
            if t.bos_id.is_none() {
                t.bos_id = same(m.bos_id);
            }
            if t.eos_ids.is_empty() {
                t.eos_ids = [m.eos_id, m.eot_id].into_iter().filter_map(same).collect();
                t.eos_ids.sort_unstable();
                t.eos_ids.dedup();
            }
            if !has_cfg {
                t.add_bos = m.add_bos.unwrap_or(t.add_bos);
            }
        }
        t.source = format!("{} (beside {})", t.source, f.path.display());
        Ok(t)
    }

    /// Builds the tokenizer from GGUF metadata: byte-level BPE (`tokenizer.ggml.model = "gpt2"`)
    /// or SentencePiece (`"llama"`, as in Llama-2, Mistral and Gemma files).
    pub fn from_gguf(f: &GgufFile) -> Result<Self> {
        let ctx = || {
            format!(
                "{}: building the tokenizer from GGUF metadata",
                f.path.display()
            )
        };
        match f.get_str("tokenizer.ggml.model") {
            Some("gpt2") => Self::bpe_from_gguf(f, &ctx),
            Some("llama") => Self::spm_from_gguf(f, &ctx),
            other => bail!(
                "{}: tokenizer model {} (tokenizer.ggml.model) is not supported; supported: {SUPPORTED_GGUF_MODELS}. Put the model's tokenizer.json beside the GGUF file to use it instead",
                ctx(),
                other.map_or("<missing>".to_owned(), |m| format!("{m:?}")),
            ),
        }
    }

    fn spm_from_gguf(f: &GgufFile, ctx: &dyn Fn() -> String) -> Result<Self> {
        let v = GgufVocab::read(f, ctx)?;
        let scores: Vec<f32> = match f.get("tokenizer.ggml.scores").and_then(|v| v.as_array()) {
            Some(a) => a
                .iter()
                .map(|x| match x {
                    crate::gguf::Value::F32(s) => Ok(*s),
                    crate::gguf::Value::I32(s) => Ok(*s as f32),
                    _ => Err(anyhow!(
                        "{}: tokenizer.ggml.scores holds a non-number",
                        ctx()
                    )),
                })
                .collect::<Result<_>>()?,
            None => vec![0.0; v.tokens.len()],
        };
        let id = |k: &str| {
            f.get(k)
                .and_then(|x| x.as_u64())
                .map(|x| x as u32)
                .filter(|&i| (i as usize) < v.tokens.len())
        };
        let fim_keys_present = spm::FIM_BY_NAME
            .iter()
            .map(|(k, _)| *k)
            .filter(|k| f.get(&format!("tokenizer.ggml.{k}")).is_some())
            .collect();
        let model = spm::Spm::new(spm::SpmParams {
            tokens: v.tokens.clone(),
            scores,
            types: v.types.iter().map(|&t| t as u32).collect(),
            add_space_prefix: gguf_bool(f, "tokenizer.ggml.add_space_prefix").unwrap_or(true),
            unk_id: id("tokenizer.ggml.unknown_token_id"),
            fim_keys_present,
        })
        .with_context(ctx)?;
        let eos_ids = v.eos_ids(|i| model.is_control(i as u32));
        Ok(Tokenizer {
            defined: v.defined(),
            fingerprint: fingerprint_of(&v.tokens[..v.defined()]),
            source: format!(
                "GGUF metadata of {} (SentencePiece, {} tokens{})",
                f.path.display(),
                v.tokens.len(),
                if model.add_space_prefix {
                    ", space prefix"
                } else {
                    ""
                }
            ),
            engine: Engine::Spm(Box::new(model)),
            bos_id: v.bos_id,
            add_bos: v.add_bos.unwrap_or(true) && v.bos_id.is_some(),
            eos_ids,
            chat_template: v.chat_template,
            vocab: v.tokens,
        })
    }

    fn bpe_from_gguf(f: &GgufFile, ctx: &dyn Fn() -> String) -> Result<Self> {
        let v = GgufVocab::read(f, ctx)?;
        let (tokens, types) = (&v.tokens, &v.types);
        let merges: Vec<String> = f
            .get("tokenizer.ggml.merges")
            .and_then(|v| v.as_array())
            .ok_or_else(|| anyhow!("{}: tokenizer.ggml.merges is missing", ctx()))?
            .iter()
            .filter_map(|v| v.as_str().map(str::to_owned))
            .collect();
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
        let eos_ids = v.eos_ids(|i| types.get(i) == Some(&TOKEN_TYPE_CONTROL));
        Ok(Tokenizer {
            defined: v.defined(),
            fingerprint: fingerprint_of(&v.tokens[..v.defined()]),
            source: format!(
                "GGUF metadata of {} (byte-level BPE, pre-tokenizer {pre:?}, {} tokens)",
                f.path.display(),
                v.tokens.len()
            ),
            engine: Engine::Hf {
                special: Box::new(special),
                plain: Box::new(plain),
            },
            bos_id: v.bos_id,
            add_bos: v.add_bos.unwrap_or(false) && v.bos_id.is_some(),
            eos_ids,
            chat_template: v.chat_template,
            vocab: v.tokens,
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
        let bos_id = tok_id("bos_token");
        // `add_bos_token` of tokenizer_config.json, else whether the post-processor puts BOS first.
        let add_bos = cfg["add_bos_token"].as_bool().unwrap_or_else(|| {
            let first = &plain_json["post_processor"]["single"][0]["SpecialToken"]["id"];
            bos_id.is_some() && first.as_str().and_then(|s| special.token_to_id(s)) == bos_id
        }) && bos_id.is_some();
        let has_cfg = dir.join("tokenizer_config.json").is_file();
        Ok(Tokenizer {
            defined: vocab.len(),
            fingerprint: fingerprint_of(&vocab),
            source: format!(
                "{}{}",
                path.display(),
                if has_cfg {
                    " with tokenizer_config.json"
                } else {
                    ""
                }
            ),
            bos_id,
            add_bos,
            eos_ids,
            chat_template: cfg["chat_template"].as_str().map(str::to_owned),
            engine: Engine::Hf {
                special: Box::new(special),
                plain: Box::new(plain),
            },
            vocab,
        })
    }

    /// Writes `tokenizer.json` and `tokenizer_config.json` into `dir`.
    pub fn save_hf_dir(&self, dir: &Path) -> Result<()> {
        let Engine::Hf { special, .. } = &self.engine else {
            bail!(
                "cannot write tokenizer.json for {}: exporting SentencePiece vocabularies built from GGUF metadata is not supported",
                self.source
            );
        };
        special
            .save(dir.join("tokenizer.json"), false)
            .map_err(|e| anyhow!("cannot write tokenizer.json: {e}"))?;
        let name = |id: Option<u32>| id.and_then(|i| self.vocab.get(i as usize).cloned());
        let cfg = json!({
            "bos_token": name(self.bos_id),
            "eos_token": name(self.eos_ids.first().copied()),
            "add_bos_token": self.add_bos,
            "chat_template": self.chat_template,
        });
        std::fs::write(
            dir.join("tokenizer_config.json"),
            serde_json::to_string_pretty(&cfg)?,
        )?;
        Ok(())
    }

    /// Where the tokenizer came from: a tokenizer.json path, or the GGUF file whose metadata it
    /// was built from (and the kind of vocabulary).
    pub fn source(&self) -> &str {
        &self.source
    }

    pub fn vocab_size(&self) -> usize {
        self.vocab.len()
    }

    /// Tokens defined (ids below it): the vocabulary less trailing padding entries.
    pub fn defined_vocab(&self) -> usize {
        self.defined
    }

    /// Hash of the id → token table over the defined tokens (padding entries left out): two
    /// models can share a speculative session only if equal.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    pub fn token(&self, id: u32) -> Option<&str> {
        self.vocab.get(id as usize).map(String::as_str)
    }

    /// Encodes text (no BOS is added; see [`Self::add_bos`]). `parse_special` recognises special
    /// tokens in the text.
    pub fn encode(&self, text: &str, parse_special: bool) -> Result<Vec<u32>> {
        let t = match &self.engine {
            Engine::Spm(m) => return Ok(m.encode(text, parse_special)),
            Engine::Hf { special, .. } if parse_special => special,
            Engine::Hf { plain, .. } => plain,
        };
        Ok(t.encode(text, false)
            .map_err(|e| anyhow!("tokenizer error: {e}"))?
            .get_ids()
            .to_vec())
    }

    /// Decodes ids to text, skipping special tokens.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        match &self.engine {
            Engine::Spm(m) => Ok(String::from_utf8_lossy(&m.decode_bytes(ids)).into_owned()),
            Engine::Hf { special, .. } => special
                .decode(ids, true)
                .map_err(|e| anyhow!("tokenizer error: {e}")),
        }
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
        let name = |id: Option<u32>| id.and_then(|i| self.token(i)).unwrap_or("").to_owned();
        render_chat_template(
            tpl,
            messages,
            &name(self.bos_id),
            &name(self.eos_ids.first().copied()),
        )
    }
}

/// Renders a chat template (Jinja, as Hugging Face templates are written) with minijinja: Python
/// string methods (`.strip()`, `.startswith()`…) through minijinja-contrib's pycompat,
/// `raise_exception`, `strftime_now` (UTC) and `tojson`, so the templates of Llama 3, Qwen 2.5/3,
/// Gemma 3 and Mistral render as they do in transformers.
pub fn render_chat_template(
    tpl: &str,
    messages: &[(&str, &str)],
    bos_token: &str,
    eos_token: &str,
) -> Result<String> {
    let mut env = minijinja::Environment::new();
    // As transformers' apply_chat_template renders them.
    env.set_trim_blocks(true);
    env.set_lstrip_blocks(true);
    env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
    env.add_function(
        "raise_exception",
        |msg: String| -> Result<String, minijinja::Error> {
            Err(minijinja::Error::new(
                minijinja::ErrorKind::InvalidOperation,
                msg,
            ))
        },
    );
    env.add_function("strftime_now", |fmt: String| strftime_utc_now(&fmt));
    env.add_template("chat", tpl)
        .map_err(|e| anyhow!("invalid chat template: {e}"))?;
    env.get_template("chat")?
        .render(minijinja::context! {
            messages => messages
                .iter()
                .map(|(role, content)| minijinja::context! { role => *role, content => *content })
                .collect::<Vec<_>>(),
            add_generation_prompt => true,
            bos_token => bos_token,
            eos_token => eos_token,
        })
        .map_err(|e| anyhow!("cannot render the chat template: {e}"))
}

/// Today's UTC date in a `strftime` format (`%d %m %Y %b %B %y %%`; what chat templates use).
pub fn strftime_utc_now(fmt: &str) -> String {
    let days = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() / 86_400) as i64;
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + (month <= 2) as i64;
    const MONTHS: [&str; 12] = [
        "January",
        "February",
        "March",
        "April",
        "May",
        "June",
        "July",
        "August",
        "September",
        "October",
        "November",
        "December",
    ];
    let mname = MONTHS[(month - 1) as usize];
    let mut out = String::new();
    let mut chars = fmt.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('d') => out.push_str(&format!("{day:02}")),
            Some('m') => out.push_str(&format!("{month:02}")),
            Some('Y') => out.push_str(&year.to_string()),
            Some('y') => out.push_str(&format!("{:02}", year % 100)),
            Some('b') => out.push_str(&mname[..3]),
            Some('B') => out.push_str(mname),
            Some('%') => out.push('%'),
            Some(other) => {
                out.push('%');
                out.push(other);
            }
            None => out.push('%'),
        }
    }
    out
}
