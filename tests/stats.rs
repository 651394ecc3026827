//! Class statistics, drift compensation and the class-incremental classifiers
//! against plain references:
//!
//! - the statistics (counts, NCM means, Tukey-space means, packed
//!   covariances) against a naive two-pass computation;
//! - NCM and Mahalanobis scores against brute force (explicit normalisation,
//!   shrinkage, Gauss–Jordan inverse, quadratic form);
//! - SDC recovers a known translation, and a drift that differs across
//!   feature space where the old class's own images are absent;
//! - checkpoints keep the statistics, reject inconsistent ones, and a
//!   checkpoint without statistics still loads (heads only).

mod common;

use common::{proptest_cfg, uniform_vec, B};
use lwf_engine::backend::CpuBackend;
use lwf_engine::checkpoint::{self, HeadMeta, Meta};
use lwf_engine::incremental::classifier::{correlation, shrink, ClassifierKind, FeatureClassifier};
use lwf_engine::incremental::linalg::sym_inverse;
use lwf_engine::incremental::stats::{cosine, drift_at, ClassStats, Sigma, StatsKind};
use lwf_engine::incremental::{CovDrift, HeadMode};
use lwf_engine::nn::{Arch, Net};
use lwf_engine::rng::Rng;
use proptest::prelude::*;

// ---- references ---------------------------------------------------------------

fn normalise(row: &[f64]) -> Vec<f64> {
    let n = row.iter().map(|v| v * v).sum::<f64>().sqrt();
    row.iter().map(|v| if n > 0.0 { v / n } else { 0.0 }).collect()
}

fn rows_of(raw: &[f32], labels: &[u32], class: u32, dim: usize) -> Vec<Vec<f64>> {
    (0..labels.len())
        .filter(|&i| labels[i] == class)
        .map(|i| raw[i * dim..(i + 1) * dim].iter().map(|v| *v as f64).collect())
        .collect()
}

fn mean_of(rows: &[Vec<f64>], dim: usize) -> Vec<f64> {
    let mut m = vec![0.0; dim];
    for r in rows {
        for j in 0..dim {
            m[j] += r[j] / rows.len() as f64;
        }
    }
    m
}

/// Two-pass sample covariance (divisor m − 1).
fn cov_of(rows: &[Vec<f64>], dim: usize) -> Vec<f64> {
    let mu = mean_of(rows, dim);
    let mut c = vec![0.0; dim * dim];
    if rows.len() < 2 {
        return c;
    }
    for r in rows {
        for i in 0..dim {
            for j in 0..dim {
                c[i * dim + j] += (r[i] - mu[i]) * (r[j] - mu[j]) / (rows.len() - 1) as f64;
            }
        }
    }
    c
}

/// Inverse by Gauss–Jordan elimination with partial pivoting.
fn gauss_jordan_inverse(a: &[f64], n: usize) -> Vec<f64> {
    let mut m = a.to_vec();
    let mut inv: Vec<f64> = (0..n * n).map(|k| if k / n == k % n { 1.0 } else { 0.0 }).collect();
    for c in 0..n {
        let p = (c..n).max_by(|&x, &y| m[x * n + c].abs().total_cmp(&m[y * n + c].abs())).unwrap();
        for k in 0..n {
            m.swap(c * n + k, p * n + k);
            inv.swap(c * n + k, p * n + k);
        }
        let d = m[c * n + c];
        for k in 0..n {
            m[c * n + k] /= d;
            inv[c * n + k] /= d;
        }
        for r in 0..n {
            if r != c {
                let f = m[r * n + c];
                for k in 0..n {
                    m[r * n + k] -= f * m[c * n + k];
                    inv[r * n + k] -= f * inv[c * n + k];
                }
            }
        }
    }
    inv
}

