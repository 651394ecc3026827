//! Dense products on slices.
//!
//! Two drivers: [`gemm_slices`] runs a whole product on the calling thread
//! through `matrixmultiply`'s packing sgemm (the im2col convolutions call it
//! once per image, already in parallel over the batch; the portable path's
//! micro-gemm is this too), and [`gemm_parallel`] cuts one big product, a
//! linear layer's, into one block of C per rayon thread. On the AVX-512
//! path its blocks run our cache-blocked micro-gemm
//! ([`microgemm::product`]), which reads A in place (transposed or not)
//! and B without packing; a transposed B (the forward pass's `x · Wᵀ`) is
//! transposed once per call first. matrixmultiply's own threading stays
//! off: its pool would fight rayon's for the cores (on a 2-vCPU machine that
//! was measured to be far slower). Each element of C sees the same
//! multiply-adds however C is cut, so the result does not depend on the
//! number of threads (tested below).

use super::kernel_switch::{self, Kernel};
use super::microgemm::{self, Operands};
use super::simd::{self, SimdPath};
use super::{transpose, Gemm};
use rayon::prelude::*;
use std::cell::RefCell;

/// `C = alpha·op(A)·op(B) + beta·C` on slices; transposes are free stride swaps.
/// Runs on the calling thread (the convolutions call it once per image or
/// tile block, already in parallel); [`gemm_parallel`] splits one big product.
pub fn gemm_slices(c: &mut [f32], a: &[f32], b: &[f32], g: Gemm) {
    check_gemm(c, a, b, &g);
    // SAFETY: `check_gemm` guarantees every index of the full product is in
    // bounds, and `c` does not alias `a` or `b` (&mut vs &).
    unsafe { gemm_block(None, c.as_mut_ptr(), a.as_ptr(), b.as_ptr(), &g, 0..g.m, 0..g.n) }
}

/// Products of at least this many FLOPs are split over the threads by
/// [`gemm_parallel`] (a linear layer's 2·128·256·3136 is 200 MFLOP; below
/// ~10 MFLOP the fork costs more than the second core gives).
const PAR_GEMM_FLOPS: f64 = 1.6e7;

thread_local! {
    /// Transposed operands of `gemm_parallel` on a SIMD path (B, or A and
    /// the product), on the calling thread.
    static SCRATCH: RefCell<(Vec<f32>, Vec<f32>)> = const { RefCell::new((Vec::new(), Vec::new())) };
}

/// `C = alpha·op(A)·op(B) + beta·C` with C cut into one block of rows (or
/// of columns) per thread: the linear layers' products, which would
/// otherwise run on one core while the other waits. The longer of C's two
/// sides is cut. On the AVX-512 path (for `alpha = 1`, `beta` 0 or 1: every
/// product of the engine) the blocks run [`microgemm::product`],
/// elsewhere [`gemm_slices`]'s sgemm. Each element of C sees the same
/// sequence of multiply-adds whatever the cut, so the result does not
/// depend on the number of threads.
pub fn gemm_parallel(c: &mut [f32], a: &[f32], b: &[f32], g: Gemm) {
    check_gemm(c, a, b, &g);
    let path = simd::active();
    // AVX-512 only: on the AVX2 path (forced on a Zen 5) our 6×16 kernel and
    // the scalar transposes made every phase 7 % slower than the sgemm.
    let ours = path == SimdPath::Avx512
        && g.alpha == 1.0
        && (g.beta == 0.0 || g.beta == 1.0)
        && kernel_switch::on(Kernel::LinearMicroGemm);
    if !ours && (rayon::current_num_threads() < 2 || g.flops() < PAR_GEMM_FLOPS) {
        return gemm_slices(c, a, b, g);
    }
    if ours && g.trans_b {
        // The kernel reads B row-major, so something is transposed first:
        // B (n·k values), or — overwriting, A not transposed — A and the
        // product, `Cᵀ = B · Aᵀ` (m·k + m·n values), whichever moves less
        // (the forward pass of a linear layer, `x · Wᵀ`, transposes the
        // batch of inputs rather than the larger weight).
        return SCRATCH.with(|scratch| {
            let (t1, t2) = &mut *scratch.borrow_mut();
            if !g.trans_a && g.beta == 0.0 && g.m * (g.k + g.n) < g.n * g.k {
                t1.resize(g.k * g.m, 0.0);
                t2.resize(g.n * g.m, 0.0);
                transpose::transpose_parallel(path, t1, a, g.m, g.k);
                cut(t2, b, t1, Gemm::nn(g.n, g.m, g.k), Some(path));
                transpose::transpose_parallel(path, c, t2, g.n, g.m);
            } else {
                t1.resize(g.k * g.n, 0.0);
                transpose::transpose_parallel(path, t1, b, g.n, g.k);
                cut(c, a, t1, Gemm { trans_b: false, ..g }, Some(path));
            }
        });
    }
    cut(c, a, b, g, ours.then_some(path));
}

