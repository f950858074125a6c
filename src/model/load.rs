//! Reading weights from disk: a Hugging Face directory (one or sharded safetensors) or a GGUF file. Every tensor
//! is checked for presence, dtype, shape and complete bytes before any model is built, so a bad file is an error
//! naming the file and the tensor, never a panic or a half-loaded model.

use std::collections::{BTreeSet, HashMap};
use std::fs::File;
use std::path::{Path, PathBuf};

use candle_core::quantized::gguf_file;
use candle_core::{DType, Device, Tensor};

use super::config::ModelConfig;
use super::error::{ModelError, Result};
use super::tokenizer::TextTokenizer;

/// What a loader hands to the model: its shape, its tokenizer and its tensors in HF names, in `dtype`.
pub(crate) struct Loaded {
    pub config: ModelConfig,
    pub tokenizer: TextTokenizer,
    pub tensors: Vec<(String, Tensor)>,
}

fn is_float(dt: DType) -> bool {
    matches!(dt, DType::F16 | DType::BF16 | DType::F32 | DType::F64)
}

/// Checks a safetensors buffer's header against its length so a truncated file names the first tensor cut off.
fn check_safetensors_bytes(path: &Path, data: &[u8]) -> Result<()> {
    let corrupt = |reason: String| ModelError::Corrupt {
        path: path.to_path_buf(),
        format: "safetensors",
        reason,
    };
    if data.len() < 8 {
        return Err(corrupt(format!(
            "{} bytes, shorter than the header length",
            data.len()
        )));
    }
    let n = u64::from_le_bytes(data[..8].try_into().expect("8 bytes"));
    let header_end = 8u64.saturating_add(n);
    if header_end > data.len() as u64 {
        return Err(corrupt(format!(
            "header claims {n} bytes, file has {} (truncated?)",
            data.len()
        )));
    }
    let header: serde_json::Value = serde_json::from_slice(&data[8..header_end as usize])
        .map_err(|e| corrupt(format!("header is not JSON: {e}")))?;
    let obj = header
        .as_object()
        .ok_or_else(|| corrupt("header is not a JSON object".into()))?;
    let mut worst: Option<(String, u64)> = None;
    for (name, info) in obj.iter().filter(|(k, _)| *k != "__metadata__") {
        let end = info
            .get("data_offsets")
            .and_then(|o| o.get(1))
            .and_then(|e| e.as_u64())
            .ok_or_else(|| corrupt(format!("tensor {name} has no data_offsets")))?;
        let needed = header_end.saturating_add(end);
        if needed > data.len() as u64 && worst.as_ref().is_none_or(|(_, w)| needed < *w) {
            worst = Some((name.clone(), needed));
        }
    }
    match worst {
        Some((tensor, needed)) => Err(ModelError::Truncated {
            path: path.to_path_buf(),
            tensor,
            needed,
            size: data.len() as u64,
        }),
        None => Ok(()),
    }
}

pub(crate) fn read_safetensors(path: &Path, device: &Device) -> Result<HashMap<String, Tensor>> {
    let data = std::fs::read(path).map_err(|e| ModelError::io(path, e))?;
    check_safetensors_bytes(path, &data)?;
    candle_core::safetensors::load_buffer(&data, device).map_err(|e| ModelError::Corrupt {
        path: path.to_path_buf(),
        format: "safetensors",
        reason: e.to_string(),
    })
}

/// Takes the expected tensors out of `found` in order, checking dtype and shape, converting to `dtype`.
fn collect_expected(
    cfg: &ModelConfig,
    mut found: HashMap<String, (Tensor, PathBuf)>,
    missing_path: &Path,
    dtype: DType,
) -> Result<Vec<(String, Tensor)>> {
    let mut out = Vec::new();
    for (name, shape) in cfg.expected_tensors() {
        let Some((t, path)) = found.remove(&name) else {
            return Err(ModelError::MissingTensor {
                path: missing_path.to_path_buf(),
                tensor: name,
            });
        };
        if !is_float(t.dtype()) {
            return Err(ModelError::WrongDtype {
                path,
                tensor: name,
                dtype: format!("{:?}", t.dtype()),
            });
        }
        if t.dims() != shape.as_slice() {
            return Err(ModelError::WrongShape {
                path,
                tensor: name,
                expected: shape,
                found: t.dims().to_vec(),
            });
        }
        out.push((name, t.to_dtype(dtype)?));
    }
    Ok(out)
}

