//! Winograd F(2×2, 3×3) for the 3×3, stride-1, pad-1 convolutions of the
//! trunk (Lavin & Gray 2016): each 2×2 output tile costs 16 multiplications
//! per (input, output) channel pair instead of 36, so the three gemm-bound
//! passes of such a layer do 2.25× fewer multiply-adds than im2col.
//!
//! With `g` a 3×3 kernel, `d` a 4×4 input tile and `B`, `G`, `A` the
//! F(2×2,3×3) matrices below, the 2×2 output is `Aᵀ[(G g Gᵀ) ⊙ (Bᵀ d B)]A`.
//! Over all channels and tiles that is one gemm per transform position
//! `ξ ∈ 0..16`: `M_ξ[k, t] = Σ_c U_ξ[k, c] · V_ξ[c, t]`.
//!
//! - forward: `U = G g Gᵀ`, `V = Bᵀ x B`, gemm, `y = Aᵀ M A`;
//! - backward-data: the same convolution of `dy` with the kernel rotated by
//!   180° and its channel axes swapped (pad 1 keeps it "same"), added into `dx`;
//! - backward-weight: `dM = A dy Aᵀ`, `dU_ξ = Σ_t dM_ξ[k, t] · V_ξ[c, t]`
//!   (a gemm over tiles), then `dg = Gᵀ dU G`.
//!
//! Images are processed in blocks of a few (≈128 tiles) so a block's
//! transformed tiles stay in L2 between the transform, the 16 gemms and the
//! inverse transform. Everything is in f32; the transforms only add, subtract
//! and halve, so rounding stays at the level of the direct convolution
//! (tests/engine.rs compares against the naive f64 reference).

use super::kernel_switch::{self, Kernel};
use super::simd::{self, SimdPath};
use super::{batch_partials, gemm_slices, microgemm, transpose, Conv2dParams, Gemm};
use rayon::iter::Either;
use rayon::prelude::*;
use std::cell::RefCell;
use std::sync::Mutex;

/// Transform positions per tile (4 × 4).
const XI: usize = 16;
/// Tiles per block: enough columns for an efficient gemm, few enough that a
/// block's V and M stay in L2.
const BLOCK_TILES: usize = 128;
/// Below this many input channels (the 1-channel first layer) im2col wins:
/// the gemm's reduction would be too short to amortise the transforms.
const MIN_CHANNELS: usize = 4;

/// Whether the Winograd path computes this convolution.
pub fn applies(p: &Conv2dParams) -> bool {
    p.kh == 3
        && p.kw == 3
        && p.sh == 1
        && p.sw == 1
        && p.ph == 1
        && p.pw == 1
        && p.c >= MIN_CHANNELS
        && p.h.min(p.w) >= min_side()
}

/// Maps narrower than this (in either direction) go to im2col instead:
/// a 2×2 map is one tile whose 4×4 input is mostly padding, and its
/// kernels' transform is as costly as on a large map. `LWF_WINOGRAD_MIN_SIDE`
/// overrides the default, for benchmarking the two paths on whole runs.
fn min_side() -> usize {
    static SIDE: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *SIDE.get_or_init(|| {
        std::env::var("LWF_WINOGRAD_MIN_SIDE").ok().and_then(|v| v.parse().ok()).unwrap_or(MIN_SIDE)
    })
}

/// The default of [`min_side`].
const MIN_SIDE: usize = 3;

/// Images per block for planes of `h × w`.
fn block_images(t: Tiling) -> usize {
    (BLOCK_TILES / t.slots()).max(1)
}

#[derive(Default)]
struct Scratch {
    /// Transformed input tiles `[ξ][channel][tile]`.
    v: Vec<f32>,
    /// Gemm results / transformed output gradients `[ξ][channel][tile]`.
    m: Vec<f32>,
    /// The four parity phases of one zero-padded plane.
    plane: Vec<f32>,
    /// Intermediate rows of a transform.
    rows: Vec<f32>,
    /// One ξ plane of `v` transposed to `[slot][channel]` (the weight
    /// gradient's gemm reads it as its row-major B).
    vt: Vec<f32>,
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch::default());
    /// Transformed kernels `[ξ][out][in]`, built on the calling thread.
    static KERNELS: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

fn grow(v: &mut Vec<f32>, len: usize) -> &mut [f32] {
    if v.len() < len {
        v.resize(len, 0.0);
    }
    &mut v[..len]
}

// ---- kernel transforms -----------------------------------------------------------------

