//! Every `Backend` op on the wgpu backend against the CPU backend, on random
//! shapes (awkward sizes: not multiples of the tiles, several workgroups, a
//! 1-D dispatch of more than 65535 workgroups) and random values; extreme KD
//! logits; IGNORE_LABEL rows; accumulate semantics (every accumulating op is
//! called twice on pre-filled outputs); and whole training steps of cnn-s,
//! cnn-m and a small ResNet-20 (BatchNorm, residual adds, average pooling).
//!
//! These run for real on Mesa's software Vulkan (lavapipe). Without an
//! adapter they are skipped, each saying SKIPPED, unless `LWF_REQUIRE_GPU=1`
//! (CI's setting), which makes a missing adapter fail them.
//! Tolerances are `atol + rtol·|cpu|`, per test below.

#[path = "common/gpu.rs"]
mod gpu;

use gpu::{assert_close, check, check_both, close, gpu, gpu_tiled, rand_vec};
use lwf_engine::backend::wgpu::WgpuBackend;
use lwf_engine::backend::{
    Backend, BnParams, Conv2dParams, CpuBackend, Gemm, PoolParams, SgdHyper, IGNORE_LABEL,
};
use lwf_engine::nn::{Arch, ArchKind, Net};
use lwf_engine::optim::Sgd;
use lwf_engine::rng::Rng;
use lwf_engine::step::{sgd_step, BatchLoss, StepState, Targets};
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;

type R = Result<(), TestCaseError>;

fn cpu() -> CpuBackend {
    CpuBackend::new()
}

// ---- memory ---------------------------------------------------------------

#[test]
fn upload_download_write_copy_fill() {
    check(8, (0usize..3000, any::<u64>()), |g, (n, seed)| {
        let xs = rand_vec(seed, n, -3.0, 3.0);
        let b = g.upload(&xs);
        prop_assert_eq!(g.len(&b), n);
        prop_assert_eq!(g.download(&b), xs.clone());
        let idx: Vec<u32> = (0..n as u32).map(|i| i.wrapping_mul(2_654_435_761)).collect();
        let bi = g.upload_idx(&idx);
        prop_assert_eq!(g.download_idx(&bi), idx.clone());
        prop_assert_eq!(g.download(&g.zeros(n)), vec![0.0; n]);
        prop_assert_eq!(g.download_idx(&g.zeros_idx(n)), vec![0; n]);

        // write a prefix, copy a window, fill
        let mut z = g.zeros(n + 5);
        g.write(&mut z, &xs);
        let mut want = xs.clone();
        want.extend([0.0; 5]);
        prop_assert_eq!(g.download(&z), want.clone());
        let mut wi = g.zeros_idx(n + 1);
        g.write_idx(&mut wi, &idx);
        prop_assert_eq!(&g.download_idx(&wi)[..n], &idx[..]);
        if n > 2 {
            let (so, len) = (n / 3, n / 2);
            let mut dst = g.upload(&vec![7.0; n]);
            g.copy(&mut dst, 1, &b, so, len);
            let mut w2 = vec![7.0; n];
            w2[1..1 + len].copy_from_slice(&xs[so..so + len]);
            prop_assert_eq!(g.download(&dst), w2);
        }
        g.fill(&mut z, 0.0);
        prop_assert_eq!(g.download(&z), vec![0.0; n + 5]);
        g.fill(&mut z, -1.25);
        prop_assert_eq!(g.download(&z), vec![-1.25; n + 5]);
        Ok(())
    });
}

/// More dispatches than one submission holds, each with its own parameters
/// (the "one uniform written twice before a submit" trap).
#[test]
fn many_dispatches_keep_their_own_params() {
    let Some(g) = gpu() else { return };
    let c = cpu();
    let xs = rand_vec(1, 1000, -1.0, 1.0);
    let (mut gy, mut cy) = (g.upload(&xs), c.upload(&xs));
    let (gx, cx) = (g.upload(&xs), c.upload(&xs));
    for i in 0..150 {
        let a = 0.5 + i as f32 * 0.01;
        g.axpy(&mut gy, a, &gx);
        c.axpy(&mut cy, a, &cx);
        g.scale(&mut gy, 1.0 / (1.0 + a));
        c.scale(&mut cy, 1.0 / (1.0 + a));
    }
    assert_close("150× axpy+scale", &g.download(&gy), &c.download(&cy), 1e-5, 1e-4);
}

/// A host write to a buffer that recorded work still reads must land after
/// that work, and before the work recorded after it.
#[test]
fn write_is_ordered_with_recorded_work() {
    let Some(g) = gpu() else { return };
    let a = rand_vec(2, 300, -1.0, 1.0);
    let x1 = rand_vec(3, 300, -1.0, 1.0);
    let x2 = rand_vec(4, 300, -1.0, 1.0);
    let mut y = g.upload(&a);
    let mut x = g.upload(&x1);
    g.axpy(&mut y, 1.0, &x);
    g.write(&mut x, &x2);
    g.axpy(&mut y, 2.0, &x);
    let want: Vec<f32> = (0..300).map(|i| a[i] + x1[i] + 2.0 * x2[i]).collect();
    assert_close("axpy, write, axpy", &g.download(&y), &want, 1e-6, 1e-6);
}

#[test]
fn names() {
    let Some(g) = gpu() else { return };
    assert!(g.name().starts_with("wgpu: "), "{}", g.name());
    let info = g.gpu_info();
    assert!(info.contains("backend:") && info.contains("type:"), "{info}");
    eprintln!("GPU: {info}");
}

// ---- gemm -----------------------------------------------------------------

#[derive(Debug, Clone)]
struct GemmCase {
    g: Gemm,
    seed: u64,
}

fn gemm_case(dims: impl Strategy<Value = (usize, usize, usize)>) -> impl Strategy<Value = GemmCase> {
    (
        dims,
        any::<bool>(),
        any::<bool>(),
        prop_oneof![Just(1.0f32), Just(-0.5)],
        prop_oneof![Just(0.0f32), Just(1.0), Just(0.25)],
        any::<u64>(),
    )
        .prop_map(|((m, n, k), ta, tb, alpha, beta, seed)| GemmCase {
            g: Gemm { m, n, k, trans_a: ta, trans_b: tb, alpha, beta },
            seed,
        })
}

fn gemm_parity(g: &WgpuBackend, case: &GemmCase) -> R {
    let c = cpu();
    let Gemm { m, n, k, .. } = case.g;
    let a = rand_vec(case.seed, m * k, -1.0, 1.0);
    let b = rand_vec(case.seed ^ 1, k * n, -1.0, 1.0);
    let c0 = rand_vec(case.seed ^ 2, m * n + 3, -1.0, 1.0);
    let (mut gc, mut cc) = (g.upload(&c0), c.upload(&c0));
    g.sgemm(&mut gc, &g.upload(&a), &g.upload(&b), case.g);
    c.sgemm(&mut cc, &c.upload(&a), &c.upload(&b), case.g);
    let atol = 1e-5 + 2e-6 * k as f32;
    close(&format!("sgemm {:?}", case.g), &g.download(&gc), &c.download(&cc), atol, 1e-4)
}

