//! Gemms without packing, `C (+)= op(A) · B`: the Winograd path's
//! (`C[m×n] = A[m×k] · B[k×n]`, m and k channel counts, n a block of about a
//! hundred tiles) and, through [`super::gemm`], the linear layers'. At the
//! Winograd sizes a general sgemm spends much of its time packing A and B
//! into panels; for the linear layers (k up to 3136) it packs a transposed
//! operand element by element. Here the operands are used where they lie:
//! each step of k loads a row segment of B and broadcasts one value of A per
//! row of the C block (so a transposed A costs nothing), over panels of k
//! whose slice of B (≤ 32 KiB) stays in L1 while the row blocks of A sweep
//! over it.
//!
//! Two kernels, chosen by [`SimdPath`]: AVX2 + FMA with a 6×16 block of C
//! in twelve ymm registers, and AVX-512 with a larger block in zmm registers
//! (`MR512` × `NR512`, see there why that size). Both accumulate every
//! element of C as one FMA chain over k in order, starting from zero (or
//! from C), so they give the same bits. The portable path is the packing
//! sgemm.

use super::simd::SimdPath;
use super::{gemm_slices, Gemm};

/// Rows of an AVX2 C block.
const MR: usize = 6;
/// Columns of an AVX2 C block (two 8-lane registers).
const NR: usize = 16;
/// Rows of an AVX-512 C block. Measured on the cnn-s Winograd gemms (64×112×32
/// and 32×112×64) on a Zen 5 EPYC, best of 7 × 2000 calls: 8×32, 12×32 and
/// 8×48 all ran at ≈ 1.85 µs (≈ 250 GFLOP/s, the core's FMA peak; the AVX2
/// 6×16 kernel: 5.6 µs), 6×32 the same on one shape and half on the other,
/// 14×32 (28 accumulators, too few registers left) and 14×16 at about half.
/// 8 divides both channel counts (64, 32), so no partial row blocks.
const MR512: usize = 8;
/// Column registers of an AVX-512 C block (16 lanes each).
const NV512: usize = 2;

/// `c = a · b` (overwriting `c`), `a` m×k, `b` k×n, `c` m×n, all row-major,
/// on the given path (which must be one this CPU supports; [`super::simd`]
/// only hands out those).
pub fn gemm(path: SimdPath, c: &mut [f32], a: &[f32], b: &[f32], m: usize, n: usize, k: usize) {
    dense(path, c, a, b, m, n, k, false)
}

/// `c += a · b`, as [`gemm`] but accumulating: each element's FMA chain
/// starts from its value in `c` (the Winograd weight gradient sums its tile
/// blocks this way).
pub fn gemm_acc(path: SimdPath, c: &mut [f32], a: &[f32], b: &[f32], m: usize, n: usize, k: usize) {
    dense(path, c, a, b, m, n, k, true)
}

#[allow(clippy::too_many_arguments)]
fn dense(path: SimdPath, c: &mut [f32], a: &[f32], b: &[f32], m: usize, n: usize, k: usize, add: bool) {
    assert!(a.len() >= m * k && b.len() >= k * n && c.len() >= m * n, "microgemm: {m}×{n}×{k} does not fit");
    if path == SimdPath::Portable {
        let g = Gemm::nn(m, n, k);
        return gemm_slices(c, a, b, if add { g.acc() } else { g });
    }
    let ops =
        Operands { a: a.as_ptr(), lda: k, trans_a: false, b: b.as_ptr(), ldb: n, c: c.as_mut_ptr(), ldc: n };
    // SAFETY: the lengths are checked above; `c` is a unique borrow.
    unsafe { product(path, ops, m, n, k, add) }
}

/// Where the three matrices of one product sit: A row-major with leading
/// dimension `lda`, or (`trans_a`) stored transposed — the kernels only
/// broadcast single values of A, so either costs the same; B and C
/// row-major with leading dimensions `ldb` and `ldc`. Pointers to the
/// first element of the (sub-)matrices a call works on.
#[derive(Clone, Copy, Debug)]
pub struct Operands {
    pub a: *const f32,
    pub lda: usize,
    pub trans_a: bool,
    pub b: *const f32,
    pub ldb: usize,
    pub c: *mut f32,
    pub ldc: usize,
}

