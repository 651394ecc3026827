//! The task loop of an experiment: for each seed, train task 1 once (it is the
//! same for every method, as in the reference), then for each method copy
//! that model and learn the remaining tasks one by one, evaluating after each.

use super::classifier::ClassifierKind;
use super::eval::{evaluate, Accuracies};
use super::methods::{
    check_freeze_layers, learn_task, streams, task_stats, train_first_task, MethodState, TaskContext,
    TaskReport,
};
use super::select::{learn_task_selected, SelectGrid};
use super::selection::Selection;
use super::stats::{cosine, ClassStats, StatsKind};
use super::train::Trainer;
use super::{Hyper, Method, Observer};
use crate::backend::Backend;
use crate::data::split::{task_view, TaskView};
use crate::data::Dataset;
use crate::data::Normalization;
use crate::error::{Error, Result};
use crate::nn::{ArchKind, Net};
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
    /// The model every run trains.
    pub arch: ArchKind,
    /// Keep only the first N training images of each task (quick runs, tests).
    pub train_limit: Option<usize>,
    /// Keep only the first N test images of each class.
    pub test_limit: Option<usize>,
    /// `--select`: LwF's λ_o (T, lr) chosen per task from these grids.
    pub select: Option<SelectGrid>,
}

/// The state after one task.
#[derive(Clone, Debug)]
pub struct TaskRecord {
    pub acc: Accuracies,
    /// Its timing's `eval_seconds` is the evaluation's below.
    pub report: TaskReport,
    /// What `--select` tried and chose for this task.
    pub selection: Option<Selection>,
    /// How far the stored old-class means are from the truth (after tasks ≥ 2).
    pub drift_check: Option<DriftCheck>,
}

/// A measurement only an experiment can make, because it still has the old
/// tasks' images: the old classes' means recomputed on them under the new
/// trunk, against the stored ones. No classifier ever reads it.
#[derive(Clone, Debug, PartialEq)]
pub struct DriftCheck {
    /// Mean over old classes of cos(stored mean after compensation, recomputed mean).
    pub compensated_cosine: f64,
    /// The same for the means as they were before this task (no compensation).
    pub uncompensated_cosine: f64,
    /// Class-IL of NCM with the old means recomputed on the old images: the
    /// ceiling of the statistics route.
    pub ncm_recomputed_class_il: f64,
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
    let mut runs = Vec::new();
    run_experiment_with(b, data, cfg, obs, &|_, _| false, &mut |run| {
        runs.push(run);
        Ok(())
    })?;
    Ok(runs)
}

