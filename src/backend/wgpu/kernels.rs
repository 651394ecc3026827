//! The shader table: one WGSL file per kernel family (`shaders/*.wgsl`,
//! compiled into the binary), one compute pipeline per entry point, and the
//! `#[repr(C)]` twins of each file's `struct Params` uniform.
//!
//! Binding convention (STYLE.md §8.3): `@binding(0)` is the uniform, then
//! the read-only storage inputs in the order of the Rust signature, then the
//! `read_write` outputs. [`Kernel::bindings`] states the two counts, from
//! which the bind group layouts are built.

use bytemuck::{Pod, Zeroable};

/// `(file name, source)` of every shader file.
pub(super) const FILES: [(&str, &str); 9] = [
    ("matmul.wgsl", include_str!("../../../shaders/matmul.wgsl")),
    ("conv.wgsl", include_str!("../../../shaders/conv.wgsl")),
    ("pool.wgsl", include_str!("../../../shaders/pool.wgsl")),
    ("elementwise.wgsl", include_str!("../../../shaders/elementwise.wgsl")),
    ("reduce.wgsl", include_str!("../../../shaders/reduce.wgsl")),
    ("loss.wgsl", include_str!("../../../shaders/loss.wgsl")),
    ("kd_loss.wgsl", include_str!("../../../shaders/kd_loss.wgsl")),
    ("sgd.wgsl", include_str!("../../../shaders/sgd.wgsl")),
    ("anchor.wgsl", include_str!("../../../shaders/anchor.wgsl")),
];

/// Invocations per workgroup of every 1-D (elementwise-style) entry point.
pub(super) const WG: u32 = 256;

/// One compute pipeline each.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(super) enum Kernel {
    Gemm64,
    Gemm128,
    GemmReg,
    Im2col,
    Col2im,
    MaxpoolFwd,
    MaxpoolBwd,
    Fill,
    ReluFwd,
    ReluBwd,
    BiasAdd,
    Axpy,
    Scale,
    AddSquared,
    BiasGrad,
    MaxRows,
    SumInto,
    SplitkReduce,
    SoftmaxXent,
    KdLoss,
    SgdStep,
    AnchorPenalty,
}

impl Kernel {
    pub(super) const ALL: [Kernel; 22] = [
        Kernel::Gemm64,
        Kernel::Gemm128,
        Kernel::GemmReg,
        Kernel::Im2col,
        Kernel::Col2im,
        Kernel::MaxpoolFwd,
        Kernel::MaxpoolBwd,
        Kernel::Fill,
        Kernel::ReluFwd,
        Kernel::ReluBwd,
        Kernel::BiasAdd,
        Kernel::Axpy,
        Kernel::Scale,
        Kernel::AddSquared,
        Kernel::BiasGrad,
        Kernel::MaxRows,
        Kernel::SumInto,
        Kernel::SplitkReduce,
        Kernel::SoftmaxXent,
        Kernel::KdLoss,
        Kernel::SgdStep,
        Kernel::AnchorPenalty,
    ];

    /// Index into [`FILES`].
    pub(super) fn file(self) -> usize {
        use Kernel::*;
        match self {
            Gemm64 | Gemm128 | GemmReg => 0,
            Im2col | Col2im => 1,
            MaxpoolFwd | MaxpoolBwd => 2,
            Fill | ReluFwd | ReluBwd | BiasAdd | Axpy | Scale | AddSquared => 3,
            BiasGrad | MaxRows | SumInto | SplitkReduce => 4,
            SoftmaxXent => 5,
            KdLoss => 6,
            SgdStep => 7,
            AnchorPenalty => 8,
        }
    }

    pub(super) fn entry(self) -> &'static str {
        use Kernel::*;
        match self {
            Gemm64 => "gemm_64",
            Gemm128 => "gemm_128",
            GemmReg => "gemm_reg",
            Im2col => "im2col",
            Col2im => "col2im",
            MaxpoolFwd => "maxpool_fwd",
            MaxpoolBwd => "maxpool_bwd",
            Fill => "fill",
            ReluFwd => "relu_fwd",
            ReluBwd => "relu_bwd",
            BiasAdd => "bias_add",
            Axpy => "axpy",
            Scale => "scale",
            AddSquared => "add_squared",
            BiasGrad => "bias_grad",
            MaxRows => "max_rows",
            SumInto => "sum_into",
            SplitkReduce => "splitk_reduce",
            SoftmaxXent => "softmax_xent",
            KdLoss => "kd_loss",
            SgdStep => "sgd_step",
            AnchorPenalty => "anchor_penalty",
        }
    }

    /// `(read-only inputs, read_write outputs)` after the uniform.
    pub(super) fn bindings(self) -> (u32, u32) {
        use Kernel::*;
        match self {
            Gemm64 | Gemm128 | GemmReg => (2, 1),
            Im2col | Col2im => (1, 1),
            MaxpoolFwd => (1, 2),
            MaxpoolBwd => (2, 1),
            Fill | Scale => (0, 1),
            ReluFwd | BiasAdd | Axpy | AddSquared => (1, 1),
            ReluBwd => (2, 1),
            BiasGrad | SumInto | SplitkReduce => (1, 1),
            MaxRows => (1, 2),
            SoftmaxXent | KdLoss => (2, 2),
            SgdStep => (1, 2),
            AnchorPenalty => (3, 2),
        }
    }

    /// Size in bytes of the file's `Params` (its Rust twin below).
    pub(super) fn params_size(self) -> u64 {
        use Kernel::*;
        let s = match self {
            Gemm64 | Gemm128 | GemmReg => size_of::<GemmParams>(),
            Im2col | Col2im => size_of::<ConvUniform>(),
            MaxpoolFwd | MaxpoolBwd => size_of::<PoolUniform>(),
            Fill | ReluFwd | ReluBwd | BiasAdd | Axpy | Scale | AddSquared => size_of::<EwParams>(),
            BiasGrad | MaxRows | SumInto | SplitkReduce => size_of::<ReduceParams>(),
            SoftmaxXent => size_of::<LossUniform>(),
            KdLoss => size_of::<KdUniform>(),
            SgdStep => size_of::<SgdParams>(),
            AnchorPenalty => size_of::<AnchorParams>(),
        };
        s as u64
    }
}

