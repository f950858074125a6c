//! Model engine tests: tiny random llama models built here, no download. Tests against the demo SmolLM2 GGUF
//! run when it is present (PREFLOOP_DEMO_MODEL or ./prefloop-data/models/...) and print a note otherwise
//! (or fail, under PREFLOOP_TEST_STRICT=1).

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::quantized::{GgmlDType, QTensor, gguf_file};
use candle_core::{D, DType, Device, IndexOp, Tensor};
use prefloop::domain::{LoraSettings, LoraTarget, SamplingWeights};
use prefloop::model::{
    LanguageModel, ModelConfig, ModelError, Padding, SampleRow, SamplingParams, TextTokenizer,
    permute_qk_for_gguf, row_seed,
};
use rand::{Rng, SeedableRng};

fn tiny(tied: bool, seed: u64) -> LanguageModel {
    let tok = TextTokenizer::byte_level_for_tests();
    let mut cfg = ModelConfig::tiny(tok.vocab_size());
    cfg.tie_word_embeddings = tied;
    LanguageModel::random(cfg, tok, &Device::Cpu, seed).unwrap()
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    (a.to_dtype(DType::F64).unwrap() - b.to_dtype(DType::F64).unwrap())
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f64>()
        .unwrap()
}

fn ids_tensor(ids: &[u32]) -> Tensor {
    Tensor::new(ids, &Device::Cpu)
        .unwrap()
        .unsqueeze(0)
        .unwrap()
}

fn tensors_of(m: &LanguageModel) -> HashMap<String, Tensor> {
    m.named_vars()
        .iter()
        .map(|(n, v)| (n.clone(), v.as_detached_tensor()))
        .collect()
}

/// Writes `m` as a llama GGUF file (F32 tensors, Q/K permuted as llama.cpp stores them) with its tokenizer.
fn write_gguf(m: &LanguageModel, path: &Path, arch: &str, skip: Option<&str>) {
    use gguf_file::Value as V;
    let cfg = m.config();
    let tok = m.tokenizer();
    let tokens: Vec<V> = (0..tok.vocab_size() as u32)
        .map(|i| V::String(tok.id_to_token(i).unwrap()))
        .collect();
    let types: Vec<V> = (0..tok.vocab_size())
        .map(|i| V::I32(if i < 3 { 3 } else { 1 }))
        .collect();
    let md: Vec<(&str, V)> = vec![
        ("general.architecture", V::String(arch.into())),
        ("llama.block_count", V::U32(cfg.num_hidden_layers as u32)),
        ("llama.embedding_length", V::U32(cfg.hidden_size as u32)),
        (
            "llama.feed_forward_length",
            V::U32(cfg.intermediate_size as u32),
        ),
        (
            "llama.attention.head_count",
            V::U32(cfg.num_attention_heads as u32),
        ),
        (
            "llama.attention.head_count_kv",
            V::U32(cfg.num_key_value_heads as u32),
        ),
        ("llama.rope.dimension_count", V::U32(cfg.head_dim() as u32)),
        ("llama.rope.freq_base", V::F32(cfg.rope_theta as f32)),
        (
            "llama.attention.layer_norm_rms_epsilon",
            V::F32(cfg.rms_norm_eps as f32),
        ),
        (
            "llama.context_length",
            V::U32(cfg.max_position_embeddings as u32),
        ),
        ("tokenizer.ggml.model", V::String("gpt2".into())),
        ("tokenizer.ggml.pre", V::String("gpt2".into())),
        ("tokenizer.ggml.tokens", V::Array(tokens)),
        ("tokenizer.ggml.token_type", V::Array(types)),
        ("tokenizer.ggml.merges", V::Array(vec![])),
        ("tokenizer.ggml.eos_token_id", V::U32(tok.eos_id())),
        (
            "tokenizer.chat_template",
            V::String("{{'<|im_start|>'}}".into()),
        ),
    ];
    let t = tensors_of(m);
    let mut q: Vec<(String, QTensor)> = Vec::new();
    let mut put = |g: String, x: Tensor| {
        if skip != Some(g.as_str()) {
            q.push((g, QTensor::quantize(&x, GgmlDType::F32).unwrap()));
        }
    };
    put(
        "token_embd.weight".into(),
        t["model.embed_tokens.weight"].clone(),
    );
    put("output_norm.weight".into(), t["model.norm.weight"].clone());
    if !cfg.tie_word_embeddings {
        put("output.weight".into(), t["lm_head.weight"].clone());
    }
    for l in 0..cfg.num_hidden_layers {
        let h = |s: &str| t[&format!("model.layers.{l}.{s}")].clone();
        let g = |s: &str| format!("blk.{l}.{s}");
        put(g("attn_norm.weight"), h("input_layernorm.weight"));
        put(
            g("attn_q.weight"),
            permute_qk_for_gguf(&h("self_attn.q_proj.weight"), cfg.num_attention_heads).unwrap(),
        );
        put(
            g("attn_k.weight"),
            permute_qk_for_gguf(&h("self_attn.k_proj.weight"), cfg.num_key_value_heads).unwrap(),
        );
        put(g("attn_v.weight"), h("self_attn.v_proj.weight"));
        put(g("attn_output.weight"), h("self_attn.o_proj.weight"));
        put(g("ffn_norm.weight"), h("post_attention_layernorm.weight"));
        put(g("ffn_gate.weight"), h("mlp.gate_proj.weight"));
        put(g("ffn_up.weight"), h("mlp.up_proj.weight"));
        put(g("ffn_down.weight"), h("mlp.down_proj.weight"));
    }
    let mut f = std::fs::File::create(path).unwrap();
    let md_refs: Vec<(&str, &V)> = md.iter().map(|(k, v)| (*k, v)).collect();
    let q_refs: Vec<(&str, &QTensor)> = q.iter().map(|(k, v)| (k.as_str(), v)).collect();
    gguf_file::write(&mut f, &md_refs, &q_refs).unwrap();
}

const TEXT: &str = "The movie was great, 10/10!";

#[test]
fn logits_match_candle_transformers_llama_on_the_same_weights() {
    use candle_transformers::models::llama as ct;
    for tied in [false, true] {
        let m = tiny(tied, 1);
        let cfg = m.config();
        let ct_cfg = ct::Config {
            hidden_size: cfg.hidden_size,
            intermediate_size: cfg.intermediate_size,
            vocab_size: cfg.vocab_size,
            num_hidden_layers: cfg.num_hidden_layers,
            num_attention_heads: cfg.num_attention_heads,
            num_key_value_heads: cfg.num_key_value_heads,
            use_flash_attn: false,
            rms_norm_eps: cfg.rms_norm_eps,
            rope_theta: cfg.rope_theta as f32,
            bos_token_id: None,
            eos_token_id: None,
            rope_scaling: None,
            max_position_embeddings: cfg.max_position_embeddings,
            tie_word_embeddings: tied,
        };
        // Through a saved HF directory, so our writer and loader are in the loop too.
        let dir = tempfile::tempdir().unwrap();
        m.save(dir.path().join("m")).unwrap();
        let ours = LanguageModel::load(dir.path().join("m"), &Device::Cpu).unwrap();
        let st =
            candle_core::safetensors::load(dir.path().join("m/model.safetensors"), &Device::Cpu)
                .unwrap();
        let vb = candle_nn::VarBuilder::from_tensors(st, DType::F32, &Device::Cpu);
        let reference = ct::Llama::load(vb, &ct_cfg).unwrap();

        let ids = ours.tokenizer().encode(TEXT).unwrap();
        let logits = ours.forward(&ids_tensor(&ids)).unwrap().squeeze(0).unwrap();
        for len in [1, 2, 5, ids.len()] {
            let mut cache = ct::Cache::new(false, DType::F32, &ct_cfg, &Device::Cpu).unwrap();
            let want = reference
                .forward(&ids_tensor(&ids[..len]), 0, &mut cache)
                .unwrap()
                .squeeze(0)
                .unwrap();
            let got = logits.i(len - 1).unwrap();
            let d = max_abs_diff(&got, &want);
            assert!(d < 1e-4, "tied={tied} len={len}: max |Δlogit| = {d}");
        }
    }
}

