//! Experiment reports (in progress).
use crate::data::Dataset;
use crate::error::Result;
use crate::incremental::protocol::{ExperimentConfig, MethodRun};
use std::path::Path;

pub fn write_experiment(_out: &Path, _cfg: &ExperimentConfig, _data: &Dataset, _device: &str, runs: &[MethodRun]) -> Result<String> {
    Ok(format!("{runs:?}"))
}
