//! Class-incremental classifiers over the trunk's features: which of all the
//! classes a model knows an image belongs to, without knowing its task.
//!
//! - `heads`: the concatenated heads' logits, argmax (today's behaviour).
//! - `aligned-heads`: the same with weight aligning (Zhao et al., arXiv
//!   1911.07053): every task's rows are rescaled so their mean L2 norm equals
//!   the first task's (later heads, trained with more recent data, otherwise
//!   have larger rows and win too often). Needs no data.
//! - `ncm`: nearest class mean by cosine over L2-normalised features, with the
//!   means of [`ClassStats`] (drift-compensated by SDC).
//! - `mahalanobis`: FeCAM (Goswami et al., arXiv 2309.14062): Tukey-transformed
//!   features, per-class covariance shrunk and normalised to a correlation
//!   matrix, squared Mahalanobis distance to each class mean.
//! - `analytic`: the closed-form ridge regression of one-hot labels on the
//!   Tukey-space features (with a bias) over every class, the classifier of
//!   ACIL (Zhuang et al. 2022) and DPCR (2025): its normal equations need only
//!   each class's count, mean and covariance, which the model keeps (and
//!   drift compensation moves), so it is exactly the ridge fit on all the
//!   images ever seen, with none of them kept.
//! - `ncm-task`: NCM infers the task, that task's own head the class:
//!   `p(c) = p_ncm(task of c) · softmax of that task's logits (c)`, with
//!   `p_ncm(task)` the NCM probabilities of the task's classes summed. The
//!   heads are good within a task (that is task-aware accuracy), NCM across
//!   tasks; this keeps each for what it does well.
//!
//! Scores and probabilities: heads score by logit (softmax of the logits);
//! ncm by cosine similarity (softmax of [`NCM_SCALE`]·cosine, the scale of
//! cosine-normalised classifiers); mahalanobis by −d² (softmax of −d²/2, the
//! posterior of Gaussians with the shared correlation-normalised shape and
//! equal priors).

use super::linalg::{matmul, packed_len, sym_inverse, unpack_symmetric};
use super::stats::{ncm_space, tukey_space, ClassStats};
use crate::backend::Backend;
use crate::nn::Net;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::fmt;

/// Scale of the cosine similarities in NCM's softmax.
pub const NCM_SCALE: f32 = 16.0;

/// Scale of the analytic classifier's scores (regressed one-hot targets,
/// about 1 for the best class and 0 for the others) in its softmax.
pub const ANALYTIC_SCALE: f32 = 16.0;

/// The analytic classifier's ridge, relative to the mean diagonal of the
/// features' second-moment matrix (the same relative ridge as
/// `--cov-drift ridge`'s map).
pub const ANALYTIC_RIDGE: f64 = 0.01;

/// How an image's class is chosen among all the classes a model knows (also
/// the CLI's `--classifier` values).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum ClassifierKind {
    /// argmax over the concatenated heads' logits.
    Heads,
    /// The heads with weight aligning (each task's rows scaled to the first task's mean norm).
    AlignedHeads,
    /// Nearest class mean (cosine) over the stored, drift-compensated class means.
    Ncm,
    /// FeCAM's Mahalanobis distance (needs statistics kept with --class-stats cov).
    Mahalanobis,
    /// Nearest class mean picks the task, that task's head the class.
    NcmTask,
    /// Ridge regression of one-hot labels on Tukey features, solved in closed
    /// form from the stored class statistics (needs --class-stats cov).
    Analytic,
}

impl ClassifierKind {
    pub const ALL: [ClassifierKind; 6] = [
        ClassifierKind::Heads,
        ClassifierKind::AlignedHeads,
        ClassifierKind::Ncm,
        ClassifierKind::Mahalanobis,
        ClassifierKind::NcmTask,
        ClassifierKind::Analytic,
    ];

