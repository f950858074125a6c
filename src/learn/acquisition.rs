//! Acquisition: which comparisons are worth a human's time (REFERENCE.md, "The acquisition functions").
//!
//! Everything here is a pure function over numbers the model engine already produced (sampled log-probs,
//! policy and reference log-probs), so the server can score and order pending pairs without a tensor in sight.
//! Orderings are "best first"; ties (and round 1, where πθ == πref makes every certainty 0) are broken by a
//! permutation drawn from the seed, never by insertion order.

use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use serde::{Deserialize, Serialize};

use crate::domain::{PairScores, Strategy};

/// Predictive entropy of one prompt, Monte-Carlo: Ĥ(x) = −(1/N) Σₙ log πθ(yₙ|x), from the N completions sampled
/// for THIS prompt at temperature 1. `samples` holds each completion's summed log-prob and its token count;
/// `length_normalised` divides each sample's log-prob by its token count first (a sample of 0 tokens counts 0).
/// Returns `None` for no samples.
pub fn predictive_entropy(samples: &[(f64, usize)], length_normalised: bool) -> Option<f64> {
    if samples.is_empty() {
        return None;
    }
    let total: f64 = samples
        .iter()
        .map(|&(sum, tokens)| {
            if length_normalised {
                if tokens == 0 {
                    0.0
                } else {
                    -sum / tokens as f64
                }
            } else {
                -sum
            }
        })
        .sum();
    Some(total / samples.len() as f64)
}

/// One sampled completion's contribution to an entropy estimate, tagged with the prompt it was sampled for.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EntropySample {
    pub prompt: usize,
    pub logprob_sum: f64,
    pub tokens: usize,
}

/// Predictive entropy per prompt, each from exactly that prompt's own samples (grouped by the `prompt` tag, so
/// the order samples come back in does not matter). The published code sliced a flat sample array with the wrong
/// stride and scored prompts with other prompts' samples; this cannot. Prompts with no sample get `None`.
pub fn entropy_by_prompt(
    n_prompts: usize,
    samples: &[EntropySample],
    length_normalised: bool,
) -> Vec<Option<f64>> {
    let mut grouped: Vec<Vec<(f64, usize)>> = vec![Vec::new(); n_prompts];
    for s in samples {
        if let Some(g) = grouped.get_mut(s.prompt) {
            g.push((s.logprob_sum, s.tokens));
        }
    }
    grouped
        .iter()
        .map(|g| predictive_entropy(g, length_normalised))
        .collect()
}

/// Implicit DPO reward r̂(x, y) = β · (log πθ(y|x) − log πref(y|x)), log-probs summed over completion tokens.
pub fn implicit_reward(beta: f64, logp_policy: f64, logp_reference: f64) -> f64 {
    beta * (logp_policy - logp_reference)
}

/// Preference certainty of a pair: |r̂a − r̂b|.
pub fn certainty(reward_a: f64, reward_b: f64) -> f64 {
    (reward_a - reward_b).abs()
}

impl PairScores {
    /// Scores from summed log-probs of both completions under the policy and the reference.
    pub fn from_logprobs(
        beta: f64,
        entropy: Option<f64>,
        policy: (f64, f64),
        reference: (f64, f64),
    ) -> Self {
        let reward_a = implicit_reward(beta, policy.0, reference.0);
        let reward_b = implicit_reward(beta, policy.1, reference.1);
        PairScores {
            entropy,
            reward_a,
            reward_b,
            certainty: certainty(reward_a, reward_b),
        }
    }
}

/// What the strategies look at for one candidate pair: the prompt it belongs to (any id shared by all pairs of
/// the same prompt, used by `hybrid`) and its scores.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Candidate {
    pub prompt: usize,
    pub scores: PairScores,
}

/// Why a pair was acquired: kept with the pair so a label can always be traced to the scores that chose it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AcquisitionRecord {
    pub strategy: Strategy,
    pub model_version: String,
    pub scores: PairScores,
    /// 0-based position in the order the strategy produced.
    pub rank: usize,
}

