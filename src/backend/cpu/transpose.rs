//! Matrix transpose, for the Winograd weight gradient: its gemm reads the
//! transformed input `V_ξ` (`channels × tiles`) as a row-major `tiles ×
//! channels` operand, so each ξ plane is transposed once per block.
//!
//! Element by element, the transpose cost a quarter of that pass (a profile
//! of `conv2d/conv2_bwd_weight`); on AVX-512 each 16 × 16 block is sixteen
//! row loads, four rounds of `vpermt2ps` in registers and sixteen column
//! stores. A transpose only moves values, so every path gives the same bits.
//!
//! Tried and dropped in the same way: AVX-512 versions (masked loads,
//! `vpermt2ps`, masked stores) of the other short strided moves — the
//! parity-phase split, the output interleave and 2×2 pooling of 7–16-value
//! rows. Each was slower or no faster than the scalar code in paired runs
//! of `lwf-engine bench` on a Zen 5 EPYC (pooling rows −4 %, the phase
//! split −7 % on the plain epoch), so those rows stay scalar.

use super::simd::SimdPath;
use rayon::prelude::*;

/// `dst` (`cols × rows`) = `src` (`rows × cols`) transposed, on `path`
/// (the AVX-512 kernel when `path` is AVX-512 and the CPU has it, otherwise
/// a blocked scalar loop).
pub fn transpose(path: SimdPath, dst: &mut [f32], src: &[f32], rows: usize, cols: usize) {
    columns(path, &mut dst[..rows * cols], &src[..rows * cols], rows, cols, 0);
}

/// [`transpose`] over the rayon threads, each taking a band of `src`'s
/// columns (`dst`'s rows): for a big matrix (a linear layer's weight,
/// 3 MB), which one core would transpose while the others wait.
pub fn transpose_parallel(path: SimdPath, dst: &mut [f32], src: &[f32], rows: usize, cols: usize) {
    // Bands of whole 16-column blocks, about 64 KiB of `src` each.
    let band = ((16 << 10) / rows.max(1)).next_multiple_of(16).max(16);
    let src = &src[..rows * cols];
    dst[..rows * cols].par_chunks_mut(band * rows).enumerate().for_each(|(i, d)| {
        columns(path, d, src, rows, cols, i * band);
    });
}