/// `G g Gᵀ` of one 3×3 kernel (row-major) into 16 values, `G = [1 0 0;
/// ½ ½ ½; ½ −½ ½; 0 0 1]`.
fn kernel_fwd(g: &[f32], rotate: bool) -> [f32; XI] {
    let at = |i: usize, j: usize| if rotate { g[(2 - i) * 3 + (2 - j)] } else { g[i * 3 + j] };
    // rows: (G g) is 4×3
    let g_times = |a: f32, b: f32, c: f32| [a, 0.5 * (a + b + c), 0.5 * (a - b + c), c];
    // G·g, column by column: r[j] is column j (4 values).
    let r: [[f32; 4]; 3] = std::array::from_fn(|j| g_times(at(0, j), at(1, j), at(2, j)));
    // (G·g)·Gᵀ, row by row.
    let mut u = [0.0f32; XI];
    for (i, row) in u.chunks_exact_mut(4).enumerate() {
        row.copy_from_slice(&g_times(r[0][i], r[1][i], r[2][i]));
    }
    u
}

/// `Gᵀ dU G`: the gradient of the 3×3 kernel from that of its transform.
fn kernel_bwd(du: &[f32; XI]) -> [f32; 9] {
    // Gᵀ = [1 ½ ½ 0; 0 ½ −½ 0; 0 ½ ½ 1]
    let gt_times = |a: f32, b: f32, c: f32, d: f32| [a + 0.5 * (b + c), 0.5 * (b - c), 0.5 * (b + c) + d];
    // Gᵀ·dU, column by column: r[j] is column j (3 values).
    let r: [[f32; 3]; 4] = std::array::from_fn(|j| gt_times(du[j], du[4 + j], du[8 + j], du[12 + j]));
    // (Gᵀ·dU)·G, row by row.
    let mut g = [0.0f32; 9];
    for (i, row) in g.chunks_exact_mut(3).enumerate() {
        row.copy_from_slice(&gt_times(r[0][i], r[1][i], r[2][i], r[3][i]));
    }
    g
}

/// Transformed kernels `[ξ][out][in]` for a convolution from `ic` to `oc`
/// channels. `w` is `(OC, C, 3, 3)` of the layer; `swap` builds the
/// backward-data kernels (out = the layer's input channels, rotated 180°).
fn transform_kernels(u: &mut [f32], w: &[f32], layer_oc: usize, layer_c: usize, swap: bool) {
    let (out, inp) = if swap { (layer_c, layer_oc) } else { (layer_oc, layer_c) };
    assert!(u.len() >= XI * out * inp && w.len() >= layer_oc * layer_c * 9);
    let u_ptr = KernelPtr(u.as_mut_ptr());
    // One task per layer output channel `k`: it writes the elements whose
    // (o, i) has its `k` (o = k forward, i = k backward-data), disjoint
    // from every other task's. The late ResNet layers (512 × 512 kernels)
    // made this serial loop a quarter of a step's samples.
    let one = |k: usize| {
        for c in 0..layer_c {
            let t = kernel_fwd(&w[(k * layer_c + c) * 9..][..9], swap);
            let (o, i) = if swap { (c, k) } else { (k, c) };
            for (xi, v) in t.iter().enumerate() {
                // SAFETY: in bounds by the assert above; no other task
                // writes this (o, i) (see above), and `u` outlives the loop.
                unsafe { *u_ptr.get().add((xi * out + o) * inp + i) = *v };
            }
        }
    };
    if layer_oc * layer_c >= 4096 {
        (0..layer_oc).into_par_iter().for_each(one);
    } else {
        (0..layer_oc).for_each(one);
    }
}

/// `u`'s pointer, shared by the tasks of [`transform_kernels`].
#[derive(Clone, Copy)]
struct KernelPtr(*mut f32);
// SAFETY: each task writes a disjoint set of elements (transform_kernels).
unsafe impl Send for KernelPtr {}
unsafe impl Sync for KernelPtr {}
impl KernelPtr {
    // A method, so closures capture the whole (Sync) wrapper.
    fn get(self) -> *mut f32 {
        self.0
    }
}

// ---- tile transforms --------------------------------------------------------------------
//
// Tiles are numbered in *slots*: a plane has `rows × cols` slots, `cols` one
// more than the tiles of a row. With the padded plane split into its four
// (row, column) parity phases, each stored `cols` wide, the 4×4 input tiles
// of all slots at tile offset (a, b) form one contiguous, shifted slice of a
// phase. So every transform is a handful of whole-plane vector operations,
// with no stride-2 gathers and no per-tile loop. The last slot of each row is
// a spare: its input is junk, its output is never stored, and its output
// gradient is zero, so it adds nothing to the weight gradient. Transformed
// values are stored `[ξ][channel][slot]`.

/// Slot geometry of one `h × w` plane.
#[derive(Clone, Copy, Debug)]
struct Tiling {
    h: usize,
    w: usize,
    rows: usize,
    cols: usize,
}

impl Tiling {
    fn new(h: usize, w: usize) -> Self {
        Tiling { h, w, rows: h.div_ceil(2), cols: w.div_ceil(2) + 1 }
    }
    fn slots(&self) -> usize {
        self.rows * self.cols
    }
    /// Length of one parity phase: two spare rows cover the shifted slices.
    fn phase_len(&self) -> usize {
        (self.rows + 2) * self.cols
    }
}

