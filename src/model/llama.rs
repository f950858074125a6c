//! The llama forward pass, written once with two kernels per step:
//! - `Kernels::Differentiable`: only ops with a backward. candle's fused `rms_norm`, `rope` and
//!   `softmax_last_dim` record NO backward: a training forward that used them would train a few weights and
//!   silently leave the rest (REFERENCE.md). On the CPU in f32 the linear layers, rms norm, rope, attention
//!   softmax and SwiGLU product are our own fused kernels with their own backward ([`super::ops`]);
//!   elsewhere they are composed from candle's ops (explicit rms norm, rotate-half rope, max-subtracted
//!   softmax).
//! - `Kernels::Fused`: candle's fused CPU kernels over detached weights, for scoring and sampling, where no
//!   gradient is needed. Tests pin both to the same logits.
//! - `Kernels::Quantized`: the fused kernels, with every linear weight and the output head read from an
//!   inference-only quantized copy ([`QuantLinears`], candle's quantized matmul) where the model has one:
//!   for sampling, which is bound by reading the weights once per decoded token.
//!
//! Shapes: b batch, t new tokens, s keys (cached + new), h hidden, nh heads, nkv kv heads, hd head dim.

use std::collections::HashMap;
use std::sync::Arc;

use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{D, DType, Device, Module, Tensor, Var};

use super::Padding;
use super::config::ModelConfig;
use super::error::Result;
use super::lora::{Adapter, Adapters};
use super::ops;
use super::q8::PackedQ8;
use crate::domain::LoraTarget;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kernels {
    Differentiable,
    Fused,
    Quantized,
}

impl Kernels {
    fn fused(self) -> bool {
        matches!(self, Kernels::Fused | Kernels::Quantized)
    }
}

/// One decoder block's weights (HF layout: linear weights are (out, in)).
#[derive(Debug, Clone)]
pub(crate) struct Block {
    pub ln1: Var,
    pub q: Var,
    pub k: Var,
    pub v: Var,
    pub q_bias: Option<Var>,
    pub k_bias: Option<Var>,
    pub v_bias: Option<Var>,
    pub o: Var,
    pub ln2: Var,
    pub gate: Var,
    pub up: Var,
    pub down: Var,
}

/// The weights of the whole network; `lm_head` is None when tied to `embed`.
#[derive(Debug, Clone)]
pub(crate) struct Llama {
    pub embed: Var,
    pub blocks: Vec<Block>,
    pub norm: Var,
    pub lm_head: Option<Var>,
    /// cos and sin of position × inverse frequency, (max_positions, hd/2), model dtype.
    pub cos: Tensor,
    pub sin: Tensor,
    /// The quantized copy `Kernels::Quantized` reads, taken from the weights when it was made.
    pub quant: Option<Arc<QuantLinears>>,
    /// LoRA adapters added to the linear layers they target, on every kernel path.
    pub adapters: Option<Adapters>,
}

/// Input widths are padded with zero weights to a multiple of this for candle's quantized matmul: its packed
/// integer kernels (the fast path on CPU) take only whole 256-weight super-blocks, and without them a model
/// like SmolLM2 (width 576) multiplies through a generic dot-product loop slower than f32 gemm at 16 rows.
/// Q8_0 on AVX-512 VNNI needs no padding: it runs our own kernel ([`PackedQ8`]) at any multiple of 32.
const PAD_INPUTS_TO: usize = 256;

/// A quantized linear weight (out, in).
#[derive(Debug)]
enum QuantLinear {
    /// Q8_0 on AVX-512 VNNI, at the layer's own width ([`PackedQ8`]).
    Q8(PackedQ8),
    /// candle's quantized matmul over the weight padded to (out, in + pad): inputs get `pad` zeros first.
    Candle { matmul: QMatMul, pad: usize },
}