/// WGSL twin: `Params` in shaders/matmul.wgsl.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, Pod, Zeroable)]
pub(super) struct GemmParams {
    pub m: u32,
    pub n: u32,
    pub k: u32,
    pub k_total: u32,
    pub lda: u32,
    pub ldb: u32,
    pub ldc: u32,
    /// Bit 0: A stored `[K, M]`; bit 1: B stored `[N, K]`.
    pub trans: u32,
    pub a_off: u32,
    pub b_off: u32,
    pub c_off: u32,
    pub _pad0: u32,
    pub a_zs: u32,
    pub b_zs: u32,
    pub c_zs: u32,
    pub _pad1: u32,
    pub alpha: f32,
    pub beta: f32,
    pub _pad2: [f32; 2],
}

/// WGSL twin: `Params` in shaders/conv.wgsl.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, Pod, Zeroable)]
pub(super) struct ConvUniform {
    pub total: u32,
    pub c: u32,
    pub h: u32,
    pub w: u32,
    pub kh: u32,
    pub kw: u32,
    pub sh: u32,
    pub sw: u32,
    pub ph: u32,
    pub pw: u32,
    pub oh: u32,
    pub ow: u32,
    pub x_off: u32,
    pub _pad: [u32; 3],
}

/// WGSL twin: `Params` in shaders/pool.wgsl.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, Pod, Zeroable)]
pub(super) struct PoolUniform {
    pub total: u32,
    pub h: u32,
    pub w: u32,
    pub oh: u32,
    pub ow: u32,
    pub k: u32,
    pub s: u32,
    pub _pad: u32,
}

/// WGSL twin: `Params` in shaders/elementwise.wgsl.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, Pod, Zeroable)]
pub(super) struct EwParams {
    pub n: u32,
    pub cols: u32,
    pub inner: u32,
    pub _pad0: u32,
    pub alpha: f32,
    pub _pad1: [f32; 3],
}

/// WGSL twin: `Params` in shaders/reduce.wgsl.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, Pod, Zeroable)]
pub(super) struct ReduceParams {
    pub n: u32,
    pub rows: u32,
    pub cols: u32,
    pub inner: u32,
    pub alpha: f32,
    pub beta: f32,
    pub _pad: [f32; 2],
}

/// WGSL twin: `Params` in shaders/loss.wgsl.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, Pod, Zeroable)]
pub(super) struct LossUniform {
    pub rows: u32,
    pub cols: u32,
    pub _pad0: [u32; 2],
    pub scale: f32,
    pub _pad1: [f32; 3],
}

/// WGSL twin: `Params` in shaders/kd_loss.wgsl.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, Pod, Zeroable)]
pub(super) struct KdUniform {
    pub rows: u32,
    pub cols: u32,
    pub ld: u32,
    pub _pad0: u32,
    pub inv_t: f32,
    pub gscale: f32,
    pub _pad1: [f32; 2],
}

/// WGSL twin: `Params` in shaders/sgd.wgsl.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, Pod, Zeroable)]
pub(super) struct SgdParams {
    pub n: u32,
    pub _pad0: [u32; 3],
    pub lr: f32,
    pub momentum: f32,
    pub weight_decay: f32,
    pub _pad1: f32,
}

/// WGSL twin: `Params` in shaders/anchor.wgsl.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, Pod, Zeroable)]
pub(super) struct AnchorParams {
    pub n: u32,
    pub has_fisher: u32,
    pub groups: u32,
    pub _pad0: u32,
    pub two_scale: f32,
    pub _pad1: [f32; 3],
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn params_are_padded_to_16_bytes() {
        for k in Kernel::ALL {
            assert_eq!(k.params_size() % 16, 0, "{k:?}");
        }
        assert_eq!(size_of::<GemmParams>(), 80);
        assert_eq!(size_of::<ConvUniform>(), 64);
    }

    #[test]
    fn all_is_in_declaration_order() {
        for (i, k) in Kernel::ALL.iter().enumerate() {
            assert_eq!(*k as usize, i, "{k:?}");
        }
    }

    #[test]
    fn every_entry_point_is_in_its_file() {
        for k in Kernel::ALL {
            let src = FILES[k.file()].1;
            assert!(src.contains(&format!("fn {}(", k.entry())), "{k:?} not in {}", FILES[k.file()].0);
        }
    }
}
