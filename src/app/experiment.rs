//! `experiment` (methods × seeds on a protocol, optionally one shard of it)
//! and `merge` (shards or runs into one report).

use super::{check_limits, BackendChoice};
use crate::backend::Backend;
use crate::data::{self, Dataset, FolderOptions, Protocol};
use crate::error::{Error, Result};
use crate::incremental::protocol::{run_experiment, run_experiment_with, ExperimentConfig, MethodRun};
use crate::incremental::select::SelectGrid;
use crate::incremental::{Hyper, Method, Observer};
use crate::metrics::EngineInfo;
use crate::nn::ArchKind;
use std::path::{Path, PathBuf};

/// `experiment`: methods × seeds on a protocol; writes JSON, CSV and SVG.
pub struct ExperimentRequest {
    pub data: String,
    /// How an image folder is read.
    pub folder: FolderOptions,
    pub arch: ArchKind,
    pub protocol: Protocol,
    /// Explicit tasks instead of the protocol's.
    pub tasks: Option<Vec<Vec<u32>>>,
    pub methods: Vec<Method>,
    pub seeds: Vec<u64>,
    pub out: PathBuf,
    pub train_limit: Option<usize>,
    pub test_limit: Option<usize>,
    pub hyper: Hyper,
    /// Keep the runs already in `out` (same settings) and run the rest.
    pub resume: bool,
    /// Run only one share of the (seed, method) runs.
    pub shard: Option<Shard>,
    /// `--select`: choose LwF's λ_o (T, lr) per task without old data.
    pub select: Option<SelectGrid>,
}

/// `--shard i/n`: share `index` of `count`, index from 0 to count − 1, as
/// Slurm's `SLURM_ARRAY_TASK_ID` (with `--array=0-N`) and Kubernetes'
/// `JOB_COMPLETION_INDEX` count.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shard {
    pub index: usize,
    pub count: usize,
}

impl std::str::FromStr for Shard {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        let bad = || Error::Config(format!("--shard '{s}': expected i/n with 0 ≤ i < n, e.g. 0/4"));
        let (i, n) = s.split_once('/').ok_or_else(bad)?;
        let (index, count) = (i.trim().parse().map_err(|_| bad())?, n.trim().parse().map_err(|_| bad())?);
        if count == 0 || index >= count {
            return Err(bad());
        }
        Ok(Shard { index, count })
    }
}

/// Which shard a run belongs to: the runs in experiment order (seeds, then
/// methods), dealt round-robin, so every shard gets a similar mix.
fn shard_of(cfg: &ExperimentConfig, method: Method, seed: u64, n: usize) -> usize {
    let s = cfg.seeds.iter().position(|&x| x == seed).unwrap_or(0);
    let m = cfg.methods.iter().position(|&x| x == method).unwrap_or(0);
    (s * cfg.methods.len() + m) % n
}

/// `merge`: combine run files from several directories (e.g. shards).
pub fn merge(dirs: &[PathBuf], out: &Path) -> Result<String> {
    crate::results::merge(dirs, out)
}

/// Parse the request into a config against the loaded data.
pub fn experiment_config(req: &ExperimentRequest, data: &Dataset) -> Result<ExperimentConfig> {
    let (protocol, tasks) = match &req.tasks {
        Some(t) => ("custom".to_string(), t.clone()),
        None => (req.protocol.to_string(), req.protocol.tasks(data.num_classes)?),
    };
    if req.methods.is_empty() {
        return Err(Error::Config("--methods is empty".into()));
    }
    if req.seeds.is_empty() {
        return Err(Error::Config("--seeds is empty".into()));
    }
    if let Some(grid) = &req.select {
        grid.check(&req.hyper)?;
    }
    check_limits(&[("--train-limit", req.train_limit), ("--test-limit", req.test_limit)])?;
    Ok(ExperimentConfig {
        protocol,
        tasks,
        methods: req.methods.clone(),
        seeds: req.seeds.clone(),
        hyper: req.hyper.clone(),
        arch: req.arch,
        train_limit: req.train_limit,
        test_limit: req.test_limit,
        select: req.select.clone(),
    })
}

pub fn experiment(choice: BackendChoice, req: &ExperimentRequest, obs: &dyn Observer) -> Result<String> {
    crate::fsio::check_output_dir(&req.out)?;
    let data = data::load_with(&req.data, &req.folder)?;
    let cfg = experiment_config(req, &data)?;
    let mut results =
        if req.resume { crate::results::finished_runs(&req.out, &cfg, &data)? } else { Vec::new() };
    if req.resume {
        obs.note(&format!("resuming: {} finished runs kept from {}", results.len(), req.out.display()));
    }
    let done: Vec<(String, u64)> = results.iter().map(|r| (r.method.clone(), r.seed)).collect();
    let elsewhere =
        |m: Method, seed: u64| req.shard.is_some_and(|s| shard_of(&cfg, m, seed, s.count) != s.index);
    let skip = |m: Method, seed: u64| {
        elsewhere(m, seed) || done.iter().any(|(name, s)| name == m.name() && *s == seed)
    };
    if let Some(Shard { index: i, count: n }) = req.shard {
        let mine = cfg.seeds.iter().flat_map(|&s| cfg.methods.iter().map(move |&m| (m, s)));
        if mine.filter(|&(m, s)| !elsewhere(m, s)).count() == 0 {
            return Ok(format!(
                "shard {i}/{n}: no run falls to this shard (the experiment has fewer runs than shards)"
            ));
        }
    }
    let engine = on_backend!(choice, b => {
        let engine = EngineInfo::new(choice.kind(), b.name());
        run_experiment_with(&b, &data, &cfg, obs, &skip, &mut |run| {
            if let Some(why) = b.fault() {
                return Err(Error::Device(why));
            }
            results.push(crate::results::write_run(&req.out, &cfg, &data, &engine, &run)?);
            Ok(())
        })?;
        Ok(engine)
    })?;
    crate::results::write_reports(&req.out, &cfg, &data, &engine.device, results)
}

/// For tests and tools: the runs of an experiment without writing anything.
pub fn experiment_runs(
    choice: BackendChoice,
    data: &Dataset,
    cfg: &ExperimentConfig,
    obs: &dyn Observer,
) -> Result<Vec<MethodRun>> {
    on_backend!(choice, b => run_experiment(&b, data, cfg, obs))
}