#[test]
fn sgemm_random_shapes() {
    check_both(8, gemm_case((1usize..150, 1usize..150, 0usize..200)), |g, case| gemm_parity(g, &case));
}

#[test]
fn sgemm_multi_tile_exact_edges() {
    // Exactly one tile, one more than a tile, several tiles.
    let dims = prop_oneof![Just((64, 64, 16)), Just((65, 129, 17)), Just((128, 64, 33)), Just((1, 200, 1))];
    check_both(4, gemm_case(dims), |g, case| gemm_parity(g, &case));
}

/// Small output, long K: the split-K path (partials + reduction).
#[test]
fn sgemm_split_k() {
    check_both(4, gemm_case((1usize..100, 1usize..100, 1024usize..3000)), |g, case| gemm_parity(g, &case));
}

/// Large enough for the 128×128-tile kernel (≥ 256 big tiles), non-multiple edges.
#[test]
fn sgemm_big_tiles() {
    check_both(2, gemm_case((Just(2051usize), Just(2053usize), 3usize..12)), |g, case| gemm_parity(g, &case));
}

// ---- convolution ------------------------------------------------------------

fn conv_params() -> impl Strategy<Value = Conv2dParams> {
    (1usize..4, 1usize..4, 1usize..11, 1usize..11, 1usize..6, 1usize..4, 1usize..4, 1usize..3, 0usize..3)
        .prop_filter_map("kernel larger than padded input", |(n, c, h, w, oc, kh, kw, s, pad)| {
            let p = Conv2dParams { n, c, h, w, oc, kh, kw, sh: s, sw: s, ph: pad.min(kh), pw: pad.min(kw) };
            (p.h + 2 * p.ph >= kh && p.w + 2 * p.pw >= kw).then_some(p)
        })
}

fn conv_parity(g: &WgpuBackend, p: &Conv2dParams, seed: u64) -> R {
    let c = cpu();
    let x = rand_vec(seed, p.x_len(), -1.0, 1.0);
    let w = rand_vec(seed ^ 1, p.w_len(), -1.0, 1.0);
    let dy = rand_vec(seed ^ 2, p.y_len(), -1.0, 1.0);
    let tol = 1e-5 + 2e-6 * (p.patch() * p.oh() * p.ow() * p.n) as f32;

    let (mut gy, mut cy) = (g.upload(&vec![f32::NAN; p.y_len()]), c.zeros(p.y_len()));
    g.conv2d_fwd(&mut gy, &g.upload(&x), &g.upload(&w), p);
    c.conv2d_fwd(&mut cy, &c.upload(&x), &c.upload(&w), p);
    close(&format!("conv2d_fwd {p:?}"), &g.download(&gy), &c.download(&cy), tol, 1e-4)?;

    // Backward ops accumulate: pre-filled outputs, each op called twice.
    let dx0 = rand_vec(seed ^ 3, p.x_len(), -1.0, 1.0);
    let (mut gdx, mut cdx) = (g.upload(&dx0), c.upload(&dx0));
    for _ in 0..2 {
        g.conv2d_bwd_data(&mut gdx, &g.upload(&dy), &g.upload(&w), p);
        c.conv2d_bwd_data(&mut cdx, &c.upload(&dy), &c.upload(&w), p);
    }
    close(&format!("conv2d_bwd_data ×2 {p:?}"), &g.download(&gdx), &c.download(&cdx), tol, 1e-4)?;

    let dw0 = rand_vec(seed ^ 4, p.w_len(), -1.0, 1.0);
    let (mut gdw, mut cdw) = (g.upload(&dw0), c.upload(&dw0));
    for _ in 0..2 {
        g.conv2d_bwd_weight(&mut gdw, &g.upload(&x), &g.upload(&dy), p);
        c.conv2d_bwd_weight(&mut cdw, &c.upload(&x), &c.upload(&dy), p);
    }
    close(&format!("conv2d_bwd_weight ×2 {p:?}"), &g.download(&gdw), &c.download(&cdw), tol, 1e-4)
}

#[test]
fn conv2d_random_geometry() {
    check_both(8, (conv_params(), any::<u64>()), |g, (p, seed)| conv_parity(g, &p, seed));
}

/// The cnn-s layers' geometry (3×3, pad 1) at a small batch, several workgroups.
#[test]
fn conv2d_cnn_s_shapes() {
    let (Some(g), Some(t)) = (gpu(), gpu_tiled()) else { return };
    for p in [
        Conv2dParams { n: 3, c: 1, h: 28, w: 28, oc: 8, kh: 3, kw: 3, sh: 1, sw: 1, ph: 1, pw: 1 },
        Conv2dParams { n: 3, c: 8, h: 14, w: 14, oc: 16, kh: 3, kw: 3, sh: 1, sw: 1, ph: 1, pw: 1 },
    ] {
        for b in [g, t] {
            if let Err(e) = conv_parity(b, &p, 7) {
                panic!("{e}");
            }
        }
    }
}

/// A scratch cap that forces several batch chunks (own device: the cap is
/// per device and must not change the other tests' chunking).
#[test]
fn conv2d_in_batch_chunks() {
    if gpu().is_none() {
        return;
    }
    let g = WgpuBackend::new().expect("a second device on the same adapter").force_tiled_gemm();
    let p = Conv2dParams { n: 7, c: 2, h: 9, w: 8, oc: 3, kh: 3, kw: 2, sh: 1, sw: 2, ph: 1, pw: 1 };
    // Two images' columns per chunk → 4 chunks, the last one short.
    g.set_scratch_limit(2 * p.patch() * p.oh() * p.ow());
    if let Err(e) = conv_parity(&g, &p, 11) {
        panic!("{e}");
    }
}

// ---- pooling ----------------------------------------------------------------

#[test]
fn maxpool_fwd_bwd() {
    let strat = (1usize..4, 1usize..4, 1usize..13, 1usize..13, 1usize..4, 1usize..4, any::<u64>())
        .prop_filter("window fits", |&(_, _, h, w, k, _, _)| h >= k && w >= k);
    check(8, strat, |g, (n, ch, h, w, k, s, seed)| {
        let c = cpu();
        let p = PoolParams { n, c: ch, h, w, k, s, pad: 0 };
        // Few distinct values: many ties, so "first maximum" is tested.
        let x: Vec<f32> = rand_vec(seed, p.x_len(), 0.0, 4.0).iter().map(|v| v.floor()).collect();
        let (mut gy, mut cy) = (g.zeros(p.y_len()), c.zeros(p.y_len()));
        let (mut ga, mut ca) = (g.zeros_idx(p.y_len()), c.zeros_idx(p.y_len()));
        g.maxpool2d_fwd(&mut gy, &mut ga, &g.upload(&x), &p);
        c.maxpool2d_fwd(&mut cy, &mut ca, &c.upload(&x), &p);
        prop_assert_eq!(g.download(&gy), c.download(&cy));
        prop_assert_eq!(g.download_idx(&ga), c.download_idx(&ca));

        let dy = rand_vec(seed ^ 1, p.y_len(), -1.0, 1.0);
        let dx0 = rand_vec(seed ^ 2, p.x_len(), -1.0, 1.0);
        let (mut gdx, mut cdx) = (g.upload(&dx0), c.upload(&dx0));
        for _ in 0..2 {
            g.maxpool2d_bwd(&mut gdx, &g.upload(&dy), &ga, &p);
            c.maxpool2d_bwd(&mut cdx, &c.upload(&dy), &ca, &p);
        }
        close(&format!("maxpool2d_bwd ×2 {p:?}"), &g.download(&gdx), &c.download(&cdx), 1e-6, 1e-6)?;
        g.maxpool2d_bwd_set(&mut gdx, &g.upload(&dy), &ga, &p);
        c.maxpool2d_bwd_set(&mut cdx, &c.upload(&dy), &ca, &p);
        close(&format!("maxpool2d_bwd_set {p:?}"), &g.download(&gdx), &c.download(&cdx), 1e-6, 1e-6)
    });
}

