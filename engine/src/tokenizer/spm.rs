//! SentencePiece (`tokenizer.ggml.model = "llama"`) vocabularies from GGUF metadata, tokenized the
//! way llama.cpp's `llm_tokenizer_spm` does (llama.cpp 0c1e57098, `src/llama-vocab.cpp`):
//!
//! 1. special-token partition: every control, unknown and user-defined token, longest first, is
//!    cut out of the text (control and unknown ones only when special tokens are parsed);
//! 2. each remaining text fragment gets a space in front when `add_space_prefix` is set and it
//!    starts the text or follows a special token, spaces become `▁`;
//! 3. the fragment is split into UTF-8 characters and the adjacent pair whose concatenation is a
//!    token with the highest score is merged (ties: the leftmost pair) until no pair is a token;
//! 4. a symbol that is not a token is emitted as its bytes' `<0xXX>` tokens.

use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashMap};

use anyhow::{bail, Result};

/// llama.cpp `llama_token_type` (the GGUF `tokenizer.ggml.token_type` values).
pub const TYPE_NORMAL: u32 = 1;
pub const TYPE_UNKNOWN: u32 = 2;
pub const TYPE_CONTROL: u32 = 3;
pub const TYPE_USER_DEFINED: u32 = 4;
pub const TYPE_UNUSED: u32 = 5;
pub const TYPE_BYTE: u32 = 6;

/// llama.cpp `llama_token_attr` bits (the subset the SPM tokenizer looks at).
const ATTR_UNDEFINED: u32 = 0;
const ATTR_UNKNOWN: u32 = 1 << 0;
const ATTR_UNUSED: u32 = 1 << 1;
const ATTR_NORMAL: u32 = 1 << 2;
const ATTR_CONTROL: u32 = 1 << 3;
const ATTR_USER_DEFINED: u32 = 1 << 4;
const ATTR_BYTE: u32 = 1 << 5;

/// Token texts that llama.cpp's vocabulary loader forces to control type (end-of-generation and
/// fill-in-the-middle markers recognised by name). `fim` entries only apply when the GGUF has no
/// id for that kind (`tokenizer.ggml.<key>`).
const CONTROL_BY_NAME: &[&str] = &[
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<|return|>",
    "<|call|>",
    "<|flush|>",
    "<|calls|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "</s>",
    "<|eom_id|>",
    "<EOT>",
    "_<EOT>",
    "[EOT]",
    "[EOS]",
    "<|end_of_text|>",
    "<end_of_utterance>",
    "<eos>",
    "<turn|>",
    "<|tool_response>",
    "<｜end▁of▁sentence｜>",
    "[e~[",
];
pub const FIM_BY_NAME: &[(&str, &[&str])] = &[
    (
        "fim_pre_token_id",
        &[
            "<|fim_prefix|>",
            "<fim-prefix>",
            "<fim_prefix>",
            "<｜fim▁begin｜>",
            "<PRE>",
            "▁<PRE>",
            "<|code_prefix|>",
            "<|prefix|>",
        ],
    ),
    (
        "fim_suf_token_id",
        &[
            "<|fim_suffix|>",
            "<fim-suffix>",
            "<fim_suffix>",
            "<｜fim▁hole｜>",
            "<SUF>",
            "▁<SUF>",
            "<|code_suffix|>",
            "<|suffix|>",
        ],
    ),
    (
        "fim_mid_token_id",
        &[
            "<|fim_middle|>",
            "<fim-middle>",
            "<fim_middle>",
            "<｜fim▁end｜>",
            "<MID>",
            "▁<MID>",
            "<|code_middle|>",
            "<|middle|>",
        ],
    ),
    (
        "fim_pad_token_id",
        &["<|fim_pad|>", "<fim-pad>", "<fim_pad>", "<PAD>", "[PAD]"],
    ),
    (
        "fim_rep_token_id",
        &[
            "<|fim_repo|>",
            "<|repo_name|>",
            "<fim-repo>",
            "<REPO>",
            "<reponame>",
        ],
    ),
    ("fim_sep_token_id", &["<|file_sep|>"]),
];

pub struct Spm {
    tokens: Vec<String>,
    scores: Vec<f32>,
    attrs: Vec<u32>,
    token_to_id: HashMap<String, u32>,
    /// Control, unknown and user-defined tokens, longest first (llama.cpp `cache_special_tokens`).
    specials: Vec<u32>,
    /// `<0xXX>` token (or the one-byte token) of each byte.
    byte_ids: [Option<u32>; 256],
    pub add_space_prefix: bool,
    unk_id: Option<u32>,
}

