//! Fused CPU kernels for f32 that carry their own backward: the linear layer, rms norm, rope, the attention
//! softmax (with its scale and mask), SwiGLU's silu(g)·u, and the log-softmax of the output head's logits at
//! the target tokens.
//!
//! Why: candle's fused kernels record no backward, so the training forward had to compose these from
//! element-wise ops (llama.rs). Each composed op keeps its output alive in the autograd graph until the end
//! of the backward pass and makes fresh temporaries in the backward too. A node of these ops keeps only its
//! inputs and its output, and each backward is one more pass of the same kind: a SmolLM2 DPO step peaks at
//! 2.99 GiB instead of 4.07, and spends 2 % of its time in element-wise maps instead of 8 % (BENCHMARKS.md).
//!
//! They run on f32 on the CPU ([`applies`]); elsewhere (a GPU, bf16) the callers keep the composed ops.
//! Tests pin every op's value and gradient to the composed version.

use candle_core::{
    CpuStorage, CustomOp1, CustomOp2, CustomOp3, DType, Layout, Result, Shape, Tensor, bail,
};
use rayon::prelude::*;

/// Whether the fused kernels run for `x`: f32 on the CPU.
pub(crate) fn applies(x: &Tensor) -> bool {
    x.device().is_cpu() && x.dtype() == DType::F32
}

/// A contiguous f32 input's elements.
fn data<'a>(s: &'a CpuStorage, l: &Layout, op: &str) -> Result<&'a [f32]> {
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&s.as_slice::<f32>()?[a..b]),
        None => bail!("{op}: input is not contiguous"),
    }
}

/// Rows processed together by one rayon task: enough work to pay for the hand-off.
fn rows_per_task(row: usize) -> usize {
    (16 * 1024 / row.max(1)).max(1)
}

fn out(v: Vec<f32>, shape: &Shape) -> Result<(CpuStorage, Shape)> {
    Ok((CpuStorage::F32(v), shape.clone()))
}

/// `shape`'s worth of `t`'s elements from `offset` on (a view), as `shape`: one of the results a backward
/// kernel returns side by side in one buffer.
fn part(t: &Tensor, offset: usize, shape: &Shape) -> Result<Tensor> {
    t.flatten_all()?
        .narrow(0, offset, shape.elem_count())?
        .reshape(shape)
}

// ---------------------------------------------------------------------------------------------------------
// rms norm: y = x / sqrt(mean(x²) + eps) · w, over the last dimension.

struct RmsNorm {
    eps: f32,
}

/// Per-row 1 / sqrt(mean(x²) + eps).
fn inv_rms(row: &[f32], eps: f32) -> f32 {
    let ms = row.iter().map(|v| v * v).sum::<f32>() / row.len() as f32;
    1.0 / (ms + eps).sqrt()
}

impl CustomOp2 for RmsNorm {
    fn name(&self) -> &'static str {
        "prefloop-rms-norm"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = data(s1, l1, self.name())?;
        let w = data(s2, l2, self.name())?;
        let h = w.len();
        let mut y = vec![0f32; x.len()];
        y.par_chunks_mut(h * rows_per_task(h))
            .zip(x.par_chunks(h * rows_per_task(h)))
            .for_each(|(yr, xr)| {
                for (yr, xr) in yr.chunks_mut(h).zip(xr.chunks(h)) {
                    let inv = inv_rms(xr, self.eps);
                    for ((y, x), w) in yr.iter_mut().zip(xr).zip(w) {
                        *y = x * inv * w;
                    }
                }
            });
        out(y, l1.shape())
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let both = x.apply_op3_no_bwd(w, &grad.contiguous()?, &RmsNormBwd { eps: self.eps })?;
        let dx = part(&both, 0, x.shape())?;
        let dw = part(&both, x.elem_count(), w.shape())?;
        Ok((Some(dx), Some(dw)))
    }
}

