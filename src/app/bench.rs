//! `bench`: throughput of the three things an experiment spends its time on,
//! read against what the machine can do (an FMA probe), and inference at the
//! batch sizes users run.

use super::{check_limits, peak_rss_mb, BackendChoice};
use crate::autodiff::Workspace;
use crate::backend::cpu::probe::{self, FmaRate};
use crate::backend::cpu::simd::{self, SimdPath};
use crate::backend::Backend;
use crate::data::{self, Dataset, FolderOptions, Normalization, Protocol, Split, TaskView};
use crate::error::{Error, Result};
use crate::incremental::eval::{evaluate, HeadArgmax};
use crate::incremental::methods::{
    learn_task, lwf_phase_flops, streams, train_first_task, MethodState, TaskContext,
};
use crate::incremental::train::Trainer;
use crate::incremental::{HeadMode, Hyper, Method, Observer};
use crate::nn::{ArchKind, Net};
use crate::rng::Rng;
use serde::Serialize;
use std::time::Instant;

/// Inference throughput at one batch size and thread count.
#[derive(Clone, Debug, Serialize)]
pub struct EvalRate {
    pub batch: usize,
    pub threads: usize,
    pub images_per_second: f64,
}

/// `bench`: throughput of the three things an experiment spends its time on.
#[derive(Clone, Debug, Serialize)]
pub struct BenchReport {
    pub backend: String,
    pub threads: usize,
    pub batch_size: usize,
    /// Task 1 (classes 0-4) plain training, images/s over its epochs.
    pub plain_epoch_images_per_second: f64,
    /// Task 2's whole LwF phase: Y_o recording + warm-up + epochs.
    pub lwf_phase_images_per_second: f64,
    /// Inference over the whole test set.
    pub eval_images_per_second: f64,
    /// Peak RSS of the protocol (read before the batch-size sweep).
    pub peak_rss_mb: f64,
    pub plain_seconds: f64,
    pub lwf_seconds: f64,
    pub eval_seconds: f64,
    /// The CPU's model name (`/proc/cpuinfo`).
    pub cpu_model: String,
    /// The instruction set the CPU kernels ran on (`--simd`, `LWF_SIMD`).
    pub simd: SimdPath,
    /// FMA-throughput probe: AVX2 and AVX-512 where present, on one thread
    /// and on all of them, measured before the training.
    pub fma_probe: Vec<FmaRate>,
    /// The peak the fractions below are read against: the all-threads probe
    /// figure of the active path (of the best probed path when the kernels
    /// run portable code, which has no probe); null on the GPU backend.
    pub peak_gflops: Option<f64>,
    pub peak_path: Option<SimdPath>,
    /// Direct-convolution FLOPs of one plain training image (`Arch::train_flops`).
    pub plain_flops_per_image: f64,
    /// Of one new image over the LwF phase (`lwf_phase_flops`), all epochs.
    pub lwf_flops_per_image: f64,
    pub plain_epoch_gflops: f64,
    pub lwf_phase_gflops: f64,
    pub plain_epoch_peak_fraction: Option<f64>,
    pub lwf_phase_peak_fraction: Option<f64>,
    /// Inference (trunk, heads, per-row argmax: `evaluate`'s step) at batch
    /// sizes 1, 32, 128 and 1000, each on one thread and on all of them.
    pub eval_by_batch: Vec<EvalRate>,
}