/// `tokenizer.ggml.*` fields an SPM vocabulary is built from.
pub struct SpmParams {
    pub tokens: Vec<String>,
    pub scores: Vec<f32>,
    /// GGUF token types (1 normal … 6 byte); empty: all normal.
    pub types: Vec<u32>,
    pub add_space_prefix: bool,
    pub unk_id: Option<u32>,
    /// FIM kinds (keys of [`FIM_BY_NAME`]) whose id the metadata sets: no detection by name.
    pub fim_keys_present: Vec<&'static str>,
}

#[derive(Clone, Copy)]
enum Fragment {
    Text { start: usize, end: usize },
    Token(u32),
}

#[derive(Clone, Copy)]
struct Symbol {
    prev: isize,
    next: isize,
    start: usize,
    n: usize,
}

struct Bigram {
    left: usize,
    right: usize,
    score: f32,
    size: usize,
}

impl PartialEq for Bigram {
    fn eq(&self, o: &Self) -> bool {
        self.cmp(o) == Ordering::Equal
    }
}
impl Eq for Bigram {}
impl PartialOrd for Bigram {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Bigram {
    /// The heap's top is the highest score, then the leftmost pair (llama.cpp `llm_bigram_spm`).
    fn cmp(&self, o: &Self) -> Ordering {
        self.score
            .total_cmp(&o.score)
            .then_with(|| o.left.cmp(&self.left))
    }
}

impl Spm {
    pub fn new(p: SpmParams) -> Result<Self> {
        let SpmParams {
            mut tokens,
            mut scores,
            types,
            add_space_prefix,
            unk_id,
            fim_keys_present,
        } = p;
        let n = tokens.len();
        scores.resize(n, 0.0);
        // As llama.cpp's loader does: an empty token becomes "[EMPTY_<id>]".
        for (i, t) in tokens.iter_mut().enumerate() {
            if t.is_empty() {
                *t = format!("[EMPTY_{i}]");
            }
        }
        let mut token_to_id = HashMap::with_capacity(n);
        for (i, t) in tokens.iter().enumerate() {
            if let Some(j) = token_to_id.insert(t.clone(), i as u32) {
                bail!("duplicate token in the vocabulary: {t:?} has ids {j} and {i}");
            }
        }
        let mut attrs: Vec<u32> = (0..n)
            .map(|i| match types.get(i).copied().unwrap_or(TYPE_NORMAL) {
                TYPE_NORMAL => ATTR_NORMAL,
                TYPE_UNKNOWN => ATTR_UNKNOWN,
                TYPE_CONTROL => ATTR_CONTROL,
                TYPE_USER_DEFINED => ATTR_USER_DEFINED,
                TYPE_UNUSED => ATTR_UNUSED,
                TYPE_BYTE => ATTR_BYTE,
                _ => ATTR_UNDEFINED,
            })
            .collect();
        // llama.cpp's loader makes control-looking tokens control type, and then makes a few
        // exceptions; the special-token partition below depends on it.
        let id_of = |s: &str| token_to_id.get(s).map(|&i| i as usize);
        for name in CONTROL_BY_NAME {
            if let Some(i) = id_of(name) {
                attrs[i] |= ATTR_CONTROL;
            }
        }
        for (key, names) in FIM_BY_NAME {
            if !fim_keys_present.contains(key) {
                for name in *names {
                    if let Some(i) = id_of(name) {
                        attrs[i] |= ATTR_CONTROL;
                    }
                }
            }
        }
        for name in ["<|channel|>", "<|message|>", "<|start|>", "<|constrain|>"] {
            if let Some(i) = id_of(name) {
                attrs[i] = ATTR_USER_DEFINED;
            }
        }
        if let (Some(_), Some(_), Some(end)) =
            (id_of("<|return|>"), id_of("<|call|>"), id_of("<|end|>"))
        {
            attrs[end] = ATTR_USER_DEFINED;
        } else if let (Some(_), Some(_), Some(end)) =
            (id_of("<|calls|>"), id_of("<|flush|>"), id_of("<|end|>"))
        {
            attrs[end] = ATTR_USER_DEFINED;
        }
        if id_of("<|tool_response>").is_some() || id_of("<|plamo:eos|>").is_some() {
            if let Some(s) = id_of("</s>") {
                attrs[s] = ATTR_NORMAL;
            }
        }
        let mut specials: Vec<u32> = (0..n as u32)
            .filter(|&i| attrs[i as usize] & (ATTR_CONTROL | ATTR_USER_DEFINED | ATTR_UNKNOWN) != 0)
            .collect();
        // llama.cpp uses an unstable sort by length; ties keep id order here.
        specials.sort_by_key(|&i| std::cmp::Reverse(tokens[i as usize].len()));
        let mut byte_ids = [None; 256];
        for (b, slot) in byte_ids.iter_mut().enumerate() {
            *slot = token_to_id
                .get(&format!("<0x{b:02X}>"))
                .or_else(|| {
                    std::str::from_utf8(&[b as u8])
                        .ok()
                        .and_then(|s| token_to_id.get(s))
                })
                .copied();
        }
        Ok(Spm {
            tokens,
            scores,
            attrs,
            token_to_id,
            specials,
            byte_ids,
            add_space_prefix,
            unk_id,
        })
    }

