//! Sequence embeddings: the mean of the final-norm hidden states over a sequence's tokens, the model's
//! own picture of a prompt. Diversity-aware acquisition measures distances between prompts with them.

use candle_core::{DType, Tensor};

use super::llama::Kernels;
use super::{LanguageModel, ModelError, Result};

/// Sequences per forward pass in [`LanguageModel::embed`].
const EMBED_BATCH: usize = 16;

impl LanguageModel {
    /// One vector of `hidden_size` per sequence: the mean over its tokens of the last layer's final-norm
    /// hidden states. Without gradients, through the fused kernels, right-padded in batches. Every
    /// sequence must have at least one token.
    pub fn embed(&self, seqs: &[Vec<u32>]) -> Result<Vec<Vec<f32>>> {
        let vocab = self.config.vocab_size as u32;
        let hs = self.config.hidden_size;
        let mut out = Vec::with_capacity(seqs.len());
        for (c, chunk) in seqs.chunks(EMBED_BATCH).enumerate() {
            for (i, s) in chunk.iter().enumerate() {
                let item = c * EMBED_BATCH + i;
                if s.is_empty() {
                    return Err(ModelError::Input(format!("item {item}: empty sequence")));
                }
                if let Some(bad) = s.iter().find(|&&t| t >= vocab) {
                    return Err(ModelError::Input(format!(
                        "item {item}: token id {bad} outside vocabulary {vocab}"
                    )));
                }
            }
            let b = chunk.len();
            let t = chunk.iter().map(Vec::len).max().unwrap_or(0);
            let mut ids = vec![self.tokenizer.eos_id(); b * t];
            let mut valid = vec![vec![false; t]; b];
            let mut weights = vec![0f32; b * t];
            for (r, s) in chunk.iter().enumerate() {
                for (j, &tok) in s.iter().enumerate() {
                    ids[r * t + j] = tok;
                    valid[r][j] = true;
                    weights[r * t + j] = 1.0 / s.len() as f32;
                }
            }
            let dev = &self.device;
            let ids = Tensor::from_vec(ids, (b, t), dev)?;
            let h = self
                .net
                .hidden(&self.config, &ids, &valid, None, Kernels::Fused)?
                .to_dtype(DType::F32)?; // (b, t, h)
            // (b, 1, t) × (b, t, h): each row's mean over its real tokens.
            let w = Tensor::from_vec(weights, (b, 1, t), dev)?;
            let mean = w.matmul(&h)?.reshape((b, hs))?;
            out.extend(mean.to_vec2::<f32>()?);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use candle_core::Device;

    use crate::model::{LanguageModel, ModelConfig, TextTokenizer};

    fn model() -> LanguageModel {
        let tok = TextTokenizer::byte_level_for_tests();
        let config = ModelConfig::tiny(tok.vocab_size());
        LanguageModel::random(config, tok, &Device::Cpu, 3).unwrap()
    }

    #[test]
    fn a_sequence_embeds_the_same_alone_and_padded_in_a_batch() {
        let m = model();
        let long: Vec<u32> = (10..30).collect();
        let short = vec![40, 41, 42];
        let alone = m.embed(std::slice::from_ref(&short)).unwrap();
        let batch = m.embed(&[long, short]).unwrap();
        assert_eq!(batch.len(), 2);
        assert_eq!(alone[0].len(), m.config().hidden_size);
        for (x, y) in alone[0].iter().zip(&batch[1]) {
            assert!((x - y).abs() < 1e-4, "{x} vs {y}");
        }
        assert_ne!(batch[0], batch[1]);
    }

    #[test]
    fn bad_sequences_are_refused() {
        let m = model();
        assert!(m.embed(&[vec![]]).is_err());
        assert!(m.embed(&[vec![u32::MAX]]).is_err());
        assert!(m.embed(&[]).unwrap().is_empty());
    }
}
