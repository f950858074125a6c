//! A Q8_0 linear layer for AVX-512 VNNI at any width that is a multiple of 32.
//!
//! candle's packed Q8_0 kernel takes its activations in 256-wide blocks, so a model 576 wide (SmolLM2) had its
//! weights padded with zeros to 768: a third more weights read and multiplied on six of a block's seven
//! layers and on the output head. Here the activations are quantized in blocks of 32, like the weights, and
//! no padding is needed.
//!
//! Layout: the (n, k) weight is cut into tiles of 16 rows; per tile, each block of 32 inputs holds the 16
//! rows' scales and their quants offset by +128 (unsigned), grouped so that one 64-byte load gives 4
//! consecutive inputs of all 16 rows. One `vpdpbusd` then multiplies them by 4 broadcast activation quants
//! and adds into 16 sums; the +128 is taken back out through the block's activation sum.
//!
//! `PackedQ8::matmul_reference` (test builds) computes the same sums in plain Rust, in the same order:
//! tests check the packing on any CPU and the kernel against it, bit for bit, on CPUs that have the
//! instructions.

use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor, bail};

/// Rows per tile: one 512-bit register of i32 sums.
const TILE: usize = 16;
/// Inputs per quantization block.
const BLOCK: usize = 32;
/// Activation rows that share each load of a tile's weights.
const ROWS: usize = 4;

/// One block of 32 inputs for one tile of 16 rows.
#[repr(C, align(64))]
#[derive(Clone)]
struct TileBlock {
    /// Each row's scale.
    d: [f32; TILE],
    /// q[g·64 + r·4 + j] = quant of row r, input 4g + j, plus 128.
    q: [u8; TILE * BLOCK],
}

/// A weight (n, k) quantized to 8 bits per block of 32 inputs and packed for the VNNI kernel.
#[derive(Debug)]
pub(crate) struct PackedQ8 {
    n: usize,
    k: usize,
    /// Tile t's blocks are `blocks[t·k/32 .. (t+1)·k/32]`.
    blocks: Vec<TileBlock>,
}

impl std::fmt::Debug for TileBlock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TileBlock")
    }
}

/// Activations quantized per row and block of 32: quants, scales, and each block's quant sum.
struct QuantRows {
    q: Vec<i8>,
    d: Vec<f32>,
    sum: Vec<i32>,
}

/// The scale of a block whose largest magnitude is `amax`, and its inverse (0 for an all-zero block).
fn scale_of(amax: f32) -> (f32, f32) {
    let d = amax / 127.0;
    (d, if d > 0.0 { 1.0 / d } else { 0.0 })
}

impl PackedQ8 {
    /// Whether this CPU runs the kernel.
    pub fn available() -> bool {
        #[cfg(target_arch = "x86_64")]
        {
            is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512vnni")
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            false
        }
    }

    /// Whether a weight (n, k) can be packed: whole tiles of rows and whole blocks of inputs.
    pub fn fits(n: usize, k: usize) -> bool {
        n > 0 && k > 0 && n.is_multiple_of(TILE) && k.is_multiple_of(BLOCK)
    }

    /// Quantizes and packs `w`, row-major (n, k).
    pub fn pack(w: &[f32], n: usize, k: usize) -> Self {
        assert!(
            Self::fits(n, k) && w.len() == n * k,
            "PackedQ8::pack: {n} × {k}"
        );
        let kb = k / BLOCK;
        let mut blocks = vec![
            TileBlock {
                d: [0.0; TILE],
                q: [0; TILE * BLOCK],
            };
            n / TILE * kb
        ];
        for (row, weights) in w.chunks_exact(k).enumerate() {
            let (t, r) = (row / TILE, row % TILE);
            for (b, x) in weights.chunks_exact(BLOCK).enumerate() {
                let (d, id) = scale_of(x.iter().fold(0f32, |m, v| m.max(v.abs())));
                let tb = &mut blocks[t * kb + b];
                tb.d[r] = d;
                for (i, &v) in x.iter().enumerate() {
                    let q = (v * id).round_ties_even() as i32;
                    tb.q[(i / 4) * 64 + r * 4 + i % 4] = (q + 128) as u8;
                }
            }
        }
        PackedQ8 { n, k, blocks }
    }