/// Random non-negative features (like ReLU outputs, some exact zeros) with
/// every class present at least twice.
fn features(rng: &mut Rng, n_per: usize, classes: &[u32], dim: usize) -> (Vec<f32>, Vec<u32>) {
    let mut raw = Vec::new();
    let mut labels = Vec::new();
    for &c in classes {
        let centre = uniform_vec(rng, dim, 0.0, 2.0);
        for _ in 0..n_per {
            raw.extend(centre.iter().map(|m| (m + rng.uniform(-1.0, 1.0)).max(0.0)));
            labels.push(c);
        }
    }
    // Interleave the classes (order must not matter).
    let n = labels.len();
    let perm = rng.permutation(n);
    let raw = perm.iter().flat_map(|&i| raw[i * dim..(i + 1) * dim].to_vec()).collect();
    let labels = perm.iter().map(|&i| labels[i]).collect();
    (raw, labels)
}

fn close(got: f64, want: f64, tol: f64) -> bool {
    (got - want).abs() <= tol * (1.0 + want.abs())
}

// ---- 1. statistics against two passes --------------------------------------------

proptest! {
    #![proptest_config(proptest_cfg(24))]

    #[test]
    fn statistics_match_a_two_pass_reference(
        seed in any::<u64>(), dim in 1usize..12, n_per in 2usize..20, k in 1usize..4,
    ) {
        let mut rng = Rng::new(seed);
        let classes: Vec<u32> = (0..k as u32).map(|c| 3 * c + 1).collect();
        let (raw, labels) = features(&mut rng, n_per, &classes, dim);
        let s = ClassStats::compute(&raw, &labels, &classes, dim, StatsKind::Cov);
        prop_assert_eq!(&s.classes, &classes);
        prop_assert_eq!(&s.counts, &vec![n_per as u64; k]);
        let g = s.gauss.as_ref().unwrap();
        for (ci, &c) in classes.iter().enumerate() {
            let rows = rows_of(&raw, &labels, c, dim);
            let ncm: Vec<Vec<f64>> = rows.iter().map(|r| normalise(r)).collect();
            let tukey: Vec<Vec<f64>> = rows.iter().map(|r| normalise(&r.iter().map(|v| v.sqrt()).collect::<Vec<_>>())).collect();
            let (m, tm, cov) = (mean_of(&ncm, dim), mean_of(&tukey, dim), cov_of(&tukey, dim));
            for j in 0..dim {
                prop_assert!(close(s.means[ci * dim + j] as f64, m[j], 1e-5), "mean {c}[{j}]");
                prop_assert!(close(g.means[ci * dim + j] as f64, tm[j], 1e-5), "tukey mean {c}[{j}]");
            }
            let packed = &g.covs[ci * dim * (dim + 1) / 2..(ci + 1) * dim * (dim + 1) / 2];
            let mut p = 0;
            for i in 0..dim {
                for j in i..dim {
                    prop_assert!((packed[p] as f64 - cov[i * dim + j]).abs() < 1e-6, "cov {c}[{i},{j}]: {} vs {}", packed[p], cov[i * dim + j]);
                    p += 1;
                }
            }
        }
    }

    /// NCM picks the class of largest cosine, and its probabilities are a
    /// softmax that sums to 1.
    #[test]
    fn ncm_matches_brute_force(seed in any::<u64>(), dim in 2usize..16, k in 2usize..6, n in 1usize..40) {
        let mut rng = Rng::new(seed);
        let classes: Vec<u32> = (0..k as u32).collect();
        let (train, labels) = features(&mut rng, 5, &classes, dim);
        let s = ClassStats::compute(&train, &labels, &classes, dim, StatsKind::Mean);
        let x = uniform_vec(&mut rng, n * dim, 0.0, 2.0);
        let clf = FeatureClassifier::ncm(&s);
        let scores = clf.scores(&x, n);
        let top = clf.argmax(&scores);
        for i in 0..n {
            let xi: Vec<f64> = x[i * dim..(i + 1) * dim].iter().map(|v| *v as f64).collect();
            let cos: Vec<f64> = (0..k).map(|c| {
                let mu: Vec<f64> = s.mean(c).iter().map(|v| *v as f64).collect();
                normalise(&xi).iter().zip(normalise(&mu)).map(|(a, b)| a * b).sum()
            }).collect();
            for c in 0..k {
                prop_assert!((scores[i * k + c] as f64 - cos[c]).abs() < 1e-5);
            }
            let best = cos.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            prop_assert!(cos[top[i]] >= best - 1e-6, "row {i}: picked {} ({}) but best is {best}", top[i], cos[top[i]]);
            let p = clf.probabilities(&scores[i * k..(i + 1) * k]);
            prop_assert!((p.iter().sum::<f32>() - 1.0).abs() < 1e-5);
            prop_assert_eq!(clf.argmax(&p)[0], top[i]);
        }
    }

    /// FeCAM's distance: Tukey + L2 on the features, shrinkage, correlation
    /// normalisation and an explicit inverse give the same squared distances.
    #[test]
    fn mahalanobis_matches_brute_force(seed in any::<u64>(), dim in 2usize..10, k in 2usize..5, n in 1usize..20) {
        let mut rng = Rng::new(seed);
        let classes: Vec<u32> = (0..k as u32).collect();
        let (train, labels) = features(&mut rng, dim + 3, &classes, dim);
        let s = ClassStats::compute(&train, &labels, &classes, dim, StatsKind::Cov);
        let clf = FeatureClassifier::mahalanobis(&s).expect("covariances kept");
        let x = uniform_vec(&mut rng, n * dim, 0.0, 2.0);
        let scores = clf.scores(&x, n);
        for c in 0..k {
            let rows = rows_of(&train, &labels, c as u32, dim);
            let tukey: Vec<Vec<f64>> = rows.iter().map(|r| normalise(&r.iter().map(|v| v.sqrt()).collect::<Vec<_>>())).collect();
            let mu = normalise(&mean_of(&tukey, dim));
            let cov = cov_of(&tukey, dim);
            // Shrinkage by hand: + mean diagonal on the diagonal, + mean non-zero off-diagonal off it.
            let dm = (0..dim).map(|i| cov[i * dim + i]).sum::<f64>() / dim as f64;
            let off: Vec<f64> = (0..dim * dim).filter(|&q| q / dim != q % dim && cov[q] != 0.0).map(|q| cov[q]).collect();
            let om = if off.is_empty() { 0.0 } else { off.iter().sum::<f64>() / off.len() as f64 };
            let sh: Vec<f64> = (0..dim * dim).map(|q| cov[q] + if q / dim == q % dim { dm } else { om }).collect();
            let corr: Vec<f64> = (0..dim * dim).map(|q| sh[q] / (sh[(q / dim) * dim + q / dim] * sh[(q % dim) * dim + q % dim]).sqrt()).collect();
            let inv = gauss_jordan_inverse(&corr, dim);
            // FeCAM's shrinkage can leave a singular matrix (e.g. two equal
            // variances with perfect negative correlation); there the
            // classifier's ridge and the exact inverse rightly disagree.
            let well_posed = (0..dim * dim).all(|q| {
                let v: f64 = (0..dim).map(|m| corr[(q / dim) * dim + m] * inv[m * dim + q % dim]).sum();
                v.is_finite() && (v - if q / dim == q % dim { 1.0 } else { 0.0 }).abs() < 1e-8
            });
            let cond: f64 = inv.iter().map(|v| v.abs()).fold(0.0, f64::max);
            prop_assume!(well_posed && cond < 1e4);
            for i in 0..n {
                let xi = normalise(&x[i * dim..(i + 1) * dim].iter().map(|v| (*v as f64).sqrt()).collect::<Vec<_>>());
                let d: Vec<f64> = xi.iter().zip(&mu).map(|(a, b)| a - b).collect();
                let d2: f64 = (0..dim).map(|p| (0..dim).map(|q| d[p] * inv[p * dim + q] * d[q]).sum::<f64>()).sum();
                let got = -(scores[i * k + c] as f64);
                prop_assert!(close(got, d2, 2e-3), "class {c} row {i}: {got} vs {d2}");
            }
        }
    }
}

