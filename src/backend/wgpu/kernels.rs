//! The shader table: one WGSL file per kernel family (`shaders/*.wgsl`,
//! compiled into the binary), one compute pipeline per entry point, and the
//! `#[repr(C)]` twins of each file's `struct Params` uniform.
//!
//! Everything the host needs to know about a kernel is one row of
//! `kernel_table!` below: adding a kernel to an existing family is that row
//! (and the WGSL entry point, and the dispatch that uses it). The unit tests
//! compile every family with naga and check each row against its entry
//! point, so a wrong row fails `cargo test --lib` rather than a GPU run.
//!
//! Binding convention (DESIGN.md, Conventions): `@binding(0)` is the uniform, then
//! the read-only storage inputs in the order of the Rust signature, then the
//! `read_write` outputs. A row states the two counts, from which the bind
//! group layouts are built.

use bytemuck::{Pod, Zeroable};

/// Invocations per workgroup of every 1-D (elementwise-style) entry point:
/// the `const WG` of the families whose grids the host sizes per element.
pub(super) const WG: u32 = 256;

/// One shader family: a file of `shaders/`, compiled as one module.
#[derive(Debug)]
pub(super) struct Family {
    /// File name under `shaders/`, for labels and error messages.
    pub file: &'static str,
    /// Whether shaders/common.wgsl (the shared helpers) is appended.
    pub common: bool,
    /// The WGSL compiled: the file, then common.wgsl when `common`.
    pub source: &'static str,
}

/// A [`Family`] from a file name, with `+ common` to append
/// shaders/common.wgsl. WGSL has no imports, so the sharing happens here, at
/// compile time; appending (not prepending) keeps the line numbers of a naga
/// error in the family's own file right.
macro_rules! family {
    ($file:literal) => {
        Family { file: $file, common: false, source: include_str!(concat!("../../../shaders/", $file)) }
    };
    ($file:literal + common) => {
        Family {
            file: $file,
            common: true,
            source: concat!(
                include_str!(concat!("../../../shaders/", $file)),
                "\n",
                include_str!("../../../shaders/common.wgsl")
            ),
        }
    };
}

const MATMUL: Family = family!("matmul.wgsl");
const CONV: Family = family!("conv.wgsl" + common);
const POOL: Family = family!("pool.wgsl" + common);
const ELEMENTWISE: Family = family!("elementwise.wgsl" + common);
const REDUCE: Family = family!("reduce.wgsl" + common);
const LOSS: Family = family!("loss.wgsl" + common);
const KD_LOSS: Family = family!("kd_loss.wgsl" + common);
const SGD: Family = family!("sgd.wgsl" + common);
const ANCHOR: Family = family!("anchor.wgsl" + common);
const NORM: Family = family!("norm.wgsl" + common);

/// What the host needs to build and feed one kernel's pipeline.
#[derive(Debug)]
pub(super) struct KernelSpec {
    /// The shader module holding the entry point.
    pub family: Family,
    /// Entry point name in [`KernelSpec::family`] (also the pipeline label).
    pub entry: &'static str,
    /// Read-only storage bindings, `@binding(1)..=inputs`.
    pub inputs: u32,
    /// `read_write` storage bindings, right after the inputs.
    pub outputs: u32,
    /// Size in bytes of the family's `Params` uniform (its Rust twin below).
    pub params_size: u64,
}

/// Generates [`Kernel`], [`Kernel::ALL`] and the table behind
/// [`Kernel::spec`] from one list, so that a kernel cannot be added to the
/// enum without its row, and the rows cannot drift out of the enum's order.
macro_rules! kernel_table {
    ($($kernel:ident: $family:ident, $entry:literal, $inputs:literal in, $outputs:literal out, $params:ty;)*) => {
        /// One compute pipeline each.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub(super) enum Kernel {
            $($kernel,)*
        }

        impl Kernel {
            /// Every kernel, in declaration order: `ALL[k as usize] == k`.
            pub(super) const ALL: &'static [Kernel] = &[$(Kernel::$kernel,)*];

            /// This kernel's row of the table.
            pub(super) fn spec(self) -> &'static KernelSpec {
                const TABLE: &[KernelSpec] = &[$(KernelSpec {
                    family: $family,
                    entry: $entry,
                    inputs: $inputs,
                    outputs: $outputs,
                    params_size: size_of::<$params>() as u64,
                },)*];
                &TABLE[self as usize]
            }
        }
    };
}

