//! The method end to end on tiny random models (no download): DPO learns a toy preference, the schedules do
//! what they say, a cancelled run loses nothing, a checkpoint scores identically, acquisition rounds and the
//! `dpo` / `acquire` commands work.

use std::sync::atomic::{AtomicBool, Ordering};

use prefloop::domain::{EntropyEstimator, LoraSettings, LossKind, Schedule, StepMetrics, Strategy};
use prefloop::learn::candidates::{
    AcquireConfig, PairText, RewardSpec, acquire_pairs, prompt_entropies, prompt_ids, score_pairs,
};
use prefloop::learn::dpo::LossConfig;
use prefloop::learn::optim::AdamWParams;
use prefloop::learn::{
    BoxError, DpoConfig, PreferencePair, Progress, ReferenceCache, RunControl, TrainError,
    TrainOutcome, split_eval, train_dpo,
};
use prefloop::model::{LanguageModel, ModelConfig, SamplingParams, TextTokenizer};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const MARKER: char = 'Z';

fn tiny_model(seed: u64) -> LanguageModel {
    let tok = TextTokenizer::byte_level_for_tests();
    LanguageModel::random(
        ModelConfig::tiny(tok.vocab_size()),
        tok,
        &candle_core::Device::Cpu,
        seed,
    )
    .expect("tiny model")
}

fn word(rng: &mut StdRng, len: usize) -> String {
    (0..len)
        .map(|_| rng.random_range(b'a'..=b'h') as char)
        .collect()
}

/// Pairs where the chosen completion is the rejected one with one letter replaced by the marker. Both
/// are 4-letter fragments cut where the sampler's 4-token limit cuts them, so neither ends with EOS (as
/// the loop's own completions that run to `max_new_tokens`).
fn toy_pairs(n: usize, seed: u64) -> Vec<PreferencePair> {
    let mut rng = StdRng::seed_from_u64(seed);
    (0..n)
        .map(|_| {
            let rejected = word(&mut rng, 4);
            let mut chosen: Vec<char> = rejected.chars().collect();
            chosen[rng.random_range(0..4)] = MARKER;
            PreferencePair {
                chosen_ends: false,
                rejected_ends: false,
                ..PreferencePair::new(
                    word(&mut rng, 3),
                    chosen.into_iter().collect::<String>(),
                    rejected,
                )
            }
        })
        .collect()
}

fn config(schedule: Schedule, epochs: usize) -> DpoConfig {
    DpoConfig {
        loss: LossConfig {
            kind: LossKind::Dpo,
            beta: 0.1,
            label_smoothing: 0.0,
        },
        optimizer: AdamWParams {
            lr: 5e-3,
            ..Default::default()
        },
        epochs,
        batch_size: 8,
        grad_accum_steps: 1,
        max_grad_norm: Some(10.0),
        schedule,
        seed: 1,
        ..Default::default()
    }
}

struct Run {
    outcome: Result<TrainOutcome<LanguageModel>, TrainError>,
    steps: Vec<StepMetrics>,
}

/// Trains with `reference` as πref; `cancel_after` sets the cancel flag from the progress callback.
fn run(
    current: &LanguageModel,
    reference: &LanguageModel,
    cache: &mut ReferenceCache,
    train: &[PreferencePair],
    eval: &[PreferencePair],
    cfg: &DpoConfig,
    cancel_after: Option<usize>,
) -> Run {
    let cancel = AtomicBool::new(false);
    let mut steps = Vec::new();
    let mut progress = |p: &Progress| {
        if let Progress::Step(m) = p {
            steps.push(*m);
            if cancel_after == Some(m.step) {
                cancel.store(true, Ordering::Relaxed);
            }
        }
    };
    let mut load = || -> Result<LanguageModel, BoxError> { Ok(reference.deep_clone()?) };
    let outcome = train_dpo(
        current,
        &mut load,
        cache,
        train,
        eval,
        cfg,
        RunControl {
            hold: &|| false,
            progress: &mut progress,
            cancel: &cancel,
        },
    );
    Run { outcome, steps }
}

