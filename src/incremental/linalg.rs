//! Small dense linear algebra in f64 for the class statistics: packed
//! symmetric storage, a product, and the inverse of a symmetric matrix. A
//! leaf module, so the statistics, the classifiers and the drift transport
//! all use one copy without depending on each other.

/// Number of packed upper-triangle entries of a dim × dim matrix.
pub fn packed_len(dim: usize) -> usize {
    dim * (dim + 1) / 2
}

/// Unpack a packed upper triangle into a full symmetric matrix (f64).
pub fn unpack_symmetric(packed: &[f32], dim: usize) -> Vec<f64> {
    assert_eq!(packed.len(), packed_len(dim), "unpack_symmetric: {} values for dim {dim}", packed.len());
    let mut m = vec![0f64; dim * dim];
    let mut k = 0;
    for i in 0..dim {
        for j in i..dim {
            m[i * dim + j] = packed[k] as f64;
            m[j * dim + i] = packed[k] as f64;
            k += 1;
        }
    }
    m
}

/// `C = op(A) · B` in f64, row-major; `op(A)` is `Aᵀ` when `at` (A then
/// `k × m`), else A (`m × k`); B is `k × n`.
pub fn matmul(a: &[f64], at: bool, b: &[f64], m: usize, k: usize, n: usize) -> Vec<f64> {
    let mut c = vec![0f64; m * n];
    let (rsa, csa) = if at { (1, m as isize) } else { (k as isize, 1) };
    // SAFETY: op(A) is m × k with the strides given (A holds m·k values
    // either way), B k × n and C m × n row-major: every index is in bounds.
    unsafe {
        matrixmultiply::dgemm(
            m,
            k,
            n,
            1.0,
            a.as_ptr(),
            rsa,
            csa,
            b.as_ptr(),
            n as isize,
            1,
            0.0,
            c.as_mut_ptr(),
            n as isize,
            1,
        );
    }
    c
}

/// Inverse of a symmetric matrix (FeCAM's pseudo-inverse, which for the
/// shrunk correlation matrices met in practice is the plain inverse; the
/// shrinkage can leave them indefinite, so no Cholesky), by Gauss–Jordan
/// elimination with partial pivoting in f64. Should a pivot vanish (a
/// singular matrix), a ridge of 1e-6·mean |diagonal| is added and it is tried
/// again, growing tenfold each time.
pub fn sym_inverse(a: &[f64], dim: usize) -> Vec<f64> {
    let scale = (0..dim).map(|i| a[i * dim + i].abs()).sum::<f64>() / dim.max(1) as f64;
    let mut ridge = 0.0;
    loop {
        if let Some(inv) = gauss_jordan(a, dim, ridge, 1e-12 * scale.max(1e-300)) {
            return inv;
        }
        ridge = if ridge == 0.0 { 1e-6 * scale.max(1e-30) } else { ridge * 10.0 };
    }
}

/// (A + ridge·I)⁻¹, or None when a pivot is below `tiny`.
fn gauss_jordan(a: &[f64], n: usize, ridge: f64, tiny: f64) -> Option<Vec<f64>> {
    let mut m = a.to_vec();
    for i in 0..n {
        m[i * n + i] += ridge;
    }
    let mut inv: Vec<f64> = (0..n * n).map(|k| if k / n == k % n { 1.0 } else { 0.0 }).collect();
    for c in 0..n {
        let p = (c..n).max_by(|&x, &y| m[x * n + c].abs().total_cmp(&m[y * n + c].abs()))?;
        if m[p * n + c].is_nan() || m[p * n + c].abs() <= tiny {
            return None;
        }
        if p != c {
            for k in 0..n {
                m.swap(c * n + k, p * n + k);
                inv.swap(c * n + k, p * n + k);
            }
        }
        let d = 1.0 / m[c * n + c];
        for k in 0..n {
            m[c * n + k] *= d;
            inv[c * n + k] *= d;
        }
        let (pivot_m, pivot_inv) = (m[c * n..(c + 1) * n].to_vec(), inv[c * n..(c + 1) * n].to_vec());
        for r in (0..n).filter(|&r| r != c) {
            let f = m[r * n + c];
            if f != 0.0 {
                for k in 0..n {
                    m[r * n + k] -= f * pivot_m[k];
                    inv[r * n + k] -= f * pivot_inv[k];
                }
            }
        }
    }
    inv.iter().all(|v| v.is_finite()).then_some(inv)
}

/// Lower-triangular L with `L Lᵀ = A` for a symmetric positive definite A
/// (dim × dim, row-major, f64), or None when a pivot is not positive.
pub fn cholesky(a: &[f64], dim: usize) -> Option<Vec<f64>> {
    assert_eq!(a.len(), dim * dim, "cholesky: {} values for dim {dim}", a.len());
    let mut l = vec![0f64; dim * dim];
    for i in 0..dim {
        for j in 0..=i {
            let dot: f64 = (0..j).map(|k| l[i * dim + k] * l[j * dim + k]).sum();
            if i == j {
                let d = a[i * dim + i] - dot;
                if d.is_nan() || d <= 0.0 {
                    return None;
                }
                l[i * dim + i] = d.sqrt();
            } else {
                l[i * dim + j] = (a[i * dim + j] - dot) / l[j * dim + j];
            }
        }
    }
    Some(l)
}