    /// Whether llama.cpp treats the token as control (after its by-name overrides).
    pub fn is_control(&self, id: u32) -> bool {
        self.attrs
            .get(id as usize)
            .is_some_and(|a| a & ATTR_CONTROL != 0)
    }

    /// Encodes text (no BOS/EOS). `parse_special`: control tokens in the text are recognised.
    pub fn encode(&self, text: &str, parse_special: bool) -> Vec<u32> {
        let mut out = Vec::new();
        if text.is_empty() {
            return out;
        }
        let mut is_prev_special = true;
        for frag in self.partition(text, parse_special) {
            match frag {
                Fragment::Text { start, end } => {
                    let mut s = String::with_capacity(end - start + 3);
                    if self.add_space_prefix && is_prev_special {
                        s.push(' ');
                    }
                    s.push_str(&text[start..end]);
                    let s = s.replace(' ', "\u{2581}");
                    self.tokenize_fragment(&s, &mut out);
                    is_prev_special = false;
                }
                Fragment::Token(id) => {
                    out.push(id);
                    is_prev_special = true;
                }
            }
        }
        out
    }

    /// llama.cpp `tokenizer_st_partition`: for each special token, longest first, split every
    /// remaining text fragment at each of its occurrences (left to right).
    fn partition(&self, text: &str, parse_special: bool) -> Vec<Fragment> {
        let mut frags = vec![Fragment::Text {
            start: 0,
            end: text.len(),
        }];
        let bytes = text.as_bytes();
        let mut present = [false; 256];
        for &b in bytes {
            present[b as usize] = true;
        }
        for &id in &self.specials {
            let attr = self.attrs[id as usize];
            if !parse_special && attr & (ATTR_CONTROL | ATTR_UNKNOWN) != 0 {
                continue;
            }
            let tok = self.tokens[id as usize].as_str();
            if tok.is_empty() || !present[tok.as_bytes()[0] as usize] || !text.contains(tok) {
                continue;
            }
            let mut next = Vec::with_capacity(frags.len() + 2);
            for f in frags {
                let Fragment::Text { mut start, end } = f else {
                    next.push(f);
                    continue;
                };
                while let Some(pos) = text[start..end].find(tok) {
                    let m = start + pos;
                    if m > start {
                        next.push(Fragment::Text { start, end: m });
                    }
                    next.push(Fragment::Token(id));
                    start = m + tok.len();
                }
                if start < end {
                    next.push(Fragment::Text { start, end });
                }
            }
            frags = next;
        }
        frags
    }

    fn lookup(&self, s: &str) -> Option<u32> {
        self.token_to_id.get(s).copied()
    }

