//! LoRA adapters on the frozen weights, in PEFT's file format.
//!
//! A targeted linear weight W (out, in) of every block computes y = x·Wᵀ + s · (drop(x)·Aᵀ)·Bᵀ with A (r, in),
//! B (out, r) and s = alpha / r; only A and B train. Initialisation as PEFT's: A uniform in ±1/√in (kaiming
//! uniform with a = √5), B zero, so a fresh adapter changes no output (its model IS the base, which is why a
//! fresh adapter can also stand in for the reference). Dropout (on the adapter's input) applies only on the
//! differentiable path, the one training takes.
//!
//! On disk (what `PeftModel.from_pretrained(base, dir)` reads): `adapter_config.json` and
//! `adapter_model.safetensors` with tensors named
//! `base_model.model.model.layers.{l}.{self_attn|mlp}.{q_proj|…}.lora_{A|B}.weight`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor, Var};
use rand::{Rng, SeedableRng};

use super::error::{ModelError, Result};
use crate::domain::{LoraSettings, LoraTarget};

pub(crate) const CONFIG_FILE: &str = "adapter_config.json";
pub(crate) const WEIGHTS_FILE: &str = "adapter_model.safetensors";

/// One adapted linear layer: A (r, in), B (out, r).
#[derive(Debug, Clone)]
pub(crate) struct Adapter {
    pub a: Var,
    pub b: Var,
}

/// Every block's adapters, by target (`LoraTarget::ALL` order; None where not targeted).
#[derive(Debug, Clone)]
pub(crate) struct Adapters {
    pub settings: LoraSettings,
    pub blocks: Vec<Vec<Option<Adapter>>>,
}

/// (in, out) of a target's weight in a model of this shape.
fn dims(cfg: &super::ModelConfig, t: LoraTarget) -> (usize, usize) {
    let (h, kv, i) = (
        cfg.hidden_size,
        cfg.num_key_value_heads * cfg.head_dim(),
        cfg.intermediate_size,
    );
    match t {
        LoraTarget::Q | LoraTarget::O => (h, h),
        LoraTarget::K | LoraTarget::V => (h, kv),
        LoraTarget::Gate | LoraTarget::Up => (h, i),
        LoraTarget::Down => (i, h),
    }
}

fn slot(t: LoraTarget) -> usize {
    LoraTarget::ALL
        .iter()
        .position(|&x| x == t)
        .expect("every target is in ALL")
}

/// The Hugging Face name of block `layer`'s `target` module, without `.weight`.
fn module_path(layer: usize, t: LoraTarget) -> String {
    let group = match t {
        LoraTarget::Q | LoraTarget::K | LoraTarget::V | LoraTarget::O => "self_attn",
        LoraTarget::Gate | LoraTarget::Up | LoraTarget::Down => "mlp",
    };
    format!("model.layers.{layer}.{group}.{}", t.module())
}

/// A tensor's name in PEFT's file for block `layer`'s `target`, `which` "A" or "B".
pub(crate) fn tensor_name(layer: usize, t: LoraTarget, which: &str) -> String {
    format!(
        "base_model.model.{}.lora_{which}.weight",
        module_path(layer, t)
    )
}

impl Adapters {
    /// Fresh adapters (B zero) for a model of shape `cfg`, A drawn from `seed`.
    pub fn fresh(
        cfg: &super::ModelConfig,
        settings: &LoraSettings,
        dtype: DType,
        device: &Device,
        seed: u64,
    ) -> Result<Self> {
        settings.check().map_err(ModelError::Input)?;
        let r = settings.rank as usize;
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let targets = settings.targets_in_order();
        let mut blocks = Vec::with_capacity(cfg.num_hidden_layers);
        for _ in 0..cfg.num_hidden_layers {
            let mut slots = vec![None; LoraTarget::ALL.len()];
            for &t in &targets {
                let (inputs, out) = dims(cfg, t);
                let bound = 1.0 / (inputs as f32).sqrt();
                let a: Vec<f32> = (0..r * inputs)
                    .map(|_| rng.random_range(-bound..bound))
                    .collect();
                let a = Tensor::from_vec(a, (r, inputs), device)?.to_dtype(dtype)?;
                let b = Tensor::zeros((out, r), dtype, device)?;
                slots[slot(t)] = Some(Adapter {
                    a: Var::from_tensor(&a)?,
                    b: Var::from_tensor(&b)?,
                });
            }
            blocks.push(slots);
        }
        Ok(Adapters {
            settings: settings.normalised(),
            blocks,
        })
    }

    /// Block `layer`'s adapter of `t`, if targeted.
    pub fn get(&self, layer: usize, t: LoraTarget) -> Option<&Adapter> {
        self.blocks.get(layer)?.get(slot(t))?.as_ref()
    }

