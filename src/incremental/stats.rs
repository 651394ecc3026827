//! Class statistics in the trunk's feature space, and their drift
//! compensation (DESIGN.md "Class-incremental prediction without old data").
//!
//! While a task is learnt its images are at hand, so per class we keep its
//! count and the mean of its L2-normalised penultimate features (the trunk's
//! output, after fc1's ReLU): about 1 KB a class, never an image. With
//! [`StatsKind::Cov`] we also keep, for a Mahalanobis classifier (FeCAM), the
//! mean and covariance of the Tukey-transformed features (√x, then
//! L2-normalised).
//!
//! When a later task moves the trunk, the old classes' means would go stale.
//! Semantic Drift Compensation (Yu et al., arXiv 2004.00440) moves each old
//! mean μ by the drift the new images show near it:
//! `Δμ = Σ_i w_i (f_new(x_i) − f_old(x_i)) / Σ_i w_i`,
//! `w_i = exp(−‖f_old(x_i) − μ‖² / 2σ²)`. The covariances are not moved.
//!
//! σ defaults to [`DEFAULT_SIGMA`], chosen once on a validation split of
//! Fashion-MNIST's training images (never its test set; see its note).
//! `Sigma::Auto` chooses σ from the new data alone by leaving one new class
//! out at a time: that class plays an old class whose images are gone, its
//! mean under the old trunk is compensated with the drift of the *other* new
//! classes' images, and the σ whose estimate lands closest (cosine) to the
//! class's true mean under the new trunk wins. Measured, that rule prefers
//! wide σ (0.5–2) where the old classes are served best by narrow ones: new
//! classes drift idiosyncratically as the trunk learns them, old ones do not.
//! So it is offered, not the default.

use super::linalg::packed_len;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

/// Which statistics are kept per class.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum StatsKind {
    /// Count and mean per class (about 1 KB a class).
    #[default]
    Mean,
    /// Also the Tukey-space mean and covariance, for --classifier mahalanobis (about 130 KB a class).
    Cov,
}

impl StatsKind {
    pub fn name(self) -> &'static str {
        match self {
            StatsKind::Mean => "mean",
            StatsKind::Cov => "cov",
        }
    }
}

/// σ of drift compensation unless told otherwise. Chosen on a validation
/// split made of training images only (`tools/validation_split.py`: 10 % of
/// each class's training images held out as the test split): LwF, two-task,
/// seeds 0–2, NCM class-IL on the held-out images for σ = 0.05 / 0.1 / 0.2 /
/// 0.3 / 0.5 was 81.2 / 81.4 / 80.9 / 80.5 / 75.2 %.
pub const DEFAULT_SIGMA: f32 = 0.1;

/// How drift compensation chooses σ.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Sigma {
    /// Leave-one-new-class-out over [`SIGMA_GRID`].
    Auto,
    /// This σ.
    Fixed(f32),
    /// No compensation: old means stay where they were measured.
    Off,
}

impl Default for Sigma {
    fn default() -> Self {
        Sigma::Fixed(DEFAULT_SIGMA)
    }
}

impl Sigma {
    /// `auto`, `off` or a positive number.
    pub fn parse(s: &str) -> Result<Self, String> {
        match s.trim() {
            "auto" => Ok(Sigma::Auto),
            "off" => Ok(Sigma::Off),
            v => match v.parse::<f32>() {
                Ok(x) if x > 0.0 && x.is_finite() => Ok(Sigma::Fixed(x)),
                _ => Err(format!("--sdc-sigma '{s}': expected auto, off or a positive number")),
            },
        }
    }
}

/// The σ values `Sigma::Auto` tries (distances between L2-normalised
/// non-negative features lie in [0, √2]).
pub const SIGMA_GRID: [f32; 8] = [0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 1.0, 2.0];

/// Rows scaled to unit L2 norm (an all-zero row stays zero).
pub fn l2_rows(x: &mut [f32], dim: usize) {
    x.par_chunks_mut(dim).for_each(|row| {
        let n = row.iter().map(|v| (*v as f64) * (*v as f64)).sum::<f64>().sqrt();
        if n > 0.0 {
            let s = (1.0 / n) as f32;
            row.iter_mut().for_each(|v| *v *= s);
        }
    });
}

