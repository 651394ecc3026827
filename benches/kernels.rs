//! CPU kernel benchmarks: sgemm on the shapes a cnn-s training step runs
//! (batch 128), conv2d forward/backward for both conv layers, and the fused
//! KD loss against the unfused composition.
//!
//! `cargo bench --bench kernels` (filter: `cargo bench --bench kernels -- fc1`).
//! Thread counts are left to the environment (`MATMUL_NUM_THREADS`,
//! `RAYON_NUM_THREADS`). Besides criterion's report, every benchmark prints
//! one `summary` line with the median time and GFLOP/s (GB/s for the KD
//! loss); `benches/numpy_sgemm.py` prints the same lines for numpy, and
//! benches/README.md shows how to compute the ratios.

use criterion::measurement::WallTime;
use criterion::{criterion_group, criterion_main, BenchmarkGroup, Criterion, SamplingMode, Throughput};
use lwf_engine::backend::cpu::naive;
use lwf_engine::backend::{Backend, Conv2dParams, Gemm, PoolParams};
use lwf_engine::rng::Rng;
use lwf_engine::CpuBackend;
use std::hint::black_box;
use std::time::Duration;

mod common;
use common::{bench, SAMPLES};

/// The sgemm shapes, named after the step that runs them. `_img` shapes are
/// the per-image gemms of the CPU backend's im2col convolution (run once per
/// image, 128 times a step); `_batch` the same work as one gemm over the
/// whole batch; `_im2col` the batch gemm in PyTorch's orientation
/// (`cols (N·OH·OW, C·KH·KW) · Wᵀ`), the shapes PyTorch's CPU convolution runs.
const SGEMM_SHAPES: &[(&str, usize, usize, usize, bool, bool)] = &[
    // name, m, n, k, trans_a, trans_b  (C[m,n] = op(A)[m,k] · op(B)[k,n])
    ("fc1_fwd", 128, 256, 3136, false, true),       // y = x · Wᵀ
    ("fc1_dW", 256, 3136, 128, true, false),        // dW = dyᵀ · x
    ("fc1_dX", 128, 3136, 256, false, false),       // dx = dy · W
    ("head_fwd", 128, 5, 256, false, true),         //
    ("head_dW", 5, 256, 128, true, false),          //
    ("head_dX", 128, 256, 5, false, false),         //
    ("conv1_fwd_img", 32, 784, 9, false, false),    // y_n = W · cols_n
    ("conv1_dcols_img", 9, 784, 32, true, false),   // dcols_n = Wᵀ · dy_n
    ("conv1_dW_img", 32, 9, 784, false, true),      // dW += dy_n · cols_nᵀ
    ("conv2_fwd_img", 64, 196, 288, false, false),  //
    ("conv2_dcols_img", 288, 196, 64, true, false), //
    ("conv2_dW_img", 64, 288, 196, false, true),    //
    ("conv1_fwd_batch", 32, 100352, 9, false, false),
    ("conv2_fwd_batch", 64, 25088, 288, false, false),
    ("conv1_im2col", 100352, 32, 9, false, false),
    ("conv2_im2col", 25088, 64, 288, false, false),
    ("square_1024", 1024, 1024, 1024, false, false),
];

/// The summary line; numpy_sgemm.py prints the same format.
fn summary(key: &str, shape: &str, secs: f64, rate: f64, unit: &str) {
    println!("summary {key:<26} {shape:<22} {:>10.4} ms {rate:>9.2} {unit}", secs * 1e3);
}

fn group<'a>(c: &'a mut Criterion, name: &str) -> BenchmarkGroup<'a, WallTime> {
    let mut g = c.benchmark_group(name);
    g.sampling_mode(SamplingMode::Flat);
    g
}

fn random(rng: &mut Rng, n: usize) -> Vec<f32> {
    (0..n).map(|_| rng.uniform(-1.0, 1.0)).collect()
}

fn sgemm(c: &mut Criterion) {
    let b = CpuBackend::new();
    let mut rng = Rng::new(0);
    eprintln!(
        "backend: {}; MATMUL_NUM_THREADS={:?} RAYON_NUM_THREADS={:?}",
        b.name(),
        std::env::var("MATMUL_NUM_THREADS").ok(),
        std::env::var("RAYON_NUM_THREADS").ok()
    );
    let mut g = group(c, "sgemm");
    for &(name, m, n, k, ta, tb) in SGEMM_SHAPES {
        let gm = Gemm::nn(m, n, k).trans(ta, tb);
        let (a, bm) = (b.upload(&random(&mut rng, m * k)), b.upload(&random(&mut rng, k * n)));
        let mut out = b.zeros(m * n);
        g.throughput(Throughput::Elements(gm.flops() as u64));
        let t = bench(&mut g, name, || b.sgemm(black_box(&mut out), black_box(&a), black_box(&bm), gm));
        if let Some(t) = t {
            let shape = format!("{m}x{n}x{k} {}{}", if ta { 'T' } else { 'N' }, if tb { 'T' } else { 'N' });
            summary(&format!("sgemm/{name}"), &shape, t, gm.flops() / t / 1e9, "GFLOP/s");
        }
    }
    g.finish();
}