proptest! {
    #![proptest_config(proptest_cfg(24))]

    /// The analytic classifier, solved from the class statistics alone, is
    /// the ridge regression of one-hot labels fitted on the images'
    /// Tukey features themselves (explicit rows, a constant column for the
    /// bias, λ = 0.01 × the mean diagonal, the bias unshrunk).
    #[test]
    fn analytic_is_the_ridge_fit_on_the_images(seed in any::<u64>(), dim in 2usize..9, k in 2usize..5, n in 1usize..12) {
        let mut rng = Rng::new(seed);
        let classes: Vec<u32> = (0..k as u32).collect();
        let (train, labels) = features(&mut rng, dim + 4, &classes, dim);
        let s = ClassStats::compute(&train, &labels, &classes, dim, StatsKind::Cov);
        let clf = FeatureClassifier::analytic(&s).expect("covariances kept");
        let da = dim + 1;
        let tukey = |r: &[f32]| {
            let mut t = normalise(&r.iter().map(|v| (v.max(0.0) as f64).sqrt()).collect::<Vec<_>>());
            t.push(1.0);
            t
        };
        let mut gram = vec![0.0f64; da * da];
        let mut cross = vec![0.0f64; da * k];
        for (i, &l) in labels.iter().enumerate() {
            let a = tukey(&train[i * dim..(i + 1) * dim]);
            for p in 0..da {
                for q in 0..da {
                    gram[p * da + q] += a[p] * a[q];
                }
                cross[p * k + l as usize] += a[p];
            }
        }
        let lambda = 0.01 * (0..dim).map(|p| gram[p * da + p]).sum::<f64>() / dim as f64;
        for p in 0..dim {
            gram[p * da + p] += lambda;
        }
        let inv = gauss_jordan_inverse(&gram, da);
        let w: Vec<f64> = (0..da * k).map(|q| (0..da).map(|m| inv[(q / k) * da + m] * cross[m * k + q % k]).sum()).collect();
        let x = uniform_vec(&mut rng, n * dim, 0.0, 2.0);
        let scores = clf.scores(&x, n);
        for i in 0..n {
            let a = tukey(&x[i * dim..(i + 1) * dim]);
            for c in 0..k {
                let want: f64 = (0..da).map(|p| a[p] * w[p * k + c]).sum();
                let got = scores[i * k + c] as f64;
                prop_assert!((got - want).abs() <= 2e-3 * (1.0 + want.abs()), "row {i} class {c}: {got} vs {want}");
            }
        }
    }
}