#[test]
fn logits_match_quantized_llama_on_a_gguf_written_with_candle() {
    use candle_transformers::models::quantized_llama::ModelWeights;
    for tied in [false, true] {
        let m = tiny(tied, 2);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tiny.gguf");
        write_gguf(&m, &path, "llama", None);

        let mut f = std::fs::File::open(&path).unwrap();
        let ct = gguf_file::Content::read(&mut f).unwrap();
        let mut reference = ModelWeights::from_gguf(ct, &mut f, &Device::Cpu).unwrap();
        let loaded = LanguageModel::load(&path, &Device::Cpu).unwrap();
        assert_eq!(loaded.config().tie_word_embeddings, tied);
        assert_eq!(loaded.tokenizer().eos_id(), m.tokenizer().eos_id());

        let ids = m.tokenizer().encode(TEXT).unwrap();
        assert_eq!(loaded.tokenizer().encode(TEXT).unwrap(), ids);
        let ours = m.forward(&ids_tensor(&ids)).unwrap().squeeze(0).unwrap();
        let from_gguf = loaded
            .forward(&ids_tensor(&ids))
            .unwrap()
            .squeeze(0)
            .unwrap();
        // Loading un-permutes Q/K exactly: same weights, same logits.
        assert!(max_abs_diff(&ours, &from_gguf) < 1e-5);
        for len in [1, 3, ids.len()] {
            let want = reference
                .forward(&ids_tensor(&ids[..len]), 0)
                .unwrap()
                .squeeze(0)
                .unwrap();
            let d = max_abs_diff(&ours.i(len - 1).unwrap(), &want);
            assert!(d < 1e-4, "tied={tied} len={len}: max |Δlogit| = {d}");
        }
    }
}

#[test]
fn fused_inference_path_matches_differentiable_forward_under_padding() {
    let m = tiny(false, 3);
    let a = m.tokenizer().encode("short").unwrap();
    let b = m.tokenizer().encode("a longer sequence").unwrap();
    let t = b.len();
    let pad = 0u32;
    // Row 0 left-padded, row 1 full.
    let mut ids = vec![pad; t - a.len()];
    ids.extend(&a);
    ids.extend(&b);
    let valid = vec![
        (0..t).map(|j| j >= t - a.len()).collect::<Vec<_>>(),
        vec![true; t],
    ];
    let ids = Tensor::from_vec(ids, (2, t), &Device::Cpu).unwrap();
    let slow = m.forward_padded(&ids, &valid).unwrap();
    let fast = m.forward_inference(&ids, &valid).unwrap();
    let off = t - a.len();
    let d0 = max_abs_diff(&slow.i((0, off..)).unwrap(), &fast.i((0, off..)).unwrap());
    let d1 = max_abs_diff(&slow.i(1).unwrap(), &fast.i(1).unwrap());
    assert!(d0 < 1e-4 && d1 < 1e-4, "{d0} {d1}");
    // And the left-padded row equals the unpadded row.
    let alone = m.forward(&ids_tensor(&a)).unwrap();
    assert!(max_abs_diff(&slow.i((0, off..)).unwrap(), &alone.i(0).unwrap()) < 1e-4);
}

/// Σ log p(completion | prompt) by running the model once per completion token on the unpadded prefix.
fn direct_logprob(m: &LanguageModel, prompt: &[u32], completion: &[u32]) -> f64 {
    let mut total = 0.0;
    for j in 0..completion.len() {
        let mut seq = prompt.to_vec();
        seq.extend(&completion[..j]);
        let logits = m
            .forward(&ids_tensor(&seq))
            .unwrap()
            .i((0, seq.len() - 1))
            .unwrap();
        let lp =
            candle_nn::ops::log_softmax(&logits.to_dtype(DType::F64).unwrap(), D::Minus1).unwrap();
        total += lp
            .i(completion[j] as usize)
            .unwrap()
            .to_scalar::<f64>()
            .unwrap();
    }
    total
}

/// (prompt, completion) texts as token ids.
fn encode_items(m: &LanguageModel, texts: &[(&str, &str)]) -> Vec<(Vec<u32>, Vec<u32>)> {
    let tk = m.tokenizer();
    texts
        .iter()
        .map(|(p, c)| (tk.encode(p).unwrap(), tk.encode(c).unwrap()))
        .collect()
}

/// `sequence_logprobs` on both paddings, and `score` on the items twice over (more than one scoring batch,
/// results in the items' order), against the token-by-token computation: sums, token counts and means.
fn assert_logprobs_are_token_by_token(m: &LanguageModel, items: &[(Vec<u32>, Vec<u32>)]) {
    let want: Vec<f64> = items.iter().map(|(p, c)| direct_logprob(m, p, c)).collect();
    let mean_of = |i: usize| match items[i].1.len() {
        0 => 0.0,
        n => want[i] / n as f64,
    };
    for padding in [Padding::Left, Padding::Right] {
        let r = m.sequence_logprobs(items, padding).unwrap();
        let sums = r.sum.to_vec1::<f32>().unwrap();
        let tokens = r.tokens.to_vec1::<f32>().unwrap();
        let means = r.mean().unwrap().to_vec1::<f32>().unwrap();
        for (i, (_, c)) in items.iter().enumerate() {
            assert!(
                (sums[i] as f64 - want[i]).abs() < 1e-3,
                "{padding:?} item {i}: {} vs {}",
                sums[i],
                want[i]
            );
            assert_eq!(tokens[i] as usize, c.len());
            assert!((means[i] as f64 - mean_of(i)).abs() < 1e-4);
        }
    }
    let twice: Vec<(Vec<u32>, Vec<u32>)> = items.iter().chain(items).cloned().collect();
    for (i, s) in m.score(&twice).unwrap().iter().enumerate() {
        let w = want[i % items.len()];
        assert!((s.sum - w).abs() < 1e-3, "score item {i}: {} vs {w}", s.sum);
        assert_eq!(s.tokens, twice[i].1.len());
        assert!((s.mean - mean_of(i % items.len())).abs() < 1e-4);
    }
}

#[test]
fn sequence_logprobs_equal_token_by_token_computation_under_both_paddings() {
    let m = tiny(true, 4);
    let items = encode_items(
        &m,
        &[
            ("Review: ", "a fine film"),
            ("A much longer prompt before it: ", "ok"),
            ("x", ""),
            ("Hi", "there, friend of mine"),
        ],
    );
    assert_logprobs_are_token_by_token(&m, &items);
    // An empty prompt is refused, not silently mis-scored.
    assert!(matches!(
        m.sequence_logprobs(&[(vec![], vec![5])], Padding::Right),
        Err(ModelError::Input(_))
    ));
}

/// A DPO batch: completions that share their prompt (chosen and rejected), prompts of different lengths, an
/// empty and a one-token completion. The prompts run once each; every log-prob still equals the token-by-token
/// computation.
#[test]
fn completions_sharing_a_prompt_score_as_if_each_ran_alone() {
    let m = tiny(false, 5);
    let items = encode_items(
        &m,
        &[
            ("Review: ", "a fine film"),
            ("A much longer prompt before it: ", "ok"),
            ("Review: ", "dull and long, sadly"),
            ("A much longer prompt before it: ", ""),
            ("Hi", "t"),
            ("Review: ", "x"),
            ("Hi", "there, friend"),
        ],
    );
    assert_logprobs_are_token_by_token(&m, &items);
}

/// Through the fused training kernels (f32 on the CPU): a batch whose completions share prompts gives every
/// weight the same gradient as the same items run one by one.
#[test]
fn shared_prompt_gradients_equal_those_of_items_run_one_by_one() {
    let m = tiny(true, 9);
    let items = encode_items(
        &m,
        &[
            ("Prompt one: ", "chosen answer"),
            ("Prompt two, longer: ", "yes"),
            ("Prompt one: ", "rejected"),
            ("Prompt two, longer: ", "no, not at all"),
        ],
    );
    let coef = [0.7f32, -1.3, 0.4, 1.1];
    let batch = m.sequence_logprobs(&items, Padding::Right).unwrap();
    let batch_loss = (batch.sum * Tensor::new(&coef, &Device::Cpu).unwrap())
        .unwrap()
        .sum_all()
        .unwrap();
    let mut alone_loss = Tensor::zeros((), DType::F32, &Device::Cpu).unwrap();
    for (item, c) in items.iter().zip(coef) {
        let lp = m
            .sequence_logprobs(std::slice::from_ref(item), Padding::Right)
            .unwrap();
        alone_loss = (alone_loss + (lp.sum.sum_all().unwrap() * c as f64).unwrap()).unwrap();
    }
    let (g_batch, g_alone) = (
        batch_loss.backward().unwrap(),
        alone_loss.backward().unwrap(),
    );
    for (name, var) in m.named_vars() {
        let (a, b) = (
            g_batch.get(var.as_tensor()).unwrap(),
            g_alone.get(var.as_tensor()).unwrap(),
        );
        let scale = max_abs_diff(b, &b.zeros_like().unwrap()).max(1e-3);
        let d = max_abs_diff(a, b);
        assert!(
            d < 1e-4 * scale.max(1.0),
            "{name}: gradients differ by {d} (scale {scale})"
        );
    }
}

