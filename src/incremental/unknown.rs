//! "None of these": a score of how little an image looks like any class the
//! model knows, and the threshold above which `predict` calls it unknown.
//!
//! Every score is computed from the trunk's features of the image, with what
//! the checkpoint already holds (heads, class statistics), higher meaning
//! "more likely unknown":
//!
//! - `max-softmax` (Hendrycks & Gimpel, arXiv 1610.02136): −max of the
//!   softmax over all heads' logits.
//! - `energy` (Liu et al., arXiv 2010.03759): −logsumexp of those logits.
//! - `max-cosine`: −the cosine to the nearest stored class mean (NCM's space).
//! - `mahalanobis` (Lee et al., arXiv 1807.03888, here in FeCAM's form): the
//!   squared distance to the nearest class under its Tukey-space mean and
//!   shrunk, correlation-normalised covariance.
//! - `combined`: `energy` and `mahalanobis` added after each is standardised
//!   by its mean and deviation over the calibration images. The two fail on
//!   different images (the heads' logits and the feature geometry see
//!   different things), so the sum separates better than either.
//!
//! `eval --unknown-classes` reports how well each score separates classes
//! the model has not learnt. A model may carry an [`UnknownRule`] (score,
//! standardisation, threshold: the score's [`quantile`] over known images
//! that accepts a chosen share of them), checked on load. train and extend
//! calibrate it ([`calibrate`]) on the task's validation images (its
//! training images when there is no validation split); eval reports it,
//! predict applies it. No image is stored.

use super::classifier::FeatureClassifier;
use super::stats::ClassStats;
use crate::backend::Backend;
use crate::nn::Net;
use serde::{Deserialize, Serialize};
use std::fmt;

/// How an image's "unknown" score is computed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum UnknownScore {
    /// −max softmax probability over all heads' logits.
    MaxSoftmax,
    /// −logsumexp of all heads' logits.
    Energy,
    /// −cosine to the nearest class mean (needs class statistics).
    MaxCosine,
    /// Squared Mahalanobis distance to the nearest class (needs --class-stats cov).
    Mahalanobis,
    /// Standardised energy + standardised Mahalanobis (needs --class-stats cov).
    Combined,
}

impl UnknownScore {
    pub const ALL: [UnknownScore; 5] = [
        UnknownScore::MaxSoftmax,
        UnknownScore::Energy,
        UnknownScore::MaxCosine,
        UnknownScore::Mahalanobis,
        UnknownScore::Combined,
    ];

    pub fn name(self) -> &'static str {
        match self {
            UnknownScore::MaxSoftmax => "max-softmax",
            UnknownScore::Energy => "energy",
            UnknownScore::MaxCosine => "max-cosine",
            UnknownScore::Mahalanobis => "mahalanobis",
            UnknownScore::Combined => "combined",
        }
    }

    /// Every score the statistics allow, in [`UnknownScore::ALL`] order.
    pub fn available(stats: Option<&ClassStats>) -> Vec<Self> {
        Self::ALL
            .into_iter()
            .filter(|s| match s {
                UnknownScore::MaxSoftmax | UnknownScore::Energy => true,
                UnknownScore::MaxCosine => stats.is_some(),
                UnknownScore::Mahalanobis | UnknownScore::Combined => {
                    stats.is_some_and(|s| s.gauss.is_some())
                }
            })
            .collect()
    }

    /// The score used when none is asked for: the best the statistics
    /// allow, by the measurements in README.md ("None of these").
    pub fn default_for(stats: Option<&ClassStats>) -> Self {
        *Self::available(stats).iter().max_by_key(|s| s.rank()).expect("energy is always available")
    }

    /// Order of preference (higher is better measured).
    fn rank(self) -> u8 {
        match self {
            UnknownScore::MaxSoftmax => 0,
            UnknownScore::MaxCosine => 1,
            UnknownScore::Energy => 2,
            UnknownScore::Mahalanobis => 3,
            UnknownScore::Combined => 4,
        }
    }
}

impl fmt::Display for UnknownScore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Mean and standard deviation of a score over known images.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Standardise {
    pub mean: f32,
    pub std: f32,
}

impl Standardise {
    fn of(v: &[f32]) -> Self {
        let n = v.len().max(1) as f64;
        let mean = v.iter().map(|&x| x as f64).sum::<f64>() / n;
        let var = v.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / n;
        Standardise { mean: mean as f32, std: (var.sqrt() as f32).max(1e-12) }
    }
    fn apply(&self, x: f32) -> f32 {
        (x - self.mean) / self.std
    }
}