/// (x, w, dy) → dx followed by dw: dx = inv·(dy∘w) − x·inv³/h·Σ(dy∘w∘x), dw = Σ over rows of dy∘x·inv.
struct RmsNormBwd {
    eps: f32,
}

impl CustomOp3 for RmsNormBwd {
    fn name(&self) -> &'static str {
        "prefloop-rms-norm-bwd"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = data(s1, l1, self.name())?;
        let w = data(s2, l2, self.name())?;
        let dy = data(s3, l3, self.name())?;
        let h = w.len();
        let mut res = vec![0f32; x.len() + h];
        let (dx, dw) = res.split_at_mut(x.len());
        let chunk = h * rows_per_task(h);
        dx.par_chunks_mut(chunk)
            .zip(x.par_chunks(chunk).zip(dy.par_chunks(chunk)))
            .for_each(|(dxr, (xr, dyr))| {
                for (dxr, (xr, dyr)) in dxr.chunks_mut(h).zip(xr.chunks(h).zip(dyr.chunks(h))) {
                    let inv = inv_rms(xr, self.eps);
                    let dot: f32 = dyr.iter().zip(w).zip(xr).map(|((g, w), x)| g * w * x).sum();
                    let c = inv * inv * inv * dot / h as f32;
                    for (((d, g), w), x) in dxr.iter_mut().zip(dyr).zip(w).zip(xr) {
                        *d = inv * g * w - x * c;
                    }
                }
            });
        for (xr, dyr) in x.chunks(h).zip(dy.chunks(h)) {
            let inv = inv_rms(xr, self.eps);
            for ((d, g), x) in dw.iter_mut().zip(dyr).zip(xr) {
                *d += g * x * inv;
            }
        }
        Ok((CpuStorage::F32(res), Shape::from(x.len() + h)))
    }
}

/// Differentiable rms norm of f32 `x` (.., h) with weight `w` (h) on the CPU.
pub(crate) fn rms_norm(x: &Tensor, w: &Tensor, eps: f64) -> Result<Tensor> {
    x.contiguous()?
        .apply_op2(&w.contiguous()?, RmsNorm { eps: eps as f32 })
}

// ---------------------------------------------------------------------------------------------------------
// rope (rotate-half order): for i < hd/2, y_i = x_i·cos − x_{i+hd/2}·sin and y_{i+hd/2} = x_{i+hd/2}·cos +
// x_i·sin. The backward is the same rotation by the opposite angle.

struct Rope {
    /// −1 for the backward (rotation by −θ).
    sin_sign: f32,
}

impl CustomOp3 for Rope {
    fn name(&self) -> &'static str {
        "prefloop-rope"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = data(s1, l1, self.name())?;
        let cos = data(s2, l2, self.name())?;
        let sin = data(s3, l3, self.name())?;
        let (b, heads, t, hd) = l1.shape().dims4()?;
        let half = hd / 2;
        if cos.len() != b * t * half || sin.len() != cos.len() {
            bail!("{}: cos/sin do not match {:?}", self.name(), l1.shape());
        }
        let mut y = vec![0f32; x.len()];
        // One task per (batch row, head): t × hd elements, the angles of batch row `bi`.
        y.par_chunks_mut(t * hd)
            .zip(x.par_chunks(t * hd))
            .enumerate()
            .with_min_len(rows_per_task(t * hd))
            .for_each(|(bh, (yh, xh))| {
                let bi = bh / heads;
                for ti in 0..t {
                    let a = (bi * t + ti) * half;
                    let (c, s) = (&cos[a..a + half], &sin[a..a + half]);
                    let xr = &xh[ti * hd..(ti + 1) * hd];
                    let yr = &mut yh[ti * hd..(ti + 1) * hd];
                    for i in 0..half {
                        let (x1, x2) = (xr[i], xr[i + half]);
                        let s = s[i] * self.sin_sign;
                        yr[i] = x1 * c[i] - x2 * s;
                        yr[i + half] = x2 * c[i] + x1 * s;
                    }
                }
            });
        out(y, l1.shape())
    }

    fn bwd(
        &self,
        _x: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let dx = grad.contiguous()?.apply_op3_no_bwd(
            cos,
            sin,
            &Rope {
                sin_sign: -self.sin_sign,
            },
        )?;
        Ok((Some(dx), None, None))
    }
}

