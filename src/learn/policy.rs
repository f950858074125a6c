//! What the trainer needs from a language model, and the model-facing glue: tokenizing pairs with the
//! configured truncation and laying them out as (prompt, completion) sequences.

use candle_core::{Device, Var};

use super::data::PreferencePair;
use super::dpo::SeqLogProbs;
use super::run::{BoxError, DpoConfig, TrainError, model_err};
use crate::model::LanguageModel;

/// What the trainer needs from a language model; [`LanguageModel`] implements it (below). A trait keeps the
/// loop readable on its own and lets the server hand in whatever owns the weights.
pub trait DpoModel: Sized {
    /// Token ids of `text`, no special tokens added.
    fn encode(&self, text: &str) -> Result<Vec<u32>, BoxError>;
    /// Differentiable log-probs of each completion given its prompt: per-sequence sum over completion tokens
    /// only (prompt and padding masked) and the number of those tokens, both (b,) f32.
    fn completion_logprobs(&self, batch: &[(&[u32], &[u32])]) -> Result<SeqLogProbs, BoxError>;
    /// The same without building a graph: (sum, tokens) per sequence.
    fn score_completions(&self, batch: &[(&[u32], &[u32])]) -> Result<Vec<(f64, usize)>, BoxError>;
    /// The end-of-sequence token: appended to a whole completion, and the context given to an empty prompt
    /// (the first completion token needs something to be predicted from).
    fn eos_token(&self) -> u32;
    /// Every trainable weight.
    fn trainable_vars(&self) -> Vec<Var>;
    fn device(&self) -> &Device;
    /// An independent copy: training it must not change `self`.
    fn deep_clone(&self) -> Result<Self, BoxError>;
}

impl DpoModel for LanguageModel {
    fn encode(&self, text: &str) -> Result<Vec<u32>, BoxError> {
        Ok(self.tokenizer().encode(text)?)
    }

    fn completion_logprobs(&self, batch: &[(&[u32], &[u32])]) -> Result<SeqLogProbs, BoxError> {
        Ok(self.sequence_logprobs(&owned(batch), crate::model::Padding::Right)?)
    }

    fn score_completions(&self, batch: &[(&[u32], &[u32])]) -> Result<Vec<(f64, usize)>, BoxError> {
        Ok(self
            .score(&owned(batch))?
            .into_iter()
            .map(|s| (s.sum, s.tokens))
            .collect())
    }

    fn eos_token(&self) -> u32 {
        self.tokenizer().eos_id()
    }

    fn trainable_vars(&self) -> Vec<Var> {
        self.vars()
    }

    fn device(&self) -> &Device {
        LanguageModel::device(self)
    }

    fn deep_clone(&self) -> Result<Self, BoxError> {
        Ok(LanguageModel::deep_clone(self)?)
    }
}

/// The model engine scores owned (prompt, completion) id pairs.
fn owned(batch: &[(&[u32], &[u32])]) -> Vec<(Vec<u32>, Vec<u32>)> {
    batch
        .iter()
        .map(|(p, c)| (p.to_vec(), c.to_vec()))
        .collect()
}

/// Token ids per pair: (prompt, chosen, rejected), truncated to the configured lengths.
pub(super) struct TokenizedPair {
    pub prompt: Vec<u32>,
    pub chosen: Vec<u32>,
    pub rejected: Vec<u32>,
}

impl TokenizedPair {
    pub fn len(&self) -> usize {
        2 * self.prompt.len() + self.chosen.len() + self.rejected.len()
    }
}

/// A prompt as training sees it: its last `max` tokens (the end is what a completion continues).
pub fn fit_prompt(mut ids: Vec<u32>, max: usize) -> Vec<u32> {
    if ids.len() > max {
        ids.drain(..ids.len() - max);
    }
    ids
}

/// A completion as training sees it: its ids, then EOS when it is whole (`ends`: it stopped where its
/// author or the model chose, as TRL appends EOS to every completion of its files), and then its first
/// `max` tokens, so a completion cut by the limit carries no EOS it never had.
pub fn fit_completion(mut ids: Vec<u32>, ends: Option<u32>, max: usize) -> Vec<u32> {
    if let Some(eos) = ends {
        ids.push(eos);
    }
    ids.truncate(max);
    ids
}

pub(super) fn tokenize_pairs<M: DpoModel>(
    model: &M,
    pairs: &[PreferencePair],
    cfg: &DpoConfig,
) -> Result<Vec<TokenizedPair>, TrainError> {
    let enc = |s: &str| model.encode(s).map_err(model_err("tokenizing a pair"));
    pairs
        .iter()
        .map(|p| {
            let mut prompt = fit_prompt(enc(&p.prompt)?, cfg.max_prompt_tokens);
            let eos = model.eos_token();
            if prompt.is_empty() {
                prompt.push(eos);
            }
            let max = cfg.max_completion_tokens;
            let chosen = fit_completion(enc(&p.chosen)?, p.chosen_ends.then_some(eos), max);
            let rejected = fit_completion(enc(&p.rejected)?, p.rejected_ends.then_some(eos), max);
            Ok(TokenizedPair {
                prompt,
                chosen,
                rejected,
            })
        })
        .collect()
}

/// All chosen sequences, then all rejected ones: 2b sequences for b pairs.
pub(super) fn sequences(tok: &[TokenizedPair]) -> Vec<(&[u32], &[u32])> {
    let chosen = tok
        .iter()
        .map(|t| (t.prompt.as_slice(), t.chosen.as_slice()));
    let rejected = tok
        .iter()
        .map(|t| (t.prompt.as_slice(), t.rejected.as_slice()));
    chosen.chain(rejected).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_whole_completion_ends_in_eos_and_a_cut_one_does_not() {
        let eos = 0;
        assert_eq!(fit_completion(vec![5, 6], Some(eos), 8), [5, 6, eos]);
        assert_eq!(fit_completion(vec![5, 6], None, 8), [5, 6]);
        // The limit applies after EOS: a completion cut by the trainer's limit has no EOS.
        assert_eq!(fit_completion(vec![5, 6, 7], Some(eos), 3), [5, 6, 7]);
        assert_eq!(fit_prompt(vec![1, 2, 3, 4], 2), [3, 4]);
    }
}
