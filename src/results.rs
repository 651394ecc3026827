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
use crate::incremental::Method;
use crate::metrics::{self, AccMatrix, ClassifierCurve, EngineInfo, RunParts, RunResult, StatsRecord};
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
        if let Some(grid) = &cfg.select {
            obj.insert("select".into(), serde_json::to_value(grid).expect("serialisable grid"));
        }
        // Only when not the default: cnn-s runs keep the files written before
        // --arch existed, so those still resume and merge with new ones.
        if cfg.arch != crate::nn::ArchKind::default() {
            obj.insert("arch".into(), cfg.arch.name().into());
        }
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
    engine: &EngineInfo,
    run: &MethodRun,
) -> Result<RunResult> {
    let r = run_result(cfg, data, engine, run)?;
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
    engine: &EngineInfo,
    run: &MethodRun,
) -> Result<RunResult> {
    let rows = |f: &dyn Fn(&crate::incremental::eval::Accuracies) -> Vec<f64>| -> Vec<Vec<f64>> {
        run.records.iter().map(|r| f(&r.acc)).collect()
    };
    let config = run_config(cfg, data);
    let engine = engine.clone();
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
        task_timings: run.records.iter().map(|r| r.report.timing.clone()).collect(),
        engine,
        versions,
    })?;
    if run.records.iter().any(|r| !r.report.validation.is_empty()) {
        result.validation_per_task = run.records.iter().map(|r| r.report.validation.clone()).collect();
    }
    if run.records.iter().any(|r| r.selection.is_some()) {
        result.selection_per_task = run
            .records
            .iter()
            .map(|r| {
                r.selection
                    .as_ref()
                    .map_or(serde_json::Value::Null, |s| serde_json::to_value(s).expect("serialisable"))
            })
            .collect();
    }
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
        result.timings.class_stats_seconds =
            run.records.iter().map(|r| r.report.timing.stats_seconds).collect();
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
    combined_reports(out, &cfg.protocol, &data.name, device, &cfg.seeds, &results)
}

/// The reports that combine runs already in experiment order (an experiment's,
/// or a merge's): the CSVs and the plot under `out`, and the text to print.
pub fn combined_reports(
    out: &Path,
    protocol: &str,
    data_name: &str,
    device: &str,
    seeds: &[u64],
    results: &[RunResult],
) -> Result<String> {
    create_dir_all(out)?;
    let p = protocol;
    metrics::write_csv(&out.join(format!("{p}_accuracies.csv")), results)?;
    metrics::write_summary_csv(&out.join(format!("{p}_summary.csv")), results)?;
    metrics::write_classifier_csv(&out.join(format!("{p}_class_il_by_classifier.csv")), results)?;
    metrics::write_plot_svg(&out.join(format!("{p}_accuracy.svg")), p, results)?;
    let mut text = format!(
        "{p} on {} ({}), seeds {:?}; accuracies in %, mean ± std over seeds\n\n{}\n",
        data_name,
        device,
        seeds,
        metrics::comparison_table(results)
    );
    if results.iter().any(|r| !r.class_il_by_classifier.is_empty()) {
        text += &format!(
            "\nclass-IL after the last task by classifier, % (old tasks' / new task's images); \
             ncm, mahalanobis and ncm-task use the stored class statistics, drift-compensated\n\n{}",
            metrics::classifier_table(results)
        );
    }
    for r in results {
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

/// Whether `path` looks like a run's JSON (`PROTOCOL_METHOD_seedN.json`).
fn is_run_file(path: &Path) -> bool {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
    name.ends_with(".json") && name.contains("_seed")
}

/// A run without its timings, for comparing two copies of one run.
fn numbers(r: &RunResult) -> serde_json::Value {
    let mut v = serde_json::to_value(r).expect("serialisable run");
    if let Some(o) = v.as_object_mut() {
        o.remove("timings");
    }
    v
}

/// `merge`: combine the run files found in `dirs` (e.g. the shards of one
/// experiment) into one set of reports under `out`, and say which runs of
/// the methods × seeds grid are missing. Runs of different experiments, or
/// two copies of one run with different numbers, are an error naming both
/// files.
pub fn merge(dirs: &[PathBuf], out: &Path) -> Result<String> {
    crate::fsio::check_output_dir(out)?;
    let mut runs: Vec<(PathBuf, RunResult)> = Vec::new();
    for d in dirs {
        let mut files: Vec<PathBuf> = std::fs::read_dir(d)
            .map_err(|e| Error::io(d, e))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| is_run_file(p))
            .collect();
        files.sort();
        for f in files {
            let r = metrics::read_json(&f)?;
            runs.push((f, r));
        }
    }
    let Some((first_path, first)) = runs.first().cloned() else {
        let names: Vec<String> = dirs.iter().map(|d| d.display().to_string()).collect();
        return Err(Error::Config(format!(
            "no run files (PROTOCOL_METHOD_seedN.json) in {}",
            names.join(", ")
        )));
    };
    let mut kept: Vec<(PathBuf, RunResult)> = Vec::new();
    for (path, r) in runs {
        if r.protocol != first.protocol || r.tasks != first.tasks || r.config != first.config {
            return Err(Error::Config(format!(
                "{} and {} are runs of different experiments (protocol, tasks or config differ)",
                first_path.display(),
                path.display()
            )));
        }
        match kept.iter().find(|(_, k)| k.method == r.method && k.seed == r.seed) {
            Some((other, k)) if numbers(k) != numbers(&r) => {
                return Err(Error::Config(format!(
                    "{} and {} hold the same run ({} seed {}) with different numbers",
                    other.display(),
                    path.display(),
                    r.method,
                    r.seed
                )))
            }
            Some(_) => {}
            None => kept.push((path, r)),
        }
    }
    let method_rank = |m: &str| Method::ALL.iter().position(|k| k.name() == m).unwrap_or(usize::MAX);
    let mut methods: Vec<String> = kept.iter().map(|(_, r)| r.method.clone()).collect();
    methods.sort_by(|a, b| (method_rank(a), a).cmp(&(method_rank(b), b)));
    methods.dedup();
    let mut seeds: Vec<u64> = kept.iter().map(|(_, r)| r.seed).collect();
    seeds.sort_unstable();
    seeds.dedup();
    kept.sort_by_key(|(_, r)| (r.seed, method_rank(&r.method)));
    let missing: Vec<String> = seeds
        .iter()
        .flat_map(|&s| methods.iter().map(move |m| (m, s)))
        .filter(|(m, s)| !kept.iter().any(|(_, r)| &r.method == *m && r.seed == *s))
        .map(|(m, s)| format!("{m} seed {s}"))
        .collect();
    create_dir_all(out)?;
    // Each run file is copied as it is (atomically), not re-serialised.
    for (path, r) in &kept {
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        crate::fsio::write_atomic(&run_path(out, &r.protocol, &r.method, r.seed), &bytes)?;
    }
    let results: Vec<RunResult> = kept.into_iter().map(|(_, r)| r).collect();
    let data = first.config.get("data").and_then(|d| d.as_str()).unwrap_or("?").to_string();
    let text = combined_reports(out, &first.protocol, &data, &first.engine.device, &seeds, &results)?;
    let head = if missing.is_empty() {
        format!("merged {} runs, none missing\n\n", results.len())
    } else {
        format!("merged {} runs; missing: {}\n\n", results.len(), missing.join(", "))
    };
    Ok(head + &text)
}
