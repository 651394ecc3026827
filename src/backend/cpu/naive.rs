//! Plain, obviously-correct reference kernels (llm.c's `*_naive`): the fast
//! CPU kernels are tested against these, and the GPU against the fast CPU.
//!
//! Written for clarity, not speed: loops straight from the definitions,
//! most sums in f64, and the losses composed the way a framework would
//! (softmax, log-softmax, product) rather than fused, so they check the
//! fused kernels' algebra as well as their arithmetic.

use super::super::{Conv2dParams, Gemm, IGNORE_LABEL};

pub fn sgemm(c: &mut [f32], a: &[f32], b: &[f32], g: Gemm) {
    for i in 0..g.m {
        for j in 0..g.n {
            let mut s = 0.0f64;
            for p in 0..g.k {
                let av = if g.trans_a { a[p * g.m + i] } else { a[i * g.k + p] };
                let bv = if g.trans_b { b[j * g.k + p] } else { b[p * g.n + j] };
                s += av as f64 * bv as f64;
            }
            let old = if g.beta == 0.0 { 0.0 } else { g.beta * c[i * g.n + j] };
            c[i * g.n + j] = g.alpha * s as f32 + old;
        }
    }
}

/// Direct 7-loop convolution, `y = conv(x, w)`.
pub fn conv2d(x: &[f32], w: &[f32], p: &Conv2dParams) -> Vec<f32> {
    let (oh, ow) = (p.oh(), p.ow());
    let mut y = vec![0.0; p.y_len()];
    for n in 0..p.n {
        for o in 0..p.oc {
            for oy in 0..oh {
                for ox in 0..ow {
                    let mut s = 0.0f64;
                    for c in 0..p.c {
                        for ki in 0..p.kh {
                            for kj in 0..p.kw {
                                let iy = (oy * p.sh + ki) as isize - p.ph as isize;
                                let ix = (ox * p.sw + kj) as isize - p.pw as isize;
                                if iy < 0 || ix < 0 || iy >= p.h as isize || ix >= p.w as isize {
                                    continue;
                                }
                                let xv = x[((n * p.c + c) * p.h + iy as usize) * p.w + ix as usize];
                                let wv = w[((o * p.c + c) * p.kh + ki) * p.kw + kj];
                                s += xv as f64 * wv as f64;
                            }
                        }
                    }
                    y[((n * p.oc + o) * oh + oy) * ow + ox] = s as f32;
                }
            }
        }
    }
    y
}

/// `dx += ∂⟨conv(x, w), dy⟩/∂x`, straight from the definition (f64 sums).
pub fn conv2d_bwd_data(dx: &mut [f32], dy: &[f32], w: &[f32], p: &Conv2dParams) {
    let mut acc = vec![0.0f64; p.x_len()];
    conv_taps(p, |xi, wi, yi| acc[xi] += w[wi] as f64 * dy[yi] as f64);
    dx.iter_mut().zip(&acc).for_each(|(d, a)| *d += *a as f32);
}

/// `dw += ∂⟨conv(x, w), dy⟩/∂w`, straight from the definition (f64 sums).
pub fn conv2d_bwd_weight(dw: &mut [f32], x: &[f32], dy: &[f32], p: &Conv2dParams) {
    let mut acc = vec![0.0f64; p.w_len()];
    conv_taps(p, |xi, wi, yi| acc[wi] += x[xi] as f64 * dy[yi] as f64);
    dw.iter_mut().zip(&acc).for_each(|(d, a)| *d += *a as f32);
}

/// Every (input, weight, output) index triple of a convolution that meets
/// the image (padding skipped).
fn conv_taps(p: &Conv2dParams, mut f: impl FnMut(usize, usize, usize)) {
    let (oh, ow) = (p.oh(), p.ow());
    for n in 0..p.n {
        for o in 0..p.oc {
            for oy in 0..oh {
                for ox in 0..ow {
                    let yi = ((n * p.oc + o) * oh + oy) * ow + ox;
                    for c in 0..p.c {
                        for ki in 0..p.kh {
                            for kj in 0..p.kw {
                                let iy = (oy * p.sh + ki) as isize - p.ph as isize;
                                let ix = (ox * p.sw + kj) as isize - p.pw as isize;
                                if iy < 0 || ix < 0 || iy >= p.h as isize || ix >= p.w as isize {
                                    continue;
                                }
                                let xi = ((n * p.c + c) * p.h + iy as usize) * p.w + ix as usize;
                                f(xi, ((o * p.c + c) * p.kh + ki) * p.kw + kj, yi);
                            }
                        }
                    }
                }
            }
        }
    }
}

/// Unfused distillation loss and gradient, written the way a framework
/// composes it: softmax(zt/T), log_softmax(zs/T), their product summed,
/// then softmax(zs/T) again for the gradient. Returns (loss, dzs).
pub fn kd_loss(zs: &[f32], zt: &[f32], rows: usize, cols: usize, t: f32, scale: f32) -> (f64, Vec<f32>) {
    let div = |z: &[f32]| z.iter().map(|v| v / t).collect::<Vec<f32>>();
    let softmax = |z: &[f32]| {
        let m = z.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
        let e: Vec<f32> = z.iter().map(|v| (v - m).exp()).collect();
        let s: f32 = e.iter().sum();
        e.iter().map(|v| v / s).collect::<Vec<f32>>()
    };
    let log_softmax = |z: &[f32]| {
        let m = z.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
        let s: f32 = z.iter().map(|v| (v - m).exp()).sum();
        z.iter().map(|v| v - m - s.ln()).collect::<Vec<f32>>()
    };
    let mut loss = 0.0f64;
    let mut grad = vec![0.0; rows * cols];
    for r in 0..rows {
        let s = div(&zs[r * cols..(r + 1) * cols]);
        let tt = div(&zt[r * cols..(r + 1) * cols]);
        let p = softmax(&tt);
        let lq = log_softmax(&s);
        let prod: Vec<f32> = p.iter().zip(&lq).map(|(a, b)| a * b).collect();
        loss -= prod.iter().map(|&v| v as f64).sum::<f64>();
        let q = softmax(&s);
        for i in 0..cols {
            grad[r * cols + i] = scale * (q[i] - p[i]) / t;
        }
    }
    (scale as f64 * loss, grad)
}

/// Unfused softmax cross-entropy. Returns (loss, dlogits).
pub fn softmax_xent(z: &[f32], labels: &[u32], rows: usize, cols: usize, scale: f32) -> (f64, Vec<f32>) {
    let mut loss = 0.0f64;
    let mut grad = vec![0.0; rows * cols];
    for r in 0..rows {
        if labels[r] == IGNORE_LABEL {
            continue;
        }
        let row: Vec<f64> = z[r * cols..(r + 1) * cols].iter().map(|&v| v as f64).collect();
        let m = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let s: f64 = row.iter().map(|v| (v - m).exp()).sum();
        let y = labels[r] as usize;
        loss += s.ln() - (row[y] - m);
        for i in 0..cols {
            let p = (row[i] - m).exp() / s;
            grad[r * cols + i] = scale * (p - if i == y { 1.0 } else { 0.0 }) as f32;
        }
    }
    (scale as f64 * loss, grad)
}
