//! Stop strings: a session ends at the token that completes one, like an end-of-sequence token
//! (nothing is judged, committed or charged past it), and its text is cut where the stop string
//! begins (the stop string itself is never emitted).

use std::sync::Arc;

use anyhow::{bail, Result};

use crate::tokenizer::Tokenizer;

/// At most this many stop strings per request.
pub const MAX_STOP_STRINGS: usize = 16;
/// The longest stop string accepted, in bytes.
pub const MAX_STOP_BYTES: usize = 256;

/// The stop strings of a session, with the tokenizer that turns its tokens into text.
#[derive(Clone)]
pub struct StopStrings {
    strings: Vec<String>,
    tokenizer: Arc<Tokenizer>,
    /// Tokens decoded to look for a stop string completed by the last one (enough to hold the
    /// longest stop string whatever the tokenization: ≥ 1 byte per token, byte-fallback pieces
    /// included, plus context for the decoder's boundary handling).
    window: usize,
}

impl std::fmt::Debug for StopStrings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("StopStrings").field(&self.strings).finish()
    }
}

impl StopStrings {
    /// Validates `strings` (none empty, at most [`MAX_STOP_STRINGS`] of at most
    /// [`MAX_STOP_BYTES`] bytes); `None` when there are none.
    pub fn new(strings: &[String], tokenizer: Arc<Tokenizer>) -> Result<Option<Self>> {
        if strings.is_empty() {
            return Ok(None);
        }
        if strings.len() > MAX_STOP_STRINGS {
            bail!(
                "stop: {} stop strings given, at most {MAX_STOP_STRINGS} are allowed",
                strings.len()
            );
        }
        for s in strings {
            if s.is_empty() {
                bail!("stop: a stop string is empty");
            }
            if s.len() > MAX_STOP_BYTES {
                bail!(
                    "stop: a stop string of {} bytes is longer than the {MAX_STOP_BYTES} allowed",
                    s.len()
                );
            }
        }
        let longest = strings.iter().map(String::len).max().unwrap_or(0);
        Ok(Some(StopStrings {
            strings: strings.to_vec(),
            tokenizer,
            window: longest + 8,
        }))
    }

    pub fn strings(&self) -> &[String] {
        &self.strings
    }

    /// The byte offset where the earliest stop string in `text` begins.
    pub fn find(&self, text: &str) -> Option<usize> {
        self.strings.iter().filter_map(|s| text.find(s)).min()
    }

    /// How many bytes at the end of `text` could begin a stop string (to hold back while
    /// streaming); always on a character boundary.
    pub fn holdback(&self, text: &str) -> usize {
        let mut keep = 0;
        for s in &self.strings {
            for (i, _) in s.char_indices().skip(1) {
                if i > keep && text.ends_with(&s[..i]) {
                    keep = i;
                }
            }
        }
        keep
    }

    /// Whether the text of `completion` holds a stop string that its last token completed (the
    /// session checks after every committed token, so an earlier one would have ended it).
    pub fn completed_by_last(&self, completion: &[u32]) -> bool {
        let tail = &completion[completion.len().saturating_sub(self.window)..];
        self.tokenizer
            .decode(tail)
            .is_ok_and(|text| self.find(&text).is_some())
    }

    /// `text` cut where its earliest stop string begins.
    pub fn cut<'a>(&self, text: &'a str) -> &'a str {
        match self.find(text) {
            Some(i) => &text[..i],
            None => text,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The byte-level BPE tokenizer of a synthesized tiny model.
    fn tokenizer() -> Arc<Tokenizer> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tiny.gguf");
        let shape = crate::synth::Shape::parse("tiny").unwrap();
        crate::synth::write_synth(&shape, "f32", 0, &path, &|_, _| {}).unwrap();
        let f = crate::gguf::GgufFile::open(&path).unwrap();
        Arc::new(Tokenizer::for_gguf(&f).unwrap())
    }

    fn stops(s: &[&str]) -> StopStrings {
        let s: Vec<String> = s.iter().map(|s| s.to_string()).collect();
        StopStrings::new(&s, tokenizer()).unwrap().unwrap()
    }

    #[test]
    fn find_is_the_earliest_of_all_stop_strings() {
        let s = stops(&["\n\n", "END"]);
        assert_eq!(s.find("abc END x\n\n"), Some(4));
        assert_eq!(s.find("a\n\nEND"), Some(1));
        assert_eq!(s.find("nothing here"), None);
        assert_eq!(s.cut("one END two"), "one ");
    }

    #[test]
    fn holdback_keeps_what_could_begin_a_stop_string() {
        let s = stops(&["</answer>", "éé"]);
        assert_eq!(s.holdback("the </ans"), 5);
        assert_eq!(s.holdback("the <"), 1);
        assert_eq!(s.holdback("the answer"), 0);
        // A whole stop string is found, not held back.
        assert_eq!(s.holdback("x</answer>"), 0);
        // Character boundaries only.
        assert_eq!(s.holdback("café"), "é".len());
    }

    #[test]
    fn validation_names_what_is_wrong() {
        let tok = tokenizer();
        assert!(StopStrings::new(&[], tok.clone()).unwrap().is_none());
        let e = StopStrings::new(&["".into()], tok.clone()).unwrap_err();
        assert!(e.to_string().contains("empty"), "{e}");
        let many: Vec<String> = (0..17).map(|i| i.to_string()).collect();
        let e = StopStrings::new(&many, tok.clone()).unwrap_err();
        assert!(e.to_string().contains("at most 16"), "{e}");
        let e = StopStrings::new(&["x".repeat(300)], tok).unwrap_err();
        assert!(e.to_string().contains("300 bytes"), "{e}");
    }

    #[test]
    fn a_stop_string_completed_by_the_last_token_is_seen() {
        let s = stops(&["ab"]);
        let ids = |t: &str| s.tokenizer.encode(t, false).unwrap();
        assert!(!s.completed_by_last(&ids("xx a")));
        assert!(s.completed_by_last(&ids("xx ab")));
        // Only the last tokens are decoded: a long completion costs no more.
        let mut long = ids(&"word ".repeat(500));
        assert!(!s.completed_by_last(&long));
        long.extend(ids(" ab"));
        assert!(s.completed_by_last(&long));
    }
}