    /// Every adapter with its place, in block then target order.
    fn each(&self) -> impl Iterator<Item = (usize, LoraTarget, &Adapter)> {
        self.blocks.iter().enumerate().flat_map(|(l, slots)| {
            LoraTarget::ALL
                .iter()
                .zip(slots)
                .filter_map(move |(&t, a)| a.as_ref().map(|a| (l, t, a)))
        })
    }

    /// The trainable weights, A then B of each adapter.
    pub fn vars(&self) -> Vec<Var> {
        self.each()
            .flat_map(|(_, _, a)| [a.a.clone(), a.b.clone()])
            .collect()
    }

    /// An independent copy in `dtype` on `device`: training one never moves the other.
    pub fn copy_to(&self, dtype: DType, device: &Device) -> Result<Self> {
        let copy = |v: &Var| -> Result<Var> {
            Ok(Var::from_tensor(
                &v.as_tensor()
                    .detach()
                    .to_dtype(dtype)?
                    .to_device(device)?
                    .copy()?,
            )?)
        };
        let blocks = self
            .blocks
            .iter()
            .map(|slots| {
                slots
                    .iter()
                    .map(|s| {
                        s.as_ref()
                            .map(|a| {
                                Ok(Adapter {
                                    a: copy(&a.a)?,
                                    b: copy(&a.b)?,
                                })
                            })
                            .transpose()
                    })
                    .collect::<Result<Vec<_>>>()
            })
            .collect::<Result<_>>()?;
        Ok(Adapters {
            settings: self.settings.clone(),
            blocks,
        })
    }

    /// What merging adds to each adapted weight, by its Hugging Face name: s · B·A, (out, in).
    pub fn deltas(&self) -> Result<HashMap<String, Tensor>> {
        self.each()
            .map(|(l, t, a)| {
                let ba = a.b.as_detached_tensor().matmul(&a.a.as_detached_tensor())?;
                Ok((
                    format!("{}.weight", module_path(l, t)),
                    (ba * self.settings.scale())?,
                ))
            })
            .collect()
    }

    /// Writes PEFT's two files into `dir` (which exists). `base` is recorded as the base model's path.
    pub fn write(&self, dir: &Path, base: Option<&Path>) -> Result<()> {
        let tensors: HashMap<String, Tensor> = self
            .each()
            .flat_map(|(l, t, a)| {
                [
                    (tensor_name(l, t, "A"), a.a.as_detached_tensor()),
                    (tensor_name(l, t, "B"), a.b.as_detached_tensor()),
                ]
            })
            .collect();
        let st = dir.join(WEIGHTS_FILE);
        candle_core::safetensors::save(&tensors, &st).map_err(|e| ModelError::Corrupt {
            path: st.clone(),
            format: "safetensors",
            reason: format!("write failed: {e}"),
        })?;
        let s = &self.settings;
        let config = serde_json::json!({
            "peft_type": "LORA",
            "task_type": "CAUSAL_LM",
            "base_model_name_or_path": base.map(|p| p.display().to_string()),
            "r": s.rank,
            "lora_alpha": s.alpha,
            "lora_dropout": s.dropout,
            "target_modules": s.targets_in_order().iter().map(|t| t.module()).collect::<Vec<_>>(),
            "bias": "none",
            "fan_in_fan_out": false,
            "use_rslora": false,
            "use_dora": false,
            "init_lora_weights": true,
            "inference_mode": true,
            "modules_to_save": null,
            "layers_to_transform": null,
            "layers_pattern": null,
            "rank_pattern": {},
            "alpha_pattern": {},
            "revision": null,
        });
        let cfg = dir.join(CONFIG_FILE);
        let text = serde_json::to_vec_pretty(&config).expect("json serialises");
        std::fs::write(&cfg, text).map_err(|e| ModelError::io(&cfg, e))?;
        for p in [&st, &cfg] {
            std::fs::File::open(p)
                .and_then(|f| f.sync_all())
                .map_err(|e| ModelError::io(p, e))?;
        }
        Ok(())
    }