/// Rows `c0..c0 + dst.len() / rows` of the transpose (columns of `src`).
fn columns(path: SimdPath, dst: &mut [f32], src: &[f32], rows: usize, cols: usize, c0: usize) {
    let width = dst.len() / rows.max(1);
    #[cfg(target_arch = "x86_64")]
    if path == SimdPath::Avx512 && path.supported() {
        // SAFETY: AVX-512 was just checked; `src` holds rows · cols values
        // and `dst` the `width` rows of `rows` values starting at column c0.
        return unsafe { x86::transpose(dst, src, rows, cols, c0..c0 + width) };
    }
    let _ = path;
    const B: usize = 16;
    for r0 in (0..rows).step_by(B) {
        for cb in (0..width).step_by(B) {
            for r in r0..(r0 + B).min(rows) {
                for c in cb..(cb + B).min(width) {
                    dst[c * rows + r] = src[r * cols + c0 + c];
                }
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    /// The first `n` of 16 lanes.
    fn mask(n: usize) -> __mmask16 {
        if n >= 16 {
            0xffff
        } else {
            ((1u32 << n) - 1) as __mmask16
        }
    }

    /// `vpermt2ps` indices of one round at distance `d` (8, 4, 2, 1): rows
    /// `i` and `i + d` of each group of `2d` rows trade blocks — the upper
    /// row keeps the left `d` lanes of every `2d` and takes the lower row's
    /// left ones into its right; the lower row gets the upper row's right
    /// ones into its left and keeps its right. After the four rounds row `i`
    /// holds column `i` (the recursive block transpose, every level at once).
    fn round(d: usize) -> ([i32; 16], [i32; 16]) {
        let upper = std::array::from_fn(|l| if l & d == 0 { l as i32 } else { (16 + l - d) as i32 });
        let lower = std::array::from_fn(|l| if l & d == 0 { (l + d) as i32 } else { (16 + l) as i32 });
        (upper, lower)
    }

    /// Columns `band` of `src` (`rows × cols`) into the rows of `dst`.
    ///
    /// # Safety
    /// AVX-512 F; `src` holds `rows · cols` values, `dst` `band.len() · rows`,
    /// `band` lies within `0..cols`.
    #[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx2,fma")]
    pub unsafe fn transpose(
        dst: &mut [f32],
        src: &[f32],
        rows: usize,
        cols: usize,
        band: std::ops::Range<usize>,
    ) {
        // SAFETY: block (r0, c0) reads rows r0.. of `src` under the mask of
        // the columns left and writes rows c0.. of `dst` under the mask of
        // the rows left, so only the slices' own elements are touched;
        // pointers are formed with `wrapping_add`.
        unsafe {
            let rounds: [(__m512i, __m512i); 4] = std::array::from_fn(|i| {
                let (u, l) = round(8 >> i);
                (_mm512_loadu_si512(u.as_ptr().cast()), _mm512_loadu_si512(l.as_ptr().cast()))
            });
            for r0 in (0..rows).step_by(16) {
                let (nr, mr) = ((rows - r0).min(16), mask(rows - r0));
                for c0 in band.clone().step_by(16) {
                    let (nc, mc) = ((band.end - c0).min(16), mask(band.end - c0));
                    // Whole blocks (all but the edges) load and store without
                    // masks: masked stores measured slow on Zen 5.
                    let whole = nr == 16 && nc == 16;
                    let mut v: [__m512; 16] = std::array::from_fn(|r| {
                        let at = src.as_ptr().wrapping_add((r0 + r) * cols + c0);
                        if whole {
                            _mm512_loadu_ps(at)
                        } else if r < nr {
                            _mm512_maskz_loadu_ps(mc, at)
                        } else {
                            _mm512_setzero_ps()
                        }
                    });
                    for (i, &(iu, il)) in rounds.iter().enumerate() {
                        let d = 8 >> i;
                        for top in (0..16).filter(|r| r & d == 0) {
                            let (a, b) = (v[top], v[top + d]);
                            v[top] = _mm512_permutex2var_ps(a, iu, b);
                            v[top + d] = _mm512_permutex2var_ps(a, il, b);
                        }
                    }
                    for (c, col) in v.iter().enumerate().take(nc) {
                        let at = dst.as_mut_ptr().wrapping_add((c0 - band.start + c) * rows + r0);
                        if whole {
                            _mm512_storeu_ps(at, *col);
                        } else {
                            _mm512_mask_storeu_ps(at, mr, *col);
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    /// Every supported path against the definition, bitwise, on whole and
    /// partial 16 × 16 blocks on both sides and the Winograd gradient's
    /// 32 × 112, writing nothing past `dst`'s `rows · cols` values.
    #[test]
    fn every_path_transposes() {
        let mut rng = Rng::new(21);
        for path in SimdPath::ALL {
            if !path.supported() {
                eprintln!("transpose: {path} not supported by this CPU, not run");
                continue;
            }
            eprintln!("transpose: checking the {path} path");
            for (rows, cols) in
                [(1, 1), (16, 16), (3, 40), (40, 3), (17, 33), (32, 112), (64, 5), (5, 3000), (300, 301)]
            {
                let src: Vec<f32> = (0..rows * cols).map(|_| rng.uniform(-1.0, 1.0)).collect();
                let mut dst = vec![f32::NAN; rows * cols + 3];
                dst[rows * cols..].fill(7.0);
                transpose(path, &mut dst, &src, rows, cols);
                let mut par = vec![f32::NAN; rows * cols];
                transpose_parallel(path, &mut par, &src, rows, cols);
                assert!(
                    dst[..rows * cols] == par[..],
                    "{path} {rows}×{cols}: the parallel transpose differs"
                );
                for (r, c) in (0..rows).flat_map(|r| (0..cols).map(move |c| (r, c))) {
                    let (got, want) = (dst[c * rows + r], src[r * cols + c]);
                    assert!(
                        got.to_bits() == want.to_bits(),
                        "{path} {rows}×{cols} at ({r}, {c}): {got} vs {want}"
                    );
                }
                assert!(dst[rows * cols..].iter().all(|&v| v == 7.0), "{path} {rows}×{cols}: wrote past dst");
            }
        }
    }
}