    /// llama.cpp `llm_tokenizer_spm_session::tokenize` on one (escaped) fragment.
    fn tokenize_fragment(&self, text: &str, out: &mut Vec<u32>) {
        let mut symbols: Vec<Symbol> = Vec::with_capacity(text.len());
        for (i, (start, c)) in text.char_indices().enumerate() {
            let n = c.len_utf8();
            symbols.push(Symbol {
                prev: i as isize - 1,
                next: if start + n == text.len() {
                    -1
                } else {
                    i as isize + 1
                },
                start,
                n,
            });
        }
        let mut queue = BinaryHeap::new();
        let mut rev_merge: HashMap<&str, (usize, usize)> = HashMap::new();
        for i in 1..symbols.len() {
            self.try_add(
                text,
                &symbols,
                &mut queue,
                &mut rev_merge,
                i as isize - 1,
                i as isize,
            );
        }
        while let Some(b) = queue.pop() {
            let (ln, rn) = (symbols[b.left].n, symbols[b.right].n);
            if ln == 0 || rn == 0 || ln + rn != b.size {
                continue;
            }
            symbols[b.left].n += rn;
            symbols[b.right].n = 0;
            let rnext = symbols[b.right].next;
            symbols[b.left].next = rnext;
            if rnext >= 0 {
                symbols[rnext as usize].prev = b.left as isize;
            }
            let (lprev, lnext) = (symbols[b.left].prev, symbols[b.left].next);
            self.try_add(
                text,
                &symbols,
                &mut queue,
                &mut rev_merge,
                lprev,
                b.left as isize,
            );
            self.try_add(
                text,
                &symbols,
                &mut queue,
                &mut rev_merge,
                b.left as isize,
                lnext,
            );
        }
        let mut i = 0isize;
        while i != -1 && !symbols.is_empty() {
            let s = symbols[i as usize];
            self.resegment(text, &symbols, &rev_merge, s, out, 0);
            i = s.next;
        }
    }

    /// Queues the pair `left`, `right` when their concatenation is a token.
    fn try_add<'a>(
        &self,
        text: &'a str,
        symbols: &[Symbol],
        queue: &mut BinaryHeap<Bigram>,
        rev_merge: &mut HashMap<&'a str, (usize, usize)>,
        left: isize,
        right: isize,
    ) {
        if left < 0 || right < 0 {
            return;
        }
        let (l, r) = (left as usize, right as usize);
        let s = &text[symbols[l].start..symbols[l].start + symbols[l].n + symbols[r].n];
        let Some(id) = self.lookup(s) else { return };
        queue.push(Bigram {
            left: l,
            right: r,
            score: self.scores[id as usize],
            size: s.len(),
        });
        rev_merge.insert(s, (l, r));
    }

    fn resegment(
        &self,
        text: &str,
        symbols: &[Symbol],
        rev_merge: &HashMap<&str, (usize, usize)>,
        s: Symbol,
        out: &mut Vec<u32>,
        depth: usize,
    ) {
        let piece = &text[s.start..s.start + s.n];
        if let Some(id) = self.lookup(piece) {
            out.push(id);
            return;
        }
        match rev_merge.get(piece) {
            Some(&(l, r)) if depth < 64 => {
                self.resegment(text, symbols, rev_merge, symbols[l], out, depth + 1);
                self.resegment(text, symbols, rev_merge, symbols[r], out, depth + 1);
            }
            _ => {
                for &b in piece.as_bytes() {
                    // llama.cpp throws when a byte has no token; fall back to <unk>.
                    if let Some(id) = self.byte_ids[b as usize].or(self.unk_id) {
                        out.push(id);
                    }
                }
            }
        }
    }

    /// The bytes of one token as llama.cpp's `token_to_piece` gives them (`special`: render
    /// control and unknown tokens too).
    pub fn piece(&self, id: u32, special: bool, out: &mut Vec<u8>) {
        let Some(attr) = self.attrs.get(id as usize).copied() else {
            return;
        };
        let text = &self.tokens[id as usize];
        if attr & (ATTR_CONTROL | ATTR_UNKNOWN) != 0 {
            if special {
                out.extend_from_slice(text.as_bytes());
            }
        } else if attr & ATTR_USER_DEFINED != 0 {
            out.extend_from_slice(text.as_bytes());
        } else if attr & ATTR_NORMAL != 0 {
            out.extend_from_slice(text.replace('\u{2581}', " ").as_bytes());
        } else if attr & ATTR_BYTE != 0 {
            if let Some(b) = text.get(3..5).and_then(|h| u8::from_str_radix(h, 16).ok()) {
                out.push(b);
            }
        }
    }