/// Completion log-probs of a fixed set of (prompt, completion) items: a fingerprint of the weights.
fn fingerprint(m: &LanguageModel) -> Vec<f64> {
    let tok = m.tokenizer();
    let items: Vec<(Vec<u32>, Vec<u32>)> = toy_pairs(6, 99)
        .iter()
        .map(|p| {
            (
                tok.encode(&p.prompt).unwrap(),
                tok.encode(&p.chosen).unwrap(),
            )
        })
        .collect();
    m.score(&items).unwrap().iter().map(|s| s.sum).collect()
}

/// Share of sampled completions (T = 1) that contain the marker.
fn marker_rate(m: &LanguageModel, prompts: &[PreferencePair]) -> f64 {
    let ids: Vec<Vec<u32>> = prompts
        .iter()
        .map(|p| m.tokenizer().encode(&p.prompt).unwrap())
        .collect();
    let params = SamplingParams {
        temperature: 1.0,
        max_new_tokens: 4,
        seed: 5,
        ..Default::default()
    };
    let samples = m.sample(&ids, 16, &params).unwrap();
    let all: Vec<_> = samples.iter().flatten().collect();
    all.iter().filter(|s| s.text.contains(MARKER)).count() as f64 / all.len() as f64
}

/// The toy-preference run both precisions are held to: 96 pairs, a quarter held out, 12 epochs of `reset` from
/// `reference`, which is also πref.
struct ToyRun {
    run: Run,
    eval: Vec<PreferencePair>,
    pairs: usize,
    cached: usize,
}

fn learn_the_toy_preference(reference: &LanguageModel) -> ToyRun {
    let pairs = toy_pairs(96, 1);
    let (train, eval) = split_eval(&pairs, 0.25, 3);
    let mut cache = ReferenceCache::new();
    let run = run(
        reference,
        reference,
        &mut cache,
        &train,
        &eval,
        &config(Schedule::Reset, 12),
        None,
    );
    ToyRun {
        run,
        eval,
        pairs: pairs.len(),
        cached: cache.len(),
    }
}

#[test]
fn a_tiny_model_learns_a_toy_preference() {
    let reference = tiny_model(7);
    let ToyRun {
        run: r,
        eval,
        pairs,
        cached,
    } = learn_the_toy_preference(&reference);
    let outcome = r.outcome.expect("training succeeds");
    assert_eq!(cached, pairs, "reference log-probs cached once per pair");
    // Step 1 starts at policy == reference: loss ln 2, rewards 0.
    let first = &r.steps[0];
    assert!(
        (first.loss - std::f64::consts::LN_2).abs() < 1e-3,
        "{first:?}"
    );
    assert!(first.rewards.margins.abs() < 1e-3);
    let last = r.steps.last().unwrap();
    assert!(
        last.loss < 0.3 * first.loss,
        "loss {} → {}",
        first.loss,
        last.loss
    );
    let eval_m = outcome.eval.expect("eval split evaluated");
    assert_eq!(eval_m.pairs, eval.len());
    assert!(
        eval_m.rewards.accuracies >= 0.9,
        "held-out rewards/accuracies {}",
        eval_m.rewards.accuracies
    );
    let (before, after) = (
        marker_rate(&reference, &eval),
        marker_rate(&outcome.model, &eval),
    );
    assert!(
        after > 0.15 && after > 4.0 * before,
        "marker in samples: reference {before:.3}, policy {after:.3}"
    );
}

#[test]
fn reset_starts_from_the_reference_and_continue_from_the_current_policy() {
    let reference = tiny_model(11);
    let round1 = toy_pairs(24, 2);
    let round2: Vec<_> = round1.iter().cloned().chain(toy_pairs(24, 3)).collect();
    let mut cache = ReferenceCache::new();
    let cfg = config(Schedule::Reset, 2);
    let p1 = run(&reference, &reference, &mut cache, &round1, &[], &cfg, None)
        .outcome
        .unwrap()
        .model;
    assert_ne!(fingerprint(&p1), fingerprint(&reference));

    // reset: the current policy does not matter; the run equals one started from the reference itself.
    let from_p1 = run(&p1, &reference, &mut cache, &round2, &[], &cfg, None);
    let from_ref = run(&reference, &reference, &mut cache, &round2, &[], &cfg, None);
    assert_eq!(
        fingerprint(&from_p1.outcome.unwrap().model),
        fingerprint(&from_ref.outcome.unwrap().model)
    );
    assert!(
        from_p1.steps[0].rewards.margins.abs() < 1e-3,
        "reset begins at πθ = πref"
    );

    // continue: starts where round 1 ended, so the first step already sees the learnt margin.
    let cont = run(
        &p1,
        &reference,
        &mut cache,
        &round2,
        &[],
        &config(Schedule::Continue, 2),
        None,
    );
    let first = cont.steps[0];
    assert!(
        first.rewards.margins > 0.05 && first.loss < 0.65,
        "continue begins from the trained policy: {first:?}"
    );
    assert_ne!(
        fingerprint(&cont.outcome.unwrap().model),
        fingerprint(&from_ref_model(&reference, &round2, &cfg))
    );
}

