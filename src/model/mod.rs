//! The language model, in candle only: loading, the differentiable forward, log-probs, sampling, saving.
//!
//! [`LanguageModel`] is one llama-family causal LM (llama, SmolLM2, TinyLlama, Mistral; Qwen2 with q/k/v biases)
//! with its [`TextTokenizer`]. Its weights are candle [`Var`]s: the trainer differentiates through
//! [`LanguageModel::forward`] or [`LanguageModel::sequence_logprobs`] and updates [`LanguageModel::vars`] in
//! place; scoring and sampling read the same `Var`s through candle's fused kernels, so they always see the
//! latest update.
//!
//! The API others build on:
//! - `LanguageModel::load(path, &Device)`: a Hugging Face directory or a `.gguf` file, weights in f32;
//!   `load_as(path, &Device, DType)` in bf16 for a GPU ([`Precision`], [`compute_dtype`]: reductions stay f32).
//! - `LanguageModel::random(config, tokenizer, &Device, seed)`, [`TextTokenizer::byte_level_for_tests`],
//!   [`ModelConfig::tiny`]: tiny models with no download.
//! - `forward(ids)` → logits (b, t, vocab), differentiable, no padding; `forward_padded(ids, valid)` with a
//!   per-token validity mask (left or right padding both work: rope positions count real tokens only).
//! - `sequence_logprobs(items, padding)` → [`SeqLogProbs`] {sum, tokens} tensors (b,), differentiable;
//!   `score(items)` → `Vec<SeqLogProb>` {sum, mean, tokens}, no grad. Items are (prompt ids, completion ids);
//!   only completion tokens count.
//! - `sample(prompts, k, &SamplingParams)` → per prompt, k [`Sample`]s (text, ids, log-prob sum); batched
//!   with a KV cache; `sample_rows` for explicit per-row seeds.
//! - `with_sampling_weights(SamplingWeights::Q8_0)`: the same model, sampling through an inference-only
//!   quantized copy of its linear weights (candle's quantized matmul); scoring and training stay f32.
//! - `vars()`, `named_vars()`, `snapshot()` → [`Weights`], `restore(&Weights)`, `deep_clone()`, `to_dtype()`,
//!   `to_device(&Device, DType)`.
//! - `save(dir)`: HF directory written to a temporary name and renamed into place.
//! - [`init_cpu_threads`]: call once at start-up (the CLI commands do) for candle's CPU speed on shared cores.

mod config;
mod embed;
mod error;
mod llama;
mod load;
mod logprob;
mod lora;
mod ops;
mod q8;
mod sample;
mod tokenizer;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::quantized::GgmlDType;
use candle_core::{DType, Device, Tensor, Var};
use rand::{Rng, SeedableRng};

use crate::domain::{LoraSettings, SamplingWeights};

pub use config::ModelConfig;
pub use error::{ModelError, Result};
pub use load::permute_qk_for_gguf;
pub use logprob::{Padding, SeqLogProb, SeqLogProbs};
pub use sample::{Sample, SampleRow, SamplingParams, row_seed};
pub use tokenizer::{ChatMessage, ChatTemplate, TextTokenizer};

use llama::{Block, Kernels, Llama};

/// What a model's weights compute in: `--dtype f32|bf16`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Precision {
    #[default]
    F32,
    /// bf16 weights, activations and gradients; log-probabilities, norms, softmaxes and the optimizer's
    /// state (with an f32 master copy of each trained weight) stay f32.
    Bf16,
}

impl Precision {
    pub fn dtype(self) -> DType {
        match self {
            Precision::F32 => DType::F32,
            Precision::Bf16 => DType::BF16,
        }
    }

    /// bf16 is for GPUs: on the CPU candle's bf16 matrix products are slower than its f32 ones, so serving,
    /// training and sampling stay f32 there. (The benchmark and parity commands may still run bf16 on the
    /// CPU, to measure it.)
    pub fn check_device(self, device: &Device) -> Result<()> {
        if self == Precision::Bf16 && device.is_cpu() {
            return Err(ModelError::Input(
                "--dtype bf16 needs a GPU (--device cuda); on the CPU prefloop computes in f32"
                    .into(),
            ));
        }
        Ok(())
    }
}