/// Padded windows (the ResNet stem's k = 3, s = 2, pad = 1 among them) on
/// odd sizes, with negative values: a padding cell counted as 0 instead of
/// −∞ would win a window of negatives and show up in y and argmax.
fn maxpool_padded_parity(g: &WgpuBackend, p: &PoolParams, seed: u64) -> R {
    let c = cpu();
    // Few distinct values: many ties, so "first maximum" is tested.
    let x: Vec<f32> = rand_vec(seed, p.x_len(), -4.0, 2.0).iter().map(|v| v.floor()).collect();
    let (mut gy, mut cy) = (g.upload(&vec![f32::NAN; p.y_len()]), c.zeros(p.y_len()));
    let (mut ga, mut ca) = (g.upload_idx(&vec![u32::MAX; p.y_len()]), c.zeros_idx(p.y_len()));
    g.maxpool2d_fwd(&mut gy, &mut ga, &g.upload(&x), p);
    c.maxpool2d_fwd(&mut cy, &mut ca, &c.upload(&x), p);
    prop_assert_eq!(g.download(&gy), c.download(&cy), "maxpool2d_fwd y {:?}", p);
    prop_assert_eq!(g.download_idx(&ga), c.download_idx(&ca), "maxpool2d_fwd argmax {:?}", p);

    let dy = rand_vec(seed ^ 1, p.y_len(), -1.0, 1.0);
    let dx0 = rand_vec(seed ^ 2, p.x_len(), -1.0, 1.0);
    let (mut gdx, mut cdx) = (g.upload(&dx0), c.upload(&dx0));
    for _ in 0..2 {
        g.maxpool2d_bwd(&mut gdx, &g.upload(&dy), &ga, p);
        c.maxpool2d_bwd(&mut cdx, &c.upload(&dy), &ca, p);
    }
    // Overlapping windows (s < k) sum a cell's gradients in another order.
    close(&format!("maxpool2d_bwd ×2 {p:?}"), &g.download(&gdx), &c.download(&cdx), 1e-6, 1e-6)?;
    g.maxpool2d_bwd_set(&mut gdx, &g.upload(&dy), &ga, p);
    c.maxpool2d_bwd_set(&mut cdx, &c.upload(&dy), &ca, p);
    close(&format!("maxpool2d_bwd_set {p:?}"), &g.download(&gdx), &c.download(&cdx), 1e-6, 1e-6)
}

#[test]
fn maxpool_padded_random() {
    let strat = (1usize..3, 1usize..4, 1usize..14, 1usize..14, 1usize..5, 1usize..4, 0usize..4, any::<u64>())
        .prop_filter_map("pad < k and the window fits the padded plane", |(n, c, h, w, k, s, pad, seed)| {
            let p = PoolParams::new(n, c, h, w, k, s).padded(pad);
            (pad < k && h + 2 * pad >= k && w + 2 * pad >= k).then_some((p, seed))
        });
    check(8, strat, |g, (p, seed)| maxpool_padded_parity(g, &p, seed));
}

/// The ResNet stem's pooling (k 3, s 2, pad 1) on odd and even sizes, and
/// other padded windows whose geometry the random cases may miss.
#[test]
fn maxpool_padded_stem_shapes() {
    let Some(g) = gpu() else { return };
    let shapes = [
        (2, 3, 7, 9, 3, 2, 1),
        (1, 2, 15, 15, 3, 2, 1),
        (1, 2, 16, 16, 3, 2, 1),
        (1, 1, 2, 2, 3, 2, 1),
        (1, 1, 1, 1, 3, 2, 1),
        (2, 2, 9, 11, 3, 1, 1),
        (1, 2, 11, 10, 2, 2, 1),
        (1, 2, 13, 7, 5, 3, 2),
    ];
    for (i, (n, c, h, w, k, s, pad)) in shapes.into_iter().enumerate() {
        let p = PoolParams::new(n, c, h, w, k, s).padded(pad);
        if let Err(e) = maxpool_padded_parity(g, &p, 100 + i as u64) {
            panic!("{e}");
        }
    }
}

// ---- batch normalisation and average pooling --------------------------------------

/// BatchNorm geometry with channels of more and fewer values than a
/// workgroup (count = N·HW from 1 to ~1200) and channel means far from 0.
fn bn_case() -> impl Strategy<Value = (BnParams, f32, u64)> {
    let hw = prop_oneof![1usize..10, 10usize..70, 200usize..400];
    (1usize..4, 1usize..7, hw, prop_oneof![Just(0.0f32), Just(3.0), Just(-20.0)], any::<u64>())
        .prop_map(|(n, c, hw, shift, seed)| (BnParams { n, c, hw, eps: 1e-5 }, shift, seed))
}

/// Per-channel values of `x` (N, C, HW) uniform in ±1 around `shift`, with
/// a per-channel spread so that channels differ.
fn bn_input(p: &BnParams, shift: f32, seed: u64) -> Vec<f32> {
    let spread = rand_vec(seed ^ 9, p.c, 0.2, 2.0);
    rand_vec(seed, p.x_len(), -1.0, 1.0)
        .iter()
        .enumerate()
        .map(|(i, v)| shift + v * spread[(i / p.hw) % p.c])
        .collect()
}

