//! The engine end to end on the CPU backend: fast kernels against the naive
//! references, a training run that really learns, bit-for-bit determinism,
//! the steady-state no-allocation property and frozen-trunk gradients.

mod common;

use common::*;
use lwf_engine::autodiff::Tape;
use lwf_engine::backend::cpu::naive;
use lwf_engine::backend::{Backend, Conv2dParams, Gemm, PoolParams, SgdHyper};
use lwf_engine::nn::{Arch, Net};
use lwf_engine::optim::Sgd;
use lwf_engine::rng::Rng;
use lwf_engine::step::{sgd_step, BatchLoss, StepState, Targets};
use proptest::prelude::*;

// ---- (a) fast kernels vs naive references --------------------------------------------

/// `Σ_p |a_ip|·|b_pj|` per output: the scale of a dot product's rounding error.
fn abs_products(a: &[f32], b: &[f32], g: Gemm) -> Vec<f64> {
    let abs_a: Vec<f32> = a.iter().map(|v| v.abs()).collect();
    let abs_b: Vec<f32> = b.iter().map(|v| v.abs()).collect();
    let mut c = vec![0.0; g.m * g.n];
    naive::sgemm(&mut c, &abs_a, &abs_b, Gemm { alpha: 1.0, beta: 0.0, ..g });
    c.iter().map(|&v| v as f64).collect()
}

