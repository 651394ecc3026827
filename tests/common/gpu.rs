//! Helpers for the GPU tests: one shared `WgpuBackend`, the skip rule, a
//! proptest runner and `assert_close` with a max-diff report.

#![allow(dead_code)]

use lwf_engine::backend::wgpu::WgpuBackend;
use lwf_engine::rng::Rng;
use proptest::strategy::Strategy;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use std::io::Write;
use std::sync::OnceLock;

/// The shared device, or `None` (after a loud SKIPPED line) when this
/// machine has no GPU adapter. With `LWF_REQUIRE_GPU=1` (CI sets it, and CI
/// installs Mesa's software Vulkan) a missing adapter fails the test instead.
pub fn gpu() -> Option<&'static WgpuBackend> {
    static GPU: OnceLock<Result<WgpuBackend, String>> = OnceLock::new();
    match GPU.get_or_init(|| WgpuBackend::new().map_err(|e| e.to_string())) {
        Ok(b) => Some(b),
        Err(e) if !gpu_required() => {
            report_skip(e);
            None
        }
        Err(e) => panic!("the wgpu backend did not open: {e}\n(LWF_REQUIRE_GPU=1 is set, so a missing adapter is an error)"),
    }
}

/// GPU tests in the parity binary (counted from its source, for the summary line).
const GPU_TESTS: usize = {
    let src = include_str!("../parity.rs").as_bytes();
    let pat = b"#[test]";
    let mut i = 0;
    let mut n = 0;
    while i + pat.len() <= src.len() {
        let mut j = 0;
        while j < pat.len() && src[i + j] == pat[j] {
            j += 1;
        }
        if j == pat.len() {
            n += 1;
        }
        i += 1;
    }
    n
};

/// One summary line for the binary, then one line per skipped test, straight
/// to fd 2 (the harness captures eprintln!, and a skip must be seen).
fn report_skip(e: &str) {
    static SUMMARY: std::sync::Once = std::sync::Once::new();
    static SEEN: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());
    SUMMARY.call_once(|| {
        let line = format!(
            "SKIPPED: all {GPU_TESTS} GPU tests of this binary (no GPU adapter: {e}). To run them, install a \
             Vulkan driver (Linux without a GPU: apt-get install mesa-vulkan-drivers); LWF_REQUIRE_GPU=1 makes \
             a missing adapter an error (CI sets it).\n"
        );
        let _ = std::io::stderr().write_all(line.as_bytes());
    });
    let name = std::thread::current().name().unwrap_or("a GPU test").to_string();
    let mut seen = SEEN.lock().unwrap_or_else(|p| p.into_inner());
    if !seen.contains(&name) {
        let _ = std::io::stderr().write_all(format!("SKIPPED {name}: no GPU adapter\n").as_bytes());
        seen.push(name);
    }
}

/// The same device with the workgroup-tiled gemm kernels forced (a real
/// GPU's default; lavapipe otherwise uses `gemm_reg`), so both are tested.
pub fn gpu_tiled() -> Option<&'static WgpuBackend> {
    static TILED: OnceLock<WgpuBackend> = OnceLock::new();
    let g = gpu()?;
    Some(TILED.get_or_init(|| g.clone().force_tiled_gemm()))
}

fn gpu_required() -> bool {
    std::env::var("LWF_REQUIRE_GPU").is_ok_and(|v| v == "1")
}

/// Run `f` on `cases` random values of `strat` with the shared device.
pub fn check<S: Strategy>(
    cases: u32,
    strat: S,
    f: impl Fn(&WgpuBackend, S::Value) -> Result<(), TestCaseError>,
) where
    S::Value: std::fmt::Debug,
{
    let Some(g) = gpu() else { return };
    run(g, cases, strat, f);
}

/// `check` on both gemm paths: the adapter's default and the tiled kernels.
pub fn check_both<S: Strategy>(
    cases: u32,
    strat: S,
    f: impl Fn(&WgpuBackend, S::Value) -> Result<(), TestCaseError>,
) where
    S::Value: std::fmt::Debug,
{
    let (Some(g), Some(t)) = (gpu(), gpu_tiled()) else { return };
    run(g, cases, &strat, &f);
    run(t, cases, &strat, &f);
}

fn run<S: Strategy>(
    g: &WgpuBackend,
    cases: u32,
    strat: S,
    f: impl Fn(&WgpuBackend, S::Value) -> Result<(), TestCaseError>,
) where
    S::Value: std::fmt::Debug,
{
    let config = Config { cases, max_shrink_iters: 64, failure_persistence: None, ..Config::default() };
    let mut runner = TestRunner::new(config);
    if let Err(e) = runner.run(&strat, |v| f(g, v)) {
        panic!("{e}");
    }
}

/// `n` values uniform in `[lo, hi)` from `seed`.
pub fn rand_vec(seed: u64, n: usize, lo: f32, hi: f32) -> Vec<f32> {
    let mut r = Rng::new(seed);
    (0..n).map(|_| r.uniform(lo, hi)).collect()
}

/// Elementwise `|got − want| ≤ atol + rtol·|want|` (NaN only matches NaN).
/// On failure: the max difference, the number of mismatches and the first ones.
pub fn close(what: &str, got: &[f32], want: &[f32], atol: f32, rtol: f32) -> Result<(), TestCaseError> {
    if got.len() != want.len() {
        return Err(TestCaseError::fail(format!("{what}: length {} vs {}", got.len(), want.len())));
    }
    let mut bad = Vec::new();
    let mut max_diff = 0.0f32;
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let ok = if w.is_nan() || g.is_nan() {
            w.is_nan() && g.is_nan()
        } else {
            let d = (g - w).abs();
            max_diff = max_diff.max(d);
            d <= atol + rtol * w.abs() || g == w
        };
        if !ok {
            bad.push(i);
        }
    }
    if bad.is_empty() {
        return Ok(());
    }
    let first: Vec<String> =
        bad.iter().take(6).map(|&i| format!("[{i}] got {} want {}", got[i], want[i])).collect();
    Err(TestCaseError::fail(format!(
        "{what}: {} of {} elements differ (atol {atol}, rtol {rtol}); max |diff| {max_diff}; first: {}",
        bad.len(),
        got.len(),
        first.join(", ")
    )))
}

/// `close` for whole-test (non-proptest) checks: panics with the report.
pub fn assert_close(what: &str, got: &[f32], want: &[f32], atol: f32, rtol: f32) {
    if let Err(e) = close(what, got, want, atol, rtol) {
        panic!("{e}");
    }
}
