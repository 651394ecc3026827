//! What the machine can do, for `lwf-engine bench` to print beside its
//! images/s: the CPU model and a short FMA-throughput probe per SIMD path, on
//! one thread and on every rayon thread. The probe is a loop of independent
//! FMA chains with nothing to load, so it measures the core's peak FLOP rate
//! (and, on all threads, what the shared machine leaves us right now) — the
//! ceiling the kernels' GFLOP/s can be read against.

use super::simd::SimdPath;
use crate::error::Error;
use std::time::{Duration, Instant};

/// One probe result.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub struct FmaRate {
    /// The instruction set the FMA loop ran on.
    pub path: SimdPath,
    /// Threads running the loop at once.
    pub threads: usize,
    /// Multiply-adds count as two FLOPs.
    pub gflops: f64,
}

/// The CPU's model name from `/proc/cpuinfo` (its first `model name` line),
/// or `"unknown"` where there is none (other OSes, other architectures).
pub fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| parse_model(&info))
        .unwrap_or_else(|| "unknown".to_string())
}

fn parse_model(cpuinfo: &str) -> Option<String> {
    cpuinfo
        .lines()
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.trim() == "model name")
        .map(|(_, v)| v.trim().to_string())
        .filter(|v| !v.is_empty())
}

/// How long each timed repetition runs; the probe keeps the best of
/// `REPEATS`. Short slices, many of them: on a shared machine a 40 ms slice
/// was almost never undisturbed and read half the peak that 5 ms slices
/// find (and that the micro-gemm reaches).
const SLICE: Duration = Duration::from_millis(5);
const REPEATS: usize = 12;

/// Peak FMA GFLOP/s of `path` (AVX2 or AVX-512) on `threads` threads of
/// rayon's current pool at once (`threads` ≤ the pool's size; all of them
/// start together through `rayon::broadcast`, and the slowest sets the rate).
/// About `REPEATS × 5 ms`. An error for the portable path or one this CPU
/// lacks.
pub fn fma_gflops(path: SimdPath, threads: usize) -> Result<f64, Error> {
    if path == SimdPath::Portable {
        return Err(Error::Config("the FMA probe needs a vector path (avx2 or avx512)".into()));
    }
    super::simd::check(path)?;
    let threads = threads.clamp(1, rayon::current_num_threads());
    // Calibrate on this thread: iterations that take about one slice.
    let mut iters = 1u64 << 14;
    loop {
        let t = Instant::now();
        run(path, iters);
        if t.elapsed() >= SLICE / 4 || iters >= 1 << 40 {
            iters = (iters as f64 * SLICE.as_secs_f64() / t.elapsed().as_secs_f64().max(1e-9)) as u64;
            break;
        }
        iters *= 4;
    }
    let iters = iters.max(1);
    let mut best = 0.0f64;
    for _ in 0..REPEATS {
        let t = Instant::now();
        rayon::broadcast(|ctx| {
            if ctx.index() < threads {
                run(path, iters);
            }
        });
        let secs = t.elapsed().as_secs_f64();
        best = best.max(flops(path, iters) * threads as f64 / secs / 1e9);
    }
    Ok(best)
}

/// The probe `lwf-engine bench` prints: AVX2 and (where present) AVX-512,
/// each on one thread and on all of rayon's threads. About 0.3 s in all.
pub fn fma_probe() -> Vec<FmaRate> {
    let all = rayon::current_num_threads();
    let mut out = Vec::new();
    for path in [SimdPath::Avx2, SimdPath::Avx512] {
        if !path.supported() {
            continue;
        }
        let mut counts = vec![1];
        if all > 1 {
            counts.push(all);
        }
        for threads in counts {
            if let Ok(gflops) = fma_gflops(path, threads) {
                out.push(FmaRate { path, threads, gflops });
            }
        }
    }
    out
}