/// Runs `g` in blocks of C, over the threads when it is big enough, on
/// our micro-gemm (`Some(path)`) or the sgemm.
fn cut(c: &mut [f32], a: &[f32], b: &[f32], g: Gemm, path: Option<SimdPath>) {
    let threads = if g.flops() < PAR_GEMM_FLOPS { 1 } else { rayon::current_num_threads() };
    let cut_rows = g.m >= g.n;
    let len = if cut_rows { g.m } else { g.n };
    // Multiples of 32: whole micro-kernel tiles in every block but the last.
    let chunk = len.div_ceil(threads).next_multiple_of(32).max(1);
    let (c, a, b) =
        (SharedPtr(c.as_mut_ptr()), SharedPtr(a.as_ptr() as *mut f32), SharedPtr(b.as_ptr() as *mut f32));
    let block = |i: usize| {
        let part = i * chunk..((i + 1) * chunk).min(len);
        let (rows, cols) = if cut_rows { (part, 0..g.n) } else { (0..g.m, part) };
        // SAFETY: `check_gemm` (in the caller) bounds the full product; the
        // blocks of C are disjoint, so no two threads write the same
        // element, and A and B are only read.
        unsafe { gemm_block(path, c.get(), a.get(), b.get(), &g, rows, cols) }
    };
    let blocks = len.div_ceil(chunk);
    if blocks > 1 {
        (0..blocks).into_par_iter().for_each(block);
    } else {
        (0..blocks).for_each(block);
    }
}

/// A pointer shared by the threads of [`gemm_parallel`], each of which
/// touches a disjoint part of what it points to.
#[derive(Clone, Copy)]
struct SharedPtr(*mut f32);
// SAFETY: only used where the writers' ranges are disjoint (see above).
unsafe impl Send for SharedPtr {}
unsafe impl Sync for SharedPtr {}

impl SharedPtr {
    // A method, so closures capture the whole (Sync) wrapper, not its field.
    fn get(self) -> *mut f32 {
        self.0
    }
}

fn check_gemm(c: &[f32], a: &[f32], b: &[f32], g: &Gemm) {
    let Gemm { m, n, k, .. } = *g;
    assert!(a.len() >= m * k, "sgemm: A has {} elements, needs {m}×{k}", a.len());
    assert!(b.len() >= k * n, "sgemm: B has {} elements, needs {k}×{n}", b.len());
    assert!(c.len() >= m * n, "sgemm: C has {} elements, needs {m}×{n}", c.len());
}