    pub fn name(self) -> &'static str {
        match self {
            ClassifierKind::Heads => "heads",
            ClassifierKind::AlignedHeads => "aligned-heads",
            ClassifierKind::Ncm => "ncm",
            ClassifierKind::Mahalanobis => "mahalanobis",
            ClassifierKind::NcmTask => "ncm-task",
            ClassifierKind::Analytic => "analytic",
        }
    }

    /// How the classifier's scores become the probabilities `predict` prints.
    pub fn probability_rule(self) -> &'static str {
        match self {
            ClassifierKind::Heads | ClassifierKind::AlignedHeads => "softmax of the logits",
            ClassifierKind::Ncm => "softmax of 16 × cosine similarity",
            ClassifierKind::Mahalanobis => "softmax of −d²/2",
            ClassifierKind::NcmTask => "NCM probability of the task × softmax of that task's head",
            ClassifierKind::Analytic => "softmax of 16 × the regressed one-hot score",
        }
    }

    /// Whether the classifier reads class statistics (and which part).
    pub fn needs(self) -> Option<&'static str> {
        match self {
            ClassifierKind::Heads | ClassifierKind::AlignedHeads => None,
            ClassifierKind::Ncm | ClassifierKind::NcmTask => Some("class means"),
            ClassifierKind::Mahalanobis | ClassifierKind::Analytic => {
                Some("class covariances (train or extend with --class-stats cov)")
            }
        }
    }

    /// The classifier a model's predictions use when none is asked for:
    /// `ncm-task` when statistics exist, chosen on the validation split of
    /// `tools/validation_split.py` (training images only): LwF and finetune,
    /// two-task, seeds 0–2, class-IL ncm-task 82.4 / 82.2 % against ncm
    /// 81.4 / 81.4 %. Without statistics (a model imported without --data),
    /// `aligned-heads`: under LwF, the default method, it beat the plain
    /// heads by 17.8 points two-task and 2.7 on split5 (Fashion-MNIST,
    /// README); on an imported torchvision resnet18 the evidence was mixed
    /// (−0.2 / −1.3 under LwF, +2.3 under feature-extraction; README, "Your
    /// own PyTorch classifier"). With one head it is the heads.
    ///
    /// With covariances (`--class-stats cov`), `analytic`: on the same
    /// validation copy (LwF, `--cov-drift ridge`, seeds 0–2) it gave 85.8 %
    /// two-task against ncm-task's 83.9, and 64.2 on split5 against 53.3
    /// (README, "Feature distillation and the analytic classifier").
    pub fn default_for(stats: Option<&ClassStats>) -> Self {
        match stats {
            Some(s) if s.gauss.is_some() => ClassifierKind::Analytic,
            Some(_) => ClassifierKind::NcmTask,
            None => ClassifierKind::AlignedHeads,
        }
    }

    /// Every classifier the statistics allow, in [`ClassifierKind::ALL`] order.
    pub fn available(stats: Option<&ClassStats>) -> Vec<Self> {
        ClassifierKind::ALL
            .into_iter()
            .filter(|k| match k {
                ClassifierKind::Heads | ClassifierKind::AlignedHeads => true,
                ClassifierKind::Ncm | ClassifierKind::NcmTask => stats.is_some(),
                ClassifierKind::Mahalanobis | ClassifierKind::Analytic => {
                    stats.is_some_and(|s| s.gauss.is_some())
                }
            })
            .collect()
    }
}

impl fmt::Display for ClassifierKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A classifier ready to score host-side feature rows.
pub struct FeatureClassifier {
    pub kind: ClassifierKind,
    /// The global class of each score column.
    pub classes: Vec<u32>,
    dim: usize,
    model: Model,
}

