//! wgpu kernels and the cnn-s training step (`cargo bench --bench gpu`).
//!
//! Every timed iteration ends with a sync (a 1-element read-back), so the
//! times are GPU work, not command encoding. Throughput: sgemm and conv in
//! FLOPs (`Throughput::Elements`, printed as GFLOP/s), the KD kernel in bytes
//! moved (GB/s), the training step in images/s. On a software adapter
//! (lavapipe), or with `LWF_BENCH_QUICK=1`, sizes shrink so the run still
//! finishes in minutes.

use criterion::measurement::WallTime;
use criterion::{criterion_group, criterion_main, BenchmarkGroup, Criterion, SamplingMode, Throughput};
use lwf_engine::backend::wgpu::WgpuBackend;
use lwf_engine::backend::{Backend, Conv2dParams, CpuBackend, Gemm, SgdHyper};
use lwf_engine::nn::{Arch, Net};
use lwf_engine::optim::Sgd;
use lwf_engine::rng::Rng;
use lwf_engine::step::{sgd_step, BatchLoss, StepState, Targets};
use std::cell::Cell;
use std::time::{Duration, Instant};

struct Env {
    g: WgpuBackend,
    quick: bool,
}

fn env() -> Option<Env> {
    match WgpuBackend::new() {
        Ok(g) => {
            let quick = std::env::var_os("LWF_BENCH_QUICK").is_some() || g.is_software();
            eprintln!("wgpu bench on {}{}", g.gpu_info(), if quick { " (quick sizes)" } else { "" });
            Some(Env { g, quick })
        }
        Err(e) => {
            eprintln!("SKIPPED: wgpu benches need a GPU adapter: {e}");
            None
        }
    }
}

fn rand_vec(seed: u64, n: usize) -> Vec<f32> {
    let mut r = Rng::new(seed);
    (0..n).map(|_| r.uniform(-1.0, 1.0)).collect()
}

/// Wait for the GPU: read back one element of `b` (through a 1-element copy).
fn sync(g: &WgpuBackend, one: &mut <WgpuBackend as Backend>::Buf, b: &<WgpuBackend as Backend>::Buf) {
    g.copy(one, 0, b, 0, 1);
    std::hint::black_box(g.download(one));
}

fn group<'a>(c: &'a mut Criterion, name: &str, quick: bool) -> BenchmarkGroup<'a, WallTime> {
    let mut grp = c.benchmark_group(name);
    grp.sample_size(10).sampling_mode(SamplingMode::Flat);
    grp.warm_up_time(Duration::from_millis(if quick { 300 } else { 1000 }));
    grp.measurement_time(Duration::from_secs(if quick { 2 } else { 5 }));
    grp
}

/// Time `f` per iteration with `iter_custom`, keeping the best mean so it
/// can be printed in the unit that matters (GFLOP/s, GB/s, images/s).
/// Infinite when a criterion filter skipped the benchmark.
fn timed(grp: &mut BenchmarkGroup<'_, WallTime>, id: &str, mut f: impl FnMut()) -> f64 {
    let best = Cell::new(f64::INFINITY);
    grp.bench_function(id, |bch| {
        bch.iter_custom(|iters| {
            let t = Instant::now();
            for _ in 0..iters {
                f();
            }
            let el = t.elapsed();
            best.set(best.get().min(el.as_secs_f64() / iters as f64));
            el
        })
    });
    best.get()
}

/// Print a result line unless the benchmark was filtered out.
fn report(t: f64, line: impl FnOnce() -> String) {
    if t.is_finite() {
        println!("{}", line());
    }
}

fn sgemm(c: &mut Criterion) {
    let Some(Env { g, quick }) = env() else { return };
    let sizes: &[usize] = if quick { &[256, 512] } else { &[1024, 4096] };
    let mut grp = group(c, "wgpu sgemm", quick);
    for &s in sizes {
        let gm = Gemm::nn(s, s, s);
        let (a, b) = (g.upload(&rand_vec(1, s * s)), g.upload(&rand_vec(2, s * s)));
        let mut out = g.zeros(s * s);
        let mut one = g.zeros(1);
        grp.throughput(Throughput::Elements(gm.flops() as u64));
        let t = timed(&mut grp, &format!("{s}x{s}x{s}"), || {
            g.sgemm(&mut out, &a, &b, gm);
            sync(&g, &mut one, &out);
        });
        report(t, || format!("wgpu sgemm {s}³: {:.1} GFLOP/s ({:.3} ms)", gm.flops() / t / 1e9, t * 1e3));
    }
    grp.finish();
}