fn from_ref_model(
    reference: &LanguageModel,
    pairs: &[PreferencePair],
    cfg: &DpoConfig,
) -> LanguageModel {
    run(
        reference,
        reference,
        &mut ReferenceCache::new(),
        pairs,
        &[],
        cfg,
        None,
    )
    .outcome
    .unwrap()
    .model
}

#[test]
fn a_cancelled_run_leaves_the_current_model_untouched() {
    let reference = tiny_model(13);
    let pairs = toy_pairs(32, 4);
    let current = from_ref_model(&reference, &pairs[..16], &config(Schedule::Reset, 1));
    let before = fingerprint(&current);
    for schedule in [Schedule::Continue, Schedule::Reset] {
        let r = run(
            &current,
            &reference,
            &mut ReferenceCache::new(),
            &pairs,
            &[],
            &config(schedule, 3),
            Some(2),
        );
        match r.outcome {
            Err(TrainError::Cancelled { step, total_steps }) => {
                assert_eq!((step, total_steps), (3, 12));
            }
            Err(e) => panic!("{schedule}: expected a cancel, got {e}"),
            Ok(_) => panic!("{schedule}: expected a cancel, the run finished"),
        }
        assert_eq!(r.steps.len(), 2);
        assert_eq!(
            fingerprint(&current),
            before,
            "{schedule}: served model moved"
        );
    }
    // A cancel that arrives while reference log-probs are computed stops there; what was scored stays cached.
    let mut cache = ReferenceCache::new();
    let cancel = AtomicBool::new(false);
    let mut batches = 0;
    let mut progress = |p: &Progress| {
        if let Progress::Reference { .. } = p {
            batches += 1;
            cancel.store(true, Ordering::Relaxed);
        }
    };
    let r = train_dpo(
        &current,
        &mut || -> Result<LanguageModel, BoxError> { Ok(reference.deep_clone()?) },
        &mut cache,
        &pairs,
        &[],
        &config(Schedule::Continue, 1),
        RunControl {
            hold: &|| false,
            progress: &mut progress,
            cancel: &cancel,
        },
    );
    assert!(matches!(r, Err(TrainError::CancelledReference)));
    assert_eq!((batches, cache.len()), (1, 8));
    assert_eq!(fingerprint(&current), before);

    // A run that fails on bad settings reports its cause and also leaves it alone.
    let bad = DpoConfig {
        optimizer: AdamWParams {
            lr: -1.0,
            ..Default::default()
        },
        ..config(Schedule::Continue, 1)
    };
    let r = run(
        &current,
        &reference,
        &mut ReferenceCache::new(),
        &pairs,
        &[],
        &bad,
        None,
    );
    assert!(matches!(r.outcome, Err(TrainError::Config(_))));
    assert_eq!(fingerprint(&current), before);
}

#[test]
fn a_held_run_waits_between_steps_and_can_be_cancelled_while_held() {
    let current = tiny_model(1);
    let reference = current.deep_clone().unwrap();
    let pairs = toy_pairs(8, 3);
    let cfg = config(Schedule::Reset, 1);
    // A run of `pairs` under `hold` and `cancel`, from a fresh reference cache.
    let run = |hold: &dyn Fn() -> bool, cancel: &AtomicBool| {
        train_dpo(
            &current,
            &mut || -> Result<LanguageModel, BoxError> { Ok(reference.deep_clone()?) },
            &mut ReferenceCache::new(),
            &pairs,
            &[],
            &cfg,
            RunControl {
                hold,
                progress: &mut |_| {},
                cancel,
            },
        )
    };
    // Held for the first three asks, then free: every step still runs.
    let asked = std::cell::Cell::new(0);
    let hold = || {
        asked.set(asked.get() + 1);
        asked.get() <= 3
    };
    let cancel = AtomicBool::new(false);
    let r = run(&hold, &cancel).expect("the run finishes once the hold lifts");
    let steps = cfg.total_steps(pairs.len());
    assert_eq!(r.steps.len(), steps);
    assert_eq!(
        asked.get(),
        3 + steps,
        "asked before every step, three times more while held"
    );

    // A cancel while held ends the run before its first step.
    let cancel = AtomicBool::new(false);
    let hold = || {
        cancel.store(true, Ordering::Relaxed);
        true
    };
    let r = run(&hold, &cancel);
    assert!(matches!(r, Err(TrainError::Cancelled { step: 1, .. })));
}