impl QuantLinear {
    /// The weights `ws`, each (out_i, in), stacked into one (Σ out_i, in) product: layers that read the same
    /// input (q, k and v; gate and up) then quantize it once and run one kernel call instead of several.
    fn of(ws: &[&Var], dtype: GgmlDType) -> candle_core::Result<Self> {
        // Quantized from f32 whatever the weights' dtype (ggml's formats quantize f32).
        let ws = ws
            .iter()
            .map(|w| w.as_detached_tensor().to_dtype(DType::F32))
            .collect::<candle_core::Result<Vec<_>>>()?;
        let w = Tensor::cat(&ws, 0)?;
        let (out, inputs) = w.dims2()?;
        if dtype == GgmlDType::Q8_0
            && w.device().is_cpu()
            && PackedQ8::available()
            && PackedQ8::fits(out, inputs)
        {
            let w = w.flatten_all()?.to_vec1::<f32>()?;
            return Ok(QuantLinear::Q8(PackedQ8::pack(&w, out, inputs)));
        }
        let pad = inputs.next_multiple_of(PAD_INPUTS_TO) - inputs;
        let w = if pad > 0 {
            Tensor::cat(&[&w, &Tensor::zeros((out, pad), w.dtype(), w.device())?], 1)?
        } else {
            w
        };
        Ok(QuantLinear::Candle {
            matmul: QMatMul::from_arc(Arc::new(QTensor::quantize(&w, dtype)?))?,
            pad,
        })
    }

    /// x in any float dtype; the quantized kernels take and give f32, returned in x's dtype.
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let dtype = x.dtype();
        let x = x.to_dtype(DType::F32)?;
        let y = match self {
            QuantLinear::Q8(w) => w.forward(&x)?,
            QuantLinear::Candle { matmul, pad: 0 } => matmul.forward(&x.contiguous()?)?,
            QuantLinear::Candle { matmul, pad } => {
                matmul.forward(&x.pad_with_zeros(D::Minus1, 0, *pad)?)?
            }
        };
        y.to_dtype(dtype)
    }
}

/// One block's linear weights, quantized; q, k and v stacked into one product, and gate and up.
#[derive(Debug)]
struct QuantBlock {
    qkv: QuantLinear,
    o: QuantLinear,
    gate_up: QuantLinear,
    down: QuantLinear,
}

/// Inference-only quantized copies of every linear weight and of the output head (norms, biases and the
/// embedding lookup stay as they are). A copy, not a view: it does not follow later updates of the weights.
#[derive(Debug)]
pub(crate) struct QuantLinears {
    dtype: GgmlDType,
    blocks: Vec<QuantBlock>,
    head: QuantLinear,
}

impl QuantLinears {
    pub fn of(net: &Llama, dtype: GgmlDType) -> candle_core::Result<Self> {
        let q = |vs: &[&Var]| QuantLinear::of(vs, dtype);
        let blocks = net
            .blocks
            .iter()
            .map(|b| {
                Ok(QuantBlock {
                    qkv: q(&[&b.q, &b.k, &b.v])?,
                    o: q(&[&b.o])?,
                    gate_up: q(&[&b.gate, &b.up])?,
                    down: q(&[&b.down])?,
                })
            })
            .collect::<candle_core::Result<_>>()?;
        Ok(QuantLinears {
            dtype,
            blocks,
            head: q(&[net.lm_head.as_ref().unwrap_or(&net.embed)])?,
        })
    }

    pub fn dtype(&self) -> GgmlDType {
        self.dtype
    }
}

/// Per-layer keys and values of earlier tokens, (b, nkv, s, hd), and which key slots are real tokens
/// (false = padding).
#[derive(Debug, Clone, Default)]
pub(crate) struct KvCache {
    pub layers: Vec<Option<(Tensor, Tensor)>>,
    pub valid: Vec<Vec<bool>>,
}

impl KvCache {
    /// The batch rows `rows` of the cache, in that order: finished sequences leave the batch, and a shared
    /// prompt's row repeats for each sequence that continues it. Differentiable (an index select).
    pub fn select_rows(&mut self, rows: &[usize], device: &Device) -> Result<()> {
        let idx = Tensor::new(rows.iter().map(|&r| r as u32).collect::<Vec<_>>(), device)?;
        for kv in self.layers.iter_mut().flatten() {
            *kv = (kv.0.index_select(&idx, 0)?, kv.1.index_select(&idx, 0)?);
        }
        self.valid = rows.iter().map(|&r| self.valid[r].clone()).collect();
        Ok(())
    }
}

/// The distinct prompts among `prompts` in first-seen order, and each prompt's index among them: completions
/// of the same prompt share its forward pass (keys and values selected per row, [`KvCache::select_rows`]).
pub(crate) fn distinct<'a>(
    prompts: impl Iterator<Item = &'a [u32]>,
) -> (Vec<&'a [u32]>, Vec<usize>) {
    let mut index: HashMap<&[u32], usize> = HashMap::new();
    let mut out = Vec::new();
    let of = prompts
        .map(|p| {
            *index.entry(p).or_insert_with(|| {
                out.push(p);
                out.len() - 1
            })
        })
        .collect();
    (out, of)
}