impl BenchReport {
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("serialisable")
    }
    pub fn to_table(&self) -> String {
        // Per path: "avx512 265 / 518" (1 thread / all threads).
        let mut probe: Vec<String> = Vec::new();
        for path in SimdPath::ALL {
            let rates: Vec<String> = self
                .fma_probe
                .iter()
                .filter(|r| r.path == path)
                .map(|r| format!("{:.0}", r.gflops))
                .collect();
            if !rates.is_empty() {
                probe.push(format!("{path} {}", rates.join(" / ")));
            }
        }
        let peak = match (self.peak_gflops, self.peak_path) {
            (Some(g), Some(p)) => format!("peak {g:.0} GFLOP/s ({p}, all threads)"),
            _ => "no CPU peak (GPU backend or no vector path)".to_string(),
        };
        let frac = |f: Option<f64>| f.map_or(String::new(), |f| format!("  {:>4.1}% of peak", 100.0 * f));
        let mut s = format!(
            "cpu {} (kernels: {})\n\
             FMA probe       {} GFLOP/s (1 / {} threads); {peak}\n\
             backend {} (rayon threads {}), batch {}\n\
             plain epoch     {:>9.0} images/s  ({:.2}s)  {:>6.1} GFLOP/s{}\n\
             LwF phase       {:>9.0} images/s  ({:.2}s)  {:>6.1} GFLOP/s{}\n\
             evaluation      {:>9.0} images/s  ({:.2}s)\n\
             peak RSS        {:>9.1} MB",
            self.cpu_model,
            self.simd,
            if probe.is_empty() { "none".to_string() } else { probe.join(", ") },
            self.threads,
            self.backend,
            self.threads,
            self.batch_size,
            self.plain_epoch_images_per_second,
            self.plain_seconds,
            self.plain_epoch_gflops,
            frac(self.plain_epoch_peak_fraction),
            self.lwf_phase_images_per_second,
            self.lwf_seconds,
            self.lwf_phase_gflops,
            frac(self.lwf_phase_peak_fraction),
            self.eval_images_per_second,
            self.eval_seconds,
            self.peak_rss_mb
        );
        let mut threads: Vec<usize> = self.eval_by_batch.iter().map(|r| r.threads).collect();
        threads.sort_unstable();
        threads.dedup();
        s.push_str("\ninference images/s by batch size:\n  batch");
        for t in &threads {
            s.push_str(&format!(" {:>12}", format!("{t} thread{}", if *t == 1 { "" } else { "s" })));
        }
        let mut batches: Vec<usize> = self.eval_by_batch.iter().map(|r| r.batch).collect();
        batches.dedup();
        for batch in batches {
            s.push_str(&format!("\n  {batch:>5}"));
            for t in &threads {
                let r = self.eval_by_batch.iter().find(|r| r.batch == batch && r.threads == *t);
                s.push_str(&format!(" {:>12.0}", r.map_or(f64::NAN, |r| r.images_per_second)));
            }
        }
        s
    }
}

/// Batch sizes of the inference table: one image at a time (an
/// interactive `predict`), small and large batches, and `eval`'s 1000.
pub const EVAL_BATCHES: [usize; 4] = [1, 32, 128, 1000];

/// Time task 1's plain training, task 2's whole LwF phase and an evaluation
/// of the test set, with the same code and definitions as `experiment`; then
/// inference at [`EVAL_BATCHES`].
pub fn bench(
    choice: BackendChoice,
    data_spec: &str,
    folder: &FolderOptions,
    train_limit: Option<usize>,
    hyper: &Hyper,
    arch: ArchKind,
    obs: &dyn Observer,
) -> Result<BenchReport> {
    check_limits(&[("--train-limit", train_limit)])?;
    let data = data::load_with(data_spec, folder)?;
    on_backend!(choice, b => bench_on(&b, choice, &data, train_limit, hyper, arch, obs))
}