/// Distance between two ξ planes of a scratch holding `channels × slots`
/// values per plane. The skew keeps the 16 planes off the same cache sets:
/// without it the planes are a multiple of 4 KiB apart for the usual channel
/// counts, and the 16 streams of a transform evict each other from L1.
fn plane_stride(channels: usize, slots: usize) -> usize {
    channels * slots + 16
}

/// Where one image's transformed tiles sit in a block's `[ξ][channel][slot]`
/// scratch: ξ planes `stride` apart, `slots` per channel row, this image's
/// first slot `slot0`.
#[derive(Clone, Copy, Debug)]
struct Place {
    stride: usize,
    slots: usize,
    slot0: usize,
}

impl Place {
    fn at(&self, xi: usize, channel: usize) -> usize {
        xi * self.stride + channel * self.slots + self.slot0
    }
}

/// `dst = a + b` (`sign` > 0) or `a − b`, elementwise.
#[inline(always)]
fn combine(dst: &mut [f32], a: &[f32], b: &[f32], sign: f32) {
    if sign > 0.0 {
        dst.iter_mut().zip(a).zip(b).for_each(|((d, &x), &y)| *d = x + y);
    } else {
        dst.iter_mut().zip(a).zip(b).for_each(|((d, &x), &y)| *d = x - y);
    }
}

/// `Bᵀ` (and `B` from the other side) as `(p, q, sign)`: row `i` of `Bᵀ·d` is
/// `d[p] + sign·d[q]`. `Bᵀ = [1 0 −1 0; 0 1 1 0; 0 −1 1 0; 0 1 0 −1]`.
const BT: [(usize, usize, f32); 4] = [(0, 2, -1.0), (1, 2, 1.0), (2, 1, -1.0), (1, 3, -1.0)];

/// Splits plane rows into parity phases: element `(y, x)` of the source goes
/// to phase `((y + dy) & 1, (x + dx) & 1)`, position `((y + dy) / 2, (x + dx) / 2)`,
/// each phase `t.cols` wide and `phase_len` long. Positions the plane does not
/// reach are left as they are (the caller zeroes them once).
#[inline(always)]
fn split_phases(phases: &mut [f32], src: &[f32], t: Tiling, shift: usize) {
    let pl = t.phase_len();
    let (p00, rest) = phases.split_at_mut(pl);
    let (p01, rest) = rest.split_at_mut(pl);
    let (p10, p11) = rest.split_at_mut(pl);
    for (y, row) in src.chunks_exact(t.w).enumerate() {
        let r = y + shift;
        let (even_col, odd_col) = if r & 1 == 0 { (&mut *p00, &mut *p01) } else { (&mut *p10, &mut *p11) };
        let at = (r >> 1) * t.cols;
        // column x + shift: with shift 1, even x lands in the odd phase at x/2
        // and odd x in the even phase at x/2 + 1; with shift 0 the other way.
        let (first, second) = if shift == 1 {
            (&mut odd_col[at..at + t.cols], &mut even_col[at + 1..at + t.cols])
        } else {
            (&mut even_col[at..at + t.cols], &mut odd_col[at..at + t.cols])
        };
        // Plain indexed loops over pre-cut slices: LLVM turns these stride-2
        // accesses into vector shuffles (iterator chains over pairs stay scalar).
        let n = t.w / 2;
        let (pairs, f, sc) = (&row[..2 * n], &mut first[..n], &mut second[..n]);
        for j in 0..n {
            f[j] = pairs[2 * j];
            sc[j] = pairs[2 * j + 1];
        }
        if t.w % 2 == 1 {
            first[t.w / 2] = row[t.w - 1];
        }
    }
}

/// `Bᵀ d B` for every tile of one image (`channels` planes) into
/// `v[ξ][c][slot0..]`, ξ planes `stride` apart.
#[inline(always)]
fn input_transform(v: &mut [f32], place: Place, x_img: &[f32], channels: usize, t: Tiling, s: &mut Scratch) {
    let (pl, len) = (t.phase_len(), t.slots());
    let phases = grow(&mut s.plane, 4 * pl);
    phases.fill(0.0);
    let rows = grow(&mut s.rows, 4 * len);
    for (c, xc) in x_img.chunks_exact(t.h * t.w).take(channels).enumerate() {
        split_phases(phases, xc, t, 1);
        // Input tile element (a, b) of every slot: a shifted slice of a phase.
        let tap = |a: usize, b: usize| -> &[f32] {
            let ph = &phases[((a & 1) * 2 + (b & 1)) * pl..][..pl];
            &ph[(a >> 1) * t.cols + (b >> 1)..][..len]
        };
        for (i, &(p, q, sign)) in BT.iter().enumerate() {
            // Bᵀ down the tile: row i of Bᵀ·d, for each tile column b.
            for b in 0..4 {
                combine(&mut rows[b * len..(b + 1) * len], tap(p, b), tap(q, b), sign);
            }
            // B along the tile: the four values of row i of Bᵀ·d·B.
            for (j, &(pj, qj, sj)) in BT.iter().enumerate() {
                let dst = &mut v[place.at(i * 4 + j, c)..][..len];
                combine(dst, &rows[pj * len..(pj + 1) * len], &rows[qj * len..(qj + 1) * len], sj);
            }
        }
    }
}