/// Fast sgemm vs naive::sgemm, elementwise within `8·k·ε` of the absolute
/// products (a loose worst case; an indexing error is off by O(1)).
fn check_sgemm(g: Gemm, seed: u64) -> Result<(), String> {
    let b = B::new();
    let mut rng = Rng::new(seed);
    let a = normal_vec(&mut rng, g.m * g.k, 1.0);
    let bm = normal_vec(&mut rng, g.k * g.n, 1.0);
    // With beta = 0, C must not be read: start from NaN.
    let c0 = if g.beta == 0.0 { vec![f32::NAN; g.m * g.n] } else { normal_vec(&mut rng, g.m * g.n, 1.0) };
    let mut want = c0.clone();
    naive::sgemm(&mut want, &a, &bm, g);
    let mut c = b.upload(&c0);
    b.sgemm(&mut c, &b.upload(&a), &b.upload(&bm), g);
    let got = b.download(&c);
    let bound = abs_products(&a, &bm, g);
    let eps = f32::EPSILON as f64;
    for i in 0..got.len() {
        let old = if g.beta == 0.0 { 0.0 } else { (g.beta * c0[i]).abs() as f64 };
        let tol = 8.0 * (g.k as f64 + 2.0) * eps * (g.alpha.abs() as f64 * bound[i] + old) + 1e-30;
        let d = (got[i] as f64 - want[i] as f64).abs();
        if d.is_nan() || d > tol {
            return Err(format!(
                "{g:?}: C[{}, {}] = {} want {} (diff {d:e} > {tol:e})",
                i / g.n,
                i % g.n,
                got[i],
                want[i]
            ));
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(proptest_cfg(200))]

    /// All four transpose combinations, alpha/beta, odd sizes.
    #[test]
    fn sgemm_matches_naive(
        m in 1usize..70, n in 1usize..70, k in 1usize..70, ta: bool, tb: bool,
        alpha in prop_oneof![Just(1.0f32), -2.0f32..2.0], beta in prop_oneof![Just(0.0f32), Just(1.0f32), -1.0f32..1.0],
        seed: u64,
    ) {
        let g = Gemm { m, n, k, trans_a: ta, trans_b: tb, alpha, beta };
        check_sgemm(g, seed).map_err(TestCaseError::fail)?;
    }

    /// conv2d_fwd vs the direct 7-loop naive::conv2d, and both backward
    /// kernels through the adjoint identities ⟨conv(x, w), dy⟩ = ⟨x, bwd_data(dy, w)⟩
    /// = ⟨w, bwd_weight(x, dy)⟩ (f64 dot products on the host).
    #[test]
    fn conv2d_matches_naive_and_its_adjoints(
        n in 1usize..4, c in 1usize..5, oc in 1usize..6, h in 1usize..10, w in 1usize..10,
        k in 1usize..5, s in 1usize..4, p in 0usize..3, seed: u64,
    ) {
        prop_assume!(h + 2 * p >= k && w + 2 * p >= k);
        let cp = Conv2dParams { n, c, h, w, oc, kh: k, kw: k, sh: s, sw: s, ph: p, pw: p };
        check_conv(cp, seed).map_err(TestCaseError::fail)?;
    }
}

proptest! {
    #![proptest_config(proptest_cfg(60))]

    /// The Winograd F(2×2,3×3) path (3×3, stride 1, pad 1, ≥ 4 input
    /// channels) pass by pass against the im2col path, elementwise, on odd
    /// sizes that leave partial tiles and blocks; the backward passes must
    /// accumulate into what the buffers held.
    #[test]
    fn winograd_conv_matches_im2col(
        n in 1usize..5, c in 4usize..10, oc in 1usize..9, h in 1usize..12, w in 1usize..12, seed: u64,
    ) {
        let cp = Conv2dParams { n, c, h, w, oc, kh: 3, kw: 3, sh: 1, sw: 1, ph: 1, pw: 1 };
        check_against_im2col(cp, seed).map_err(TestCaseError::fail)?;
        check_conv(cp, seed).map_err(TestCaseError::fail)?;
    }

    /// The direct path (stride 1, patch `C·KH·KW` ≤ 27: the first layer)
    /// against im2col the same way, over kernel sizes, paddings and widths
    /// that leave partial 8-lane chunks.
    #[test]
    fn direct_conv_matches_im2col(
        n in 1usize..4, c in 1usize..4, oc in 1usize..6, h in 1usize..12, w in 1usize..20,
        k in 1usize..4, p in 0usize..3, seed: u64,
    ) {
        prop_assume!(h + 2 * p >= k && w + 2 * p >= k);
        let cp = Conv2dParams { n, c, h, w, oc, kh: k, kw: k, sh: 1, sw: 1, ph: p, pw: p };
        check_against_im2col(cp, seed).map_err(TestCaseError::fail)?;
        check_conv(cp, seed).map_err(TestCaseError::fail)?;
    }
}

/// Every pass of the default backend (whichever path it picks for `p`)
/// against the im2col-only backend, elementwise.
fn check_against_im2col(p: Conv2dParams, seed: u64) -> Result<(), String> {
    let (fast, plain) = (B::new(), B::im2col_only());
    let mut rng = Rng::new(seed);
    let x = normal_vec(&mut rng, p.x_len(), 1.0);
    let wt = normal_vec(&mut rng, p.w_len(), 1.0);
    let dy = normal_vec(&mut rng, p.y_len(), 1.0);
    let dx0 = normal_vec(&mut rng, p.x_len(), 1.0);
    let dw0 = normal_vec(&mut rng, p.w_len(), 1.0);
    let run = |b: &B| {
        let mut y = b.upload(&vec![f32::NAN; p.y_len()]);
        b.conv2d_fwd(&mut y, &b.upload(&x), &b.upload(&wt), &p);
        let mut dx = b.upload(&dx0);
        b.conv2d_bwd_data(&mut dx, &b.upload(&dy), &b.upload(&wt), &p);
        let mut dw = b.upload(&dw0);
        b.conv2d_bwd_weight(&mut dw, &b.upload(&x), &b.upload(&dy), &p);
        (b.download(&y), b.download(&dx), b.download(&dw))
    };
    let (got, want) = (run(&fast), run(&plain));
    // The fused bias: conv2d_fwd_bias = conv2d_fwd + bias per output channel.
    let bias = normal_vec(&mut rng, p.oc, 1.0);
    let mut yb = fast.upload(&vec![f32::NAN; p.y_len()]);
    fast.conv2d_fwd_bias(&mut yb, &fast.upload(&x), &fast.upload(&wt), &fast.upload(&bias), &p);
    let ohw = p.oh() * p.ow();
    let with_bias: Vec<f32> = want.0.iter().enumerate().map(|(i, &v)| v + bias[(i / ohw) % p.oc]).collect();
    // Each output sums `terms` products of unit normals: rounding grows like √terms.
    let tol = |terms: usize| 8e-6 * (terms as f64).sqrt();
    close(&format!("fwd {p:?}"), &got.0, &want.0, tol(p.patch()), 1e-5)?;
    close(&format!("fwd with bias {p:?}"), &fast.download(&yb), &with_bias, tol(p.patch()), 1e-5)?;
    close(&format!("bwd_data {p:?}"), &got.1, &want.1, tol(p.oc * p.kh * p.kw), 1e-5)?;
    close(&format!("bwd_weight {p:?}"), &got.2, &want.2, tol(p.n * p.oh() * p.ow()), 1e-5)
}

proptest! {
    #![proptest_config(proptest_cfg(100))]

    /// Max pooling (the 2×2 fast path and the general one) against a plain
    /// scan, with values drawn from a few integers so ties are common: the
    /// first maximum in scan order must win, values and argmax both.
    #[test]
    fn maxpool_matches_a_plain_scan(
        n in 1usize..3, c in 1usize..4, h in 2usize..12, w in 2usize..12, k in 1usize..4, s in 1usize..4, seed: u64,
    ) {
        prop_assume!(h >= k && w >= k);
        let p = PoolParams { n, c, h, w, k, s, pad: 0 };
        let b = B::new();
        let mut rng = Rng::new(seed);
        let (x, y, am) = tied_pooling(&b, &mut rng, &p, 4);
        let (y, am) = (b.download(&y), b.download_idx(&am));
        let want = pool_winners(&x, h, w, k, s);
        prop_assert_eq!(&am, &want, "argmax of {:?}", p);
        let plane_of = |o: usize| o / (p.oh() * p.ow()) * h * w;
        for (o, &best) in want.iter().enumerate() {
            prop_assert_eq!(y[o], x[plane_of(o) + best as usize]);
        }
    }
}

proptest! {
    #![proptest_config(proptest_cfg(80))]

    /// A convolution and the 2×2 pooling of its output as one kernel
    /// (`conv2d_bias_maxpool_fwd`) against the two kernels one after the
    /// other, bit for bit, values and argmax: through the fused Winograd
    /// (≥ 4 channels) and direct (≤ 3) paths and the im2col fallback
    /// (stride 2), on sizes whose last row or column no window covers, with
    /// values from {−1, 0, 1} half the time so that ties are common.
    #[test]
    fn conv_maxpool_matches_conv_then_pool(
        n in 1usize..4, c in 1usize..7, oc in 1usize..6, h in 2usize..13, w in 2usize..21,
        stride in 1usize..3, ties: bool, seed: u64,
    ) {
        let p = Conv2dParams { n, c, h, w, oc, kh: 3, kw: 3, sh: stride, sw: stride, ph: 1, pw: 1 };
        prop_assume!(p.oh() >= 2 && p.ow() >= 2);
        let pool = PoolParams { n, c: oc, h: p.oh(), w: p.ow(), k: 2, s: 2, pad: 0 };
        let b = B::new();
        let mut rng = Rng::new(seed);
        let mut draw = |len: usize| -> Vec<f32> {
            if ties {
                (0..len).map(|_| (rng.next_u64() % 3) as f32 - 1.0).collect()
            } else {
                normal_vec(&mut rng, len, 1.0)
            }
        };
        let (x, wt, bias) = (draw(p.x_len()), draw(p.w_len()), draw(oc));
        let (x, wt, bias) = (b.upload(&x), b.upload(&wt), b.upload(&bias));
        let mut conv = b.upload(&vec![f32::NAN; p.y_len()]);
        b.conv2d_fwd_bias(&mut conv, &x, &wt, &bias, &p);
        let (mut want_y, mut want_a) = (b.zeros(pool.y_len()), b.zeros_idx(pool.y_len()));
        b.maxpool2d_fwd(&mut want_y, &mut want_a, &conv, &pool);
        let (mut y, mut a) = (b.upload(&vec![f32::NAN; pool.y_len()]), b.zeros_idx(pool.y_len()));
        let mut scratch = b.zeros(p.y_len());
        b.conv2d_bias_maxpool_fwd(&mut y, &mut a, &mut scratch, &x, &wt, &bias, &p, &pool);
        let bits = |v: Vec<f32>| v.into_iter().map(f32::to_bits).collect::<Vec<_>>();
        prop_assert_eq!(b.download_idx(&a), b.download_idx(&want_a), "argmax of {:?}", p);
        prop_assert_eq!(bits(b.download(&y)), bits(b.download(&want_y)), "values of {:?}", p);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]
    /// `maxpool2d_bwd_set` overwrites whatever `dx` held (NaN here) with
    /// exactly what zeroing and `maxpool2d_bwd` give: any window and stride,
    /// and half the cases the trunk's 2×2 / stride 2 on even planes.
    #[test]
    fn maxpool_bwd_set_matches_zero_then_bwd(
        n in 1usize..4, c in 1usize..4, h in 2usize..15, w in 2usize..15, k in 1usize..4, s in 1usize..4,
        even in any::<bool>(), seed: u64,
    ) {
        let (h, w, k, s) = if even { (h & !1, w & !1, 2, 2) } else { (h, w, k, s) };
        prop_assume!(h >= k && w >= k && h > 0 && w > 0);
        let p = PoolParams { n, c, h, w, k, s, pad: 0 };
        let b = B::new();
        let mut rng = Rng::new(seed);
        // Few distinct values: ties, so winners sit anywhere in their window.
        let (_, _, am) = tied_pooling(&b, &mut rng, &p, 3);
        let dy = b.upload(&normal_vec(&mut rng, p.y_len(), 1.0));
        let mut want = b.zeros(p.x_len());
        b.maxpool2d_bwd(&mut want, &dy, &am, &p);
        let mut got = b.upload(&vec![f32::NAN; p.x_len()]);
        b.maxpool2d_bwd_set(&mut got, &dy, &am, &p);
        let bits = |v: Vec<f32>| v.into_iter().map(f32::to_bits).collect::<Vec<_>>();
        prop_assert_eq!(bits(b.download(&got)), bits(b.download(&want)), "{:?}", p);
    }
}

/// An input of `p`'s shape drawn from `levels` small integers (so ties are
/// common), and its max pooling: `(x, y, argmax)`.
fn tied_pooling(
    b: &B,
    rng: &mut Rng,
    p: &PoolParams,
    levels: u64,
) -> (Vec<f32>, <B as Backend>::Buf, <B as Backend>::IdxBuf) {
    let x: Vec<f32> = (0..p.x_len()).map(|_| (rng.next_u64() % levels) as f32).collect();
    let (mut y, mut am) = (b.zeros(p.y_len()), b.zeros_idx(p.y_len()));
    b.maxpool2d_fwd(&mut y, &mut am, &b.upload(&x), p);
    (x, y, am)
}

fn dot(a: &[f32], b: &[f32]) -> f64 {
    a.iter().zip(b).map(|(&x, &y)| x as f64 * y as f64).sum()
}

fn abs_dot(a: &[f32], b: &[f32]) -> f64 {
    a.iter().zip(b).map(|(&x, &y)| (x as f64 * y as f64).abs()).sum()
}

fn check_conv(p: Conv2dParams, seed: u64) -> Result<(), String> {
    let b = B::new();
    let mut rng = Rng::new(seed);
    let x = normal_vec(&mut rng, p.x_len(), 1.0);
    let wt = normal_vec(&mut rng, p.w_len(), 1.0);
    let dy = normal_vec(&mut rng, p.y_len(), 1.0);
    let mut y = b.upload(&vec![f32::NAN; p.y_len()]);
    b.conv2d_fwd(&mut y, &b.upload(&x), &b.upload(&wt), &p);
    let y = b.download(&y);
    let want = naive::conv2d(&x, &wt, &p);
    close(&format!("conv2d_fwd {p:?}"), &y, &want, 1e-5 * (p.patch() as f64).sqrt(), 1e-5)?;

    let mut dx = b.zeros(p.x_len());
    b.conv2d_bwd_data(&mut dx, &b.upload(&dy), &b.upload(&wt), &p);
    let mut dw = b.zeros(p.w_len());
    b.conv2d_bwd_weight(&mut dw, &b.upload(&x), &b.upload(&dy), &p);
    let (dx, dw) = (b.download(&dx), b.download(&dw));
    let lhs = dot(&want, &dy);
    let scale = abs_dot(&y, &dy) + 1e-6;
    for (name, rhs, sc) in
        [("bwd_data", dot(&x, &dx), abs_dot(&x, &dx)), ("bwd_weight", dot(&wt, &dw), abs_dot(&wt, &dw))]
    {
        let tol = 1e-5 * (scale + sc);
        if (lhs - rhs).abs() > tol {
            return Err(format!("conv2d_{name} {p:?}: ⟨y, dy⟩ = {lhs} but adjoint gives {rhs}"));
        }
    }
    Ok(())
}

#[test]
fn sgemm_large_odd_shapes_match_naive() {
    // Past matrixmultiply's cache blocks (kc 256, mc 64…) with remainders.
    for (i, &(ta, tb)) in [(false, false), (true, false), (false, true), (true, true)].iter().enumerate() {
        let g = Gemm { m: 131, n: 259, k: 301, trans_a: ta, trans_b: tb, alpha: 0.75, beta: 0.5 };
        check_sgemm(g, i as u64).unwrap();
    }
}

#[test]
fn conv2d_at_cnn_s_sizes_matches_naive() {
    // conv2 of cnn-s (32 → 64 at 14×14), batch 5: several rayon chunks.
    let p = Conv2dParams { n: 5, c: 32, h: 14, w: 14, oc: 64, kh: 3, kw: 3, sh: 1, sw: 1, ph: 1, pw: 1 };
    check_conv(p, 1).unwrap();
}

/// cnn-m's convolutions at 32×32 colour input, each through the path the
/// CPU backend picks for it (3 input channels: direct; 32 and 64: Winograd,
/// the third block's 64 → 128 at 8×8 included), against the naive reference
/// and against im2col.
#[test]
fn conv2d_at_cnn_m_sizes_matches_naive() {
    for (c, hw, oc) in [(3, 32, 32), (32, 16, 64), (64, 8, 128)] {
        let p = Conv2dParams { n: 3, c, h: hw, w: hw, oc, kh: 3, kw: 3, sh: 1, sw: 1, ph: 1, pw: 1 };
        check_conv(p, c as u64).unwrap();
        check_against_im2col(p, c as u64 + 1).unwrap();
    }
}

/// Every backward kernel accumulates: running it on a buffer that holds `d0`
/// gives `d0 + (the result on zeros)`.
#[test]
fn backward_kernels_accumulate() {
    let b = B::new();
    let mut rng = Rng::new(2);
    let p = Conv2dParams { n: 3, c: 2, h: 6, w: 5, oc: 3, kh: 3, kw: 3, sh: 1, sw: 2, ph: 1, pw: 1 };
    let pp = PoolParams { n: 3, c: 2, h: 6, w: 5, k: 2, s: 2, pad: 0 };
    let x = b.upload(&normal_vec(&mut rng, p.x_len(), 1.0));
    let wt = b.upload(&normal_vec(&mut rng, p.w_len(), 1.0));
    let dy = b.upload(&normal_vec(&mut rng, p.y_len(), 1.0));
    let dyp = b.upload(&normal_vec(&mut rng, pp.y_len(), 1.0));
    let (mut yp, mut am) = (b.zeros(pp.y_len()), b.zeros_idx(pp.y_len()));
    b.maxpool2d_fwd(&mut yp, &mut am, &x, &pp);
    let mut yr = b.zeros(p.x_len());
    b.relu_fwd(&mut yr, &x);
    let (ga, gb) = (b.upload(&normal_vec(&mut rng, 12, 1.0)), b.upload(&normal_vec(&mut rng, 20, 1.0)));

    type Call<'a> = Box<dyn Fn(&mut <B as Backend>::Buf) + 'a>;
    let calls: Vec<(&str, usize, Call)> = vec![
        ("conv2d_bwd_data", p.x_len(), Box::new(|d| b.conv2d_bwd_data(d, &dy, &wt, &p))),
        ("conv2d_bwd_weight", p.w_len(), Box::new(|d| b.conv2d_bwd_weight(d, &x, &dy, &p))),
        ("maxpool2d_bwd", pp.x_len(), Box::new(|d| b.maxpool2d_bwd(d, &dyp, &am, &pp))),
        ("relu_bwd", p.x_len(), Box::new(|d| b.relu_bwd(d, &yr, &x))),
        ("bias_grad", p.oc, Box::new(|d| b.bias_grad(d, &dy, p.n, p.oc, p.oh() * p.ow()))),
        ("sgemm acc", 15, Box::new(|d| b.sgemm(d, &ga, &gb, Gemm::nn(3, 5, 4).acc()))),
    ];
    for (name, len, call) in calls {
        let mut fresh = b.zeros(len);
        call(&mut fresh);
        let fresh = b.download(&fresh);
        assert!(fresh.iter().any(|&v| v != 0.0), "{name}: computed nothing");
        let d0 = normal_vec(&mut rng, len, 1.0);
        let mut acc = b.upload(&d0);
        call(&mut acc);
        let want: Vec<f32> = d0.iter().zip(&fresh).map(|(a, f)| a + f).collect();
        assert_close(name, &b.download(&acc), &want, 1e-5, 1e-5);
    }
}

// ---- a small training loop ------------------------------------------------------------

/// 1×8×8 images; class c lights up quadrant c (row-major: 0 top-left … 3
/// bottom-right) on top of Gaussian noise (σ = 0.8).
fn quadrants(rng: &mut Rng, count: usize) -> (Vec<f32>, Vec<u32>) {
    let mut xs = Vec::with_capacity(count * 64);
    let mut ys = Vec::with_capacity(count);
    for _ in 0..count {
        let c = rng.below(4);
        for i in 0..64 {
            let (r, col) = (i / 8, i % 8);
            let q = (r / 4) * 2 + col / 4;
            xs.push(if q == c { 1.0 } else { 0.0 } + 0.8 * rng.normal());
        }
        ys.push(c as u32);
    }
    (xs, ys)
}

fn small_arch() -> Arch {
    Arch { name: "cnn-s".into(), input: [1, 8, 8], conv: vec![4, 8], hidden: 16, resnet: None }
}

const HYPER: SgdHyper = SgdHyper { lr: 0.05, momentum: 0.9, weight_decay: 5e-4 };

/// Everything a training loop keeps across steps.
struct Trainer {
    b: B,
    net: Net<B>,
    st: StepState<B>,
    sgd: Sgd<B>,
}

impl Trainer {
    /// A net with two heads (old: 3 classes, new: 4 classes).
    fn new(seed: u64) -> Self {
        let b = B::new();
        let mut rng = Rng::new(seed);
        let mut net = Net::new(&b, small_arch(), &mut rng);
        net.add_head(&b, &mut rng, &[10, 11, 12]);
        net.add_head(&b, &mut rng, &[0, 1, 2, 3]);
        Trainer { b, net, st: StepState::default(), sgd: Sgd::new(HYPER) }
    }

    /// One SGD step: CE on head 1 and, when `teacher` is given, LwF's
    /// distillation of head 0 (T = 2), on a fresh tape over the same
    /// workspace. Returns the loss.
    fn step(&mut self, x: &[f32], labels: &[u32], teacher: Option<&[f32]>) -> f32 {
        let loss = BatchLoss {
            ce: vec![(1, labels)],
            kd: teacher.map(|_| (0, 3)).into_iter().collect(),
            targets: Targets::Recorded { logits: teacher.into_iter().collect(), features: None },
            temperature: 2.0,
            kd_weight: 1.0,
            feature_weight: 0.0,
            kd_concat: None,
            feature_metric: None,
            anchors: None,
        };
        sgd_step(&self.b, &mut self.st, &mut self.net, &mut self.sgd, x, [labels.len(), 1, 8, 8], &loss)
    }

    /// Logits of `head` for a batch (evaluation: no backward).
    fn logits(&mut self, x: &[f32], n: usize, head: usize) -> Vec<f32> {
        let mut tape = Tape::new(&self.b, &mut self.st.ws);
        let xv = tape.input(&[n, 1, 8, 8], x);
        let z = self.net.forward(&mut tape, xv, &[head]);
        self.b.download(tape.value(z[0]))
    }

    fn accuracy(&mut self, x: &[f32], y: &[u32]) -> f64 {
        let z = self.logits(x, y.len(), 1);
        let hits = z
            .chunks(4)
            .zip(y)
            .filter(|(row, &c)| {
                let best = (0..4).fold(0, |b, i| if row[i] > row[b] { i } else { b });
                best == c as usize
            })
            .count();
        hits as f64 / y.len() as f64
    }

    fn param_bits(&self) -> Vec<Vec<u32>> {
        self.net
            .params()
            .iter()
            .map(|p| p.value.to_vec(&self.b).iter().map(|v| v.to_bits()).collect())
            .collect()
    }
}

#[test]
fn training_learns_a_separable_problem() {
    let mut data_rng = Rng::new(42);
    let (train_x, train_y) = quadrants(&mut data_rng, 512);
    let (test_x, test_y) = quadrants(&mut data_rng, 400);
    let mut tr = Trainer::new(7);
    let before = tr.accuracy(&test_x, &test_y);
    let mut losses = Vec::new();
    let bs = 32;
    let mut order_rng = Rng::new(3);
    for _epoch in 0..10 {
        let order = order_rng.permutation(train_y.len());
        for batch in order.chunks(bs) {
            let x: Vec<f32> = batch.iter().flat_map(|&i| train_x[i * 64..(i + 1) * 64].to_vec()).collect();
            let y: Vec<u32> = batch.iter().map(|&i| train_y[i]).collect();
            losses.push(tr.step(&x, &y, None));
        }
    }
    let acc = tr.accuracy(&test_x, &test_y);
    let mean = |v: &[f32]| v.iter().sum::<f32>() / v.len() as f32;
    let (first, last) = (mean(&losses[..10]), mean(&losses[losses.len() - 10..]));
    eprintln!("{} steps: loss {first:.3} → {last:.3}, test accuracy {before:.3} → {acc:.3}", losses.len());
    assert!(losses.iter().all(|l| l.is_finite()));
    assert!(last < 0.25 * first, "loss did not fall enough: {first} → {last}");
    assert!(acc >= 0.95, "test accuracy {acc} < 0.95 (before training {before})");
}

// ---- (c) determinism, (d) no steady-state allocations --------------------------------

/// A deterministic batch stream: (images, labels, teacher logits) for step i.
fn batch(i: usize, n: usize) -> (Vec<f32>, Vec<u32>, Vec<f32>) {
    let mut rng = Rng::derive(99, i as u64);
    let (x, y) = quadrants(&mut rng, n);
    let t = normal_vec(&mut rng, n * 3, 2.0);
    (x, y, t)
}

#[test]
fn same_seed_gives_bit_identical_parameters() {
    let run = |seed: u64| {
        let mut tr = Trainer::new(seed);
        for i in 0..8 {
            let (x, y, t) = batch(i, 19);
            tr.step(&x, &y, Some(&t));
        }
        tr.param_bits()
    };
    let (a, b) = (run(5), run(5));
    assert!(a == b, "two runs with the same seed differ");
    assert!(run(6) != a, "a different seed gave the same parameters");
}

#[test]
fn steady_state_training_step_allocates_no_device_buffers() {
    let mut tr = Trainer::new(1);
    let (x, y, t) = batch(0, 16);
    tr.step(&x, &y, Some(&t));
    let after_first = tr.st.ws.allocations;
    assert!(after_first > 0);
    for i in 1..6 {
        let (x, y, t) = batch(i, 16);
        tr.step(&x, &y, Some(&t));
        assert_eq!(tr.st.ws.allocations, after_first, "step {} allocated new device buffers", i + 1);
    }
}

// ---- (e) frozen trunk ----------------------------------------------------------------

#[test]
fn frozen_trunk_gives_only_head_gradients() {
    let mut tr = Trainer::new(4);
    tr.net.set_trainable(false, 0, &[0, 1]);
    let (x, y, t) = batch(0, 8);
    let trunk_before: Vec<Vec<f32>> = tr.net.trunk_params().iter().map(|p| p.value.to_vec(&tr.b)).collect();
    tr.step(&x, &y, Some(&t));
    for p in tr.net.params() {
        let is_head = p.name.starts_with("heads.");
        assert_eq!(tr.st.grads.get(p.id).is_some(), is_head, "{}: gradient presence", p.name);
        if let Some(g) = tr.st.grads.get(p.id) {
            assert!(tr.b.download(g).iter().any(|&v| v != 0.0), "{}: zero gradient", p.name);
        }
    }
    let trunk_after: Vec<Vec<f32>> = tr.net.trunk_params().iter().map(|p| p.value.to_vec(&tr.b)).collect();
    assert!(trunk_before == trunk_after, "a frozen trunk parameter changed");
}

/// `Arch::param_count` (used to check a checkpoint's header against its file
/// before allocating) counts exactly the parameters `Net::new` and the heads
/// create.
#[test]
fn param_count_matches_the_built_net() {
    let b = lwf_engine::backend::CpuBackend::new();
    for (input, conv, hidden, heads) in [
        ([1, 28, 28], vec![32, 64], 256, vec![5, 5]),
        ([3, 12, 10], vec![4], 7, vec![2]),
        ([2, 8, 8], vec![3, 5, 6], 9, vec![]),
    ] {
        let arch = Arch { name: "cnn-s".into(), input, conv, hidden, resnet: None };
        let mut net = Net::new(&b, arch.clone(), &mut Rng::new(0));
        for (j, &n) in heads.iter().enumerate() {
            net.add_head(&b, &mut Rng::new(1), &(0..n as u32).map(|c| c + 10 * j as u32).collect::<Vec<_>>());
        }
        let built: usize = net.params().iter().map(|p| p.value.numel()).sum();
        assert_eq!(arch.param_count(&heads), Some(built), "{arch:?} with heads {heads:?}");
    }
}

/// Inference as `evaluate` and `bench` run it (`HeadArgmax`): after the first
/// batch of a size, further batches take every device buffer from the
/// workspace, one image at a time and 1000 at once (cnn-s on 28×28, the
/// shapes the CPU kernels see in `eval`).
#[test]
fn steady_state_inference_allocates_no_device_buffers() {
    use lwf_engine::autodiff::Workspace;
    use lwf_engine::incremental::eval::HeadArgmax;
    use lwf_engine::incremental::HeadMode;
    let b = B::new();
    let mut rng = Rng::new(3);
    let mut net = Net::new(&b, Arch::cnn_s([1, 28, 28]), &mut rng);
    let tasks: Vec<Vec<u32>> = vec![(0..5).collect(), (5..10).collect()];
    for t in &tasks {
        net.add_head(&b, &mut rng, t);
    }
    for batch in [1, 1000] {
        let mut ws = Workspace::new();
        let mut step = HeadArgmax::for_tasks(&b, &net, &tasks, HeadMode::PerTask, batch);
        let dims = [batch, 1, 28, 28];
        let mut after_first = None;
        for i in 0..3 {
            let x = normal_vec(&mut Rng::derive(5, i), batch * 784, 1.0);
            step.run(&mut ws, &net, &x, dims, None);
            assert_eq!(step.best.len(), 2);
            for (vals, idx) in &step.best {
                assert!(vals[..batch].iter().all(|v| v.is_finite()));
                assert!(idx[..batch].iter().all(|&j| j < 5));
            }
            let n = *after_first.get_or_insert(ws.allocations);
            assert!(n > 0);
            assert_eq!(ws.allocations, n, "batch {batch}: call {} allocated new device buffers", i + 1);
        }
    }
}

/// Feature distillation under a metric (`--feature-metric efm`): the step's
/// loss grows by exactly `w/n · Σ ‖(f − f_old) Fᵀ‖²` for the fixed map F,
/// i.e. `(f − f_old)ᵀ M (f − f_old)` with M = Fᵀ F, on top of the rest of
/// the loss; the plain pull is the same with F = I.
#[test]
fn feature_distillation_under_a_metric_adds_the_metric_distance() {
    use lwf_engine::param::Linear;
    let rand_vec = |seed: u64, len: usize, lo: f32, hi: f32| -> Vec<f32> {
        let mut rng = Rng::new(seed);
        (0..len).map(|_| rng.uniform(lo, hi)).collect()
    };
    let n = 5;
    let x = rand_vec(21, n * 64, -1.0, 1.0);
    let labels = vec![0, 1, 2, 3, 0];
    let probe = Trainer::new(9);
    let d = probe.net.arch.hidden;
    let old = rand_vec(22, n * d, 0.0, 1.0);
    let map = rand_vec(23, d * d, -0.5, 0.5);
    let identity: Vec<f32> = (0..d * d).map(|k| if k / d == k % d { 1.0 } else { 0.0 }).collect();
    let features = {
        let mut t = Trainer::new(9);
        let mut tape = Tape::new(&t.b, &mut t.st.ws);
        let xv = tape.input(&[n, 1, 8, 8], &x);
        let f = t.net.features(&mut tape, xv);
        t.b.download(tape.value(f))
    };
    let weight = 0.3;
    let loss_with = |m: Option<&[f32]>| {
        let mut t = Trainer::new(9);
        let fixed = m.map(|w| Linear::fixed(&t.b, "metric", w, d, d));
        let loss = BatchLoss {
            ce: vec![(1, labels.as_slice())],
            kd: Vec::new(),
            targets: Targets::Recorded { logits: Vec::new(), features: Some(old.as_slice()) },
            temperature: 2.0,
            kd_weight: 1.0,
            feature_weight: if m.is_some() { weight } else { 0.0 },
            kd_concat: None,
            feature_metric: fixed.as_ref(),
            anchors: None,
        };
        sgd_step(&t.b, &mut t.st, &mut t.net, &mut t.sgd, &x, [n, 1, 8, 8], &loss) as f64
    };
    let base = loss_with(None);
    for (name, m) in [("random map", &map), ("identity", &identity)] {
        let mut want = 0.0f64;
        for i in 0..n {
            for r in 0..d {
                let y: f64 = (0..d)
                    .map(|k| (features[i * d + k] as f64 - old[i * d + k] as f64) * m[r * d + k] as f64)
                    .sum();
                want += y * y;
            }
        }
        want *= weight as f64 / n as f64;
        let got = loss_with(Some(m)) - base;
        assert!(
            (got - want).abs() <= 1e-4 * want.max(1.0),
            "{name}: the pull added {got}, the metric distance is {want}"
        );
    }
}