#[test]
fn batchnorm_stats_and_fwd() {
    check(8, bn_case(), |g, (p, shift, seed)| {
        let c = cpu();
        let x = bn_input(&p, shift, seed);
        let (gx, cx) = (g.upload(&x), c.upload(&x));
        // Outputs pre-filled with garbage: both ops overwrite.
        let (mut gm, mut gv) = (g.upload(&vec![f32::NAN; p.c]), g.upload(&vec![7.0; p.c + 2]));
        let (mut cm, mut cv) = (c.zeros(p.c), c.zeros(p.c + 2));
        g.batchnorm_stats(&mut gm, &mut gv, &gx, &p);
        c.batchnorm_stats(&mut cm, &mut cv, &cx, &p);
        let (gmv, cmv) = (g.download(&gm), c.download(&cm));
        close(&format!("batchnorm_stats mean {p:?}"), &gmv, &cmv, 1e-5, 1e-4)?;
        let (gvv, cvv) = (g.download(&gv), c.download(&cv));
        close(&format!("batchnorm_stats var {p:?}"), &gvv[..p.c], &cvv[..p.c], 1e-5, 1e-4)?;
        prop_assert_eq!(&gvv[p.c..], &[7.0, 7.0][..], "batchnorm_stats wrote past C");

        let gamma = rand_vec(seed ^ 3, p.c, 0.5, 1.5);
        let beta = rand_vec(seed ^ 4, p.c, -1.0, 1.0);
        let (gg, cg, gb, cb) = (g.upload(&gamma), c.upload(&gamma), g.upload(&beta), c.upload(&beta));
        // With the batch's statistics (the CPU's, so that only the forward
        // pass is compared), then with running-like ones.
        let running_mean: Vec<f32> = rand_vec(seed ^ 5, p.c, -1.0, 1.0).iter().map(|m| m + shift).collect();
        let running_var = rand_vec(seed ^ 6, p.c, 0.1, 3.0);
        for (what, mean, var) in [("batch", &cmv, &cvv[..p.c]), ("running", &running_mean, &running_var[..])]
        {
            let mut gy = g.upload(&vec![f32::NAN; p.x_len()]);
            let mut cy = c.zeros(p.x_len());
            g.batchnorm_fwd(&mut gy, &gx, &g.upload(mean), &g.upload(var), &gg, &gb, &p);
            c.batchnorm_fwd(&mut cy, &cx, &c.upload(mean), &c.upload(var), &cg, &cb, &p);
            close(
                &format!("batchnorm_fwd ({what} statistics) {p:?}"),
                &g.download(&gy),
                &c.download(&cy),
                1e-5,
                1e-4,
            )?;
        }
        Ok(())
    });
}

/// Every subset of {dx, dgamma, dbeta}, batch and running statistics,
/// pre-filled outputs and two calls (every output accumulates).
#[test]
fn batchnorm_bwd_accumulates() {
    check(10, (bn_case(), any::<bool>(), 0u8..8), |g, ((p, shift, seed), batch_stats, mask)| {
        let c = cpu();
        let x = bn_input(&p, shift, seed);
        let dy = rand_vec(seed ^ 1, p.x_len(), -1.0, 1.0);
        let gamma = rand_vec(seed ^ 3, p.c, 0.5, 1.5);
        let (mean, var) = if batch_stats {
            let (mut m, mut v) = (c.zeros(p.c), c.zeros(p.c));
            c.batchnorm_stats(&mut m, &mut v, &c.upload(&x), &p);
            (c.download(&m), c.download(&v))
        } else {
            let m: Vec<f32> = rand_vec(seed ^ 5, p.c, -1.0, 1.0).iter().map(|m| m + shift).collect();
            (m, rand_vec(seed ^ 6, p.c, 0.1, 3.0))
        };
        let (want_dx, want_dg, want_db) = (mask & 1 != 0, mask & 2 != 0, mask & 4 != 0);
        let dx0 = rand_vec(seed ^ 7, p.x_len(), -1.0, 1.0);
        let dg0 = rand_vec(seed ^ 8, p.c, -1.0, 1.0);
        let db0 = rand_vec(seed ^ 10, p.c, -1.0, 1.0);
        let (mut gdx, mut cdx) = (g.upload(&dx0), c.upload(&dx0));
        let (mut gdg, mut cdg) = (g.upload(&dg0), c.upload(&dg0));
        let (mut gdb, mut cdb) = (g.upload(&db0), c.upload(&db0));
        let (mut gs, mut cs) = (g.upload(&vec![f32::NAN; 2 * p.c]), c.zeros(2 * p.c));
        let (gx, gdy, gm, gv, gg) =
            (g.upload(&x), g.upload(&dy), g.upload(&mean), g.upload(&var), g.upload(&gamma));
        let (cx, cdy, cm, cv, cg) =
            (c.upload(&x), c.upload(&dy), c.upload(&mean), c.upload(&var), c.upload(&gamma));
        for _ in 0..2 {
            g.batchnorm_bwd(
                want_dx.then_some(&mut gdx),
                want_dg.then_some(&mut gdg),
                want_db.then_some(&mut gdb),
                &mut gs,
                &gx,
                &gdy,
                &gm,
                &gv,
                &gg,
                &p,
                batch_stats,
            );
            c.batchnorm_bwd(
                want_dx.then_some(&mut cdx),
                want_dg.then_some(&mut cdg),
                want_db.then_some(&mut cdb),
                &mut cs,
                &cx,
                &cdy,
                &cm,
                &cv,
                &cg,
                &p,
                batch_stats,
            );
        }
        let what = format!("batchnorm_bwd ×2 (batch_stats {batch_stats}, mask {mask}) {p:?}");
        // Sums over N·HW values, in f32 here and f64 on the CPU.
        let stol = 1e-5 + 1e-6 * p.count() as f32;
        close(&format!("{what}: sums"), &g.download(&gs), &c.download(&cs), stol, 1e-4)?;
        close(&format!("{what}: dgamma"), &g.download(&gdg), &c.download(&cdg), stol, 1e-4)?;
        close(&format!("{what}: dbeta"), &g.download(&gdb), &c.download(&cdb), stol, 1e-4)?;
        close(&format!("{what}: dx"), &g.download(&gdx), &c.download(&cdx), 1e-5, 1e-4)?;
        // Absent gradients are untouched.
        for (want, got, init, name) in [
            (want_dx, g.download(&gdx), &dx0, "dx"),
            (want_dg, g.download(&gdg), &dg0, "dgamma"),
            (want_db, g.download(&gdb), &db0, "dbeta"),
        ] {
            if !want {
                prop_assert_eq!(&got, init, "{}: {} was None but changed", what, name);
            }
        }
        Ok(())
    });
}

#[test]
fn avgpool_fwd_bwd() {
    let inner = prop_oneof![Just(1usize), 1usize..80, 250usize..700];
    check(8, (1usize..300, inner, any::<u64>()), |g, (rows, inner, seed)| {
        let c = cpu();
        let x = rand_vec(seed, rows * inner, -2.0, 2.0);
        let (mut gy, mut cy) = (g.upload(&vec![f32::NAN; rows]), c.zeros(rows));
        g.avgpool_fwd(&mut gy, &g.upload(&x), rows, inner);
        c.avgpool_fwd(&mut cy, &c.upload(&x), rows, inner);
        close(&format!("avgpool_fwd {rows}×{inner}"), &g.download(&gy), &c.download(&cy), 1e-6, 1e-5)?;

        let dy = rand_vec(seed ^ 1, rows, -1.0, 1.0);
        let dx0 = rand_vec(seed ^ 2, rows * inner, -1.0, 1.0);
        let (mut gdx, mut cdx) = (g.upload(&dx0), c.upload(&dx0));
        for _ in 0..2 {
            g.avgpool_bwd(&mut gdx, &g.upload(&dy), rows, inner);
            c.avgpool_bwd(&mut cdx, &c.upload(&dy), rows, inner);
        }
        close(&format!("avgpool_bwd ×2 {rows}×{inner}"), &g.download(&gdx), &c.download(&cdx), 1e-6, 1e-6)
    });
}

// ---- elementwise and reductions ---------------------------------------------

