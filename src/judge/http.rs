//! An AI judge behind any OpenAI-compatible chat-completions endpoint (the paper used GPT-4 this way).
//! Each comparison goes out with the two completions in a random A/B order, so the model's position bias
//! cannot favour either side; the answer is read from "Preferred: A" or "Preferred: B". Failed calls are
//! retried with backoff; an answer that names neither is recorded as a skip with the raw text kept.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::Verdict;
use crate::domain::Choice;

/// What an admin sets when attaching an HTTP judge.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpJudgeSettings {
    /// The chat-completions URL, e.g. https://api.openai.com/v1/chat/completions.
    pub url: String,
    /// The model name sent with each request.
    pub model: String,
    /// Name of the environment variable holding the API key (never the key itself).
    #[serde(default)]
    pub api_key_env: Option<String>,
    /// The user message. `{guidelines}`, `{prompt}`, `{a}` and `{b}` are filled in.
    #[serde(default = "default_template")]
    pub prompt_template: String,
    #[serde(default = "default_retries")]
    pub max_retries: u32,
    /// Seconds before one call is given up.
    #[serde(default = "default_timeout")]
    pub timeout_seconds: f64,
}

fn default_template() -> String {
    "You compare two continuations of the same prompt.\n\nGuidelines:\n{guidelines}\n\n\
     Prompt:\n{prompt}\n\nContinuation A:\n{a}\n\nContinuation B:\n{b}\n\n\
     Which continuation is better? Think briefly, then end with exactly one line: \
     \"Preferred: A\" or \"Preferred: B\"."
        .into()
}

fn default_retries() -> u32 {
    3
}

fn default_timeout() -> f64 {
    60.0
}

impl HttpJudgeSettings {
    /// Checks what can be checked before the first call: the URL's scheme, the template's slots, and
    /// that the key's variable is set.
    pub fn validate(&self) -> Result<(), String> {
        if !(self.url.starts_with("http://") || self.url.starts_with("https://")) {
            return Err(format!(
                "url must start with http:// or https://, got {:?}",
                self.url
            ));
        }
        if self.model.trim().is_empty() {
            return Err("model must not be empty".into());
        }
        for slot in ["{prompt}", "{a}", "{b}"] {
            if !self.prompt_template.contains(slot) {
                return Err(format!("prompt_template must contain {slot}"));
            }
        }
        if let Some(var) = &self.api_key_env
            && std::env::var(var).is_err()
        {
            return Err(format!(
                "the environment variable {var} (api_key_env) is not set on the server"
            ));
        }
        if self.max_retries > 10 || !(self.timeout_seconds > 0.0 && self.timeout_seconds <= 600.0) {
            return Err("max_retries must be at most 10 and timeout_seconds in (0, 600]".into());
        }
        Ok(())
    }
}

