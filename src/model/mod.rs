//! The language model, in candle only: loading, the differentiable forward, log-probs, sampling, saving.