/// Differentiable rope of f32 `x` (b, heads, t, hd) with cos, sin (b, t, hd/2) on the CPU; the angles get
/// no gradient.
pub(crate) fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    x.contiguous()?.apply_op3(
        &cos.contiguous()?,
        &sin.contiguous()?,
        Rope { sin_sign: 1.0 },
    )
}

// ---------------------------------------------------------------------------------------------------------
// attention weights: y = softmax(scale·x + mask) over the last dimension; x (b, g, r, t, s), mask
// (b, 1, 1, t, s) shared by the g·r heads. The mask gets no gradient; dx = scale·y∘(dy − Σ dy∘y).

struct MaskedSoftmax {
    scale: f32,
}

impl CustomOp2 for MaskedSoftmax {
    fn name(&self) -> &'static str {
        "prefloop-masked-softmax"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = data(s1, l1, self.name())?;
        let mask = data(s2, l2, self.name())?;
        let dims = l1.shape().dims();
        let (b, s) = (dims[0], dims[dims.len() - 1]);
        let t = dims[dims.len() - 2];
        if mask.len() != b * t * s {
            bail!("{}: mask does not match {:?}", self.name(), l1.shape());
        }
        // Rows of one batch row: heads × t, each with s keys.
        let per_batch = x.len() / b;
        let mut y = vec![0f32; x.len()];
        y.par_chunks_mut(s)
            .zip(x.par_chunks(s))
            .enumerate()
            .with_min_len(rows_per_task(s))
            .for_each(|(r, (yr, xr))| {
                let (bi, ti) = (r * s / per_batch, r % t);
                let m = &mask[(bi * t + ti) * s..(bi * t + ti + 1) * s];
                let mut max = f32::NEG_INFINITY;
                for ((y, x), m) in yr.iter_mut().zip(xr).zip(m) {
                    *y = x * self.scale + m;
                    max = max.max(*y);
                }
                let mut sum = 0f32;
                for y in yr.iter_mut() {
                    *y = (*y - max).exp();
                    sum += *y;
                }
                let inv = 1.0 / sum;
                for y in yr.iter_mut() {
                    *y *= inv;
                }
            });
        out(y, l1.shape())
    }

    fn bwd(
        &self,
        _x: &Tensor,
        _mask: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let dx = res.apply_op2_no_bwd(&grad.contiguous()?, &SoftmaxBwd { scale: self.scale })?;
        Ok((Some(dx), None))
    }
}

/// (y, dy) → scale·y∘(dy − Σ dy∘y) per row.
struct SoftmaxBwd {
    scale: f32,
}

impl CustomOp2 for SoftmaxBwd {
    fn name(&self) -> &'static str {
        "prefloop-softmax-bwd"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let y = data(s1, l1, self.name())?;
        let dy = data(s2, l2, self.name())?;
        let s = l1.shape().dims().last().copied().unwrap_or(1);
        let mut dx = vec![0f32; y.len()];
        let chunk = s * rows_per_task(s);
        dx.par_chunks_mut(chunk)
            .zip(y.par_chunks(chunk).zip(dy.par_chunks(chunk)))
            .for_each(|(dxr, (yr, dyr))| {
                for (dxr, (yr, dyr)) in dxr.chunks_mut(s).zip(yr.chunks(s).zip(dyr.chunks(s))) {
                    let dot: f32 = yr.iter().zip(dyr).map(|(y, g)| y * g).sum();
                    for ((d, y), g) in dxr.iter_mut().zip(yr).zip(dyr) {
                        *d = self.scale * y * (g - dot);
                    }
                }
            });
        out(dx, l1.shape())
    }
}

