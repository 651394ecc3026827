//! Moving the old classes' Gaussians with the trunk (`--cov-drift ridge`).
//!
//! SDC moves the old means but leaves their covariances where the old trunk
//! put them, and the Mahalanobis classifier degrades as the trunk drifts. A
//! linear map from old to new features, fitted on the new task's images
//! (which both trunks see), moves means and covariances together, as DPCR
//! (He et al. 2025) does: `W = (XᵀX + λI)⁻¹ XᵀY` with X the old and Y the new
//! trunk's features (Tukey space, one row per image); then every old class's
//! mean `μ ← Wᵀμ` and covariance `Σ ← WᵀΣW + Σ_ε`, where `Σ_ε` is the
//! covariance of the fit's residuals `Y − XW`: the part of the new features
//! the old ones do not explain, which a class's images will show too.

use super::linalg::{matmul, packed_len, sym_inverse, unpack_symmetric};

/// Ridge strength relative to the mean diagonal of XᵀX. Chosen a priori, not
/// tuned: large enough to keep the 256 × 256 solve well conditioned when a
/// task's images span few directions, small next to the features' spread.
pub const RIDGE: f64 = 1e-2;

/// What [`transport`] did, for the task's report.
#[derive(Clone, Debug, PartialEq)]
pub struct Transport {
    /// Share of the new features' total variance the map explains (R²).
    pub explained: f64,
}

/// Fit the map on `old` and `new` (n rows of `dim` each, the same images in
/// the same order) and move every class with it: `means` holds one row of
/// `dim` per class, `covs` one packed upper triangle per class.
pub fn transport(means: &mut [f32], covs: &mut [f32], old: &[f32], new: &[f32], dim: usize) -> Transport {
    let n = old.len() / dim;
    assert_eq!(old.len(), new.len(), "transport: old and new features differ in length");
    let x: Vec<f64> = old.iter().map(|&v| v as f64).collect();
    let y: Vec<f64> = new.iter().map(|&v| v as f64).collect();
    let mut gram = matmul(&x, true, &x, dim, n, dim);
    let lambda = RIDGE * (0..dim).map(|i| gram[i * dim + i]).sum::<f64>() / dim as f64;
    for i in 0..dim {
        gram[i * dim + i] += lambda.max(1e-12);
    }
    let w = matmul(&sym_inverse(&gram, dim), false, &matmul(&x, true, &y, dim, n, dim), dim, dim, dim);
    // Residuals and their covariance (about their own mean).
    let fit = matmul(&x, false, &w, n, dim, dim);
    let mut e: Vec<f64> = y.iter().zip(&fit).map(|(a, b)| a - b).collect();
    let (mean_e, mean_y) = (column_means(&e, dim), column_means(&y, dim));
    let total: f64 = y.chunks(dim).flat_map(|r| r.iter().zip(&mean_y).map(|(v, m)| (v - m).powi(2))).sum();
    for row in e.chunks_mut(dim) {
        row.iter_mut().zip(&mean_e).for_each(|(v, m)| *v -= m);
    }
    let unexplained: f64 = e.iter().map(|v| v * v).sum();
    let scale = 1.0 / (n.max(2) - 1) as f64;
    let resid: Vec<f64> = matmul(&e, true, &e, dim, n, dim).into_iter().map(|v| v * scale).collect();

    let plen = packed_len(dim);
    let classes = means.len() / dim;
    for k in 0..classes {
        let mu: Vec<f64> = means[k * dim..(k + 1) * dim].iter().map(|&v| v as f64).collect();
        let moved = matmul(&w, true, &mu, dim, dim, 1);
        means[k * dim..(k + 1) * dim].iter_mut().zip(&moved).for_each(|(m, v)| *m = *v as f32);
        let cov = unpack_symmetric(&covs[k * plen..(k + 1) * plen], dim);
        let wt_cov_w = matmul(&matmul(&w, true, &cov, dim, dim, dim), false, &w, dim, dim, dim);
        let packed = &mut covs[k * plen..(k + 1) * plen];
        let mut at = 0;
        for i in 0..dim {
            for j in i..dim {
                // Symmetrise: the two triangles differ by rounding only.
                let v = 0.5 * (wt_cov_w[i * dim + j] + wt_cov_w[j * dim + i]) + resid[i * dim + j];
                packed[at] = v as f32;
                at += 1;
            }
        }
    }
    Transport { explained: if total > 0.0 { 1.0 - unexplained / total } else { 1.0 } }
}