    /// x (m, k) row-major times the weight transposed: (m, n). Needs [`available`](Self::available).
    pub fn matmul(&self, x: &[f32], m: usize) -> Vec<f32> {
        assert!(Self::available() && x.len() == m * self.k);
        let acts = self.quantize_rows(x, m);
        let mut out = vec![0f32; m * self.n];
        let tiles = self.n / TILE;
        let out_ptr = SendPtr(out.as_mut_ptr());
        let run = |t: usize| {
            let out = &out_ptr;
            // SAFETY: `available` checked the instructions; tile t writes columns t·16..t·16+16 of the m
            // rows of `out` (m × n), which no other tile touches.
            #[cfg(target_arch = "x86_64")]
            unsafe {
                kernel::tile(self, &acts, t, m, out.0);
            }
            #[cfg(not(target_arch = "x86_64"))]
            let _ = (t, out, &acts);
        };
        if rayon::current_num_threads() > 1 && tiles >= 8 {
            use rayon::prelude::*;
            (0..tiles).into_par_iter().with_min_len(4).for_each(run);
        } else {
            (0..tiles).for_each(run);
        }
        out
    }

    /// [`matmul`](Self::matmul) in plain Rust, the same sums in the same order: for checking the packing and
    /// the kernel.
    #[cfg(test)]
    pub fn matmul_reference(&self, x: &[f32], m: usize) -> Vec<f32> {
        let acts = self.quantize_rows(x, m);
        let kb = self.k / BLOCK;
        let mut out = vec![0f32; m * self.n];
        for i in 0..m {
            for col in 0..self.n {
                let (t, r) = (col / TILE, col % TILE);
                let mut acc = 0f32;
                for b in 0..kb {
                    let tb = &self.blocks[t * kb + b];
                    let mut sum = 0i32;
                    for j in 0..BLOCK {
                        let w = tb.q[(j / 4) * 64 + r * 4 + j % 4] as i32;
                        sum += w * acts.q[i * self.k + b * BLOCK + j] as i32;
                    }
                    let sum = sum - 128 * acts.sum[i * kb + b];
                    acc = (sum as f32).mul_add(tb.d[r] * acts.d[i * kb + b], acc);
                }
                out[i * self.n + col] = acc;
            }
        }
        out
    }

    fn quantize_rows(&self, x: &[f32], m: usize) -> QuantRows {
        let kb = self.k / BLOCK;
        let mut acts = QuantRows {
            q: vec![0; m * self.k],
            d: vec![0.0; m * kb],
            sum: vec![0; m * kb],
        };
        for (blk, (x, q)) in x
            .chunks_exact(BLOCK)
            .zip(acts.q.chunks_exact_mut(BLOCK))
            .enumerate()
        {
            let (d, id) = scale_of(x.iter().fold(0f32, |m, v| m.max(v.abs())));
            let mut sum = 0;
            for (q, &v) in q.iter_mut().zip(x) {
                *q = (v * id).round_ties_even() as i8;
                sum += *q as i32;
            }
            acts.d[blk] = d;
            acts.sum[blk] = sum;
        }
        acts
    }
}

struct SendPtr(*mut f32);
// SAFETY: shared only among tiles that write disjoint columns (see `matmul`).
unsafe impl Sync for SendPtr {}
unsafe impl Send for SendPtr {}

#[cfg(target_arch = "x86_64")]
mod kernel {
    use core::arch::x86_64::*;

    use super::{BLOCK, PackedQ8, QuantRows, ROWS, TILE};

    /// Tile `t` of `w` for all m rows of `acts`, ROWS rows at a time, into `out` (m × n).
    ///
    /// # Safety
    /// The CPU has AVX-512 F and VNNI; `out` points to m × n floats of which this call writes columns
    /// t·16..t·16+16 only.
    #[target_feature(enable = "avx512f,avx512vnni")]
    pub(super) unsafe fn tile(w: &PackedQ8, acts: &QuantRows, t: usize, m: usize, out: *mut f32) {
        let mut i = 0;
        while i < m {
            match m - i {
                1 => unsafe { rows::<1>(w, acts, t, i, out) },
                2 => unsafe { rows::<2>(w, acts, t, i, out) },
                3 => unsafe { rows::<3>(w, acts, t, i, out) },
                _ => unsafe { rows::<ROWS>(w, acts, t, i, out) },
            }
            i += ROWS;
        }
    }