/// Prompts as one batch (u, t), t the longest, padded with `pad` on the `padding` side: the ids, which slots
/// are real tokens, and the flat index (row · t + slot) of each prompt's last token. Prompts are not empty.
pub(crate) fn prompt_batch(
    prompts: &[&[u32]],
    padding: Padding,
    pad: u32,
) -> (Vec<u32>, Vec<Vec<bool>>, Vec<usize>) {
    let t = prompts.iter().map(|p| p.len()).max().unwrap_or(0);
    let mut ids = vec![pad; prompts.len() * t];
    let mut valid = vec![vec![false; t]; prompts.len()];
    let mut last = Vec::with_capacity(prompts.len());
    for (r, p) in prompts.iter().enumerate() {
        let off = match padding {
            Padding::Left => t - p.len(),
            Padding::Right => 0,
        };
        ids[r * t + off..r * t + off + p.len()].copy_from_slice(p);
        valid[r][off..off + p.len()].fill(true);
        last.push(r * t + off + p.len() - 1);
    }
    (ids, valid, last)
}

/// A weight as `k` reads it: tracked for gradients on the differentiable path. Base weights under LoRA
/// adapters too: candle 0.11's matmul backward computes both operands' gradients whether or not one is
/// detached, and a detached weight's gradient stays in the store to the end of the backward, which
/// measured 1.4 GB more at the peak of a SmolLM2 step (5.47 against 3.98 GiB). The optimizer reads only
/// the adapters' gradients. (On the CPU in f32 the fused linear computes no gradient for a detached weight,
/// so there [`base_weight`] detaches them.)
fn take(v: &Var, k: Kernels) -> Tensor {
    if k.fused() {
        v.as_detached_tensor()
    } else {
        v.as_tensor().clone()
    }
}

/// A linear weight as `k` reads it, frozen under a LoRA adapter: detached where the fused linear
/// ([`ops::linear`]) then skips its gradient, else as [`take`] gives it.
fn base_weight(w: &Var, adapted: bool, x: &Tensor, k: Kernels) -> Tensor {
    if adapted && ops::applies(x) {
        w.as_detached_tensor()
    } else {
        take(w, k)
    }
}

/// x (.., in) · wᵀ (in, out) [+ bias] → (.., out).
fn linear(x: &Tensor, w: &Tensor, bias: Option<&Tensor>) -> candle_core::Result<Tensor> {
    if ops::applies(x) && w.dtype() == DType::F32 {
        return add_bias(ops::linear(x, w)?, bias);
    }
    let i = x.dim(D::Minus1)?;
    let mut shape = x.dims().to_vec();
    *shape.last_mut().expect("x has a width") = w.dim(0)?;
    let y = x
        .reshape((x.elem_count() / i, i))?
        .matmul(&w.t()?)?
        .reshape(shape)?;
    add_bias(y, bias)
}

fn add_bias(y: Tensor, bias: Option<&Tensor>) -> candle_core::Result<Tensor> {
    match bias {
        Some(bias) => y.broadcast_add(bias),
        None => Ok(y),
    }
}

/// candle's fused kernels accumulate half-precision inputs in f32 themselves; the differentiable path takes
/// the mean square (and softmax) in f32 and returns to the input's dtype, as transformers does.
fn rms_norm(x: &Tensor, w: &Tensor, eps: f64, k: Kernels) -> candle_core::Result<Tensor> {
    if k.fused() {
        return candle_nn::ops::rms_norm(&x.contiguous()?, w, eps as f32);
    }
    if ops::applies(x) {
        return ops::rms_norm(x, w, eps);
    }
    let dtype = x.dtype();
    let x = x.to_dtype(super::compute_dtype(dtype))?;
    let ms = x.sqr()?.mean_keepdim(D::Minus1)?;
    x.broadcast_div(&(ms + eps)?.sqrt()?)?
        .to_dtype(dtype)?
        .broadcast_mul(w)
}