/// The order to serve `candidates` in, best first: a permutation of `0..candidates.len()`.
///
/// `keep_fraction` is hybrid's share of prompts kept by entropy (see [`crate::domain::Oversample::keep_fraction`]); pairs of
/// prompts that were not kept follow the kept ones, ordered the same way, so the order is total. A missing or
/// NaN score sorts last. Equal scores keep the order of a seeded random permutation.
pub fn order_candidates(
    strategy: Strategy,
    candidates: &[Candidate],
    keep_fraction: f64,
    seed: u64,
) -> Vec<usize> {
    // A seeded shuffle first, then a stable sort: ties end up in random (but repeatable) order.
    let mut idx: Vec<usize> = (0..candidates.len()).collect();
    idx.shuffle(&mut StdRng::seed_from_u64(seed));
    let entropy = |i: usize| candidates[i].scores.entropy.unwrap_or(f64::NAN);
    let cert = |i: usize| candidates[i].scores.certainty;
    match strategy {
        Strategy::Random => {}
        Strategy::Entropy => idx.sort_by(|&a, &b| desc(entropy(a), entropy(b))),
        Strategy::Certainty => idx.sort_by(|&a, &b| desc(cert(a), cert(b))),
        Strategy::Uncertainty => idx.sort_by(|&a, &b| desc(-cert(a), -cert(b))),
        Strategy::Hybrid => {
            let kept = top_prompts_by_entropy(candidates, keep_fraction, seed);
            idx.sort_by(|&a, &b| {
                let (ka, kb) = (
                    kept.contains(&candidates[a].prompt),
                    kept.contains(&candidates[b].prompt),
                );
                kb.cmp(&ka).then_with(|| desc(cert(a), cert(b)))
            });
        }
        // Without embeddings, k-center's prompts come in entropy order; acquisition, which has them,
        // orders them farthest-first (`farthest_first`) and spreads with `spread_over_prompts`.
        Strategy::KCenter => {
            let kept = kept_prompts_in_entropy_order(candidates, keep_fraction, seed);
            return spread_over_prompts(candidates, &kept, seed);
        }
    }
    idx
}

/// k-center's order of pairs, given its order of prompts: each prompt's pairs by certainty (ties seeded),
/// then the first pair of every prompt in `prompt_order`, then the second of each, and so on, so that no
/// prompt gets a second pair before every prompt has one; pairs of prompts not in `prompt_order` follow,
/// by certainty. A permutation of `0..candidates.len()`.
pub fn spread_over_prompts(
    candidates: &[Candidate],
    prompt_order: &[usize],
    seed: u64,
) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..candidates.len()).collect();
    idx.shuffle(&mut StdRng::seed_from_u64(seed));
    idx.sort_by(|&a, &b| {
        desc(
            candidates[a].scores.certainty,
            candidates[b].scores.certainty,
        )
    });
    let position: std::collections::HashMap<usize, usize> = prompt_order
        .iter()
        .enumerate()
        .map(|(i, &p)| (p, i))
        .collect();
    // (layer: how many better pairs of the same prompt come first, the prompt's position) per pair.
    let mut layer_of = vec![0usize; candidates.len()];
    let mut seen: std::collections::HashMap<usize, usize> = std::collections::HashMap::new();
    for &i in &idx {
        let n = seen.entry(candidates[i].prompt).or_insert(0);
        layer_of[i] = *n;
        *n += 1;
    }
    let (kept, rest): (Vec<usize>, Vec<usize>) = idx
        .into_iter()
        .partition(|&i| position.contains_key(&candidates[i].prompt));
    let mut kept = kept;
    kept.sort_by_key(|&i| (layer_of[i], position[&candidates[i].prompt]));
    kept.extend(rest);
    kept
}