#[test]
fn gradient_accumulation_equals_the_larger_batch_and_the_cache_is_reused() {
    let reference = tiny_model(31);
    let pairs = toy_pairs(16, 10);
    let mut cache = ReferenceCache::new();
    let big = DpoConfig {
        batch_size: 8,
        grad_accum_steps: 1,
        ..config(Schedule::Reset, 2)
    };
    let small = DpoConfig {
        batch_size: 4,
        grad_accum_steps: 2,
        ..big.clone()
    };
    let a = run(&reference, &reference, &mut cache, &pairs, &[], &big, None);
    assert_eq!(cache.len(), 16);
    // A cache rebuilt from its entries covers the data: `continue` must not load the reference at all.
    let mut stored = ReferenceCache::from_entries(
        cache.lengths(),
        cache.entries().map(|(p, e)| (p.clone(), *e)),
    );
    let cancel = AtomicBool::new(false);
    let cont = DpoConfig {
        schedule: Schedule::Continue,
        ..small.clone()
    };
    let b = train_dpo(
        &reference,
        &mut || -> Result<LanguageModel, BoxError> {
            panic!("reference loaded despite a full cache")
        },
        &mut stored,
        &pairs,
        &[],
        &cont,
        RunControl {
            hold: &|| false,
            progress: &mut |_| {},
            cancel: &cancel,
        },
    )
    .unwrap();
    assert_eq!(a.steps.len(), 4);
    assert_eq!(b.steps.len(), 4);
    for (x, y) in a.steps.iter().zip(&b.steps) {
        assert!((x.loss - y.loss).abs() < 1e-4, "{} vs {}", x.loss, y.loss);
        assert_eq!(x.tokens, y.tokens);
    }
    let (fa, fb) = (
        fingerprint(&a.outcome.unwrap().model),
        fingerprint(&b.model),
    );
    for (x, y) in fa.iter().zip(&fb) {
        assert!((x - y).abs() < 1e-3 * x.abs().max(1.0), "{x} vs {y}");
    }
}

#[test]
fn a_checkpoint_loads_back_and_scores_identically() {
    let reference = tiny_model(17);
    let trained = from_ref_model(&reference, &toy_pairs(16, 5), &config(Schedule::Reset, 1));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("v1");
    trained.save(&path).unwrap();
    let loaded = LanguageModel::load(&path, &candle_core::Device::Cpu).unwrap();
    assert_eq!(fingerprint(&loaded), fingerprint(&trained));
    assert_ne!(fingerprint(&loaded), fingerprint(&reference));
}

#[test]
fn ipo_and_label_smoothing_train_too() {
    let reference = tiny_model(19);
    let pairs = toy_pairs(32, 6);
    for (kind, eps) in [(LossKind::Ipo, 0.0), (LossKind::Dpo, 0.2)] {
        let cfg = DpoConfig {
            loss: LossConfig {
                kind,
                beta: 0.1,
                label_smoothing: eps,
            },
            ..config(Schedule::Reset, 3)
        };
        let r = run(
            &reference,
            &reference,
            &mut ReferenceCache::new(),
            &pairs,
            &[],
            &cfg,
            None,
        );
        r.outcome.unwrap();
        let (first, last) = (r.steps[0], *r.steps.last().unwrap());
        assert!(
            last.loss < first.loss,
            "{kind} ε {eps}: {} → {}",
            first.loss,
            last.loss
        );
        assert!(last.rewards.margins > first.rewards.margins);
    }
}