/// The NCM feature map: L2-normalised raw features.
pub fn ncm_space(raw: &[f32], dim: usize) -> Vec<f32> {
    let mut x = raw.to_vec();
    l2_rows(&mut x, dim);
    x
}

/// FeCAM's feature map: Tukey's ladder of powers with λ = ½ (√x; the trunk's
/// features are ReLU outputs, so non-negative), then L2-normalised.
pub fn tukey_space(raw: &[f32], dim: usize) -> Vec<f32> {
    let mut x: Vec<f32> = raw.iter().map(|v| v.max(0.0).sqrt()).collect();
    l2_rows(&mut x, dim);
    x
}

/// Per-class statistics of one feature space's Gaussian (Mahalanobis part).
#[derive(Clone, Debug, PartialEq)]
pub struct Gaussian {
    /// classes × dim, Tukey space.
    pub means: Vec<f32>,
    /// classes × dim(dim+1)/2: each class's covariance, upper triangle row by row.
    pub covs: Vec<f32>,
}

/// Statistics of every class a model knows, in the order they were learnt.
#[derive(Clone, Debug, PartialEq)]
pub struct ClassStats {
    pub dim: usize,
    pub classes: Vec<u32>,
    pub counts: Vec<u64>,
    /// classes × dim: mean of the L2-normalised features (moved by SDC).
    pub means: Vec<f32>,
    pub gauss: Option<Gaussian>,
}

/// What drift compensation did at one task.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DriftReport {
    /// σ used for the NCM means.
    pub sigma: f32,
    /// σ used for the Tukey-space means (when kept).
    pub sigma_tukey: Option<f32>,
    /// "auto (leave-one-class-out)", "fixed" or "auto fallback".
    pub how: String,
    /// Auto: (σ, mean cosine to the held-out class's true mean) per grid value.
    pub trials: Vec<(f32, f64)>,
    /// Mean L2 length of the moves applied to the old NCM means.
    pub mean_shift: f64,
    /// `--cov-drift ridge`: share of the new Tukey features' variance the
    /// fitted map explains.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ridge_explained: Option<f64>,
}

impl ClassStats {
    /// An empty set of statistics for `dim`-wide features.
    pub fn empty(dim: usize, kind: StatsKind) -> Self {
        ClassStats {
            dim,
            classes: Vec::new(),
            counts: Vec::new(),
            means: Vec::new(),
            gauss: (kind == StatsKind::Cov).then(|| Gaussian { means: Vec::new(), covs: Vec::new() }),
        }
    }

    pub fn kind(&self) -> StatsKind {
        if self.gauss.is_some() {
            StatsKind::Cov
        } else {
            StatsKind::Mean
        }
    }

    /// Statistics of `classes` from raw features (`labels.len()` rows of
    /// `dim`). Every class must have at least one row.
    pub fn compute(raw: &[f32], labels: &[u32], classes: &[u32], dim: usize, kind: StatsKind) -> Self {
        assert_eq!(raw.len(), labels.len() * dim, "ClassStats::compute: {} rows of {dim}", labels.len());
        let (means, counts) = class_means(&ncm_space(raw, dim), labels, classes, dim);
        let gauss = (kind == StatsKind::Cov).then(|| {
            let t = tukey_space(raw, dim);
            let (tm, _) = class_means(&t, labels, classes, dim);
            let covs = classes
                .iter()
                .enumerate()
                .flat_map(|(k, &c)| {
                    let rows: Vec<usize> = (0..labels.len()).filter(|&i| labels[i] == c).collect();
                    covariance_packed(&t, &rows, &tm[k * dim..(k + 1) * dim], dim)
                })
                .collect();
            Gaussian { means: tm, covs }
        });
        ClassStats { dim, classes: classes.to_vec(), counts, means, gauss }
    }

    /// Append another task's classes (same dim and kind).
    pub fn append(&mut self, other: ClassStats) {
        assert_eq!(self.dim, other.dim, "ClassStats::append: feature widths differ");
        self.classes.extend(other.classes);
        self.counts.extend(other.counts);
        self.means.extend(other.means);
        match (&mut self.gauss, other.gauss) {
            (Some(g), Some(o)) => {
                g.means.extend(o.means);
                g.covs.extend(o.covs);
            }
            (None, None) => {}
            _ => panic!("ClassStats::append: one side keeps covariances, the other does not"),
        }
    }

