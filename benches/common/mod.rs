//! Shared by the CPU benches: a criterion benchmark that also returns its
//! median, so a bench can print GFLOP/s, GB/s or images/s from it.

use criterion::measurement::WallTime;
use criterion::BenchmarkGroup;
use std::cell::RefCell;
use std::time::Instant;

/// Measured samples per benchmark (the groups set `sample_size` to this).
pub const SAMPLES: usize = 10;

/// Run `f` as a criterion benchmark and return its median time per call
/// (seconds) over the measured samples; `None` when criterion skipped it
/// (filtered out, or `--test` mode's single call).
pub fn bench(g: &mut BenchmarkGroup<'_, WallTime>, name: &str, mut f: impl FnMut()) -> Option<f64> {
    let times = RefCell::new(Vec::new());
    g.bench_function(name, |bch| {
        bch.iter_custom(|iters| {
            let start = Instant::now();
            for _ in 0..iters {
                f();
            }
            let el = start.elapsed();
            times.borrow_mut().push(el.as_secs_f64() / iters as f64);
            el
        })
    });
    // Warm-up calls come first; the last SAMPLES calls are the measurement.
    let t = times.into_inner();
    (t.len() > SAMPLES).then(|| {
        let mut s = t[t.len() - SAMPLES..].to_vec();
        s.sort_by(|a, b| a.total_cmp(b));
        (s[SAMPLES / 2 - 1] + s[SAMPLES / 2]) / 2.0
    })
}