/// What a model keeps to call an image unknown (checkpoint metadata).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct UnknownRule {
    pub score: UnknownScore,
    /// An image whose score is above this is unknown.
    pub threshold: f32,
    /// Share of the calibration images the threshold accepts.
    pub accept: f64,
    /// `combined`'s standardisation of energy and Mahalanobis.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub standardise: Option<[Standardise; 2]>,
    /// Which images set the threshold, in words.
    pub calibrated_on: String,
    pub calibration_images: usize,
}

impl UnknownRule {
    /// A one-line reason the rule cannot be used with these statistics, or
    /// cannot be right at all (checked when a checkpoint is loaded).
    pub fn check(&self, stats: Option<&ClassStats>) -> Result<(), String> {
        if !UnknownScore::available(stats).contains(&self.score) {
            return Err(format!(
                "unknown.score is {} but the model's class statistics do not allow it",
                self.score
            ));
        }
        if !self.threshold.is_finite() {
            return Err(format!("unknown.threshold is {}, not a finite number", self.threshold));
        }
        if !(self.accept > 0.0 && self.accept <= 1.0) {
            return Err(format!("unknown.accept is {}, not a share in (0, 1]", self.accept));
        }
        match (self.score, &self.standardise) {
            (UnknownScore::Combined, None) => Err("unknown.score combined has no standardisation".into()),
            (_, Some(s)) if s.iter().any(|z| !(z.mean.is_finite() && z.std.is_finite() && z.std > 0.0)) => {
                Err("unknown.standardise holds a non-finite mean or a deviation that is not positive".into())
            }
            _ => Ok(()),
        }
    }
}

/// Computes unknown scores from raw trunk features.
pub struct UnknownDetector {
    heads: FeatureClassifier,
    ncm: Option<FeatureClassifier>,
    maha: Option<FeatureClassifier>,
}

impl UnknownDetector {
    pub fn new<B: Backend>(b: &B, net: &Net<B>, tasks: &[Vec<u32>], stats: Option<&ClassStats>) -> Self {
        UnknownDetector {
            heads: FeatureClassifier::heads(b, net, tasks, false),
            ncm: stats.map(FeatureClassifier::ncm),
            maha: stats.and_then(FeatureClassifier::mahalanobis),
        }
    }

    /// Every available score of `n` rows of raw features: for each score,
    /// one value per row (higher: more likely unknown). `combined` is
    /// standardised with `standardise` when given, else over these rows.
    pub fn all_scores(
        &self,
        raw: &[f32],
        n: usize,
        standardise: Option<[Standardise; 2]>,
    ) -> Vec<(UnknownScore, Vec<f32>)> {
        let logits = self.heads.scores(raw, n);
        let nc = self.heads.classes.len();
        let rows = |v: &[f32], f: &dyn Fn(&[f32]) -> f32| v.chunks(nc.max(1)).map(f).collect::<Vec<f32>>();
        let mut out = vec![
            (UnknownScore::MaxSoftmax, rows(&logits, &|r| -max_softmax(r))),
            (UnknownScore::Energy, rows(&logits, &|r| -logsumexp(r))),
        ];
        if let Some(ncm) = &self.ncm {
            let s = ncm.scores(raw, n);
            let k = ncm.classes.len().max(1);
            out.push((UnknownScore::MaxCosine, s.chunks(k).map(|r| -max(r)).collect()));
        }
        if let Some(maha) = &self.maha {
            let s = maha.scores(raw, n);
            let k = maha.classes.len().max(1);
            let d: Vec<f32> = s.chunks(k).map(|r| -max(r)).collect();
            let energy = &out[1].1;
            let z = standardise.unwrap_or([Standardise::of(energy), Standardise::of(&d)]);
            let combined = energy.iter().zip(&d).map(|(&e, &m)| z[0].apply(e) + z[1].apply(m)).collect();
            out.push((UnknownScore::Mahalanobis, d));
            out.push((UnknownScore::Combined, combined));
        }
        out
    }
}

/// The rule of the default score for a model's statistics, its threshold
/// accepting `accept` of the known images whose trunk features are `feats`
/// (`n` rows, described by `calibrated_on`); `None` without images. The
/// caller runs the trunk, so this module needs no trainer.
#[allow(clippy::too_many_arguments)]
pub fn calibrate<B: Backend>(
    b: &B,
    net: &Net<B>,
    tasks: &[Vec<u32>],
    stats: Option<&ClassStats>,
    feats: &[f32],
    n: usize,
    accept: f64,
    calibrated_on: String,
) -> Option<UnknownRule> {
    if n == 0 {
        return None;
    }
    let scores = UnknownDetector::new(b, net, tasks, stats).all_scores(feats, n, None);
    let score = UnknownScore::default_for(stats);
    let values = score_of(&scores, score).expect("the default score is available");
    Some(UnknownRule {
        score,
        threshold: quantile(values, accept),
        accept,
        standardise: if score == UnknownScore::Combined { standardisation_of(&scores) } else { None },
        calibrated_on,
        calibration_images: n,
    })
}