    /// Add `other`'s classes (same dim and kind): a class this set already
    /// has is merged with it, as if both sets of images had been measured
    /// together (count-weighted means; pooled covariances, with the spread
    /// between the two means); the others are appended in `other`'s order.
    pub fn merge(&mut self, other: ClassStats) {
        if !other.classes.iter().any(|c| self.classes.contains(c)) {
            return self.append(other);
        }
        assert_eq!(self.dim, other.dim, "ClassStats::merge: feature widths differ");
        assert_eq!(
            self.kind(),
            other.kind(),
            "ClassStats::merge: one side keeps covariances, the other does not"
        );
        let (dim, plen) = (self.dim, packed_len(self.dim));
        let mut fresh = ClassStats::empty(dim, other.kind());
        for (j, &c) in other.classes.iter().enumerate() {
            let Some(k) = self.classes.iter().position(|&x| x == c) else {
                fresh.counts.push(other.counts[j]);
                fresh.classes.push(c);
                fresh.means.extend_from_slice(other.mean(j));
                if let (Some(f), Some(o)) = (fresh.gauss.as_mut(), other.gauss.as_ref()) {
                    f.means.extend_from_slice(&o.means[j * dim..(j + 1) * dim]);
                    f.covs.extend_from_slice(&o.covs[j * plen..(j + 1) * plen]);
                }
                continue;
            };
            let (n1, n2) = (self.counts[k] as f64, other.counts[j] as f64);
            let n = n1 + n2;
            if n2 == 0.0 {
                continue;
            }
            let weighted = |a: &[f32], b: &[f32]| -> Vec<f32> {
                a.iter().zip(b).map(|(x, y)| ((n1 * *x as f64 + n2 * *y as f64) / n) as f32).collect()
            };
            let merged = weighted(self.mean(k), other.mean(j));
            self.means[k * dim..(k + 1) * dim].copy_from_slice(&merged);
            if let (Some(g), Some(o)) = (self.gauss.as_mut(), other.gauss.as_ref()) {
                let (m1, m2) = (&g.means[k * dim..(k + 1) * dim], &o.means[j * dim..(j + 1) * dim]);
                let mu = weighted(m1, m2);
                let d1: Vec<f64> = m1.iter().zip(&mu).map(|(a, m)| (*a - *m) as f64).collect();
                let d2: Vec<f64> = m2.iter().zip(&mu).map(|(a, m)| (*a - *m) as f64).collect();
                // S = [(n1−1)S1 + (n2−1)S2 + n1·d1d1ᵀ + n2·d2d2ᵀ] / (n−1).
                let denom = (n - 1.0).max(1.0);
                let (c1, c2) = (&mut g.covs[k * plen..(k + 1) * plen], &o.covs[j * plen..(j + 1) * plen]);
                let mut at = 0;
                for r in 0..dim {
                    for q in r..dim {
                        let pooled = (n1 - 1.0).max(0.0) * c1[at] as f64
                            + (n2 - 1.0).max(0.0) * c2[at] as f64
                            + n1 * d1[r] * d1[q]
                            + n2 * d2[r] * d2[q];
                        c1[at] = (pooled / denom) as f32;
                        at += 1;
                    }
                }
                g.means[k * dim..(k + 1) * dim].copy_from_slice(&mu);
            }
            self.counts[k] += other.counts[j];
        }
        self.append(fresh);
    }

    /// The NCM mean of the k-th class.
    pub fn mean(&self, k: usize) -> &[f32] {
        &self.means[k * self.dim..(k + 1) * self.dim]
    }