#[test]
fn elementwise_ops() {
    check(8, (1usize..2000, any::<u64>()), |g, (n, seed)| {
        let c = cpu();
        let x = rand_vec(seed, n, -2.0, 2.0);
        let y0 = rand_vec(seed ^ 1, n, -2.0, 2.0);
        let dy = rand_vec(seed ^ 2, n, -2.0, 2.0);
        let (gx, cx) = (g.upload(&x), c.upload(&x));

        let (mut gy, mut cy) = (g.zeros(n), c.zeros(n));
        g.relu_fwd(&mut gy, &gx);
        c.relu_fwd(&mut cy, &cx);
        prop_assert_eq!(g.download(&gy), c.download(&cy));

        let (mut gdx, mut cdx) = (g.upload(&y0), c.upload(&y0));
        for _ in 0..2 {
            g.relu_bwd(&mut gdx, &gy, &g.upload(&dy));
            c.relu_bwd(&mut cdx, &cy, &c.upload(&dy));
        }
        close("relu_bwd ×2", &g.download(&gdx), &c.download(&cdx), 1e-6, 1e-6)?;

        let (mut ga, mut ca) = (g.upload(&y0), c.upload(&y0));
        for _ in 0..2 {
            g.axpy(&mut ga, -0.75, &gx);
            c.axpy(&mut ca, -0.75, &cx);
            g.add_squared(&mut ga, 0.3, &gx);
            c.add_squared(&mut ca, 0.3, &cx);
        }
        g.scale(&mut ga, 1.7);
        c.scale(&mut ca, 1.7);
        close("axpy, add_squared, scale", &g.download(&ga), &c.download(&ca), 1e-5, 1e-5)
    });
}

/// The residual join: exact (one f32 addition either way), overwriting y.
#[test]
fn add_elementwise() {
    check(8, (1usize..3000, any::<u64>()), |g, (n, seed)| {
        let c = cpu();
        let a = rand_vec(seed, n, -2.0, 2.0);
        let b = rand_vec(seed ^ 1, n, -2.0, 2.0);
        let (mut gy, mut cy) = (g.upload(&vec![f32::NAN; n]), c.zeros(n));
        g.add(&mut gy, &g.upload(&a), &g.upload(&b));
        c.add(&mut cy, &c.upload(&a), &c.upload(&b));
        prop_assert_eq!(g.download(&gy), c.download(&cy));
        Ok(())
    });
}

#[test]
fn bias_add_and_grad() {
    check(8, (1usize..9, 1usize..300, 1usize..50, any::<u64>()), |g, (rows, cols, inner, seed)| {
        let c = cpu();
        let n = rows * cols * inner;
        let y0 = rand_vec(seed, n, -1.0, 1.0);
        let b = rand_vec(seed ^ 1, cols, -1.0, 1.0);
        let (mut gy, mut cy) = (g.upload(&y0), c.upload(&y0));
        g.bias_add(&mut gy, &g.upload(&b), rows, cols, inner);
        c.bias_add(&mut cy, &c.upload(&b), rows, cols, inner);
        close("bias_add", &g.download(&gy), &c.download(&cy), 1e-6, 1e-6)?;

        let db0 = rand_vec(seed ^ 2, cols, -1.0, 1.0);
        let (mut gdb, mut cdb) = (g.upload(&db0), c.upload(&db0));
        for _ in 0..2 {
            g.bias_grad(&mut gdb, &gy, rows, cols, inner);
            c.bias_grad(&mut cdb, &cy, rows, cols, inner);
        }
        let tol = 1e-5 + 1e-6 * (rows * inner) as f32;
        close("bias_grad ×2", &g.download(&gdb), &c.download(&cdb), tol, 1e-5)
    });
}

#[test]
fn max_rows_with_ties() {
    check(8, (1usize..300, 1usize..40, any::<u64>()), |g, (rows, cols, seed)| {
        let c = cpu();
        let x: Vec<f32> = rand_vec(seed, rows * cols, -3.0, 3.0).iter().map(|v| v.round()).collect();
        let (mut gv, mut cv) = (g.zeros(rows), c.zeros(rows));
        let (mut gi, mut ci) = (g.zeros_idx(rows), c.zeros_idx(rows));
        g.max_rows(&mut gv, &mut gi, &g.upload(&x), rows, cols);
        c.max_rows(&mut cv, &mut ci, &c.upload(&x), rows, cols);
        prop_assert_eq!(g.download(&gv), c.download(&cv));
        prop_assert_eq!(g.download_idx(&gi), c.download_idx(&ci));
        Ok(())
    });
}

/// The one dispatch of more than 65535 workgroups in x (folded into y).
#[test]
fn huge_1d_dispatch() {
    let Some(g) = gpu() else { return };
    let n = 65536 * 256 + 17;
    let x: Vec<f32> = (0..n).map(|i| (i % 1013) as f32).collect();
    let y0: Vec<f32> = (0..n).map(|i| (i % 7) as f32).collect();
    let mut y = g.upload(&y0);
    g.axpy(&mut y, 2.0, &g.upload(&x));
    let got = g.download(&y);
    let bad = (0..n).filter(|&i| got[i] != y0[i] + 2.0 * x[i]).count();
    assert_eq!(
        bad,
        0,
        "axpy over {n} elements: {bad} wrong (first at {:?})",
        (0..n).find(|&i| got[i] != y0[i] + 2.0 * x[i])
    );
}

// ---- losses -------------------------------------------------------------------

#[test]
fn softmax_xent_with_ignored_rows() {
    let strat = (1usize..40, 1usize..300, any::<u64>(), -2.0f32..2.0);
    check(8, strat, |g, (rows, cols, seed, scale)| {
        let c = cpu();
        let z = rand_vec(seed, rows * cols, -8.0, 8.0);
        let mut r = Rng::new(seed ^ 1);
        let labels: Vec<u32> =
            (0..rows).map(|_| if r.below(4) == 0 { IGNORE_LABEL } else { r.below(cols) as u32 }).collect();
        let dz0 = rand_vec(seed ^ 2, rows * cols, -1.0, 1.0);
        let (mut gdz, mut cdz) = (g.upload(&dz0), c.upload(&dz0));
        let (mut gl, mut cl) = (g.upload(&[0.5]), c.upload(&[0.5]));
        for _ in 0..2 {
            g.softmax_xent(&mut gdz, &mut gl, &g.upload(&z), &g.upload_idx(&labels), rows, cols, scale);
            c.softmax_xent(&mut cdz, &mut cl, &c.upload(&z), &c.upload_idx(&labels), rows, cols, scale);
        }
        close("softmax_xent loss ×2", &g.download(&gl), &c.download(&cl), 1e-4, 1e-4)?;
        close("softmax_xent dlogits ×2", &g.download(&gdz), &c.download(&cdz), 1e-5, 1e-4)
    });
}