/// Central finite differences in f64 against backprop, on a few entries of EVERY weight tensor. A weight whose
/// gradient candle silently drops (fused kernels) fails here.
fn gradient_check(tied: bool, bias: bool, padding: Padding, texts: &[(&str, &str)]) {
    let tok = TextTokenizer::byte_level_for_tests();
    let mut cfg = ModelConfig::tiny(tok.vocab_size());
    cfg.tie_word_embeddings = tied;
    cfg.attention_bias = bias;
    cfg.hidden_size = 8;
    cfg.intermediate_size = 12;
    let m = LanguageModel::random(cfg, tok, &Device::Cpu, 7)
        .unwrap()
        .to_dtype(DType::F64)
        .unwrap();
    let items = encode_items(&m, texts);
    let coef: Vec<f64> = [0.7, -1.3, 0.9, -0.4][..items.len()].to_vec();
    let coef = Tensor::new(coef, &Device::Cpu).unwrap();
    let loss_of = |m: &LanguageModel| -> Tensor {
        let r = m.sequence_logprobs(&items, padding).unwrap();
        (r.sum * &coef).unwrap().sum_all().unwrap()
    };
    let loss = loss_of(&m);
    let grads = loss.backward().unwrap();
    let eps = 1e-5;
    for (name, var) in m.named_vars() {
        let g = grads
            .get(var.as_tensor())
            .unwrap_or_else(|| panic!("{name}: no gradient recorded"))
            .flatten_all()
            .unwrap()
            .to_vec1::<f64>()
            .unwrap();
        assert!(
            g.iter().any(|x| x.abs() > 1e-9),
            "{name}: gradient is all zero"
        );
        let orig = var.as_detached_tensor().copy().unwrap();
        let flat = orig.flatten_all().unwrap().to_vec1::<f64>().unwrap();
        // The largest-gradient entry and two fixed ones.
        let top = (0..g.len())
            .max_by(|&a, &b| g[a].abs().total_cmp(&g[b].abs()))
            .unwrap();
        for idx in [top, 0, flat.len() / 2] {
            let at = |delta: f64| {
                let mut v = flat.clone();
                v[idx] += delta;
                var.set(&Tensor::from_vec(v, orig.shape(), &Device::Cpu).unwrap())
                    .unwrap();
                loss_of(&m).to_scalar::<f64>().unwrap()
            };
            let fd = (at(eps) - at(-eps)) / (2.0 * eps);
            var.set(&orig).unwrap();
            let err = (fd - g[idx]).abs();
            assert!(
                err < 1e-6 + 1e-5 * fd.abs().max(g[idx].abs()),
                "{name}[{idx}]: backprop {} vs finite difference {fd}",
                g[idx]
            );
        }
    }
}

#[test]
fn gradients_match_finite_differences_for_every_weight_untied_with_biases() {
    gradient_check(false, true, Padding::Right, DISTINCT_PROMPTS);
}

#[test]
fn gradients_match_finite_differences_for_every_weight_tied_left_padded() {
    gradient_check(true, false, Padding::Left, DISTINCT_PROMPTS);
}

/// Two items per prompt, as in a DPO batch: the prompts run once and their keys and values feed both
/// completions, so each prompt weight's gradient sums over both.
#[test]
fn gradients_match_finite_differences_for_every_weight_with_shared_prompts() {
    gradient_check(false, true, Padding::Right, SHARED_PROMPTS);
    gradient_check(true, false, Padding::Left, SHARED_PROMPTS);
}

const DISTINCT_PROMPTS: &[(&str, &str)] = &[("ab", "cde"), ("hello", "x")];
const SHARED_PROMPTS: &[(&str, &str)] =
    &[("ab", "cde"), ("hello", "x"), ("ab", "q"), ("hello", "yz")];

fn params(temperature: f64, top_p: f64, max_new_tokens: usize, seed: u64) -> SamplingParams {
    SamplingParams {
        temperature,
        top_p,
        max_new_tokens,
        seed,
        ..Default::default()
    }
}

#[test]
fn sampling_repeats_for_a_seed_and_differs_across_seeds() {
    let m = tiny(true, 5);
    let prompts = vec![
        m.tokenizer().encode("Once").unwrap(),
        m.tokenizer().encode("The end of").unwrap(),
    ];
    let a = m.sample(&prompts, 3, &params(1.0, 0.95, 12, 42)).unwrap();
    let b = m.sample(&prompts, 3, &params(1.0, 0.95, 12, 42)).unwrap();
    let c = m.sample(&prompts, 3, &params(1.0, 0.95, 12, 43)).unwrap();
    assert_eq!(a, b);
    assert_ne!(a, c);
    assert_eq!(a.len(), 2);
    assert!(a.iter().all(|s| s.len() == 3));
    // The three samples of one prompt are not all the same.
    assert!(a[0][0].token_ids != a[0][1].token_ids || a[0][1].token_ids != a[0][2].token_ids);
    for s in a.iter().flatten() {
        assert!(s.token_ids.len() <= 12 && !s.token_ids.is_empty());
        assert!(s.logprob < 0.0 && s.logprob.is_finite());
    }
}

#[test]
fn sampling_stops_at_eos() {
    let mut m = tiny(false, 6);
    let prompt = m.tokenizer().encode("Stop").unwrap();
    let greedy = params(0.0, 1.0, 10, 0);
    let free = m
        .sample(std::slice::from_ref(&prompt), 1, &greedy)
        .unwrap()
        .remove(0)
        .remove(0);
    assert_eq!(free.token_ids.len(), 10);
    // Make the greedy path's first token not seen before position ≥ 1 the end-of-sequence token.
    let cut = (1..10)
        .find(|&i| !free.token_ids[..i].contains(&free.token_ids[i]))
        .expect("greedy output repeats a single token");
    let eos = free.token_ids[cut];
    let tok = m.tokenizer().clone().with_eos_id(eos).unwrap();
    m.set_tokenizer(tok).unwrap();
    let stopped = m
        .sample(std::slice::from_ref(&prompt), 1, &greedy)
        .unwrap()
        .remove(0)
        .remove(0);
    assert!(stopped.stopped_at_eos);
    assert_eq!(stopped.token_ids, free.token_ids[..=cut].to_vec());
    assert_eq!(
        stopped.text,
        m.tokenizer().decode(&free.token_ids[..cut]).unwrap()
    );
    // In a batch, the stopped row leaves and the other rows carry on.
    let other = m.tokenizer().encode("Another prompt").unwrap();
    let both = m.sample(&[prompt, other.clone()], 1, &greedy).unwrap();
    assert_eq!(both[0][0].token_ids, stopped.token_ids);
    let alone = m.sample(&[other], 1, &greedy).unwrap();
    assert_eq!(both[1][0].token_ids, alone[0][0].token_ids);
}

#[test]
fn batched_sampling_equals_one_by_one_and_its_logprob_equals_scoring() {
    let m = tiny(true, 8);
    let tk = m.tokenizer();
    let prompts: Vec<Vec<u32>> = ["a", "Two words", "A prompt that is longer than the rest"]
        .iter()
        .map(|p| tk.encode(p).unwrap())
        .collect();
    let p = params(0.9, 0.9, 16, 11);
    let batched = m.sample(&prompts, 3, &p).unwrap();
    for (i, prompt) in prompts.iter().enumerate() {
        for (j, b) in batched[i].iter().enumerate() {
            let row = SampleRow {
                prompt_ids: prompt.clone(),
                seed: row_seed(11, i, j),
            };
            let alone = m.sample_rows(&[row], &p).unwrap().remove(0);
            assert_eq!(b.token_ids, alone.token_ids, "prompt {i} sample {j}");
            assert_eq!(b.text, alone.text);
            assert!((b.logprob - alone.logprob).abs() < 1e-4);
            // The returned log-prob is log π(y|x) at temperature 1: scoring the same ids gives it back.
            let scored = m.score(&[(prompt.clone(), b.token_ids.clone())]).unwrap()[0];
            assert!(
                (scored.sum - b.logprob).abs() < 1e-3,
                "{} vs {}",
                scored.sum,
                b.logprob
            );
        }
    }
}