    /// Move every class's means by the drift the images show between the
    /// old and the new trunk (raw features, one row per image, in the same
    /// order; `labels` are the images' classes, used only to choose σ).
    pub fn compensate(
        &mut self,
        old_raw: &[f32],
        new_raw: &[f32],
        labels: &[u32],
        sigma: Sigma,
        cov_drift: super::CovDrift,
    ) -> Option<DriftReport> {
        let dim = self.dim;
        assert_eq!(old_raw.len(), new_raw.len(), "compensate: old and new features differ in length");
        if sigma == Sigma::Off || self.classes.is_empty() || old_raw.is_empty() {
            return None;
        }
        let (old, new) = (ncm_space(old_raw, dim), ncm_space(new_raw, dim));
        let (s, how, trials) = pick_sigma(&old, &new, labels, dim, sigma);
        let before = self.means.clone();
        shift_means(&mut self.means, &old, &new, dim, s);
        let mean_shift = before
            .chunks(dim)
            .zip(self.means.chunks(dim))
            .map(|(a, b)| a.iter().zip(b).map(|(x, y)| ((x - y) as f64).powi(2)).sum::<f64>().sqrt())
            .sum::<f64>()
            / self.classes.len() as f64;
        let mut explained = None;
        let sigma_tukey = self.gauss.as_mut().and_then(|g| {
            let (old, new) = (tukey_space(old_raw, dim), tukey_space(new_raw, dim));
            match cov_drift {
                super::CovDrift::Sdc => {
                    let (st, _, _) = pick_sigma(&old, &new, labels, dim, sigma);
                    shift_means(&mut g.means, &old, &new, dim, st);
                    Some(st)
                }
                super::CovDrift::Ridge => {
                    explained = Some(
                        super::transport::transport(&mut g.means, &mut g.covs, &old, &new, dim).explained,
                    );
                    None
                }
            }
        });
        Some(DriftReport { sigma: s, sigma_tukey, how, trials, mean_shift, ridge_explained: explained })
    }
}

/// Per-class means (f64 accumulation) and counts of rows `x` by label.
fn class_means(x: &[f32], labels: &[u32], classes: &[u32], dim: usize) -> (Vec<f32>, Vec<u64>) {
    let mut sums = vec![0f64; classes.len() * dim];
    let mut counts = vec![0u64; classes.len()];
    for (i, &l) in labels.iter().enumerate() {
        if let Some(k) = classes.iter().position(|&c| c == l) {
            counts[k] += 1;
            for (s, v) in sums[k * dim..(k + 1) * dim].iter_mut().zip(&x[i * dim..(i + 1) * dim]) {
                *s += *v as f64;
            }
        }
    }
    let means = sums
        .chunks(dim)
        .zip(&counts)
        .flat_map(|(s, &n)| s.iter().map(move |v| if n > 0 { (v / n as f64) as f32 } else { 0.0 }))
        .collect();
    (means, counts)
}

/// Sample covariance (divisor m − 1; zero for one row) of rows `rows` of `x`
/// about `mean`, as a packed upper triangle. One f64 gemm XᵀX over the
/// centred rows.
fn covariance_packed(x: &[f32], rows: &[usize], mean: &[f32], dim: usize) -> Vec<f32> {
    let m = rows.len();
    let mut centred = vec![0f64; m * dim];
    for (r, &i) in rows.iter().enumerate() {
        for j in 0..dim {
            centred[r * dim + j] = x[i * dim + j] as f64 - mean[j] as f64;
        }
    }
    let mut c = vec![0f64; dim * dim];
    if m > 1 {
        // SAFETY: A = centredᵀ (dim × m, strides 1 and dim), B = centred
        // (m × dim, strides dim and 1), C dim × dim row-major: every index
        // the strides reach is inside its vector.
        unsafe {
            matrixmultiply::dgemm(
                dim,
                m,
                dim,
                1.0 / (m - 1) as f64,
                centred.as_ptr(),
                1,
                dim as isize,
                centred.as_ptr(),
                dim as isize,
                1,
                0.0,
                c.as_mut_ptr(),
                dim as isize,
                1,
            );
        }
    }
    let mut packed = Vec::with_capacity(packed_len(dim));
    for i in 0..dim {
        packed.extend(c[i * dim + i..(i + 1) * dim].iter().map(|v| *v as f32));
    }
    packed
}