fn conv(c: &mut Criterion) {
    let Some(Env { g, quick }) = env() else { return };
    let n = if quick { 8 } else { 128 };
    let layers = [
        ("conv1", Conv2dParams { n, c: 1, h: 28, w: 28, oc: 32, kh: 3, kw: 3, sh: 1, sw: 1, ph: 1, pw: 1 }),
        ("conv2", Conv2dParams { n, c: 32, h: 14, w: 14, oc: 64, kh: 3, kw: 3, sh: 1, sw: 1, ph: 1, pw: 1 }),
    ];
    let mut grp = group(c, "wgpu conv (cnn-s)", quick);
    for (name, p) in layers {
        let x = g.upload(&rand_vec(1, p.x_len()));
        let w = g.upload(&rand_vec(2, p.w_len()));
        let dy = g.upload(&rand_vec(3, p.y_len()));
        let (mut y, mut dx, mut dw, mut one) =
            (g.zeros(p.y_len()), g.zeros(p.x_len()), g.zeros(p.w_len()), g.zeros(1));
        grp.throughput(Throughput::Elements(p.flops() as u64));
        let t = timed(&mut grp, &format!("{name} fwd n{n}"), || {
            g.conv2d_fwd(&mut y, &x, &w, &p);
            sync(&g, &mut one, &y);
        });
        report(t, || {
            format!("wgpu {name} fwd (batch {n}): {:.1} GFLOP/s ({:.3} ms)", p.flops() / t / 1e9, t * 1e3)
        });
        let t = timed(&mut grp, &format!("{name} bwd_data n{n}"), || {
            g.conv2d_bwd_data(&mut dx, &dy, &w, &p);
            sync(&g, &mut one, &dx);
        });
        report(t, || {
            format!(
                "wgpu {name} bwd_data (batch {n}): {:.1} GFLOP/s ({:.3} ms)",
                p.flops() / t / 1e9,
                t * 1e3
            )
        });
        let t = timed(&mut grp, &format!("{name} bwd_weight n{n}"), || {
            g.conv2d_bwd_weight(&mut dw, &x, &dy, &p);
            sync(&g, &mut one, &dw);
        });
        report(t, || {
            format!(
                "wgpu {name} bwd_weight (batch {n}): {:.1} GFLOP/s ({:.3} ms)",
                p.flops() / t / 1e9,
                t * 1e3
            )
        });
    }
    grp.finish();
}

fn kd(c: &mut Criterion) {
    let Some(Env { g, quick }) = env() else { return };
    let shapes: &[(usize, usize)] =
        if quick { &[(128, 1000), (1024, 1000)] } else { &[(128, 1000), (16384, 1000), (65536, 1000)] };
    // Launches per sync: the read-back's round trip (~0.1 ms on a discrete
    // GPU) would otherwise dominate and hide the kernel's bandwidth.
    const LAUNCHES: usize = 8;
    let mut grp = group(c, "wgpu kd_loss (fused)", quick);
    // The ceiling as wgpu reaches it on this device: a buffer-to-buffer copy
    // of as many bytes as the largest shape's four streams.
    let &(rows, cols) = shapes.last().expect("a shape");
    let n = rows * cols * 2;
    let (src, mut dst, mut one) = (g.upload(&rand_vec(5, n)), g.zeros(n), g.zeros(1));
    let bytes = (n * 4 * 2 * LAUNCHES) as u64;
    grp.throughput(Throughput::Bytes(bytes));
    let mb = (n * 4) >> 20;
    let t = timed(&mut grp, &format!("copy {mb} MB"), || {
        for _ in 0..LAUNCHES {
            g.copy(&mut dst, 0, &src, 0, n);
        }
        sync(&g, &mut one, &dst);
    });
    report(t, || format!("wgpu buffer copy {mb} MB: {:.1} GB/s (read + write)", bytes as f64 / t / 1e9));
    drop((src, dst));
    for &(rows, cols) in shapes {
        let zs = g.upload(&rand_vec(1, rows * cols));
        let zt = g.upload(&rand_vec(2, rows * cols));
        let (mut dz, mut loss, mut one) = (g.zeros(rows * cols), g.zeros(1), g.zeros(1));
        // zs and zt read, dzs read and written.
        let bytes = (rows * cols * 4 * 4 * LAUNCHES) as u64;
        grp.throughput(Throughput::Bytes(bytes));
        let t = timed(&mut grp, &format!("{rows}x{cols}"), || {
            for _ in 0..LAUNCHES {
                g.kd_loss(&mut dz, &mut loss, &zs, &zt, rows, cols, cols, 2.0, 1.0 / rows as f32);
            }
            sync(&g, &mut one, &loss);
        });
        report(t, || {
            format!(
                "wgpu kd_loss {rows}×{cols}: {:.1} GB/s ({:.3} ms per launch, {LAUNCHES} launches per sync)",
                bytes as f64 / t / 1e9,
                t * 1e3 / LAUNCHES as f64
            )
        });
    }
    grp.finish();
}