/// [`run_experiment`], handing each run to `on_run` as soon as it is done
/// (so an interrupted experiment keeps its finished runs) and leaving out the
/// runs `skip` names (a resumed experiment); a seed whose runs are all
/// skipped does not train its first task.
pub fn run_experiment_with<B: Backend>(
    b: &B,
    data: &Dataset,
    cfg: &ExperimentConfig,
    obs: &dyn Observer,
    skip: &dyn Fn(Method, u64) -> bool,
    on_run: &mut dyn FnMut(MethodRun) -> Result<()>,
) -> Result<()> {
    cfg.hyper.validate()?;
    check_tasks(data, &cfg.tasks)?;
    let arch = cfg.arch.build([data.train.c, data.train.h, data.train.w]);
    arch.validate().map_err(Error::Config)?;
    let mut views: Vec<TaskView> = cfg.tasks.iter().map(|t| task_view(&data.train, t)).collect();
    if let Some(n) = cfg.train_limit {
        views = views.into_iter().map(|v| v.limit(n)).collect();
    }
    // As `train` would: the first task's images set the normalisation.
    let norm = data.norm_for(&views[0]);
    let test = match cfg.test_limit {
        Some(n) => per_class_prefix(&data.test, n),
        None => data.test.clone(),
    };
    for &seed in &cfg.seeds {
        if cfg.methods.iter().all(|&m| skip(m, seed)) {
            continue;
        }
        let mut tr = Trainer::new(b.clone());
        let cx = TaskContext { split: &data.train, norm: &norm, hyper: &cfg.hyper, seed, obs };
        let mut base = Net::new(b, arch.clone(), &mut Rng::derive(seed, streams::TRUNK));
        for &m in &cfg.methods {
            check_freeze_layers(&base, m, &cfg.hyper)?;
        }
        let mut report = train_first_task(&mut tr, &mut base, &views[0], &cx)?;
        let t0 = Instant::now();
        let base_stats = task_stats(&mut tr, &base, &views[0], &cx, cfg.hyper.class_stats);
        report.timing.stats_seconds = t0.elapsed().as_secs_f64();
        let first =
            record(&mut tr, &base, &test, &norm, &cfg.tasks[..1], &cfg.hyper, report, Some(&base_stats));
        obs.note(&format!("[seed {seed}] task 1: accuracy {:.4}", first.acc.task_aware[0]));
        for &method in cfg.methods.iter().filter(|&&m| !skip(m, seed)) {
            let hyper = Hyper { head_mode: method.head_mode(cfg.hyper.head_mode), ..cfg.hyper.clone() };
            let mut net = base.duplicate(b);
            let mut state = MethodState { stats: Some(base_stats.clone()), ..MethodState::default() };
            let mut records = vec![first.clone()];
            for t in 1..cfg.tasks.len() {
                let before = state.stats.clone();
                let (report, selection) = match (&cfg.select, method) {
                    (Some(grid), Method::Lwf) => {
                        let (r, s) = learn_task_selected(
                            &mut tr,
                            &mut net,
                            t,
                            &views[t],
                            &views[..t],
                            &mut state,
                            &cx,
                            grid,
                        )?;
                        (r, Some(s))
                    }
                    _ => (
                        learn_task(&mut tr, &mut net, method, t, &views[t], &views[..t], &mut state, &cx)?,
                        None,
                    ),
                };
                let stats = state.stats.as_ref();
                let mut rec = record(&mut tr, &net, &test, &norm, &cfg.tasks[..=t], &hyper, report, stats);
                rec.selection = selection;
                if let (Some(before), Some(after)) = (before, stats) {
                    let (old, hyper) = (&views[..t], &hyper);
                    rec.drift_check =
                        Some(drift_check(&mut tr, &net, old, &test, cfg, hyper, &before, after, &cx));
                }
                let of = |k| rec.acc.of(k).map_or(f64::NAN, |c| c.overall);
                let (ncm, ncm_task) = (of(ClassifierKind::Ncm), of(ClassifierKind::NcmTask));
                obs.note(&format!(
                    "[seed {seed} {method}] after task {}: task-aware {:?} class-IL heads {:.4} ncm {:.4} ncm-task {:.4} ({:.1}s, {:.0} img/s)",
                    t + 1,
                    rec.acc.task_aware.iter().map(|a| (a * 1e4).round() / 1e4).collect::<Vec<_>>(),
                    rec.acc.class_il,
                    ncm,
                    ncm_task,
                    rec.report.timing.train_seconds,
                    rec.report.timing.images_per_second()
                ));
                records.push(rec);
            }
            on_run(MethodRun { method, seed, records })?;
        }
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn record<B: Backend>(
    tr: &mut Trainer<B>,
    net: &Net<B>,
    test: &crate::data::Split,
    norm: &Normalization,
    seen: &[Vec<u32>],
    hyper: &Hyper,
    mut report: TaskReport,
    stats: Option<&ClassStats>,
) -> TaskRecord {
    let start = Instant::now();
    let kinds = ClassifierKind::available(stats);
    let acc = evaluate(tr, net, test, norm, seen, hyper.head_mode, hyper.batch_size, stats, &kinds);
    report.timing.eval_seconds = start.elapsed().as_secs_f64();
    TaskRecord { acc, report, selection: None, drift_check: None }
}

/// Compare the stored old-class means with means recomputed on the old
/// tasks' training images under the current trunk (see [`DriftCheck`]).
#[allow(clippy::too_many_arguments)]
fn drift_check<B: Backend>(
    tr: &mut Trainer<B>,
    net: &Net<B>,
    old: &[TaskView],
    test: &crate::data::Split,
    cfg: &ExperimentConfig,
    hyper: &Hyper,
    before: &ClassStats,
    after: &ClassStats,
    cx: &TaskContext<'_>,
) -> DriftCheck {
    let mut oracle = ClassStats::empty(after.dim, StatsKind::Mean);
    for v in old {
        oracle.append(task_stats(tr, net, v, cx, StatsKind::Mean));
    }
    let n_old = oracle.classes.len();
    let avg_cos =
        |s: &ClassStats| (0..n_old).map(|k| cosine(s.mean(k), oracle.mean(k))).sum::<f64>() / n_old as f64;
    let (compensated_cosine, uncompensated_cosine) = (avg_cos(after), avg_cos(before));
    // The new classes' means as stored (they were measured on their images).
    let new_part = ClassStats {
        dim: after.dim,
        classes: after.classes[n_old..].to_vec(),
        counts: after.counts[n_old..].to_vec(),
        means: after.means[n_old * after.dim..].to_vec(),
        gauss: None,
    };
    oracle.append(new_part);
    let seen = &cfg.tasks[..=old.len()];
    let ncm = [ClassifierKind::Ncm];
    let acc = evaluate(tr, net, test, cx.norm, seen, hyper.head_mode, hyper.batch_size, Some(&oracle), &ncm);
    let ncm_recomputed_class_il = acc.of(ClassifierKind::Ncm).map_or(f64::NAN, |c| c.overall);
    DriftCheck { compensated_cosine, uncompensated_cosine, ncm_recomputed_class_il }
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
