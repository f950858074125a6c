//! Win rate of a policy against the reference on held-out prompts, as the paper measures it: both models
//! complete each prompt at T = 0.25, a judge compares the two with the order drawn at random, and a tie
//! counts half.
//!
//! An evaluation shares the model thread with acquisition, so it asks in pieces of `PIECE` prompts: a
//! round of pairs for waiting annotators gets in between, instead of behind the whole evaluation. The
//! reference's completions are the same for every version a project evaluates (same prompts, seed and
//! length), so they are made once and kept (`CompletionCache`).

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};

use rand::{Rng, SeedableRng};

use super::{EngineError, EngineHandle, GenerateRequest, PolicyRef};
use crate::domain::{Choice, WinRate};
use crate::judge::sentiment::SentimentJudge;

/// The sampling temperature of the evaluation (the paper's).
pub const EVAL_TEMPERATURE: f64 = 0.25;

/// Prompts per request to the model thread.
const PIECE: usize = 16;
/// Evaluations whose reference completions are kept.
const CACHED: usize = 8;

/// The reference's completions of recent evaluations, by a hash of the request that made them.
#[derive(Default)]
pub(super) struct CompletionCache {
    entries: Vec<(u64, Vec<String>)>,
}

impl CompletionCache {
    fn get(&self, key: u64) -> Option<Vec<String>> {
        self.entries
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| v.clone())
    }

    fn put(&mut self, key: u64, completions: Vec<String>) {
        self.entries.retain(|(k, _)| *k != key);
        self.entries.push((key, completions));
        if self.entries.len() > CACHED {
            self.entries.remove(0);
        }
    }
}

/// What makes a request's completions what they are.
fn request_key(req: &GenerateRequest) -> u64 {
    let mut h = DefaultHasher::new();
    req.policy.version_id.hash(&mut h);
    req.prompts.hash(&mut h);
    req.temperature.to_bits().hash(&mut h);
    req.top_p.to_bits().hash(&mut h);
    (
        req.max_new_tokens,
        req.seed,
        req.chat_template,
        req.full_precision,
        req.first_prompt,
    )
        .hash(&mut h);
    h.finish()
}

/// `req`'s completions, asked of the model thread `PIECE` prompts at a time; each piece samples what it
/// would have in one call (`first_prompt`).
async fn generate_in_pieces(
    engine: &EngineHandle,
    req: GenerateRequest,
) -> Result<Vec<String>, EngineError> {
    let mut out = Vec::with_capacity(req.prompts.len());
    for (k, piece) in req.prompts.chunks(PIECE).enumerate() {
        let part = GenerateRequest {
            prompts: piece.to_vec(),
            first_prompt: req.first_prompt + k * PIECE,
            ..req.clone()
        };
        out.extend(engine.generate(part).await?);
    }
    Ok(out)
}

/// Scores `policy` against `reference` on `prompts` with the sentiment judge.
pub async fn win_rate(
    engine: &EngineHandle,
    policy: &PolicyRef,
    prompts: &[String],
    max_new_tokens: usize,
    seed: u64,
    chat_template: bool,
    judge: &SentimentJudge,
) -> Result<WinRate, EngineError> {
    let request = |p: &PolicyRef| GenerateRequest {
        policy: p.clone(),
        prompts: prompts.to_vec(),
        temperature: EVAL_TEMPERATURE,
        top_p: 1.0,
        max_new_tokens,
        seed,
        chat_template,
        full_precision: true,
        first_prompt: 0,
    };
    let ours = generate_in_pieces(engine, request(policy)).await?;
    let theirs_req = request(engine.reference());
    let key = request_key(&theirs_req);
    let cached = engine
        .reference_completions
        .lock()
        .expect("cache lock poisoned")
        .get(key);
    let theirs = match cached {
        Some(c) => c,
        None => {
            let made = generate_in_pieces(engine, theirs_req).await?;
            engine
                .reference_completions
                .lock()
                .expect("cache lock poisoned")
                .put(key, made.clone());
            made
        }
    };
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed ^ 0xe7a1);
    let (mut wins, mut ties, mut losses, mut reward) = (0, 0, 0, 0.0);
    for (a, b) in ours.iter().zip(&theirs) {
        reward += judge.positivity(a);
        // The judge sees the two in a random order, so a position bias cannot favour either model.
        let ours_left = rng.random::<bool>();
        let (left, right) = if ours_left { (a, b) } else { (b, a) };
        match (judge.judge(left, right).choice, ours_left) {
            (Choice::Left, true) | (Choice::Right, false) => wins += 1,
            (Choice::Left, false) | (Choice::Right, true) => losses += 1,
            _ => ties += 1,
        }
    }
    let n = ours.len().max(1) as f64;
    Ok(WinRate::from_counts(wins, ties, losses, reward / n))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(version: &str, seed: u64) -> GenerateRequest {
        GenerateRequest {
            policy: PolicyRef {
                version_id: version.into(),
                path: "p".into(),
            },
            prompts: vec!["a".into(), "b".into()],
            temperature: EVAL_TEMPERATURE,
            top_p: 1.0,
            max_new_tokens: 8,
            seed,
            chat_template: false,
            full_precision: true,
            first_prompt: 0,
        }
    }

    #[test]
    fn cached_completions_are_found_by_everything_that_made_them() {
        let mut cache = CompletionCache::default();
        cache.put(request_key(&req("ref", 1)), vec!["x".into(), "y".into()]);
        assert_eq!(
            cache.get(request_key(&req("ref", 1))),
            Some(vec!["x".to_string(), "y".to_string()])
        );
        assert_eq!(cache.get(request_key(&req("ref", 2))), None, "another seed");
        assert_eq!(cache.get(request_key(&req("v2", 1))), None, "another model");
        let mut longer = req("ref", 1);
        longer.max_new_tokens = 9;
        assert_eq!(cache.get(request_key(&longer)), None, "another length");
        for s in 10..10 + CACHED as u64 {
            cache.put(request_key(&req("ref", s)), vec![]);
        }
        assert_eq!(
            cache.get(request_key(&req("ref", 1))),
            None,
            "the oldest went first"
        );
    }
}