/// Rotate-half (HF/NeoX order) rope. x (b, heads, t, hd); cos, sin (b, t, hd/2).
fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor, k: Kernels) -> candle_core::Result<Tensor> {
    if k.fused() {
        return candle_nn::rotary_emb::rope(&x.contiguous()?, cos, sin);
    }
    if ops::applies(x) {
        return ops::rope(x, cos, sin);
    }
    let hd = x.dim(D::Minus1)?;
    let cos = Tensor::cat(&[cos, cos], D::Minus1)?.unsqueeze(1)?;
    let sin = Tensor::cat(&[sin, sin], D::Minus1)?.unsqueeze(1)?;
    let x1 = x.narrow(D::Minus1, 0, hd / 2)?;
    let x2 = x.narrow(D::Minus1, hd / 2, hd / 2)?;
    let rot = Tensor::cat(&[&x2.neg()?, &x1], D::Minus1)?;
    x.broadcast_mul(&cos)? + rot.broadcast_mul(&sin)?
}

/// Attention weights softmax(scale·scores + mask) over the keys; scores (b, nkv, rep, t, s), mask
/// (b, 1, 1, t, s).
fn attention_weights(
    scores: &Tensor,
    mask: &Tensor,
    scale: f64,
    k: Kernels,
) -> candle_core::Result<Tensor> {
    if ops::applies(scores) {
        return ops::masked_softmax(scores, mask, scale);
    }
    let x = (scores * scale)?.broadcast_add(mask)?;
    if k.fused() {
        candle_nn::ops::softmax_last_dim(&x)
    } else {
        let dtype = x.dtype();
        candle_nn::ops::softmax(&x.to_dtype(super::compute_dtype(dtype))?, D::Minus1)?
            .to_dtype(dtype)
    }
}

/// SwiGLU's silu(g)·u.
fn silu_mul(g: &Tensor, u: &Tensor) -> candle_core::Result<Tensor> {
    if ops::applies(g) {
        return ops::silu_mul(g, u);
    }
    g.silu()? * u
}

/// A linear layer's LoRA adapter with its scale and input dropout.
#[derive(Clone, Copy)]
struct Lora<'a> {
    adapter: &'a Adapter,
    scale: f64,
    dropout: f64,
}

/// x (b, t, in) through a linear layer: `base` when its product x·wᵀ was already taken (from the quantized
/// copy), else the weight `w` (as [`take`] gives it); plus the bias, plus s · (drop(x)·Aᵀ)·Bᵀ when the layer
/// has an adapter (dropout only on the differentiable, training path).
fn project(
    x: &Tensor,
    w: &Tensor,
    base: Option<Tensor>,
    bias: Option<&Tensor>,
    lora: Option<Lora<'_>>,
    k: Kernels,
) -> candle_core::Result<Tensor> {
    let y = match base {
        Some(y) => add_bias(y, bias)?,
        None => linear(x, w, bias)?,
    };
    let Some(l) = lora else { return Ok(y) };
    let x = if k == Kernels::Differentiable && l.dropout > 0.0 {
        candle_nn::ops::dropout(x, l.dropout as f32)?
    } else {
        x.clone()
    };
    let low = linear(&x, &take(&l.adapter.a, k), None)?;
    y + (linear(&low, &take(&l.adapter.b, k), None)? * l.scale)?
}

/// x through a stacked quantized product, split back into its layers' outputs of the given widths; None
/// without a quantized copy.
fn stacked(
    x: &Tensor,
    q: Option<&QuantLinear>,
    widths: &[usize],
) -> candle_core::Result<Option<Vec<Tensor>>> {
    let Some(q) = q else { return Ok(None) };
    let y = q.forward(x)?;
    let mut from = 0;
    let parts = widths
        .iter()
        .map(|&w| {
            from += w;
            y.narrow(D::Minus1, from - w, w)
        })
        .collect::<candle_core::Result<_>>()?;
    Ok(Some(parts))
}

/// Additive attention mask (b, 1, 1, t, s): 0 where query i may see key j, −inf elsewhere. The t queries are
/// the last t key slots. A query sees earlier-or-equal real keys, and always itself, so a padding row never has
/// an all −inf row (which would make NaNs that 0·NaN spreads into real rows).
pub(crate) fn attention_mask(
    valid: &[Vec<bool>],
    t: usize,
    dtype: DType,
    device: &Device,
) -> Result<Tensor> {
    let b = valid.len();
    let s = valid.first().map_or(0, Vec::len);
    let mut m = vec![0f32; b * t * s];
    for (r, row) in valid.iter().enumerate() {
        for i in 0..t {
            let q = s - t + i;
            for (j, &ok) in row.iter().enumerate() {
                if j > q || (!ok && j != q) {
                    m[(r * t + i) * s + j] = f32::NEG_INFINITY;
                }
            }
        }
    }
    Ok(Tensor::from_vec(m, (b, 1, 1, t, s), device)?.to_dtype(dtype)?)
}