#[test]
fn sym_inverse_inverts_and_survives_a_singular_matrix() {
    let mut rng = Rng::new(7);
    let n = 6;
    let a: Vec<f64> = (0..n * 3).map(|_| rng.normal() as f64).collect();
    // A = XXᵀ + I (positive definite).
    let spd: Vec<f64> = (0..n * n)
        .map(|q| {
            let (i, j) = (q / n, q % n);
            (0..3).map(|k| a[i * 3 + k] * a[j * 3 + k]).sum::<f64>() + if i == j { 1.0 } else { 0.0 }
        })
        .collect();
    let inv = sym_inverse(&spd, n);
    for i in 0..n {
        for j in 0..n {
            let v: f64 = (0..n).map(|k| spd[i * n + k] * inv[k * n + j]).sum();
            assert!((v - if i == j { 1.0 } else { 0.0 }).abs() < 1e-9, "A·A⁻¹[{i},{j}] = {v}");
        }
    }
    // An indefinite matrix (FeCAM's shrinkage can make one) has its plain inverse.
    let indefinite = [1.0, 2.0, 2.0, 1.0];
    let inv2 = sym_inverse(&indefinite, 2);
    let want = [-1.0 / 3.0, 2.0 / 3.0, 2.0 / 3.0, -1.0 / 3.0];
    assert!(inv2.iter().zip(want).all(|(a, b)| (a - b).abs() < 1e-12), "{inv2:?}");
    // Rank 3 (no identity): the ridge fallback gives finite numbers.
    let singular: Vec<f64> =
        (0..n * n).map(|q| (0..3).map(|k| a[(q / n) * 3 + k] * a[(q % n) * 3 + k]).sum()).collect();
    assert!(sym_inverse(&singular, n).iter().all(|v| v.is_finite()));
    // The FeCAM pipeline on a zero covariance (one image per class) is finite too.
    let zero = vec![0.0; n * n];
    assert!(sym_inverse(&correlation(&shrink(&zero, n), n), n).iter().all(|v| v.is_finite()));
}

