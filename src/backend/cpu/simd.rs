//! Which instruction set the CPU backend's hand-written kernels run on.
//!
//! Every hand-written SIMD path (the Winograd micro-gemm and transforms, the
//! direct first-layer convolution, the pooling) is compiled three times —
//! AVX-512, AVX2 + FMA and the baseline target — and picks one at run time
//! from [`active`]. The choice is made once per process: the best path this
//! CPU has, unless `LWF_SIMD=avx512|avx2|portable` or [`set_path`] (the CLI's
//! `--simd`) forces one. Forcing a path the CPU lacks is an error, never a
//! silent downgrade, so an A/B measurement always measures what it names.
//!
//! Paths are per process, not per backend: the kernels sit below the
//! `Backend` trait and are called from rayon's threads, so a global read
//! once per kernel call is the only place every one of them can see.
//! Determinism holds per path: the same seed on the same path gives the same
//! numbers; different paths may differ in the last bits where they round
//! differently (FMA against separate multiply and add, other lane sums).

use crate::error::Error;
use std::sync::atomic::{AtomicU8, Ordering};

/// An instruction-set path of the hand-written kernels, best first. A
/// `clap::ValueEnum`, so the CLI's `--simd` can take it directly.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, clap::ValueEnum)]
pub enum SimdPath {
    /// AVX-512 F/BW/DQ/VL (plus AVX2 + FMA): 16 lanes.
    #[value(name = "avx512")]
    Avx512,
    /// AVX2 + FMA: 8 lanes.
    #[value(name = "avx2")]
    Avx2,
    /// The baseline target only (SSE2 on x86-64): what any CPU runs.
    #[value(name = "portable")]
    Portable,
}

impl SimdPath {
    /// Every path, best first.
    pub const ALL: [SimdPath; 3] = [SimdPath::Avx512, SimdPath::Avx2, SimdPath::Portable];

    /// The name `LWF_SIMD` and `--simd` take.
    pub fn name(self) -> &'static str {
        match self {
            SimdPath::Avx512 => "avx512",
            SimdPath::Avx2 => "avx2",
            SimdPath::Portable => "portable",
        }
    }

    /// Whether this CPU can run the path. Kernels check it on every call
    /// (thousands per training step), so the answer is worked out once and
    /// kept in a static: the five `is_x86_feature_detected!` look-ups each
    /// time were about 1 % of a step's samples.
    pub fn supported(self) -> bool {
        /// Bit 0: AVX2 + FMA; bit 1: AVX-512; bit 7: filled in.
        static FEATURES: AtomicU8 = AtomicU8::new(0);
        let mut f = FEATURES.load(Ordering::Relaxed);
        if f == 0 {
            f = 0x80
                | u8::from(Self::detect(SimdPath::Avx2))
                | (u8::from(Self::detect(SimdPath::Avx512)) << 1);
            FEATURES.store(f, Ordering::Relaxed);
        }
        match self {
            SimdPath::Portable => true,
            SimdPath::Avx2 => f & 1 != 0,
            SimdPath::Avx512 => f & 2 != 0,
        }
    }

    /// The CPU's own answer for `path` (see [`SimdPath::supported`]).
    fn detect(path: SimdPath) -> bool {
        match path {
            SimdPath::Portable => true,
            #[cfg(target_arch = "x86_64")]
            SimdPath::Avx2 => {
                std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
            }
            #[cfg(target_arch = "x86_64")]
            SimdPath::Avx512 => {
                Self::detect(SimdPath::Avx2)
                    && std::arch::is_x86_feature_detected!("avx512f")
                    && std::arch::is_x86_feature_detected!("avx512bw")
                    && std::arch::is_x86_feature_detected!("avx512dq")
                    && std::arch::is_x86_feature_detected!("avx512vl")
            }
            #[cfg(not(target_arch = "x86_64"))]
            _ => false,
        }
    }

    /// The best path this CPU supports.
    pub fn best() -> SimdPath {
        Self::ALL.into_iter().find(|p| p.supported()).unwrap_or(SimdPath::Portable)
    }

    /// The CPU features a path needs, for error messages.
    fn features(self) -> &'static str {
        match self {
            SimdPath::Avx512 => "AVX-512 F/BW/DQ/VL",
            SimdPath::Avx2 => "AVX2 + FMA",
            SimdPath::Portable => "nothing",
        }
    }
}

impl std::fmt::Display for SimdPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for SimdPath {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        Self::ALL.into_iter().find(|p| p.name() == s.trim().to_ascii_lowercase()).ok_or_else(|| {
            Error::Config(format!("unknown SIMD path `{s}` (expected avx512, avx2 or portable)"))
        })
    }
}