    /// Reads an adapter directory written by prefloop or PEFT for a model of shape `cfg`. Every tensor must be
    /// there with its shape and nothing else may be: a mismatch is an error naming the tensor.
    pub fn read(
        dir: &Path,
        cfg: &super::ModelConfig,
        dtype: DType,
        device: &Device,
    ) -> Result<(Self, Option<PathBuf>)> {
        let header = read_config(dir)?;
        let st = dir.join(WEIGHTS_FILE);
        let corrupt = |reason: String| ModelError::Corrupt {
            path: st.clone(),
            format: "LoRA adapter",
            reason,
        };
        let mut found = super::load::read_safetensors(&st, device)?;
        let r = header.settings.rank as usize;
        let mut blocks = Vec::with_capacity(cfg.num_hidden_layers);
        for l in 0..cfg.num_hidden_layers {
            let mut slots = vec![None; LoraTarget::ALL.len()];
            for t in header.settings.targets_in_order() {
                let (inputs, out) = dims(cfg, t);
                let mut take = |which: &str, shape: [usize; 2]| -> Result<Var> {
                    let name = tensor_name(l, t, which);
                    let tensor = found
                        .remove(&name)
                        .ok_or_else(|| corrupt(format!("tensor {name} is missing")))?;
                    if tensor.dims() != shape {
                        return Err(corrupt(format!(
                            "tensor {name} has shape {:?}, this model needs {shape:?}",
                            tensor.dims()
                        )));
                    }
                    Ok(Var::from_tensor(&tensor.to_dtype(dtype)?.contiguous()?)?)
                };
                let a = take("A", [r, inputs])?;
                let b = take("B", [out, r])?;
                slots[slot(t)] = Some(Adapter { a, b });
            }
            blocks.push(slots);
        }
        if let Some(extra) = found.keys().min() {
            return Err(corrupt(format!(
                "tensor {extra} is not one this model's adapter has ({} more unexpected)",
                found.len() - 1
            )));
        }
        Ok((
            Adapters {
                settings: header.settings,
                blocks,
            },
            header.base,
        ))
    }
}

/// What `adapter_config.json` says that prefloop uses.
pub(crate) struct Header {
    pub settings: LoraSettings,
    pub base: Option<PathBuf>,
}

/// Whether `path` is an adapter directory (it holds `adapter_config.json`).
pub(crate) fn is_adapter_dir(path: &Path) -> bool {
    path.join(CONFIG_FILE).is_file()
}

/// Reads and checks `adapter_config.json`: plain LoRA on the linear layers prefloop adapts, nothing PEFT can
/// express that this forward pass would not compute.
pub(crate) fn read_config(dir: &Path) -> Result<Header> {
    let path = dir.join(CONFIG_FILE);
    let text = std::fs::read(&path).map_err(|e| ModelError::io(&path, e))?;
    let corrupt = |reason: String| ModelError::Corrupt {
        path: path.clone(),
        format: "adapter_config.json",
        reason,
    };
    let v: serde_json::Value =
        serde_json::from_slice(&text).map_err(|e| corrupt(format!("not JSON: {e}")))?;
    let field = |k: &str| v.get(k).filter(|x| !x.is_null());
    if field("peft_type").and_then(|x| x.as_str()) != Some("LORA") {
        return Err(corrupt("peft_type is not \"LORA\"".into()));
    }
    let unsupported = [
        ("use_dora", serde_json::json!(true)),
        ("use_rslora", serde_json::json!(true)),
        ("fan_in_fan_out", serde_json::json!(true)),
    ];
    for (k, bad) in unsupported {
        if field(k) == Some(&bad) {
            return Err(corrupt(format!("{k} is not supported")));
        }
    }
    if field("bias").is_some_and(|b| b != "none") {
        return Err(corrupt("bias must be \"none\"".into()));
    }
    for k in ["layers_to_transform", "modules_to_save"] {
        if field(k).is_some() {
            return Err(corrupt(format!("{k} is not supported")));
        }
    }
    for k in ["rank_pattern", "alpha_pattern"] {
        if field(k).is_some_and(|p| p.as_object().is_none_or(|o| !o.is_empty())) {
            return Err(corrupt(format!("{k} is not supported")));
        }
    }
    let rank = field("r")
        .and_then(|x| x.as_u64())
        .ok_or_else(|| corrupt("r is missing or not a whole number".into()))?;
    let alpha = field("lora_alpha")
        .and_then(|x| x.as_f64())
        .ok_or_else(|| corrupt("lora_alpha is missing or not a number".into()))?;
    let dropout = field("lora_dropout")
        .and_then(|x| x.as_f64())
        .unwrap_or(0.0);
    let modules = field("target_modules")
        .and_then(|x| x.as_array())
        .ok_or_else(|| corrupt("target_modules must be a list of module names".into()))?;
    let targets = modules
        .iter()
        .map(|m| {
            m.as_str().and_then(LoraTarget::from_module).ok_or_else(|| {
                corrupt(format!(
                    "target module {m} is not one of q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj"
                ))
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let settings = LoraSettings {
        rank: u32::try_from(rank).map_err(|_| corrupt(format!("r {rank} is too large")))?,
        alpha,
        dropout,
        targets,
    };
    settings.check().map_err(corrupt)?;
    Ok(Header {
        settings: settings.normalised(),
        base: field("base_model_name_or_path")
            .and_then(|x| x.as_str())
            .filter(|s| !s.is_empty())
            .map(PathBuf::from),
    })
}
