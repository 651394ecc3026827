//! The `lwf-engine` command line: the verbs and their flags (clap), the
//! dispatch to the library, progress bars, and the one-line error shape.

mod flags;
mod progress;
mod run;
mod verbs;

use clap::{Parser, Subcommand};
use std::process::ExitCode;
use verbs::*;

pub use run::run;

#[derive(Parser)]
#[command(
    name = "lwf-engine",
    version,
    about = "Add classes to a trained image classifier without forgetting the old ones \
(Learning without Forgetting), on a from-scratch engine with CPU and GPU (wgpu) kernels."
)]
pub struct Cli {
    #[command(subcommand)]
    pub cmd: Cmd,
}

#[derive(Subcommand)]
pub enum Cmd {
    /// Train a new classifier on some classes (the model you will later extend).
    Train(TrainArgs),
    /// Add new classes to a saved model using only the new data (LwF by default).
    Extend(ExtendArgs),
    /// Turn your own trained PyTorch classifier (a state_dict saved with
    /// safetensors) into a model that extend, eval and predict take.
    Import(ImportArgs),
    /// Accuracy of a saved model on the test split of a data set.
    Eval(EvalArgs),
    /// Class names and probabilities for each image of image files, folders or IDX/NPY files.
    Predict(PredictArgs),
    /// Write a saved model as one ONNX file (normalisation, trunk and classifier
    /// inside) for ONNX Runtime, OpenVINO, TensorRT or a browser.
    Export(ExportArgs),
    /// Compare methods on a protocol (two-task, splitN) over seeds; writes JSON, CSV and an SVG plot.
    Experiment(ExperimentArgs),
    /// Training and evaluation throughput (images/s) and peak memory.
    Bench(BenchArgs),
    /// Combine the run files of several experiment directories (e.g. shards) into one report.
    Merge(MergeArgs),
}

/// A panic (a broken invariant, a GPU device lost in a read-back) still ends
/// in one line on stderr, like every other error; nothing half-written is
/// left, since outputs are only renamed into place after the work.
pub fn one_line_panics() {
    std::panic::set_hook(Box::new(|info| {
        let payload = info.payload();
        let msg = payload
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown failure".into());
        let msg: Vec<&str> = msg.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
        let at = info
            .location()
            .map_or(String::new(), |l| format!(" (internal error at {}:{})", l.file(), l.line()));
        eprintln!("lwf-engine: error: {}{at}", msg.join(" "));
    }));
}

/// The parsed command line, or the exit code when there is nothing to run:
/// `--help` and `--version` print and succeed; a bad command line is one
/// line on stderr (clap's own message is several: usage, a tip) and exit 2.
pub fn parse() -> Result<Cli, ExitCode> {
    match Cli::try_parse() {
        Ok(cli) => Ok(cli),
        Err(e) if !e.use_stderr() => {
            let _ = e.print(); // --help, --version
            Err(ExitCode::SUCCESS)
        }
        Err(e) => {
            let text = e.render().to_string();
            let line: Vec<&str> = text
                .lines()
                .map(str::trim)
                .filter(|l| {
                    !l.is_empty() && !l.starts_with("Usage:") && !l.starts_with("For more information")
                })
                .collect();
            eprintln!("lwf-engine: {}", line.join(" "));
            Err(ExitCode::from(2))
        }
    }
}
