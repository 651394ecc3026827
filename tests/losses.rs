//! The fused loss kernels (`Backend::kd_loss`, `Backend::softmax_xent`)
//! against the unfused references in `cpu::naive`, on random and on extreme
//! logits; the accuracy of `exp_fast`; and the accumulate contract of every
//! loss kernel.

mod common;

use common::*;
use lwf_engine::backend::cpu::{exp_fast, naive};
use lwf_engine::backend::{Backend, IGNORE_LABEL};
use lwf_engine::rng::Rng;
use proptest::prelude::*;

/// Fused KD over student rows of stride `ld` (extra columns preset to a
/// marker that must survive); returns (loss, dzs compacted to `cols`).
fn fused_kd(
    zs: &[f32],
    zt: &[f32],
    rows: usize,
    cols: usize,
    ld: usize,
    t: f32,
    scale: f32,
) -> (f32, Vec<f32>) {
    let b = B::new();
    let init: Vec<f32> = (0..rows * ld).map(|i| if i % ld < cols { 0.0 } else { 7.0 }).collect();
    let mut dz = b.upload(&init);
    let mut loss = b.zeros(1);
    b.kd_loss(&mut dz, &mut loss, &b.upload(zs), &b.upload(zt), rows, cols, ld, t, scale);
    let dz = b.download(&dz);
    for r in 0..rows {
        assert!(
            dz[r * ld + cols..(r + 1) * ld].iter().all(|&v| v == 7.0),
            "kd_loss wrote past column {cols}"
        );
    }
    let compact = (0..rows).flat_map(|r| dz[r * ld..r * ld + cols].to_vec()).collect();
    (b.download(&loss)[0], compact)
}

fn fused_ce(z: &[f32], labels: &[u32], rows: usize, cols: usize, scale: f32) -> (f32, Vec<f32>) {
    let b = B::new();
    let (mut dz, mut loss) = (b.zeros(rows * cols), b.zeros(1));
    b.softmax_xent(&mut dz, &mut loss, &b.upload(z), &b.upload_idx(labels), rows, cols, scale);
    (b.download(&loss)[0], b.download(&dz))
}

/// Student rows of stride `ld` (the first `cols` columns from `compact`).
fn strided(compact: &[f32], rows: usize, cols: usize, ld: usize) -> Vec<f32> {
    let mut v = vec![0.5; rows * ld];
    for r in 0..rows {
        v[r * ld..r * ld + cols].copy_from_slice(&compact[r * cols..(r + 1) * cols]);
    }
    v
}

/// `|a − b| ≤ rtol·|b| + 1e-7` (the floor covers losses that are exactly 0).
fn near(a: f64, b: f64, rtol: f64) -> bool {
    (a - b).abs() <= rtol * b.abs() + 1e-7
}