/// Loads a Hugging Face model directory.
pub(crate) fn load_hf_dir(dir: &Path, device: &Device, dtype: DType) -> Result<Loaded> {
    let cfg_path = dir.join("config.json");
    let text = std::fs::read_to_string(&cfg_path).map_err(|e| ModelError::io(&cfg_path, e))?;
    let config = ModelConfig::from_hf_json(&cfg_path, &text)?;
    let tokenizer = TextTokenizer::from_hf_dir(dir, config.eos_token_id)?;

    let single = dir.join("model.safetensors");
    let index = dir.join("model.safetensors.index.json");
    let files: Vec<PathBuf> = if single.exists() {
        vec![single]
    } else if index.exists() {
        let text = std::fs::read_to_string(&index).map_err(|e| ModelError::io(&index, e))?;
        let v: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| ModelError::Corrupt {
                path: index.clone(),
                format: "safetensors index",
                reason: e.to_string(),
            })?;
        let map = v
            .get("weight_map")
            .and_then(|m| m.as_object())
            .ok_or_else(|| ModelError::Corrupt {
                path: index.clone(),
                format: "safetensors index",
                reason: "no weight_map object".into(),
            })?;
        let names: BTreeSet<&str> = map.values().filter_map(|f| f.as_str()).collect();
        // A shard name must stay inside the directory.
        if let Some(bad) = names.iter().find(|n| n.contains('/') || n.contains("..")) {
            return Err(ModelError::Corrupt {
                path: index.clone(),
                format: "safetensors index",
                reason: format!("shard name {bad:?} leaves the model directory"),
            });
        }
        names.into_iter().map(|n| dir.join(n)).collect()
    } else {
        return Err(ModelError::io(
            &single,
            std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "no model.safetensors or model.safetensors.index.json in the directory",
            ),
        ));
    };
    let mut found = HashMap::new();
    for f in &files {
        for (name, t) in read_safetensors(f, device)? {
            found.insert(name, (t, f.clone()));
        }
    }
    let tensors = collect_expected(&config, found, &files[0], dtype)?;
    Ok(Loaded {
        config,
        tokenizer,
        tensors,
    })
}

/// GGUF stores Q and K rows in the interleaved rope order; this puts them back in the HF (rotate-half) order.
pub(crate) fn unpermute_qk(w: &Tensor, heads: usize) -> candle_core::Result<Tensor> {
    let (out, inp) = w.dims2()?;
    let hd = out / heads;
    w.reshape((heads, hd / 2, 2, inp))?
        .transpose(1, 2)?
        .reshape((out, inp))
}

/// The inverse of [`unpermute_qk`]: HF order to GGUF order (used by tests that write GGUF files).
pub fn permute_qk_for_gguf(w: &Tensor, heads: usize) -> candle_core::Result<Tensor> {
    let (out, inp) = w.dims2()?;
    let hd = out / heads;
    w.reshape((heads, 2, hd / 2, inp))?
        .transpose(1, 2)?
        .reshape((out, inp))
}

/// HF name of each GGUF llama tensor.
fn gguf_to_hf(cfg: &ModelConfig) -> Vec<(String, String)> {
    let mut m = vec![
        (
            "token_embd.weight".to_string(),
            "model.embed_tokens.weight".to_string(),
        ),
        ("output_norm.weight".into(), "model.norm.weight".into()),
    ];
    if !cfg.tie_word_embeddings {
        m.push(("output.weight".into(), "lm_head.weight".into()));
    }
    for l in 0..cfg.num_hidden_layers {
        let (g, h) = (format!("blk.{l}"), format!("model.layers.{l}"));
        for (a, b) in [
            ("attn_norm", "input_layernorm"),
            ("attn_q", "self_attn.q_proj"),
            ("attn_k", "self_attn.k_proj"),
            ("attn_v", "self_attn.v_proj"),
            ("attn_output", "self_attn.o_proj"),
            ("ffn_norm", "post_attention_layernorm"),
            ("ffn_gate", "mlp.gate_proj"),
            ("ffn_up", "mlp.up_proj"),
            ("ffn_down", "mlp.down_proj"),
        ] {
            m.push((format!("{g}.{a}.weight"), format!("{h}.{b}.weight")));
        }
    }
    m
}

