//! The one error type of the model layer. Every file problem names the file, and the tensor when there is one.

use std::path::PathBuf;

/// What can go wrong loading, running or saving a model. Loading never panics: a bad file is one of these.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: unknown architecture {found:?} (supported: llama, mistral, qwen2)")]
    UnknownArchitecture { path: PathBuf, found: String },
    #[error("{path}: bad model config: {reason}")]
    BadConfig { path: PathBuf, reason: String },
    #[error("{path}: missing tensor {tensor}")]
    MissingTensor { path: PathBuf, tensor: String },
    #[error("{path}: tensor {tensor} has shape {found:?}, expected {expected:?}")]
    WrongShape {
        path: PathBuf,
        tensor: String,
        expected: Vec<usize>,
        found: Vec<usize>,
    },
    #[error("{path}: tensor {tensor} has dtype {dtype}, expected a floating-point type")]
    WrongDtype {
        path: PathBuf,
        tensor: String,
        dtype: String,
    },
    #[error(
        "{path}: file is truncated: tensor {tensor} needs bytes up to {needed}, the file has {size}"
    )]
    Truncated {
        path: PathBuf,
        tensor: String,
        needed: u64,
        size: u64,
    },
    #[error("{path}: not a valid {format} file: {reason}")]
    Corrupt {
        path: PathBuf,
        format: &'static str,
        reason: String,
    },
    #[error("{path}: tokenizer: {reason}")]
    Tokenizer { path: PathBuf, reason: String },
    #[error("tokenizer: {0}")]
    Tokenize(String),
    #[error("invalid input: {0}")]
    Input(String),
    #[error("tensor computation failed: {0}")]
    Candle(#[from] candle_core::Error),
}

impl ModelError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        ModelError::Io {
            path: path.into(),
            source,
        }
    }
}

pub type Result<T, E = ModelError> = std::result::Result<T, E>;
