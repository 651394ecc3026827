//! Diagnostic switches that put a fused or re-blocked kernel back to the
//! plain composition it replaced, one kernel at a time, so an accuracy or
//! speed difference between two builds can be traced to one kernel with
//! paired seeds (README, "Numbers across builds").
//!
//! `LWF_CPU_PLAIN=pooled-wgrad,winograd-sgemm,linear-sgemm` (any subset),
//! read once per process:
//! - `pooled-wgrad`: the first layer's weight gradient from the full
//!   convolution output gradient (pooling's backward, then the direct
//!   weight gradient) instead of from the pooled gradient's winners;
//! - `winograd-sgemm`: the Winograd weight gradient's products on
//!   matrixmultiply's sgemm on every path (the AVX-512 path uses the
//!   micro-gemm on a transposed V);
//! - `linear-sgemm`: linear layers' products on the sgemm on every path
//!   (the AVX-512 path uses the micro-gemm).
//!
//! The default, with the variable unset, is every kernel on.

use std::sync::OnceLock;

/// One kernel that can be put back to its plain form.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kernel {
    PooledWeightGrad,
    WinogradMicroGemm,
    LinearMicroGemm,
}

impl Kernel {
    const ALL: [Kernel; 3] = [Kernel::PooledWeightGrad, Kernel::WinogradMicroGemm, Kernel::LinearMicroGemm];

    /// The switch's name in `LWF_CPU_PLAIN`.
    pub fn switch_name(self) -> &'static str {
        match self {
            Kernel::PooledWeightGrad => "pooled-wgrad",
            Kernel::WinogradMicroGemm => "winograd-sgemm",
            Kernel::LinearMicroGemm => "linear-sgemm",
        }
    }

    fn bit(self) -> u8 {
        1 << (self as u8)
    }
}

/// The kernels `spec` (a comma list of switch names) puts back, as a bit set.
pub fn parse(spec: &str) -> Result<u8, String> {
    let mut bits = 0;
    for name in spec.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let k = Kernel::ALL.iter().find(|k| k.switch_name() == name).ok_or_else(|| {
            let known: Vec<&str> = Kernel::ALL.iter().map(|k| k.switch_name()).collect();
            format!("LWF_CPU_PLAIN: unknown kernel '{name}' (known: {})", known.join(", "))
        })?;
        bits |= k.bit();
    }
    Ok(bits)
}

fn plain_set() -> u8 {
    static SET: OnceLock<u8> = OnceLock::new();
    *SET.get_or_init(|| match std::env::var("LWF_CPU_PLAIN") {
        Ok(spec) => parse(&spec).unwrap_or_else(|e| panic!("{e}")),
        Err(_) => 0,
    })
}

/// Whether `k` runs in its fused or re-blocked form (the default).
pub fn on(k: Kernel) -> bool {
    plain_set() & k.bit() == 0
}

/// The switch names put back in this process, for run records.
pub fn plain_names() -> Vec<&'static str> {
    Kernel::ALL.iter().filter(|&&k| !on(k)).map(|k| k.switch_name()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn switch_names_parse_to_their_bits_and_unknown_names_are_refused() {
        assert_eq!(parse(""), Ok(0));
        assert_eq!(parse("pooled-wgrad"), Ok(1));
        assert_eq!(parse("linear-sgemm, winograd-sgemm"), Ok(6));
        assert!(parse("pooled").unwrap_err().contains("'pooled'"));
    }
}