#[test]
fn an_acquisition_round_scores_and_orders_pairs() {
    let reference = tiny_model(23);
    let policy = from_ref_model(&reference, &toy_pairs(32, 7), &config(Schedule::Reset, 2));
    let prompts: Vec<String> = toy_pairs(12, 8).into_iter().map(|p| p.prompt).collect();
    let cfg = AcquireConfig {
        strategy: Strategy::Certainty,
        entropy_samples: 4,
        max_new_tokens: 6,
        seed: 3,
        ..Default::default()
    };
    let got = acquire_pairs(&policy, Some(&reference), &prompts, 5, &cfg, "v1").unwrap();
    assert_eq!(got.len(), 5);
    for (rank, p) in got.iter().enumerate() {
        assert_eq!(p.rank, rank);
        assert_eq!(p.model_version, "v1");
        assert_eq!(p.strategy, Strategy::Certainty);
        assert_eq!(p.prompt, prompts[p.prompt_index]);
        assert!((p.scores.certainty - (p.scores.reward_a - p.scores.reward_b).abs()).abs() < 1e-12);
        assert!(p.scores.entropy.is_none());
    }
    assert!(
        got.windows(2)
            .all(|w| w[0].scores.certainty >= w[1].scores.certainty)
    );
    assert!(got[0].scores.certainty > 0.0);

    // Re-scoring the pairs from their text gives the rewards the round recorded for each of them (up to f32
    // rounding from a different batch composition).
    let items: Vec<_> = got
        .iter()
        .map(|p| PairText {
            prompt: p.prompt.clone(),
            a: p.completion_a.clone(),
            b: p.completion_b.clone(),
            ends_a: p.ends_a,
            ends_b: p.ends_b,
        })
        .collect();
    let rescored = score_pairs(&policy, Some(&reference), &items, &cfg.reward).unwrap();
    for (p, s) in got.iter().zip(&rescored) {
        assert!(
            (p.scores.reward_a - s.reward_a).abs() < 1e-5,
            "{p:?} vs {s:?}"
        );
        assert!(
            (p.scores.reward_b - s.reward_b).abs() < 1e-5,
            "{p:?} vs {s:?}"
        );
    }
    let zero = score_pairs(&policy, None, &items, &RewardSpec::default()).unwrap();
    assert!(zero.iter().all(|s| s.certainty == 0.0));

    // Round 1 (policy is the reference): every reward is 0, the order comes from the seed.
    let hybrid = AcquireConfig {
        strategy: Strategy::Hybrid,
        ..cfg.clone()
    };
    let r1 = acquire_pairs(&reference, None, &prompts, 4, &hybrid, "v0").unwrap();
    assert_eq!(r1.len(), 4);
    assert!(
        r1.iter()
            .all(|p| p.scores.certainty == 0.0 && p.scores.entropy.is_some())
    );
    let again = acquire_pairs(&reference, None, &prompts, 4, &hybrid, "v0").unwrap();
    assert_eq!(r1, again, "a seed makes the round repeatable");
}