/// Differentiable softmax(scale·x + mask) of f32 `x` (b, g, r, t, s) with `mask` (b, 1, 1, t, s) on the CPU.
pub(crate) fn masked_softmax(x: &Tensor, mask: &Tensor, scale: f64) -> Result<Tensor> {
    x.contiguous()?.apply_op2(
        &mask.contiguous()?,
        MaskedSoftmax {
            scale: scale as f32,
        },
    )
}

// ---------------------------------------------------------------------------------------------------------
// SwiGLU's product: y = silu(g)·u = g·σ(g)·u. dg = dy·u·σ(g)·(1 + g·(1 − σ(g))), du = dy·g·σ(g).

struct SiluMul;

fn sigmoid(v: f32) -> f32 {
    1.0 / (1.0 + (-v).exp())
}

impl CustomOp2 for SiluMul {
    fn name(&self) -> &'static str {
        "prefloop-silu-mul"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let g = data(s1, l1, self.name())?;
        let u = data(s2, l2, self.name())?;
        if g.len() != u.len() {
            bail!("{}: shapes differ", self.name());
        }
        let mut y = vec![0f32; g.len()];
        y.par_chunks_mut(16 * 1024)
            .zip(g.par_chunks(16 * 1024).zip(u.par_chunks(16 * 1024)))
            .for_each(|(y, (g, u))| {
                for ((y, g), u) in y.iter_mut().zip(g).zip(u) {
                    *y = g * sigmoid(*g) * u;
                }
            });
        out(y, l1.shape())
    }

    fn bwd(
        &self,
        g: &Tensor,
        u: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let both = g.apply_op3_no_bwd(u, &grad.contiguous()?, &SiluMulBwd)?;
        let n = g.elem_count();
        Ok((
            Some(part(&both, 0, g.shape())?),
            Some(part(&both, n, u.shape())?),
        ))
    }
}

/// (g, u, dy) → dg followed by du.
struct SiluMulBwd;

impl CustomOp3 for SiluMulBwd {
    fn name(&self) -> &'static str {
        "prefloop-silu-mul-bwd"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let g = data(s1, l1, self.name())?;
        let u = data(s2, l2, self.name())?;
        let dy = data(s3, l3, self.name())?;
        let n = g.len();
        let mut res = vec![0f32; 2 * n];
        let (dg, du) = res.split_at_mut(n);
        const C: usize = 16 * 1024;
        dg.par_chunks_mut(C)
            .zip(du.par_chunks_mut(C))
            .zip(g.par_chunks(C).zip(u.par_chunks(C)).zip(dy.par_chunks(C)))
            .for_each(|((dg, du), ((g, u), dy))| {
                for i in 0..g.len() {
                    let sg = sigmoid(g[i]);
                    dg[i] = dy[i] * u[i] * sg * (1.0 + g[i] * (1.0 - sg));
                    du[i] = dy[i] * g[i] * sg;
                }
            });
        Ok((CpuStorage::F32(res), Shape::from(2 * n)))
    }
}

/// Differentiable silu(g)·u of f32 tensors of one shape on the CPU.
pub(crate) fn silu_mul(g: &Tensor, u: &Tensor) -> Result<Tensor> {
    g.contiguous()?.apply_op2(&u.contiguous()?, SiluMul)
}

// ---------------------------------------------------------------------------------------------------------
// log p of target tokens: y_r = logits[r, target_r] − logsumexp(logits[r, ..]); logits (n, vocab) → (n, 1).
// d logits[r, j] = dy_r·(δ(j, target_r) − softmax(logits[r])_j): one (n, vocab) buffer in the backward, where
// the composed version made five.

struct TargetLogProb {
    targets: Vec<u32>,
}