/// Where the output transform writes, and how.
enum Out<'a> {
    /// Overwrite the output planes, plus a per-channel bias if given (the
    /// forward pass).
    Set(&'a mut [f32], Option<&'a [f32]>),
    /// Accumulate into the planes (backward-data: `dx +=`).
    Add(&'a mut [f32]),
    /// Forward with bias, then 2×2 / stride-2 max pooling into the pooled
    /// planes and their argmax: each 2×2 output tile is exactly one pooling
    /// window, so windows are pooled straight from the transform and the
    /// convolution's output is never written.
    Pool(&'a mut [f32], &'a mut [u32], &'a [f32]),
}

impl Out<'_> {
    /// Values per image at this destination (`oc` channels of `t`).
    fn image_len(&self, oc: usize, t: Tiling) -> usize {
        match self {
            Out::Pool(..) => oc * (t.h / 2) * (t.w / 2),
            Out::Set(..) | Out::Add(..) => oc * t.h * t.w,
        }
    }

    /// Image `i` of a destination whose images take `len` values each.
    fn image(&mut self, i: usize, len: usize) -> Out<'_> {
        match self {
            Out::Set(y, bias) => Out::Set(&mut y[i * len..][..len], *bias),
            Out::Add(y) => Out::Add(&mut y[i * len..][..len]),
            Out::Pool(y, a, bias) => Out::Pool(&mut y[i * len..][..len], &mut a[i * len..][..len], bias),
        }
    }
}

/// `Aᵀ m A` for every tile of channel `k`, plus `bias`, into `out`:
/// `out[(j·2 + dy)·len + slot]` is output (2ty + dy, 2tx + j) of tile slot
/// ty·cols + tx. `Aᵀ = [1 1 1 0; 0 1 −1 −1]`.
#[inline(always)]
fn inverse_tiles(
    out: &mut [f32],
    cols_buf: &mut [f32],
    m: &[f32],
    place: Place,
    k: usize,
    len: usize,
    bias: f32,
) {
    let mv = |xi: usize| &m[place.at(xi, k)..][..len];
    // A from the right: row i of the tile gives columns 0 and 1.
    for i in 0..4 {
        let (c0, c1) = cols_buf[i * 2 * len..(i + 1) * 2 * len].split_at_mut(len);
        let (a, b, c, d) = (mv(i * 4), mv(i * 4 + 1), mv(i * 4 + 2), mv(i * 4 + 3));
        for ((((o0, o1), &a), (&b, &c)), &d) in
            c0.iter_mut().zip(c1.iter_mut()).zip(a).zip(b.iter().zip(c)).zip(d)
        {
            *o0 = a + b + c;
            *o1 = b - c - d;
        }
    }
    // Aᵀ from the left: output rows 0 and 1 of each tile, columns 0 and 1.
    let col = |i: usize, j: usize| &cols_buf[(i * 2 + j) * len..][..len];
    for j in 0..2 {
        let (r0, r1) = out[j * 2 * len..(j + 1) * 2 * len].split_at_mut(len);
        let (a, b, c, d) = (col(0, j), col(1, j), col(2, j), col(3, j));
        for ((((o0, o1), &a), (&b, &c)), &d) in
            r0.iter_mut().zip(r1.iter_mut()).zip(a).zip(b.iter().zip(c)).zip(d)
        {
            *o0 = a + b + c + bias;
            *o1 = b - c - d + bias;
        }
    }
}

/// Interleaves one channel's tile outputs (`inverse_tiles`) into its plane,
/// overwriting or (`add`) accumulating; odd edges cropped.
#[inline(always)]
fn interleave(yk: &mut [f32], out: &[f32], len: usize, t: Tiling, add: bool) {
    for (oy, yrow) in yk.chunks_exact_mut(t.w).enumerate() {
        let (ty, dy) = (oy / 2, oy % 2);
        let e = &out[dy * len + ty * t.cols..][..t.cols];
        let o = &out[(2 + dy) * len + ty * t.cols..][..t.cols];
        let n = t.w / 2;
        let (pairs, e2, o2) = (&mut yrow[..2 * n], &e[..n], &o[..n]);
        if add {
            for j in 0..n {
                pairs[2 * j] += e2[j];
                pairs[2 * j + 1] += o2[j];
            }
        } else {
            for j in 0..n {
                pairs[2 * j] = e2[j];
                pairs[2 * j + 1] = o2[j];
            }
        }
        if t.w % 2 == 1 {
            let (last, a) = (&mut yrow[t.w - 1], e[t.w / 2]);
            *last = if add { *last + a } else { a };
        }
    }
}