#[allow(clippy::too_many_arguments)]
fn kd_parity(
    g: &WgpuBackend,
    zs: &[f32],
    zt: &[f32],
    rows: usize,
    cols: usize,
    ld: usize,
    t: f32,
    scale: f32,
) -> R {
    let c = cpu();
    let dz0 = rand_vec(rows as u64 * 31 + cols as u64, rows * ld, -1.0, 1.0);
    let (mut gdz, mut cdz) = (g.upload(&dz0), c.upload(&dz0));
    let (mut gl, mut cl) = (g.upload(&[0.25]), c.upload(&[0.25]));
    for _ in 0..2 {
        g.kd_loss(&mut gdz, &mut gl, &g.upload(zs), &g.upload(zt), rows, cols, ld, t, scale);
        c.kd_loss(&mut cdz, &mut cl, &c.upload(zs), &c.upload(zt), rows, cols, ld, t, scale);
    }
    let (gl, cl) = (g.download(&gl), c.download(&cl));
    prop_assert!(gl[0].is_finite(), "kd loss not finite: {}", gl[0]);
    close(&format!("kd_loss loss ×2 (T {t})"), &gl, &cl, 1e-4, 1e-4)?;
    close(&format!("kd_loss dzs ×2 (T {t})"), &g.download(&gdz), &c.download(&cdz), 1e-5, 1e-4)
}

#[test]
fn kd_loss_random() {
    let strat = (
        1usize..30,
        1usize..2500,
        0usize..5,
        prop_oneof![Just(1.0f32), Just(2.0), Just(4.0), Just(1.7)],
        any::<u64>(),
    );
    check(8, strat, |g, (rows, cols, extra, t, seed)| {
        let ld = cols + extra;
        let zs = rand_vec(seed, rows * ld, -10.0, 10.0);
        let zt = rand_vec(seed ^ 1, rows * cols, -10.0, 10.0);
        kd_parity(g, &zs, &zt, rows, cols, ld, t, 1.0 / rows as f32)
    });
}

/// Row widths around the kernel's 256-invocation workgroup (one element per
/// invocation, a partial last sweep, several sweeps) with 5 rows; the scale
/// grows with the width so that each gradient entry stays of order one.
#[test]
fn kd_loss_row_widths() {
    let Some(g) = gpu() else { return };
    for cols in [1usize, 5, 255, 256, 257, 1000, 1025, 2100] {
        let rows = 5;
        let zs = rand_vec(cols as u64, rows * cols, -8.0, 8.0);
        let zt = rand_vec(cols as u64 + 1, rows * cols, -8.0, 8.0);
        if let Err(e) = kd_parity(g, &zs, &zt, rows, cols, cols, 2.0, cols as f32) {
            panic!("{cols} columns: {e}");
        }
    }
    // Many narrow rows: `sum_into` adds thousands of per-row losses.
    let (rows, cols) = (2048 * 2 + 300, 3);
    let zs = rand_vec(7, rows * cols, -8.0, 8.0);
    let zt = rand_vec(8, rows * cols, -8.0, 8.0);
    if let Err(e) = kd_parity(g, &zs, &zt, rows, cols, cols, 2.0, 1.0) {
        panic!("{rows} rows: {e}");
    }
}

/// Logits of ±1e4 at T = 1 and T = 4: finite, and equal to the CPU's.
#[test]
fn kd_loss_extreme_logits() {
    let Some(g) = gpu() else { return };
    let (rows, cols) = (5, 300);
    let mut r = Rng::new(9);
    let mut pick = || [1e4f32, -1e4, 0.0, 9999.5, -3.0][r.below(5)];
    let zs: Vec<f32> = (0..rows * cols).map(|_| pick()).collect();
    let zt: Vec<f32> = (0..rows * cols).map(|_| pick()).collect();
    for t in [1.0f32, 4.0] {
        if let Err(e) = kd_parity(g, &zs, &zt, rows, cols, cols, t, 0.2) {
            panic!("{e}");
        }
    }
    // Student equal to teacher: the gradient is zero and the loss is the entropy.
    for t in [1.0f32, 4.0] {
        if let Err(e) = kd_parity(g, &zt, &zt, rows, cols, cols, t, 0.2) {
            panic!("{e}");
        }
    }
}

#[test]
fn anchor_penalty_with_and_without_fisher() {
    check(8, (1usize..3000, any::<bool>(), any::<u64>(), 0.0f32..2.0), |g, (n, with_f, seed, scale)| {
        let c = cpu();
        let w = rand_vec(seed, n, -1.0, 1.0);
        let a = rand_vec(seed ^ 1, n, -1.0, 1.0);
        let f = rand_vec(seed ^ 2, n, 0.0, 3.0);
        let dw0 = rand_vec(seed ^ 3, n, -1.0, 1.0);
        let (mut gdw, mut cdw) = (g.upload(&dw0), c.upload(&dw0));
        let (mut gl, mut cl) = (g.upload(&[1.0]), c.upload(&[1.0]));
        let (gw, cw, ga, ca, gf, cf) =
            (g.upload(&w), c.upload(&w), g.upload(&a), c.upload(&a), g.upload(&f), c.upload(&f));
        for _ in 0..2 {
            g.anchor_penalty(&mut gdw, &mut gl, &gw, &ga, with_f.then_some(&gf), scale);
            c.anchor_penalty(&mut cdw, &mut cl, &cw, &ca, with_f.then_some(&cf), scale);
        }
        close("anchor_penalty loss ×2", &g.download(&gl), &c.download(&cl), 1e-3, 1e-4)?;
        close("anchor_penalty dw ×2", &g.download(&gdw), &c.download(&cdw), 1e-5, 1e-5)
    });
}

#[test]
fn sgd_step_momentum_decay() {
    check(8, (1usize..5000, any::<u64>()), |g, (n, seed)| {
        let c = cpu();
        let h = SgdHyper { lr: 0.05, momentum: 0.9, weight_decay: 5e-4 };
        let w = rand_vec(seed, n, -1.0, 1.0);
        let v = rand_vec(seed ^ 1, n, -1.0, 1.0);
        let gr = rand_vec(seed ^ 2, n, -1.0, 1.0);
        let (mut gw, mut cw, mut gv, mut cv) = (g.upload(&w), c.upload(&w), g.upload(&v), c.upload(&v));
        for _ in 0..3 {
            g.sgd_step(&mut gw, &mut gv, &g.upload(&gr), h);
            c.sgd_step(&mut cw, &mut cv, &c.upload(&gr), h);
        }
        close("sgd w", &g.download(&gw), &c.download(&cw), 1e-6, 1e-5)?;
        close("sgd v", &g.download(&gv), &c.download(&cv), 1e-6, 1e-5)
    });
}

// ---- a whole training step ------------------------------------------------------

/// Two SGD steps of a small net with two heads (distillation on the old
/// head, cross-entropy on the new one, feature distillation on the trunk's
/// output): the losses and every updated
/// parameter agree with the CPU backend.
fn train<B: Backend>(b: &B, arch: &Arch, steps: usize) -> (Vec<f32>, Vec<Vec<f32>>) {
    let arch = arch.clone();
    let [c, h, w] = arch.input;
    let mut rng = Rng::new(42);
    let mut net = Net::new(b, arch, &mut rng);
    net.add_head(b, &mut rng, &[0, 1, 2]);
    net.add_head(b, &mut rng, &[3, 4]);
    let batch = 6;
    let xs = rand_vec(5, batch * c * h * w, -1.0, 1.0);
    let zt = rand_vec(6, batch * 3, -3.0, 3.0);
    let labels: Vec<u32> = vec![0, 1, 1, IGNORE_LABEL, 0, 1];
    // Old features for feature distillation (a leaf of the trunk's output).
    let old_features = rand_vec(7, batch * net.arch.hidden, 0.0, 1.0);
    let mut st = StepState::default();
    let mut sgd = Sgd::new(SgdHyper { lr: 0.05, momentum: 0.9, weight_decay: 5e-4 });
    let loss = BatchLoss {
        ce: vec![(1, labels.as_slice())],
        kd: vec![(0, 3)],
        targets: Targets::Recorded { logits: vec![zt.as_slice()], features: Some(old_features.as_slice()) },
        temperature: 2.0,
        kd_weight: 1.0,
        feature_weight: 0.3,
        kd_concat: None,
        feature_metric: None,
        anchors: None,
    };
    let losses =
        (0..steps).map(|_| sgd_step(b, &mut st, &mut net, &mut sgd, &xs, [batch, c, h, w], &loss)).collect();
    let params = net.params().iter().map(|p| p.value.to_vec(b)).collect();
    (losses, params)
}