// ---- 2. drift compensation ------------------------------------------------------------

/// A constant translation of every image is recovered exactly, whatever σ
/// and wherever the mean lies.
#[test]
fn sdc_recovers_a_known_translation() {
    let mut rng = Rng::new(3);
    let (dim, n) = (8, 50);
    let old = uniform_vec(&mut rng, n * dim, -1.0, 1.0);
    let delta = uniform_vec(&mut rng, dim, -0.3, 0.3);
    let new: Vec<f32> = old.iter().enumerate().map(|(q, v)| v + delta[q % dim]).collect();
    for sigma in [0.01, 0.3, 5.0] {
        let mu = uniform_vec(&mut rng, dim, -3.0, 3.0);
        let d = drift_at(&mu, &old, &new, dim, sigma, |_| true);
        for j in 0..dim {
            assert!((d[j] - delta[j]).abs() < 1e-5, "σ {sigma}: drift {d:?} vs {delta:?}");
        }
    }
}

/// Two regions of feature space drift differently; an old class whose images
/// are gone sits in region A. Its compensated mean must follow region A's
/// drift (cosine to its true new mean near 1), not region B's, and be much
/// closer than the uncompensated mean; σ is chosen by the leave-one-class-out
/// rule from the new classes' images alone.
#[test]
fn sdc_follows_the_local_drift_of_an_absent_class() {
    let mut rng = Rng::new(11);
    let dim = 6;
    let unit = |k: usize| -> Vec<f32> { (0..dim).map(|j| if j == k { 1.0 } else { 0.0 }).collect() };
    // Old trunk: region A around e0 (+ a little e1), region B around e2.
    // New trunk: region A moves to e3, region B to e4.
    let sample = |rng: &mut Rng, base: &[f32], n: usize| -> Vec<f32> {
        (0..n)
            .flat_map(|_| base.iter().map(|b| (b + rng.uniform(0.0, 0.15)).max(0.0)).collect::<Vec<_>>())
            .collect()
    };
    let a_old: Vec<f32> = unit(0).iter().zip(unit(1)).map(|(x, y)| x + 0.3 * y).collect();
    let a_new: Vec<f32> = unit(3).iter().zip(unit(1)).map(|(x, y)| x + 0.3 * y).collect();
    // The old class (id 0) in region A: its images under both trunks.
    let n_old = 40;
    let jitter: Vec<f32> = (0..n_old * dim).map(|_| rng.uniform(0.0, 0.15)).collect();
    let old_class_before: Vec<f32> = (0..n_old * dim).map(|q| a_old[q % dim] + jitter[q]).collect();
    let old_class_after: Vec<f32> = (0..n_old * dim).map(|q| a_new[q % dim] + jitter[q]).collect();
    let mut stats = ClassStats::compute(&old_class_before, &vec![0; n_old], &[0], dim, StatsKind::Mean);
    let truth = ClassStats::compute(&old_class_after, &vec![0; n_old], &[0], dim, StatsKind::Mean);
    let before = stats.clone();
    // New classes 1 (region A) and 2 (region B), the same images under both trunks.
    let n = 60;
    let (ja, jb) = (sample(&mut rng, &vec![0.0; dim], n), sample(&mut rng, &vec![0.0; dim], n));
    let mut old_f = Vec::new();
    let mut new_f = Vec::new();
    for (j, base_old, base_new) in [(&ja, &a_old, &a_new), (&jb, &unit(2), &unit(4))] {
        old_f.extend(j.iter().enumerate().map(|(q, v)| v + base_old[q % dim]));
        new_f.extend(j.iter().enumerate().map(|(q, v)| v + base_new[q % dim]));
    }
    let labels: Vec<u32> = (0..2 * n).map(|i| if i < n { 1 } else { 2 }).collect();
    let report =
        stats.compensate(&old_f, &new_f, &labels, Sigma::Auto, CovDrift::Sdc).expect("compensation ran");
    let cos_after = cosine(stats.mean(0), truth.mean(0));
    let cos_before = cosine(before.mean(0), truth.mean(0));
    assert!(cos_after > 0.99, "compensated mean cosine {cos_after} (σ {}, {report:?})", report.sigma);
    assert!(cos_before < 0.5, "the drift must matter in this case: {cos_before}");
    assert!(report.how.starts_with("auto") && !report.trials.is_empty(), "{report:?}");
    // Off leaves the means alone; a fixed σ is used as given.
    let mut off = before.clone();
    assert!(off.compensate(&old_f, &new_f, &labels, Sigma::Off, CovDrift::Sdc).is_none());
    assert_eq!(off, before);
    let fixed = before.clone().compensate(&old_f, &new_f, &labels, Sigma::Fixed(0.2), CovDrift::Sdc).unwrap();
    assert_eq!((fixed.sigma, fixed.how.as_str()), (0.2, "fixed"));
}