kernel_table! {
    // kernel       family        entry point        bindings        Params twin
    Gemm64:         MATMUL,       "gemm_64",         2 in, 1 out,    GemmParams;
    Gemm128:        MATMUL,       "gemm_128",        2 in, 1 out,    GemmParams;
    GemmReg:        MATMUL,       "gemm_reg",        2 in, 1 out,    GemmParams;
    Im2col:         CONV,         "im2col",          1 in, 1 out,    ConvUniform;
    Col2im:         CONV,         "col2im",          1 in, 1 out,    ConvUniform;
    MaxpoolFwd:     POOL,         "maxpool_fwd",     1 in, 2 out,    PoolUniform;
    MaxpoolBwd:     POOL,         "maxpool_bwd",     2 in, 1 out,    PoolUniform;
    Fill:           ELEMENTWISE,  "fill",            0 in, 1 out,    EwParams;
    ReluFwd:        ELEMENTWISE,  "relu_fwd",        1 in, 1 out,    EwParams;
    ReluBwd:        ELEMENTWISE,  "relu_bwd",        2 in, 1 out,    EwParams;
    BiasAdd:        ELEMENTWISE,  "bias_add",        1 in, 1 out,    EwParams;
    Axpy:           ELEMENTWISE,  "axpy",            1 in, 1 out,    EwParams;
    Scale:          ELEMENTWISE,  "scale",           0 in, 1 out,    EwParams;
    AddSquared:     ELEMENTWISE,  "add_squared",     1 in, 1 out,    EwParams;
    Add:            ELEMENTWISE,  "add",             2 in, 1 out,    EwParams;
    BiasGrad:       REDUCE,       "bias_grad",       1 in, 1 out,    ReduceParams;
    MaxRows:        REDUCE,       "max_rows",        1 in, 2 out,    ReduceParams;
    SumInto:        REDUCE,       "sum_into",        1 in, 1 out,    ReduceParams;
    SplitkReduce:   REDUCE,       "splitk_reduce",   1 in, 1 out,    ReduceParams;
    SoftmaxXent:    LOSS,         "softmax_xent",    2 in, 2 out,    LossUniform;
    KdLoss:         KD_LOSS,      "kd_loss",         2 in, 2 out,    KdUniform;
    SgdStep:        SGD,          "sgd_step",        1 in, 2 out,    SgdParams;
    AnchorPenalty:  ANCHOR,       "anchor_penalty",  3 in, 2 out,    AnchorParams;
    BnStats:        NORM,         "bn_stats",        1 in, 2 out,    NormParams;
    BnAffine:       NORM,         "bn_affine",       4 in, 1 out,    NormParams;
    BnFwd:          NORM,         "bn_fwd",          2 in, 1 out,    NormParams;
    BnBwdSums:      NORM,         "bn_bwd_sums",     4 in, 1 out,    NormParams;
    BnAcc:          NORM,         "bn_acc",          1 in, 1 out,    NormParams;
    BnBwdCoef:      NORM,         "bn_bwd_coef",     3 in, 1 out,    NormParams;
    BnBwdDx:        NORM,         "bn_bwd_dx",       4 in, 1 out,    NormParams;
    AvgpoolFwd:     NORM,         "avgpool_fwd",     1 in, 1 out,    NormParams;
    AvgpoolBwd:     NORM,         "avgpool_bwd",     1 in, 1 out,    NormParams;
}