#[test]
fn the_tokens_estimator_orders_prompts_for_entropy_and_hybrid() {
    let model = tiny_model(29);
    let prompts: Vec<String> = toy_pairs(10, 9).into_iter().map(|p| p.prompt).collect();
    let ids: Vec<Vec<u32>> = prompts
        .iter()
        .map(|p| prompt_ids(model.tokenizer(), p).unwrap())
        .collect();
    let tokens = AcquireConfig {
        strategy: Strategy::Entropy,
        entropy_estimator: EntropyEstimator::Tokens,
        entropy_samples: 4,
        max_new_tokens: 6,
        seed: 5,
        ..Default::default()
    };
    let h = prompt_entropies(&model, &ids, &tokens).unwrap();
    assert!(
        h.iter()
            .all(|e| e.is_some_and(|e| e > 0.0 && e.is_finite()))
    );
    // A different estimate from the sampled one, on the same prompts.
    let samples = AcquireConfig {
        entropy_estimator: EntropyEstimator::Samples,
        ..tokens.clone()
    };
    assert_ne!(h, prompt_entropies(&model, &ids, &samples).unwrap());

    // Entropy: pairs come highest token-entropy first, each carrying its prompt's estimate.
    let got = acquire_pairs(&model, None, &prompts, 4, &tokens, "v0").unwrap();
    assert!(!got.is_empty());
    for p in &got {
        assert_eq!(p.scores.entropy, h[p.prompt_index]);
    }
    assert!(
        got.windows(2)
            .all(|w| w[0].scores.entropy >= w[1].scores.entropy)
    );

    // Hybrid: only the top half of the prompts by token entropy are kept.
    let hybrid = AcquireConfig {
        strategy: Strategy::Hybrid,
        keep_fraction: 0.5,
        ..tokens.clone()
    };
    let mut sorted: Vec<f64> = h.iter().map(|e| e.unwrap()).collect();
    sorted.sort_by(|a, b| b.total_cmp(a));
    let threshold = sorted[prompts.len() / 2 - 1];
    let got = acquire_pairs(&model, None, &prompts, 2, &hybrid, "v0").unwrap();
    assert!(!got.is_empty());
    for p in &got {
        assert!(h[p.prompt_index].unwrap() >= threshold, "{p:?}");
    }

    // k-center: the same kept half, one pair per prompt, the most uncertain prompt first.
    let kcenter = AcquireConfig {
        strategy: Strategy::KCenter,
        ..hybrid.clone()
    };
    let got = acquire_pairs(&model, None, &prompts, 5, &kcenter, "v0").unwrap();
    assert!(got.len() >= 2, "{got:?}");
    let mut seen = std::collections::HashSet::new();
    for p in &got {
        assert!(h[p.prompt_index].unwrap() >= threshold, "{p:?}");
        assert!(
            seen.insert(p.prompt_index),
            "a prompt served twice: {got:?}"
        );
        assert_eq!(p.strategy, Strategy::KCenter);
    }
    assert!(
        got.iter()
            .all(|p| p.scores.entropy <= got[0].scores.entropy)
    );
    let again = acquire_pairs(&model, None, &prompts, 5, &kcenter, "v0").unwrap();
    assert_eq!(got, again, "a seed makes the round repeatable");
}

#[test]
fn the_dpo_and_acquire_commands_run() {
    let dir = tempfile::tempdir().unwrap();
    let model_dir = dir.path().join("model");
    tiny_model(29).save(&model_dir).unwrap();
    let data = dir.path().join("prefs.jsonl");
    let mut lines: Vec<String> = toy_pairs(12, 9)
        .iter()
        .map(|p| serde_json::to_string(p).unwrap())
        .collect();
    std::fs::write(&data, lines.join("\n")).unwrap();
    let out = dir.path().join("out");
    let bin = env!("CARGO_BIN_EXE_prefloop");
    let res = std::process::Command::new(bin)
        .args(["dpo", "--model"])
        .arg(&model_dir)
        .arg("--data")
        .arg(&data)
        .arg("--out")
        .arg(&out)
        .args([
            "--lr",
            "1e-3",
            "--epochs",
            "2",
            "--batch-size",
            "4",
            "--seed",
            "3",
        ])
        .output()
        .unwrap();
    assert!(
        res.status.success(),
        "{}",
        String::from_utf8_lossy(&res.stderr)
    );
    let stdout = String::from_utf8(res.stdout).unwrap();
    let steps: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .filter(|v: &serde_json::Value| v["kind"] == "step")
        .collect();
    assert_eq!(steps.len(), 6, "{stdout}");
    for key in [
        "loss",
        "rewards/chosen",
        "rewards/rejected",
        "rewards/margins",
        "rewards/accuracies",
    ] {
        assert!(steps[0][key].is_number(), "{key} in {}", steps[0]);
    }
    assert!(stdout.contains("\"kind\":\"eval\""));
    LanguageModel::load(&out, &candle_core::Device::Cpu).expect("trained model loads");

    // Bad lines are reported by number and nothing is written.
    lines.insert(2, "{\"prompt\":\"x\"}".into());
    lines.insert(5, "oops".into());
    std::fs::write(&data, lines.join("\n")).unwrap();
    let out2 = dir.path().join("out2");
    let res = std::process::Command::new(bin)
        .args(["dpo", "--model"])
        .arg(&model_dir)
        .arg("--data")
        .arg(&data)
        .arg("--out")
        .arg(&out2)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&res.stderr);
    assert!(!res.status.success());
    assert!(
        stderr.contains("line 3:") && stderr.contains("line 6: not JSON"),
        "{stderr}"
    );
    assert!(!out2.exists());

    let prompts = dir.path().join("prompts.jsonl");
    std::fs::write(
        &prompts,
        "{\"prompt\":\"abc\"}\n{\"prompt\":\"def\"}\n{\"prompt\":\"gha\"}\n",
    )
    .unwrap();
    let res = std::process::Command::new(bin)
        .args(["acquire", "--model"])
        .arg(&out)
        .arg("--reference")
        .arg(&model_dir)
        .arg("--prompts")
        .arg(&prompts)
        .args([
            "--strategy",
            "hybrid",
            "-m",
            "2",
            "--seed",
            "1",
            "--entropy-samples",
            "3",
        ])
        .output()
        .unwrap();
    assert!(
        res.status.success(),
        "{}",
        String::from_utf8_lossy(&res.stderr)
    );
    let rows: Vec<serde_json::Value> = String::from_utf8(res.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), 2);
    for key in ["entropy", "reward_a", "reward_b", "certainty"] {
        assert!(rows[0]["scores"][key].is_number(), "{key} in {}", rows[0]);
    }
    assert!(rows[0]["completion_a"].is_string() && rows[0]["prompt"].is_string());
}

