//! AdamW with decoupled weight decay, fused and in place on the CPU.
//!
//! `candle_nn::AdamW` builds ~10 temporary tensors per parameter per step and took 1.7 s a step for 50M
//! parameters here (REFERENCE.md); this one keeps the moments and the gradient accumulator as plain `Vec<f32>`
//! and updates each weight in one pass over memory, inside the weight's own storage (a candle in-place op, so
//! every model built on the same `Var`s sees the update). Same formula as `candle_nn::AdamW`:
//! m ← β₁m + (1−β₁)g, v ← β₂v + (1−β₂)g², θ ← θ(1 − lr·λ) − lr·m̂ / (√v̂ + ε).
//!
//! Gradients are accumulated first ([`AdamW::accumulate`], once per micro-batch), then [`AdamW::step`] clips
//! the accumulated gradient by its global norm, updates, and clears it. Off the CPU (the `cuda` build) the same
//! update runs as ordinary tensor ops.
//!
//! Half-precision weights (bf16 or f16, on a GPU) train with f32 optimizer state: the moments, the gradient
//! accumulator and a master copy of the weight are f32, the update runs on the master, and the weight the
//! model computes with is the master rounded to its dtype after each step. Updates far below the weight's
//! bf16 resolution then still add up instead of rounding away.

use std::cell::RefCell;

use candle_core::backprop::GradStore;
use candle_core::{CpuStorage, DType, InplaceOp1, Layout, Result, Storage, Tensor, Var, bail};
use serde::{Deserialize, Serialize};

/// AdamW hyper-parameters. Defaults follow PyTorch's AdamW except the weight decay, which TRL's DPO leaves at 0.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct AdamWParams {
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

impl Default for AdamWParams {
    fn default() -> Self {
        AdamWParams {
            lr: 1e-6,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
        }
    }
}

enum State {
    /// CPU: moments and the gradient accumulator as host vectors, in the weight's contiguous order. The
    /// accumulator is allocated on first use (never, when every step is a single backward pass); `touched`
    /// says whether it holds a gradient since the last step.
    Host {
        m: Vec<f32>,
        v: Vec<f32>,
        g: Vec<f32>,
        touched: bool,
    },
    /// Other devices, and half-precision weights anywhere: the same state as f32 tensors, with an f32
    /// master copy of a half-precision weight.
    Device {
        m: Tensor,
        v: Tensor,
        g: Option<Tensor>,
        master: Option<Tensor>,
    },
}

struct Slot {
    var: Var,
    state: State,
}

/// Fused in-place AdamW over a set of f32 (or, with f32 state, half-precision) variables.
pub struct AdamW {
    params: AdamWParams,
    slots: Vec<Slot>,
    step_t: i32,
    accumulated: usize,
}