/// As its name (`"avx2"`), e.g. in `bench --json`.
impl serde::Serialize for SimdPath {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

/// The environment variable that forces a path.
pub const ENV: &str = "LWF_SIMD";

/// The chosen path (`code`), 0 until the first [`active`] or [`set_path`].
static ACTIVE: AtomicU8 = AtomicU8::new(0);

fn code(p: SimdPath) -> u8 {
    match p {
        SimdPath::Avx512 => 1,
        SimdPath::Avx2 => 2,
        SimdPath::Portable => 3,
    }
}

/// `p` if this CPU has it, otherwise the one-line error naming what it lacks.
pub fn check(p: SimdPath) -> Result<SimdPath, Error> {
    if p.supported() {
        Ok(p)
    } else {
        Err(Error::Config(format!(
            "SIMD path {p} needs {}, which this CPU lacks (best available: {})",
            p.features(),
            SimdPath::best()
        )))
    }
}

/// Forces the kernels onto `p` for the rest of the process (the CLI's
/// `--simd`; it wins over `LWF_SIMD`). Fails, changing nothing, when the CPU
/// lacks `p`. Meant to be called once, before any work: kernels running
/// meanwhile may use either path.
pub fn set_path(p: SimdPath) -> Result<SimdPath, Error> {
    check(p)?;
    ACTIVE.store(code(p), Ordering::Relaxed);
    Ok(p)
}

/// The path from `LWF_SIMD` if set (checked against the CPU), otherwise the
/// best this CPU supports. Does not change the active path.
pub fn from_env() -> Result<SimdPath, Error> {
    match std::env::var(ENV) {
        Ok(v) if !v.trim().is_empty() => {
            let p: SimdPath = v.parse().map_err(|e| Error::Config(format!("{ENV}: {e}")))?;
            check(p).map_err(|e| Error::Config(format!("{ENV}={v}: {e}")))
        }
        _ => Ok(SimdPath::best()),
    }
}

/// What the CLI calls once at start-up: `flag` (`--simd`) if given, else
/// `LWF_SIMD`, else the best path; the result becomes the active path.
/// Errors are one line, fit for the user.
pub fn configure(flag: Option<SimdPath>) -> Result<SimdPath, Error> {
    let p = match flag {
        Some(p) => p,
        None => from_env()?,
    };
    set_path(p)
}

/// The path every hand-written kernel runs on. The first call without an
/// earlier [`set_path`] resolves it from `LWF_SIMD` (panicking with the
/// one-line message if that names an unknown path or one this CPU lacks: a
/// library user who sets the variable wants to know it was not honoured).
pub fn active() -> SimdPath {
    match ACTIVE.load(Ordering::Relaxed) {
        1 => SimdPath::Avx512,
        2 => SimdPath::Avx2,
        3 => SimdPath::Portable,
        _ => {
            let p = from_env().unwrap_or_else(|e| panic!("{e}"));
            // Another thread may have resolved (or set) it meanwhile; keep
            // the first, so every kernel of the process agrees.
            match ACTIVE.compare_exchange(0, code(p), Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => p,
                Err(_) => active(),
            }
        }
    }
}

/// Runs `$body` compiled for the given path (default: [`active`]): inside an
/// AVX-512 or an AVX2 + FMA `#[target_feature]` function, or as plain code.
/// The body's loops must be `#[inline(always)]` functions or inline code to
/// be vectorised for the path: a called function that is not inlined keeps
/// its baseline code. That holds for the closure around the body too:
/// without `#[inline(always)]` LLVM outlines a large one (it did once the
/// Winograd output transform grew a pooling branch), and the whole body
/// silently ran as SSE2. The body is only auto-vectorised, never hand-written
/// intrinsics, so it computes the same bits on every path (no FMA
/// contraction in Rust).
macro_rules! with_simd {
    ($body:expr) => {
        with_simd!($crate::backend::cpu::simd::active(); $body)
    };
    ($path:expr; $body:expr) => {{
        #[cfg(target_arch = "x86_64")]
        {
            #[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx2,fma")]
            unsafe fn avx512<R>(f: impl FnOnce() -> R) -> R {
                f()
            }
            #[target_feature(enable = "avx2,fma")]
            unsafe fn avx2<R>(f: impl FnOnce() -> R) -> R {
                f()
            }
            match $path {
                $crate::backend::cpu::simd::SimdPath::Avx512
                    if $crate::backend::cpu::simd::SimdPath::Avx512.supported() =>
                {
                    // SAFETY: the features `avx512` was compiled for were just checked.
                    unsafe {
                        avx512(
                            #[inline(always)]
                            || $body,
                        )
                    }
                }
                $crate::backend::cpu::simd::SimdPath::Avx2
                    if $crate::backend::cpu::simd::SimdPath::Avx2.supported() =>
                {
                    // SAFETY: the features `avx2` was compiled for were just checked.
                    unsafe {
                        avx2(
                            #[inline(always)]
                            || $body,
                        )
                    }
                }
                // Portable, or a path this CPU lacks (only a caller that
                // built one by hand; `set_path` refuses them).
                _ => $body,
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            let _ = $path;
            $body
        }
    }};
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_unknown_is_one_line() {
        for p in SimdPath::ALL {
            assert_eq!(p.name().parse::<SimdPath>().unwrap(), p);
        }
        assert_eq!(" AVX2 ".parse::<SimdPath>().unwrap(), SimdPath::Avx2);
        let e = "sse9".parse::<SimdPath>().unwrap_err().to_string();
        assert!(e.contains("sse9") && !e.contains('\n'), "{e}");
    }

    #[test]
    fn best_is_supported_and_unsupported_is_refused() {
        let best = SimdPath::best();
        eprintln!("this CPU: best SIMD path {best}, active {}", active());
        assert!(best.supported() && check(best).is_ok() && check(SimdPath::Portable).is_ok());
        // Every path better than the best is one this CPU lacks: refused
        // with a message naming it (none on an AVX-512 machine).
        for p in SimdPath::ALL.into_iter().take_while(|&p| p != best) {
            let e = check(p).unwrap_err().to_string();
            eprintln!("refused as expected: {e}");
            assert!(e.contains(p.name()) && !e.contains('\n'), "{e}");
        }
    }
}
