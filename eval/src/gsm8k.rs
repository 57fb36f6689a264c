//! GSM8K data (`question`, `answer` ending `#### N`) and answer extraction.

use std::path::Path;

use anyhow::{Context, Result};

#[derive(Debug, Clone, PartialEq)]
pub struct Problem {
    /// 0-based line index in the data file.
    pub index: usize,
    pub question: String,
    pub answer: String,
    /// The gold final answer, normalized.
    pub gold: Option<String>,
}

/// One line of a data file: a problem, or why the line is unusable (with its 1-based number).
pub type Line = std::result::Result<Problem, String>;

/// Reads a GSM8K-format JSONL file. A line that is not a valid problem is returned as an error
/// naming its line number (the run records it and goes on); an unreadable file is an error.
pub fn load(path: &Path) -> Result<Vec<Line>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read GSM8K data {}", path.display()))?;
    Ok(text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, line)| {
            parse_line(i, line).map_err(|e| format!("{}:{}: {e}", path.display(), i + 1))
        })
        .collect())
}

fn parse_line(index: usize, line: &str) -> std::result::Result<Problem, String> {
    let v: serde_json::Value =
        serde_json::from_str(line).map_err(|e| format!("not valid JSON ({e})"))?;
    let field = |k: &str| {
        v.get(k)
            .and_then(|x| x.as_str())
            .map(str::to_owned)
            .ok_or_else(|| format!("missing string field {k:?}"))
    };
    let question = field("question")?;
    let answer = field("answer")?;
    let gold = extract_answer(&answer);
    if gold.is_none() {
        return Err("the answer has no final number".into());
    }
    Ok(Problem {
        index,
        question,
        answer,
        gold,
    })
}

/// Normalizes a number as written (`$1,234.50`, `-7`, `18.`) to a canonical string (`1234.5`,
/// `-7`, `18`), or `None` if it is not a number.
pub fn normalize_number(s: &str) -> Option<String> {
    let t: String = s
        .trim()
        .trim_end_matches(['.', ','])
        .chars()
        .filter(|c| !matches!(c, ',' | '$' | ' '))
        .collect();
    let v: f64 = t.parse().ok()?;
    if !v.is_finite() {
        return None;
    }
    let r = (v * 1e6).round() / 1e6;
    Some(if r == r.trunc() {
        format!("{}", r as i64)
    } else {
        format!("{r}")
    })
}

/// Numbers in `text` as written, in order (signs, `$`, thousands separators and decimals kept).
fn numbers(text: &str) -> Vec<String> {
    let chars: Vec<char> = text.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let start = i;
        let neg = chars[i] == '-'
            && i + 1 < chars.len()
            && (chars[i + 1].is_ascii_digit() || chars[i + 1] == '$');
        if neg {
            i += 1;
        }
        if i < chars.len() && chars[i] == '$' {
            i += 1;
        }
        if i < chars.len() && chars[i].is_ascii_digit() {
            let mut j = i;
            while j < chars.len()
                && (chars[j].is_ascii_digit()
                    || ((chars[j] == ',' || chars[j] == '.')
                        && j + 1 < chars.len()
                        && chars[j + 1].is_ascii_digit()))
            {
                j += 1;
            }
            out.push(chars[start..j].iter().collect());
            i = j;
        } else {
            i = start + 1;
        }
    }
    out
}

/// The final answer of a solution: the number after the last `####`, else the last number in the
/// text; normalized.
pub fn extract_answer(text: &str) -> Option<String> {
    if let Some(pos) = text.rfind("####") {
        if let Some(n) = numbers(&text[pos + 4..]).first() {
            return normalize_number(n);
        }
    }
    numbers(text).last().and_then(|n| normalize_number(n))
}

/// A GSM8K solution without its `<<calculator>>` annotations.
pub fn strip_annotations(answer: &str) -> String {
    let mut out = String::with_capacity(answer.len());
    let mut rest = answer;
    while let Some(a) = rest.find("<<") {
        out.push_str(&rest[..a]);
        match rest[a..].find(">>") {
            Some(b) => rest = &rest[a + b + 2..],
            None => {
                rest = &rest[a..];
                break;
            }
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extracts_answers() {
        assert_eq!(
            extract_answer("She makes 9 * 2 = $18 every day.\n#### 18").as_deref(),
            Some("18")
        );
        assert_eq!(extract_answer("#### 1,234").as_deref(), Some("1234"));
        assert_eq!(
            extract_answer("The total is $1,234.50.").as_deref(),
            Some("1234.5")
        );
        assert_eq!(
            extract_answer("It drops to -7 degrees").as_deref(),
            Some("-7")
        );
        assert_eq!(extract_answer("#### -$3").as_deref(), Some("-3"));
        assert_eq!(extract_answer("about 0.25 of it").as_deref(), Some("0.25"));
        assert_eq!(
            extract_answer("first 3, then 4 and finally 5.").as_deref(),
            Some("5")
        );
        assert_eq!(
            extract_answer("#### 18\nlater text 99").as_deref(),
            Some("18")
        );
        assert_eq!(extract_answer("no number here"), None);
        assert_eq!(
            extract_answer("#### none, but 12 before").as_deref(),
            Some("12")
        );
        assert_eq!(
            extract_answer("a well-known fact: 5-3=2").as_deref(),
            Some("2")
        );
        assert_eq!(extract_answer("#### 18.00").as_deref(), Some("18"));
    }

    #[test]
    fn strips_calculator_annotations() {
        assert_eq!(
            strip_annotations("16 - 3 - 4 = <<16-3-4=9>>9 eggs"),
            "16 - 3 - 4 = 9 eggs"
        );
    }

    #[test]
    fn bad_lines_name_their_number() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("d.jsonl");
        std::fs::write(&p, "{\"question\": \"q\", \"answer\": \"x #### 3\"}\nnot json\n{\"question\": \"q\"}\n{\"question\": \"q\", \"answer\": \"none\"}\n").unwrap();
        let lines = load(&p).unwrap();
        assert_eq!(lines.len(), 4);
        assert_eq!(lines[0].as_ref().unwrap().gold.as_deref(), Some("3"));
        assert!(lines[1].as_ref().unwrap_err().contains("d.jsonl:2"));
        assert!(lines[2]
            .as_ref()
            .unwrap_err()
            .contains(":3: missing string field \"answer\""));
        assert!(lines[3]
            .as_ref()
            .unwrap_err()
            .contains(":4: the answer has no final number"));
    }
}