/// logsumexp of one row.
fn logsumexp(row: &[f32]) -> f32 {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    max + row.iter().map(|v| (v - max).exp()).sum::<f32>().ln()
}

impl CustomOp1 for TargetLogProb {
    fn name(&self) -> &'static str {
        "prefloop-target-log-prob"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let logits = data(s, l, self.name())?;
        let (n, v) = l.shape().dims2()?;
        if self.targets.len() != n || self.targets.iter().any(|&t| t as usize >= v) {
            bail!("{}: targets do not match {:?}", self.name(), l.shape());
        }
        let mut y = vec![0f32; n];
        y.par_iter_mut()
            .zip(logits.par_chunks(v).zip(&self.targets))
            .for_each(|(y, (row, &t))| *y = row[t as usize] - logsumexp(row));
        out(y, &Shape::from((n, 1)))
    }

    fn bwd(&self, logits: &Tensor, res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let d = logits.apply_op1_no_bwd(&TargetLogProbBwd {
            targets: self.targets.clone(),
            log_probs: res.flatten_all()?.to_vec1()?,
            grads: grad.flatten_all()?.to_vec1()?,
        })?;
        Ok(Some(d))
    }
}

struct TargetLogProbBwd {
    targets: Vec<u32>,
    /// The forward's results: logsumexp_r = logits[r, target_r] − log_probs_r.
    log_probs: Vec<f32>,
    grads: Vec<f32>,
}

impl CustomOp1 for TargetLogProbBwd {
    fn name(&self) -> &'static str {
        "prefloop-target-log-prob-bwd"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let logits = data(s, l, self.name())?;
        let (_, v) = l.shape().dims2()?;
        let mut d = vec![0f32; logits.len()];
        d.par_chunks_mut(v)
            .zip(logits.par_chunks(v))
            .enumerate()
            .for_each(|(r, (dr, row))| {
                let t = self.targets[r] as usize;
                let lse = row[t] - self.log_probs[r];
                let g = self.grads[r];
                for (d, x) in dr.iter_mut().zip(row) {
                    *d = -g * (x - lse).exp();
                }
                dr[t] += g;
            });
        out(d, l.shape())
    }
}

/// log p(target_r) under each row of f32 `logits` (n, vocab) on the CPU, (n, 1), differentiable.
pub(crate) fn target_log_probs(logits: &Tensor, targets: Vec<u32>) -> Result<Tensor> {
    logits.contiguous()?.apply_op1(TargetLogProb { targets })
}

// ---------------------------------------------------------------------------------------------------------
// linear layer: y = x·wᵀ for x (.., in) and w (out, in), as one node. Composed, it was a reshape, a
// transpose of w, a matmul and a reshape back, and candle's backward makes a zeroed buffer and a sum for
// every node: for the weight, two weight-sized zero fills and two copies (one strided) per step. Here
// dx = dy·w and dw = dyᵀ·x come straight from two products, and a weight that is not trained (a frozen
// base weight under LoRA, passed detached) gets no product at all.

struct Linear;