#[test]
fn lora_adapters_learn_the_toy_preference_like_full_dpo_and_leave_the_base_alone() {
    let base = tiny_model(7);
    let before = fingerprint(&base);
    let lora = LoraSettings {
        rank: 8,
        alpha: 32.0,
        ..LoraSettings::default()
    };
    // A fresh adapter is the reference itself (B = 0): the start of `reset` and πref's log-probs.
    let start = base.with_lora(&lora, 1).unwrap();
    let pairs = toy_pairs(96, 1);
    let (train, eval) = split_eval(&pairs, 0.25, 3);
    // Full DPO's run (12 epochs) at twice its rate: fewer weights move, and not the output head.
    let mut cfg = config(Schedule::Reset, 12);
    cfg.optimizer.lr = 1e-2;
    let r = run(
        &start,
        &start,
        &mut ReferenceCache::new(),
        &train,
        &eval,
        &cfg,
        None,
    );
    let outcome = r.outcome.expect("training succeeds");
    let (first, last) = (&r.steps[0], r.steps.last().unwrap());
    assert!(
        (first.loss - std::f64::consts::LN_2).abs() < 1e-3,
        "{first:?}"
    );
    assert!(
        last.loss < 0.45 * first.loss,
        "loss {} → {}",
        first.loss,
        last.loss
    );
    let eval_m = outcome.eval.expect("eval split evaluated");
    assert!(
        eval_m.rewards.accuracies >= 0.9,
        "held-out accuracy {}",
        eval_m.rewards.accuracies
    );
    let (was, now) = (
        marker_rate(&base, &eval),
        marker_rate(&outcome.model, &eval),
    );
    // The same direction as full DPO, less far in as many steps (2026-12-06: loss 0.26 against full DPO's
    // 0.004, the marker in 15 % of samples against 25 %, from 3 %).
    assert!(
        now > 0.1 && now > 3.0 * was,
        "marker in samples: base {was:.3}, adapted {now:.3}"
    );
    assert_eq!(outcome.model.lora(), Some(&lora));
    // Only the adapters moved.
    assert_eq!(fingerprint(&base), before);
    assert_eq!(fingerprint(&outcome.model.without_lora()), before);
}