/// One LwF training step of cnn-s (CE on the new head, distillation on the
/// old one, backward, SGD), synced by reading the loss back.
struct Step<B: Backend> {
    net: Net<B>,
    st: StepState<B>,
    sgd: Sgd<B>,
    xs: Vec<f32>,
    zt: Vec<f32>,
    labels: Vec<u32>,
    batch: usize,
}

impl<B: Backend> Step<B> {
    fn new(b: &B, batch: usize) -> Self {
        let mut rng = Rng::new(0);
        let mut net = Net::new(b, Arch::cnn_s([1, 28, 28]), &mut rng);
        net.add_head(b, &mut rng, &[0, 1, 2, 3, 4]);
        net.add_head(b, &mut rng, &[5, 6, 7, 8, 9]);
        let labels = (0..batch).map(|i| (i % 5) as u32).collect();
        Step {
            net,
            st: StepState::default(),
            sgd: Sgd::new(SgdHyper { lr: 0.05, momentum: 0.9, weight_decay: 5e-4 }),
            xs: rand_vec(3, batch * 784),
            zt: rand_vec(4, batch * 5),
            labels,
            batch,
        }
    }

    fn run(&mut self, b: &B) -> f32 {
        let loss = BatchLoss {
            ce: vec![(1, self.labels.as_slice())],
            kd: vec![(0, 5)],
            targets: Targets::Recorded { logits: vec![self.zt.as_slice()], features: None },
            temperature: 2.0,
            kd_weight: 1.0,
            feature_weight: 0.0,
            kd_concat: None,
            feature_metric: None,
            anchors: None,
        };
        sgd_step(b, &mut self.st, &mut self.net, &mut self.sgd, &self.xs, [self.batch, 1, 28, 28], &loss)
    }
}

fn step(c: &mut Criterion) {
    let Some(Env { g, quick }) = env() else { return };
    let batch = if quick { 16 } else { 128 };
    let mut grp = group(c, "cnn-s training step", quick);
    grp.throughput(Throughput::Elements(batch as u64));
    let mut s = Step::new(&g, batch);
    let t = timed(&mut grp, &format!("wgpu batch {batch}"), || {
        std::hint::black_box(s.run(&g));
    });
    report(t, || {
        format!("wgpu cnn-s step (batch {batch}): {:.0} images/s ({:.3} ms)", batch as f64 / t, t * 1e3)
    });
    let cpu = CpuBackend::new();
    let mut s = Step::new(&cpu, batch);
    let tc = timed(&mut grp, &format!("cpu batch {batch}"), || {
        std::hint::black_box(s.run(&cpu));
    });
    report(tc, || {
        format!(
            "cpu  cnn-s step (batch {batch}): {:.0} images/s ({:.3} ms); wgpu/cpu = {:.2}×",
            batch as f64 / tc,
            tc * 1e3,
            tc / t
        )
    });
    grp.finish();
}

criterion_group!(benches, sgemm, conv, kd, step);
criterion_main!(benches);
