//! Turning an experiment's runs into reports: one JSON per method and seed
//! (the reference's field names and units), a CSV of every accuracy, a
//! summary CSV, an SVG plot, and the comparison table printed at the end.

use crate::data::Dataset;
use crate::error::Result;
use crate::fsio::create_dir_all;
use crate::incremental::protocol::{ExperimentConfig, MethodRun};
use crate::metrics::{self, AccMatrix, EngineInfo, RunParts, RunResult, TaskTiming};
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
    RunResult::from_parts(RunParts {
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
    })
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
    metrics::write_plot_svg(&out.join(format!("{p}_accuracy.svg")), p, &results)?;
    let mut text = format!(
        "{p} on {} ({}), seeds {:?}; accuracies in %, mean ± std over seeds\n\n{}\n",
        data.name,
        device,
        cfg.seeds,
        metrics::comparison_table(&results)
    );
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
