//! Why one step of the loop failed, with its cause kept: the loop logs these and carries on with the next
//! project or tick, so they never reach a client.

use crate::engine::EngineError;
use crate::judge::http::JudgeCallError;
use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum LoopError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the model engine: {0}")]
    Engine(#[from] EngineError),
    #[error("judge {judge}: {source}")]
    JudgeCall {
        judge: String,
        #[source]
        source: JudgeCallError,
    },
    #[error("judge {judge}: bad settings: {source}")]
    JudgeSettings {
        judge: String,
        #[source]
        source: serde_json::Error,
    },
}

pub type LoopResult<T> = Result<T, LoopError>;