/// Rope positions of the last t key slots: each real token's index among its row's real tokens (padding: 0).
pub(crate) fn positions(valid: &[Vec<bool>], t: usize) -> Vec<u32> {
    let mut out = Vec::with_capacity(valid.len() * t);
    for row in valid {
        let s = row.len();
        let mut seen = row[..s - t].iter().filter(|&&v| v).count() as u32;
        for &v in &row[s - t..] {
            out.push(if v { seen } else { 0 });
            if v {
                seen += 1;
            }
        }
    }
    out
}

impl Llama {
    pub fn rope_tables(
        cfg: &ModelConfig,
        dtype: DType,
        device: &Device,
    ) -> Result<(Tensor, Tensor)> {
        let hd = cfg.head_dim();
        let n = cfg.max_position_embeddings;
        let inv: Vec<f64> = (0..hd / 2)
            .map(|i| 1.0 / cfg.rope_theta.powf(2.0 * i as f64 / hd as f64))
            .collect();
        let mut cos = Vec::with_capacity(n * hd / 2);
        let mut sin = Vec::with_capacity(n * hd / 2);
        for p in 0..n {
            for f in &inv {
                let a = p as f64 * f;
                cos.push(a.cos());
                sin.push(a.sin());
            }
        }
        let cos = Tensor::from_vec(cos, (n, hd / 2), device)?.to_dtype(dtype)?;
        let sin = Tensor::from_vec(sin, (n, hd / 2), device)?.to_dtype(dtype)?;
        Ok((cos, sin))
    }