#[test]
fn sigma_flag_parses_and_rejects() {
    assert_eq!(Sigma::parse("auto"), Ok(Sigma::Auto));
    assert_eq!(Sigma::parse("off"), Ok(Sigma::Off));
    assert_eq!(Sigma::parse("0.3"), Ok(Sigma::Fixed(0.3)));
    for bad in ["0", "-1", "nan", "inf", "x"] {
        assert!(Sigma::parse(bad).is_err(), "{bad}");
    }
}

// ---- 3. checkpoints ----------------------------------------------------------------------

fn small_model(b: &B) -> (Net<B>, Meta) {
    let arch = Arch { name: "cnn-s".into(), input: [1, 8, 8], conv: vec![2], hidden: 5, resnet: None };
    let mut net = Net::new(b, arch.clone(), &mut Rng::new(1));
    net.add_head(b, &mut Rng::new(2), &[0, 1]);
    net.add_head(b, &mut Rng::new(3), &[2]);
    let norm = lwf_engine::data::Normalization { mean: vec![0.5], std: vec![0.25] };
    let mut meta = Meta::new(arch, &norm, HeadMode::PerTask);
    meta.tasks = vec![vec![0, 1], vec![2]];
    meta.heads = vec![
        HeadMeta { classes: vec![0, 1], class_names: vec!["a".into(), "b".into()] },
        HeadMeta { classes: vec![2], class_names: vec!["c".into()] },
    ];
    (net, meta)
}