/// A random model whose linear layers are all a multiple of 32 wide, so that they quantize in blocks of 32.
fn quantizable(tied: bool, seed: u64) -> LanguageModel {
    let tok = TextTokenizer::byte_level_for_tests();
    let cfg = ModelConfig {
        hidden_size: 64,
        intermediate_size: 96,
        tie_word_embeddings: tied,
        ..ModelConfig::tiny(tok.vocab_size())
    };
    LanguageModel::random(cfg, tok, &Device::Cpu, seed).unwrap()
}

#[test]
fn quantized_sampling_draws_from_nearly_the_f32_distribution() {
    // Widths of 64 and 96, and the tiny shape's 16 and 24: every input is padded to 256 for the packed
    // kernels, whatever its width.
    for (m, weights, per_token) in [
        (quantizable(true, 21), SamplingWeights::Q8_0, 0.02),
        (quantizable(false, 21), SamplingWeights::Q8_0, 0.02),
        (tiny(false, 21), SamplingWeights::Q8_0, 0.02),
        (quantizable(true, 21), SamplingWeights::Q4K, 0.4),
    ] {
        let q = m.with_sampling_weights(weights).unwrap();
        assert_eq!(q.sampling_weights(), weights);
        assert_eq!(m.sampling_weights(), SamplingWeights::F32);
        let tk = m.tokenizer();
        let prompts: Vec<Vec<u32>> = ["a", "Two words", "A longer prompt than the others"]
            .iter()
            .map(|p| tk.encode(p).unwrap())
            .collect();
        let p = SamplingParams {
            record_entropy: true,
            ..params(1.0, 1.0, 12, 3)
        };
        let mut worst: f64 = 0.0;
        let mut moved: f64 = 0.0;
        for (prompt, row) in prompts.iter().zip(q.sample(&prompts, 2, &p).unwrap()) {
            for s in row {
                // The sampler's own log π(y|x) is the quantized copy's; the f32 model's scoring of the same
                // tokens differs from it by the quantization error only.
                let exact = m.score(&[(prompt.clone(), s.token_ids.clone())]).unwrap()[0];
                let per = (exact.sum - s.logprob).abs() / s.token_ids.len() as f64;
                worst = worst.max(per);
                moved = moved.max((exact.sum - s.logprob).abs());
                // And each recorded entropy is the quantized copy's: near the f32 model's.
                let ents = s.token_entropies.as_ref().unwrap();
                for (t, &h) in ents.iter().enumerate() {
                    let mut prefix = prompt.clone();
                    prefix.extend_from_slice(&s.token_ids[..t]);
                    let direct = direct_entropy(&m, &prefix);
                    assert!(
                        (direct - h as f64).abs() < 10.0 * per_token,
                        "{weights}: entropy {h} vs f32 {direct}"
                    );
                }
            }
        }
        let width = m.config().hidden_size;
        assert!(
            worst < per_token,
            "{weights}, width {width}: {worst} nats a token from f32"
        );
        // Not the f32 path in disguise: the copy's numbers differ from the f32 ones, if only a little.
        assert!(
            moved > 1e-6,
            "{weights}: sampled log-probs equal f32's exactly"
        );
    }
}

#[test]
fn quantized_copy_leaves_scoring_and_copies_in_f32() {
    let m = quantizable(true, 22);
    let q = m.with_sampling_weights(SamplingWeights::Q8_0).unwrap();
    let tk = m.tokenizer();
    let items = vec![(
        tk.encode("The film").unwrap(),
        tk.encode(" was fine").unwrap(),
    )];
    // Scoring (certainty, DPO) reads the f32 weights, quantized copy or not.
    assert_eq!(m.score(&items).unwrap(), q.score(&items).unwrap());
    let prompts = vec![tk.encode("Once").unwrap()];
    let p = params(0.8, 1.0, 10, 9);
    let f32_samples = m.sample(&prompts, 2, &p).unwrap();
    // Back to f32, and a deep copy (what training starts from), sample exactly as the f32 model does.
    let back = q.with_sampling_weights(SamplingWeights::F32).unwrap();
    assert_eq!(back.sampling_weights(), SamplingWeights::F32);
    assert_eq!(back.sample(&prompts, 2, &p).unwrap(), f32_samples);
    let copy = q.deep_clone().unwrap();
    assert_eq!(copy.sampling_weights(), SamplingWeights::F32);
    assert_eq!(copy.sample(&prompts, 2, &p).unwrap(), f32_samples);
}

/// −Σ p log p of the model's next-token distribution after `prefix`, at temperature 1, from one plain forward pass.
fn direct_entropy(m: &LanguageModel, prefix: &[u32]) -> f64 {
    let logits = m
        .forward(&ids_tensor(prefix))
        .unwrap()
        .i((0, prefix.len() - 1))
        .unwrap()
        .to_dtype(DType::F64)
        .unwrap();
    let lp = candle_nn::ops::log_softmax(&logits, D::Minus1).unwrap();
    let lp = lp.to_vec1::<f64>().unwrap();
    -lp.iter().map(|&l| l.exp() * l).sum::<f64>()
}

#[test]
fn recorded_token_entropies_equal_the_models_distribution_entropy() {
    let m = tiny(false, 9);
    let tk = m.tokenizer();
    let prompts: Vec<Vec<u32>> = ["Hello", "A longer prompt, padded on the left"]
        .iter()
        .map(|p| tk.encode(p).unwrap())
        .collect();
    // Off by default: nothing recorded.
    let plain = m.sample(&prompts, 2, &params(0.7, 0.9, 10, 5)).unwrap();
    assert!(plain.iter().flatten().all(|s| s.token_entropies.is_none()));
    // Whatever temperature and top-p draw the tokens, the entropy is of the full temperature-1 distribution,
    // and recording it does not change what is drawn.
    for (t, top_p) in [(1.0, 1.0), (0.7, 0.9)] {
        let p = SamplingParams {
            record_entropy: true,
            ..params(t, top_p, 10, 5)
        };
        let got = m.sample(&prompts, 2, &p).unwrap();
        let same_draws = m.sample(&prompts, 2, &params(t, top_p, 10, 5)).unwrap();
        for (i, prompt) in prompts.iter().enumerate() {
            for (j, s) in got[i].iter().enumerate() {
                assert_eq!(s.token_ids, same_draws[i][j].token_ids);
                let h = s.token_entropies.as_ref().expect("recorded");
                assert_eq!(h.len(), s.token_ids.len());
                let mut prefix = prompt.clone();
                let mut sum = 0.0;
                for (k, &tok) in s.token_ids.iter().enumerate() {
                    let want = direct_entropy(&m, &prefix);
                    assert!(
                        (h[k] as f64 - want).abs() < 1e-4,
                        "T {t} prompt {i} sample {j} token {k}: {} vs {want}",
                        h[k]
                    );
                    assert!(want > 0.0 && want <= (tk.vocab_size() as f64).ln() + 1e-9);
                    sum += want;
                    prefix.push(tok);
                }
                assert!((s.entropy_sum().unwrap() - sum).abs() < 1e-3);
            }
        }
    }
}

fn tensor_bits(t: &Tensor) -> Vec<u32> {
    t.flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap()
        .iter()
        .map(|x| x.to_bits())
        .collect()
}

