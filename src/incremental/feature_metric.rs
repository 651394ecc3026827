//! The metric of `--feature-metric efm`: feature distillation weighted by
//! the empirical feature matrix of EFC (Magistri et al. 2024), so the pull
//! holds the directions of feature space the old heads read and leaves the
//! others freer.
//!
//! For old heads with weights W (C × D, the heads stacked) and the softmax p
//! of their joined logits, a small move δ of the features changes the old
//! outputs' log-likelihood to second order by `δᵀ Wᵀ (diag p − p pᵀ) W δ`
//! (the Fisher information of the softmax, pulled back to the features).
//! Averaged over the new images, `E = Wᵀ A W` with `A = mean (diag p − p pᵀ)`.
//! E has rank below C, so the metric adds a floor: `M = η I + E / λ_max(E)`,
//! at most `1 + η` in any direction: under a given λ_f the pull is never
//! stronger than the plain one (which SGD is known to tolerate) by more than
//! that, and a tenth of it (η) in the directions the old heads ignore.

use super::linalg::{cholesky, matmul};

/// The floor η of the metric, EFC's.
pub const ETA: f64 = 0.1;

/// `E = Wᵀ A W` (D × D, f64): `weights` is C × D (the old heads' rows,
/// stacked), `logits` N × C (the old model's, the heads joined in the same
/// order), A the mean over the N rows of `diag p − p pᵀ`, p = softmax(row).
pub fn empirical_feature_matrix(weights: &[f32], logits: &[f32], c: usize, d: usize) -> Vec<f64> {
    assert_eq!(weights.len(), c * d, "empirical_feature_matrix: {} weights for {c} × {d}", weights.len());
    assert!(
        c > 0 && logits.len().is_multiple_of(c),
        "empirical_feature_matrix: {} logits in rows of {c}",
        logits.len()
    );
    let n = logits.len() / c;
    let mut a = vec![0f64; c * c];
    let mut p = vec![0f64; c];
    for row in logits.chunks_exact(c) {
        let max = row.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v)) as f64;
        let mut sum = 0.0;
        for (pk, &z) in p.iter_mut().zip(row) {
            *pk = (z as f64 - max).exp();
            sum += *pk;
        }
        p.iter_mut().for_each(|pk| *pk /= sum);
        for i in 0..c {
            a[i * c + i] += p[i];
            for j in 0..c {
                a[i * c + j] -= p[i] * p[j];
            }
        }
    }
    a.iter_mut().for_each(|v| *v /= n.max(1) as f64);
    let w: Vec<f64> = weights.iter().map(|&v| v as f64).collect();
    let aw = matmul(&a, false, &w, c, c, d);
    matmul(&w, true, &aw, d, c, d)
}

/// Largest eigenvalue of a symmetric positive semi-definite matrix, by power
/// iteration from the all-ones vector (enough for a scale).
fn largest_eigenvalue(m: &[f64], d: usize) -> f64 {
    let mut v = vec![1.0 / (d as f64).sqrt(); d];
    let mut lambda = 0.0;
    for _ in 0..200 {
        let mv = matmul(m, false, &v, d, d, 1);
        let norm = mv.iter().map(|x| x * x).sum::<f64>().sqrt();
        if norm == 0.0 || !norm.is_finite() {
            return 0.0;
        }
        let next: Vec<f64> = mv.iter().map(|x| x / norm).collect();
        let converged = (norm - lambda).abs() <= 1e-9 * norm;
        lambda = norm;
        v = next;
        if converged {
            break;
        }
    }
    lambda
}

/// The metric `M = η I + E / λ_max(E)` (D × D); with E zero (old heads
/// whose outputs no feature move changes), the plain metric I.
pub fn metric(e: &[f64], d: usize) -> Vec<f64> {
    let top = largest_eigenvalue(e, d);
    let mut m: Vec<f64> = if top > 0.0 { e.iter().map(|v| v / top).collect() } else { vec![0.0; d * d] };
    let floor = if top > 0.0 { ETA } else { 1.0 };
    for i in 0..d {
        m[i * d + i] += floor;
    }
    m
}