impl AdamW {
    /// Variables must be f32, bf16 or f16; half-precision ones get an f32 master copy.
    pub fn new(vars: Vec<Var>, params: AdamWParams) -> Result<Self> {
        let slots = vars
            .into_iter()
            .map(|var| {
                let dtype = var.dtype();
                if !matches!(dtype, DType::F32 | DType::BF16 | DType::F16) {
                    bail!("AdamW: variable of dtype {dtype:?}, expected f32, bf16 or f16");
                }
                let n = var.elem_count();
                let state = if var.device().is_cpu() && dtype == DType::F32 {
                    State::Host {
                        m: vec![0.0; n],
                        v: vec![0.0; n],
                        g: Vec::new(),
                        touched: false,
                    }
                } else {
                    let zeros = var.zeros_like()?.to_dtype(DType::F32)?;
                    State::Device {
                        m: zeros.clone(),
                        v: zeros,
                        g: None,
                        master: (dtype != DType::F32)
                            .then(|| var.as_tensor().detach().to_dtype(DType::F32))
                            .transpose()?,
                    }
                };
                Ok(Slot { var, state })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(AdamW {
            params,
            slots,
            step_t: 0,
            accumulated: 0,
        })
    }

    pub fn params(&self) -> &AdamWParams {
        &self.params
    }

    pub fn set_learning_rate(&mut self, lr: f64) {
        self.params.lr = lr;
    }

    /// Updates taken so far.
    pub fn steps(&self) -> i32 {
        self.step_t
    }

    /// Adds this micro-batch's gradients to the accumulator. Variables without a gradient add nothing.
    /// Scale the micro-batch loss so the accumulated sum is the gradient you mean (e.g. by its share of the batch).
    pub fn accumulate(&mut self, grads: &GradStore) -> Result<()> {
        for slot in &mut self.slots {
            let Some(grad) = grads.get(slot.var.as_tensor()) else {
                continue;
            };
            match &mut slot.state {
                State::Host { g, touched, m, .. } => {
                    let grad = grad.to_dtype(DType::F32)?.contiguous()?;
                    let (storage, layout) = grad.storage_and_layout();
                    let src = cpu_f32(&storage, layout, m.len())?;
                    if g.is_empty() {
                        g.resize(m.len(), 0.0);
                    }
                    if *touched {
                        g.iter_mut().zip(src).for_each(|(acc, x)| *acc += *x);
                    } else {
                        g.copy_from_slice(src);
                        *touched = true;
                    }
                }
                State::Device { g, .. } => {
                    let grad = grad.detach().to_dtype(DType::F32)?;
                    *g = Some(match g.take() {
                        Some(acc) => (acc + grad)?,
                        None => grad,
                    });
                }
            }
        }
        self.accumulated += 1;
        Ok(())
    }

    /// Global L2 norm of the accumulated gradient.
    pub fn grad_norm(&self) -> Result<f64> {
        let mut sq = 0f64;
        for slot in &self.slots {
            match &slot.state {
                State::Host {
                    g, touched: true, ..
                } => sq += sum_sq(g),
                State::Device { g: Some(g), .. } => sq += tensor_sum_sq(g)?,
                _ => {}
            }
        }
        Ok(sq.sqrt())
    }

    /// One update from the accumulated gradient, clipped first to global norm `max_grad_norm` if given
    /// (PyTorch's rule: scale by max_norm / (norm + 1e-6) when that is below 1). Returns the norm before
    /// clipping, and clears the accumulator. Variables that got no gradient are left alone, as
    /// `candle_nn::AdamW` does. A step with nothing accumulated is an error.
    pub fn step(&mut self, max_grad_norm: Option<f64>) -> Result<f64> {
        if self.accumulated == 0 {
            bail!("AdamW::step with no accumulated gradient");
        }
        let norm = self.grad_norm()?;
        let c = self.next_coefficients(norm, max_grad_norm);
        let p = self.params;
        for slot in &mut self.slots {
            let var = &slot.var;
            match &mut slot.state {
                State::Host { m, v, g, touched } => {
                    if !*touched {
                        continue;
                    }
                    *touched = false;
                    update_host(var, m, v, g, c)?;
                }
                State::Device { m, v, g, master } => {
                    let Some(grad) = g.take() else { continue };
                    update_device(var, master.as_mut(), m, v, &grad, c, &p)?;
                }
            }
        }
        self.accumulated = 0;
        Ok(norm)
    }

    /// One update straight from a backward pass's gradients, without copying them into the accumulator (the
    /// common case: no gradient accumulation). If micro-batches were accumulated, these are added first.
    pub fn step_grads(&mut self, grads: &GradStore, max_grad_norm: Option<f64>) -> Result<f64> {
        if self.accumulated > 0 {
            self.accumulate(grads)?;
            return self.step(max_grad_norm);
        }
        let tensors: Vec<Option<Tensor>> = self
            .slots
            .iter()
            .map(|s| {
                grads
                    .get(s.var.as_tensor())
                    .map(|g| g.to_dtype(DType::F32)?.contiguous())
                    .transpose()
            })
            .collect::<Result<_>>()?;
        let mut sq = 0f64;
        for (slot, t) in self.slots.iter().zip(&tensors) {
            let Some(t) = t else { continue };
            sq += match slot.state {
                State::Host { .. } => {
                    let (storage, layout) = t.storage_and_layout();
                    sum_sq(cpu_f32(&storage, layout, slot.var.elem_count())?)
                }
                State::Device { .. } => tensor_sum_sq(t)?,
            };
        }
        let norm = sq.sqrt();
        let c = self.next_coefficients(norm, max_grad_norm);
        let p = self.params;
        for (slot, t) in self.slots.iter_mut().zip(&tensors) {
            let Some(t) = t else { continue };
            let var = &slot.var;
            match &mut slot.state {
                State::Host { m, v, .. } => {
                    let (storage, layout) = t.storage_and_layout();
                    let g = cpu_f32(&storage, layout, var.elem_count())?;
                    update_host(var, m, v, g, c)?;
                }
                State::Device { m, v, master, .. } => {
                    update_device(var, master.as_mut(), m, v, t, c, &p)?
                }
            }
        }
        Ok(norm)
    }

    /// Backward and step in one call, for training without accumulation.
    pub fn backward_step(&mut self, loss: &Tensor, max_grad_norm: Option<f64>) -> Result<f64> {
        let grads = loss.backward()?;
        self.step_grads(&grads, max_grad_norm)
    }

    /// Advances the step counter and returns this step's coefficients, with the clipping factor for `norm`.
    fn next_coefficients(&mut self, norm: f64, max_grad_norm: Option<f64>) -> Coefficients {
        let clip = match max_grad_norm {
            Some(max) if norm > max => max / (norm + 1e-6),
            _ => 1.0,
        };
        self.step_t += 1;
        let p = self.params;
        Coefficients {
            lr: p.lr as f32,
            decay: (1.0 - p.lr * p.weight_decay) as f32,
            beta1: p.beta1 as f32,
            beta2: p.beta2 as f32,
            scale_m: (1.0 / (1.0 - p.beta1.powi(self.step_t))) as f32,
            scale_v: (1.0 / (1.0 - p.beta2.powi(self.step_t))) as f32,
            eps: p.eps as f32,
            clip: clip as f32,
        }
    }
}

#[derive(Clone, Copy)]
struct Coefficients {
    lr: f32,
    decay: f32,
    beta1: f32,
    beta2: f32,
    scale_m: f32,
    scale_v: f32,
    eps: f32,
    clip: f32,
}

/// The fused in-place update of one CPU weight from its gradient `g`.
fn update_host(
    var: &Var,
    m: &mut Vec<f32>,
    v: &mut Vec<f32>,
    g: &[f32],
    c: Coefficients,
) -> Result<()> {
    let op = FusedStep {
        c,
        m: RefCell::new(m),
        v: RefCell::new(v),
        g,
    };
    var.as_tensor().inplace_op1(&op)
}

/// The same update as tensor ops, for weights off the CPU and half-precision weights: in f32 on `master`
/// when there is one (the weight then gets the master in its own dtype), else on the weight itself.
fn update_device(
    var: &Var,
    master: Option<&mut Tensor>,
    m: &mut Tensor,
    v: &mut Tensor,
    grad: &Tensor,
    c: Coefficients,
    p: &AdamWParams,
) -> Result<()> {
    let grad = (grad * c.clip as f64)?;
    let next_m = ((&*m * p.beta1)? + (&grad * (1.0 - p.beta1))?)?;
    let next_v = ((&*v * p.beta2)? + (grad.sqr()? * (1.0 - p.beta2))?)?;
    let m_hat = (&next_m * c.scale_m as f64)?;
    let v_hat = (&next_v * c.scale_v as f64)?;
    let upd = (m_hat / (v_hat.sqrt()? + p.eps)?)?;
    match master {
        Some(master) => {
            *master = ((&*master * c.decay as f64)? - (upd * p.lr)?)?;
            var.set(&master.to_dtype(var.dtype())?)?;
        }
        None => {
            let theta = (var.as_tensor() * c.decay as f64)?;
            var.set(&(theta - (upd * p.lr)?)?)?;
        }
    }
    *m = next_m;
    *v = next_v;
    Ok(())
}

fn sum_sq(g: &[f32]) -> f64 {
    g.iter().map(|&x| (x as f64) * (x as f64)).sum()
}

fn tensor_sum_sq(g: &Tensor) -> Result<f64> {
    g.sqr()?.sum_all()?.to_dtype(DType::F64)?.to_scalar::<f64>()
}

/// The in-place update of one weight. `InplaceOp1` takes `&self`, hence the `RefCell`s around the moments.
struct FusedStep<'a> {
    c: Coefficients,
    m: RefCell<&'a mut Vec<f32>>,
    v: RefCell<&'a mut Vec<f32>>,
    g: &'a [f32],
}

impl InplaceOp1 for FusedStep<'_> {
    fn name(&self) -> &'static str {
        "fused-adamw"
    }

    fn cpu_fwd(&self, storage: &mut CpuStorage, layout: &Layout) -> Result<()> {
        let CpuStorage::F32(data) = storage else {
            bail!("fused-adamw: weight is not f32");
        };
        let Some((start, end)) = layout.contiguous_offsets() else {
            bail!("fused-adamw: weight is not contiguous");
        };
        let theta = &mut data[start..end];
        let mut m = self.m.borrow_mut();
        let mut v = self.v.borrow_mut();
        if theta.len() != self.g.len() || m.len() != theta.len() {
            bail!("fused-adamw: state size does not match the weight");
        }
        update_parallel(self.c, theta, m.as_mut_slice(), v.as_mut_slice(), self.g);
        Ok(())
    }
}