/// SDC's drift at `mu`: the weighted mean of `new_i − old_i` over the rows
/// with `use_row(i)`, weights `exp(−‖old_i − μ‖² / 2σ²)`, computed in log space
/// with the largest weight scaled to 1 (far from every image the nearest
/// images still decide instead of the sum underflowing to 0/0).
pub fn drift_at(
    mu: &[f32],
    old: &[f32],
    new: &[f32],
    dim: usize,
    sigma: f32,
    use_row: impl Fn(usize) -> bool,
) -> Vec<f32> {
    let n = old.len() / dim;
    let inv = 1.0 / (2.0 * sigma as f64 * sigma as f64);
    let logw: Vec<f64> = (0..n)
        .map(|i| {
            if !use_row(i) {
                return f64::NEG_INFINITY;
            }
            let d2: f64 =
                old[i * dim..(i + 1) * dim].iter().zip(mu).map(|(a, b)| ((a - b) as f64).powi(2)).sum();
            -d2 * inv
        })
        .collect();
    let top = logw.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let mut acc = vec![0f64; dim];
    if top == f64::NEG_INFINITY {
        return vec![0.0; dim];
    }
    let mut total = 0f64;
    for i in 0..n {
        let w = (logw[i] - top).exp();
        if w == 0.0 {
            continue;
        }
        total += w;
        for j in 0..dim {
            acc[j] += w * (new[i * dim + j] - old[i * dim + j]) as f64;
        }
    }
    acc.iter().map(|v| (v / total) as f32).collect()
}

/// Move each row of `means` by its drift.
fn shift_means(means: &mut [f32], old: &[f32], new: &[f32], dim: usize, sigma: f32) {
    means.par_chunks_mut(dim).for_each(|mu| {
        let d = drift_at(mu, old, new, dim, sigma, |_| true);
        mu.iter_mut().zip(d).for_each(|(m, d)| *m += d);
    });
}

/// Cosine of the angle between two vectors (0 when either is zero), in f64.
pub fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum();
    let na: f64 = a.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    if na == 0.0 || nb == 0.0 {
        0.0
    } else {
        dot / (na * nb)
    }
}

/// σ for one feature space (`old`, `new` already mapped into it).
fn pick_sigma(
    old: &[f32],
    new: &[f32],
    labels: &[u32],
    dim: usize,
    sigma: Sigma,
) -> (f32, String, Vec<(f32, f64)>) {
    match sigma {
        Sigma::Fixed(s) => (s, "fixed".into(), Vec::new()),
        Sigma::Off => unreachable!("compensate returns before choosing σ when it is off"),
        Sigma::Auto => {
            let mut classes: Vec<u32> = labels.to_vec();
            classes.sort_unstable();
            classes.dedup();
            if classes.len() < 2 {
                return (DEFAULT_SIGMA, "auto fallback (fewer than 2 new classes)".into(), Vec::new());
            }
            let trials = leave_one_class_out(old, new, labels, &classes, dim);
            let best = trials.iter().cloned().fold((DEFAULT_SIGMA, f64::NEG_INFINITY), |b, t| {
                if t.1 > b.1 {
                    t
                } else {
                    b
                }
            });
            (best.0, "auto (leave-one-new-class-out)".into(), trials)
        }
    }
}

/// For each σ of the grid: the mean over new classes c of
/// cos(μ_old(c) + drift from the other classes' images, μ_new(c)).
fn leave_one_class_out(
    old: &[f32],
    new: &[f32],
    labels: &[u32],
    classes: &[u32],
    dim: usize,
) -> Vec<(f32, f64)> {
    let (mu_old, _) = class_means(old, labels, classes, dim);
    let (mu_new, _) = class_means(new, labels, classes, dim);
    SIGMA_GRID
        .par_iter()
        .map(|&s| {
            let total: f64 = classes
                .iter()
                .enumerate()
                .map(|(k, &c)| {
                    let mu = &mu_old[k * dim..(k + 1) * dim];
                    let d = drift_at(mu, old, new, dim, s, |i| labels[i] != c);
                    let est: Vec<f32> = mu.iter().zip(&d).map(|(m, d)| m + d).collect();
                    cosine(&est, &mu_new[k * dim..(k + 1) * dim])
                })
                .sum();
            (s, total / classes.len() as f64)
        })
        .collect()
}