/// `C = op(A) · B` (`C += …` with `add`) for C m×n, k the inner dimension,
/// on `path` (AVX-512 or AVX2; it must be one this CPU supports). Cache
/// blocked: k in panels of [`KC`], then column blocks of C (the B panel,
/// ≤ 32 KiB, stays in L1 while every row block of A passes over it). Every
/// element of C is one FMA chain over k in order (a panel's partial sum is
/// stored in C and reloaded as the next one's start), so any cut of C into
/// blocks — e.g. over threads — gives the same bits.
///
/// # Safety
/// `ops` must address m×k values of A (k×m if transposed), k×n of B and
/// m×n of C with the given leading dimensions; C must not overlap A or B,
/// and no other thread may touch this block of C meanwhile.
pub unsafe fn product(path: SimdPath, ops: Operands, m: usize, n: usize, k: usize, add: bool) {
    assert!(path.supported(), "microgemm: SIMD path {path} is not supported by this CPU");
    for p0 in (0..k.max(1)).step_by(KC) {
        let panel = p0..(p0 + KC).min(k);
        let add = add || p0 > 0;
        // SAFETY: `supported` (asserted above) checked the path's features;
        // the caller's contract covers the operands.
        unsafe {
            match (path, ops.trans_a) {
                (SimdPath::Avx512, false) => x86::panel512::<MR512, NV512, false>(&ops, m, n, panel, add),
                (SimdPath::Avx512, true) => x86::panel512::<MR512, NV512, true>(&ops, m, n, panel, add),
                (SimdPath::Avx2, false) => x86::panel::<false>(&ops, m, n, panel, add),
                (SimdPath::Avx2, true) => x86::panel::<true>(&ops, m, n, panel, add),
                (SimdPath::Portable, _) => unreachable!("microgemm::product on the portable path"),
            }
        }
    }
}