/// Greedy k-center (farthest-first traversal) over points: `first`, then each time the point whose
/// cosine distance to the nearest point already chosen is largest (ties: the lower index). The order in
/// which a batch covers the space best: any prefix of it is a 2-approximation of the k-center cover.
/// Points of zero norm are at distance 1 from everything. Returns a permutation of `0..points.len()`.
pub fn farthest_first(points: &[Vec<f32>], first: usize) -> Vec<usize> {
    let n = points.len();
    if n == 0 {
        return Vec::new();
    }
    let unit: Vec<Vec<f64>> = points
        .iter()
        .map(|p| {
            let norm = p.iter().map(|&x| (x as f64).powi(2)).sum::<f64>().sqrt();
            p.iter()
                .map(|&x| if norm > 0.0 { x as f64 / norm } else { 0.0 })
                .collect()
        })
        .collect();
    let dist = |a: usize, b: usize| {
        1.0 - unit[a]
            .iter()
            .zip(&unit[b])
            .map(|(x, y)| x * y)
            .sum::<f64>()
    };
    let first = first.min(n - 1);
    let mut order = vec![first];
    let mut nearest: Vec<f64> = (0..n).map(|i| dist(i, first)).collect();
    let mut chosen = vec![false; n];
    chosen[first] = true;
    while order.len() < n {
        let next = (0..n)
            .filter(|&i| !chosen[i])
            .fold(None::<usize>, |best, i| match best {
                Some(b) if nearest[b] >= nearest[i] => Some(b),
                _ => Some(i),
            })
            .expect("a point is left");
        chosen[next] = true;
        order.push(next);
        for (i, d) in nearest.iter_mut().enumerate() {
            *d = d.min(dist(i, next));
        }
    }
    order
}

/// The prompt ids hybrid would keep, best entropy first.
fn kept_prompts_in_entropy_order(
    candidates: &[Candidate],
    keep_fraction: f64,
    seed: u64,
) -> Vec<usize> {
    let (prompts, entropies) = distinct_prompts(candidates);
    let keep = ((prompts.len() as f64) * keep_fraction.clamp(0.0, 1.0)).ceil() as usize;
    top_by_entropy(&entropies, keep.max(1), seed)
        .into_iter()
        .map(|i| prompts[i])
        .collect()
}

/// The `m` candidates to acquire, best first (see [`order_candidates`]).
pub fn select_candidates(
    strategy: Strategy,
    candidates: &[Candidate],
    m: usize,
    keep_fraction: f64,
    seed: u64,
) -> Vec<usize> {
    let mut order = order_candidates(strategy, candidates, keep_fraction, seed);
    order.truncate(m);
    order
}

/// Hybrid's first stage on prompts alone: indices of the `keep` prompts with the highest entropy, best first
/// (ties seeded). The server uses this to decide which prompts get a pair generated at all.
pub fn top_by_entropy(entropies: &[Option<f64>], keep: usize, seed: u64) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..entropies.len()).collect();
    idx.shuffle(&mut StdRng::seed_from_u64(seed));
    idx.sort_by(|&a, &b| {
        desc(
            entropies[a].unwrap_or(f64::NAN),
            entropies[b].unwrap_or(f64::NAN),
        )
    });
    idx.truncate(keep);
    idx
}

/// The prompt ids hybrid keeps among `candidates`: the top `ceil(fraction × distinct prompts)` by entropy.
fn top_prompts_by_entropy(
    candidates: &[Candidate],
    keep_fraction: f64,
    seed: u64,
) -> std::collections::HashSet<usize> {
    kept_prompts_in_entropy_order(candidates, keep_fraction, seed)
        .into_iter()
        .collect()
}

/// The distinct prompt ids of `candidates` in first-seen order, with their entropies.
fn distinct_prompts(candidates: &[Candidate]) -> (Vec<usize>, Vec<Option<f64>>) {
    let mut seen = std::collections::HashSet::new();
    candidates
        .iter()
        .filter(|c| seen.insert(c.prompt))
        .map(|c| (c.prompt, c.scores.entropy))
        .unzip()
}