/// Max-pools one channel's tile outputs (`inverse_tiles`), one window per
/// whole tile, into its pooled plane and argmax (indices into the plane).
#[inline(always)]
fn pool_tiles(yk: &mut [f32], ak: &mut [u32], out: &[f32], len: usize, t: Tiling) {
    let (ph, pw) = (t.h / 2, t.w / 2);
    let tap = |j: usize, dy: usize| &out[(j * 2 + dy) * len..][..len];
    let (v00, v01, v10, v11) = (tap(0, 0), tap(1, 0), tap(0, 1), tap(1, 1));
    for ty in 0..ph {
        let row = ty * t.cols..ty * t.cols + pw;
        let (a, b, c, d) = (&v00[row.clone()], &v01[row.clone()], &v10[row.clone()], &v11[row]);
        let (yr, ar) = (&mut yk[ty * pw..(ty + 1) * pw], &mut ak[ty * pw..(ty + 1) * pw]);
        let base = 2 * ty * t.w;
        for tx in 0..pw {
            let (v, o) = super::max4(a[tx], b[tx], c[tx], d[tx], t.w as u32);
            yr[tx] = v;
            ar[tx] = (base + 2 * tx) as u32 + o;
        }
    }
}

/// The output transform of one image: every channel's tiles into `dest`.
#[inline(always)]
fn output_transform(dest: Out<'_>, m: &[f32], place: Place, channels: usize, t: Tiling, s: &mut Scratch) {
    let len = t.slots();
    let buf = grow(&mut s.rows, 12 * len);
    let (cols_buf, out) = buf.split_at_mut(8 * len);
    match dest {
        Out::Set(y, bias) => {
            for (k, yk) in y.chunks_exact_mut(t.h * t.w).take(channels).enumerate() {
                inverse_tiles(out, cols_buf, m, place, k, len, bias.map_or(0.0, |b| b[k]));
                interleave(yk, out, len, t, false);
            }
        }
        Out::Add(y) => {
            for (k, yk) in y.chunks_exact_mut(t.h * t.w).take(channels).enumerate() {
                inverse_tiles(out, cols_buf, m, place, k, len, 0.0);
                interleave(yk, out, len, t, true);
            }
        }
        Out::Pool(y, am, bias) => {
            let plane = (t.h / 2) * (t.w / 2);
            for (k, (yk, ak)) in
                y.chunks_exact_mut(plane).zip(am.chunks_exact_mut(plane)).take(channels).enumerate()
            {
                inverse_tiles(out, cols_buf, m, place, k, len, bias[k]);
                pool_tiles(yk, ak, out, len, t);
            }
        }
    }
}

/// `A dy Aᵀ` for every tile of one image's output gradient (zero outside the
/// plane and in the spare slots) into `dm[ξ][k][slot0..]`.
/// `A = [1 0; 1 1; 1 −1; 0 −1]`.
#[inline(always)]
fn grad_transform(dm: &mut [f32], place: Place, dy_img: &[f32], channels: usize, t: Tiling, s: &mut Scratch) {
    let len = t.slots();
    let pl = t.phase_len();
    let phases = grow(&mut s.plane, 4 * pl);
    let rows = grow(&mut s.rows, 2 * len);
    // Zeroed once: every channel writes the same positions, and the spare
    // column and rows must read 0.
    phases.fill(0.0);
    for (k, dk) in dy_img.chunks_exact(t.h * t.w).take(channels).enumerate() {
        split_phases(phases, dk, t, 0);
        let g = |a: usize, b: usize| &phases[(a * 2 + b) * pl..][..len];
        let (p0, p1) = rows.split_at_mut(len);
        for i in 0..4 {
            // Row i of A·dy, columns 0 and 1.
            let (d0, d1) = ((g(0, 0), g(1, 0)), (g(0, 1), g(1, 1)));
            for (p, (top, bottom)) in [(&mut *p0, d0), (&mut *p1, d1)] {
                match i {
                    0 => p.copy_from_slice(top),
                    1 => combine(p, top, bottom, 1.0),
                    2 => combine(p, top, bottom, -1.0),
                    _ => p.iter_mut().zip(bottom).for_each(|(d, &x)| *d = -x),
                }
            }
            // · Aᵀ: [p0, p0 + p1, p0 − p1, −p1]
            let at = |j: usize| place.at(i * 4 + j, k);
            dm[at(0)..][..len].copy_from_slice(p0);
            combine(&mut dm[at(1)..][..len], p0, p1, 1.0);
            combine(&mut dm[at(2)..][..len], p0, p1, -1.0);
            dm[at(3)..][..len].iter_mut().zip(p1.iter()).for_each(|(d, &x)| *d = -x);
        }
    }
}

// ---- the three passes ----------------------------------------------------------------

