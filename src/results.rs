//! Turning an experiment's runs into reports: one JSON per method and seed
//! (the reference's field names and units), written as soon as the run is
//! done; then a CSV of every accuracy, a summary CSV, an SVG plot, and the
//! comparison table printed at the end. A resumed experiment reads back the
//! runs it already finished (checked to be of the same settings).

use crate::data::Dataset;
use crate::error::{Error, Result};
use crate::fsio::create_dir_all;
use crate::incremental::classifier::ClassifierKind;
use crate::incremental::protocol::{ExperimentConfig, MethodRun};
use crate::metrics::{
    self, AccMatrix, ClassifierCurve, EngineInfo, RunParts, RunResult, StatsRecord, TaskTiming,
};
use std::path::{Path, PathBuf};

/// The settings a run's JSON records under `config`: the hyper-parameters,
/// the data, the limits and the thread count (which changes the bits).
pub fn run_config(cfg: &ExperimentConfig, data: &Dataset) -> serde_json::Value {
    let mut config = serde_json::to_value(&cfg.hyper).expect("serialisable hyper-parameters");
    if let Some(obj) = config.as_object_mut() {
        obj.insert("data".into(), data.root.display().to_string().into());
        obj.insert("train_limit".into(), cfg.train_limit.into());
        obj.insert("test_limit".into(), cfg.test_limit.into());
        obj.insert("threads".into(), rayon::current_num_threads().into());
    }
    config
}

/// Where the JSON of one run goes.
pub fn run_path(out: &Path, protocol: &str, method: &str, seed: u64) -> PathBuf {
    out.join(format!("{protocol}_{method}_seed{seed}.json"))
}

/// Report one finished run and write its JSON under `out` (atomically).
pub fn write_run(
    out: &Path,
    cfg: &ExperimentConfig,
    data: &Dataset,
    device: &str,
    run: &MethodRun,
) -> Result<RunResult> {
    let r = run_result(cfg, data, device, run)?;
    create_dir_all(out)?;
    metrics::write_json(&run_path(out, &cfg.protocol, &r.method, r.seed), &r)?;
    Ok(r)
}

/// The runs of `cfg` already under `out` (a resumed experiment keeps them).
/// A run file of other settings is an error naming it.
pub fn finished_runs(out: &Path, cfg: &ExperimentConfig, data: &Dataset) -> Result<Vec<RunResult>> {
    let config = run_config(cfg, data);
    let mut done = Vec::new();
    for &seed in &cfg.seeds {
        for m in &cfg.methods {
            let path = run_path(out, &cfg.protocol, m.name(), seed);
            if !path.exists() {
                continue;
            }
            let r = metrics::read_json(&path)?;
            if r.config != config || r.tasks != cfg.tasks || r.protocol != cfg.protocol {
                return Err(Error::format(
                    &path,
                    "was run with other settings (config, tasks or protocol differ): remove it or choose another --out",
                ));
            }
            done.push(r);
        }
    }
    Ok(done)
}