    /// Final-norm hidden states (b, t, h) for `ids` (b, t) u32 appended after whatever `cache` holds;
    /// `valid` says which of the b × (cached + t) key slots are real tokens. Without a cache, valid covers t.
    pub fn hidden(
        &self,
        cfg: &ModelConfig,
        ids: &Tensor,
        valid: &[Vec<bool>],
        mut cache: Option<&mut KvCache>,
        k: Kernels,
    ) -> Result<Tensor> {
        let (b, t) = ids.dims2()?;
        let dev = ids.device();
        let (h, nh, nkv, hd) = (
            cfg.hidden_size,
            cfg.num_attention_heads,
            cfg.num_key_value_heads,
            cfg.head_dim(),
        );
        let rep = nh / nkv;
        let dtype = self.cos.dtype();
        let pos = positions(valid, t);
        if let Some(&p) = pos.iter().max()
            && p as usize >= cfg.max_position_embeddings
        {
            return Err(super::ModelError::Input(format!(
                "sequence of {} tokens is longer than the model's {} positions",
                p + 1,
                cfg.max_position_embeddings
            )));
        }
        let pos = Tensor::from_vec(pos, b * t, dev)?;
        let cos = self.cos.index_select(&pos, 0)?.reshape((b, t, hd / 2))?;
        let sin = self.sin.index_select(&pos, 0)?.reshape((b, t, hd / 2))?;
        let mask = attention_mask(valid, t, dtype, dev)?;
        let scale = 1.0 / (hd as f64).sqrt();

        // Frozen under LoRA: detached, the lookup makes no (vocab × h) gradient that nothing reads.
        let embed = match self.adapters {
            Some(_) => self.embed.as_detached_tensor(),
            None => take(&self.embed, k),
        };
        let mut x = embed
            .index_select(&ids.flatten_all()?, 0)?
            .reshape((b, t, h))?;
        if let Some(c) = cache.as_deref_mut()
            && c.layers.len() != self.blocks.len()
        {
            c.layers = vec![None; self.blocks.len()];
        }
        let quant = self.quant_for(k);
        for (li, blk) in self.blocks.iter().enumerate() {
            let qb = quant.map(|q| &q.blocks[li]);
            let lora = |t: LoraTarget| {
                let a = self.adapters.as_ref()?;
                Some(Lora {
                    adapter: a.get(li, t)?,
                    scale: a.settings.scale(),
                    dropout: a.settings.dropout,
                })
            };
            let xn = rms_norm(&x, &take(&blk.ln1, k), cfg.rms_norm_eps, k)?;
            let bias = |v: &Option<Var>| v.as_ref().map(|v| take(v, k));
            let proj = |x: &Tensor, w: &Var, base: Option<Tensor>, bias: Option<Tensor>, t| {
                let lora = lora(t);
                project(
                    x,
                    &base_weight(w, lora.is_some(), x, k),
                    base,
                    bias.as_ref(),
                    lora,
                    k,
                )
            };
            let mut qkv = stacked(&xn, qb.map(|b| &b.qkv), &[nh * hd, nkv * hd, nkv * hd])?
                .map(Vec::into_iter);
            let mut part = || qkv.as_mut().and_then(Iterator::next);
            let q = proj(&xn, &blk.q, part(), bias(&blk.q_bias), LoraTarget::Q)?;
            let kk = proj(&xn, &blk.k, part(), bias(&blk.k_bias), LoraTarget::K)?;
            let v = proj(&xn, &blk.v, part(), bias(&blk.v_bias), LoraTarget::V)?;
            let q = q.reshape((b, t, nh, hd))?.transpose(1, 2)?.contiguous()?;
            let kk = kk.reshape((b, t, nkv, hd))?.transpose(1, 2)?.contiguous()?;
            let v = v.reshape((b, t, nkv, hd))?.transpose(1, 2)?.contiguous()?;
            let q = rope(&q, &cos, &sin, k)?;
            let mut kk = rope(&kk, &cos, &sin, k)?;
            let mut v = v;
            if let Some(c) = cache.as_deref_mut() {
                if let Some((pk, pv)) = &c.layers[li] {
                    kk = Tensor::cat(&[pk, &kk], 2)?;
                    v = Tensor::cat(&[pv, &v], 2)?;
                }
                c.layers[li] = Some((kk.clone(), v.clone()));
            }
            let s = kk.dim(2)?;
            // Grouped-query attention without copying k/v: the rep query heads sharing a kv head are stacked
            // along the query axis, (b, nkv, rep·t, hd).
            let qg = q.reshape((b, nkv, rep * t, hd))?;
            let att = qg.matmul(&kk.t()?)?.reshape((b, nkv, rep, t, s))?;
            let att = attention_weights(&att, &mask, scale, k)?.reshape((b, nkv, rep * t, s))?;
            let y = att.matmul(&v)?.reshape((b, nh, t, hd))?;
            let y = y.transpose(1, 2)?.reshape((b, t, h))?;
            let o = qb.map(|b| b.o.forward(&y)).transpose()?;
            x = (x + proj(&y, &blk.o, o, None, LoraTarget::O)?)?;

            let xn = rms_norm(&x, &take(&blk.ln2, k), cfg.rms_norm_eps, k)?;
            let inter = cfg.intermediate_size;
            let mut gate_up =
                stacked(&xn, qb.map(|b| &b.gate_up), &[inter, inter])?.map(Vec::into_iter);
            let mut part = || gate_up.as_mut().and_then(Iterator::next);
            let g = proj(&xn, &blk.gate, part(), None, LoraTarget::Gate)?;
            let u = proj(&xn, &blk.up, part(), None, LoraTarget::Up)?;
            let hidden = silu_mul(&g, &u)?;
            let down = qb.map(|b| b.down.forward(&hidden)).transpose()?;
            let down = proj(&hidden, &blk.down, down, None, LoraTarget::Down)?;
            x = (x + down)?;
        }
        Ok(rms_norm(&x, &take(&self.norm, k), cfg.rms_norm_eps, k)?)
    }

    /// Logits (n, vocab) of hidden states (n, h), through `lm_head` or, when tied, the embedding.
    pub fn logits_2d(&self, hidden: &Tensor, k: Kernels) -> Result<Tensor> {
        match self.quant_for(k) {
            Some(q) => Ok(q.head.forward(hidden)?),
            None => {
                // Under LoRA the head is frozen too.
                let head = self.lm_head.as_ref().unwrap_or(&self.embed);
                Ok(linear(
                    hidden,
                    &base_weight(head, self.adapters.is_some(), hidden, k),
                    None,
                )?)
            }
        }
    }

    /// The quantized copy, when `k` asks for it and there is one.
    fn quant_for(&self, k: Kernels) -> Option<&QuantLinears> {
        match k {
            Kernels::Quantized => self.quant.as_deref(),
            _ => None,
        }
    }
}
