//! AI judges: annotators that answer by themselves. Each judge reads a prompt and the two completions as
//! shown (left, right) and picks one, the way a person at the workbench would.

pub mod http;
pub mod sentiment;

use serde::{Deserialize, Serialize};

use crate::domain::{Choice, JudgeRole};
use http::HttpJudgeSettings;

/// Answers per minute of a judge attached without a rate.
pub const DEFAULT_RATE_PER_MINUTE: f64 = 60.0;

/// What is stored with an attached judge: what it does, how fast it answers, and for an HTTP judge its
/// endpoint. Judges stored before roles existed read as labelling ones.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JudgeSettings {
    #[serde(default)]
    pub role: JudgeRole,
    #[serde(default = "default_rate")]
    pub rate_per_minute: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<HttpJudgeSettings>,
}

fn default_rate() -> f64 {
    DEFAULT_RATE_PER_MINUTE
}

impl JudgeSettings {
    /// The settings as the store keeps them.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::to_value(self).expect("judge settings serialise")
    }
}

/// What a judge said about one comparison, and why.
#[derive(Debug, Clone, PartialEq)]
pub struct Verdict {
    pub choice: Choice,
    pub rationale: String,
}