impl UnknownRule {
    /// Which of `n` rows of raw features the rule calls unknown, with
    /// their scores.
    pub fn apply(&self, detector: &UnknownDetector, raw: &[f32], n: usize) -> Vec<(bool, f32)> {
        let scores = detector.all_scores(raw, n, self.standardise);
        let values =
            score_of(&scores, self.score).expect("the rule was checked against the statistics on load");
        values.iter().map(|&v| (v > self.threshold, v)).collect()
    }
}

/// The values of `score` in a result of [`UnknownDetector::all_scores`].
pub fn score_of(scores: &[(UnknownScore, Vec<f32>)], score: UnknownScore) -> Option<&[f32]> {
    scores.iter().find(|(s, _)| *s == score).map(|(_, v)| v.as_slice())
}

/// `combined`'s standardisation from scores already computed on known
/// images; `None` without Mahalanobis.
pub fn standardisation_of(scores: &[(UnknownScore, Vec<f32>)]) -> Option<[Standardise; 2]> {
    let of = |s| score_of(scores, s).map(Standardise::of);
    Some([of(UnknownScore::Energy)?, of(UnknownScore::Mahalanobis)?])
}

fn max(r: &[f32]) -> f32 {
    r.iter().cloned().fold(f32::NEG_INFINITY, f32::max)
}

fn logsumexp(r: &[f32]) -> f32 {
    let m = max(r);
    m + r.iter().map(|v| (v - m).exp()).sum::<f32>().ln()
}

fn max_softmax(r: &[f32]) -> f32 {
    (max(r) - logsumexp(r)).exp()
}

/// The smallest value `t` of `v` such that at least `share` of `v` is ≤ t.
pub fn quantile(v: &[f32], share: f64) -> f32 {
    assert!(!v.is_empty(), "quantile of no values");
    let mut s = v.to_vec();
    s.sort_by(f32::total_cmp);
    let k = ((share * s.len() as f64).ceil() as usize).clamp(1, s.len());
    s[k - 1]
}

/// Area under the ROC curve of telling `unknown` (positives) from `known`
/// by score (higher: unknown), ties counted half: the Mann–Whitney U
/// statistic over |known|·|unknown|.
pub fn auroc(known: &[f32], unknown: &[f32]) -> f64 {
    assert!(!known.is_empty() && !unknown.is_empty(), "AUROC needs both known and unknown scores");
    let mut all: Vec<(f32, bool)> =
        known.iter().map(|&s| (s, false)).chain(unknown.iter().map(|&s| (s, true))).collect();
    all.sort_by(|a, b| a.0.total_cmp(&b.0));
    // Rank sum of the unknown scores, ties given their mean rank.
    let (mut rank_sum, mut i) = (0f64, 0usize);
    while i < all.len() {
        let mut j = i;
        while j < all.len() && all[j].0.total_cmp(&all[i].0).is_eq() {
            j += 1;
        }
        let mean_rank = (i + 1 + j) as f64 / 2.0;
        rank_sum += mean_rank * all[i..j].iter().filter(|x| x.1).count() as f64;
        i = j;
    }
    let (nu, nk) = (unknown.len() as f64, known.len() as f64);
    (rank_sum - nu * (nu + 1.0) / 2.0) / (nu * nk)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auroc_is_one_when_separated_half_when_equal_and_counts_ties() {
        assert_eq!(auroc(&[0.0, 1.0], &[2.0, 3.0]), 1.0);
        assert_eq!(auroc(&[2.0, 3.0], &[0.0, 1.0]), 0.0);
        assert_eq!(auroc(&[1.0, 1.0], &[1.0]), 0.5);
        // One of four pairs wrong: 0.75.
        assert_eq!(auroc(&[0.0, 2.5], &[1.0, 3.0]), 0.75);
    }

    #[test]
    fn quantile_accepts_the_share_asked() {
        let v: Vec<f32> = (1..=100).map(|i| i as f32).collect();
        assert_eq!(quantile(&v, 0.95), 95.0);
        assert_eq!(quantile(&v, 1.0), 100.0);
        let accepted = v.iter().filter(|&&x| x <= quantile(&v, 0.95)).count();
        assert_eq!(accepted, 95);
    }

    #[test]
    fn scores_are_stable_for_large_logits() {
        assert!((logsumexp(&[1000.0, 1000.0]) - (1000.0 + 2f32.ln())).abs() < 1e-3);
        assert!((max_softmax(&[1000.0, 0.0]) - 1.0).abs() < 1e-6);
    }
}
