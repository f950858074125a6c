//! Reading preference data in TRL's DPO format and prompts as NDJSON, with every bad line reported by number.
//!
//! TRL: one JSON object per line, {"prompt": str, "chosen": str, "rejected": str}; extra fields are ignored
//! (TRL datasets often carry ids and scores). The conversational variant (lists of {"role","content"}) needs the
//! model's chat template and is reported as unsupported rather than guessed at.

use std::io::BufRead;

use serde::{Deserialize, Serialize};

/// One labelled comparison: `chosen` was preferred over `rejected` as a continuation of `prompt`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PreferencePair {
    pub prompt: String,
    pub chosen: String,
    pub rejected: String,
}

/// One bad input line (1-based).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LineError {
    pub line: usize,
    pub message: String,
}

/// Every bad line of a file (up to [`MAX_REPORTED`]), or the read error that stopped it.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("reading line {line}: {source}")]
    Io {
        line: usize,
        #[source]
        source: std::io::Error,
    },
    #[error("{}", format_lines(.bad, *.total))]
    BadLines { bad: Vec<LineError>, total: usize },
    #[error("no records in the input")]
    Empty,
}

/// How many bad lines are listed in an error; the count covers all of them.
pub const MAX_REPORTED: usize = 20;

fn format_lines(bad: &[LineError], total: usize) -> String {
    let mut s = format!("{total} bad line(s):");
    for e in bad {
        s.push_str(&format!("\n  line {}: {}", e.line, e.message));
    }
    if total > bad.len() {
        s.push_str(&format!("\n  … and {} more", total - bad.len()));
    }
    s
}

/// Reads TRL-format preference pairs. Blank lines are skipped; any bad line fails the whole read, listing them.
pub fn read_preferences(reader: impl BufRead) -> Result<Vec<PreferencePair>, DataError> {
    read_ndjson(reader, parse_preference)
}

/// Reads prompts given as NDJSON, {"prompt": str} per line (extra fields ignored).
pub fn read_prompts(reader: impl BufRead) -> Result<Vec<String>, DataError> {
    read_ndjson(reader, |v| {
        string_field(&v, "prompt").and_then(|p| non_empty("prompt", p))
    })
}

fn read_ndjson<T>(
    reader: impl BufRead,
    parse: impl Fn(serde_json::Value) -> Result<T, String>,
) -> Result<Vec<T>, DataError> {
    let mut out = Vec::new();
    let mut bad = Vec::new();
    let mut total_bad = 0;
    for (i, line) in reader.lines().enumerate() {
        let line_no = i + 1;
        let line = line.map_err(|source| DataError::Io {
            line: line_no,
            source,
        })?;
        if line.trim().is_empty() {
            continue;
        }
        let parsed = serde_json::from_str::<serde_json::Value>(&line)
            .map_err(|e| format!("not JSON: {e}"))
            .and_then(&parse);
        match parsed {
            Ok(x) => out.push(x),
            Err(message) => {
                total_bad += 1;
                if bad.len() < MAX_REPORTED {
                    bad.push(LineError {
                        line: line_no,
                        message,
                    });
                }
            }
        }
    }
    if total_bad > 0 {
        return Err(DataError::BadLines {
            bad,
            total: total_bad,
        });
    }
    if out.is_empty() {
        return Err(DataError::Empty);
    }
    Ok(out)
}

fn parse_preference(v: serde_json::Value) -> Result<PreferencePair, String> {
    if !v.is_object() {
        return Err("expected a JSON object {\"prompt\", \"chosen\", \"rejected\"}".into());
    }
    if v.get("prompt").is_some_and(|p| p.is_array())
        || v.get("chosen").is_some_and(|p| p.is_array())
    {
        return Err(
            "conversational format (lists of messages) is not supported yet; \
                    give prompt, chosen and rejected as strings"
                .into(),
        );
    }
    let pair = PreferencePair {
        prompt: string_field(&v, "prompt")?,
        chosen: string_field(&v, "chosen").and_then(|c| non_empty("chosen", c))?,
        rejected: string_field(&v, "rejected").and_then(|c| non_empty("rejected", c))?,
    };
    if pair.chosen == pair.rejected {
        return Err("chosen and rejected are identical".into());
    }
    Ok(pair)
}

fn string_field(v: &serde_json::Value, name: &str) -> Result<String, String> {
    match v.get(name) {
        None => Err(format!("missing field {name:?}")),
        Some(serde_json::Value::String(s)) => Ok(s.clone()),
        Some(other) => Err(format!("field {name:?} must be a string, got {other}")),
    }
}

fn non_empty(name: &str, s: String) -> Result<String, String> {
    if s.is_empty() {
        Err(format!("field {name:?} is empty"))
    } else {
        Ok(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_trl_lines_and_reports_every_bad_one_by_number() {
        let good = "{\"prompt\":\"p\",\"chosen\":\"a\",\"rejected\":\"b\",\"id\":7}\n\n\
                    {\"prompt\":\"\",\"chosen\":\"x\",\"rejected\":\"y\"}\n";
        let pairs = read_preferences(good.as_bytes()).unwrap();
        assert_eq!(pairs.len(), 2);
        assert_eq!(pairs[0].chosen, "a");

        let input = [
            r#"{"prompt":"p","chosen":"a","rejected":"b"}"#,
            r#"{"prompt":"p","chosen":"a"}"#,
            r#"not json"#,
            r#"{"prompt":"p","chosen":5,"rejected":"b"}"#,
            r#"{"prompt":[{"role":"user","content":"hi"}],"chosen":[],"rejected":[]}"#,
            r#"{"prompt":"p","chosen":"same","rejected":"same"}"#,
            r#"[1,2]"#,
        ]
        .join("\n");
        let DataError::BadLines { bad, total } = read_preferences(input.as_bytes()).unwrap_err()
        else {
            panic!("expected bad lines")
        };
        assert_eq!(total, 6);
        let lines: Vec<usize> = bad.iter().map(|e| e.line).collect();
        assert_eq!(lines, [2, 3, 4, 5, 6, 7]);
        assert!(
            bad[0].message.contains("\"rejected\""),
            "{}",
            bad[0].message
        );
        assert!(bad[3].message.contains("conversational"));
        let text = DataError::BadLines { bad, total }.to_string();
        assert!(text.contains("line 3: not JSON"), "{text}");
        assert!(matches!(
            read_preferences("\n\n".as_bytes()),
            Err(DataError::Empty)
        ));
    }

    #[test]
    fn reads_prompts() {
        let p = read_prompts("{\"prompt\":\"one\"}\n{\"prompt\":\"two\",\"x\":1}\n".as_bytes())
            .unwrap();
        assert_eq!(p, ["one", "two"]);
        let e = read_prompts("{\"text\":\"one\"}\n".as_bytes()).unwrap_err();
        assert!(
            e.to_string().contains("line 1: missing field \"prompt\""),
            "{e}"
        );
    }
}