/// Independent accumulator chains: enough to cover FMA latency × pipes on
/// current cores (4 cycles × 2 pipes = 8), leaving registers for the
/// constants (16 ymm on AVX2, 32 zmm on AVX-512).
const CHAINS_AVX2: usize = 12;
const CHAINS_AVX512: usize = 24;

fn flops(path: SimdPath, iters: u64) -> f64 {
    let per_iter = match path {
        SimdPath::Avx512 => CHAINS_AVX512 * 16,
        _ => CHAINS_AVX2 * 8,
    };
    2.0 * per_iter as f64 * iters as f64
}

fn run(path: SimdPath, iters: u64) {
    match path {
        // SAFETY: `fma_gflops` checked (simd::check) that the CPU has AVX-512 F/BW/DQ/VL + FMA.
        #[cfg(target_arch = "x86_64")]
        SimdPath::Avx512 => unsafe { x86::fma512(iters) },
        // SAFETY: `fma_gflops` checked (simd::check) that the CPU has AVX2 + FMA.
        #[cfg(target_arch = "x86_64")]
        SimdPath::Avx2 => unsafe { x86::fma256(iters) },
        _ => unreachable!("fma_gflops refuses other paths"),
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{CHAINS_AVX2, CHAINS_AVX512};
    use std::arch::x86_64::*;
    use std::hint::black_box;

    // Each chain is `a = a·m + c` with m just below 1: it converges to a
    // finite value, so no lane ever becomes infinite or subnormal (either
    // could slow some cores down and measure that instead).

    /// # Safety
    /// The CPU must have AVX2 + FMA.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn fma256(iters: u64) {
        let (m, c) = (_mm256_set1_ps(black_box(0.999_99)), _mm256_set1_ps(black_box(1e-3)));
        let mut acc = [_mm256_set1_ps(black_box(1.0)); CHAINS_AVX2];
        for _ in 0..iters {
            for a in acc.iter_mut() {
                *a = _mm256_fmadd_ps(*a, m, c);
            }
        }
        black_box(acc);
    }

    /// # Safety
    /// The CPU must have AVX-512 F + FMA.
    #[target_feature(enable = "avx512f,avx2,fma")]
    pub unsafe fn fma512(iters: u64) {
        let (m, c) = (_mm512_set1_ps(black_box(0.999_99)), _mm512_set1_ps(black_box(1e-3)));
        let mut acc = [_mm512_set1_ps(black_box(1.0)); CHAINS_AVX512];
        for _ in 0..iters {
            for a in acc.iter_mut() {
                *a = _mm512_fmadd_ps(*a, m, c);
            }
        }
        black_box(acc);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_name_is_parsed_or_unknown() {
        let info = "processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC 9B45\nflags\t: fpu\n";
        assert_eq!(parse_model(info).as_deref(), Some("AMD EPYC 9B45"));
        assert_eq!(parse_model("processor : 0\n"), None);
        assert_eq!(parse_model("model name\t:   \n"), None);
        let here = cpu_model();
        eprintln!("cpu model: {here}");
        assert!(!here.is_empty());
    }

    /// The probe runs and gives a positive rate on every vector path this
    /// CPU has (no timing is asserted: the machine is shared), and refuses
    /// the portable path.
    #[test]
    fn probe_runs_on_supported_paths() {
        assert!(fma_gflops(SimdPath::Portable, 1).is_err());
        let rates = fma_probe();
        for r in &rates {
            eprintln!("fma probe: {} × {} threads: {:.1} GFLOP/s", r.path, r.threads, r.gflops);
            assert!(r.gflops > 0.0 && r.gflops.is_finite());
        }
        assert_eq!(rates.is_empty(), !SimdPath::Avx2.supported());
        if !SimdPath::Avx512.supported() {
            eprintln!("fma probe: NO AVX-512 on this CPU; only AVX2 was probed");
            assert!(fma_gflops(SimdPath::Avx512, 1).is_err());
        }
    }
}