impl CustomOp2 for Linear {
    fn name(&self) -> &'static str {
        "prefloop-linear"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        use candle_core::backend::BackendStorage;
        let (out_dim, k) = l2.shape().dims2()?;
        let dims = l1.shape().dims();
        if dims.last() != Some(&k) || !l1.is_contiguous() || !l2.is_contiguous() {
            bail!(
                "{}: {:?} · {:?}ᵀ needs contiguous inputs of one width",
                self.name(),
                l1.shape(),
                l2.shape()
            );
        }
        let m = l1.shape().elem_count() / k;
        let x = Layout::new(Shape::from((m, k)), vec![k, 1], l1.start_offset());
        let wt = Layout::new(Shape::from((k, out_dim)), vec![1, k], l2.start_offset());
        let y = s1.matmul(s2, (1, m, out_dim, k), &x, &wt)?;
        let mut shape = dims.to_vec();
        *shape.last_mut().expect("x has a width") = out_dim;
        Ok((y, Shape::from(shape)))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        // Detached, so that the gradients record no graph: a weight's gradient goes straight into its
        // sum in candle's store, which would otherwise keep every tensor it was made from alive to the end
        // of the backward (measured: 1.2 GB more at the peak of a SmolLM2 step).
        let (x_, w_) = (x.detach(), w.detach());
        let (out_dim, k) = w.dims2()?;
        let m = x.elem_count() / k;
        let g = grad.detach().reshape((m, out_dim))?;
        let dx = g.matmul(&w_)?.reshape(x.shape())?;
        // A detached weight is frozen: nothing reads its gradient.
        let dw = if w.is_variable() {
            Some(g.t()?.matmul(&x_.reshape((m, k))?)?)
        } else {
            None
        };
        Ok((Some(dx), dw))
    }
}

/// Differentiable x·wᵀ of f32 `x` (.., in) and `w` (out, in) on the CPU: (.., out).
pub(crate) fn linear(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    x.contiguous()?.apply_op2(&w.contiguous()?, Linear)
}

#[cfg(test)]
mod tests {
    use candle_core::{D, Device, Tensor, Var};

    use super::*;

    fn var(shape: &[usize], seed: u64) -> Var {
        let n: usize = shape.iter().product();
        // A fixed pseudo-random fill in about [-2, 2].
        let v: Vec<f32> = (0..n)
            .map(|i| {
                let z = (i as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15 ^ seed);
                ((z >> 40) as f32 / (1u64 << 24) as f32) * 4.0 - 2.0
            })
            .collect();
        Var::from_tensor(&Tensor::from_vec(v, shape, &Device::Cpu).unwrap()).unwrap()
    }

    fn close(a: &Tensor, b: &Tensor, tol: f32) {
        assert_eq!(a.dims(), b.dims());
        let d = crate::model::max_abs_diff(a, b);
        assert!(d < tol, "max difference {d}");
    }

    /// Value and the gradients of Σ y∘c (c a fixed weighting) for the fused op and the composed one.
    fn same_value_and_grads(inputs: &[&Var], fused: &Tensor, composed: &Tensor) {
        close(fused, composed, 1e-5);
        let c = var(fused.dims(), 99).as_detached_tensor();
        let gf = (fused * &c).unwrap().sum_all().unwrap().backward().unwrap();
        let gc = (composed * &c)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        for v in inputs {
            close(gf.get(v).unwrap(), gc.get(v).unwrap(), 1e-4);
        }
    }

    #[test]
    fn rms_norm_matches_the_composed_ops() {
        let (x, w) = (var(&[2, 3, 8], 1), var(&[8], 2));
        let fused = rms_norm(x.as_tensor(), w.as_tensor(), 1e-5).unwrap();
        let xt = x.as_tensor();
        let ms = xt.sqr().unwrap().mean_keepdim(D::Minus1).unwrap();
        let composed = xt
            .broadcast_div(&(ms + 1e-5).unwrap().sqrt().unwrap())
            .unwrap()
            .broadcast_mul(w.as_tensor())
            .unwrap();
        same_value_and_grads(&[&x, &w], &fused, &composed);
    }

    #[test]
    fn rope_matches_the_composed_ops() {
        let x = var(&[2, 3, 4, 8], 3);
        let (cos, sin) = (var(&[2, 4, 4], 4), var(&[2, 4, 4], 5));
        let fused = rope(x.as_tensor(), cos.as_tensor(), sin.as_tensor()).unwrap();
        let xt = x.as_tensor();
        let c = Tensor::cat(&[cos.as_tensor(), cos.as_tensor()], D::Minus1)
            .unwrap()
            .unsqueeze(1)
            .unwrap();
        let s = Tensor::cat(&[sin.as_tensor(), sin.as_tensor()], D::Minus1)
            .unwrap()
            .unsqueeze(1)
            .unwrap();
        let rot = Tensor::cat(
            &[
                &xt.narrow(3, 4, 4).unwrap().neg().unwrap(),
                &xt.narrow(3, 0, 4).unwrap(),
            ],
            D::Minus1,
        )
        .unwrap();
        let composed = (xt.broadcast_mul(&c).unwrap() + rot.broadcast_mul(&s).unwrap()).unwrap();
        same_value_and_grads(&[&x], &fused, &composed);
    }