/// A classifier's parameters as [`FeatureClassifier::parts`] shows them.
pub enum Parts<'a> {
    /// Scores `x · Wᵀ + b` (classes × dim rows of W).
    Linear { w: &'a [f32], b: &'a [f32] },
    /// Scores `ncm_space(x) · means_k` (unit-length means, classes × dim).
    Ncm { means: &'a [f32] },
    /// Scores `−(t − μ_k)ᵀ Σ_k⁻¹ (t − μ_k)` with `t = tukey_space(x)`
    /// (means classes × dim, inverses classes × dim × dim).
    Mahalanobis { means: &'a [f32], inv: &'a [f32] },
    /// Scores `tukey_space(x) · Wᵀ + b` (classes × dim rows of W).
    TukeyLinear { w: &'a [f32], b: &'a [f32] },
    /// NCM's task probability times the task's head softmax; `task_of[k]` is
    /// the task of column k (both classifiers hold the same classes).
    NcmTask { ncm: &'a FeatureClassifier, heads: &'a FeatureClassifier, task_of: &'a [usize] },
}

enum Model {
    /// Rows of W (classes × dim) and the biases.
    Linear { w: Vec<f32>, b: Vec<f32> },
    /// NCM over the tasks, then the task's head: both over `classes`, with
    /// the task (index into the model's tasks) of each class.
    NcmTask { ncm: Box<FeatureClassifier>, heads: Box<FeatureClassifier>, task_of: Vec<usize> },
    /// Unit-length class means (classes × dim).
    Ncm { means: Vec<f32> },
    /// Tukey-space means and inverse correlation-normalised covariances.
    Maha { means: Vec<f32>, inv: Vec<f32> },
    /// Rows of W (classes × dim) and biases over Tukey-space features.
    TukeyLinear { w: Vec<f32>, b: Vec<f32> },
}

impl FeatureClassifier {
    /// The heads of `net` (in head order, each head's rows in order), with
    /// weight aligning when `aligned`: rows grouped by the task of their class
    /// in `tasks`, each group scaled to the first group's mean row norm.
    pub fn heads<B: Backend>(b: &B, net: &Net<B>, tasks: &[Vec<u32>], aligned: bool) -> Self {
        let dim = net.arch.hidden;
        let (mut w, mut bias, mut classes) = (Vec::new(), Vec::new(), Vec::new());
        for h in &net.heads {
            let hw = h.linear.w.value.to_vec(b);
            let hb = h.linear.b.value.to_vec(b);
            w.extend_from_slice(&hw[..h.classes.len() * dim]);
            bias.extend_from_slice(&hb[..h.classes.len()]);
            classes.extend_from_slice(&h.classes);
        }
        if aligned {
            align_rows(&mut w, &mut bias, &classes, tasks, dim);
        }
        let kind = if aligned { ClassifierKind::AlignedHeads } else { ClassifierKind::Heads };
        FeatureClassifier { kind, classes, dim, model: Model::Linear { w, b: bias } }
    }

    /// Nearest class mean (cosine) over the statistics' classes.
    pub fn ncm(stats: &ClassStats) -> Self {
        let mut means = stats.means.clone();
        super::stats::l2_rows(&mut means, stats.dim);
        FeatureClassifier {
            kind: ClassifierKind::Ncm,
            classes: stats.classes.clone(),
            dim: stats.dim,
            model: Model::Ncm { means },
        }
    }

    /// FeCAM's Mahalanobis classifier; `None` without covariances.
    pub fn mahalanobis(stats: &ClassStats) -> Option<Self> {
        let g = stats.gauss.as_ref()?;
        let dim = stats.dim;
        let plen = packed_len(dim);
        let inv: Vec<f32> = (0..stats.classes.len())
            .into_par_iter()
            .flat_map_iter(|k| {
                let cov = unpack_symmetric(&g.covs[k * plen..(k + 1) * plen], dim);
                let corr = correlation(&shrink(&cov, dim), dim);
                sym_inverse(&corr, dim).into_iter().map(|v| v as f32)
            })
            .collect();
        // FeCAM compares L2-normalised features with L2-normalised means.
        let mut means = g.means.clone();
        super::stats::l2_rows(&mut means, dim);
        Some(FeatureClassifier {
            kind: ClassifierKind::Mahalanobis,
            classes: stats.classes.clone(),
            dim,
            model: Model::Maha { means, inv },
        })
    }

    /// The analytic classifier; `None` without covariances. With `a = [t, 1]`
    /// the Tukey features and a constant, the ridge solution over all the
    /// images the statistics describe is `W = (Σ aaᵀ + λ·D)⁻¹ Σ a·yᵀ`, D the
    /// identity without the bias entry (the bias is not shrunk). Per class
    /// `k` (count `n`, mean μ, unbiased covariance Σ) the sums are
    /// `Σ ttᵀ = (n − 1)Σ + n·μμᵀ`, `Σ t = n·μ` and `Σ a·y_k = n·[μ, 1]`, so
    /// the statistics give the fit exactly.
    pub fn analytic(stats: &ClassStats) -> Option<Self> {
        let g = stats.gauss.as_ref()?;
        let (d, nc, plen) = (stats.dim, stats.classes.len(), packed_len(stats.dim));
        let da = d + 1;
        let mut gram = vec![0f64; da * da];
        let mut cross = vec![0f64; da * nc];
        for k in 0..nc {
            let n = stats.counts[k] as f64;
            let mu: Vec<f64> = g.means[k * d..(k + 1) * d].iter().map(|&v| v as f64).collect();
            let cov = unpack_symmetric(&g.covs[k * plen..(k + 1) * plen], d);
            for i in 0..d {
                for j in 0..d {
                    gram[i * da + j] += (n - 1.0).max(0.0) * cov[i * d + j] + n * mu[i] * mu[j];
                }
                gram[i * da + d] += n * mu[i];
                gram[d * da + i] += n * mu[i];
                cross[i * nc + k] = n * mu[i];
            }
            gram[d * da + d] += n;
            cross[d * nc + k] = n;
        }
        let mean_diag = (0..d).map(|i| gram[i * da + i]).sum::<f64>() / d.max(1) as f64;
        for i in 0..d {
            gram[i * da + i] += ANALYTIC_RIDGE * mean_diag;
        }
        let sol = matmul(&sym_inverse(&gram, da), false, &cross, da, da, nc);
        let w: Vec<f32> =
            (0..nc).flat_map(|k| (0..d).map(move |i| (k, i))).map(|(k, i)| sol[i * nc + k] as f32).collect();
        let b: Vec<f32> = (0..nc).map(|k| sol[d * nc + k] as f32).collect();
        Some(FeatureClassifier {
            kind: ClassifierKind::Analytic,
            classes: stats.classes.clone(),
            dim: d,
            model: Model::TukeyLinear { w, b },
        })
    }

    /// Build `kind` from a net and its statistics; `Err` names what is missing.
    pub fn build<B: Backend>(
        kind: ClassifierKind,
        b: &B,
        net: &Net<B>,
        tasks: &[Vec<u32>],
        stats: Option<&ClassStats>,
    ) -> Result<Self, String> {
        let missing = || format!("the {kind} classifier needs {}", kind.needs().unwrap_or("nothing"));
        match kind {
            ClassifierKind::Heads => Ok(Self::heads(b, net, tasks, false)),
            ClassifierKind::AlignedHeads => Ok(Self::heads(b, net, tasks, true)),
            ClassifierKind::Ncm => stats.map(Self::ncm).ok_or_else(missing),
            ClassifierKind::Mahalanobis => stats.and_then(Self::mahalanobis).ok_or_else(missing),
            ClassifierKind::Analytic => stats.and_then(Self::analytic).ok_or_else(missing),
            ClassifierKind::NcmTask => {
                let stats = stats.ok_or_else(missing)?;
                Ok(Self::ncm_task(Self::ncm(stats), Self::heads(b, net, tasks, false), tasks))
            }
        }
    }

    /// `ncm-task` from an NCM and a heads classifier over the same classes
    /// (in any order: the heads' columns are put in NCM's order).
    pub fn ncm_task(ncm: FeatureClassifier, heads: FeatureClassifier, tasks: &[Vec<u32>]) -> Self {
        let task_of: Vec<usize> = ncm
            .classes
            .iter()
            .map(|c| tasks.iter().position(|t| t.contains(c)).expect("every class belongs to a task"))
            .collect();
        assert!(
            ncm.classes.iter().all(|c| heads.classes.contains(c)) && ncm.classes.len() == heads.classes.len(),
            "ncm-task: the statistics' classes {:?} are not the heads' {:?}",
            ncm.classes,
            heads.classes
        );
        FeatureClassifier {
            kind: ClassifierKind::NcmTask,
            classes: ncm.classes.clone(),
            dim: ncm.dim,
            model: Model::NcmTask { ncm: Box::new(ncm), heads: Box::new(heads), task_of },
        }
    }

    /// Scores (n × classes, higher is better) of `n` rows of raw features.
    pub fn scores(&self, raw: &[f32], n: usize) -> Vec<f32> {
        let d = self.dim;
        assert_eq!(raw.len(), n * d, "FeatureClassifier::scores: {n} rows of {d}");
        let nc = self.classes.len();
        let mut out = vec![0f32; n * nc];
        match &self.model {
            Model::Linear { w, b } => {
                out.par_chunks_mut(nc).zip(raw.par_chunks(d)).for_each(|(o, x)| {
                    for (k, o) in o.iter_mut().enumerate() {
                        *o = dot(&w[k * d..(k + 1) * d], x) + b[k];
                    }
                });
            }
            Model::TukeyLinear { w, b } => {
                let x = tukey_space(raw, d);
                out.par_chunks_mut(nc).zip(x.par_chunks(d)).for_each(|(o, x)| {
                    for (k, o) in o.iter_mut().enumerate() {
                        *o = dot(&w[k * d..(k + 1) * d], x) + b[k];
                    }
                });
            }
            Model::Ncm { means } => {
                let x = ncm_space(raw, d);
                out.par_chunks_mut(nc).zip(x.par_chunks(d)).for_each(|(o, x)| {
                    for (k, o) in o.iter_mut().enumerate() {
                        *o = dot(&means[k * d..(k + 1) * d], x);
                    }
                });
            }
            Model::NcmTask { ncm, heads, task_of } => {
                let (ns, hs) = (ncm.scores(raw, n), heads.scores(raw, n));
                // Heads' columns in NCM's class order.
                let col: Vec<usize> = self
                    .classes
                    .iter()
                    .map(|c| heads.classes.iter().position(|h| h == c).expect("same classes"))
                    .collect();
                // The columns of each task, once.
                let n_tasks = task_of.iter().max().map_or(0, |m| m + 1);
                let groups: Vec<Vec<usize>> =
                    (0..n_tasks).map(|t| (0..nc).filter(|&k| task_of[k] == t).collect()).collect();
                out.par_chunks_mut(nc).enumerate().for_each(|(i, o)| {
                    let p = ncm.probabilities(&ns[i * nc..(i + 1) * nc]);
                    let h = &hs[i * nc..(i + 1) * nc];
                    for ks in &groups {
                        let p_task: f32 = ks.iter().map(|&k| p[k]).sum();
                        let m = ks.iter().map(|&k| h[col[k]]).fold(f32::NEG_INFINITY, f32::max);
                        let z: f32 = ks.iter().map(|&k| (h[col[k]] - m).exp()).sum();
                        for &k in ks {
                            o[k] = p_task * (h[col[k]] - m).exp() / z;
                        }
                    }
                });
            }
            Model::Maha { means, inv } => {
                let x = tukey_space(raw, d);
                let cols: Vec<Vec<f32>> = (0..nc)
                    .into_par_iter()
                    .map(|k| {
                        mahalanobis_sq(&x, n, &means[k * d..(k + 1) * d], &inv[k * d * d..(k + 1) * d * d], d)
                    })
                    .collect();
                for (k, col) in cols.iter().enumerate() {
                    for i in 0..n {
                        out[i * nc + k] = -col[i];
                    }
                }
            }
        }
        out
    }

    /// Index (into `classes`) of the best score of each row; the first on ties.
    pub fn argmax(&self, scores: &[f32]) -> Vec<usize> {
        scores
            .chunks(self.classes.len())
            .map(|row| row.iter().enumerate().fold(0, |best, (k, v)| if *v > row[best] { k } else { best }))
            .collect()
    }

    /// The factor scores are multiplied by before the softmax that makes
    /// them probabilities (see the module's note on scales); `None` for
    /// `ncm-task`, whose scores already are probabilities.
    pub fn softmax_scale(&self) -> Option<f32> {
        match self.model {
            Model::Linear { .. } => Some(1.0),
            Model::Ncm { .. } => Some(NCM_SCALE),
            Model::Maha { .. } => Some(0.5),
            Model::TukeyLinear { .. } => Some(ANALYTIC_SCALE),
            Model::NcmTask { .. } => None,
        }
    }

    /// Width of the feature rows it scores.
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// What the classifier is made of, column by column in `classes` order:
    /// for writing it in another form (ONNX export).
    pub fn parts(&self) -> Parts<'_> {
        match &self.model {
            Model::Linear { w, b } => Parts::Linear { w, b },
            Model::Ncm { means } => Parts::Ncm { means },
            Model::Maha { means, inv } => Parts::Mahalanobis { means, inv },
            Model::TukeyLinear { w, b } => Parts::TukeyLinear { w, b },
            Model::NcmTask { ncm, heads, task_of } => Parts::NcmTask { ncm, heads, task_of },
        }
    }

    /// Probabilities of one row of scores (see the module's note on scales).
    pub fn probabilities(&self, scores: &[f32]) -> Vec<f32> {
        let Some(scale) = self.softmax_scale() else {
            return scores.to_vec();
        };
        let z: Vec<f32> = scores.iter().map(|s| s * scale).collect();
        let m = z.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
        let e: Vec<f32> = z.iter().map(|v| (v - m).exp()).collect();
        let s: f32 = e.iter().sum();
        e.iter().map(|v| v / s).collect()
    }
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// Weight aligning: scale each task's rows (and biases) so their mean row
/// norm equals the first task's.
fn align_rows(w: &mut [f32], b: &mut [f32], classes: &[u32], tasks: &[Vec<u32>], dim: usize) {
    let norm = |r: usize, w: &[f32]| dot(&w[r * dim..(r + 1) * dim], &w[r * dim..(r + 1) * dim]).sqrt();
    let mean_norm = |t: &Vec<u32>, w: &[f32]| {
        let rows: Vec<usize> = (0..classes.len()).filter(|&r| t.contains(&classes[r])).collect();
        rows.iter().map(|&r| norm(r, w)).sum::<f32>() / rows.len().max(1) as f32
    };
    let Some(first) = tasks.first() else { return };
    let target = mean_norm(first, w);
    for t in &tasks[1..] {
        let m = mean_norm(t, w);
        if m <= 0.0 {
            continue;
        }
        let gamma = target / m;
        for r in (0..classes.len()).filter(|&r| t.contains(&classes[r])) {
            w[r * dim..(r + 1) * dim].iter_mut().for_each(|v| *v *= gamma);
            b[r] *= gamma;
        }
    }
}

/// FeCAM's covariance shrinkage: add the mean diagonal value to the diagonal
/// and the mean off-diagonal value off it (both with weight 1).
pub fn shrink(cov: &[f64], dim: usize) -> Vec<f64> {
    let diag_mean = (0..dim).map(|i| cov[i * dim + i]).sum::<f64>() / dim as f64;
    let (mut off_sum, mut off_n) = (0f64, 0usize);
    for i in 0..dim {
        for j in 0..dim {
            if i != j && cov[i * dim + j] != 0.0 {
                off_sum += cov[i * dim + j];
                off_n += 1;
            }
        }
    }
    let off_mean = if off_n > 0 { off_sum / off_n as f64 } else { 0.0 };
    let mut s = cov.to_vec();
    for i in 0..dim {
        for j in 0..dim {
            s[i * dim + j] += if i == j { diag_mean } else { off_mean };
        }
    }
    s
}

/// `D^{-1/2} Σ D^{-1/2}`: the covariance normalised to unit diagonal.
pub fn correlation(cov: &[f64], dim: usize) -> Vec<f64> {
    let sd: Vec<f64> = (0..dim).map(|i| cov[i * dim + i].max(1e-30).sqrt()).collect();
    let mut c = cov.to_vec();
    for i in 0..dim {
        for j in 0..dim {
            c[i * dim + j] /= sd[i] * sd[j];
        }
    }
    c
}

/// Squared Mahalanobis distances of `n` rows of `x` to `mean` under the
/// inverse `inv` (dim × dim): centre, one sgemm, row-wise dot.
fn mahalanobis_sq(x: &[f32], n: usize, mean: &[f32], inv: &[f32], dim: usize) -> Vec<f32> {
    let centred: Vec<f32> = x.chunks(dim).flat_map(|r| r.iter().zip(mean).map(|(a, b)| a - b)).collect();
    let mut prod = vec![0f32; n * dim];
    // SAFETY: centred is n × dim, inv dim × dim, prod n × dim, all row-major
    // with the strides given; every index they reach is inside its vector.
    unsafe {
        matrixmultiply::sgemm(
            n,
            dim,
            dim,
            1.0,
            centred.as_ptr(),
            dim as isize,
            1,
            inv.as_ptr(),
            dim as isize,
            1,
            0.0,
            prod.as_mut_ptr(),
            dim as isize,
            1,
        );
    }
    prod.chunks(dim).zip(centred.chunks(dim)).map(|(p, c)| dot(p, c)).collect()
}