#[test]
fn the_dpo_command_writes_a_peft_adapter_or_a_merged_model() {
    let dir = tempfile::tempdir().unwrap();
    let model_dir = dir.path().join("model");
    tiny_model(29).save(&model_dir).unwrap();
    let data = dir.path().join("prefs.jsonl");
    let lines: Vec<String> = toy_pairs(12, 9)
        .iter()
        .map(|p| serde_json::to_string(p).unwrap())
        .collect();
    std::fs::write(&data, lines.join("\n")).unwrap();
    let bin = env!("CARGO_BIN_EXE_prefloop");
    let dpo = |model: &std::path::Path, out: &std::path::Path, extra: &[&str]| {
        std::process::Command::new(bin)
            .args(["dpo", "--model"])
            .arg(model)
            .arg("--data")
            .arg(&data)
            .arg("--out")
            .arg(out)
            .args([
                "--lr",
                "1e-2",
                "--epochs",
                "2",
                "--batch-size",
                "4",
                "--seed",
                "3",
            ])
            .args(extra)
            .output()
            .unwrap()
    };
    let adapter = dir.path().join("adapter");
    let res = dpo(
        &model_dir,
        &adapter,
        &[
            "--lora-rank",
            "4",
            "--lora-alpha",
            "4",
            "--lora-targets",
            "q,v,down",
        ],
    );
    assert!(
        res.status.success(),
        "{}",
        String::from_utf8_lossy(&res.stderr)
    );
    let cfg: serde_json::Value =
        serde_json::from_slice(&std::fs::read(adapter.join("adapter_config.json")).unwrap())
            .unwrap();
    assert_eq!(cfg["r"], 4);
    assert_eq!(
        cfg["target_modules"],
        serde_json::json!(["q_proj", "v_proj", "down_proj"])
    );
    assert!(!adapter.join("model.safetensors").exists());
    let trained = LanguageModel::load(&adapter, &candle_core::Device::Cpu).unwrap();
    let base = LanguageModel::load(&model_dir, &candle_core::Device::Cpu).unwrap();
    assert_ne!(
        fingerprint(&trained),
        fingerprint(&base),
        "the adapter moved the model"
    );

    // Keep training the adapter (it is its own policy), then merge it into a whole model.
    let merged = dir.path().join("merged");
    let res = dpo(&adapter, &merged, &["--schedule", "continue", "--merge"]);
    assert!(
        res.status.success(),
        "{}",
        String::from_utf8_lossy(&res.stderr)
    );
    assert!(
        merged.join("model.safetensors").exists() && !merged.join("adapter_config.json").exists()
    );
    let m = LanguageModel::load(&merged, &candle_core::Device::Cpu).unwrap();
    assert!(m.lora().is_none());
    assert_ne!(
        fingerprint(&m),
        fingerprint(&trained),
        "continued, not restarted"
    );

    // Flags that cannot go together say so, and write nothing.
    for (model, extra, says) in [
        (&adapter, vec!["--lora-rank", "2"], "LoRA adapter already"),
        (&model_dir, vec!["--merge"], "--merge merges LoRA adapters"),
        (
            &model_dir,
            vec!["--lora-rank", "0"],
            "--lora-rank must be 1 to 1024",
        ),
        (&model_dir, vec!["--lora-alpha", "3"], "--lora-rank"),
        (
            &model_dir,
            vec!["--lora-rank", "2", "--lora-targets", "q,head"],
            "unknown LoRA target",
        ),
    ] {
        let out = dir.path().join("refused");
        let res = dpo(model, &out, &extra);
        let stderr = String::from_utf8_lossy(&res.stderr);
        assert!(
            !res.status.success() && stderr.contains(says),
            "{extra:?}: {stderr}"
        );
        assert!(!out.exists());
    }
}

/// The trainer on bf16 weights (what `--dtype bf16` gives on a GPU; here through candle's CPU kernels): the
/// same run as `a_tiny_model_learns_a_toy_preference` learns the preference too, its policy stays bf16, and
/// its held-out accuracy matches f32's.
#[test]
fn the_trainer_learns_the_toy_preference_on_bf16_weights() {
    let reference = tiny_model(7)
        .to_device(&candle_core::Device::Cpu, candle_core::DType::BF16)
        .unwrap();
    let ToyRun { run: r, eval, .. } = learn_the_toy_preference(&reference);
    let outcome = r.outcome.expect("bf16 training succeeds");
    assert_eq!(outcome.model.dtype(), candle_core::DType::BF16);
    let (first, last) = (&r.steps[0], r.steps.last().unwrap());
    assert!(
        (first.loss - std::f64::consts::LN_2).abs() < 1e-2,
        "{first:?}"
    );
    assert!(
        last.loss < 0.3 * first.loss,
        "loss {} → {}",
        first.loss,
        last.loss
    );
    let accuracy = outcome
        .eval
        .expect("eval split evaluated")
        .rewards
        .accuracies;
    assert!(accuracy >= 0.9, "held-out rewards/accuracies {accuracy}");
    assert!(
        marker_rate(&outcome.model, &eval) > 0.15,
        "the bf16 policy samples the marker"
    );
}
