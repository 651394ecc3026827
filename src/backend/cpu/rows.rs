//! Row kernels over a batch of logits: the fused softmax cross-entropy and
//! distillation (KD) losses with their gradients, the row-wise argmax, and
//! what they are built from: a vectorisable [`exp_fast`], row maxima, and
//! sums in 8 fixed lanes.
//!
//! Each loss is fused per row (maxima, exponentials, sums and gradient
//! while the row sits in L1) instead of the framework-style chain of
//! softmax, log-softmax and product that `naive` keeps as the reference.
//! Sums go through fixed lanes in a fixed order, and per-row results come
//! back in row order, so every number is the same whatever the thread count.

use super::super::IGNORE_LABEL;
use rayon::prelude::*;
use std::cell::RefCell;

/// A fast `exp` for f32 that the compiler can vectorise: range reduction to
/// `2^n · e^r`, |r| ≤ ln2/2, and a degree-6 polynomial (max rel. error 2.7e-7
/// over the whole range, measured exhaustively in tests/losses.rs). Rounding
/// uses the 1.5·2^23 trick instead of `round()` (a libm call per lane), and
/// `2^n` is built from the same bits. Inputs below −87 give ~1e-38, not 0.
#[inline(always)]
pub fn exp_fast(x: f32) -> f32 {
    let x = x.clamp(-87.0, 88.0);
    let t = x * std::f32::consts::LOG2_E + 12_582_912.0;
    let n = t - 12_582_912.0;
    let r = x - n * 0.693_145_75 - n * 1.428_606_8e-6;
    let p = 1.0
        + r * (1.0
            + r * (0.5 + r * (0.166_666_67 + r * (0.041_666_52 + r * (0.008_333_68 + r * 0.001_394_1)))));
    p * f32::from_bits(t.to_bits().wrapping_sub(0x4B40_0000 - 127) << 23)
}

/// Max of a non-empty slice (starts from the first element, never a sentinel).
fn row_max(xs: &[f32]) -> f32 {
    xs.iter().fold(xs[0], |m, &v| m.max(v))
}

/// Softmax cross-entropy of `rows` rows of `cols` logits against `labels`
/// (rows labelled `IGNORE_LABEL` skipped): adds `scale · (softmax(z) −
/// onehot(y))` into `dlogits` and returns `Σ −log softmax(z)_y`.
pub fn softmax_xent(
    dlogits: &mut [f32],
    logits: &[f32],
    labels: &[u32],
    rows: usize,
    cols: usize,
    scale: f32,
) -> f64 {
    let mut total = 0.0f64;
    for r in 0..rows {
        let y = labels[r];
        if y == IGNORE_LABEL {
            continue;
        }
        assert!((y as usize) < cols, "softmax_xent: label {y} out of range for {cols} classes");
        let z = &logits[r * cols..(r + 1) * cols];
        let dz = &mut dlogits[r * cols..(r + 1) * cols];
        let m = row_max(z);
        let mut sum = 0.0f32;
        for &v in z {
            sum += exp_fast(v - m);
        }
        let inv = 1.0 / sum;
        for (d, &v) in dz.iter_mut().zip(z) {
            *d += scale * exp_fast(v - m) * inv;
        }
        dz[y as usize] -= scale;
        // −log softmax(z)_y = log Σ exp(z − m) − (z_y − m)
        total += (sum.ln() - (z[y as usize] - m)) as f64;
    }
    total
}

