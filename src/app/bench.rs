//! `bench`: throughput of the three things an experiment spends its time on.

use super::{check_limits, peak_rss_mb, BackendChoice};
use crate::backend::Backend;
use crate::data::{self, Dataset, FolderOptions, Protocol, TaskView};
use crate::error::Result;
use crate::incremental::eval::evaluate;
use crate::incremental::methods::{learn_task, streams, train_first_task, MethodState, TaskContext};
use crate::incremental::train::Trainer;
use crate::incremental::{Hyper, Method, Observer};
use crate::nn::{ArchKind, Net};
use crate::rng::Rng;
use serde::Serialize;
use std::time::Instant;

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
    pub peak_rss_mb: f64,
    pub plain_seconds: f64,
    pub lwf_seconds: f64,
    pub eval_seconds: f64,
}

impl BenchReport {
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("serialisable")
    }
    pub fn to_table(&self) -> String {
        format!(
            "backend {} (rayon threads {}), batch {}\n\
             plain epoch     {:>9.0} images/s  ({:.2}s)\n\
             LwF phase       {:>9.0} images/s  ({:.2}s)\n\
             evaluation      {:>9.0} images/s  ({:.2}s)\n\
             peak RSS        {:>9.1} MB",
            self.backend,
            self.threads,
            self.batch_size,
            self.plain_epoch_images_per_second,
            self.plain_seconds,
            self.lwf_phase_images_per_second,
            self.lwf_seconds,
            self.eval_images_per_second,
            self.eval_seconds,
            self.peak_rss_mb
        )
    }
}

/// Time task 1's plain training, task 2's whole LwF phase and an evaluation
/// of the test set, with the same code and definitions as `experiment`.
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
    on_backend!(choice, b => bench_on(&b, &data, train_limit, hyper, arch, obs))
}

fn bench_on<B: Backend>(
    b: &B,
    data: &Dataset,
    train_limit: Option<usize>,
    hyper: &Hyper,
    arch: ArchKind,
    obs: &dyn Observer,
) -> Result<BenchReport> {
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
    let mut net = Net::new(b, arch, &mut Rng::derive(0, streams::TRUNK));
    let plain = train_first_task(&mut tr, &mut net, &views[0], &cx)?;
    let lwf =
        learn_task(&mut tr, &mut net, Method::Lwf, 1, &views[1], &[], &mut MethodState::default(), &cx)?;
    let start = Instant::now();
    let _ = evaluate(&mut tr, &net, &data.test, &norm, &tasks, hyper.head_mode, hyper.batch_size, None, &[]);
    let eval_seconds = start.elapsed().as_secs_f64();
    Ok(BenchReport {
        backend: b.name(),
        threads: rayon::current_num_threads(),
        batch_size: hyper.batch_size,
        plain_epoch_images_per_second: plain.timing.images_per_second(),
        lwf_phase_images_per_second: lwf.timing.images_per_second(),
        eval_images_per_second: data.test.len() as f64 / eval_seconds,
        peak_rss_mb: peak_rss_mb(),
        plain_seconds: plain.timing.train_seconds,
        lwf_seconds: lwf.timing.train_seconds,
        eval_seconds,
    })
}
