//! Sequence log-probabilities of completions given prompts: log π(y|x) = Σ over completion tokens of
//! log p(token | everything before it). Prompt tokens and padding never count (REFERENCE.md, "DPO").

use candle_core::{D, DType, Tensor};

use super::llama::Kernels;
use super::{LanguageModel, ModelError, Result};

/// Where padding goes when sequences of different lengths share a batch. Both give the same log-probs (tested).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Padding {
    Left,
    #[default]
    Right,
}

/// Differentiable per-sequence results, each of shape (b,) in the model's [`compute_dtype`](super::compute_dtype)
/// (f32 for bf16 weights).
#[derive(Debug, Clone)]
pub struct SeqLogProbs {
    /// Σ log p over completion tokens (DPO uses this).
    pub sum: Tensor,
    /// Number of completion tokens, as a float tensor.
    pub tokens: Tensor,
}

impl SeqLogProbs {
    /// Per-token mean log p (IPO uses this); 0 for an empty completion rather than NaN.
    pub fn mean(&self) -> Result<Tensor> {
        Ok(self
            .sum
            .broadcast_div(&self.tokens.clamp(1.0, f64::INFINITY)?)?)
    }
}

/// One sequence's log-probability, computed without gradients.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SeqLogProb {
    pub sum: f64,
    /// sum / tokens (0 when there are no completion tokens).
    pub mean: f64,
    pub tokens: usize,
}

/// Sequences per batch in `score`: bounds memory at (batch × length × vocab) floats.
const SCORE_BATCH: usize = 8;

impl LanguageModel {
    /// Σ log p(completion | prompt) for each (prompt ids, completion ids) item, batched with `padding`.
    /// Differentiable in every weight. Prompts must not be empty (the first completion token needs a context).
    pub fn sequence_logprobs(
        &self,
        items: &[(Vec<u32>, Vec<u32>)],
        padding: Padding,
    ) -> Result<SeqLogProbs> {
        self.logprobs_with(items, padding, Kernels::Differentiable)
    }

    /// `sequence_logprobs` without gradients, through the fused kernels, in batches of 8, right padding.
    pub fn score(&self, items: &[(Vec<u32>, Vec<u32>)]) -> Result<Vec<SeqLogProb>> {
        let mut out = Vec::with_capacity(items.len());
        for chunk in items.chunks(SCORE_BATCH) {
            let r = self.logprobs_with(chunk, Padding::Right, Kernels::Fused)?;
            let sums = r.sum.to_dtype(DType::F64)?.to_vec1::<f64>()?;
            for (s, (_, c)) in sums.into_iter().zip(chunk) {
                let n = c.len();
                out.push(SeqLogProb {
                    sum: s,
                    mean: if n == 0 { 0.0 } else { s / n as f64 },
                    tokens: n,
                });
            }
        }
        Ok(out)
    }

    pub(crate) fn logprobs_with(
        &self,
        items: &[(Vec<u32>, Vec<u32>)],
        padding: Padding,
        k: Kernels,
    ) -> Result<SeqLogProbs> {
        let b = items.len();
        let dev = &self.device;
        let vocab = self.config.vocab_size as u32;
        let dtype = super::compute_dtype(self.dtype);
        if b == 0 {
            let z = Tensor::zeros(0, dtype, dev)?;
            return Ok(SeqLogProbs {
                sum: z.clone(),
                tokens: z,
            });
        }
        for (i, (p, c)) in items.iter().enumerate() {
            if p.is_empty() {
                return Err(ModelError::Input(format!("item {i}: empty prompt")));
            }
            if let Some(bad) = p.iter().chain(c).find(|&&t| t >= vocab) {
                return Err(ModelError::Input(format!(
                    "item {i}: token id {bad} outside vocabulary {vocab}"
                )));
            }
        }
        let t = items
            .iter()
            .map(|(p, c)| p.len() + c.len())
            .max()
            .unwrap_or(0);
        let pad = self.tokenizer.eos_id();
        let mut ids = vec![pad; b * t];
        let mut valid = vec![vec![false; t]; b];
        // Row of the flattened hidden states predicting each completion token, the token, and its sequence.
        let (mut rows, mut targets, mut seg) = (Vec::new(), Vec::new(), Vec::new());
        for (r, (p, c)) in items.iter().enumerate() {
            let len = p.len() + c.len();
            let off = match padding {
                Padding::Left => t - len,
                Padding::Right => 0,
            };
            for (j, &tok) in p.iter().chain(c).enumerate() {
                ids[r * t + off + j] = tok;
                valid[r][off + j] = true;
            }
            for (j, &tok) in c.iter().enumerate() {
                rows.push((r * t + off + p.len() + j - 1) as u32);
                targets.push(tok);
                seg.push(r);
            }
        }
        let n = rows.len();
        let mut counts = vec![0f64; b];
        for &r in &seg {
            counts[r] += 1.0;
        }
        let tokens = Tensor::new(counts, dev)?.to_dtype(dtype)?;
        if n == 0 {
            let sum = Tensor::zeros(b, dtype, dev)?;
            return Ok(SeqLogProbs { sum, tokens });
        }
        let ids = Tensor::from_vec(ids, (b, t), dev)?;
        let h = self.net.hidden(&self.config, &ids, &valid, None, k)?;
        let h = h.reshape((b * t, self.config.hidden_size))?;
        // Only the rows that predict completion tokens go through the (large) output head.
        let h = h.index_select(&Tensor::new(rows, dev)?, 0)?;
        let logits = self.net.logits_2d(&h, k)?.to_dtype(dtype)?; // (n, vocab)
        let lp = target_log_probs(&logits, targets)?; // (n, 1)
        let mut onehot = vec![0f32; b * n];
        for (i, &r) in seg.iter().enumerate() {
            onehot[r * n + i] = 1.0;
        }
        let onehot = Tensor::from_vec(onehot, (b, n), dev)?.to_dtype(dtype)?;
        let sum = onehot.matmul(&lp)?.squeeze(1)?;
        Ok(SeqLogProbs { sum, tokens })
    }
}

/// log p(target_r) = logits[r, target_r] − logsumexp(logits[r]) for logits (n, vocab): (n, 1), differentiable.
fn target_log_probs(logits: &Tensor, targets: Vec<u32>) -> Result<Tensor> {
    if super::ops::applies(logits) {
        return Ok(super::ops::target_log_probs(logits, targets)?);
    }
    let n = targets.len();
    // The max shift is a constant, so it carries no gradient.
    let max = logits.max_keepdim(D::Minus1)?.detach();
    let lse = (logits
        .broadcast_sub(&max)?
        .exp()?
        .sum_keepdim(D::Minus1)?
        .log()?
        + &max)?;
    let tgt = logits.gather(
        &Tensor::from_vec(targets, (n, 1), logits.device())?,
        D::Minus1,
    )?;
    Ok((tgt - lse)?)
}