/// The distillation loss of `rows` student rows (`ld` apart in `zs` and
/// `dzs`) against teacher rows (`cols` apart in `zt`) at temperature `t`:
/// adds the gradient into `dzs` and returns `Σ_rows −Σ p log q`. Rows run in
/// parallel, [`kd_row`] each; the per-row losses are summed in row order.
#[allow(clippy::too_many_arguments)]
pub fn kd_loss(
    dzs: &mut [f32],
    zs: &[f32],
    zt: &[f32],
    rows: usize,
    cols: usize,
    ld: usize,
    t: f32,
    scale: f32,
) -> f64 {
    let inv_t = 1.0 / t;
    let gscale = scale * inv_t;
    let rows_loss: Vec<f64> = dzs[..rows * ld]
        .par_chunks_mut(ld)
        .enumerate()
        .with_min_len(64)
        .map(|(r, dz)| {
            let s = &zs[r * ld..r * ld + cols];
            let tt = &zt[r * cols..(r + 1) * cols];
            kd_row(&mut dz[..cols], s, tt, inv_t, gscale)
        })
        .collect();
    rows_loss.iter().sum::<f64>()
}

/// One row of the fused KD loss: returns `−Σ p log q` and adds
/// `gscale · (q − p)` into `dz`. Three passes over the row, all in L1:
/// maxima; the exponentials (kept in a per-thread scratch row) with their
/// sums and `Σ p·s`; the gradient update.
#[inline]
fn kd_row(dz: &mut [f32], s: &[f32], t: &[f32], inv_t: f32, gscale: f32) -> f64 {
    let n = s.len();
    let ms = row_max(s) * inv_t;
    let mt = row_max(t) * inv_t;
    KD_ROW.with(|row| {
        let mut row = row.borrow_mut();
        if row.len() < 2 * n {
            row.resize(2 * n, 0.0);
        }
        let (es, et) = row[..2 * n].split_at_mut(n);
        for i in 0..n {
            es[i] = exp_fast(s[i] * inv_t - ms);
            et[i] = exp_fast(t[i] * inv_t - mt);
        }
        // −Σ p_i log q_i with log q_i = (s_i/T − ms) − ln Σes and Σ p_i = 1,
        // so only Σes, Σet and Σ et·s are needed (8 lanes each, fixed order).
        let (ss, st) = (lane_total(es), lane_total(et));
        let mut dot = [0.0f32; LANES];
        for (e8, s8) in et.chunks(LANES).zip(s.chunks(LANES)) {
            for (l, (&e, &v)) in e8.iter().zip(s8).enumerate() {
                dot[l] += e * (v * inv_t - ms);
            }
        }
        let (iss, ist) = (1.0 / ss, 1.0 / st);
        for ((d, &q), &p) in dz.iter_mut().zip(es.iter()).zip(et.iter()) {
            *d += gscale * (q * iss - p * ist);
        }
        (ss.ln() - lane_sum(&dot) * ist) as f64
    })
}

thread_local! {
    /// Exponentials of one KD row (student, teacher), reused across calls.
    static KD_ROW: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

const LANES: usize = 8;

/// Sum of per-lane partial sums, in lane order.
#[inline(always)]
fn lane_sum(x: &[f32; LANES]) -> f32 {
    ((x[0] + x[1]) + (x[2] + x[3])) + ((x[4] + x[5]) + (x[6] + x[7]))
}

/// Sum of a slice in 8 lanes (vectorisable, deterministic).
#[inline(always)]
pub fn lane_total(xs: &[f32]) -> f32 {
    let mut acc = [0.0f32; LANES];
    let chunks = xs.chunks_exact(LANES);
    let rem = chunks.remainder();
    for c in chunks {
        for l in 0..LANES {
            acc[l] += c[l];
        }
    }
    for (l, &v) in rem.iter().enumerate() {
        acc[l] += v;
    }
    lane_sum(&acc)
}

/// The maximum of each of `rows` rows of `cols` values into `vals`, its
/// column into `idx` (the first one on ties).
pub fn max_rows(vals: &mut [f32], idx: &mut [u32], x: &[f32], rows: usize, cols: usize) {
    for r in 0..rows {
        let z = &x[r * cols..(r + 1) * cols];
        let mut best = 0;
        for (i, &v) in z.iter().enumerate() {
            if v > z[best] {
                best = i;
            }
        }
        vals[r] = z[best];
        idx[r] = best as u32;
    }
}
