//! Turning an experiment's runs into reports: one JSON per method and seed
//! (the reference's field names and units), a CSV of every accuracy, a
//! summary CSV, an SVG plot, and the comparison table printed at the end.

use crate::data::Dataset;
use crate::error::Result;
use crate::fsio::create_dir_all;
use crate::incremental::classifier::ClassifierKind;
use crate::incremental::protocol::{ExperimentConfig, MethodRun};
use crate::metrics::{
    self, AccMatrix, ClassifierCurve, EngineInfo, RunParts, RunResult, StatsRecord, TaskTiming,
};
use std::path::Path;

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
    let mut config = serde_json::to_value(&cfg.hyper).expect("serialisable hyper-parameters");
    if let Some(obj) = config.as_object_mut() {
        obj.insert("data".into(), data.root.display().to_string().into());
        obj.insert("train_limit".into(), cfg.train_limit.into());
        obj.insert("test_limit".into(), cfg.test_limit.into());
        obj.insert("threads".into(), rayon::current_num_threads().into());
    }
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

/// Write every report of an experiment under `out` and return the text to
/// print: the comparison table, then each run's accuracy matrix.
pub fn write_experiment(
    out: &Path,
    cfg: &ExperimentConfig,
    data: &Dataset,
    device: &str,
    runs: &[MethodRun],
) -> Result<String> {
    let results = runs.iter().map(|r| run_result(cfg, data, device, r)).collect::<Result<Vec<_>>>()?;
    create_dir_all(out)?;
    let p = &cfg.protocol;
    for r in &results {
        metrics::write_json(&out.join(format!("{p}_{}_seed{}.json", r.method, r.seed)), r)?;
    }
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