/// Rows `rows` × columns `cols` of `C = alpha·op(A)·op(B) + beta·C`, on
/// our micro-gemm (`Some(path)`: alpha 1, beta 0 or 1, B not transposed) or
/// on matrixmultiply's sgemm (`None`).
///
/// # Safety
/// `c`, `a`, `b` must hold the full product's extents (as [`check_gemm`]
/// asserts for slices), `c` must not alias `a` or `b`, and no other thread may
/// touch this block of `c` meanwhile.
unsafe fn gemm_block(
    path: Option<SimdPath>,
    c: *mut f32,
    a: *const f32,
    b: *const f32,
    g: &Gemm,
    rows: std::ops::Range<usize>,
    cols: std::ops::Range<usize>,
) {
    let Gemm { m, n, k, trans_a, trans_b, alpha, beta } = *g;
    if rows.is_empty() || cols.is_empty() {
        return;
    }
    if let Some(path) = path {
        debug_assert!(!trans_b && alpha == 1.0 && (beta == 0.0 || beta == 1.0));
        let ops = Operands {
            // A is logically [m, k]; stored [k, m] when transposed.
            a: if trans_a { a.wrapping_add(rows.start) } else { a.wrapping_add(rows.start * k) },
            lda: if trans_a { m } else { k },
            trans_a,
            b: b.wrapping_add(cols.start),
            ldb: n,
            c: c.wrapping_add(rows.start * n + cols.start),
            ldc: n,
        };
        // SAFETY: the caller's contract; the offsets stay inside the full product.
        return unsafe { microgemm::product(path, ops, rows.len(), cols.len(), k, beta == 1.0) };
    }
    // A is logically [m, k]; stored [k, m] when transposed.
    let (rsa, csa) = if trans_a { (1, m) } else { (k, 1) };
    let (rsb, csb) = if trans_b { (1, k) } else { (n, 1) };
    // SAFETY: the caller's contract; the offsets stay inside the full product.
    unsafe {
        matrixmultiply::sgemm(
            rows.len(),
            k,
            cols.len(),
            alpha,
            a.add(rows.start * rsa),
            rsa as isize,
            csa as isize,
            b.add(cols.start * csb),
            rsb as isize,
            csb as isize,
            beta,
            c.add(rows.start * n + cols.start),
            n as isize,
            1,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cpu::naive;
    use crate::rng::Rng;

    /// Cutting C over the threads changes no bit of the product, for every
    /// transpose pair, cut along rows and along columns, with three threads
    /// (uneven blocks) against one, accumulating into a non-zero C and not,
    /// on the sgemm (alpha 0.5) and on the micro-gemm of the active path
    /// (alpha 1) — which is also checked against the naive product.
    #[test]
    fn parallel_gemm_is_bit_identical_and_right() {
        let three = rayon::ThreadPoolBuilder::new().num_threads(3).build().expect("thread pool");
        let one = rayon::ThreadPoolBuilder::new().num_threads(1).build().expect("thread pool");
        eprintln!("gemm_parallel: SIMD path {}", simd::active());
        let mut rng = Rng::new(11);
        for (m, n, k) in [(300, 70, 400), (70, 300, 400), (130, 300, 270)] {
            for (ta, tb) in [(false, false), (true, false), (false, true), (true, true)] {
                for (alpha, beta) in [(0.5, 1.0), (1.0, 1.0), (1.0, 0.0)] {
                    let g = Gemm { m, n, k, trans_a: ta, trans_b: tb, alpha, beta };
                    assert!(g.flops() >= PAR_GEMM_FLOPS, "{g:?} would not be cut");
                    let a: Vec<f32> = (0..m * k).map(|_| rng.uniform(-1.0, 1.0)).collect();
                    let b: Vec<f32> = (0..k * n).map(|_| rng.uniform(-1.0, 1.0)).collect();
                    let c0: Vec<f32> = (0..m * n).map(|_| rng.uniform(-1.0, 1.0)).collect();
                    let run = |pool: &rayon::ThreadPool| {
                        let mut c = c0.clone();
                        pool.install(|| gemm_parallel(&mut c, &a, &b, g));
                        c
                    };
                    let (single, cut) = (run(&one), run(&three));
                    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                    assert!(bits(&single) == bits(&cut), "{g:?}: the cut product differs");
                    let mut want = c0.clone();
                    naive::sgemm(&mut want, &a, &b, g);
                    for (i, (&got, &w)) in cut.iter().zip(&want).enumerate() {
                        assert!((got - w).abs() <= 1e-4 * (k as f32).sqrt(), "{g:?} at {i}: {got} vs {w}");
                    }
                }
            }
        }
    }
}