    #[test]
    fn masked_softmax_matches_the_composed_ops() {
        let x = var(&[2, 2, 3, 4, 5], 6);
        // A causal mask over the last 4 of 5 keys, and batch row 1 with its first key as padding.
        let mut m = vec![0f32; 2 * 4 * 5];
        for b in 0..2 {
            for i in 0..4 {
                for j in 0..5 {
                    if j > i + 1 || (b == 1 && j == 0) {
                        m[(b * 4 + i) * 5 + j] = f32::NEG_INFINITY;
                    }
                }
            }
        }
        let mask = Tensor::from_vec(m, (2, 1, 1, 4, 5), &Device::Cpu).unwrap();
        let fused = masked_softmax(x.as_tensor(), &mask, 0.5).unwrap();
        let composed = candle_nn::ops::softmax(
            &(x.as_tensor() * 0.5).unwrap().broadcast_add(&mask).unwrap(),
            D::Minus1,
        )
        .unwrap();
        same_value_and_grads(&[&x], &fused, &composed);
    }

    #[test]
    fn silu_mul_matches_the_composed_ops() {
        let (g, u) = (var(&[2, 3, 7], 7), var(&[2, 3, 7], 8));
        let fused = silu_mul(g.as_tensor(), u.as_tensor()).unwrap();
        let composed = (g.as_tensor().silu().unwrap() * u.as_tensor()).unwrap();
        same_value_and_grads(&[&g, &u], &fused, &composed);
    }

    #[test]
    fn target_log_probs_match_the_composed_ops() {
        let logits = var(&[5, 11], 9);
        let targets = vec![0u32, 10, 3, 3, 7];
        let fused = target_log_probs(logits.as_tensor(), targets.clone()).unwrap();
        let idx = Tensor::from_vec(targets, (5, 1), &Device::Cpu).unwrap();
        let composed = candle_nn::ops::log_softmax(logits.as_tensor(), D::Minus1)
            .unwrap()
            .gather(&idx, D::Minus1)
            .unwrap();
        same_value_and_grads(&[&logits], &fused, &composed);
    }

    #[test]
    fn linear_matches_the_composed_ops() {
        let (x, w) = (var(&[2, 3, 5], 11), var(&[4, 5], 12));
        let fused = linear(x.as_tensor(), w.as_tensor()).unwrap();
        let composed = x
            .as_tensor()
            .reshape((6, 5))
            .unwrap()
            .matmul(&w.as_tensor().t().unwrap())
            .unwrap()
            .reshape((2, 3, 4))
            .unwrap();
        same_value_and_grads(&[&x, &w], &fused, &composed);
    }

    #[test]
    fn a_detached_weight_gets_no_gradient_but_its_input_does() {
        let (x, w) = (var(&[3, 5], 13), var(&[4, 5], 14));
        let y = linear(x.as_tensor(), &w.as_detached_tensor()).unwrap();
        let grads = y.sum_all().unwrap().backward().unwrap();
        assert!(grads.get(&w).is_none());
        assert!(grads.get(&x).is_some());
    }

    #[test]
    fn bad_targets_are_refused() {
        let logits = var(&[2, 4], 10);
        assert!(target_log_probs(logits.as_tensor(), vec![0, 4]).is_err());
        assert!(target_log_probs(logits.as_tensor(), vec![0]).is_err());
    }
}