fn bench_on<B: Backend>(
    b: &B,
    choice: BackendChoice,
    data: &Dataset,
    train_limit: Option<usize>,
    hyper: &Hyper,
    arch: ArchKind,
    obs: &dyn Observer,
) -> Result<BenchReport> {
    // The probe first, while nothing else of ours runs.
    let fma = probe::fma_probe();
    let active = simd::active();
    let all = rayon::current_num_threads();
    let peak = if choice.kind() == "cpu" { peak_of(&fma, active, all) } else { None };

    let tasks = Protocol::TwoTask.tasks(data.num_classes)?;
    let arch = arch.build([data.train.c, data.train.h, data.train.w]);
    arch.validate().map_err(crate::error::Error::Config)?;
    let views: Vec<TaskView> = tasks
        .iter()
        .map(|t| {
            let v = data::task_view(&data.train, t);
            match train_limit {
                Some(n) => v.limit(n),
                None => v,
            }
        })
        .collect();
    let mut tr = Trainer::new(b.clone());
    let norm = data.norm_for(&views[0]);
    let cx = TaskContext { split: &data.train, norm: &norm, hyper, seed: 0, obs };
    let mut net = Net::new(b, arch.clone(), &mut Rng::derive(0, streams::TRUNK));
    let plain = train_first_task(&mut tr, &mut net, &views[0], &cx)?;
    let lwf =
        learn_task(&mut tr, &mut net, Method::Lwf, 1, &views[1], &[], &mut MethodState::default(), &cx)?;
    let start = Instant::now();
    let _ = evaluate(&mut tr, &net, &data.test, &norm, &tasks, hyper.head_mode, hyper.batch_size, None, &[]);
    let eval_seconds = start.elapsed().as_secs_f64();

    let plain_flops_per_image = arch.train_flops(&[tasks[0].len()]);
    let lwf_flops_per_image = lwf_phase_flops(
        &arch,
        Method::Lwf.head_mode(hyper.head_mode),
        tasks[0].len(),
        tasks[1].len(),
        hyper.warmup_epochs,
        hyper.epochs,
    );
    let gflops = |flops: f64, secs: f64| if secs > 0.0 { flops / secs / 1e9 } else { 0.0 };
    let plain_epoch_gflops =
        gflops(plain_flops_per_image * plain.timing.train_images as f64, plain.timing.train_seconds);
    // The phase's training images count every epoch's pass; the FLOPs per
    // image already sum the epochs, so divide by their number.
    let passes = (hyper.warmup_epochs + hyper.epochs).max(1) as f64;
    let lwf_phase_gflops =
        gflops(lwf_flops_per_image * lwf.timing.train_images as f64 / passes, lwf.timing.train_seconds);

    // Before the batch sweep (batch 1000 needs more memory than the
    // protocol): the figure compares with the reference's, which stops here.
    let peak_rss = peak_rss_mb();
    let mut eval_by_batch = Vec::new();
    let mut thread_counts = vec![1];
    if all > 1 {
        thread_counts.push(all);
    }
    for batch in EVAL_BATCHES {
        for &threads in &thread_counts {
            let images_per_second =
                inference_rate(b, &net, &data.test, &norm, &tasks, hyper.head_mode, batch, threads)?;
            eval_by_batch.push(EvalRate { batch, threads, images_per_second });
        }
    }

    let fraction = |g: f64| peak.map(|(p, _)| g / p);
    Ok(BenchReport {
        backend: b.name(),
        threads: all,
        batch_size: hyper.batch_size,
        plain_epoch_images_per_second: plain.timing.images_per_second(),
        lwf_phase_images_per_second: lwf.timing.images_per_second(),
        eval_images_per_second: data.test.len() as f64 / eval_seconds,
        peak_rss_mb: peak_rss,
        plain_seconds: plain.timing.train_seconds,
        lwf_seconds: lwf.timing.train_seconds,
        eval_seconds,
        cpu_model: probe::cpu_model(),
        simd: active,
        fma_probe: fma,
        peak_gflops: peak.map(|p| p.0),
        peak_path: peak.map(|p| p.1),
        plain_flops_per_image,
        lwf_flops_per_image,
        plain_epoch_gflops,
        lwf_phase_gflops,
        plain_epoch_peak_fraction: fraction(plain_epoch_gflops),
        lwf_phase_peak_fraction: fraction(lwf_phase_gflops),
        eval_by_batch,
    })
}

/// The all-threads probe figure of `active`, or of the best probed path when
/// `active` has none (portable code: its ceiling is not what the machine
/// offers, and a forced portable run is read against what it gave up).
fn peak_of(probe: &[FmaRate], active: SimdPath, threads: usize) -> Option<(f64, SimdPath)> {
    let on = |path: SimdPath| probe.iter().find(|r| r.path == path && r.threads == threads);
    on(active).or_else(|| SimdPath::ALL.into_iter().find_map(on)).map(|r| (r.gflops, r.path))
}

/// Images per second of `evaluate`'s inference step at `batch` images per
/// call on a local pool of `threads`, over a fixed slice of the test set
/// (256 images at batch 1, otherwise whole batches of about 2000), normalised
/// beforehand: what is timed is the forward pass and the argmax. One batch
/// runs first, untimed, to fill the workspace; after it no call allocates.
#[allow(clippy::too_many_arguments)]
fn inference_rate<B: Backend>(
    b: &B,
    net: &Net<B>,
    test: &Split,
    norm: &Normalization,
    tasks: &[Vec<u32>],
    mode: HeadMode,
    batch: usize,
    threads: usize,
) -> Result<f64> {
    let want = if batch == 1 { 256 } else { 2000 };
    let batches = (want.min(test.len()) / batch).max(1);
    let count = (batches * batch).min(test.len());
    let len = test.image_len();
    let mut xs = vec![0.0; count * len];
    test.fill_batch(&(0..count).collect::<Vec<_>>(), norm, &mut xs);
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .map_err(|e| Error::Config(format!("a {threads}-thread pool for the inference bench: {e}")))?;
    let seconds = pool.install(|| {
        let mut ws = Workspace::new();
        let mut step = HeadArgmax::for_tasks(b, net, tasks, mode, batch);
        let dims = |n: usize| [n, test.c, test.h, test.w];
        let first = batch.min(count);
        step.run(&mut ws, net, &xs[..first * len], dims(first), None);
        let start = Instant::now();
        for chunk in xs.chunks(batch * len) {
            step.run(&mut ws, net, chunk, dims(chunk.len() / len), None);
        }
        start.elapsed().as_secs_f64()
    });
    Ok(count as f64 / seconds.max(1e-9))
}