    /// Rows first..first+R of tile t: each 64-byte load of weights serves R rows.
    #[target_feature(enable = "avx512f,avx512vnni")]
    unsafe fn rows<const R: usize>(
        w: &PackedQ8,
        acts: &QuantRows,
        t: usize,
        first: usize,
        out: *mut f32,
    ) {
        let (k, kb) = (w.k, w.k / BLOCK);
        let blocks = &w.blocks[t * kb..(t + 1) * kb];
        let mut acc = [_mm512_setzero_ps(); R];
        for (b, tb) in blocks.iter().enumerate() {
            let mut sum = [_mm512_setzero_si512(); R];
            for g in 0..BLOCK / 4 {
                // SAFETY: TileBlock is 64-byte aligned and q's groups are 64 bytes from its aligned start.
                let wq = unsafe { _mm512_load_si512(tb.q.as_ptr().add(g * 64).cast()) };
                for (r, s) in sum.iter_mut().enumerate() {
                    let at = (first + r) * k + b * BLOCK + g * 4;
                    // SAFETY: `at + 4 <= m·k`: row first + r < m and the group lies inside its block.
                    let a = unsafe { acts.q.as_ptr().add(at).cast::<i32>().read_unaligned() };
                    *s = _mm512_dpbusd_epi32(*s, wq, _mm512_set1_epi32(a));
                }
            }
            let d = unsafe { _mm512_load_ps(tb.d.as_ptr()) };
            for (r, (s, a)) in sum.iter().zip(acc.iter_mut()).enumerate() {
                let blk = (first + r) * kb + b;
                let s = _mm512_sub_epi32(*s, _mm512_set1_epi32(128 * acts.sum[blk]));
                let scale = _mm512_mul_ps(d, _mm512_set1_ps(acts.d[blk]));
                *a = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s), scale, *a);
            }
        }
        for (r, a) in acc.iter().enumerate() {
            // SAFETY: row first + r < m, columns t·16..t·16+16 < n (the caller's contract).
            unsafe { _mm512_storeu_ps(out.add((first + r) * w.n + t * TILE), *a) };
        }
    }
}

/// `x (.., k) · wᵀ` through a packed weight, as a candle op (inference only: no backward).
pub(crate) struct Q8Linear<'a>(pub &'a PackedQ8);

impl CustomOp1 for Q8Linear<'_> {
    fn name(&self) -> &'static str {
        "q8-linear"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let w = self.0;
        let dims = l.dims();
        if dims.last() != Some(&w.k) {
            bail!("q8-linear: input {dims:?} is not {} wide", w.k)
        }
        let (CpuStorage::F32(x), Some((from, to))) = (s, l.contiguous_offsets()) else {
            bail!("q8-linear: needs a contiguous f32 input")
        };
        let m = (to - from) / w.k;
        let mut shape = dims.to_vec();
        *shape.last_mut().expect("a width") = w.n;
        Ok((CpuStorage::F32(w.matmul(&x[from..to], m)), shape.into()))
    }
}

impl PackedQ8 {
    /// x (.., k) f32 on the CPU → (.., n).
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        x.contiguous()?.apply_op1_no_bwd(&Q8Linear(self))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(n: usize, seed: u32) -> Vec<f32> {
        // A small deterministic spread of magnitudes and signs, some blocks all zero.
        (0..n)
            .map(|i| {
                let h = (i as u32).wrapping_mul(2654435761).wrapping_add(seed) >> 8;
                let v = (h % 2001) as f32 / 1000.0 - 1.0;
                if (i / BLOCK) % 7 == 3 {
                    0.0
                } else {
                    v * (1 + i % 5) as f32
                }
            })
            .collect()
    }

    #[test]
    fn packed_product_is_close_to_the_f32_product() {
        let (n, k, m) = (48, 96, 5);
        let (w, x) = (values(n * k, 1), values(m * k, 2));
        let got = PackedQ8::pack(&w, n, k).matmul_reference(&x, m);
        for i in 0..m {
            for j in 0..n {
                let exact: f32 = (0..k).map(|c| x[i * k + c] * w[j * k + c]).sum();
                let size: f32 = (0..k).map(|c| (x[i * k + c] * w[j * k + c]).abs()).sum();
                let err = (got[i * n + j] - exact).abs();
                assert!(
                    err <= 0.02 * size + 1e-6,
                    "({i}, {j}): {} vs {exact}",
                    got[i * n + j]
                );
            }
        }
    }

    #[test]
    fn kernel_equals_the_reference_bit_for_bit() {
        if !PackedQ8::available() {
            eprintln!("no AVX-512 VNNI on this CPU: the kernel is not run");
            return;
        }
        // Every remainder of rows (1 to 4 per pass) and more than one tile and block.
        for m in 1..=9 {
            let (n, k) = (64, 576);
            let w = PackedQ8::pack(&values(n * k, 3), n, k);
            let x = values(m * k, 4 + m as u32);
            assert_eq!(w.matmul(&x, m), w.matmul_reference(&x, m), "{m} rows");
        }
        // Enough tiles to be split among threads where rayon has more than one.
        let (n, k, m) = (512, 64, 6);
        let w = PackedQ8::pack(&values(n * k, 5), n, k);
        let x = values(m * k, 6);
        assert_eq!(w.matmul(&x, m), w.matmul_reference(&x, m), "{n} columns");
    }

    #[test]
    fn only_whole_tiles_and_blocks_fit() {
        assert!(PackedQ8::fits(576, 576));
        assert!(PackedQ8::fits(49152, 576));
        assert!(!PackedQ8::fits(8, 576));
        assert!(!PackedQ8::fits(64, 100));
        assert!(!PackedQ8::fits(0, 32));
    }
}
