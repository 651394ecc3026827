//! Dense products on slices, through `matrixmultiply`'s SIMD sgemm.
//!
//! Two drivers over one block kernel: [`gemm_slices`] runs a whole product on
//! the calling thread (the convolutions call it once per image or tile block,
//! already in parallel over the batch), and [`gemm_parallel`] cuts one big
//! product, a linear layer's, into one block of C per rayon thread.
//! matrixmultiply's own threading stays off: its pool would fight rayon's for
//! the cores (on a 2-vCPU machine that was measured to be far slower). Each
//! element of C sees the same multiply-adds however C is cut, so the two
//! drivers agree to the bit (tested below).

use super::Gemm;
use rayon::prelude::*;

/// `C = alpha·op(A)·op(B) + beta·C` on slices; transposes are free stride swaps.
/// Runs on the calling thread (the convolutions call it once per image or
/// tile block, already in parallel); [`gemm_parallel`] splits one big product.
pub fn gemm_slices(c: &mut [f32], a: &[f32], b: &[f32], g: Gemm) {
    check_gemm(c, a, b, &g);
    // SAFETY: `check_gemm` guarantees every index of the full product is in
    // bounds, and `c` does not alias `a` or `b` (&mut vs &).
    unsafe { gemm_block(c.as_mut_ptr(), a.as_ptr(), b.as_ptr(), &g, 0..g.m, 0..g.n) }
}

/// Products of at least this many FLOPs are split over the threads by
/// [`gemm_parallel`] (a linear layer's 2·128·256·3136 is 200 MFLOP; below
/// ~10 MFLOP the fork costs more than the second core gives).
const PAR_GEMM_FLOPS: f64 = 1.6e7;

/// [`gemm_slices`] with C cut into one block of rows (or of columns) per
/// thread: the linear layers' products, which would otherwise run on one
/// core while the other waits. The longer of C's two sides is cut, so the
/// operand every block packs in full is the smaller one. Each element of C
/// sees the same sequence of multiply-adds as on one thread, so the result
/// is bit-identical to [`gemm_slices`].
pub fn gemm_parallel(c: &mut [f32], a: &[f32], b: &[f32], g: Gemm) {
    let threads = rayon::current_num_threads();
    if threads < 2 || g.flops() < PAR_GEMM_FLOPS {
        return gemm_slices(c, a, b, g);
    }
    check_gemm(c, a, b, &g);
    let cut_rows = g.m >= g.n;
    let len = if cut_rows { g.m } else { g.n };
    // Multiples of 16: whole micro-kernel tiles in every block but the last.
    let chunk = len.div_ceil(threads).next_multiple_of(16);
    let (c, a, b) =
        (SharedPtr(c.as_mut_ptr()), SharedPtr(a.as_ptr() as *mut f32), SharedPtr(b.as_ptr() as *mut f32));
    (0..len.div_ceil(chunk)).into_par_iter().for_each(|i| {
        let part = i * chunk..((i + 1) * chunk).min(len);
        let (rows, cols) = if cut_rows { (part, 0..g.n) } else { (0..g.m, part) };
        // SAFETY: as in `gemm_slices`; the blocks of C are disjoint, so no
        // two threads write the same element, and A and B are only read.
        unsafe { gemm_block(c.get(), a.get(), b.get(), &g, rows, cols) }
    });
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

/// Rows `rows` × columns `cols` of `C = alpha·op(A)·op(B) + beta·C`.
///
/// # Safety
/// `c`, `a`, `b` must hold the full product's extents (as [`check_gemm`]
/// asserts for slices), `c` must not alias `a` or `b`, and no other thread may
/// touch this block of `c` meanwhile.
unsafe fn gemm_block(
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
    use crate::rng::Rng;

    /// Cutting C over the threads changes no bit of the product, for every
    /// transpose pair, cut along rows and along columns, with three threads
    /// (uneven blocks) and accumulation into a non-zero C.
    #[test]
    fn parallel_gemm_is_bit_identical() {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(3).build().expect("thread pool");
        let mut rng = Rng::new(11);
        for (m, n, k) in [(300, 70, 400), (70, 300, 400)] {
            for (ta, tb) in [(false, false), (true, false), (false, true), (true, true)] {
                let g = Gemm { m, n, k, trans_a: ta, trans_b: tb, alpha: 0.5, beta: 1.0 };
                assert!(g.flops() >= PAR_GEMM_FLOPS, "{g:?} would not be cut");
                let a: Vec<f32> = (0..m * k).map(|_| rng.uniform(-1.0, 1.0)).collect();
                let b: Vec<f32> = (0..k * n).map(|_| rng.uniform(-1.0, 1.0)).collect();
                let c0: Vec<f32> = (0..m * n).map(|_| rng.uniform(-1.0, 1.0)).collect();
                let mut one = c0.clone();
                gemm_slices(&mut one, &a, &b, g);
                let mut cut = c0.clone();
                pool.install(|| gemm_parallel(&mut cut, &a, &b, g));
                let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                assert!(bits(&one) == bits(&cut), "{g:?}: the cut product differs");
            }
        }
    }
}