#[test]
fn save_then_load_is_bit_identical_and_replaces_atomically() {
    for tied in [false, true] {
        let m = tiny(tied, 9);
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("model");
        m.save(&target).unwrap();
        // Saving again over an existing directory replaces it and leaves no temporary behind.
        m.save(&target).unwrap();
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("model")]);
        let st =
            candle_core::safetensors::load(target.join("model.safetensors"), &Device::Cpu).unwrap();
        assert_eq!(st.contains_key("lm_head.weight"), !tied);

        let back = LanguageModel::load(&target, &Device::Cpu).unwrap();
        assert_eq!(back.config(), m.config());
        assert_eq!(back.tokenizer().eos_id(), m.tokenizer().eos_id());
        assert_eq!(
            back.tokenizer().chat_prompt("hi"),
            m.tokenizer().chat_prompt("hi")
        );
        assert_eq!(
            back.tokenizer().encode(TEXT).unwrap(),
            m.tokenizer().encode(TEXT).unwrap()
        );
        for ((n1, v1), (n2, v2)) in m.named_vars().iter().zip(back.named_vars()) {
            assert_eq!(n1, n2);
            assert_eq!(
                tensor_bits(v1.as_tensor()),
                tensor_bits(v2.as_tensor()),
                "{n1}"
            );
        }
        let ids = ids_tensor(&m.tokenizer().encode(TEXT).unwrap());
        assert_eq!(
            tensor_bits(&m.forward(&ids).unwrap()),
            tensor_bits(&back.forward(&ids).unwrap())
        );
    }
}

#[test]
fn snapshot_restore_and_deep_clone_keep_weights_apart() {
    let m = tiny(true, 10);
    let snap = m.snapshot().unwrap();
    let copy = m.deep_clone().unwrap();
    let ids = ids_tensor(&m.tokenizer().encode(TEXT).unwrap());
    let before = m.forward(&ids).unwrap();
    for v in m.vars() {
        v.set(&(v.as_tensor() * 1.5).unwrap()).unwrap();
    }
    assert!(max_abs_diff(&before, &m.forward(&ids).unwrap()) > 1e-3);
    assert_eq!(
        tensor_bits(&before),
        tensor_bits(&copy.forward(&ids).unwrap())
    );
    m.restore(&snap).unwrap();
    assert_eq!(tensor_bits(&before), tensor_bits(&m.forward(&ids).unwrap()));
    assert!(m.restore(&tiny(false, 10).snapshot().unwrap()).is_err());
}

#[test]
fn chat_template_is_chatml_and_special_tokens_are_single_ids() {
    let tk = TextTokenizer::byte_level_for_tests();
    let p = tk.chat_prompt("Hello");
    assert_eq!(
        p,
        "<|im_start|>user\nHello<|im_end|>\n<|im_start|>assistant\n"
    );
    let ids = tk.encode(&p).unwrap();
    assert_eq!(ids[0], 1);
    assert!(ids.contains(&2));
    assert_eq!(tk.decode(&ids).unwrap(), "user\nHello\nassistant\n");
    assert_eq!(
        tk.decode(&tk.encode("héllo wörld").unwrap()).unwrap(),
        "héllo wörld"
    );
}

// ---------- bad files ----------

fn saved(tied: bool) -> (tempfile::TempDir, PathBuf, LanguageModel) {
    let m = tiny(tied, 12);
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("m");
    m.save(&p).unwrap();
    (dir, p, m)
}

fn rewrite_safetensors(dir: &Path, f: impl FnOnce(&mut HashMap<String, Tensor>)) {
    let file = dir.join("model.safetensors");
    let mut st = candle_core::safetensors::load(&file, &Device::Cpu).unwrap();
    f(&mut st);
    candle_core::safetensors::save(&st, &file).unwrap();
}

fn load_err(p: &Path) -> ModelError {
    match LanguageModel::load(p, &Device::Cpu) {
        Ok(_) => panic!("{} loaded but should not", p.display()),
        Err(e) => e,
    }
}

#[test]
fn bad_hf_directories_give_errors_naming_file_and_tensor() {
    // Missing path.
    assert!(matches!(
        load_err(Path::new("/nonexistent/model")),
        ModelError::Io { .. }
    ));

    // Unknown architecture.
    let (_d, p, _) = saved(false);
    let cfg = p.join("config.json");
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("\"llama\"", "\"gpt_neox\"");
    std::fs::write(&cfg, text).unwrap();
    let e = load_err(&p);
    assert!(
        matches!(&e, ModelError::UnknownArchitecture { found, .. } if found == "gpt_neox"),
        "{e}"
    );
    assert!(e.to_string().contains("config.json"));

    // Malformed config.
    std::fs::write(&cfg, "{ not json").unwrap();
    assert!(matches!(load_err(&p), ModelError::BadConfig { .. }));

    // Missing tensor.
    let (_d, p, _) = saved(false);
    rewrite_safetensors(&p, |st| {
        st.remove("model.layers.1.mlp.up_proj.weight");
    });
    let e = load_err(&p);
    assert!(
        matches!(&e, ModelError::MissingTensor { tensor, .. } if tensor == "model.layers.1.mlp.up_proj.weight"),
        "{e}"
    );
    assert!(e.to_string().contains("model.safetensors"), "{e}");

    // Untied model without lm_head.weight.
    let (_d, p, _) = saved(false);
    rewrite_safetensors(&p, |st| {
        st.remove("lm_head.weight");
    });
    assert!(
        matches!(load_err(&p), ModelError::MissingTensor { tensor, .. } if tensor == "lm_head.weight")
    );

    // Wrong shape.
    let (_d, p, _) = saved(false);
    rewrite_safetensors(&p, |st| {
        st.insert(
            "model.norm.weight".into(),
            Tensor::ones(7, DType::F32, &Device::Cpu).unwrap(),
        );
    });
    let e = load_err(&p);
    assert!(
        matches!(&e, ModelError::WrongShape { tensor, found, .. } if tensor == "model.norm.weight" && found == &vec![7]),
        "{e}"
    );

    // Integer weights.
    let (_d, p, _) = saved(false);
    rewrite_safetensors(&p, |st| {
        st.insert(
            "model.norm.weight".into(),
            Tensor::zeros(16, DType::U32, &Device::Cpu).unwrap(),
        );
    });
    assert!(matches!(load_err(&p), ModelError::WrongDtype { .. }));

    // Truncated file.
    let (_d, p, _) = saved(false);
    let file = p.join("model.safetensors");
    let bytes = std::fs::read(&file).unwrap();
    std::fs::write(&file, &bytes[..bytes.len() - 100]).unwrap();
    let e = load_err(&p);
    assert!(matches!(&e, ModelError::Truncated { .. }), "{e}");
    assert!(
        e.to_string().contains("model.safetensors") && e.to_string().contains("tensor"),
        "{e}"
    );
    std::fs::write(&file, &bytes[..4]).unwrap();
    assert!(matches!(load_err(&p), ModelError::Corrupt { .. }));

    // No tokenizer.
    let (_d, p, _) = saved(false);
    std::fs::remove_file(p.join("tokenizer.json")).unwrap();
    assert!(matches!(load_err(&p), ModelError::Tokenizer { .. }));
}

#[test]
fn bf16_and_sharded_checkpoints_load() {
    let (_d, p, m) = saved(true);
    let ids = ids_tensor(&m.tokenizer().encode(TEXT).unwrap());
    let want = m.forward(&ids).unwrap();

    // bf16 weights are widened to f32.
    rewrite_safetensors(&p, |st| {
        for t in st.values_mut() {
            *t = t.to_dtype(DType::BF16).unwrap();
        }
    });
    let bf = LanguageModel::load(&p, &Device::Cpu).unwrap();
    assert_eq!(bf.dtype(), DType::F32);
    assert!(max_abs_diff(&want, &bf.forward(&ids).unwrap()) < 0.5);

    // Two shards with an index.
    let (_d, p, _) = saved(true);
    let st = candle_core::safetensors::load(p.join("model.safetensors"), &Device::Cpu).unwrap();
    std::fs::remove_file(p.join("model.safetensors")).unwrap();
    let (mut a, mut b) = (HashMap::new(), HashMap::new());
    let mut map = serde_json::Map::new();
    for (i, (n, t)) in st.into_iter().enumerate() {
        let shard = if i % 2 == 0 {
            "model-00001-of-00002.safetensors"
        } else {
            "model-00002-of-00002.safetensors"
        };
        map.insert(n.clone(), shard.into());
        if i % 2 == 0 {
            a.insert(n, t)
        } else {
            b.insert(n, t)
        };
    }
    candle_core::safetensors::save(&a, p.join("model-00001-of-00002.safetensors")).unwrap();
    candle_core::safetensors::save(&b, p.join("model-00002-of-00002.safetensors")).unwrap();
    std::fs::write(
        p.join("model.safetensors.index.json"),
        serde_json::json!({ "weight_map": map }).to_string(),
    )
    .unwrap();
    let sharded = LanguageModel::load(&p, &Device::Cpu).unwrap();
    assert_eq!(
        tensor_bits(&want),
        tensor_bits(&sharded.forward(&ids).unwrap())
    );
}