/// Splits large weights over the available cores; the update is memory-bound, so this mostly helps by
/// overlapping loads on a second core.
fn update_parallel(c: Coefficients, theta: &mut [f32], m: &mut [f32], v: &mut [f32], g: &[f32]) {
    const MIN_CHUNK: usize = 1 << 16;
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    if threads <= 1 || theta.len() < 2 * MIN_CHUNK {
        update(c, theta, m, v, g);
        return;
    }
    let chunk = theta.len().div_ceil(threads).max(MIN_CHUNK);
    std::thread::scope(|s| {
        for (((t, m), v), g) in theta
            .chunks_mut(chunk)
            .zip(m.chunks_mut(chunk))
            .zip(v.chunks_mut(chunk))
            .zip(g.chunks(chunk))
        {
            s.spawn(move || update(c, t, m, v, g));
        }
    });
}

fn update(c: Coefficients, theta: &mut [f32], m: &mut [f32], v: &mut [f32], g: &[f32]) {
    for i in 0..theta.len() {
        let gi = g[i] * c.clip;
        let mi = c.beta1 * m[i] + (1.0 - c.beta1) * gi;
        let vi = c.beta2 * v[i] + (1.0 - c.beta2) * gi * gi;
        m[i] = mi;
        v[i] = vi;
        let upd = (mi * c.scale_m) / ((vi * c.scale_v).sqrt() + c.eps);
        theta[i] = theta[i] * c.decay - c.lr * upd;
    }
}