proptest! {
    #![proptest_config(proptest_cfg(128))]

    /// Random logits, any temperature, student wider than the teacher: loss
    /// to 1e-5 relative of naive::kd_loss (and of an f64 host evaluation),
    /// gradient to 1e-5 (relative, and of its largest entry `scale/T`); the
    /// measured differences are ~3e-7, a few ulps.
    #[test]
    fn kd_loss_matches_naive(
        rows in 1usize..40, cols in 1usize..200, extra in 0usize..5, t in 1.0f32..10.0,
        spread in 0.1f32..20.0, scale in 0.01f32..2.0, seed: u64,
    ) {
        let mut rng = Rng::new(seed);
        let zs = normal_vec(&mut rng, rows * cols, spread);
        let zt = normal_vec(&mut rng, rows * cols, spread);
        let ld = cols + extra;
        let (loss, dz) = fused_kd(&strided(&zs, rows, cols, ld), &zt, rows, cols, ld, t, scale);
        let (loss_ref, dz_ref) = naive::kd_loss(&zs, &zt, rows, cols, t, scale);
        let host = kd_f64(&zs, &zt, rows, cols, cols, t as f64, scale as f64);
        prop_assert!(near(loss as f64, loss_ref, 1e-5), "loss {} vs naive {}", loss, loss_ref);
        prop_assert!(near(loss as f64, host, 1e-5), "loss {} vs f64 {}", loss, host);
        let gmax = (scale / t) as f64;
        close("kd dzs", &dz, &dz_ref, 1e-5 * gmax, 1e-5).map_err(TestCaseError::fail)?;
    }

    /// Random logits with some IGNORE_LABEL rows: loss and gradient of
    /// softmax_xent vs naive::softmax_xent (computed in f64).
    #[test]
    fn softmax_xent_matches_naive(
        rows in 1usize..40, cols in 1usize..200, spread in 0.1f32..20.0, scale in 0.01f32..2.0, seed: u64,
    ) {
        let mut rng = Rng::new(seed);
        let z = normal_vec(&mut rng, rows * cols, spread);
        let labels: Vec<u32> =
            (0..rows).map(|_| if rng.below(5) == 0 { IGNORE_LABEL } else { rng.below(cols) as u32 }).collect();
        let (loss, dz) = fused_ce(&z, &labels, rows, cols, scale);
        let (loss_ref, dz_ref) = naive::softmax_xent(&z, &labels, rows, cols, scale);
        prop_assert!((loss as f64 - loss_ref).abs() <= 1e-5 * loss_ref.abs() + 1e-7, "loss {} vs naive {}", loss, loss_ref);
        close("ce dlogits", &dz, &dz_ref, 1e-5 * scale as f64, 1e-5).map_err(TestCaseError::fail)?;
        for (r, &y) in labels.iter().enumerate() {
            if y == IGNORE_LABEL {
                prop_assert!(dz[r * cols..(r + 1) * cols].iter().all(|&v| v == 0.0), "ignored row {} has a gradient", r);
            }
        }
    }
}

/// Rows of extreme logits: ±1e4 at random, all identical, one-hot-like.
fn extreme_rows(rng: &mut Rng, cols: usize) -> Vec<Vec<f32>> {
    let mut one_hot = vec![-1e4; cols];
    one_hot[rng.below(cols)] = 1e4;
    vec![
        (0..cols).map(|_| if rng.below(2) == 0 { 1e4 } else { -1e4 }).collect(),
        vec![1e4; cols],
        vec![-1e4; cols],
        vec![3.5; cols],
        one_hot,
        (0..cols).map(|i| if i == 0 { 1e4 } else { 0.0 }).collect(),
    ]
}

#[test]
fn kd_loss_on_extreme_logits_is_finite_and_matches_naive() {
    let mut rng = Rng::new(11);
    for cols in [1, 2, 7, 100] {
        let rows = extreme_rows(&mut rng, cols);
        // Every (student, teacher) pairing of the extreme rows.
        let zs: Vec<f32> = rows.iter().flat_map(|s| rows.iter().flat_map(move |_| s.clone())).collect();
        let zt: Vec<f32> = rows.iter().flat_map(|_| rows.iter().flat_map(|t| t.clone())).collect();
        let n = rows.len() * rows.len();
        for t in [1.0f32, 2.0, 4.0, 10.0] {
            let (loss, dz) = fused_kd(&strided(&zs, n, cols, cols + 1), &zt, n, cols, cols + 1, t, 0.5);
            let (loss_ref, dz_ref) = naive::kd_loss(&zs, &zt, n, cols, t, 0.5);
            let host = kd_f64(&zs, &zt, n, cols, cols, t as f64, 0.5);
            assert!(loss.is_finite() && dz.iter().all(|v| v.is_finite()), "cols {cols}, T {t}: not finite");
            assert!(near(loss as f64, host, 1e-5), "cols {cols}, T {t}: loss {loss} vs f64 {host}");
            assert!(near(loss as f64, loss_ref, 1e-5), "cols {cols}, T {t}: loss {loss} vs naive {loss_ref}");
            assert_close(&format!("kd dzs, cols {cols}, T {t}"), &dz, &dz_ref, 1e-6, 1e-5);
        }
    }
}