/// Build the report of one run.
pub fn run_result(
    cfg: &ExperimentConfig,
    data: &Dataset,
    device: &str,
    run: &MethodRun,
) -> Result<RunResult> {
    let rows = |f: &dyn Fn(&crate::incremental::eval::Accuracies) -> Vec<f64>| -> Vec<Vec<f64>> {
        run.records.iter().map(|r| f(&r.acc)).collect()
    };
    let config = run_config(cfg, data);
    let backend = if device.starts_with("cpu") { "cpu" } else { "wgpu" };
    let engine = EngineInfo {
        backend: backend.into(),
        device: device.into(),
        threads: (backend == "cpu").then(rayon::current_num_threads),
    };
    let versions = engine.versions();
    let mut result = RunResult::from_parts(RunParts {
        method: run.method.name().into(),
        protocol: cfg.protocol.clone(),
        seed: run.seed,
        tasks: cfg.tasks.clone(),
        config,
        task_aware: AccMatrix::from_lower(&rows(&|a| a.task_aware.clone()))?,
        class_il_per_task: AccMatrix::from_lower(&rows(&|a| a.class_il_per_task.clone()))?,
        class_il_after_each_task: run.records.iter().map(|r| r.acc.class_il).collect(),
        task_timings: run
            .records
            .iter()
            .map(|r| TaskTiming {
                train_seconds: r.report.train_seconds,
                epoch_seconds: r.report.epoch_seconds.clone(),
                train_images: r.report.images as u64,
                eval_seconds: r.eval_seconds,
                yo_record_seconds: (r.report.yo_record_seconds > 0.0).then_some(r.report.yo_record_seconds),
            })
            .collect(),
        engine,
        versions,
    })?;
    // A classifier enters the table when every task of the run evaluated it.
    for kind in ClassifierKind::ALL {
        let curve: Option<Vec<&crate::incremental::eval::ClassIl>> =
            run.records.iter().map(|r| r.acc.of(kind)).collect();
        if let Some(c) = curve {
            let after: Vec<f64> = c.iter().map(|x| x.overall).collect();
            let last = c.last().map(|x| x.per_task.clone()).unwrap_or_default();
            result.class_il_by_classifier.insert(kind.name().into(), ClassifierCurve::new(after, last));
        }
    }
    if run.records.iter().any(|r| r.acc.of(ClassifierKind::Ncm).is_some()) {
        result.class_stats_per_task = run
            .records
            .iter()
            .map(|r| {
                let d = r.report.drift.as_ref();
                let c = r.drift_check.as_ref();
                StatsRecord {
                    sdc_sigma: d.map(|d| d.sigma),
                    sdc_sigma_tukey: d.and_then(|d| d.sigma_tukey),
                    sdc_sigma_chosen_by: d.map(|d| d.how.clone()),
                    sdc_sigma_trials: d.map(|d| d.trials.clone()).unwrap_or_default(),
                    sdc_mean_shift: d.map(|d| d.mean_shift),
                    old_mean_cosine_compensated: c.map(|c| c.compensated_cosine),
                    old_mean_cosine_uncompensated: c.map(|c| c.uncompensated_cosine),
                    ncm_recomputed_class_il: c.map(|c| c.ncm_recomputed_class_il),
                }
            })
            .collect();
        result.timings.class_stats_seconds = run.records.iter().map(|r| r.report.stats_seconds).collect();
    }
    Ok(result)
}

/// Write the reports that combine the runs (CSVs, plot) under `out`, the runs
/// put in experiment order (seeds, then methods), and return the text to
/// print: the comparison table, then each run's accuracy matrix.
pub fn write_reports(
    out: &Path,
    cfg: &ExperimentConfig,
    data: &Dataset,
    device: &str,
    mut results: Vec<RunResult>,
) -> Result<String> {
    let order = |r: &RunResult| {
        let s = cfg.seeds.iter().position(|&s| s == r.seed);
        let m = cfg.methods.iter().position(|m| m.name() == r.method);
        (s, m)
    };
    results.sort_by_key(order);
    create_dir_all(out)?;
    let p = &cfg.protocol;
    metrics::write_csv(&out.join(format!("{p}_accuracies.csv")), &results)?;
    metrics::write_summary_csv(&out.join(format!("{p}_summary.csv")), &results)?;
    metrics::write_classifier_csv(&out.join(format!("{p}_class_il_by_classifier.csv")), &results)?;
    metrics::write_plot_svg(&out.join(format!("{p}_accuracy.svg")), p, &results)?;
    let mut text = format!(
        "{p} on {} ({}), seeds {:?}; accuracies in %, mean ± std over seeds\n\n{}\n",
        data.name,
        device,
        cfg.seeds,
        metrics::comparison_table(&results)
    );
    if results.iter().any(|r| !r.class_il_by_classifier.is_empty()) {
        text += &format!(
            "\nclass-IL after the last task by classifier, % (old tasks' / new task's images); \
             ncm, mahalanobis and ncm-task use the stored class statistics, drift-compensated\n\n{}",
            metrics::classifier_table(&results)
        );
    }
    for r in &results {
        text += &format!(
            "\n{} seed {}: task-aware accuracy (rows: after task t)\n{}\n",
            r.method,
            r.seed,
            metrics::matrix_table(r)
        );
    }
    text += &format!("\nwrote {}", out.display());
    Ok(text)
}