fn column_means(x: &[f64], dim: usize) -> Vec<f64> {
    let n = (x.len() / dim).max(1) as f64;
    let mut m = vec![0f64; dim];
    for row in x.chunks(dim) {
        m.iter_mut().zip(row).for_each(|(s, v)| *s += v);
    }
    m.iter_mut().for_each(|s| *s /= n);
    m
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    /// New features that are an exact linear image of the old ones
    /// (`y = A x`): the map is recovered, a class's mean lands on `A μ` and
    /// its covariance on `A Σ Aᵀ`.
    #[test]
    fn an_exact_linear_drift_is_recovered_for_means_and_covariances() {
        let dim = 3;
        let a = [1.0f64, 0.5, 0.0, 0.0, 0.8, -0.3, 0.2, 0.0, 1.1];
        let mut rng = Rng::new(7);
        let old: Vec<f32> = (0..400 * dim).map(|_| rng.normal()).collect();
        let new: Vec<f32> = old
            .chunks(dim)
            .flat_map(|x| {
                (0..dim).map(move |i| (0..dim).map(|j| a[i * dim + j] * x[j] as f64).sum::<f64>() as f32)
            })
            .collect();
        let mu = [0.3f32, -0.2, 0.5];
        let cov = [[0.5f64, 0.1, 0.0], [0.1, 0.4, 0.05], [0.0, 0.05, 0.3]];
        let packed: Vec<f32> = (0..dim).flat_map(|i| (i..dim).map(move |j| cov[i][j] as f32)).collect();
        let (mut means, mut covs) = (mu.to_vec(), packed);
        let t = transport(&mut means, &mut covs, &old, &new, dim);
        assert!(t.explained > 0.999, "{t:?}");
        for i in 0..dim {
            let want: f64 = (0..dim).map(|j| a[i * dim + j] * mu[j] as f64).sum();
            // The ridge shrinks the map by about RIDGE.
            assert!((means[i] as f64 - want).abs() < 0.02, "mean {i}: {} vs {want}", means[i]);
        }
        let full = unpack_symmetric(&covs, dim);
        for i in 0..dim {
            for j in 0..dim {
                let want: f64 = (0..dim)
                    .flat_map(|p| (0..dim).map(move |q| (p, q)))
                    .map(|(p, q)| a[i * dim + p] * cov[p][q] * a[j * dim + q])
                    .sum();
                assert!(
                    (full[i * dim + j] - want).abs() < 0.03,
                    "cov ({i},{j}): {} vs {want}",
                    full[i * dim + j]
                );
            }
        }
    }

    /// New features unrelated to the old: the map explains almost nothing
    /// and the moved covariance is the residual's (the new features' own).
    #[test]
    fn unrelated_features_leave_the_residual_covariance() {
        let dim = 2;
        let mut rng = Rng::new(3);
        let old: Vec<f32> = (0..2000 * dim).map(|_| rng.normal()).collect();
        let new: Vec<f32> = (0..2000 * dim).map(|_| 2.0 * rng.normal()).collect();
        let (mut means, mut covs) = (vec![1.0f32, 1.0], vec![1.0f32, 0.0, 1.0]);
        let t = transport(&mut means, &mut covs, &old, &new, dim);
        assert!(t.explained < 0.01, "{t:?}");
        assert!(means.iter().all(|m| m.abs() < 0.1), "{:?}", means);
        assert!((covs[0] - 4.0).abs() < 0.4 && (covs[2] - 4.0).abs() < 0.4, "{:?}", covs);
    }
}
