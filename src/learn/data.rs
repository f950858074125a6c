//! Reading preference data in TRL's DPO format and prompts as NDJSON, with every bad line reported by number.
//!
//! TRL: one JSON object per line, {"prompt": str, "chosen": str, "rejected": str}; extra fields are ignored
//! (TRL datasets often carry ids and scores). The conversational variant (each field a list of
//! {"role","content"} messages) is rendered with the model's chat template, as TRL does: the prompt with the
//! generation prompt appended, each completion as what the template adds after it.

use std::io::BufRead;

use serde::{Deserialize, Serialize};

use crate::model::ChatMessage;

/// Renders chat messages in the model's format: `(messages, add_generation_prompt) -> text`
/// (e.g. `|m, g| tokenizer.apply_chat_template(m, g)`).
pub type ChatRenderer<'a> = &'a dyn Fn(&[ChatMessage], bool) -> String;

/// One labelled comparison: `chosen` was preferred over `rejected` as a continuation of `prompt`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PreferencePair {
    pub prompt: String,
    pub chosen: String,
    pub rejected: String,
    /// Whether each completion is whole: it ended where its author (or the model, by sampling EOS) stopped,
    /// not where a length limit cut it. Training appends EOS to a whole completion, as TRL does, so DPO
    /// learns when to stop. A TRL file's completions are whole.
    #[serde(default = "whole")]
    pub chosen_ends: bool,
    #[serde(default = "whole")]
    pub rejected_ends: bool,
    /// (minority votes, decisive votes) of a pair several annotators split on, for soft aggregation:
    /// the pair trains with label smoothing minority / decisive instead of the run's own (DPO loss only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub split_votes: Option<(u32, u32)>,
}

fn whole() -> bool {
    true
}

impl PreferencePair {
    /// A pair of whole completions (both end with EOS in training).
    pub fn new(
        prompt: impl Into<String>,
        chosen: impl Into<String>,
        rejected: impl Into<String>,
    ) -> PreferencePair {
        PreferencePair {
            prompt: prompt.into(),
            chosen: chosen.into(),
            rejected: rejected.into(),
            chosen_ends: true,
            rejected_ends: true,
            split_votes: None,
        }
    }

    /// The label smoothing this pair trains with: its own for a split vote, else `default`.
    pub fn label_smoothing(&self, default: f64) -> f64 {
        match self.split_votes {
            Some((minority, total)) if total > 0 => minority as f64 / total as f64,
            _ => default,
        }
    }
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
/// Conversational lines are bad lines here: they need [`read_preferences_chat`].
pub fn read_preferences(reader: impl BufRead) -> Result<Vec<PreferencePair>, DataError> {
    read_ndjson(reader, |v| parse_preference(v, None))
}

/// Like [`read_preferences`], also taking conversational lines, rendered with `chat`.
pub fn read_preferences_chat(
    reader: impl BufRead,
    chat: ChatRenderer<'_>,
) -> Result<Vec<PreferencePair>, DataError> {
    read_ndjson(reader, |v| parse_preference(v, Some(chat)))
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

fn parse_preference(
    v: serde_json::Value,
    chat: Option<ChatRenderer<'_>>,
) -> Result<PreferencePair, String> {
    if !v.is_object() {
        return Err("expected a JSON object {\"prompt\", \"chosen\", \"rejected\"}".into());
    }
    if ["prompt", "chosen", "rejected"]
        .iter()
        .any(|f| v.get(*f).is_some_and(|x| x.is_array()))
    {
        let Some(chat) = chat else {
            return Err(
                "conversational format (lists of messages) needs a chat template here; \
                        give prompt, chosen and rejected as strings"
                    .into(),
            );
        };
        return parse_conversation(&v, chat);
    }
    let pair = PreferencePair::new(
        string_field(&v, "prompt")?,
        string_field(&v, "chosen").and_then(|c| non_empty("chosen", c))?,
        string_field(&v, "rejected").and_then(|c| non_empty("rejected", c))?,
    );
    if pair.chosen == pair.rejected {
        return Err("chosen and rejected are identical".into());
    }
    Ok(pair)
}

/// TRL's conversational pair: prompt messages, and the assistant turn(s) of each side.
fn parse_conversation(
    v: &serde_json::Value,
    chat: ChatRenderer<'_>,
) -> Result<PreferencePair, String> {
    let prompt = messages(v, "prompt")?;
    let prompt_text = chat(&prompt, true);
    let completion = |name: &str| -> Result<String, String> {
        let side = messages(v, name)?;
        if side.is_empty() {
            return Err(format!("field {name:?} has no messages"));
        }
        let all: Vec<ChatMessage> = prompt.iter().cloned().chain(side).collect();
        let full = chat(&all, false);
        full.strip_prefix(&prompt_text)
            .map(str::to_string)
            .filter(|c| !c.is_empty())
            .ok_or_else(|| format!("field {name:?}: the chat template does not extend the prompt"))
    };
    let pair = PreferencePair::new(
        prompt_text.clone(),
        completion("chosen")?,
        completion("rejected")?,
    );
    if pair.chosen == pair.rejected {
        return Err("chosen and rejected are identical".into());
    }
    Ok(pair)
}

fn messages(v: &serde_json::Value, name: &str) -> Result<Vec<ChatMessage>, String> {
    let Some(list) = v.get(name).and_then(|x| x.as_array()) else {
        return Err(format!("field {name:?} must be a list of messages"));
    };
    list.iter()
        .map(|m| {
            let role = m.get("role").and_then(|r| r.as_str());
            let content = m.get("content").and_then(|c| c.as_str());
            match (role, content) {
                (Some(role), Some(content)) => Ok(ChatMessage {
                    role: role.to_string(),
                    content: content.to_string(),
                }),
                _ => Err(format!(
                    "field {name:?}: each message needs string \"role\" and \"content\""
                )),
            }
        })
        .collect()
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
    fn renders_conversational_lines_with_the_chat_template() {
        let tok = crate::model::TextTokenizer::byte_level_for_tests(); // ChatML
        let render = |m: &[ChatMessage], g: bool| tok.apply_chat_template(m, g);
        let input = [
            r#"{"prompt":[{"role":"user","content":"Hi?"}],"chosen":[{"role":"assistant","content":"Hello!"}],"rejected":[{"role":"assistant","content":"Go away."}]}"#,
            r#"{"prompt":"plain","chosen":"a","rejected":"b"}"#,
            r#"{"prompt":[{"role":"user"}],"chosen":[],"rejected":[]}"#,
        ]
        .join("\n");
        let DataError::BadLines { bad, .. } =
            read_preferences_chat(input.as_bytes(), &render).unwrap_err()
        else {
            panic!("expected a bad line")
        };
        assert_eq!(bad.len(), 1);
        assert_eq!(bad[0].line, 3);
        let good = input.lines().take(2).collect::<Vec<_>>().join("\n");
        let pairs = read_preferences_chat(good.as_bytes(), &render).unwrap();
        assert_eq!(
            pairs[0].prompt,
            "<|im_start|>user\nHi?<|im_end|>\n<|im_start|>assistant\n"
        );
        assert_eq!(pairs[0].chosen, "Hello!<|im_end|>\n");
        assert_eq!(pairs[0].rejected, "Go away.<|im_end|>\n");
        assert_eq!(pairs[1].prompt, "plain");
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