#[test]
fn bad_gguf_files_give_errors_naming_file_and_tensor() {
    let m = tiny(false, 13);
    let dir = tempfile::tempdir().unwrap();

    let p = dir.path().join("arch.gguf");
    write_gguf(&m, &p, "gptneox", None);
    let e = load_err(&p);
    assert!(
        matches!(&e, ModelError::UnknownArchitecture { found, .. } if found == "gptneox"),
        "{e}"
    );
    assert!(e.to_string().contains("arch.gguf"));

    let p = dir.path().join("missing.gguf");
    write_gguf(&m, &p, "llama", Some("blk.1.ffn_up.weight"));
    let e = load_err(&p);
    assert!(
        matches!(&e, ModelError::MissingTensor { tensor, .. } if tensor == "blk.1.ffn_up.weight"),
        "{e}"
    );

    let p = dir.path().join("truncated.gguf");
    write_gguf(&m, &p, "llama", None);
    let bytes = std::fs::read(&p).unwrap();
    std::fs::write(&p, &bytes[..bytes.len() - 300]).unwrap();
    let e = load_err(&p);
    assert!(
        matches!(&e, ModelError::Truncated { tensor, .. } if !tensor.is_empty()),
        "{e}"
    );

    let p = dir.path().join("garbage.gguf");
    std::fs::write(&p, b"this is not a gguf file at all").unwrap();
    assert!(matches!(load_err(&p), ModelError::Corrupt { .. }));

    let p = dir.path().join("model.bin");
    std::fs::write(&p, b"?").unwrap();
    assert!(matches!(load_err(&p), ModelError::Corrupt { .. }));
}

// ---------- the demo model, when present ----------

fn demo_model_path() -> Option<PathBuf> {
    let p = std::env::var_os("PREFLOOP_DEMO_MODEL")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("prefloop-data/models/SmolLM2-135M-Instruct.Q4_1.gguf"));
    if p.exists() {
        Some(p)
    } else {
        common::skip_unless_strict(
            &format!("the demo model {} is missing", p.display()),
            "run scripts/fetch-demo-assets.sh ./prefloop-data, or set PREFLOOP_DEMO_MODEL to a GGUF file",
        );
        None
    }
}

#[test]
fn demo_smollm2_loads_matches_quantized_llama_and_generates_english() {
    use candle_transformers::models::quantized_llama::ModelWeights;
    let Some(path) = demo_model_path() else {
        return;
    };
    let m = LanguageModel::load(&path, &Device::Cpu).unwrap();
    let cfg = m.config();
    assert_eq!(
        (cfg.num_hidden_layers, cfg.hidden_size, cfg.vocab_size),
        (30, 576, 49152)
    );
    assert!(cfg.tie_word_embeddings);
    assert_eq!(m.tokenizer().eos_id(), 2);
    let prompt = m.tokenizer().chat_prompt("What is the capital of France?");
    let ids = m.tokenizer().encode(&prompt).unwrap();
    assert_eq!(ids[0], 1, "<|im_start|> is one special token");
    // SmolLM2's pre-tokenizer splits digits one by one, and byte-level BPE round-trips any text.
    assert_eq!(m.tokenizer().encode("2024").unwrap().len(), 4);
    let text = "Héllo, world!  Ça va? 12 ✓";
    assert_eq!(
        m.tokenizer()
            .decode(&m.tokenizer().encode(text).unwrap())
            .unwrap(),
        text
    );

    let mut f = std::fs::File::open(&path).unwrap();
    let ct = gguf_file::Content::read(&mut f).unwrap();
    let mut reference = ModelWeights::from_gguf(ct, &mut f, &Device::Cpu).unwrap();
    let want = reference
        .forward(&ids_tensor(&ids), 0)
        .unwrap()
        .squeeze(0)
        .unwrap();
    let got = m
        .forward_inference(&ids_tensor(&ids), &[vec![true; ids.len()]])
        .unwrap();
    let got = got.i((0, ids.len() - 1)).unwrap();
    // quantized_llama multiplies Q4_1 weights by 8-bit-quantised activations; we use exact f32 products of the
    // dequantised weights. The two agree to within that quantisation noise, and on the top token.
    let d = max_abs_diff(&got, &want);
    let argmax = |t: &Tensor| t.argmax(0).unwrap().to_scalar::<u32>().unwrap();
    eprintln!("SmolLM2 vs quantized_llama: max |Δlogit| = {d}");
    assert!(d < 1.0, "max |Δlogit| = {d}");
    assert_eq!(argmax(&got), argmax(&want));

    let greedy = SamplingParams {
        temperature: 0.0,
        max_new_tokens: 12,
        ..Default::default()
    };
    let a = m
        .sample(std::slice::from_ref(&ids), 1, &greedy)
        .unwrap()
        .remove(0)
        .remove(0);
    let b = m.sample(&[ids], 1, &greedy).unwrap().remove(0).remove(0);
    eprintln!("SmolLM2 greedy: {:?}", a.text);
    assert_eq!(a, b);
    assert!(a.text.contains("Paris"), "{:?}", a.text);
}

#[test]
fn model_can_move_to_the_engine_thread() {
    fn assert_send_sync<T: Send + Sync + 'static>() {}
    assert_send_sync::<LanguageModel>();
    assert_send_sync::<TextTokenizer>();
}