#[test]
fn softmax_xent_on_extreme_logits_is_finite_and_matches_naive() {
    let mut rng = Rng::new(12);
    for cols in [1, 2, 7, 100] {
        let rows = extreme_rows(&mut rng, cols);
        let n = rows.len() * cols;
        // Each extreme row once per possible label.
        let z: Vec<f32> = rows.iter().flat_map(|r| (0..cols).flat_map(move |_| r.clone())).collect();
        let labels: Vec<u32> = (0..n).map(|i| (i % cols) as u32).collect();
        let (loss, dz) = fused_ce(&z, &labels, n, cols, 0.25);
        let (loss_ref, dz_ref) = naive::softmax_xent(&z, &labels, n, cols, 0.25);
        assert!(loss.is_finite() && dz.iter().all(|v| v.is_finite()), "cols {cols}: not finite");
        assert!(
            (loss as f64 - loss_ref).abs() <= 1e-5 * loss_ref + 1e-7,
            "cols {cols}: loss {loss} vs {loss_ref}"
        );
        assert_close(&format!("ce dlogits, cols {cols}"), &dz, &dz_ref, 1e-6, 1e-5);
    }
}

/// Bound on the relative error of `exp_fast` over [-87, 88]. The exhaustive
/// sweep below measured 2.608e-7 (≈ 2.2 ulp, at x = −68.967926; 2.604e-7 at
/// 70.35456 for x ≥ 0); f32::exp is within 5.96e-8 (half an ulp).
const EXP_FAST_REL_ERR: f64 = 2.7e-7;

/// Every f32 in [-87, 88] (2.2·10⁹ values, about 10 s on 2 cores under
/// `cargo test --release`): the bound the sampled test below uses comes
/// from this sweep, and it runs every time so a change to `exp_fast` cannot
/// slip between the samples.
#[test]
fn exp_fast_exhaustive() {
    use rayon::prelude::*;
    let (lo, hi) = (-87.0f32, 88.0f32);
    // Non-negative floats in [0, 88] and negative ones in (−87, 0), by bits.
    let pos = 0..=hi.to_bits();
    let neg = (-0.0f32).to_bits() + 1..=lo.to_bits();
    let worst = |r: std::ops::RangeInclusive<u32>| {
        r.into_par_iter()
            .map(|bits| {
                let x = f32::from_bits(bits);
                let exact = (x as f64).exp();
                ((exp_fast(x) as f64 - exact).abs() / exact, x)
            })
            .reduce(|| (0.0, 0.0), |a, b| if b.0 > a.0 { b } else { a })
    };
    let (p, n) = (worst(pos), worst(neg));
    eprintln!(
        "exp_fast exhaustive: max rel err {:.4e} at {} (x ≥ 0), {:.4e} at {} (x < 0)",
        p.0, p.1, n.0, n.1
    );
    assert!(p.0.max(n.0) < EXP_FAST_REL_ERR);
}

/// exp_fast against the exact exponential (f64, rounded) over its whole
/// range, on a dense grid plus random points (5.2·10⁶ values; measured
/// maximum 2.585e-7).
#[test]
fn exp_fast_is_accurate_over_its_range() {
    let mut worst = (0.0f64, 0.0f32);
    let mut worst_std = 0.0f64;
    let mut rng = Rng::new(5);
    let grid = (0..4_000_001).map(|i| -87.0 + 175.0 * (i as f32 / 4_000_000.0));
    let random = (0..1_000_000).map(|_| rng.uniform(-87.0, 88.0));
    let near_zero = (0..200_001).map(|i| (i as f32 - 100_000.0) * 1e-5);
    for x in grid.chain(random).chain(near_zero) {
        let exact = (x as f64).exp();
        let e = (exp_fast(x) as f64 - exact).abs() / exact;
        if e > worst.0 {
            worst = (e, x);
        }
        worst_std = worst_std.max((x.exp() as f64 - exact).abs() / exact);
    }
    eprintln!("exp_fast max rel err {:.3e} at x = {} (f32::exp: {:.3e})", worst.0, worst.1, worst_std);
    assert!(worst.0 < EXP_FAST_REL_ERR, "exp_fast max relative error {:.3e} at x = {}", worst.0, worst.1);
    assert_eq!(exp_fast(0.0), 1.0);
    // Outside the range it saturates instead of returning 0 / inf.
    for x in [-88.0f32, -100.0, -1e4, -f32::MAX] {
        let y = exp_fast(x);
        assert!(y > 0.0 && y < 2e-38, "exp_fast({x}) = {y}");
    }
    for x in [89.0f32, 1e4, f32::MAX] {
        let y = exp_fast(x);
        assert!(y.is_finite() && near(y as f64, 88f64.exp(), EXP_FAST_REL_ERR), "exp_fast({x}) = {y}");
    }
}