#[test]
fn cnn_s_training_step() {
    let arch = Arch { name: "cnn-s".into(), input: [1, 12, 12], conv: vec![4, 8], hidden: 16, resnet: None };
    training_step_parity(&arch);
}

/// cnn-m's shape at a small size: three conv blocks over colour images (the
/// first layer's 3 input channels, a third block at 4×4).
#[test]
fn cnn_m_training_step() {
    let arch =
        Arch { name: "cnn-m".into(), input: [3, 16, 16], conv: vec![4, 8, 8], hidden: 16, resnet: None };
    training_step_parity(&arch);
}

fn training_step_parity(arch: &Arch) {
    let (Some(g), Some(t)) = (gpu(), gpu_tiled()) else { return };
    let (cl, cp) = train(&cpu(), arch, 2);
    for b in [g, t] {
        let (gl, gp) = train(b, arch, 2);
        assert_close("losses", &gl, &cl, 1e-5, 1e-4);
        assert_eq!(gp.len(), cp.len());
        for (i, (a, b)) in gp.iter().zip(&cp).enumerate() {
            assert_close(&format!("parameter {i} after 2 steps"), a, b, 1e-5, 1e-4);
        }
    }
}

/// One SGD step of a small ResNet-20 (CIFAR stem, three stages of three
/// BasicBlocks, 2×2 maps at the last stage) on a batch of 4: BatchNorm with
/// batch statistics, residual adds with and without a downsampling
/// shortcut, global average pooling. The loss, every parameter after the
/// step and every BatchNorm's running statistics agree with the CPU.
#[test]
fn resnet20_training_step() {
    let (Some(g), Some(t)) = (gpu(), gpu_tiled()) else { return };
    /// A BatchNorm's name, running mean and running variance.
    type Running = (String, Vec<f32>, Vec<f32>);
    fn step<B: Backend>(b: &B) -> (f32, Vec<Vec<f32>>, Vec<Running>) {
        let arch = ArchKind::Resnet20.build([3, 8, 8]);
        let mut rng = Rng::new(42);
        let mut net = Net::new(b, arch, &mut rng);
        net.add_head(b, &mut rng, &[0, 1, 2]);
        let batch = 4;
        let xs = rand_vec(5, batch * 3 * 8 * 8, -1.0, 1.0);
        let labels: Vec<u32> = vec![0, 2, 1, 2];
        let mut st = StepState::default();
        let mut sgd = Sgd::new(SgdHyper { lr: 0.05, momentum: 0.9, weight_decay: 5e-4 });
        let loss = BatchLoss {
            ce: vec![(0, labels.as_slice())],
            kd: vec![],
            targets: Targets::none(),
            temperature: 2.0,
            kd_weight: 1.0,
            feature_weight: 0.0,
            kd_concat: None,
            feature_metric: None,
            anchors: None,
        };
        let value = sgd_step(b, &mut st, &mut net, &mut sgd, &xs, [batch, 3, 8, 8], &loss);
        let params = net.params().iter().map(|p| p.value.to_vec(b)).collect();
        let running = net
            .batchnorms()
            .iter()
            .map(|bn| (bn.name.clone(), bn.running_mean.to_vec(b), bn.running_var.to_vec(b)))
            .collect();
        (value, params, running)
    }
    let (cl, cp, cr) = step(&cpu());
    assert!(cl.is_finite(), "CPU loss {cl}");
    assert!(!cr.is_empty(), "resnet20 has no BatchNorm layers");
    // The step used batch statistics and folded them in: a test of the
    // running statistics, not of their initial values.
    assert!(cr.iter().all(|(_, m, _)| m.iter().any(|&v| v != 0.0)), "running means did not move");
    for b in [g, t] {
        let (gl, gp, gr) = step(b);
        assert_close("loss", &[gl], &[cl], 1e-5, 1e-4);
        assert_eq!(gp.len(), cp.len());
        for (i, (a, b)) in gp.iter().zip(&cp).enumerate() {
            assert_close(&format!("parameter {i} after the step"), a, b, 1e-5, 1e-4);
        }
        assert_eq!(gr.len(), cr.len());
        for ((name, gm, gv), (cname, cm, cv)) in gr.iter().zip(&cr) {
            assert_eq!(name, cname);
            assert_close(&format!("{name} running_mean"), gm, cm, 1e-5, 1e-4);
            assert_close(&format!("{name} running_var"), gv, cv, 1e-5, 1e-4);
        }
    }
}

/// An LwF epoch on augmented views with the live teacher: the crops and
/// flips are drawn on the host from the run's seed, so both backends train
/// on the same views, and the old model (kept on the device) gives the
/// targets of each. Its losses and every parameter after the epoch agree
/// with the CPU's, and they differ from an epoch without augmentation (the
/// views did change the batches).
#[test]
fn augmented_epoch_with_live_teacher() {
    use lwf_engine::data::augment::Augment;
    use lwf_engine::data::{Normalization, Pixels, Split};
    use lwf_engine::incremental::train::{Example, LossPlan, Trainer};
    use lwf_engine::incremental::{Hyper, Silent};
    let (Some(g), Some(t)) = (gpu(), gpu_tiled()) else { return };
    let (n, side) = (20, 8);
    let split = Split::new(
        Pixels::F32(rand_vec(12, n * 3 * side * side, 0.0, 1.0)),
        (0..n as u32).map(|i| i % 2).collect(),
        3,
        side,
        side,
    );
    let norm = Normalization { mean: vec![0.4, 0.5, 0.6], std: vec![0.2, 0.25, 0.3] };
    fn epoch<B: Backend>(
        b: &B,
        split: &Split,
        norm: &Normalization,
        augment: Augment,
    ) -> (f32, Vec<Vec<f32>>) {
        let arch =
            Arch { name: "cnn-m".into(), input: [3, 8, 8], conv: vec![4, 8], hidden: 16, resnet: None };
        let mut rng = Rng::new(42);
        let mut net = Net::new(b, arch, &mut rng);
        net.add_head(b, &mut rng, &[5, 6, 7]);
        let mut tr = Trainer::new(b.clone());
        let examples: Vec<Example> =
            (0..split.len()).map(|idx| Example { idx, head: 1, label: split.labels[idx] }).collect();
        let (teachers, _) = tr.record_outputs(&net, split, norm, &examples, &[0], 8, false);
        let old = net.frozen_copy(b);
        net.add_head(b, &mut rng, &[0, 1]);
        net.set_trainable(true, 0, &[0, 1]);
        let plan = LossPlan {
            ce_heads: vec![1],
            teachers: &teachers,
            anchors: None,
            live: Some(&old),
            old_features: None,
            kd_concat: None,
            feature_metric: None,
        };
        let hyper = Hyper { batch_size: 8, lr: 0.05, augment, ..Hyper::default() };
        let phase = tr
            .run_epochs(
                &mut net,
                split,
                norm,
                &examples,
                &plan,
                &hyper,
                1,
                &mut Rng::new(7),
                &Silent,
                "t",
                None,
            )
            .expect("an epoch");
        (phase.last_loss, net.params().iter().map(|p| p.value.to_vec(b)).collect())
    }
    let views = Augment::Set { crop: true, flip: true };
    let (cl, cp) = epoch(&cpu(), &split, &norm, views);
    let (plain, _) = epoch(&cpu(), &split, &norm, Augment::Off);
    assert!(cl.is_finite() && plain.is_finite());
    assert_ne!(cl, plain, "augmented views left the last batch's loss unchanged");
    for b in [g, t] {
        let (gl, gp) = epoch(b, &split, &norm, views);
        assert_close("last loss", &[gl], &[cl], 1e-5, 1e-4);
        for (i, (a, c)) in gp.iter().zip(&cp).enumerate() {
            assert_close(&format!("parameter {i} after the epoch"), a, c, 1e-5, 1e-4);
        }
    }
}

