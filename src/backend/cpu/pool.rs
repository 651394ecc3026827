//! Max pooling, forward and backward, and the 2×2 window kernel that every
//! 2×2 pooling of the CPU backend goes through, plain or fused into the
//! Winograd and direct convolutions (they call [`pool_rows`] and [`max4`]
//! on rows they have just written, while those sit in L1).
//!
//! Planes run in parallel. The 2×2 / stride-2 case, the only one the nets
//! use, is compiled for AVX2 (`with_simd!`) with selects instead of
//! branches so its loops vectorise; other windows take a plain scan. Ties
//! keep the first maximum in scan order either way, so every path records
//! the same argmax, and the backward pass scatters through it.

use super::PoolParams;
use rayon::prelude::*;

/// `y = maxpool(x)` with each window's offset within its plane in `am`,
/// planes in parallel.
pub fn fwd(y: &mut [f32], am: &mut [u32], x: &[f32], p: &PoolParams) {
    let (oh, ow, hw) = (p.oh(), p.ow(), p.h * p.w);
    let y = &mut y[..p.y_len()];
    let am = &mut am[..p.y_len()];
    y.par_chunks_mut(oh * ow).zip(am.par_chunks_mut(oh * ow)).zip(x.par_chunks(hw)).for_each(
        |((y_p, a_p), x_p)| {
            if p.k == 2 && p.s == 2 && p.pad == 0 {
                return with_simd!(pool_2x2(y_p, a_p, x_p, p.w, oh, ow));
            }
            for oy in 0..oh {
                // The window's rows and columns clipped to the plane: padding
                // cells are −∞ and never win, so they are simply not scanned.
                let (ys, ye) = window(oy, p.s, p.pad, p.k, p.h);
                for ox in 0..ow {
                    let (xs, xe) = window(ox, p.s, p.pad, p.k, p.w);
                    let mut best = ys * p.w + xs;
                    for iy in ys..ye {
                        for ix in xs..xe {
                            let i = iy * p.w + ix;
                            if x_p[i] > x_p[best] {
                                best = i;
                            }
                        }
                    }
                    y_p[oy * ow + ox] = x_p[best];
                    a_p[oy * ow + ox] = best as u32;
                }
            }
        },
    );
}

/// The input cells `start..end` along one axis (of length `len`) that the
/// window of output cell `o` covers: `o·s − pad .. o·s − pad + k`, clipped.
/// Never empty while `pad < k`.
fn window(o: usize, s: usize, pad: usize, k: usize, len: usize) -> (usize, usize) {
    let start = (o * s).saturating_sub(pad);
    let end = (o * s + k).saturating_sub(pad).min(len);
    (start, end)
}

/// `dx[argmax] += dy` plane by plane, in parallel, each plane of `dx` first
/// handed to `prepare`.
pub fn bwd(dx: &mut [f32], dy: &[f32], argmax: &[u32], p: &PoolParams, prepare: impl Fn(&mut [f32]) + Sync) {
    let (ohw, hw) = (p.oh() * p.ow(), p.h * p.w);
    dx[..p.x_len()]
        .par_chunks_mut(hw)
        .zip(dy[..p.y_len()].par_chunks(ohw))
        .zip(argmax[..p.y_len()].par_chunks(ohw))
        .for_each(|((dx_p, dy_p), a_p)| {
            prepare(dx_p);
            for (g, &i) in dy_p.iter().zip(a_p) {
                dx_p[i as usize] += g;
            }
        });
}

/// The maximum of a 2×2 window `a b / c d` and its offset among
/// `[0, 1, w, w + 1]` (`w`: the plane's row length). Strict `>` keeps the
/// first maximum in scan order, as a sequential scan would; selects instead
/// of branches, so loops over windows vectorise. Every 2×2 pooling of the CPU
/// backend (plain, and fused into the convolutions) goes through this.
#[inline(always)]
pub fn max4(a: f32, b: f32, c: f32, d: f32, w: u32) -> (f32, u32) {
    let (v_top, k_top) = if b > a { (b, 1) } else { (a, 0) };
    let (v_bot, k_bot) = if d > c { (d, w + 1) } else { (c, w) };
    if v_bot > v_top {
        (v_bot, k_bot)
    } else {
        (v_top, k_top)
    }
}

/// One output row of 2×2 / stride-2 max pooling from the input rows `top`
/// and `bot` of a plane `w` wide, `top` starting at plane offset `base`.
#[inline(always)]
pub fn pool_rows(yr: &mut [f32], ar: &mut [u32], top: &[f32], bot: &[f32], w: usize, base: usize) {
    let n = yr.len();
    let (top, bot, ar) = (&top[..2 * n], &bot[..2 * n], &mut ar[..n]);
    for ox in 0..n {
        let (v, k) = max4(top[2 * ox], top[2 * ox + 1], bot[2 * ox], bot[2 * ox + 1], w as u32);
        yr[ox] = v;
        ar[ox] = (base + 2 * ox) as u32 + k;
    }
}

/// 2×2 stride-2 max pooling of one plane.
#[inline(always)]
fn pool_2x2(y: &mut [f32], am: &mut [u32], x: &[f32], w: usize, oh: usize, ow: usize) {
    for oy in 0..oh {
        let (r0, r1) = (2 * oy * w, (2 * oy + 1) * w);
        let (yr, ar) = (&mut y[oy * ow..(oy + 1) * ow], &mut am[oy * ow..(oy + 1) * ow]);
        pool_rows(yr, ar, &x[r0..r0 + 2 * ow], &x[r1..r1 + 2 * ow], w, r0);
    }
}