/// A "same" 3×3 convolution of `input` (`n` images of `ic × h × w`) with the
/// transformed kernels `u` (`[ξ][oc][ic]`) into `out` (`n` images, as its
/// variant says), on SIMD path `path` (every block on the same one).
#[allow(clippy::too_many_arguments)]
fn convolve(
    path: SimdPath,
    out: Out<'_>,
    input: &[f32],
    u: &[f32],
    n: usize,
    ic: usize,
    oc: usize,
    t: Tiling,
) {
    let per_img = t.slots();
    let nb = block_images(t);
    let in_len = ic * t.h * t.w;
    // Each block's destination, cut so that blocks run in parallel.
    let len = out.image_len(oc, t);
    let blocks = match out {
        Out::Set(y, bias) => {
            Either::Left(Either::Left(y[..n * len].par_chunks_mut(nb * len).map(move |y| Out::Set(y, bias))))
        }
        Out::Add(y) => Either::Left(Either::Right(y[..n * len].par_chunks_mut(nb * len).map(Out::Add))),
        Out::Pool(y, am, bias) => {
            let pooled = y[..n * len].par_chunks_mut(nb * len).zip(am[..n * len].par_chunks_mut(nb * len));
            Either::Right(pooled.map(move |(y, a)| Out::Pool(y, a, bias)))
        }
    };
    blocks.zip(input[..n * in_len].par_chunks(nb * in_len)).for_each(|(mut dest, in_b)| {
        let imgs = in_b.len() / in_len;
        let tiles = imgs * per_img;
        SCRATCH.with(|s| {
            let s = &mut *s.borrow_mut();
            let (mut v, mut m) = (std::mem::take(&mut s.v), std::mem::take(&mut s.m));
            let (vs, ms) = (plane_stride(ic, tiles), plane_stride(oc, tiles));
            let (vb, mb) = (grow(&mut v, XI * vs), grow(&mut m, XI * ms));
            with_simd!(path; for (i, x_img) in in_b.chunks_exact(in_len).enumerate() {
                input_transform(vb, Place { stride: vs, slots: tiles, slot0: i * per_img }, x_img, ic, t, s);
            });
            for xi in 0..XI {
                let (c, a, b) = (
                    &mut mb[xi * ms..][..oc * tiles],
                    &u[xi * oc * ic..][..oc * ic],
                    &vb[xi * vs..][..ic * tiles],
                );
                microgemm::gemm(path, c, a, b, oc, tiles, ic);
            }
            with_simd!(path; for i in 0..imgs {
                let place = Place { stride: ms, slots: tiles, slot0: i * per_img };
                output_transform(dest.image(i, len), mb, place, oc, t, s);
            });
            (s.v, s.m) = (v, m);
        })
    });
}

/// `y = conv(x, w) (+ bias)`, overwriting `y`.
pub fn fwd(y: &mut [f32], x: &[f32], w: &[f32], bias: Option<&[f32]>, p: &Conv2dParams) {
    forward(simd::active(), Out::Set(y, bias), x, w, p)
}

/// `y = maxpool₂ₓ₂(conv(x, w) + bias)` with the argmax of each window (an
/// index into the convolution's output plane, as `maxpool2d_fwd` gives it).
pub fn fwd_pool(y: &mut [f32], am: &mut [u32], x: &[f32], w: &[f32], bias: &[f32], p: &Conv2dParams) {
    forward(simd::active(), Out::Pool(y, am, bias), x, w, p)
}

fn forward(path: SimdPath, out: Out<'_>, x: &[f32], w: &[f32], p: &Conv2dParams) {
    KERNELS.with(|u| {
        let mut u = u.borrow_mut();
        let u = grow(&mut u, XI * p.oc * p.c);
        transform_kernels(u, w, p.oc, p.c, false);
        convolve(path, out, x, u, p.n, p.c, p.oc, Tiling::new(p.h, p.w));
    })
}

/// `dx += conv(dy, rot180(w)ᵀ)`.
pub fn bwd_data(dx: &mut [f32], dy: &[f32], w: &[f32], p: &Conv2dParams) {
    bwd_data_on(simd::active(), dx, dy, w, p)
}

fn bwd_data_on(path: SimdPath, dx: &mut [f32], dy: &[f32], w: &[f32], p: &Conv2dParams) {
    KERNELS.with(|u| {
        let mut u = u.borrow_mut();
        let u = grow(&mut u, XI * p.oc * p.c);
        transform_kernels(u, w, p.oc, p.c, true);
        convolve(path, Out::Add(dx), dy, u, p.n, p.oc, p.c, Tiling::new(p.h, p.w));
    })
}

/// `dw += ∂L/∂w` from the layer input `x` and output gradient `dy`: `dU` per
/// thread chunk of images (`batch_partials`), summed in chunk order, then
/// transformed back.
pub fn bwd_weight(dw: &mut [f32], x: &[f32], dy: &[f32], p: &Conv2dParams, partials: &Mutex<Vec<Vec<f32>>>) {
    bwd_weight_on(simd::active(), dw, x, dy, p, partials)
}