// ---- accumulate semantics -----------------------------------------------------------

#[test]
fn loss_kernels_accumulate_loss_and_gradient() {
    let b = B::new();
    let mut rng = Rng::new(8);
    let (rows, cols, ld) = (5, 9, 11);
    let zs = b.upload(&normal_vec(&mut rng, rows * ld, 3.0));
    let zt = b.upload(&normal_vec(&mut rng, rows * cols, 3.0));
    let labels = b.upload_idx(&[0, 8, IGNORE_LABEL, 3, 3]);
    let w = b.upload(&normal_vec(&mut rng, 20, 1.0));
    let anchor = b.upload(&normal_vec(&mut rng, 20, 1.0));
    let fisher = b.upload(&uniform_vec(&mut rng, 20, 0.0, 2.0));

    type Call<'a> = Box<dyn Fn(&mut <B as Backend>::Buf, &mut <B as Backend>::Buf) + 'a>;
    let calls: Vec<(&str, usize, Call)> = vec![
        ("kd_loss", rows * ld, Box::new(|dz, l| b.kd_loss(dz, l, &zs, &zt, rows, cols, ld, 2.0, 0.3))),
        ("softmax_xent", rows * ld, Box::new(|dz, l| b.softmax_xent(dz, l, &zs, &labels, rows, ld, 0.3))),
        ("anchor_penalty", 20, Box::new(|dw, l| b.anchor_penalty(dw, l, &w, &anchor, None, 0.3))),
        (
            "anchor_penalty+fisher",
            20,
            Box::new(|dw, l| b.anchor_penalty(dw, l, &w, &anchor, Some(&fisher), 0.3)),
        ),
    ];
    for (name, len, call) in calls {
        let (mut g, mut l) = (b.zeros(len), b.zeros(1));
        call(&mut g, &mut l);
        let (g1, l1) = (b.download(&g), b.download(&l)[0]);
        assert!(l1 > 0.0 && g1.iter().any(|&v| v != 0.0), "{name}: nothing computed");
        call(&mut g, &mut l);
        // Twice is double. (softmax_xent adds `scale·p` and subtracts `scale`
        // at the label in two roundings, so gradients match to an ulp, not bits.)
        let g2: Vec<f32> = g1.iter().map(|v| 2.0 * v).collect();
        assert_close(&format!("{name}: twice"), &b.download(&g), &g2, 1e-7, 1e-6);
        assert_eq!(b.download(&l)[0], 2.0 * l1, "{name}: second call did not double the loss");
        // Onto non-zero buffers: adds to what is there.
        let base = normal_vec(&mut rng, len, 1.0);
        let (mut g, mut l) = (b.upload(&base), b.upload(&[1.5]));
        call(&mut g, &mut l);
        let want: Vec<f32> = base.iter().zip(&g1).map(|(a, d)| a + d).collect();
        assert_close(&format!("{name}: onto a gradient"), &b.download(&g), &want, 1e-7, 1e-6);
        assert_eq!(b.download(&l)[0], 1.5 + l1, "{name}: did not add onto the loss");
    }
}