    /// Decodes ids to bytes, skipping control and unknown tokens; with `add_space_prefix` the
    /// dummy prefix's space is removed from the first token.
    pub fn decode_bytes(&self, ids: &[u32]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut first = true;
        for &id in ids {
            let before = out.len();
            self.piece(id, false, &mut out);
            if out.len() > before && first {
                first = false;
                if self.add_space_prefix && out[before] == b' ' {
                    out.remove(before);
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tiny vocabulary: control `<s>`/`</s>`, `<unk>`, all 256 byte tokens, some pieces with
    /// scores, and a user-defined token.
    fn vocab(add_space_prefix: bool) -> Spm {
        let mut tokens: Vec<String> = vec!["<unk>".into(), "<s>".into(), "</s>".into()];
        let mut types = vec![TYPE_UNKNOWN, TYPE_CONTROL, TYPE_CONTROL];
        let mut scores = vec![0.0, 0.0, 0.0];
        for b in 0..=255u8 {
            tokens.push(format!("<0x{b:02X}>"));
            types.push(TYPE_BYTE);
            scores.push(0.0);
        }
        for (t, s) in [
            ("▁", -1.0),
            ("h", -2.0),
            ("e", -2.0),
            ("l", -2.0),
            ("o", -2.0),
            ("w", -3.0),
            ("r", -3.0),
            ("d", -3.0),
            ("é", -3.0),
            ("he", -1.0),
            ("▁w", -1.2),
            ("or", -1.3),
            ("ld", -1.4),
            ("ll", -2.0),
            ("hell", -3.0),
            ("▁wor", -3.5),
            ("hello", -4.0),
            ("▁hello", -5.0),
            ("▁world", -6.0),
            ("▁▁", -20.0),
        ] {
            tokens.push(t.into());
            types.push(TYPE_NORMAL);
            scores.push(s);
        }
        tokens.push("<tag>".into());
        types.push(TYPE_USER_DEFINED);
        scores.push(0.0);
        Spm::new(SpmParams {
            tokens,
            scores,
            types,
            add_space_prefix,
            unk_id: Some(0),
            fim_keys_present: vec![],
        })
        .unwrap()
    }

    fn ids(v: &Spm, pieces: &[&str]) -> Vec<u32> {
        pieces
            .iter()
            .map(|p| v.lookup(p).unwrap_or_else(|| panic!("{p}")))
            .collect()
    }

    #[test]
    fn merges_by_score_with_the_dummy_prefix() {
        let v = vocab(true);
        assert_eq!(
            v.encode("hello world", false),
            ids(&v, &["▁hello", "▁world"])
        );
        assert_eq!(
            v.decode_bytes(&v.encode("hello world", false)),
            b"hello world"
        );
        // Equal scores: the leftmost pair first.
        assert_eq!(v.encode("lll", false), ids(&v, &["▁", "ll", "l"]));
        // Leading spaces: the dummy prefix plus the text's own space; "▁hello" (-5) is formed
        // before "▁▁" (-20) could be.
        assert_eq!(v.encode(" hello", false), ids(&v, &["▁", "▁hello"]));
        assert_eq!(v.decode_bytes(&v.encode(" hello", false)), b" hello");
        assert!(v.encode("", false).is_empty());
    }

    #[test]
    fn no_dummy_prefix() {
        let v = vocab(false);
        assert_eq!(
            v.encode("hello world", false),
            ids(&v, &["hello", "▁world"])
        );
        assert_eq!(
            v.decode_bytes(&v.encode("hello world", false)),
            b"hello world"
        );
    }

    #[test]
    fn byte_fallback() {
        let v = vocab(false);
        // "ü" (C3 BC) and "🦙" (F0 9F A6 99) are not pieces: their bytes are emitted.
        let got = v.encode("hü🦙é", false);
        let want = ids(
            &v,
            &[
                "h", "<0xC3>", "<0xBC>", "<0xF0>", "<0x9F>", "<0xA6>", "<0x99>", "é",
            ],
        );
        assert_eq!(got, want);
        assert_eq!(String::from_utf8(v.decode_bytes(&got)).unwrap(), "hü🦙é");
    }

    #[test]
    fn special_tokens() {
        let v = vocab(true);
        // User-defined tokens are always cut out; control ones only when parsing specials. After a
        // special token the next fragment gets the dummy prefix again.
        assert_eq!(
            v.encode("hello<tag>world", false),
            ids(&v, &["▁hello", "<tag>", "▁world"])
        );
        assert_eq!(v.encode("<s>hello", true), ids(&v, &["<s>", "▁hello"]));
        let plain = v.encode("<s>", false);
        assert!(!plain.contains(&1), "{plain:?}");
        // Control tokens are not decoded; user-defined ones are.
        assert_eq!(
            v.decode_bytes(&ids(&v, &["<s>", "▁hello", "<tag>"])),
            b"hello<tag>"
        );
    }
}
