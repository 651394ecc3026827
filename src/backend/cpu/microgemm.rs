//! The Winograd path's gemms without packing: `C[m×n] = A[m×k] · B[k×n]`,
//! row-major and contiguous, with m and k channel counts (tens) and n a
//! block of tiles (about a hundred). At these sizes a general sgemm spends
//! much of its time packing A and B into panels; here both are already laid
//! out for a register-blocked kernel: a 6×16 block of C lives in twelve AVX2
//! registers, each step of k loads 16 consecutive values of one row of B and
//! broadcasts six values of A. B (k × n ≈ 14 KB) stays in L1 while the
//! row blocks of A sweep over it.
//!
//! AVX2 + FMA only ([`available`]); elsewhere the caller uses the sgemm.

/// Rows of a C block.
const MR: usize = 6;
/// Columns of a C block (two 8-lane registers).
const NR: usize = 16;

pub use x86::available;

/// `c = a · b` (overwriting `c`), `a` m×k, `b` k×n, `c` m×n, all row-major.
///
/// # Safety
/// The CPU must have AVX2 and FMA ([`available`]).
pub unsafe fn gemm(c: &mut [f32], a: &[f32], b: &[f32], m: usize, n: usize, k: usize) {
    assert!(a.len() >= m * k && b.len() >= k * n && c.len() >= m * n, "microgemm: {m}×{n}×{k} does not fit");
    // SAFETY: the caller checked the CPU features; the lengths are checked above.
    unsafe { x86::gemm(c, a, b, m, n, k) }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{MR, NR};
    use std::arch::x86_64::*;

    pub fn available() -> bool {
        std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
    }

    /// # Safety
    /// AVX2 + FMA; `a`, `b`, `c` hold m×k, k×n and m×n values.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn gemm(c: &mut [f32], a: &[f32], b: &[f32], m: usize, n: usize, k: usize) {
        for i0 in (0..m).step_by(MR) {
            for j0 in (0..n).step_by(NR) {
                let cols = (n - j0).min(NR);
                // SAFETY: rows i0.., columns j0..j0 + cols are inside the matrices.
                unsafe {
                    match m - i0 {
                        1 => block::<1>(c, a, b, i0, j0, cols, n, k),
                        2 => block::<2>(c, a, b, i0, j0, cols, n, k),
                        3 => block::<3>(c, a, b, i0, j0, cols, n, k),
                        4 => block::<4>(c, a, b, i0, j0, cols, n, k),
                        5 => block::<5>(c, a, b, i0, j0, cols, n, k),
                        _ => block::<MR>(c, a, b, i0, j0, cols, n, k),
                    }
                }
            }
        }
    }

    /// Lane masks for the first `cols` of 16 columns (two registers).
    #[inline(always)]
    unsafe fn masks(cols: usize) -> (__m256i, __m256i) {
        let lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
        let lo = _mm256_cmpgt_epi32(_mm256_set1_epi32(cols as i32), lanes);
        let hi = _mm256_cmpgt_epi32(_mm256_set1_epi32(cols as i32 - 8), lanes);
        (lo, hi)
    }

    /// One R×16 block of C at (i0, j0), of which `cols` columns are real;
    /// partial blocks load and store through lane masks, so nothing outside
    /// the matrices is touched.
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    unsafe fn block<const R: usize>(
        c: &mut [f32],
        a: &[f32],
        b: &[f32],
        i0: usize,
        j0: usize,
        cols: usize,
        n: usize,
        k: usize,
    ) {
        let mut acc = [[_mm256_setzero_ps(); 2]; R];
        let (ap, bp, cp) = (a.as_ptr(), b.as_ptr(), c.as_mut_ptr());
        // SAFETY (all pointer arithmetic below): row r < R of A is row i0 + r
        // < m, p < k, and B/C columns j0.. are read or written only under the
        // masks when fewer than 16 remain.
        unsafe {
            // The k loop, with `$b` (B's 16 values of row `$row` at j0) and
            // the stores of the block given by the caller.
            macro_rules! sweep {
                ($row:ident => $b:expr; $out:ident, $acc:ident => $store:expr) => {{
                    for p in 0..k {
                        let $row = bp.add(p * n + j0);
                        let (b0, b1) = $b;
                        for (r, acc_r) in acc.iter_mut().enumerate() {
                            let av = _mm256_broadcast_ss(&*ap.add((i0 + r) * k + p));
                            acc_r[0] = _mm256_fmadd_ps(av, b0, acc_r[0]);
                            acc_r[1] = _mm256_fmadd_ps(av, b1, acc_r[1]);
                        }
                    }
                    for (r, $acc) in acc.iter().enumerate() {
                        let $out = cp.add((i0 + r) * n + j0);
                        $store;
                    }
                }};
            }
            if cols == NR {
                sweep!(row => (_mm256_loadu_ps(row), _mm256_loadu_ps(row.add(8)));
                    out, v => { _mm256_storeu_ps(out, v[0]); _mm256_storeu_ps(out.add(8), v[1]) });
            } else {
                let (m0, m1) = masks(cols);
                sweep!(row => (_mm256_maskload_ps(row, m0), _mm256_maskload_ps(row.add(8), m1));
                    out, v => { _mm256_maskstore_ps(out, m0, v[0]); _mm256_maskstore_ps(out.add(8), m1, v[1]) });
            }
        }
    }
}

/// Elsewhere the kernel never runs (`available` is false).
#[cfg(not(target_arch = "x86_64"))]
mod x86 {
    pub fn available() -> bool {
        false
    }
    pub unsafe fn gemm(_: &mut [f32], _: &[f32], _: &[f32], _: usize, _: usize, _: usize) {
        unreachable!("microgemm needs AVX2")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cpu::naive;
    use crate::backend::Gemm;
    use crate::rng::Rng;

    /// Every block shape: full and partial row blocks (m mod 6) and column
    /// blocks (n mod 16), against the naive gemm.
    #[test]
    fn matches_naive_gemm() {
        if !available() {
            eprintln!("SKIPPED: microgemm needs AVX2 + FMA, which this CPU lacks");
            return;
        }
        let mut rng = Rng::new(3);
        for (m, n, k) in
            [(1, 1, 1), (6, 16, 4), (7, 17, 3), (64, 112, 32), (32, 112, 64), (5, 33, 9), (13, 8, 1)]
        {
            let a: Vec<f32> = (0..m * k).map(|_| rng.uniform(-1.0, 1.0)).collect();
            let b: Vec<f32> = (0..k * n).map(|_| rng.uniform(-1.0, 1.0)).collect();
            let mut want = vec![0.0; m * n];
            naive::sgemm(&mut want, &a, &b, Gemm::nn(m, n, k));
            // Guard values past the end must survive the masked stores.
            let mut got = vec![f32::NAN; m * n + 20];
            got[m * n..].fill(7.0);
            // SAFETY: checked just above.
            unsafe { gemm(&mut got, &a, &b, m, n, k) };
            for (i, (&g, &w)) in got.iter().zip(&want).enumerate() {
                assert!((g - w).abs() <= 1e-5 * (k as f32).sqrt() * 4.0, "{m}×{n}×{k} at {i}: {g} vs {w}");
            }
            assert!(got[m * n..].iter().all(|&v| v == 7.0), "{m}×{n}×{k}: wrote past C");
        }
    }
}