impl std::str::FromStr for Precision {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "f32" => Ok(Precision::F32),
            "bf16" => Ok(Precision::Bf16),
            other => Err(format!("unknown dtype {other:?}: expected f32 or bf16")),
        }
    }
}

impl std::fmt::Display for Precision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Precision::F32 => "f32",
            Precision::Bf16 => "bf16",
        })
    }
}

/// Parses `cpu`, `cuda` or `cuda:N`. CUDA needs the crate built with the `cuda` feature.
pub fn parse_device(s: &str) -> Result<Device> {
    match s {
        "cpu" => Ok(Device::Cpu),
        _ if s == "cuda" || s.starts_with("cuda:") => {
            let n = match s.strip_prefix("cuda:") {
                Some(n) => n
                    .parse::<usize>()
                    .map_err(|_| ModelError::Input(format!("bad device {s:?}: expected cuda:N")))?,
                None => 0,
            };
            if !candle_core::utils::cuda_is_available() {
                return Err(ModelError::Input(format!(
                    "device {s:?}: this build has no CUDA support (rebuild with --features cuda)"
                )));
            }
            Ok(Device::new_cuda(n)?)
        }
        _ => Err(ModelError::Input(format!(
            "unknown device {s:?}: use cpu, cuda or cuda:N"
        ))),
    }
}

/// Turns off candle's element-wise CPU worker pool (`CANDLE_NUM_THREADS=1`) unless the user set it; matrix
/// multiplies still use all `RAYON_NUM_THREADS` threads. candle 0.11's pool spin-waits for its workers, and on a
/// machine whose cores are shared that spinning took most of the time: a training step of a 7M model ran 5×
/// faster and of SmolLM2-135M 2× faster with it off (docs/BENCHMARKS.md). Call at start-up, before any other
/// thread exists and before the first tensor operation.
pub fn init_cpu_threads() {
    if std::env::var_os("CANDLE_NUM_THREADS").is_none() {
        // SAFETY: documented precondition: called while the process is single-threaded, so no other thread
        // reads the environment concurrently.
        unsafe { std::env::set_var("CANDLE_NUM_THREADS", "1") };
    }
}

/// The sampling weights that sample fastest on this CPU, by the packed kernels candle's quantized matmul
/// has for it (docs/BENCHMARKS.md, "Sampling on a CPU without VNNI"): Q8_0 where it has 8-bit dot products (AVX-512
/// VNNI or AVX-VNNI), Q4_K on plain AVX2 (candle has an AVX2 kernel for Q4_K but none for Q8_0, whose
/// generic loop is four times slower than f32 there), else f32. Other architectures keep Q8_0.
pub fn cpu_sampling_weights() -> SamplingWeights {
    #[cfg(target_arch = "x86_64")]
    {
        let int8_dot = (is_x86_feature_detected!("avx512f")
            && is_x86_feature_detected!("avx512vnni"))
            || (is_x86_feature_detected!("avxvnni") && is_x86_feature_detected!("avx2"));
        let avx2 = is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma");
        x86_sampling_weights(int8_dot, avx2)
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        SamplingWeights::Q8_0
    }
}

/// [`cpu_sampling_weights`]'s choice on x86-64, from what the CPU has.
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
fn x86_sampling_weights(int8_dot: bool, avx2: bool) -> SamplingWeights {
    if int8_dot {
        SamplingWeights::Q8_0
    } else if avx2 {
        SamplingWeights::Q4K
    } else {
        SamplingWeights::F32
    }
}

/// The block format of a quantized sampling copy; None for the f32 weights themselves.
fn ggml_dtype(weights: SamplingWeights) -> Option<GgmlDType> {
    match weights {
        SamplingWeights::F32 => None,
        SamplingWeights::Q8_0 => Some(GgmlDType::Q8_0),
        SamplingWeights::Q4K => Some(GgmlDType::Q4K),
    }
}

/// The dtype that reductions over a model of `weights` dtype run in: f32 for half-precision weights (their 8
/// or 11 bits of mantissa lose sums of log-probabilities, softmax denominators and mean squares), else the
/// weights' own. Log-probabilities come out in this dtype.
pub fn compute_dtype(weights: DType) -> DType {
    match weights {
        DType::BF16 | DType::F16 => DType::F32,
        d => d,
    }
}