/// The families in order of first use in the table, each with its kernels:
/// the unit of shader compilation.
pub(super) fn families() -> Vec<(&'static Family, Vec<Kernel>)> {
    let mut out: Vec<(&'static Family, Vec<Kernel>)> = Vec::new();
    for &k in Kernel::ALL {
        let family = &k.spec().family;
        match out.iter_mut().find(|(f, _)| f.file == family.file) {
            Some((_, ks)) => ks.push(k),
            None => out.push((family, vec![k])),
        }
    }
    out
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
    /// Padding cells on every side (`PoolParams::pad`), `< k`.
    pub pad: u32,
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

/// WGSL twin: `Params` in shaders/norm.wgsl.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, Pod, Zeroable)]
pub(super) struct NormParams {
    pub total: u32,
    pub c: u32,
    pub hw: u32,
    pub count: u32,
    pub eps: f32,
    pub inv_count: f32,
    pub batch_stats: u32,
    pub offset: u32,
}

#[cfg(test)]
mod tests {
    use super::*;
    use naga::valid::{Capabilities, ModuleInfo, ValidationFlags, Validator};
    use naga::{AddressSpace, StorageAccess};

    /// Parse and validate a family as wgpu will (without a device), failing
    /// with naga's report, which names the file.
    fn compile(f: &Family) -> (naga::Module, ModuleInfo) {
        let module = match naga::front::wgsl::parse_str(f.source) {
            Ok(m) => m,
            Err(e) => panic!("{}", e.emit_to_string_with_path(f.source, f.file)),
        };
        match Validator::new(ValidationFlags::all(), Capabilities::default()).validate(&module) {
            Ok(info) => (module, info),
            Err(e) => panic!("{}", e.emit_to_string_with_path(f.source, f.file)),
        }
    }

    /// The kind of a binding, in the table's terms.
    fn kind(space: AddressSpace) -> &'static str {
        match space {
            AddressSpace::Uniform => "uniform",
            AddressSpace::Storage { access } if access == StorageAccess::LOAD => "read",
            AddressSpace::Storage { access } if access == StorageAccess::LOAD | StorageAccess::STORE => {
                "read_write"
            }
            other => panic!("unexpected binding space {other:?}"),
        }
    }

    #[test]
    fn params_are_padded_to_16_bytes() {
        for &k in Kernel::ALL {
            assert_eq!(k.spec().params_size % 16, 0, "{k:?}");
        }
        assert_eq!(size_of::<GemmParams>(), 80);
        assert_eq!(size_of::<ConvUniform>(), 64);
    }

    /// A dispatch's bind group is cached by the ids of at most
    /// `device::MAX_BUFFERS` buffers; a row with more would alias entries.
    #[test]
    fn rows_fit_the_bind_group_key() {
        for &k in Kernel::ALL {
            let s = k.spec();
            assert!((s.inputs + s.outputs) as usize <= super::super::device::MAX_BUFFERS, "{k:?}");
        }
    }

    #[test]
    fn all_is_in_declaration_order() {
        for (i, k) in Kernel::ALL.iter().enumerate() {
            assert_eq!(*k as usize, i, "{k:?}");
        }
    }

    #[test]
    fn every_shader_file_is_a_family() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/shaders");
        let mut files: Vec<String> = std::fs::read_dir(dir)
            .expect("shaders/")
            .map(|e| e.expect("shaders/ entry").file_name().into_string().expect("UTF-8 name"))
            .filter(|n| n.ends_with(".wgsl") && n != "common.wgsl")
            .collect();
        files.sort();
        let mut families: Vec<&str> = families().iter().map(|(f, _)| f.file).collect();
        families.sort();
        assert_eq!(files, families);
    }

    /// Each row against the naga IR of its entry point: the entry exists,
    /// the bindings it uses are exactly the uniform, `inputs` read-only and
    /// `outputs` read_write storage buffers in that order, and the uniform
    /// has the size of the row's Rust twin. The layouts built from the rows
    /// would otherwise fail only at pipeline creation, on a GPU.
    #[test]
    fn rows_match_their_entry_points() {
        for (family, kernels) in families() {
            let (module, info) = compile(family);
            for k in kernels {
                let spec = k.spec();
                let at = format!("{k:?} ({} in {})", spec.entry, family.file);
                let (index, ep) = module
                    .entry_points
                    .iter()
                    .enumerate()
                    .find(|(_, ep)| ep.name == spec.entry)
                    .unwrap_or_else(|| panic!("{at}: no such entry point"));
                assert_eq!(ep.stage, naga::ShaderStage::Compute, "{at}");
                let uses = info.get_entry_point(index);
                let mut got = Vec::new();
                for (handle, var) in module.global_variables.iter() {
                    let Some(binding) = &var.binding else { continue };
                    if uses[handle].is_empty() {
                        continue;
                    }
                    assert_eq!(binding.group, 0, "{at}");
                    got.push((binding.binding, kind(var.space)));
                    if var.space == AddressSpace::Uniform {
                        let size = module.types[var.ty].inner.size(module.to_ctx());
                        assert_eq!(u64::from(size), spec.params_size, "{at}: Params size");
                    }
                }
                got.sort();
                let (ro, rw) = (spec.inputs, spec.outputs);
                let want: Vec<(u32, &str)> = std::iter::once((0, "uniform"))
                    .chain((1..=ro).map(|b| (b, "read")))
                    .chain((ro + 1..=ro + rw).map(|b| (b, "read_write")))
                    .collect();
                assert_eq!(got, want, "{at}: bindings");
            }
        }
    }

    /// The host sizes 1-D grids by [`WG`]; every 1-D entry point but
    /// softmax_xent (one workgroup per row, whatever its width) must match.
    #[test]
    fn one_dimensional_entry_points_use_wg() {
        for (family, kernels) in families() {
            let (module, _) = compile(family);
            for k in kernels {
                let ep =
                    module.entry_points.iter().find(|ep| ep.name == k.spec().entry).expect("entry point");
                let [_, y, z] = ep.workgroup_size;
                if y == 1 && z == 1 && k != Kernel::SoftmaxXent {
                    assert_eq!(ep.workgroup_size, [WG, 1, 1], "{k:?}");
                }
            }
        }
    }
}
