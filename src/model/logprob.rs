//! Sequence log-probabilities of completions given prompts: log π(y|x) = Σ over completion tokens of
//! log p(token | everything before it). Prompt tokens and padding never count (REFERENCE.md, "DPO").

use candle_core::{D, DType, Tensor};

use super::llama::{Kernels, KvCache, distinct, prompt_batch};
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
    /// Items with the same prompt go into the same batch, where they share its forward pass.
    pub fn score(&self, items: &[(Vec<u32>, Vec<u32>)]) -> Result<Vec<SeqLogProb>> {
        let mut order: Vec<usize> = (0..items.len()).collect();
        order.sort_by(|&a, &b| items[a].0.cmp(&items[b].0));
        let mut out = vec![None; items.len()];
        for chunk in order.chunks(SCORE_BATCH) {
            let batch: Vec<(Vec<u32>, Vec<u32>)> =
                chunk.iter().map(|&i| items[i].clone()).collect();
            let r = self.logprobs_with(&batch, Padding::Right, Kernels::Fused)?;
            let sums = r.sum.to_dtype(DType::F64)?.to_vec1::<f64>()?;
            for (s, &i) in sums.into_iter().zip(chunk) {
                let n = items[i].1.len();
                out[i] = Some(SeqLogProb {
                    sum: s,
                    mean: if n == 0 { 0.0 } else { s / n as f64 },
                    tokens: n,
                });
            }
        }
        Ok(out.into_iter().flatten().collect())
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
        let Predictors {
            hidden,
            rows,
            targets,
            items: seg,
        } = match distinct(items.iter().map(|(p, _)| p.as_slice())) {
            (prompts, of_item) if prompts.len() < b => {
                self.shared_prompt_hidden(items, &prompts, &of_item, padding, k)?
            }
            _ => self.flat_hidden(items, padding, k)?,
        };
        let n = rows.len();
        let mut counts = vec![0f64; b];
        for &r in &seg {
            counts[r] += 1.0;
        }
        let tokens = Tensor::new(counts, dev)?.to_dtype(dtype)?;
        let Some(h) = hidden.filter(|_| n > 0) else {
            let sum = Tensor::zeros(b, dtype, dev)?;
            return Ok(SeqLogProbs { sum, tokens });
        };
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

    /// Every item as one row of the batch, prompt and completion together, padded to the longest.
    fn flat_hidden(
        &self,
        items: &[(Vec<u32>, Vec<u32>)],
        padding: Padding,
        k: Kernels,
    ) -> Result<Predictors> {
        let b = items.len();
        let t = items
            .iter()
            .map(|(p, c)| p.len() + c.len())
            .max()
            .unwrap_or(0);
        let pad = self.tokenizer.eos_id();
        let mut ids = vec![pad; b * t];
        let mut valid = vec![vec![false; t]; b];
        let mut out = Predictors::default();
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
                out.push(r * t + off + p.len() + j - 1, tok, r);
            }
        }
        if out.rows.is_empty() {
            return Ok(out);
        }
        let ids = Tensor::from_vec(ids, (b, t), &self.device)?;
        let h = self.net.hidden(&self.config, &ids, &valid, None, k)?;
        out.hidden = Some(h.reshape((b * t, self.config.hidden_size))?);
        Ok(out)
    }

    /// Items that share a prompt share its forward pass: the distinct prompts run once, padded to the longest
    /// (on the `padding` side), and each item's completion continues from its prompt's keys and values. A
    /// DPO pair's chosen and rejected completions share their prompt, so a batch of pairs runs its prompts
    /// half as often. The last completion token is not run at all: its hidden state predicts nothing.
    fn shared_prompt_hidden(
        &self,
        items: &[(Vec<u32>, Vec<u32>)],
        prompts: &[&[u32]],
        of_item: &[usize],
        padding: Padding,
        k: Kernels,
    ) -> Result<Predictors> {
        let dev = &self.device;
        let width = self.config.hidden_size;
        let pad = self.tokenizer.eos_id();
        let mut out = Predictors::default();
        if items.iter().all(|(_, c)| c.is_empty()) {
            return Ok(out);
        }
        let b = items.len();
        // `last`: the row of each prompt's last token, which predicts the first completion token.
        let (prompt_h, mut cache, last) = self.prefill(prompts, padding, k)?;
        let prompt_rows = prompt_h.dim(0)?;

        // Completion tokens run: all but each completion's last.
        let ct = items
            .iter()
            .map(|(_, c)| c.len().saturating_sub(1))
            .max()
            .unwrap_or(0);
        for (r, (_, c)) in items.iter().enumerate() {
            for (j, &tok) in c.iter().enumerate() {
                let row = match j {
                    0 => last[of_item[r]],
                    _ => prompt_rows + r * ct + j - 1,
                };
                out.push(row, tok, r);
            }
        }
        if ct == 0 {
            out.hidden = Some(prompt_h);
            return Ok(out);
        }
        cache.select_rows(of_item, dev)?;
        let mut valid = std::mem::take(&mut cache.valid);
        let mut ids = vec![pad; b * ct];
        for (r, (_, c)) in items.iter().enumerate() {
            let run = &c[..c.len().saturating_sub(1)];
            ids[r * ct..r * ct + run.len()].copy_from_slice(run);
            valid[r].extend((0..ct).map(|j| j < run.len()));
        }
        let ids = Tensor::from_vec(ids, (b, ct), dev)?;
        let completion_h = self
            .net
            .hidden(&self.config, &ids, &valid, Some(&mut cache), k)?
            .reshape((b * ct, width))?;
        out.hidden = Some(Tensor::cat(&[&prompt_h, &completion_h], 0)?);
        Ok(out)
    }

    /// The prompts run as one batch padded on the `padding` side ([`prompt_batch`]): hidden states (u · t, h)
    /// flattened by row, the cache of their keys and values, and the flat row of each prompt's last token.
    pub(super) fn prefill(
        &self,
        prompts: &[&[u32]],
        padding: Padding,
        k: Kernels,
    ) -> Result<(Tensor, KvCache, Vec<usize>)> {
        let (ids, valid, last) = prompt_batch(prompts, padding, self.tokenizer.eos_id());
        let (u, t) = (prompts.len(), valid.first().map_or(0, Vec::len));
        let mut cache = KvCache {
            layers: Vec::new(),
            valid: valid.clone(),
        };
        let ids = Tensor::from_vec(ids, (u, t), &self.device)?;
        let h = self
            .net
            .hidden(&self.config, &ids, &valid, Some(&mut cache), k)?
            .reshape((u * t, self.config.hidden_size))?;
        Ok((h, cache, last))
    }
}

/// Hidden states (m, h) of every position a forward pass ran (None when none ran), and for each completion
/// token: the row of `hidden` that predicts it, the token, and its item.
#[derive(Default)]
struct Predictors {
    hidden: Option<Tensor>,
    rows: Vec<u32>,
    targets: Vec<u32>,
    items: Vec<usize>,
}

impl Predictors {
    fn push(&mut self, row: usize, target: u32, item: usize) {
        self.rows.push(row as u32);
        self.targets.push(target);
        self.items.push(item);
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