/// A copy of every weight, detached from the model (what `snapshot` returns and `restore` puts back).
#[derive(Debug, Clone)]
pub struct Weights {
    pub tensors: Vec<(String, Tensor)>,
}

/// A llama-family causal language model with its tokenizer.
///
/// `Clone` is shallow: clones share the same weight `Var`s, so an update through one is seen by all. Use
/// [`LanguageModel::deep_clone`] for an independent copy (a frozen reference model).
#[derive(Debug, Clone)]
pub struct LanguageModel {
    config: ModelConfig,
    tokenizer: TextTokenizer,
    device: Device,
    dtype: DType,
    /// Every weight of the network, HF names, in `ModelConfig::expected_tensors` order (the base weights,
    /// frozen when the model has LoRA adapters).
    params: Vec<(String, Var)>,
    net: Llama,
    /// The file or directory the weights were loaded from, if any: what an adapter saved from this model
    /// names as its base.
    source: Option<PathBuf>,
}

impl LanguageModel {
    /// Loads a Hugging Face directory (config.json, model.safetensors or shards + index, tokenizer.json), a
    /// `.gguf` file, or a LoRA adapter directory (PEFT's format), whose base is loaded from the path its
    /// `adapter_config.json` names. Weights are converted (bf16/f16) or dequantised (GGUF) to f32.
    pub fn load(path: impl AsRef<Path>, device: &Device) -> Result<Self> {
        Self::load_as(path, device, DType::F32)
    }