/// Class statistics come from features computed on the device: the trunk's
/// features of a small split (several batches, a partial last one), the
/// logits recorded in the same pass, and the class means built from them
/// agree with the CPU backend.
#[test]
fn features_and_class_statistics() {
    use lwf_engine::data::{Normalization, Pixels, Split};
    use lwf_engine::incremental::stats::{ClassStats, StatsKind};
    use lwf_engine::incremental::train::{Example, Trainer};
    let Some(g) = gpu() else { return };
    let n = 11;
    let split = Split::new(
        Pixels::F32(rand_vec(9, n * 144, 0.0, 1.0)),
        (0..n as u32).map(|i| i % 3).collect(),
        1,
        12,
        12,
    );
    let norm = Normalization { mean: vec![0.5], std: vec![0.25] };
    fn outputs<B: Backend>(b: &B, split: &Split, norm: &Normalization) -> (Vec<f32>, Vec<f32>) {
        let arch =
            Arch { name: "cnn-s".into(), input: [1, 12, 12], conv: vec![4, 8], hidden: 16, resnet: None };
        let mut rng = Rng::new(42);
        let mut net = Net::new(b, arch, &mut rng);
        net.add_head(b, &mut rng, &[0, 1, 2]);
        let probe: Vec<Example> = (0..split.len()).map(|idx| Example { idx, head: 0, label: 0 }).collect();
        let mut tr = Trainer::new(b.clone());
        let (teachers, feats) = tr.record_outputs(&net, split, norm, &probe, &[0], 4, true);
        (feats, teachers[0].logits.clone())
    }
    let (cf, cz) = outputs(&cpu(), &split, &norm);
    let (gf, gz) = outputs(g, &split, &norm);
    assert_eq!(cf.len(), n * 16);
    assert_close("features", &gf, &cf, 1e-5, 1e-4);
    assert_close("logits recorded in the same pass", &gz, &cz, 1e-5, 1e-4);
    let stats = |f: &[f32]| ClassStats::compute(f, &split.labels, &[0, 1, 2], 16, StatsKind::Cov);
    let (cs, gs) = (stats(&cf), stats(&gf));
    assert_eq!(cs.counts, gs.counts);
    assert_close("class means", &gs.means, &cs.means, 1e-5, 1e-4);
    let (cg, gg) = (cs.gauss.unwrap(), gs.gauss.unwrap());
    assert_close("Tukey-space means", &gg.means, &cg.means, 1e-5, 1e-4);
    assert_close("covariances", &gg.covs, &cg.covs, 1e-5, 1e-3);
}

/// A GPU buffer over the device's limits is an error a verb returns, not a
/// panic mid-step: the backend keeps the first fault, skips what follows
/// (reads give zeros), a training step runs to its end, and saving refuses
/// to write a model read back from a faulted device.
#[test]
fn a_buffer_over_the_device_limit_is_an_error_not_a_panic() {
    if gpu().is_none() {
        return; // skipped (said so), or failed under LWF_REQUIRE_GPU=1
    }
    // A device of its own: the cap and the fault must not touch the shared one.
    let g = WgpuBackend::new().expect("a second device on the adapter");
    assert_eq!(g.fault(), None);
    let before = g.upload(&[1.0; 16]);
    g.set_buffer_limit(4096);
    let big = g.zeros(2048);
    let why = g.fault().expect("an 8 KiB buffer over a 4 KiB cap is a fault");
    assert!(why.contains("exceeds the GPU's largest buffer (4096 bytes)") && !why.contains('\n'), "{why}");
    assert_eq!(g.download(&big), vec![0.0; 2048]);
    assert_eq!(g.download(&before), vec![0.0; 16], "after a fault every read is zeros");

    // A training step whose im2col scratch cannot fit: no panic, and the fault says why.
    let g = WgpuBackend::new().expect("a third device");
    g.set_buffer_limit(16 * 1024);
    let arch = ArchKind::CnnS.build([1, 28, 28]);
    let mut rng = Rng::new(1);
    let mut net = Net::new(&g, arch.clone(), &mut rng);
    net.add_head(&g, &mut rng, &[0, 1]);
    let xs = rand_vec(2, 8 * 28 * 28, -1.0, 1.0);
    let labels = vec![0u32, 1, 0, 1, 0, 1, 0, 1];
    let loss = BatchLoss {
        ce: vec![(0, labels.as_slice())],
        kd: vec![],
        targets: Targets::none(),
        temperature: 2.0,
        kd_weight: 1.0,
        feature_weight: 0.0,
        kd_concat: None,
        feature_metric: None,
        anchors: None,
    };
    let mut sgd = Sgd::new(SgdHyper { lr: 0.05, momentum: 0.9, weight_decay: 5e-4 });
    let value = sgd_step(&g, &mut StepState::default(), &mut net, &mut sgd, &xs, [8, 1, 28, 28], &loss);
    let why = g.fault().expect("cnn-s's buffers do not fit in 16 KiB");
    assert!(why.contains("16384 bytes"), "{why} (loss read back: {value})");

    let dir = std::env::temp_dir().join(format!("lwf-gpu-fault-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let out = dir.join("m.safetensors");
    let norm = lwf_engine::data::Normalization { mean: vec![0.5], std: vec![0.25] };
    let meta = lwf_engine::checkpoint::Meta::new(arch, &norm, lwf_engine::incremental::HeadMode::PerTask);
    let err = lwf_engine::checkpoint::save(&out, &g, &net, &meta, None, None)
        .expect_err("a faulted device saves nothing");
    assert!(matches!(err, lwf_engine::Error::Device(_)), "{err}");
    assert!(!out.exists(), "no file written");
    let _ = std::fs::remove_dir_all(&dir);
}
