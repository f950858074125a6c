//! Win rate of a policy against the reference on held-out prompts, as the paper measures it: both models
//! complete each prompt at T = 0.25, a judge compares the two with the order drawn at random, and a tie
//! counts half.

use rand::{Rng, SeedableRng};

use super::{EngineError, EngineHandle, GenerateRequest, PolicyRef};
use crate::domain::{Choice, WinRate};
use crate::judge::sentiment::SentimentJudge;

/// The sampling temperature of the evaluation (the paper's).
pub const EVAL_TEMPERATURE: f64 = 0.25;

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
    };
    let ours = engine.generate(request(policy)).await?;
    let theirs = engine.generate(request(engine.reference())).await?;
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