/// Loads a llama-architecture GGUF file, dequantising every tensor to `dtype`.
pub(crate) fn load_gguf(path: &Path, device: &Device, dtype: DType) -> Result<Loaded> {
    let corrupt = |reason: String| ModelError::Corrupt {
        path: path.to_path_buf(),
        format: "GGUF",
        reason,
    };
    let mut file = File::open(path).map_err(|e| ModelError::io(path, e))?;
    let size = file.metadata().map_err(|e| ModelError::io(path, e))?.len();
    let ct = gguf_file::Content::read(&mut file).map_err(|e| corrupt(e.to_string()))?;
    let md = &ct.metadata;
    let arch = md
        .get("general.architecture")
        .and_then(|v| v.to_string().ok())
        .cloned()
        .unwrap_or_default();
    if arch != "llama" {
        return Err(ModelError::UnknownArchitecture {
            path: path.to_path_buf(),
            found: arch,
        });
    }
    let md_u = |k: &str| -> Result<usize> {
        md.get(k)
            .and_then(|v| {
                v.to_u32()
                    .ok()
                    .or_else(|| v.to_u64().ok().map(|x| x as u32))
            })
            .map(|x| x as usize)
            .ok_or_else(|| ModelError::BadConfig {
                path: path.to_path_buf(),
                reason: format!("missing or non-integer metadata {k}"),
            })
    };
    let md_f = |k: &str| md.get(k).and_then(|v| v.to_f32().ok()).map(f64::from);
    let embd =
        ct.tensor_infos
            .get("token_embd.weight")
            .ok_or_else(|| ModelError::MissingTensor {
                path: path.to_path_buf(),
                tensor: "token_embd.weight".into(),
            })?;
    let tokenizer = TextTokenizer::from_gguf(path, md)?;
    let heads = md_u("llama.attention.head_count")?;
    let config = ModelConfig {
        model_type: "llama".into(),
        vocab_size: embd.shape.dims().first().copied().unwrap_or(0),
        hidden_size: md_u("llama.embedding_length")?,
        intermediate_size: md_u("llama.feed_forward_length")?,
        num_hidden_layers: md_u("llama.block_count")?,
        num_attention_heads: heads,
        num_key_value_heads: md_u("llama.attention.head_count_kv").unwrap_or(heads),
        rms_norm_eps: md_f("llama.attention.layer_norm_rms_epsilon").unwrap_or(1e-5),
        rope_theta: md_f("llama.rope.freq_base").unwrap_or(10_000.0),
        max_position_embeddings: md_u("llama.context_length").unwrap_or(2048),
        tie_word_embeddings: !ct.tensor_infos.contains_key("output.weight"),
        attention_bias: false,
        bos_token_id: md
            .get("tokenizer.ggml.bos_token_id")
            .and_then(|v| v.to_u32().ok()),
        eos_token_id: Some(tokenizer.eos_id()),
    };
    config.validate(path)?;
    let expected: HashMap<String, Vec<usize>> = config.expected_tensors().into_iter().collect();

    let mut found = HashMap::new();
    for (gname, hname) in gguf_to_hf(&config) {
        let info = ct
            .tensor_infos
            .get(&gname)
            .ok_or_else(|| ModelError::MissingTensor {
                path: path.to_path_buf(),
                tensor: gname.clone(),
            })?;
        let want = &expected[&hname];
        if info.shape.dims() != want.as_slice() {
            return Err(ModelError::WrongShape {
                path: path.to_path_buf(),
                tensor: gname,
                expected: want.clone(),
                found: info.shape.dims().to_vec(),
            });
        }
        let elems = info.shape.elem_count();
        let block = info.ggml_dtype.block_size();
        if elems % block != 0 {
            return Err(corrupt(format!(
                "tensor {gname}: {elems} elements is not a multiple of the block size {block}"
            )));
        }
        let bytes = (elems / block * info.ggml_dtype.type_size()) as u64;
        let needed = ct
            .tensor_data_offset
            .saturating_add(info.offset)
            .saturating_add(bytes);
        if needed > size {
            return Err(ModelError::Truncated {
                path: path.to_path_buf(),
                tensor: gname,
                needed,
                size,
            });
        }
        let q = ct
            .tensor(&mut file, &gname, device)
            .map_err(|e| corrupt(format!("tensor {gname}: {e}")))?;
        let mut t = q.dequantize(device)?;
        if hname.ends_with("q_proj.weight") {
            t = unpermute_qk(&t, config.num_attention_heads)?;
        } else if hname.ends_with("k_proj.weight") {
            t = unpermute_qk(&t, config.num_key_value_heads)?;
        }
        found.insert(hname, (t, path.to_path_buf()));
    }
    let tensors = collect_expected(&config, found, path, dtype)?;
    Ok(Loaded {
        config,
        tokenizer,
        tensors,
    })
}
