//! Batch normalisation and global average pooling, forward and backward
//! side by side. Both reduce each channel (or plane) of an `(N, C, HW)`
//! tensor; the sums run in f64, in a fixed order (images, then positions),
//! so a seed gives the same numbers whatever the thread count.
//!
//! Channels run in parallel for the reductions (a channel's values are `N`
//! strided planes); the elementwise passes run over planes in parallel.

use super::BnParams;
use rayon::prelude::*;

/// Planes per rayon task: small planes (a 1×1 or 2×2 map late in a ResNet)
/// are grouped so a task does a few thousand values' work.
fn planes_per_task(hw: usize) -> usize {
    (4096 / hw.max(1)).max(1)
}

/// The planes of channel `c` in `x: (N, C, HW)`, image by image.
fn channel_planes<'a>(x: &'a [f32], p: &'a BnParams, c: usize) -> impl Iterator<Item = &'a [f32]> + 'a {
    (0..p.n).map(move |n| &x[(n * p.c + c) * p.hw..(n * p.c + c + 1) * p.hw])
}

/// `mean[c]`, biased `var[c]` of every channel (two passes: the mean, then
/// the squared deviations from it, which keeps the variance exact where
/// `E[x²] − E[x]²` would cancel).
pub fn stats(mean: &mut [f32], var: &mut [f32], x: &[f32], p: &BnParams) {
    let m = p.count() as f64;
    mean[..p.c].par_iter_mut().zip(var[..p.c].par_iter_mut()).enumerate().for_each(|(c, (mu, v))| {
        let s: f64 = channel_planes(x, p, c).map(|pl| pl.iter().map(|&a| a as f64).sum::<f64>()).sum();
        let mu64 = s / m;
        let ss: f64 = channel_planes(x, p, c)
            .map(|pl| pl.iter().map(|&a| (a as f64 - mu64) * (a as f64 - mu64)).sum::<f64>())
            .sum();
        *mu = mu64 as f32;
        *v = (ss / m) as f32;
    });
}

/// Per channel, the affine map the normalisation reduces to:
/// `y = x·scale + shift` with `scale = γ/σ`, `shift = β − mean·γ/σ`.
fn affine(mean: &[f32], var: &[f32], gamma: &[f32], beta: &[f32], p: &BnParams) -> Vec<(f32, f32)> {
    (0..p.c)
        .map(|c| {
            let inv = 1.0 / (var[c] + p.eps).sqrt();
            let scale = gamma[c] * inv;
            (scale, beta[c] - mean[c] * scale)
        })
        .collect()
}

/// `y = (x − mean) / σ · γ + β`, planes in parallel.
pub fn fwd(y: &mut [f32], x: &[f32], mean: &[f32], var: &[f32], gamma: &[f32], beta: &[f32], p: &BnParams) {
    let ab = affine(mean, var, gamma, beta, p);
    let tasks = y[..p.x_len()].par_chunks_mut(p.hw).zip(x.par_chunks(p.hw)).enumerate();
    tasks.with_min_len(planes_per_task(p.hw)).for_each(|(plane, (yp, xp))| {
        let (a, b) = ab[plane % p.c];
        yp.iter_mut().zip(xp).for_each(|(y, &x)| *y = x * a + b);
    });
}

/// See `Backend::batchnorm_bwd`.
#[allow(clippy::too_many_arguments)]
pub fn bwd(
    dx: Option<&mut [f32]>,
    dgamma: Option<&mut [f32]>,
    dbeta: Option<&mut [f32]>,
    sums: &mut [f32],
    x: &[f32],
    dy: &[f32],
    mean: &[f32],
    var: &[f32],
    gamma: &[f32],
    p: &BnParams,
    batch_stats: bool,
) {
    let inv: Vec<f32> = (0..p.c).map(|c| 1.0 / (var[c] + p.eps).sqrt()).collect();
    let (s1, s2) = sums[..2 * p.c].split_at_mut(p.c);
    s1.par_iter_mut().zip(s2.par_iter_mut()).enumerate().for_each(|(c, (a, b))| {
        let (mu, is) = (mean[c] as f64, inv[c] as f64);
        let (mut sd, mut sdx) = (0f64, 0f64);
        for (xp, gp) in channel_planes(x, p, c).zip(channel_planes(dy, p, c)) {
            for (&xv, &g) in xp.iter().zip(gp) {
                sd += g as f64;
                sdx += g as f64 * (xv as f64 - mu) * is;
            }
        }
        *a = sd as f32;
        *b = sdx as f32;
    });
    if let Some(db) = dbeta {
        db[..p.c].iter_mut().zip(s1.iter()).for_each(|(d, s)| *d += s);
    }
    if let Some(dg) = dgamma {
        dg[..p.c].iter_mut().zip(s2.iter()).for_each(|(d, s)| *d += s);
    }
    let Some(dx) = dx else { return };
    let m = p.count() as f32;
    let (s1, s2) = (&*s1, &*s2);
    let tasks =
        dx[..p.x_len()].par_chunks_mut(p.hw).zip(x.par_chunks(p.hw)).zip(dy.par_chunks(p.hw)).enumerate();
    tasks.with_min_len(planes_per_task(p.hw)).for_each(|(plane, ((dxp, xp), gp))| {
        let c = plane % p.c;
        let k = gamma[c] * inv[c];
        if batch_stats {
            // dx = γ/σ · (dy − S₁/M − x̂·S₂/M), x̂ = (x − mean)/σ.
            let (mu, is) = (mean[c], inv[c]);
            let (a, b) = (s1[c] / m, s2[c] / m);
            for ((d, &xv), &g) in dxp.iter_mut().zip(xp).zip(gp) {
                *d += k * (g - a - (xv - mu) * is * b);
            }
        } else {
            dxp.iter_mut().zip(gp).for_each(|(d, &g)| *d += k * g);
        }
    });
}

/// `y[r] = mean of x[r, ..inner]`.
pub fn avgpool_fwd(y: &mut [f32], x: &[f32], rows: usize, inner: usize) {
    let tasks = y[..rows].par_iter_mut().zip(x[..rows * inner].par_chunks(inner));
    tasks.with_min_len(planes_per_task(inner)).for_each(|(y, xr)| {
        *y = (xr.iter().map(|&v| v as f64).sum::<f64>() / inner as f64) as f32;
    });
}

/// `dx[r, i] += dy[r] / inner`.
pub fn avgpool_bwd(dx: &mut [f32], dy: &[f32], rows: usize, inner: usize) {
    let k = 1.0 / inner as f32;
    let tasks = dx[..rows * inner].par_chunks_mut(inner).zip(&dy[..rows]);
    tasks.with_min_len(planes_per_task(inner)).for_each(|(d, &g)| {
        let v = g * k;
        d.iter_mut().for_each(|d| *d += v);
    });
}
