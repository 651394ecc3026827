//! The task loop of an experiment: for each seed, train task 1 once (it is the
//! same for every method, as in the reference), then for each method copy
//! that model and learn the remaining tasks one by one, evaluating after each.

use super::eval::{evaluate, Accuracies};
use super::methods::{learn_task, streams, train_first_task, MethodState, TaskContext, TaskReport};
use super::train::Trainer;
use super::{Hyper, Method, Observer};
use crate::backend::Backend;
use crate::data::split::{task_view, TaskView};
use crate::data::Dataset;
use crate::error::{Error, Result};
use crate::nn::{Arch, Net};
use crate::rng::Rng;
use std::time::Instant;

/// What an experiment runs.
#[derive(Clone, Debug)]
pub struct ExperimentConfig {
    /// Protocol name for the reports ("two-task", "split5", "custom").
    pub protocol: String,
    pub tasks: Vec<Vec<u32>>,
    pub methods: Vec<Method>,
    pub seeds: Vec<u64>,
    pub hyper: Hyper,
    /// Keep only the first N training images of each task (quick runs, tests).
    pub train_limit: Option<usize>,
    /// Keep only the first N test images of each class.
    pub test_limit: Option<usize>,
}

/// The state after one task.
#[derive(Clone, Debug)]
pub struct TaskRecord {
    pub acc: Accuracies,
    pub report: TaskReport,
    pub eval_seconds: f64,
}

/// One method under one seed: a record per task.
#[derive(Clone, Debug)]
pub struct MethodRun {
    pub method: Method,
    pub seed: u64,
    pub records: Vec<TaskRecord>,
}

/// Check that every task's classes exist in the data and tasks don't overlap.
pub fn check_tasks(data: &Dataset, tasks: &[Vec<u32>]) -> Result<()> {
    if tasks.len() < 2 {
        return Err(Error::Config(format!("an experiment needs at least 2 tasks, got {}", tasks.len())));
    }
    for t in tasks {
        crate::data::split::check_classes_present(&data.train, t, &data.root.display().to_string())?;
    }
    Ok(())
}

/// Run every method and seed of `cfg` on `data`.
pub fn run_experiment<B: Backend>(
    b: &B,
    data: &Dataset,
    cfg: &ExperimentConfig,
    obs: &dyn Observer,
) -> Result<Vec<MethodRun>> {
    cfg.hyper.validate()?;
    check_tasks(data, &cfg.tasks)?;
    let arch = Arch::cnn_s([data.train.c, data.train.h, data.train.w]);
    arch.validate().map_err(Error::Config)?;
    let mut views: Vec<TaskView> = cfg.tasks.iter().map(|t| task_view(&data.train, t)).collect();
    if let Some(n) = cfg.train_limit {
        views = views.into_iter().map(|v| v.limit(n)).collect();
    }
    let test = match cfg.test_limit {
        Some(n) => per_class_prefix(&data.test, n),
        None => data.test.clone(),
    };
    let mut runs = Vec::new();
    for &seed in &cfg.seeds {
        let mut tr = Trainer::new(b.clone());
        let cx = TaskContext { split: &data.train, norm: data.norm, hyper: &cfg.hyper, seed, obs };
        let mut base = Net::new(b, arch.clone(), &mut Rng::derive(seed, streams::TRUNK));
        let report = train_first_task(&mut tr, &mut base, &views[0], &cx)?;
        let first = record(&mut tr, &base, &test, data, &cfg.tasks[..1], &cfg.hyper, report);
        obs.note(&format!("[seed {seed}] task 1: accuracy {:.4}", first.acc.task_aware[0]));
        for &method in &cfg.methods {
            let mut net = base.duplicate(b);
            let mut state = MethodState::default();
            let mut records = vec![first.clone()];
            for t in 1..cfg.tasks.len() {
                let report =
                    learn_task(&mut tr, &mut net, method, t, &views[t], &views[..t], &mut state, &cx)?;
                let rec = record(&mut tr, &net, &test, data, &cfg.tasks[..=t], &cfg.hyper, report);
                obs.note(&format!(
                    "[seed {seed} {method}] after task {}: task-aware {:?} class-IL {:.4} ({:.1}s, {:.0} img/s)",
                    t + 1,
                    rec.acc.task_aware.iter().map(|a| (a * 1e4).round() / 1e4).collect::<Vec<_>>(),
                    rec.acc.class_il,
                    rec.report.train_seconds,
                    rec.report.images_per_second()
                ));
                records.push(rec);
            }
            runs.push(MethodRun { method, seed, records });
        }
    }
    Ok(runs)
}

fn record<B: Backend>(
    tr: &mut Trainer<B>,
    net: &Net<B>,
    test: &crate::data::Split,
    data: &Dataset,
    seen: &[Vec<u32>],
    hyper: &Hyper,
    report: TaskReport,
) -> TaskRecord {
    let start = Instant::now();
    let acc = evaluate(tr, net, test, data.norm, seen, hyper.head_mode, hyper.batch_size);
    TaskRecord { acc, report, eval_seconds: start.elapsed().as_secs_f64() }
}

/// The first `n` test images of each class, in data order.
fn per_class_prefix(split: &crate::data::Split, n: usize) -> crate::data::Split {
    let mut taken = std::collections::HashMap::new();
    let keep: Vec<usize> = (0..split.len())
        .filter(|&i| {
            let c = taken.entry(split.labels[i]).or_insert(0usize);
            *c += 1;
            *c <= n
        })
        .collect();
    split.subset(&keep)
}