/// Both convolution layers of cnn-s, every pass, on the default backend
/// (direct for conv1's forward and dW, Winograd for conv2) and on the
/// im2col-only one; GFLOP/s counts the direct
/// convolution's FLOPs on both, so the figures compare as speeds.
fn conv2d(c: &mut Criterion) {
    let mut rng = Rng::new(1);
    let mut g = group(c, "conv2d");
    let layers = [
        (
            "conv1",
            Conv2dParams { n: 128, c: 1, h: 28, w: 28, oc: 32, kh: 3, kw: 3, sh: 1, sw: 1, ph: 1, pw: 1 },
        ),
        (
            "conv2",
            Conv2dParams { n: 128, c: 32, h: 14, w: 14, oc: 64, kh: 3, kw: 3, sh: 1, sw: 1, ph: 1, pw: 1 },
        ),
    ];
    for (layer, p) in layers {
        let paths =
            [(layer.to_string(), CpuBackend::new()), (format!("{layer}_im2col"), CpuBackend::im2col_only())];
        let mut medians = Vec::new();
        for (name, b) in paths {
            let x = b.upload(&random(&mut rng, p.x_len()));
            let w = b.upload(&random(&mut rng, p.w_len()));
            let dy = b.upload(&random(&mut rng, p.y_len()));
            let (mut y, mut dx, mut dw) = (b.zeros(p.y_len()), b.zeros(p.x_len()), b.zeros(p.w_len()));
            let shape = format!("{}x{}x{}x{}->{}", p.n, p.c, p.h, p.w, p.oc);
            g.throughput(Throughput::Elements(p.flops() as u64));
            let report = |what: &str, t: Option<f64>| {
                if let Some(t) = t {
                    summary(&format!("conv2d/{name}_{what}"), &shape, t, p.flops() / t / 1e9, "GFLOP/s");
                }
                t
            };
            let fwd = report(
                "fwd",
                bench(&mut g, &format!("{name}_fwd"), || b.conv2d_fwd(black_box(&mut y), &x, &w, &p)),
            );
            // The trainer's forward: bias and 2×2 max pooling fused in.
            let (ph, pw) = (p.oh() / 2, p.ow() / 2);
            let (mut pooled, mut argmax) = (b.zeros(p.n * p.oc * ph * pw), b.zeros_idx(p.n * p.oc * ph * pw));
            let bias = b.upload(&random(&mut rng, p.oc));
            let pool = PoolParams { n: p.n, c: p.oc, h: p.oh(), w: p.ow(), k: 2, s: 2, pad: 0 };
            report(
                "fwd_pool",
                bench(&mut g, &format!("{name}_fwd_pool"), || {
                    b.conv2d_bias_maxpool_fwd(
                        black_box(&mut pooled),
                        &mut argmax,
                        &mut y,
                        &x,
                        &w,
                        &bias,
                        &p,
                        &pool,
                    )
                }),
            );
            let data = report(
                "bwd_data",
                bench(&mut g, &format!("{name}_bwd_data"), || {
                    b.conv2d_bwd_data(black_box(&mut dx), &dy, &w, &p)
                }),
            );
            let weight = report(
                "bwd_weight",
                bench(&mut g, &format!("{name}_bwd_weight"), || {
                    b.conv2d_bwd_weight(black_box(&mut dw), &x, &dy, &p)
                }),
            );
            medians.push([fwd, data, weight]);
        }
        if let [wino, plain] = medians[..] {
            for (i, what) in ["fwd", "bwd_data", "bwd_weight"].iter().enumerate() {
                if let (Some(a), Some(b)) = (wino[i], plain[i]) {
                    println!("summary conv2d/{layer}_{what} speedup default path vs im2col: {:.2}x", b / a);
                }
            }
        }
    }
    g.finish();
}

fn kd_loss(c: &mut Criterion) {
    let b = CpuBackend::new();
    let mut rng = Rng::new(2);
    let (rows, cols, t) = (128, 1000, 2.0);
    let scale = 1.0 / rows as f32;
    let (zs_h, zt_h) = (random(&mut rng, rows * cols), random(&mut rng, rows * cols));
    let (zs, zt) = (b.upload(&zs_h), b.upload(&zt_h));
    let (mut dz, mut loss) = (b.zeros(rows * cols), b.zeros(1));
    // Bytes a single pass must move: read zs and zt, read-modify-write dz.
    let bytes = (4 * rows * cols * 4) as f64;
    let mut g = group(c, "kd_loss");
    g.throughput(Throughput::Bytes(bytes as u64));
    let shape = format!("{rows}x{cols} T={t}");
    let fused = bench(&mut g, "fused", || {
        b.kd_loss(black_box(&mut dz), black_box(&mut loss), &zs, &zt, rows, cols, cols, t, scale)
    });
    let unfused = bench(&mut g, "unfused", || {
        black_box(naive::kd_loss(black_box(&zs_h), black_box(&zt_h), rows, cols, t, scale));
    });
    for (what, tm) in [("fused", fused), ("unfused", unfused)] {
        if let Some(tm) = tm {
            summary(&format!("kd_loss/{what}"), &shape, tm, bytes / tm / 1e9, "GB/s");
        }
    }
    if let (Some(f), Some(u)) = (fused, unfused) {
        println!("summary kd_loss/speedup fused vs unfused: {:.2}x", u / f);
    }
    g.finish();
}

fn config() -> Criterion {
    Criterion::default()
        .sample_size(SAMPLES)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
}

criterion_group! {
    name = benches;
    config = config();
    targets = sgemm, conv2d, kd_loss
}
criterion_main!(benches);