/// `bench-model --json` prints one object a script can read: the workloads asked for, each with its tokens,
/// seconds and tokens per second, and nothing else on stdout; an unknown workload is refused by name.
#[test]
fn bench_model_json_names_its_figures() {
    let bin = env!("CARGO_BIN_EXE_prefloop");
    let out = std::process::Command::new(bin)
        .args(["bench-model", "--random", "small", "--repeats", "1"])
        .args(["--only", "score,sample1", "--json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    let report: serde_json::Value = serde_json::from_str(stdout.trim()).expect(&stdout);
    assert_eq!(report["model"], "small");
    assert_eq!(report["score"]["tokens"], 512);
    let sampled = report["sample1"]["tokens"].as_u64().unwrap();
    assert!((1..=32).contains(&sampled), "{report}");
    for w in ["score", "sample1"] {
        let rate = report[w]["tokens_per_s"].as_f64().unwrap();
        let secs = report[w]["seconds"].as_f64().unwrap();
        let tokens = report[w]["tokens"].as_f64().unwrap();
        assert!((rate - tokens / secs).abs() < 1e-6 * rate, "{report}");
    }
    assert!(report.get("dpo").is_none() && report.get("sample16").is_none());
    assert!(String::from_utf8_lossy(&out.stderr).contains("score      8 × 64 tokens"));

    let out = std::process::Command::new(bin)
        .args(["bench-model", "--random", "small", "--only", "scoring"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown workload \"scoring\""));
}

/// Rank-2 adapters on every linear layer, with B moved off zero so that they change the outputs.
fn adapted(m: &LanguageModel, seed: u64) -> LanguageModel {
    let settings = LoraSettings {
        rank: 2,
        alpha: 3.0,
        ..LoraSettings::default()
    };
    let a = m.with_lora(&settings, seed).unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    // vars() lists A then B of each adapter.
    for b in a.vars().iter().skip(1).step_by(2) {
        let data: Vec<f32> = (0..b.elem_count())
            .map(|_| rng.random_range(-0.3..0.3))
            .collect();
        b.set(&Tensor::from_vec(data, b.shape(), &Device::Cpu).unwrap())
            .unwrap();
    }
    a
}

fn logits(m: &LanguageModel) -> Tensor {
    let ids = ids_tensor(&m.tokenizer().encode("LoRA on a tiny model").unwrap());
    m.forward(&ids).unwrap()
}

#[test]
fn a_fresh_adapter_changes_nothing_and_only_adapters_train() {
    let m = tiny(false, 41);
    let settings = LoraSettings {
        rank: 4,
        alpha: 8.0,
        dropout: 0.0,
        targets: vec![LoraTarget::V, LoraTarget::Q, LoraTarget::Down],
    };
    let a = m.with_lora(&settings, 1).unwrap();
    assert_eq!(max_abs_diff(&logits(&m), &logits(&a)), 0.0);
    // A and B of three targets in every block; the base weights are not among them.
    let layers = m.config().num_hidden_layers;
    assert_eq!(a.vars().len(), 2 * 3 * layers);
    let base: Vec<_> = m.vars().iter().map(|v| v.as_tensor().id()).collect();
    assert!(a.vars().iter().all(|v| !base.contains(&v.as_tensor().id())));
    // Stored in block order, as PEFT lists them.
    assert_eq!(
        a.lora().unwrap().targets,
        vec![LoraTarget::Q, LoraTarget::V, LoraTarget::Down]
    );
    assert!(m.lora().is_none() && a.without_lora().lora().is_none());
    // A deep copy's adapters are its own; the base stays shared.
    let copy = a.deep_clone().unwrap();
    copy.vars()[1]
        .set(&copy.vars()[1].ones_like().unwrap())
        .unwrap();
    assert_eq!(max_abs_diff(&logits(&m), &logits(&a)), 0.0);
    assert!(max_abs_diff(&logits(&m), &logits(&copy)) > 1e-4);
    for bad in [
        LoraSettings {
            rank: 0,
            ..LoraSettings::default()
        },
        LoraSettings {
            targets: vec![],
            ..LoraSettings::default()
        },
        LoraSettings {
            dropout: 1.0,
            ..LoraSettings::default()
        },
    ] {
        assert!(m.with_lora(&bad, 0).is_err(), "{bad:?}");
    }
}

#[test]
fn adapters_save_in_peft_format_load_back_and_merge_to_the_same_outputs() {
    let dir = tempfile::tempdir().unwrap();
    // The base is loaded from disk so that the adapter can name it.
    let base_dir = dir.path().join("base");
    tiny(true, 43).save(&base_dir).unwrap();
    let base = LanguageModel::load(&base_dir, &Device::Cpu).unwrap();
    let a = adapted(&base, 5);
    let want = logits(&a);
    assert!(
        max_abs_diff(&want, &logits(&base)) > 1e-3,
        "the adapters act"
    );

    let out = dir.path().join("adapter");
    a.save(&out).unwrap();
    let mut files: Vec<_> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    files.sort();
    assert_eq!(files, ["adapter_config.json", "adapter_model.safetensors"]);
    let cfg: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("adapter_config.json")).unwrap()).unwrap();
    assert_eq!(cfg["peft_type"], "LORA");
    assert_eq!(cfg["task_type"], "CAUSAL_LM");
    assert_eq!(cfg["r"], 2);
    assert_eq!(cfg["lora_alpha"], 3.0);
    assert_eq!(
        cfg["target_modules"],
        serde_json::json!([
            "q_proj",
            "k_proj",
            "v_proj",
            "o_proj",
            "gate_proj",
            "up_proj",
            "down_proj"
        ])
    );
    assert_eq!(
        cfg["base_model_name_or_path"],
        std::fs::canonicalize(&base_dir)
            .unwrap()
            .display()
            .to_string()
    );
    let tensors =
        candle_core::safetensors::load(out.join("adapter_model.safetensors"), &Device::Cpu)
            .unwrap();
    let c = base.config();
    assert_eq!(tensors.len(), 2 * 7 * c.num_hidden_layers);
    let kv = c.num_key_value_heads * c.head_dim();
    for (name, shape) in [
        (
            "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight",
            vec![2, c.hidden_size],
        ),
        (
            "base_model.model.model.layers.0.self_attn.k_proj.lora_B.weight",
            vec![kv, 2],
        ),
        (
            "base_model.model.model.layers.1.mlp.down_proj.lora_A.weight",
            vec![2, c.intermediate_size],
        ),
        (
            "base_model.model.model.layers.1.mlp.gate_proj.lora_B.weight",
            vec![c.intermediate_size, 2],
        ),
    ] {
        assert_eq!(tensors[name].dims(), shape.as_slice(), "{name}");
    }

    // Onto the base in memory, or by path alone (the base read from the adapter's config): the same model.
    assert!(LanguageModel::is_adapter(&out) && !LanguageModel::is_adapter(&base_dir));
    let onto = base.with_adapter(&out).unwrap();
    assert!(max_abs_diff(&want, &logits(&onto)) < 1e-6);
    let loaded = LanguageModel::load(&out, &Device::Cpu).unwrap();
    assert_eq!(loaded.lora(), a.lora());
    assert!(max_abs_diff(&want, &logits(&loaded)) < 1e-6);
    // Merged into the weights: a plain model with the same outputs, on every kernel path.
    let merged = a.merged().unwrap();
    assert!(merged.lora().is_none());
    assert!(max_abs_diff(&want, &logits(&merged)) < 1e-4);
    let ids = ids_tensor(&a.tokenizer().encode("fused").unwrap());
    let valid = vec![vec![true; ids.dim(1).unwrap()]];
    assert!(
        max_abs_diff(
            &a.forward_inference(&ids, &valid).unwrap(),
            &merged.forward_inference(&ids, &valid).unwrap()
        ) < 1e-4
    );
    let merged_dir = dir.path().join("merged");
    merged.save(&merged_dir).unwrap();
    let back = LanguageModel::load(&merged_dir, &Device::Cpu).unwrap();
    assert!(max_abs_diff(&want, &logits(&back)) < 1e-4);
    // The base under the adapters never moved.
    assert!(max_abs_diff(&logits(&base), &logits(&a.without_lora())) == 0.0);
}

#[test]
fn a_bad_adapter_directory_is_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let base = tiny(false, 47);
    let good = dir.path().join("good");
    adapted(&base, 3).save(&good).unwrap();
    let copy = |name: &str| {
        let d = dir.path().join(name);
        std::fs::create_dir_all(&d).unwrap();
        for f in ["adapter_config.json", "adapter_model.safetensors"] {
            std::fs::copy(good.join(f), d.join(f)).unwrap();
        }
        d
    };
    let edit_config = |d: &Path, key: &str, value: serde_json::Value| {
        let p = d.join("adapter_config.json");
        let mut cfg: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
        cfg[key] = value;
        std::fs::write(&p, serde_json::to_vec(&cfg).unwrap()).unwrap();
    };
    let edit_tensors = |d: &Path, f: &dyn Fn(&mut HashMap<String, Tensor>)| {
        let p = d.join("adapter_model.safetensors");
        let mut t = candle_core::safetensors::load(&p, &Device::Cpu).unwrap();
        f(&mut t);
        candle_core::safetensors::save(&t, &p).unwrap();
    };
    let err = |d: &Path| base.with_adapter(d).unwrap_err().to_string();

    let dora = copy("dora");
    edit_config(&dora, "use_dora", serde_json::json!(true));
    assert!(err(&dora).contains("use_dora"), "{}", err(&dora));
    let other = copy("other");
    edit_config(
        &other,
        "target_modules",
        serde_json::json!(["q_proj", "lm_head"]),
    );
    assert!(err(&other).contains("lm_head"), "{}", err(&other));
    let missing = copy("missing");
    edit_tensors(&missing, &|t| {
        t.remove("base_model.model.model.layers.1.mlp.up_proj.lora_B.weight");
    });
    assert!(
        err(&missing).contains("layers.1.mlp.up_proj.lora_B.weight is missing"),
        "{}",
        err(&missing)
    );
    let shape = copy("shape");
    edit_tensors(&shape, &|t| {
        t.insert(
            "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight".into(),
            Tensor::zeros((3, 5), DType::F32, &Device::Cpu).unwrap(),
        );
    });
    assert!(err(&shape).contains("has shape [3, 5]"), "{}", err(&shape));
    let extra = copy("extra");
    edit_tensors(&extra, &|t| {
        t.insert(
            "base_model.model.lm_head.lora_A.weight".into(),
            Tensor::zeros((2, 2), DType::F32, &Device::Cpu).unwrap(),
        );
    });
    assert!(
        err(&extra).contains("lm_head.lora_A.weight is not one"),
        "{}",
        err(&extra)
    );
    // A model of another shape.
    assert!(
        tiny(false, 1)
            .to_dtype(DType::F32)
            .unwrap()
            .with_adapter(&good)
            .is_ok()
    );
    let wider = quantizable(false, 1);
    assert!(
        wider
            .with_adapter(&good)
            .unwrap_err()
            .to_string()
            .contains("has shape")
    );
    // No base recorded (a random model has no file): loading by path alone says so.
    let e = LanguageModel::load(&good, &Device::Cpu)
        .unwrap_err()
        .to_string();
    assert!(e.contains("base_model_name_or_path"), "{e}");
}

