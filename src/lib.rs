//! prefloop: collect preference labels where they count, and DPO fine-tune a language model on them.
//!
//! Layers (docs/ARCHITECTURE.md): `http` → `engine` → `learn` → `model`, and `store` beside them; `domain`
//! holds the plain types they all share.
//! `model` and `learn` never import axum or sqlx; `http` never imports candle.

pub mod cli;
pub mod config;
pub mod domain;
pub mod engine;
pub mod http;
pub mod judge;
pub mod learn;
pub mod model;
pub mod store;