/// Rows of k per panel: a 256 × 32 panel of B is 32 KiB (L1 is 32–48 KiB).
const KC: usize = 256;

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{Operands, MR, NR};
    use std::arch::x86_64::*;
    use std::ops::Range;

    /// The address of A's element (row `i`, column `p`).
    #[inline(always)]
    fn a_at<const TA: bool>(o: &Operands, i: usize, p: usize) -> *const f32 {
        if TA {
            o.a.wrapping_add(p * o.lda + i)
        } else {
            o.a.wrapping_add(i * o.lda + p)
        }
    }

    /// AVX-512: one panel `ks` of k, column blocks of `V·16` outside, row
    /// blocks of `R` inside.
    ///
    /// # Safety
    /// AVX-512 F (+ AVX2, FMA); [`super::product`]'s contract.
    #[target_feature(enable = "avx512f,avx2,fma")]
    pub unsafe fn panel512<const R: usize, const V: usize, const TA: bool>(
        o: &Operands,
        m: usize,
        n: usize,
        ks: Range<usize>,
        add: bool,
    ) {
        const { assert!(R >= 1 && R <= 14 && V >= 1 && V <= 4) };
        let width = V * 16;
        for j0 in (0..n).step_by(width) {
            let cols = (n - j0).min(width);
            for i0 in (0..m).step_by(R) {
                // A narrow last column block gets a narrower kernel rather
                // than FMAs on masked-off lanes.
                // SAFETY: rows i0.., columns j0..j0 + cols are inside the matrices.
                unsafe {
                    let at = (i0, j0, cols, ks.clone(), add);
                    match (cols.div_ceil(16), m - i0 >= R) {
                        (v, true) if v >= V => block512::<R, V, TA>(o, at),
                        (v, false) if v >= V => rows512::<V, TA>(o, at, m - i0),
                        (1, true) => block512::<R, 1, TA>(o, at),
                        (1, false) => rows512::<1, TA>(o, at, m - i0),
                        (2, true) => block512::<R, 2, TA>(o, at),
                        (2, false) => rows512::<2, TA>(o, at, m - i0),
                        (_, true) => block512::<R, 3, TA>(o, at),
                        (_, false) => rows512::<3, TA>(o, at, m - i0),
                    }
                }
            }
        }
    }

    /// One block of C: its first row and column, its real columns, the
    /// panel of k, and whether to start from C's values.
    type At = (usize, usize, usize, Range<usize>, bool);

    /// The last, partial row block (`rows` < R): one kernel per row count.
    #[inline(always)]
    unsafe fn rows512<const V: usize, const TA: bool>(o: &Operands, at: At, rows: usize) {
        // SAFETY: forwarded from the caller; `rows` rows remain from i0.
        unsafe {
            match rows {
                1 => block512::<1, V, TA>(o, at),
                2 => block512::<2, V, TA>(o, at),
                3 => block512::<3, V, TA>(o, at),
                4 => block512::<4, V, TA>(o, at),
                5 => block512::<5, V, TA>(o, at),
                6 => block512::<6, V, TA>(o, at),
                7 => block512::<7, V, TA>(o, at),
                8 => block512::<8, V, TA>(o, at),
                9 => block512::<9, V, TA>(o, at),
                10 => block512::<10, V, TA>(o, at),
                11 => block512::<11, V, TA>(o, at),
                12 => block512::<12, V, TA>(o, at),
                _ => block512::<13, V, TA>(o, at),
            }
        }
    }

    /// One R × (V·16) block of C at (i0, j0), of which `cols` columns are
    /// real, over the panel `ks`, starting from zero or (`add`) from C's
    /// values. Every load and store of B and C goes through a lane mask (all
    /// ones but in the last block: as fast as a plain access), so nothing
    /// outside the matrices is touched.
    #[inline(always)]
    unsafe fn block512<const R: usize, const V: usize, const TA: bool>(o: &Operands, at: At) {
        let (i0, j0, cols, ks, add) = at;
        let masks: [__mmask16; V] = std::array::from_fn(|v| {
            let left = cols.saturating_sub(v * 16).min(16);
            ((1u32 << left) - 1) as __mmask16
        });
        // SAFETY (all pointer arithmetic below): row r < R of A is row i0 + r
        // < m, p < k, and B/C columns j0 + v·16.. are accessed only under the
        // masks, which cover the `cols` real columns.
        unsafe {
            let mut acc: [[__m512; V]; R] = std::array::from_fn(|r| {
                let row = o.c.add((i0 + r) * o.ldc + j0);
                std::array::from_fn(|v| {
                    if add {
                        _mm512_maskz_loadu_ps(masks[v], row.add(v * 16))
                    } else {
                        _mm512_setzero_ps()
                    }
                })
            });
            for p in ks {
                let row = o.b.add(p * o.ldb + j0);
                let bv: [__m512; V] =
                    std::array::from_fn(|v| _mm512_maskz_loadu_ps(masks[v], row.add(v * 16)));
                for (r, acc_r) in acc.iter_mut().enumerate() {
                    let av = _mm512_set1_ps(*a_at::<TA>(o, i0 + r, p));
                    for (acc_v, &bv) in acc_r.iter_mut().zip(&bv) {
                        *acc_v = _mm512_fmadd_ps(av, bv, *acc_v);
                    }
                }
            }
            for (r, acc_r) in acc.iter().enumerate() {
                let out = o.c.add((i0 + r) * o.ldc + j0);
                for (v, &acc_v) in acc_r.iter().enumerate() {
                    _mm512_mask_storeu_ps(out.add(v * 16), masks[v], acc_v);
                }
            }
        }
    }

    /// AVX2: one panel `ks` of k, 16-column blocks outside, 6-row blocks inside.
    ///
    /// # Safety
    /// AVX2 + FMA; [`super::product`]'s contract.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn panel<const TA: bool>(o: &Operands, m: usize, n: usize, ks: Range<usize>, add: bool) {
        for j0 in (0..n).step_by(NR) {
            let cols = (n - j0).min(NR);
            for i0 in (0..m).step_by(MR) {
                // SAFETY: rows i0.., columns j0..j0 + cols are inside the matrices.
                unsafe {
                    let at = (i0, j0, cols, ks.clone(), add);
                    match m - i0 {
                        1 => block::<1, TA>(o, at),
                        2 => block::<2, TA>(o, at),
                        3 => block::<3, TA>(o, at),
                        4 => block::<4, TA>(o, at),
                        5 => block::<5, TA>(o, at),
                        _ => block::<MR, TA>(o, at),
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

    /// One R×16 block of C at (i0, j0), of which `cols` columns are real,
    /// over the panel `ks`, starting from zero or (`add`) from C's values;
    /// partial blocks load and store through lane masks, so nothing outside
    /// the matrices is touched.
    #[inline(always)]
    unsafe fn block<const R: usize, const TA: bool>(o: &Operands, at: At) {
        let (i0, j0, cols, ks, add) = at;
        // SAFETY (all pointer arithmetic below): row r < R of A is row i0 + r
        // < m, p < k, and B/C columns j0.. are read or written only under the
        // masks when fewer than 16 remain.
        unsafe {
            let (m0, m1) = masks(cols);
            let mut acc: [[__m256; 2]; R] = std::array::from_fn(|r| {
                let row = o.c.add((i0 + r) * o.ldc + j0);
                if add {
                    [_mm256_maskload_ps(row, m0), _mm256_maskload_ps(row.add(8), m1)]
                } else {
                    [_mm256_setzero_ps(); 2]
                }
            });
            // The k loop, with `$b` (B's 16 values of row `$row` at j0) and
            // the stores of the block given by the caller.
            macro_rules! sweep {
                ($row:ident => $b:expr; $out:ident, $acc:ident => $store:expr) => {{
                    for p in ks {
                        let $row = o.b.add(p * o.ldb + j0);
                        let (b0, b1) = $b;
                        for (r, acc_r) in acc.iter_mut().enumerate() {
                            let av = _mm256_broadcast_ss(&*a_at::<TA>(o, i0 + r, p));
                            acc_r[0] = _mm256_fmadd_ps(av, b0, acc_r[0]);
                            acc_r[1] = _mm256_fmadd_ps(av, b1, acc_r[1]);
                        }
                    }
                    for (r, $acc) in acc.iter().enumerate() {
                        let $out = o.c.add((i0 + r) * o.ldc + j0);
                        $store;
                    }
                }};
            }
            if cols == NR {
                sweep!(row => (_mm256_loadu_ps(row), _mm256_loadu_ps(row.add(8)));
                    out, v => { _mm256_storeu_ps(out, v[0]); _mm256_storeu_ps(out.add(8), v[1]) });
            } else {
                sweep!(row => (_mm256_maskload_ps(row, m0), _mm256_maskload_ps(row.add(8), m1));
                    out, v => { _mm256_maskstore_ps(out, m0, v[0]); _mm256_maskstore_ps(out.add(8), m1, v[1]) });
            }
        }
    }
}

/// Elsewhere the kernels never run (only the portable path is supported).
#[cfg(not(target_arch = "x86_64"))]
mod x86 {
    use super::Operands;
    use std::ops::Range;
    pub unsafe fn panel512<const R: usize, const V: usize, const TA: bool>(
        _: &Operands,
        _: usize,
        _: usize,
        _: Range<usize>,
        _: bool,
    ) {
        unreachable!("microgemm needs AVX-512")
    }
    pub unsafe fn panel<const TA: bool>(_: &Operands, _: usize, _: usize, _: Range<usize>, _: bool) {
        unreachable!("microgemm needs AVX2")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cpu::naive;
    use crate::rng::Rng;

    /// Shapes covering full and partial row blocks (m mod 6, m mod 8, …)
    /// and column blocks (n mod 16, n mod 32), and the cnn-s shapes.
    const SHAPES: [(usize, usize, usize); 10] = [
        (1, 1, 1),
        (6, 16, 4),
        (7, 17, 3),
        (64, 112, 32),
        (32, 112, 64),
        (5, 33, 9),
        (13, 8, 1),
        (15, 49, 5),
        (29, 81, 7),
        (9, 100, 17),
    ];

    fn random(rng: &mut Rng, len: usize) -> Vec<f32> {
        (0..len).map(|_| rng.uniform(-1.0, 1.0)).collect()
    }

    /// `c` on `path`, with guard values past the end that must survive:
    /// `gemm` over a C of NaNs (which it must not read), or `gemm_acc` onto
    /// `c0` when given.
    fn run(
        path: SimdPath,
        a: &[f32],
        b: &[f32],
        m: usize,
        n: usize,
        k: usize,
        c0: Option<&[f32]>,
    ) -> Vec<f32> {
        let mut got = vec![f32::NAN; m * n + 20];
        got[m * n..].fill(7.0);
        match c0 {
            Some(c0) => {
                got[..m * n].copy_from_slice(c0);
                gemm_acc(path, &mut got, a, b, m, n, k);
            }
            None => gemm(path, &mut got, a, b, m, n, k),
        }
        assert!(got[m * n..].iter().all(|&v| v == 7.0), "{path} {m}×{n}×{k}: wrote past C");
        got.truncate(m * n);
        got
    }

    /// Every supported path against the naive gemm (tolerance: the
    /// portable path is the packing sgemm, which sums in another order).
    #[test]
    fn every_path_matches_naive_gemm() {
        let mut rng = Rng::new(3);
        for path in SimdPath::ALL {
            if !path.supported() {
                eprintln!("microgemm: {path} not supported by this CPU, not run");
                continue;
            }
            eprintln!("microgemm: checking the {path} path against the naive gemm");
            for (m, n, k) in SHAPES {
                let (a, b) = (random(&mut rng, m * k), random(&mut rng, k * n));
                let c0 = random(&mut rng, m * n);
                for add in [false, true] {
                    let mut want = if add { c0.clone() } else { vec![0.0; m * n] };
                    let g = Gemm::nn(m, n, k);
                    naive::sgemm(&mut want, &a, &b, if add { g.acc() } else { g });
                    let got = run(path, &a, &b, m, n, k, add.then_some(&c0[..]));
                    for (i, (&g, &w)) in got.iter().zip(&want).enumerate() {
                        assert!(
                            (g - w).abs() <= 1e-5 * (k as f32).sqrt() * 4.0,
                            "{path} {m}×{n}×{k} (accumulate: {add}) at {i}: {g} vs {w}"
                        );
                    }
                }
            }
        }
    }

    /// The AVX-512 kernel gives the AVX2 kernel's bits (both are one FMA
    /// chain per element over k in order). Without AVX-512 this says so and
    /// checks the AVX2 kernel against the portable sgemm instead.
    #[test]
    fn avx512_is_bitwise_avx2() {
        let mut rng = Rng::new(4);
        let (path, reference) = if SimdPath::Avx512.supported() {
            eprintln!("microgemm: AVX-512 kernel against the AVX2 kernel, bitwise");
            (SimdPath::Avx512, SimdPath::Avx2)
        } else if SimdPath::Avx2.supported() {
            eprintln!(
                "microgemm: NO AVX-512 on this CPU; checking AVX2 against portable (tolerance) instead"
            );
            (SimdPath::Avx2, SimdPath::Portable)
        } else {
            eprintln!("microgemm: neither AVX-512 nor AVX2 on this CPU; nothing to compare");
            return;
        };
        for ((m, n, k), add) in SHAPES.into_iter().flat_map(|s| [(s, false), (s, true)]) {
            let (a, b) = (random(&mut rng, m * k), random(&mut rng, k * n));
            let c0 = random(&mut rng, m * n);
            let c0 = add.then_some(&c0[..]);
            let (got, want) = (run(path, &a, &b, m, n, k, c0), run(reference, &a, &b, m, n, k, c0));
            if reference == SimdPath::Portable {
                for (&g, &w) in got.iter().zip(&want) {
                    assert!((g - w).abs() <= 1e-5 * (k as f32).sqrt() * 4.0, "{m}×{n}×{k}: {g} vs {w}");
                }
            } else {
                let same = got.iter().zip(&want).all(|(g, w)| g.to_bits() == w.to_bits());
                assert!(same, "{path} and {reference} differ on {m}×{n}×{k}");
            }
        }
    }
}
