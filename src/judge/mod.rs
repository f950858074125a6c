//! AI judges: annotators that answer by themselves. Each judge reads a prompt and the two completions as
//! shown (left, right) and picks one, the way a person at the workbench would.

pub mod http;
pub mod sentiment;

use crate::domain::Choice;

/// What a judge said about one comparison, and why.
#[derive(Debug, Clone, PartialEq)]
pub struct Verdict {
    pub choice: Choice,
    pub rationale: String,
}