/// Fills `{name}` slots in one pass, so a value that itself contains "{a}" is never filled again.
pub fn fill_template(template: &str, values: &[(&str, &str)]) -> String {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let after = &rest[open + 1..];
        let slot = after.find('}').and_then(|close| {
            let name = &after[..close];
            values
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| (close, *v))
        });
        match slot {
            Some((close, value)) => {
                out.push_str(value);
                rest = &after[close + 1..];
            }
            None => {
                out.push('{');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

/// Reads the verdict out of a model's answer: the last "Preferred: A|B" wins, case and spacing aside.
pub fn parse_preference(answer: &str) -> Option<char> {
    let lower = answer.to_ascii_lowercase();
    let mut found = None;
    let mut rest = lower.as_str();
    while let Some(i) = rest.find("preferred") {
        rest = &rest[i + "preferred".len()..];
        let after = rest.trim_start_matches([' ', '*', '_', ':', '\t']);
        match after.chars().next() {
            Some('a') if !after[1..].starts_with(|c: char| c.is_ascii_alphanumeric()) => {
                found = Some('A')
            }
            Some('b') if !after[1..].starts_with(|c: char| c.is_ascii_alphanumeric()) => {
                found = Some('B')
            }
            _ => {}
        }
    }
    found
}

#[derive(Debug, thiserror::Error)]
pub enum JudgeCallError {
    #[error("the judge endpoint failed after {tries} tries: {last}")]
    Unavailable { tries: u32, last: String },
}

pub struct HttpJudge {
    settings: HttpJudgeSettings,
    client: reqwest::Client,
}

impl HttpJudge {
    pub fn new(settings: HttpJudgeSettings) -> HttpJudge {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs_f64(settings.timeout_seconds))
            .build()
            .expect("a client with a timeout always builds");
        HttpJudge { settings, client }
    }

    /// Judges one comparison. `a_is_left` is the draw that decides which completion the model sees as A.
    pub async fn judge(
        &self,
        guidelines: &str,
        prompt: &str,
        left: &str,
        right: &str,
        left_is_a: bool,
    ) -> Result<Verdict, JudgeCallError> {
        let (a, b) = if left_is_a {
            (left, right)
        } else {
            (right, left)
        };
        let message = fill_template(
            &self.settings.prompt_template,
            &[
                ("guidelines", guidelines),
                ("prompt", prompt),
                ("a", a),
                ("b", b),
            ],
        );
        let answer = self.complete(&message).await?;
        let choice = match parse_preference(&answer) {
            Some('A') => Some(left_is_a),
            Some('B') => Some(!left_is_a),
            _ => None,
        };
        Ok(match choice {
            Some(true) => Verdict {
                choice: Choice::Left,
                rationale: answer,
            },
            Some(false) => Verdict {
                choice: Choice::Right,
                rationale: answer,
            },
            None => Verdict {
                choice: Choice::Skip,
                rationale: format!("unparseable judge answer: {answer}"),
            },
        })
    }

    /// One chat completion, retried with exponential backoff on network errors, 429 and 5xx.
    async fn complete(&self, message: &str) -> Result<String, JudgeCallError> {
        let body = serde_json::json!({
            "model": self.settings.model,
            "messages": [{"role": "user", "content": message}],
            "temperature": 0.0,
        });
        let key = self
            .settings
            .api_key_env
            .as_ref()
            .and_then(|v| std::env::var(v).ok());
        let tries = self.settings.max_retries + 1;
        let mut last = String::new();
        for attempt in 0..tries {
            if attempt > 0 {
                tokio::time::sleep(Duration::from_millis(250 << attempt.min(6))).await;
            }
            let mut req = self.client.post(&self.settings.url).json(&body);
            if let Some(k) = &key {
                req = req.bearer_auth(k);
            }
            match req.send().await {
                Ok(resp) if resp.status().is_success() => {
                    let v: serde_json::Value = match resp.json().await {
                        Ok(v) => v,
                        Err(e) => {
                            last = format!("unreadable answer: {e}");
                            continue;
                        }
                    };
                    return Ok(v["choices"][0]["message"]["content"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string());
                }
                Ok(resp) => {
                    let status = resp.status();
                    last = format!("HTTP {status}");
                    if !(status.as_u16() == 429 || status.is_server_error()) {
                        break; // a 4xx other than 429 will not get better by asking again
                    }
                }
                Err(e) => last = e.to_string(),
            }
        }
        Err(JudgeCallError::Unavailable { tries, last })
    }
}

#[cfg(test)]
mod tests {
    use super::{fill_template, parse_preference};

    #[test]
    fn fills_each_slot_once() {
        let t = "P: {prompt} | A: {a} | B: {b} | {unknown}";
        let filled = fill_template(t, &[("prompt", "say {a}"), ("a", "x"), ("b", "y")]);
        assert_eq!(filled, "P: say {a} | A: x | B: y | {unknown}");
    }

    #[test]
    fn reads_the_last_preference_line() {
        assert_eq!(parse_preference("A is vivid.\nPreferred: A"), Some('A'));
        assert_eq!(parse_preference("**Preferred:** b"), Some('B'));
        assert_eq!(
            parse_preference("Preferred: A... no, on reflection\nPreferred: B"),
            Some('B')
        );
        assert_eq!(parse_preference("I preferred neither"), None);
        assert_eq!(parse_preference("Preferred: Apples"), None);
        assert_eq!(parse_preference(""), None);
    }
}