/// Descending order on f64 with NaN last.
fn desc(a: f64, b: f64) -> std::cmp::Ordering {
    match (a.is_nan(), b.is_nan()) {
        (true, true) => std::cmp::Ordering::Equal,
        (true, false) => std::cmp::Ordering::Greater,
        (false, true) => std::cmp::Ordering::Less,
        (false, false) => b.total_cmp(&a),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cand(prompt: usize, entropy: f64, reward_a: f64, reward_b: f64) -> Candidate {
        Candidate {
            prompt,
            scores: PairScores {
                entropy: Some(entropy),
                reward_a,
                reward_b,
                certainty: certainty(reward_a, reward_b),
            },
        }
    }

    /// Five candidates with distinct scores; entropy and certainty disagree on purpose.
    fn hand_made() -> Vec<Candidate> {
        vec![
            cand(0, 1.0, 0.0, 0.5),  // certainty 0.5
            cand(1, 5.0, 0.1, 0.0),  // certainty 0.1
            cand(2, 3.0, -2.0, 1.0), // certainty 3.0
            cand(3, 4.0, 0.0, 0.0),  // certainty 0.0
            cand(4, 2.0, 1.0, 0.0),  // certainty 1.0
        ]
    }

    #[test]
    fn each_strategy_orders_hand_made_scores() {
        let c = hand_made();
        assert_eq!(
            order_candidates(Strategy::Entropy, &c, 1.0, 7),
            [1, 3, 2, 4, 0]
        );
        assert_eq!(
            order_candidates(Strategy::Certainty, &c, 1.0, 7),
            [2, 4, 0, 1, 3]
        );
        assert_eq!(
            order_candidates(Strategy::Uncertainty, &c, 1.0, 7),
            [3, 1, 0, 4, 2]
        );
        // Hybrid keeping 3 of 5 prompts (ceil(0.5 × 5)): prompts 1, 3, 2 by entropy; among them by certainty
        // 2 (3.0), 1 (0.1), 3 (0.0); then the rest by certainty: 4 (1.0), 0 (0.5).
        assert_eq!(
            order_candidates(Strategy::Hybrid, &c, 0.5, 7),
            [2, 1, 3, 4, 0]
        );
        let mut random = order_candidates(Strategy::Random, &c, 1.0, 7);
        assert_eq!(random, order_candidates(Strategy::Random, &c, 1.0, 7));
        random.sort();
        assert_eq!(random, [0, 1, 2, 3, 4]);
        assert_eq!(
            select_candidates(Strategy::Certainty, &c, 2, 1.0, 7),
            [2, 4]
        );
    }

    #[test]
    fn kcenter_gives_every_prompt_one_pair_before_any_gets_a_second() {
        // Prompt 9 (highest entropy) has the two most certain pairs; prompts 5 and 7 one each.
        let c = vec![
            cand(9, 8.0, 0.0, 3.0),
            cand(5, 6.0, 0.0, 0.1),
            cand(9, 8.0, 0.0, 2.0),
            cand(7, 7.0, 0.0, 0.5),
        ];
        // Without embeddings the prompts come by entropy: 9, 7, 5, then 9's second pair.
        assert_eq!(
            order_candidates(Strategy::KCenter, &c, 1.0, 1),
            [0, 3, 1, 2]
        );
        // Hybrid on the same candidates serves prompt 9 twice first.
        assert_eq!(order_candidates(Strategy::Hybrid, &c, 1.0, 1), [0, 2, 3, 1]);
        // Given an order of prompts, that order; a prompt left out comes after, by certainty.
        assert_eq!(spread_over_prompts(&c, &[5, 9], 1), [1, 0, 2, 3]);
    }

    #[test]
    fn farthest_first_covers_the_space_before_it_repeats_a_region() {
        // Two tight clusters (around x and around y) and one point on the diagonal.
        let p = |x: f32, y: f32| vec![x, y];
        let points = vec![
            p(1.0, 0.0),
            p(1.0, 0.05),
            p(0.0, 1.0),
            p(0.05, 1.0),
            p(1.0, 1.0),
        ];
        let order = farthest_first(&points, 0);
        // From cluster x, the far cluster y, then the diagonal (45° from both), then the near twins.
        assert_eq!(&order[..3], &[0, 2, 4]);
        let mut sorted = order.clone();
        sorted.sort();
        assert_eq!(sorted, [0, 1, 2, 3, 4]);
        assert_eq!(farthest_first(&points, 3)[..2], [3, 0]);
        assert!(farthest_first(&[], 0).is_empty());
        // A zero vector is as far as anything can be, and is not NaN.
        assert_eq!(
            farthest_first(&[p(1.0, 0.0), p(0.0, 0.0), p(1.0, 0.1)], 0)[1],
            1
        );
    }

    #[test]
    fn hybrid_keeps_pairs_of_the_same_prompt_together() {
        // Two pairs of prompt 9 (high entropy), one pair of prompt 5 (low entropy) with the highest certainty.
        let c = vec![
            cand(9, 8.0, 0.0, 0.2),
            cand(5, 1.0, 0.0, 9.0),
            cand(9, 8.0, 0.0, 0.4),
        ];
        assert_eq!(order_candidates(Strategy::Hybrid, &c, 0.5, 1), [2, 0, 1]);
    }

    #[test]
    fn ties_break_by_seed_not_insertion_order() {
        // Round 1: policy == reference, every reward and certainty is 0.
        let c: Vec<Candidate> = (0..40).map(|p| cand(p, 1.0, 0.0, 0.0)).collect();
        for &strategy in Strategy::ALL {
            let a = order_candidates(strategy, &c, 0.5, 11);
            let b = order_candidates(strategy, &c, 0.5, 11);
            let other = order_candidates(strategy, &c, 0.5, 12);
            assert_eq!(a, b, "{strategy}: same seed, same order");
            assert_ne!(a, other, "{strategy}: another seed, another order");
            assert_ne!(
                a,
                (0..40).collect::<Vec<_>>(),
                "{strategy}: not insertion order"
            );
        }
        // Ties among the top keep their seeded order but never jump over a strictly better score.
        let mut c2 = c.clone();
        c2[17] = cand(17, 1.0, 0.0, 1.0);
        assert_eq!(order_candidates(Strategy::Certainty, &c2, 1.0, 3)[0], 17);
        assert_eq!(
            *order_candidates(Strategy::Uncertainty, &c2, 1.0, 3)
                .last()
                .unwrap(),
            17
        );
    }

    #[test]
    fn missing_scores_sort_last() {
        let mut c = hand_made();
        c[1].scores.entropy = None;
        c[2].scores.certainty = f64::NAN;
        assert_eq!(
            *order_candidates(Strategy::Entropy, &c, 1.0, 0)
                .last()
                .unwrap(),
            1
        );
        assert_eq!(
            *order_candidates(Strategy::Certainty, &c, 1.0, 0)
                .last()
                .unwrap(),
            2
        );
        assert_eq!(
            *order_candidates(Strategy::Uncertainty, &c, 1.0, 0)
                .last()
                .unwrap(),
            2
        );
    }

    #[test]
    fn entropy_uses_exactly_each_prompts_own_samples() {
        // Three prompts × 2 samples, interleaved the way a batched sampler may return them. Each prompt's
        // samples have distinct magnitudes, so any sample from another prompt changes the answer.
        let s = |prompt, logprob_sum, tokens| EntropySample {
            prompt,
            logprob_sum,
            tokens,
        };
        let samples = [
            s(0, -1.0, 1),
            s(1, -10.0, 2),
            s(2, -100.0, 4),
            s(0, -3.0, 3),
            s(1, -30.0, 5),
            s(2, -300.0, 6),
        ];
        let h = entropy_by_prompt(4, &samples, false);
        assert_eq!(h, [Some(2.0), Some(20.0), Some(200.0), None]);
        let hn = entropy_by_prompt(3, &samples, true);
        assert_eq!(hn[0], Some((1.0 + 1.0) / 2.0));
        assert_eq!(hn[1], Some((5.0 + 6.0) / 2.0));
        assert_eq!(hn[2], Some((25.0 + 50.0) / 2.0));
    }

    #[test]
    fn rewards_and_certainty() {
        let s = PairScores::from_logprobs(0.2, None, (-10.0, -12.0), (-11.0, -11.0));
        assert!((s.reward_a - 0.2).abs() < 1e-12);
        assert!((s.reward_b + 0.2).abs() < 1e-12);
        assert!((s.certainty - 0.4).abs() < 1e-12);
    }
}