fn bwd_weight_on(
    path: SimdPath,
    dw: &mut [f32],
    x: &[f32],
    dy: &[f32],
    p: &Conv2dParams,
    partials: &Mutex<Vec<Vec<f32>>>,
) {
    let (ic, oc, t) = (p.c, p.oc, Tiling::new(p.h, p.w));
    let per_img = t.slots();
    let nb = block_images(t);
    let (x_len, y_len) = (ic * p.h * p.w, oc * p.h * p.w);
    let du_len = XI * oc * ic;
    let parts = batch_partials(partials, p.n, du_len, |du, r| {
        SCRATCH.with(|s| {
            let s = &mut *s.borrow_mut();
            let (mut v, mut m) = (std::mem::take(&mut s.v), std::mem::take(&mut s.m));
            let mut start = r.start;
            while start < r.end {
                let imgs = nb.min(r.end - start);
                let tiles = imgs * per_img;
                let (vs, ms) = (plane_stride(ic, tiles), plane_stride(oc, tiles));
                let (vb, mb) = (grow(&mut v, XI * vs), grow(&mut m, XI * ms));
                let (xs, dys) = (&x[start * x_len..][..imgs * x_len], &dy[start * y_len..][..imgs * y_len]);
                with_simd!(path; for (i, (x_img, dy_img)) in
                    xs.chunks_exact(x_len).zip(dys.chunks_exact(y_len)).enumerate()
                {
                    input_transform(
                        vb,
                        Place { stride: vs, slots: tiles, slot0: i * per_img },
                        x_img,
                        ic,
                        t,
                        s,
                    );
                    grad_transform(
                        mb,
                        Place { stride: ms, slots: tiles, slot0: i * per_img },
                        dy_img,
                        oc,
                        t,
                        s,
                    );
                });
                // dU_ξ (oc × ic) += dM_ξ (oc × tiles) · V_ξᵀ (tiles × ic).
                // On AVX-512, V_ξ is transposed first (ic·tiles moves against
                // oc·ic·tiles multiply-adds) so the micro-gemm reads both
                // operands in its own layout, with no packing; elsewhere the
                // sgemm packs V_ξᵀ (on the AVX2 path, forced on a Zen 5, the
                // transpose and 6×16 kernel were 4 % slower on a plain epoch).
                let ours = path == SimdPath::Avx512 && kernel_switch::on(Kernel::WinogradMicroGemm);
                let vt = grow(&mut s.vt, if ours { tiles * ic } else { 0 });
                for xi in 0..XI {
                    let (du, dm, v) = (
                        &mut du[xi * oc * ic..(xi + 1) * oc * ic],
                        &mb[xi * ms..][..oc * tiles],
                        &vb[xi * vs..][..ic * tiles],
                    );
                    if ours {
                        transpose::transpose(path, vt, v, ic, tiles);
                        microgemm::gemm_acc(path, du, dm, vt, oc, ic, tiles);
                    } else {
                        gemm_slices(du, dm, v, Gemm::nn(oc, ic, tiles).trans(false, true).acc());
                    }
                }
                start += imgs;
            }
            (s.v, s.m) = (v, m);
        })
    });
    let mut total = [0.0f32; XI];
    for k in 0..oc {
        for c in 0..ic {
            total.fill(0.0);
            for part in parts.iter() {
                for (xi, t) in total.iter_mut().enumerate() {
                    *t += part[(xi * oc + k) * ic + c];
                }
            }
            let g = kernel_bwd(&total);
            for (d, gv) in dw[(k * ic + c) * 9..][..9].iter_mut().zip(g) {
                *d += gv;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cpu::naive;
    use crate::rng::Rng;

    fn random(rng: &mut Rng, len: usize) -> Vec<f32> {
        (0..len).map(|_| rng.uniform(-1.0, 1.0)).collect()
    }

    fn params(n: usize, c: usize, h: usize, w: usize, oc: usize) -> Conv2dParams {
        Conv2dParams { n, c, h, w, oc, kh: 3, kw: 3, sh: 1, sw: 1, ph: 1, pw: 1 }
    }

    /// Everything the Winograd path computes, on one SIMD path: forward
    /// (with bias), fused forward + pooling, backward-data, backward-weight.
    struct Outputs {
        y: Vec<f32>,
        pooled: Vec<f32>,
        argmax: Vec<u32>,
        dx: Vec<f32>,
        dw: Vec<f32>,
    }

    fn run(path: SimdPath, p: &Conv2dParams, x: &[f32], w: &[f32], bias: &[f32], dy: &[f32]) -> Outputs {
        let mut y = vec![0.0; p.y_len()];
        forward(path, Out::Set(&mut y, Some(bias)), x, w, p);
        let pooled_len = p.n * p.oc * (p.h / 2) * (p.w / 2);
        let (mut pooled, mut argmax) = (vec![0.0; pooled_len], vec![0u32; pooled_len]);
        forward(path, Out::Pool(&mut pooled, &mut argmax, bias), x, w, p);
        let mut dx = vec![0.5; p.x_len()];
        bwd_data_on(path, &mut dx, dy, w, p);
        let mut dw = vec![0.25; p.w_len()];
        bwd_weight_on(path, &mut dw, x, dy, p, &Mutex::new(Vec::new()));
        Outputs { y, pooled, argmax, dx, dw }
    }

    fn close(what: &str, got: &[f32], want: &[f32], tol: f32) {
        for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
            assert!((g - w).abs() <= tol * (1.0 + w.abs()), "{what} at {i}: {g} vs {w}");
        }
    }

    fn bitwise(what: &str, got: &[f32], want: &[f32]) {
        let same = got.len() == want.len() && got.iter().zip(want).all(|(g, w)| g.to_bits() == w.to_bits());
        assert!(same, "{what}: not bitwise equal");
    }

    /// Odd and even planes, a cnn-s-like layer, channel counts off the
    /// micro-gemm's block sizes.
    const SHAPES: [(usize, usize, usize, usize, usize); 4] =
        [(2, 32, 14, 14, 64), (3, 5, 7, 9, 7), (1, 4, 6, 5, 13), (4, 16, 8, 8, 33)];

    /// Each vector path against the portable one: the transforms are the
    /// same adds and subtracts on every path, and backward-weight's gemm is
    /// the same sgemm, so dw is bitwise; forward and backward-data go through
    /// the micro-gemm (FMA) instead of the packing sgemm, so they agree
    /// within rounding. The portable path is also checked against the naive
    /// convolution, so all three are anchored.
    #[test]
    fn vector_paths_match_portable() {
        let mut rng = Rng::new(11);
        for (n, c, h, w, oc) in SHAPES {
            let p = params(n, c, h, w, oc);
            let (x, wt, bias) =
                (random(&mut rng, p.x_len()), random(&mut rng, p.w_len()), random(&mut rng, oc));
            let dy = random(&mut rng, p.y_len());
            let base = run(SimdPath::Portable, &p, &x, &wt, &bias, &dy);
            let mut want = naive::conv2d(&x, &wt, &p);
            let plane = p.h * p.w;
            want.iter_mut().enumerate().for_each(|(i, v)| *v += bias[(i / plane) % oc]);
            close("portable fwd vs naive", &base.y, &want, 1e-4);
            for path in [SimdPath::Avx2, SimdPath::Avx512] {
                if !path.supported() {
                    eprintln!("winograd {p:?}: {path} not supported by this CPU, not run");
                    continue;
                }
                eprintln!("winograd {n}×{c}×{h}×{w}→{oc}: {path} against portable");
                let got = run(path, &p, &x, &wt, &bias, &dy);
                close(&format!("{path} fwd"), &got.y, &base.y, 1e-5);
                close(&format!("{path} pooled"), &got.pooled, &base.pooled, 1e-5);
                close(&format!("{path} dx"), &got.dx, &base.dx, 1e-5);
                bitwise(&format!("{path} dw"), &got.dw, &base.dw);
            }
        }
    }

    /// AVX-512 against AVX2, bitwise: the same transforms and a micro-gemm
    /// that sums in the same order. Without AVX-512 this says so and checks
    /// that the AVX2 path is deterministic instead.
    #[test]
    fn avx512_is_bitwise_avx2() {
        let (path, reference) = if SimdPath::Avx512.supported() {
            eprintln!("winograd: AVX-512 path against the AVX2 path, bitwise");
            (SimdPath::Avx512, SimdPath::Avx2)
        } else if SimdPath::Avx2.supported() {
            eprintln!("winograd: NO AVX-512 on this CPU; checking AVX2 against itself (determinism) instead");
            (SimdPath::Avx2, SimdPath::Avx2)
        } else {
            eprintln!("winograd: neither AVX-512 nor AVX2 on this CPU; nothing to compare");
            return;
        };
        let mut rng = Rng::new(12);
        for (n, c, h, w, oc) in SHAPES {
            let p = params(n, c, h, w, oc);
            let (x, wt, bias) =
                (random(&mut rng, p.x_len()), random(&mut rng, p.w_len()), random(&mut rng, oc));
            let dy = random(&mut rng, p.y_len());
            let (got, want) = (run(path, &p, &x, &wt, &bias, &dy), run(reference, &p, &x, &wt, &bias, &dy));
            bitwise("fwd", &got.y, &want.y);
            bitwise("pooled", &got.pooled, &want.pooled);
            assert_eq!(got.argmax, want.argmax, "argmax");
            bitwise("dx", &got.dx, &want.dx);
            bitwise("dw", &got.dw, &want.dw);
        }
    }
}
