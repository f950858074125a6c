//! Reference log-probs, computed once per pair and cached: they never change for a pair and a truncation.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use super::data::PreferencePair;
use super::policy::{DpoModel, sequences, tokenize_pairs};
use super::run::{DpoConfig, Progress, RunControl, TrainError, model_err};

/// Completion log-probs (sum, tokens) of one pair under the reference model.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ReferenceLogProbs {
    pub chosen: (f64, usize),
    pub rejected: (f64, usize),
}

/// Reference log-probs per pair, computed once: they never change for a pair and a given truncation.
#[derive(Debug, Clone, Default)]
pub struct ReferenceCache {
    lengths: (usize, usize),
    entries: HashMap<PreferencePair, ReferenceLogProbs>,
}

impl ReferenceCache {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn get(&self, pair: &PreferencePair) -> Option<&ReferenceLogProbs> {
        self.entries.get(pair)
    }

    /// The (max prompt tokens, max completion tokens) the entries were computed with.
    pub fn lengths(&self) -> (usize, usize) {
        self.lengths
    }

    /// Every entry, for storing the cache beside the labels so a restart need not rescore.
    pub fn entries(&self) -> impl Iterator<Item = (&PreferencePair, &ReferenceLogProbs)> {
        self.entries.iter()
    }

    /// Rebuilds a stored cache. The entries must have been computed with `lengths` by the same reference model.
    pub fn from_entries(
        lengths: (usize, usize),
        entries: impl IntoIterator<Item = (PreferencePair, ReferenceLogProbs)>,
    ) -> Self {
        ReferenceCache {
            lengths,
            entries: entries.into_iter().collect(),
        }
    }

    /// The pairs of `pairs` the cache lacks for these truncation lengths.
    pub fn missing<'a>(
        &self,
        pairs: &'a [PreferencePair],
        cfg: &DpoConfig,
    ) -> Vec<&'a PreferencePair> {
        let lengths = (cfg.max_prompt_tokens, cfg.max_completion_tokens);
        if lengths != self.lengths {
            return pairs.iter().collect();
        }
        pairs
            .iter()
            .filter(|p| !self.entries.contains_key(*p))
            .collect()
    }

    /// Scores the missing pairs with `reference` (which must BE the reference model) and stores them.
    /// `cancel` is checked between batches; what was scored before a cancel stays cached.
    pub fn fill<M: DpoModel>(
        &mut self,
        reference: &M,
        pairs: &[PreferencePair],
        cfg: &DpoConfig,
        control: &mut RunControl<'_>,
    ) -> Result<(), TrainError> {
        let lengths = (cfg.max_prompt_tokens, cfg.max_completion_tokens);
        if lengths != self.lengths {
            self.entries.clear();
            self.lengths = lengths;
        }
        let missing: Vec<PreferencePair> = self.missing(pairs, cfg).into_iter().cloned().collect();
        let started = Instant::now();
        let mut tokens = 0;
        for (i, chunk) in missing.chunks(cfg.batch_size.max(1)).enumerate() {
            if control.cancel.load(Ordering::Relaxed) {
                return Err(TrainError::CancelledReference);
            }
            let tok = tokenize_pairs(reference, chunk, cfg)?;
            tokens += tok.iter().map(|t| t.len()).sum::<usize>();
            let scores = reference
                .score_completions(&sequences(&tok))
                .map_err(model_err("scoring with the reference model"))?;
            let b = chunk.len();
            for (j, pair) in chunk.iter().enumerate() {
                let entry = ReferenceLogProbs {
                    chosen: scores[j],
                    rejected: scores[b + j],
                };
                self.entries.insert(pair.clone(), entry);
            }
            (control.progress)(&Progress::Reference {
                done: ((i + 1) * cfg.batch_size).min(missing.len()),
                total: missing.len(),
                tokens,
                seconds: started.elapsed().as_secs_f64(),
            });
        }
        Ok(())
    }
}