#[test]
fn sampling_through_the_quantized_copy_includes_the_adapters() {
    let m = quantizable(false, 53);
    let q = m.with_sampling_weights(SamplingWeights::Q8_0).unwrap();
    let a = adapted(&q, 7);
    // Adapters strong enough to move log-probs well beyond the quantization's error.
    for b in a.vars().iter().skip(1).step_by(2) {
        b.set(&(b.as_tensor() * 4.0).unwrap()).unwrap();
    }
    // The base's copy is kept, not made again, and sampling reads it plus the adapters.
    assert_eq!(a.sampling_weights(), SamplingWeights::Q8_0);
    let f32_adapted = a.with_sampling_weights(SamplingWeights::F32).unwrap();
    let tk = m.tokenizer();
    let prompt = tk.encode("Two words").unwrap();
    let p = params(1.0, 1.0, 12, 3);
    for s in &a.sample(std::slice::from_ref(&prompt), 3, &p).unwrap()[0] {
        let exact = f32_adapted
            .score(&[(prompt.clone(), s.token_ids.clone())])
            .unwrap()[0];
        let base = m.score(&[(prompt.clone(), s.token_ids.clone())]).unwrap()[0];
        let n = s.token_ids.len() as f64;
        assert!(
            (exact.sum - s.logprob).abs() / n < 0.02,
            "{} vs {}",
            exact.sum,
            s.logprob
        );
        // The adapters act in sampling: its log-prob follows the adapted model, not the base.
        assert!(
            (exact.sum - s.logprob).abs() < 0.25 * (base.sum - s.logprob).abs(),
            "base {} adapted {} sampled {}",
            base.sum,
            exact.sum,
            s.logprob
        );
    }
}

#[test]
fn a_transformers_5_config_with_rope_parameters_keeps_its_rope_theta() {
    // transformers 5 writes {"rope_parameters": {"rope_theta": …, "rope_type": "default"}} and no top-level
    // rope_theta; read as 10,000 (the old default), SmolLM2's 100,000 gave other logits (found by
    // scripts/check-peft.sh).
    let (_d, p, m) = saved(false);
    assert_eq!(m.config().rope_theta, 10_000.0);
    let cfg = p.join("config.json");
    let mut v: serde_json::Value = serde_json::from_slice(&std::fs::read(&cfg).unwrap()).unwrap();
    let o = v.as_object_mut().unwrap();
    o.remove("rope_theta");
    o.insert(
        "rope_parameters".into(),
        serde_json::json!({"rope_theta": 100_000.0, "rope_type": "default"}),
    );
    std::fs::write(&cfg, serde_json::to_vec(&v).unwrap()).unwrap();
    let back = LanguageModel::load(&p, &Device::Cpu).unwrap();
    assert_eq!(back.config().rope_theta, 100_000.0);
    assert!(
        max_abs_diff(&logits(&m), &logits(&back)) > 1e-4,
        "rope reads it"
    );
    v["rope_parameters"]["rope_type"] = "llama3".into();
    std::fs::write(&cfg, serde_json::to_vec(&v).unwrap()).unwrap();
    assert!(
        load_err(&p)
            .to_string()
            .contains("\"llama3\" is not supported")
    );
}

/// A bf16 copy computes what the f32 model does, to bf16's precision: log-probabilities come out in f32
/// (the sums would lose whole nats in bf16), sampling works, and a DPO step on the bf16 weights trains them
/// (through the f32 master copy) while the loss falls as it does in f32.
#[test]
fn bf16_weights_score_sample_and_train_like_f32() {
    let f32_model = tiny(false, 5);
    let half = f32_model.to_device(&Device::Cpu, DType::BF16).unwrap();
    assert_eq!(half.dtype(), DType::BF16);
    let items: Vec<(Vec<u32>, Vec<u32>)> = (0..4u32)
        .map(|i| {
            (
                (1..9).map(|j| (i * 7 + j) % 60 + 1).collect(),
                (1..9).map(|j| (i + j * 3) % 60 + 1).collect(),
            )
        })
        .collect();
    let want = f32_model.score(&items).unwrap();
    let got = half.score(&items).unwrap();
    for (w, g) in want.iter().zip(&got) {
        assert!(
            (w.mean - g.mean).abs() < 1e-2,
            "per-token log p {} (f32) against {} (bf16)",
            w.mean,
            g.mean
        );
    }
    let lp = half.sequence_logprobs(&items, Padding::Right).unwrap();
    assert_eq!(
        lp.sum.dtype(),
        DType::F32,
        "log-probabilities are reduced in f32"
    );
    let samples = half
        .sample(&[items[0].0.clone()], 2, &params(1.0, 1.0, 6, 3))
        .unwrap();
    assert_eq!(samples[0].len(), 2);

    // Raise the first item's log-probability by gradient ascent in both precisions.
    let steps = |m: &LanguageModel| -> Vec<f64> {
        let mut opt = prefloop::learn::optim::AdamW::new(
            m.vars(),
            prefloop::learn::optim::AdamWParams {
                lr: 1e-2,
                ..Default::default()
            },
        )
        .unwrap();
        (0..5)
            .map(|_| {
                let lp = m.sequence_logprobs(&items[..1], Padding::Right).unwrap();
                let loss = lp.sum.neg().unwrap().sum_all().unwrap();
                let v = loss.to_scalar::<f32>().unwrap() as f64;
                opt.backward_step(&loss, None).unwrap();
                v
            })
            .collect()
    };
    let full_losses = steps(&f32_model.deep_clone().unwrap());
    let half_losses = steps(&half);
    assert!(
        half_losses[4] < half_losses[0] - 1.0,
        "bf16 trained: {half_losses:?}"
    );
    for (f, h) in full_losses.iter().zip(&half_losses) {
        assert!(
            (f - h).abs() < 0.05 * f.abs().max(1.0),
            "f32 {full_losses:?} against bf16 {half_losses:?}"
        );
    }
    assert_eq!(
        half.dtype(),
        DType::BF16,
        "training keeps the weights in bf16"
    );
}

/// `check-device` compares a device with the CPU; on the CPU itself in bf16 it exercises the whole bf16 path
/// (scoring, the DPO step, the AdamW update) and reports it inside bf16's tolerance.
#[test]
fn check_device_reports_bf16_parity_as_json() {
    let bin = env!("CARGO_BIN_EXE_prefloop");
    let out = std::process::Command::new(bin)
        .args([
            "check-device",
            "--device",
            "cpu",
            "--dtype",
            "bf16",
            "--json",
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_str(stdout.trim()).expect(&stdout);
    assert_eq!(report["dtype"], "bf16");
    assert_eq!(report["tolerance"], 1e-2);
    assert_eq!(report["pass"], true);
    let diff = report["logprob_max_abs_diff"].as_f64().unwrap();
    assert!(
        diff > 0.0 && diff < 1e-2,
        "bf16 differs from f32, within tolerance: {report}"
    );
    let loss = report["loss"]["cpu"].as_f64().unwrap();
    assert!(
        loss.is_finite() && (loss - std::f64::consts::LN_2).abs() > 1e-3,
        "{report}"
    );
    assert!(
        report["grad_norm"]["device"].as_f64().unwrap() > 0.0,
        "{report}"
    );
}

/// The product commands keep the CPU in f32: `--dtype bf16` there is refused before anything loads or is
/// written, and an unknown dtype is refused by name.
#[test]
fn bf16_is_refused_on_the_cpu_outside_measurements() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("model");
    tiny(false, 1).save(&model).unwrap();
    let out_dir = dir.path().join("trained");
    let m = model.to_str().unwrap();
    let o = out_dir.to_str().unwrap();
    for (args, refusal) in [
        (
            vec![
                "generate", "--prompt", "hi", "--dtype", "bf16", "--model", m,
            ],
            "--dtype bf16 needs a GPU",
        ),
        (
            vec![
                "dpo",
                "--data",
                "absent.jsonl",
                "--out",
                o,
                "--dtype",
                "bf16",
                "--model",
                m,
            ],
            "--dtype bf16 needs a GPU",
        ),
        (
            vec!["generate", "--prompt", "hi", "--dtype", "fp8", "--model", m],
            "unknown dtype \"fp8\"",
        ),
    ] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_prefloop"))
            .args(&args)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?}");
        assert!(stderr.contains(refusal), "{args:?}: {stderr}");
    }
    assert!(!out_dir.exists(), "a refused dpo writes nothing");
}