/// The f32 elements of a contiguous CPU tensor.
fn cpu_f32<'a>(storage: &'a Storage, layout: &Layout, expect: usize) -> Result<&'a [f32]> {
    let Storage::Cpu(cpu) = storage else {
        bail!("fused-adamw: gradient is not on the CPU");
    };
    let Some((start, end)) = layout.contiguous_offsets() else {
        bail!("fused-adamw: gradient is not contiguous");
    };
    if end - start != expect {
        bail!(
            "fused-adamw: gradient has {} elements, weight has {expect}",
            end - start
        );
    }
    Ok(&cpu.as_slice::<f32>()?[start..end])
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;
    use candle_nn::Optimizer;

    /// Same weights, same gradients, several steps: ours and candle_nn's AdamW agree to ~1e-6.
    #[test]
    fn matches_candle_nn_adamw() {
        let dev = Device::Cpu;
        let init = Tensor::randn(0f32, 1.0, (300, 700), &dev).unwrap(); // > 2 × MIN_CHUNK: threaded path
        let bias = Tensor::randn(0f32, 1.0, 17, &dev).unwrap();
        let params = AdamWParams {
            lr: 1e-2,
            weight_decay: 0.1,
            ..Default::default()
        };
        let ours = [
            Var::from_tensor(&init).unwrap(),
            Var::from_tensor(&bias).unwrap(),
        ];
        let theirs = [
            Var::from_tensor(&init).unwrap(),
            Var::from_tensor(&bias).unwrap(),
        ];
        let mut opt = AdamW::new(ours.to_vec(), params).unwrap();
        let mut reference = candle_nn::AdamW::new(
            theirs.to_vec(),
            candle_nn::ParamsAdamW {
                lr: params.lr,
                beta1: params.beta1,
                beta2: params.beta2,
                eps: params.eps,
                weight_decay: params.weight_decay,
            },
        )
        .unwrap();
        let target = Tensor::randn(0f32, 1.0, (300, 700), &dev).unwrap();
        let loss_of = |w: &[Var; 2]| -> Tensor {
            let a = (w[0].as_tensor() - &target)
                .unwrap()
                .sqr()
                .unwrap()
                .sum_all()
                .unwrap();
            let b = w[1].as_tensor().powf(3.0).unwrap().sum_all().unwrap();
            (a + b).unwrap()
        };
        for _ in 0..5 {
            opt.backward_step(&loss_of(&ours), None).unwrap();
            reference.backward_step(&loss_of(&theirs)).unwrap();
        }
        for (a, b) in ours.iter().zip(&theirs) {
            let diff = crate::model::max_abs_diff(a.as_tensor(), b.as_tensor());
            assert!(diff < 2e-6, "max difference {diff}");
        }
        // The weights did move.
        let moved = (ours[0].as_tensor() - &init)
            .unwrap()
            .abs()
            .unwrap()
            .sum_all()
            .unwrap();
        assert!(moved.to_scalar::<f32>().unwrap() > 1.0);
    }

    #[test]
    fn variables_without_a_gradient_are_left_alone() {
        let dev = Device::Cpu;
        let used = Var::new(&[1f32, 2.0], &dev).unwrap();
        let unused = Var::new(&[3f32, 4.0], &dev).unwrap();
        let params = AdamWParams {
            lr: 0.1,
            weight_decay: 0.5,
            ..Default::default()
        };
        let mut direct = AdamW::new(vec![used.clone(), unused.clone()], params).unwrap();
        direct
            .backward_step(&used.as_tensor().sqr().unwrap().sum_all().unwrap(), None)
            .unwrap();
        let mut acc = AdamW::new(vec![used.clone(), unused.clone()], params).unwrap();
        let g = used
            .as_tensor()
            .sqr()
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        acc.accumulate(&g).unwrap();
        acc.step(None).unwrap();
        assert_eq!(unused.to_vec1::<f32>().unwrap(), [3.0, 4.0]);
        assert_ne!(used.to_vec1::<f32>().unwrap(), [1.0, 2.0]);
    }

    #[test]
    fn accumulation_equals_one_big_batch_and_clipping_caps_the_norm() {
        let dev = Device::Cpu;
        let x = Tensor::new(&[[1f32, 2.0], [3.0, -1.0], [0.5, 0.5], [-2.0, 1.0]], &dev).unwrap();
        let w0 = Tensor::new(&[0.3f32, -0.2], &dev).unwrap();
        let loss = |w: &Var, rows: &Tensor| -> Tensor {
            rows.broadcast_mul(w.as_tensor())
                .unwrap()
                .sum_all()
                .unwrap()
                .sqr()
                .unwrap()
        };
        let full = Var::from_tensor(&w0).unwrap();
        let split = Var::from_tensor(&w0).unwrap();
        let mut a = AdamW::new(
            vec![full.clone()],
            AdamWParams {
                lr: 0.1,
                ..Default::default()
            },
        )
        .unwrap();
        let mut b = AdamW::new(
            vec![split.clone()],
            AdamWParams {
                lr: 0.1,
                ..Default::default()
            },
        )
        .unwrap();
        // Full batch: sum of the two halves' losses.
        let l = (loss(&full, &x.narrow(0, 0, 2).unwrap())
            + loss(&full, &x.narrow(0, 2, 2).unwrap()))
        .unwrap();
        let na = a.backward_step(&l, None).unwrap();
        b.accumulate(
            &loss(&split, &x.narrow(0, 0, 2).unwrap())
                .backward()
                .unwrap(),
        )
        .unwrap();
        b.accumulate(
            &loss(&split, &x.narrow(0, 2, 2).unwrap())
                .backward()
                .unwrap(),
        )
        .unwrap();
        let nb = b.step(None).unwrap();
        assert!((na - nb).abs() < 1e-5);
        assert_eq!(
            full.to_vec1::<f32>().unwrap(),
            split.to_vec1::<f32>().unwrap()
        );
        assert!(b.step(None).is_err(), "a step with nothing accumulated");

        // Straight from the backward pass: the same update as through the accumulator.
        let direct = Var::from_tensor(&w0).unwrap();
        let mut d = AdamW::new(
            vec![direct.clone()],
            AdamWParams {
                lr: 0.1,
                ..Default::default()
            },
        )
        .unwrap();
        let l = (loss(&direct, &x.narrow(0, 0, 2).unwrap())
            + loss(&direct, &x.narrow(0, 2, 2).unwrap()))
        .unwrap();
        let nd = d.step_grads(&l.backward().unwrap(), None).unwrap();
        assert!((nd - nb).abs() < 1e-5);
        assert_eq!(
            direct.to_vec1::<f32>().unwrap(),
            split.to_vec1::<f32>().unwrap()
        );
        let State::Host { g, .. } = &d.slots[0].state else {
            unreachable!()
        };
        assert!(g.is_empty(), "no accumulator allocated on the direct path");

        // Clipping: with the gradient scaled down to norm 1e-3 Adam's first step is unchanged (it is scale
        // invariant up to eps), so check the clipped gradient itself through the second moment instead:
        // after one clipped step v = (1 − β₂)·g_clipped², so |g_clipped| = norm cap.
        let c = Var::from_tensor(&w0).unwrap();
        let mut opt = AdamW::new(vec![c.clone()], AdamWParams::default()).unwrap();
        let l = loss(&c, &x);
        opt.accumulate(&l.backward().unwrap()).unwrap();
        let norm = opt.step(Some(1e-3)).unwrap();
        assert!(norm > 1e-3);
        let State::Host { v, .. } = &opt.slots[0].state else {
            unreachable!()
        };
        let g2: f64 = v.iter().map(|&x| x as f64 / (1.0 - 0.999)).sum();
        assert!(
            (g2.sqrt() - 1e-3).abs() < 1e-6,
            "clipped norm {}",
            g2.sqrt()
        );
    }

    #[test]
    fn bf16_weights_train_on_an_f32_master_and_small_steps_add_up() {
        // lr 1e-4 on a weight of 1.0: one step is far below bf16's spacing there (2⁻⁸), so without an f32
        // master every step would round away and the weight would stay 1.0 for good.
        let dev = Device::Cpu;
        let params = AdamWParams {
            lr: 1e-4,
            ..Default::default()
        };
        let half = Var::from_tensor(
            &Tensor::new(&[1f32, -0.5], &dev)
                .unwrap()
                .to_dtype(DType::BF16)
                .unwrap(),
        )
        .unwrap();
        let full = Var::from_tensor(&Tensor::new(&[1f32, -0.5], &dev).unwrap()).unwrap();
        let mut h = AdamW::new(vec![half.clone()], params).unwrap();
        let mut f = AdamW::new(vec![full.clone()], params).unwrap();
        for _ in 0..100 {
            // d/dw Σ w = 1 for every element: Adam moves each by lr a step.
            h.backward_step(&half.as_tensor().sum_all().unwrap(), None)
                .unwrap();
            f.backward_step(&full.as_tensor().sum_all().unwrap(), None)
                .unwrap();
        }
        assert_eq!(half.dtype(), DType::BF16, "the weight keeps its dtype");
        let got = half
            .as_tensor()
            .to_dtype(DType::F32)
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let want = full.to_vec1::<f32>().unwrap();
        assert!(
            (want[0] - 0.99).abs() < 1e-4,
            "f32 reference moved by 100 × lr: {want:?}"
        );
        for (g, w) in got.iter().zip(&want) {
            assert!((g - w).abs() <= 4e-3, "bf16 {got:?} against f32 {want:?}");
        }
        assert_ne!(got[0], 1.0, "the updates added up");
        assert!(
            AdamW::new(
                vec![Var::from_tensor(&Tensor::new(&[1u32], &dev).unwrap()).unwrap()],
                params
            )
            .is_err()
        );
    }
}