    /// [`LanguageModel::load`] with the weights (and adapters) in `dtype`: f32, or bf16/f16 on a GPU, where
    /// the forward, backward and sampling then compute in half precision. Log-probabilities, softmaxes,
    /// norms and the optimizer state stay f32 whatever the weights are (see [`compute_dtype`]).
    pub fn load_as(path: impl AsRef<Path>, device: &Device, dtype: DType) -> Result<Self> {
        let path = path.as_ref();
        if !matches!(dtype, DType::F32 | DType::BF16 | DType::F16 | DType::F64) {
            return Err(ModelError::Input(format!(
                "weights of dtype {dtype:?}: expected f32, bf16, f16 or f64"
            )));
        }
        if lora::is_adapter_dir(path) {
            let header = lora::read_config(path)?;
            let base = header.base.ok_or_else(|| ModelError::Corrupt {
                path: path.join(lora::CONFIG_FILE),
                format: "adapter_config.json",
                reason: "base_model_name_or_path is empty: load the base model and add the adapter to it"
                    .into(),
            })?;
            return Self::load_as(&base, device, dtype)?.with_adapter(path);
        }
        let loaded = if path.is_dir() {
            load::load_hf_dir(path, device, dtype)?
        } else if path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("gguf"))
        {
            load::load_gguf(path, device, dtype)?
        } else if !path.exists() {
            return Err(ModelError::io(
                path,
                std::io::Error::new(std::io::ErrorKind::NotFound, "no such file or directory"),
            ));
        } else {
            return Err(ModelError::Corrupt {
                path: path.to_path_buf(),
                format: "model",
                reason: "expected a Hugging Face model directory or a .gguf file".into(),
            });
        };
        let mut model =
            Self::from_tensors(loaded.config, loaded.tokenizer, loaded.tensors, device)?;
        model.source = Some(std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf()));
        Ok(model)
    }

    /// Whether `path` is a LoRA adapter directory (it holds `adapter_config.json`).
    pub fn is_adapter(path: impl AsRef<Path>) -> bool {
        lora::is_adapter_dir(path.as_ref())
    }

    /// Builds a model from tensors in HF names (all of `config.expected_tensors()`, already checked).
    pub fn from_tensors(
        config: ModelConfig,
        tokenizer: TextTokenizer,
        tensors: Vec<(String, Tensor)>,
        device: &Device,
    ) -> Result<Self> {
        let dtype = tensors.first().map_or(DType::F32, |(_, t)| t.dtype());
        let params: Vec<(String, Var)> = tensors
            .into_iter()
            .map(|(n, t)| Ok((n, Var::from_tensor(&t.to_device(device)?.contiguous()?)?)))
            .collect::<Result<_>>()?;
        let by_name: HashMap<&str, &Var> = params.iter().map(|(n, v)| (n.as_str(), v)).collect();
        let get = |n: &str| -> Result<Var> {
            by_name
                .get(n)
                .map(|v| (*v).clone())
                .ok_or_else(|| ModelError::Input(format!("tensor {n} not given")))
        };
        let opt = |n: String| by_name.get(n.as_str()).map(|v| (*v).clone());
        let mut blocks = Vec::with_capacity(config.num_hidden_layers);
        for l in 0..config.num_hidden_layers {
            let p = format!("model.layers.{l}");
            blocks.push(Block {
                ln1: get(&format!("{p}.input_layernorm.weight"))?,
                q: get(&format!("{p}.self_attn.q_proj.weight"))?,
                k: get(&format!("{p}.self_attn.k_proj.weight"))?,
                v: get(&format!("{p}.self_attn.v_proj.weight"))?,
                q_bias: opt(format!("{p}.self_attn.q_proj.bias")),
                k_bias: opt(format!("{p}.self_attn.k_proj.bias")),
                v_bias: opt(format!("{p}.self_attn.v_proj.bias")),
                o: get(&format!("{p}.self_attn.o_proj.weight"))?,
                ln2: get(&format!("{p}.post_attention_layernorm.weight"))?,
                gate: get(&format!("{p}.mlp.gate_proj.weight"))?,
                up: get(&format!("{p}.mlp.up_proj.weight"))?,
                down: get(&format!("{p}.mlp.down_proj.weight"))?,
            });
        }
        let (cos, sin) = Llama::rope_tables(&config, dtype, device)?;
        let net = Llama {
            embed: get("model.embed_tokens.weight")?,
            blocks,
            norm: get("model.norm.weight")?,
            lm_head: if config.tie_word_embeddings {
                None
            } else {
                Some(get("lm_head.weight")?)
            },
            cos,
            sin,
            quant: None,
            adapters: None,
        };
        Ok(LanguageModel {
            config,
            tokenizer,
            device: device.clone(),
            dtype,
            params,
            net,
            source: None,
        })
    }

    /// A randomly initialised model (f32), repeatable for a seed on any device: linear weights uniform with
    /// variance 1/fan_in, embeddings uniform in ±1, norm weights 1 ± 0.1 (not exactly 1, so tests see them act).
    pub fn random(
        config: ModelConfig,
        tokenizer: TextTokenizer,
        device: &Device,
        seed: u64,
    ) -> Result<Self> {
        config.validate(Path::new("<random config>"))?;
        if tokenizer.vocab_size() > config.vocab_size {
            return Err(ModelError::Input(format!(
                "tokenizer has {} ids, the config only {}",
                tokenizer.vocab_size(),
                config.vocab_size
            )));
        }
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let mut tensors = Vec::new();
        for (name, shape) in config.expected_tensors() {
            let n: usize = shape.iter().product();
            let data: Vec<f32> = if shape.len() == 1 && name.ends_with("norm.weight") {
                (0..n).map(|_| 1.0 + rng.random_range(-0.1..0.1)).collect()
            } else if name.ends_with("bias") {
                (0..n).map(|_| rng.random_range(-0.1..0.1)).collect()
            } else if name == "model.embed_tokens.weight" {
                (0..n).map(|_| rng.random_range(-1.0..1.0)).collect()
            } else {
                let a = (3.0 / shape[1] as f32).sqrt();
                (0..n).map(|_| rng.random_range(-a..a)).collect()
            };
            tensors.push((name, Tensor::from_vec(data, shape, device)?));
        }
        Self::from_tensors(config, tokenizer, tensors, device)
    }

    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    pub fn tokenizer(&self) -> &TextTokenizer {
        &self.tokenizer
    }

    /// Replaces the tokenizer (e.g. to change the end-of-sequence id); the vocabulary must fit the model.
    pub fn set_tokenizer(&mut self, tokenizer: TextTokenizer) -> Result<()> {
        if tokenizer.vocab_size() > self.config.vocab_size {
            return Err(ModelError::Input(
                "tokenizer vocabulary larger than the model's".into(),
            ));
        }
        self.tokenizer = tokenizer;
        Ok(())
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// This model (sharing its weights) with an inference-only quantized copy of every linear weight and of
    /// the output head, which sampling then reads; scoring, the forward passes and training keep reading the
    /// f32 weights. `F32` gives the model back without a copy. The copy is taken now: a model trained in
    /// place afterwards must be quantized again (the engine quantizes each version as it loads or installs
    /// it, and never trains a served model in place). Q8_0 on a CPU with AVX-512 VNNI runs our own kernel
    /// (`q8.rs`) at the layers' own widths; otherwise input widths are padded to candle's kernels' blocks.
    pub fn with_sampling_weights(&self, weights: SamplingWeights) -> Result<Self> {
        if self.net.adapters.is_some() && self.sampling_weights() == weights {
            // The base weights under adapters never train: their copy stays true.
            return Ok(self.clone());
        }
        let Some(dtype) = ggml_dtype(weights) else {
            let mut m = self.clone();
            m.net.quant = None;
            return Ok(m);
        };
        if !self.device.is_cpu() {
            return Err(ModelError::Input(format!(
                "sampling weights {weights} are made on the CPU; use f32 on {:?}",
                self.device
            )));
        }
        let quant = llama::QuantLinears::of(&self.net, dtype).map_err(|e| {
            ModelError::Input(format!("cannot quantize this model to {weights}: {e}"))
        })?;
        let mut m = self.clone();
        m.net.quant = Some(std::sync::Arc::new(quant));
        Ok(m)
    }

    /// What sampling reads: f32, or the quantized copy's format.
    pub fn sampling_weights(&self) -> SamplingWeights {
        let dtype = self.net.quant.as_ref().map(|q| q.dtype());
        SamplingWeights::ALL
            .iter()
            .copied()
            .find(|&w| ggml_dtype(w) == dtype)
            .unwrap_or_default()
    }

    /// The kernels sampling runs: over the quantized copy when there is one.
    fn sampling_kernels(&self) -> Kernels {
        if self.net.quant.is_some() {
            Kernels::Quantized
        } else {
            Kernels::Fused
        }
    }

    /// Every trainable weight, in a fixed order (tied embeddings appear once): the adapters' A and B when the
    /// model has LoRA adapters (the base is frozen), else every weight.
    pub fn vars(&self) -> Vec<Var> {
        match &self.net.adapters {
            Some(a) => a.vars(),
            None => self.params.iter().map(|(_, v)| v.clone()).collect(),
        }
    }

    /// Every weight of the network with its HF name (the frozen base when there are adapters).
    pub fn named_vars(&self) -> &[(String, Var)] {
        &self.params
    }

    /// A detached copy of every weight.
    pub fn snapshot(&self) -> Result<Weights> {
        let tensors = self
            .params
            .iter()
            .map(|(n, v)| Ok((n.clone(), v.as_tensor().detach().copy()?)))
            .collect::<Result<_>>()?;
        Ok(Weights { tensors })
    }

    /// Writes `w` back into this model's weights (in place: every holder of `vars()` sees it).
    pub fn restore(&self, w: &Weights) -> Result<()> {
        if w.tensors.len() != self.params.len() {
            return Err(ModelError::Input(
                "snapshot is of another model shape".into(),
            ));
        }
        for ((n, v), (wn, t)) in self.params.iter().zip(&w.tensors) {
            if n != wn || v.dims() != t.dims() {
                return Err(ModelError::Input(format!(
                    "snapshot tensor {wn} does not match {n}"
                )));
            }
        }
        for ((_, v), (_, t)) in self.params.iter().zip(&w.tensors) {
            v.set(&t.to_dtype(self.dtype)?.to_device(&self.device)?)?;
        }
        Ok(())
    }

    /// An independent copy: new `Var`s, so training one never moves the other (e.g. policy and reference).
    /// With LoRA adapters only the adapters are copied: the frozen base (and its sampling copy) is shared.
    pub fn deep_clone(&self) -> Result<Self> {
        match &self.net.adapters {
            Some(a) => {
                let mut m = self.clone();
                m.net.adapters = Some(a.copy_to(self.dtype, &self.device)?);
                Ok(m)
            }
            None => self.to_dtype(self.dtype),
        }
    }

    /// An independent copy with weights (and adapters) in `dtype` (F64 for gradient checks).
    pub fn to_dtype(&self, dtype: DType) -> Result<Self> {
        self.to_device(&self.device, dtype)
    }

    /// An independent copy on `device` with weights (and adapters) in `dtype`: the same model on a GPU, say,
    /// for checking that it computes what the CPU does.
    pub fn to_device(&self, device: &Device, dtype: DType) -> Result<Self> {
        let tensors = self
            .params
            .iter()
            .map(|(n, v)| {
                let t = v.as_tensor().detach().to_dtype(dtype)?;
                Ok((n.clone(), t.to_device(device)?.copy()?))
            })
            .collect::<Result<_>>()?;
        let mut m = self.with_weights_on(tensors, device)?;
        m.net.adapters = self
            .net
            .adapters
            .as_ref()
            .map(|a| a.copy_to(dtype, device))
            .transpose()?;
        Ok(m)
    }

    /// A model of this one's shape, tokenizer, device and source with `tensors` as its weights (no adapters).
    fn with_weights(&self, tensors: Vec<(String, Tensor)>) -> Result<Self> {
        self.with_weights_on(tensors, &self.device)
    }

    /// [`Self::with_weights`] on `device`.
    fn with_weights_on(&self, tensors: Vec<(String, Tensor)>, device: &Device) -> Result<Self> {
        let mut m =
            Self::from_tensors(self.config.clone(), self.tokenizer.clone(), tensors, device)?;
        m.source.clone_from(&self.source);
        Ok(m)
    }

    /// This model's weights (shared, frozen) with fresh LoRA adapters, which then are all that trains. A fresh
    /// adapter changes no output (B is zero), so the result scores exactly as the base does. Any adapters the
    /// model had are replaced; its sampling copy, of the same base, is kept.
    pub fn with_lora(&self, settings: &LoraSettings, seed: u64) -> Result<Self> {
        let mut m = self.clone();
        m.net.adapters = Some(lora::Adapters::fresh(
            &self.config,
            settings,
            self.dtype,
            &self.device,
            seed,
        )?);
        Ok(m)
    }

    /// This model (its weights shared) with the LoRA adapter saved in `dir` in place of any it had.
    pub fn with_adapter(&self, dir: impl AsRef<Path>) -> Result<Self> {
        let (adapters, _) =
            lora::Adapters::read(dir.as_ref(), &self.config, self.dtype, &self.device)?;
        let mut m = self.clone();
        m.net.adapters = Some(adapters);
        Ok(m)
    }

    /// The LoRA settings of this model's adapters; None when it has none (full weights).
    pub fn lora(&self) -> Option<&LoraSettings> {
        self.net.adapters.as_ref().map(|a| &a.settings)
    }

    /// The same weights with the adapters off (the base a LoRA policy's reference is).
    pub fn without_lora(&self) -> Self {
        let mut m = self.clone();
        m.net.adapters = None;
        m
    }

    /// An independent model whose weights have the adapters merged in (W + s·B·A): the same outputs without
    /// adapters, for a Hugging Face directory anyone can load. A model without adapters is copied as it is.
    pub fn merged(&self) -> Result<Self> {
        let Some(adapters) = &self.net.adapters else {
            return self.deep_clone();
        };
        let deltas = adapters.deltas()?;
        let tensors = self
            .params
            .iter()
            .map(|(n, v)| {
                let w = v.as_tensor().detach();
                let w = match deltas.get(n) {
                    Some(d) => (w + d.to_dtype(self.dtype)?)?,
                    None => w.copy()?,
                };
                Ok((n.clone(), w))
            })
            .collect::<Result<_>>()?;
        self.with_weights(tensors)
    }

    /// Logits (b, t, vocab) for `ids` (b, t) u32 with no padding. Differentiable in every weight.
    pub fn forward(&self, ids: &Tensor) -> Result<Tensor> {
        let (b, t) = ids.dims2()?;
        self.forward_padded(ids, &vec![vec![true; t]; b])
    }

    /// Logits (b, t, vocab); `valid[r][j]` false marks padding. Padding may sit left or right (or anywhere):
    /// real tokens never attend to it and rope positions count real tokens only, so a row's real logits equal
    /// the unpadded row's. Logits at padding positions are meaningless. Differentiable.
    pub fn forward_padded(&self, ids: &Tensor, valid: &[Vec<bool>]) -> Result<Tensor> {
        self.logits_with(ids, valid, Kernels::Differentiable)
    }

    /// The same logits through the fused no-grad kernels (what scoring and sampling use).
    pub fn forward_inference(&self, ids: &Tensor, valid: &[Vec<bool>]) -> Result<Tensor> {
        self.logits_with(ids, valid, Kernels::Fused)
    }

    fn logits_with(&self, ids: &Tensor, valid: &[Vec<bool>], k: Kernels) -> Result<Tensor> {
        let (b, t) = ids.dims2()?;
        self.check_valid(valid, b, t)?;
        let h = self.net.hidden(&self.config, ids, valid, None, k)?;
        let logits = self
            .net
            .logits_2d(&h.reshape((b * t, self.config.hidden_size))?, k)?;
        Ok(logits.reshape((b, t, self.config.vocab_size))?)
    }

    fn check_valid(&self, valid: &[Vec<bool>], b: usize, t: usize) -> Result<()> {
        if valid.len() != b || valid.iter().any(|r| r.len() != t) {
            return Err(ModelError::Input(format!("validity mask is not {b} × {t}")));
        }
        Ok(())
    }

    /// Saves as a Hugging Face directory (model.safetensors in this model's dtype, config.json,
    /// tokenizer.json, tokenizer_config.json); a model with LoRA adapters saves only them, as a PEFT adapter
    /// directory (adapter_config.json naming the base it was loaded from, adapter_model.safetensors; use
    /// [`LanguageModel::merged`] for a whole model). Everything is written under a temporary name beside
    /// `dir` and renamed into place; an existing `dir` is replaced only after the new one is complete.
    pub fn save(&self, dir: impl AsRef<Path>) -> Result<()> {
        let dir = dir.as_ref();
        let parent = match dir.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => std::path::PathBuf::from("."),
        };
        let name = dir
            .file_name()
            .ok_or_else(|| ModelError::Input(format!("cannot save to {}", dir.display())))?
            .to_string_lossy()
            .to_string();
        let stamp = format!(
            "{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos())
        );
        let tmp = parent.join(format!(".{name}.tmp-{stamp}"));
        std::fs::create_dir_all(&tmp).map_err(|e| ModelError::io(&tmp, e))?;
        let result = self.write_files(&tmp).and_then(|()| {
            if dir.exists() {
                let old = parent.join(format!(".{name}.old-{stamp}"));
                std::fs::rename(dir, &old).map_err(|e| ModelError::io(dir, e))?;
                std::fs::rename(&tmp, dir).map_err(|e| ModelError::io(dir, e))?;
                let _ = std::fs::remove_dir_all(&old);
            } else {
                std::fs::rename(&tmp, dir).map_err(|e| ModelError::io(dir, e))?;
            }
            Ok(())
        });
        if result.is_err() {
            let _ = std::fs::remove_dir_all(&tmp);
        }
        result
    }

    fn write_files(&self, dir: &Path) -> Result<()> {
        if let Some(adapters) = &self.net.adapters {
            return adapters.write(dir, self.source.as_deref());
        }
        let tensors: HashMap<String, Tensor> = self
            .params
            .iter()
            .map(|(n, v)| (n.clone(), v.as_detached_tensor()))
            .collect();
        let st = dir.join("model.safetensors");
        candle_core::safetensors::save(&tensors, &st).map_err(|e| ModelError::Corrupt {
            path: st.clone(),
            format: "safetensors",
            reason: format!("write failed: {e}"),
        })?;
        let cfg = dir.join("config.json");
        let text = serde_json::to_vec_pretty(&self.config.to_hf_json()).expect("json serialises");
        std::fs::write(&cfg, text).map_err(|e| ModelError::io(&cfg, e))?;
        self.tokenizer.save(dir)?;
        for f in [
            "model.safetensors",
            "config.json",
            "tokenizer.json",
            "tokenizer_config.json",
        ] {
            let p = dir.join(f);
            std::fs::File::open(&p)
                .and_then(|f| f.sync_all())
                .map_err(|e| ModelError::io(&p, e))?;
        }
        Ok(())
    }
}

/// max |a − b| over two f32 tensors of one shape, for the unit tests.
#[cfg(test)]
pub(crate) fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sampling_weights_follow_the_cpus_packed_kernels() {
        assert_eq!(x86_sampling_weights(true, true), SamplingWeights::Q8_0);
        assert_eq!(x86_sampling_weights(false, true), SamplingWeights::Q4K);
        assert_eq!(x86_sampling_weights(false, false), SamplingWeights::F32);
    }
}