#[test]
fn checkpoints_keep_statistics_and_reject_inconsistent_ones() {
    let b = CpuBackend::new();
    let (net, meta) = small_model(&b);
    let dir = std::env::temp_dir().join(format!("lwf-stats-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut rng = Rng::new(5);
    let (raw, labels) = features(&mut rng, 4, &[0, 1, 2], 5);
    for kind in [StatsKind::Mean, StatsKind::Cov] {
        let stats = ClassStats::compute(&raw, &labels, &[0, 1, 2], 5, kind);
        let path = dir.join(format!("{}.safetensors", kind.name()));
        checkpoint::save(&path, &b, &net, &meta, None, Some(&stats)).unwrap();
        let ck = checkpoint::load(&path, &b).unwrap();
        assert_eq!(ck.stats.as_ref(), Some(&stats), "{kind:?} round trip");
        assert_eq!(ck.meta.class_stats.as_ref().unwrap().kind, kind);
        assert_eq!(
            ClassifierKind::available(ck.stats.as_ref()).contains(&ClassifierKind::Mahalanobis),
            kind == StatsKind::Cov
        );
    }
    // Statistics of classes the model does not know: refused on load.
    let wrong = ClassStats::compute(&raw, &labels, &[0, 1, 2], 5, StatsKind::Mean);
    let mut meta_wrong = meta.clone();
    meta_wrong.tasks = vec![vec![0, 1], vec![2]];
    let path = dir.join("wrong.safetensors");
    let mut relabelled = wrong.clone();
    relabelled.classes = vec![0, 1, 7];
    checkpoint::save(&path, &b, &net, &meta_wrong, None, Some(&relabelled)).unwrap();
    let err = checkpoint::load(&path, &b).err().expect("mismatched statistics are refused").to_string();
    assert!(err.contains("wrong.safetensors") && err.contains("class statistics cover"), "{err}");
    // Without statistics (an older checkpoint): loads, and only the heads are available.
    let path = dir.join("old.safetensors");
    checkpoint::save(&path, &b, &net, &meta, None, None).unwrap();
    let ck = checkpoint::load(&path, &b).unwrap();
    assert!(ck.stats.is_none() && ck.meta.class_stats.is_none());
    assert_eq!(ClassifierKind::available(None), [ClassifierKind::Heads, ClassifierKind::AlignedHeads]);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Weight aligning scales each later task's rows to the first task's mean
/// norm and leaves the first task's alone.
#[test]
fn aligned_heads_rescale_later_tasks() {
    let b = CpuBackend::new();
    let (net, meta) = small_model(&b);
    let plain = FeatureClassifier::heads(&b, &net, &meta.tasks, false);
    let aligned = FeatureClassifier::heads(&b, &net, &meta.tasks, true);
    let x = vec![0.5f32; 5];
    let (p, a) = (plain.scores(&x, 1), aligned.scores(&x, 1));
    assert_eq!(&p[..2], &a[..2], "task 1 unchanged");
    let w0 = net.heads[0].linear.w.value.to_vec(&b);
    let w1 = net.heads[1].linear.w.value.to_vec(&b);
    let norm = |r: &[f32]| r.iter().map(|v| v * v).sum::<f32>().sqrt();
    let gamma = (norm(&w0[..5]) + norm(&w0[5..10])) / 2.0 / norm(&w1[..5]);
    assert!((a[2] - gamma * p[2]).abs() < 1e-5, "{} vs {}·{}", a[2], gamma, p[2]);
}

/// `ncm-task`: the NCM probabilities summed over each task's classes, times
/// the softmax of that task's own head, computed by hand; rows sum to 1.
#[test]
fn ncm_task_is_task_probability_times_the_tasks_head() {
    let b = CpuBackend::new();
    let (net, meta) = small_model(&b);
    let mut rng = Rng::new(9);
    let (raw, labels) = features(&mut rng, 4, &[2, 0, 1], 5); // statistics in another class order
    let stats = ClassStats::compute(&raw, &labels, &[2, 0, 1], 5, StatsKind::Mean);
    let clf = FeatureClassifier::build(ClassifierKind::NcmTask, &b, &net, &meta.tasks, Some(&stats)).unwrap();
    assert_eq!(clf.classes, [2, 0, 1]);
    let ncm = FeatureClassifier::ncm(&stats);
    let heads = FeatureClassifier::heads(&b, &net, &meta.tasks, false); // columns 0, 1, 2
    let n = 7;
    let x = uniform_vec(&mut rng, n * 5, 0.0, 2.0);
    let (got, ns, hs) = (clf.scores(&x, n), ncm.scores(&x, n), heads.scores(&x, n));
    for i in 0..n {
        let p = ncm.probabilities(&ns[i * 3..(i + 1) * 3]); // order 2, 0, 1
        let (p_task0, p_task1) = (p[1] + p[2], p[0]);
        let h = &hs[i * 3..(i + 1) * 3];
        let (e0, e1) = ((h[0] - h[0].max(h[1])).exp(), (h[1] - h[0].max(h[1])).exp());
        let want = [p_task1, p_task0 * e0 / (e0 + e1), p_task0 * e1 / (e0 + e1)]; // classes 2, 0, 1
        for k in 0..3 {
            assert!(
                (got[i * 3 + k] - want[k]).abs() < 1e-6,
                "row {i} class {}: {} vs {}",
                clf.classes[k],
                got[i * 3 + k],
                want[k]
            );
        }
        let row = &got[i * 3..(i + 1) * 3];
        assert!((row.iter().sum::<f32>() - 1.0).abs() < 1e-5);
        assert_eq!(clf.probabilities(row), row.to_vec(), "its scores are the probabilities");
    }
}

/// Merging the statistics of two sets of images equals measuring them
/// together: count-weighted NCM and Tukey means, pooled covariances with the
/// between-means term; a class only the second set has is appended.
#[test]
fn merged_statistics_equal_those_of_the_images_together() {
    let dim = 6;
    let mut rng = Rng::new(11);
    let n = 90;
    let raw: Vec<f32> = (0..n * dim).map(|_| rng.uniform(0.0, 2.0)).collect();
    // Class 7 is shifted so the two halves' means differ (the between term matters).
    let labels: Vec<u32> = (0..n).map(|i| [3, 7, 9][i % 3]).collect();
    let first: Vec<usize> = (0..n).filter(|&i| i < 50 && labels[i] != 9).collect();
    let second: Vec<usize> = (0..n).filter(|&i| i >= 50 || labels[i] == 9).collect();
    let mut raw = raw;
    for &i in &second {
        if labels[i] == 7 {
            raw[i * dim] += 1.5;
        }
    }
    let rows = |idx: &[usize]| -> (Vec<f32>, Vec<u32>) {
        (
            idx.iter().flat_map(|&i| raw[i * dim..(i + 1) * dim].to_vec()).collect(),
            idx.iter().map(|&i| labels[i]).collect(),
        )
    };
    let (xa, la) = rows(&first);
    let (xb, lb) = rows(&second);
    let mut merged = ClassStats::compute(&xa, &la, &[3, 7], dim, StatsKind::Cov);
    merged.merge(ClassStats::compute(&xb, &lb, &[7, 3, 9], dim, StatsKind::Cov));
    let together = ClassStats::compute(&raw, &labels, &[3, 7, 9], dim, StatsKind::Cov);
    assert_eq!(merged.classes, together.classes);
    assert_eq!(merged.counts, together.counts);
    let close = |a: &[f32], b: &[f32], what: &str| {
        assert_eq!(a.len(), b.len());
        for (k, (x, y)) in a.iter().zip(b).enumerate() {
            assert!((x - y).abs() < 1e-5, "{what}[{k}]: {x} vs {y}");
        }
    };
    close(&merged.means, &together.means, "ncm means");
    let (g, t) = (merged.gauss.as_ref().unwrap(), together.gauss.as_ref().unwrap());
    close(&g.means, &t.means, "tukey means");
    close(&g.covs, &t.covs, "covariances");
    // Without a shared class, merge is append.
    let mut appended = ClassStats::compute(&xa, &la, &[3, 7], dim, StatsKind::Mean);
    let mut by_merge = appended.clone();
    let other = ClassStats::compute(&xb, &lb, &[9], dim, StatsKind::Mean);
    by_merge.merge(other.clone());
    appended.append(other);
    assert_eq!(by_merge, appended);
}