/// The weight of the fixed linear map that applies the metric: with
/// `M = L Lᵀ`, `y = x L` makes `‖y − y_old‖² = δᵀ M δ`; a linear layer
/// computes `x Wᵀ`, so W = Lᵀ (D × D, row-major f32).
pub fn metric_map(m: &[f64], d: usize) -> Vec<f32> {
    let l = cholesky(m, d).expect("metric_map: η I + a positive semi-definite matrix is positive definite");
    (0..d * d).map(|k| l[(k % d) * d + k / d] as f32).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    /// Old heads' weights (c × d, in [-1, 1]) and their logits on n images
    /// (in [-spread, spread]).
    fn heads(rng: &mut Rng, c: usize, d: usize, n: usize, spread: f32) -> (Vec<f32>, Vec<f32>) {
        let w = (0..c * d).map(|_| rng.uniform(-1.0, 1.0)).collect();
        let z = (0..n * c).map(|_| rng.uniform(-spread, spread)).collect();
        (w, z)
    }

    /// xᵀ M x for a d × d matrix.
    fn quadratic(m: &[f64], x: &[f64], d: usize) -> f64 {
        (0..d).map(|i| (0..d).map(|j| x[i] * m[i * d + j] * x[j]).sum::<f64>()).sum()
    }

    /// vᵀ E v is the mean over the images of the variance, under p, of the
    /// old logits' change W v: the definition, computed the other way.
    #[test]
    fn efm_is_the_mean_variance_of_the_logit_change() {
        let (c, d, n) = (5, 7, 11);
        let mut rng = Rng::new(3);
        let (w, z) = heads(&mut rng, c, d, n, 3.0);
        let e = empirical_feature_matrix(&w, &z, c, d);
        for _ in 0..4 {
            let v: Vec<f64> = (0..d).map(|_| rng.uniform(-1.0, 1.0) as f64).collect();
            let wv: Vec<f64> = (0..c).map(|k| (0..d).map(|j| w[k * d + j] as f64 * v[j]).sum()).collect();
            let mut want = 0.0;
            for row in z.chunks(c) {
                let mx = row.iter().cloned().fold(f32::MIN, f32::max);
                let ex: Vec<f64> = row.iter().map(|&x| (x as f64 - mx as f64).exp()).collect();
                let sum: f64 = ex.iter().sum();
                let mean: f64 = (0..c).map(|k| ex[k] / sum * wv[k]).sum();
                let sq: f64 = (0..c).map(|k| ex[k] / sum * wv[k] * wv[k]).sum();
                want += (sq - mean * mean) / n as f64;
            }
            let got = quadratic(&e, &v, d);
            assert!((got - want).abs() <= 1e-9 * want.abs().max(1.0), "vᵀEv {got} against {want}");
        }
    }

    /// The map's W = Lᵀ: ‖x Wᵀ‖² = xᵀ M x, and M's largest eigenvalue is 1 + η.
    #[test]
    fn metric_map_applies_the_metric() {
        let (c, d, n) = (3, 6, 9);
        let mut rng = Rng::new(11);
        let (w, z) = heads(&mut rng, c, d, n, 2.0);
        let m = metric(&empirical_feature_matrix(&w, &z, c, d), d);
        assert!((largest_eigenvalue(&m, d) - (1.0 + ETA)).abs() < 1e-6);
        let map = metric_map(&m, d);
        for _ in 0..4 {
            let x: Vec<f64> = (0..d).map(|_| rng.uniform(-1.0, 1.0) as f64).collect();
            let y: Vec<f64> = (0..d).map(|r| (0..d).map(|k| x[k] * map[r * d + k] as f64).sum()).collect();
            let got: f64 = y.iter().map(|v| v * v).sum();
            let want = quadratic(&m, &x, d);
            assert!((got - want).abs() <= 1e-5 * want, "‖x L‖² {got} against xᵀMx {want}");
        }
    }
}
