//! The user's verbs as library functions, one file per verb: they load and
//! check the inputs, run the work on the chosen backend and return reports
//! that the CLI prints. Every failure is an `Error` whose message is one line
//! naming the file and the problem; every output is written atomically, after
//! the work succeeded. The domain rules they call (methods, EWC's Fisher,
//! class statistics, data merging) live in the library modules, once.

use crate::backend::Backend;
use crate::checkpoint::Meta;
use crate::data::{self, Dataset, FolderOptions, Normalization, Split};
use crate::error::{Error, Result};
use crate::incremental::classifier::ClassifierKind;
use crate::incremental::eval::{evaluate, Accuracies};
use crate::incremental::methods::{validation_split, TaskContext};
use crate::incremental::session::Session;
use crate::incremental::stats::ClassStats;
use crate::incremental::train::Trainer;
use crate::incremental::unknown::{self, UnknownRule};
use crate::nn::{Arch, Net};
use std::path::{Path, PathBuf};

/// Which device runs the work (`--backend`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum BackendChoice {
    /// The CPU (rayon threads, SIMD kernels).
    Cpu,
    /// The CPU backend with every convolution on im2col + gemm (no Winograd,
    /// no direct path): the baseline `bench --im2col-only` measures against.
    #[value(skip)]
    CpuIm2col,
    /// A GPU through wgpu (Vulkan; Metal on macOS, DX12 or Vulkan on Windows).
    Wgpu,
}

impl BackendChoice {
    /// The backend's family as results report it: `cpu` or `wgpu`.
    pub fn kind(self) -> &'static str {
        match self {
            BackendChoice::Cpu | BackendChoice::CpuIm2col => "cpu",
            BackendChoice::Wgpu => "wgpu",
        }
    }
}

/// Run `$body` with `$b` bound to the chosen backend (generic code, two
/// monomorphisations).
macro_rules! on_backend {
    ($choice:expr, $b:ident => $body:expr) => {
        match $choice {
            BackendChoice::Cpu => {
                let $b = $crate::backend::CpuBackend::new();
                $body
            }
            BackendChoice::CpuIm2col => {
                let $b = $crate::backend::CpuBackend::im2col_only();
                $body
            }
            BackendChoice::Wgpu => {
                let $b = $crate::backend::wgpu::WgpuBackend::new()?;
                let result = $body;
                // A fault skips the device's work: whatever the verb computed
                // after it is not to be reported.
                match $crate::backend::Backend::fault(&$b) {
                    Some(why) => Err($crate::error::Error::Device(why)),
                    None => result,
                }
            }
        }
    };
}

/// Size rayon's global pool (0 = one thread per core). Call once, early.
pub fn set_threads(n: usize) -> Result<()> {
    if n == 0 {
        return Ok(());
    }
    rayon::ThreadPoolBuilder::new()
        .num_threads(n)
        .build_global()
        .map_err(|e| Error::Config(format!("--threads {n}: {e}")))
}

/// Checks that a model built for `arch` can read the images of `split`.
fn check_input(model: &Path, arch: &Arch, split: &Split, data: &Path) -> Result<()> {
    let got = [split.c, split.h, split.w];
    if got != arch.input {
        return Err(Error::checkpoint(
            model,
            format!(
                "the model takes {}×{}×{} images but {} has {}×{}×{}",
                arch.input[0],
                arch.input[1],
                arch.input[2],
                data.display(),
                got[0],
                got[1],
                got[2]
            ),
        ));
    }
    Ok(())
}

/// Load `spec` for a saved model: an image folder is decoded at the model's
/// input size and channel count (so `--image-size` need not be repeated; a
/// size given anyway that differs is then refused by [`check_input`]), and
/// its classes take the model's ids by name ([`Dataset::align_classes`]).
fn load_for_model(spec: &str, opts: &FolderOptions, meta: &Meta) -> Result<Dataset> {
    let [c, h, w] = meta.arch.input;
    let mut opts = opts.clone();
    opts.image_size.get_or_insert((h, w));
    if [1, 3].contains(&c) {
        opts.channels.get_or_insert(c);
    }
    let mut data = data::load_with(spec, &opts)?;
    data.align_classes(&meta.named_classes());
    Ok(data)
}

fn class_names(data: &Dataset, classes: &[u32]) -> Vec<String> {
    classes
        .iter()
        .map(|&c| data.class_names.get(c as usize).cloned().unwrap_or_else(|| format!("class {c}")))
        .collect()
}

/// `--checkpoint-every N` and `--resume FILE` of the verbs that train.
#[derive(Clone, Debug, Default)]
pub struct Resumable {
    /// Write the training state every N epochs (0: never).
    pub checkpoint_every: usize,
    pub resume: Option<PathBuf>,
}

impl Resumable {
    /// The session for a run whose output is `out`, or `None` when neither
    /// flag is given. The state lives beside the output (`OUT.state`) unless
    /// a resumed file names it.
    fn session(&self, out: &Path, run: serde_json::Value) -> Result<Option<Session>> {
        if self.checkpoint_every == 0 && self.resume.is_none() {
            return Ok(None);
        }
        let path = self.resume.clone().unwrap_or_else(|| {
            let mut name = out.as_os_str().to_owned();
            name.push(".state");
            PathBuf::from(name)
        });
        Session::new(path, self.checkpoint_every, run, self.resume.as_deref()).map(Some)
    }
}

/// "; validation accuracy X%" when the task had validation images.
fn validation_note(report: &crate::incremental::methods::TaskReport) -> String {
    report
        .final_validation_accuracy()
        .map_or(String::new(), |a| format!("; validation accuracy {:.2}%", 100.0 * a))
}

/// " with augmented views (crop,flip; live teacher)" when the training
/// step of `entry` augmented its images.
fn augment_note(entry: Option<&crate::checkpoint::HistoryEntry>) -> String {
    match entry.and_then(|e| e.augment.map(|a| (a, e.teacher))) {
        None => String::new(),
        Some((a, None)) => format!(" with augmented views ({a})"),
        Some((a, Some(t))) => format!(" with augmented views ({a}; {} teacher)", t.name()),
    }
}

/// The "none of these" rule of a model that has just learnt `view` (task
/// `t` of `cx`): calibrated on the task's validation images, else on its
/// training images. Old tasks' images are gone, so only this task's classes
/// set the threshold.
fn calibrate_unknown<B: Backend>(
    tr: &mut Trainer<B>,
    net: &Net<B>,
    tasks: &[Vec<u32>],
    stats: Option<&ClassStats>,
    view: &data::TaskView,
    cx: &TaskContext<'_>,
    t: usize,
) -> Option<UnknownRule> {
    let (train_part, val) = validation_split(view, cx, t);
    let (idx, which) =
        if val.indices.is_empty() { (train_part.indices, "training") } else { (val.indices, "validation") };
    let on = format!("{which} images of classes {}", data::format_classes(&view.classes));
    let feats = tr.features(net, cx.split, cx.norm, &idx, 128);
    let b = tr.b.clone();
    unknown::calibrate(&b, net, tasks, stats, &feats, idx.len(), cx.hyper.unknown_accept, on)
}

/// The summary's words for a model's "none of these" rule.
fn unknown_note(rule: Option<&UnknownRule>) -> String {
    rule.map_or(String::new(), |r| {
        format!(
            "; none of these: {} score above {:.3} (accepts {:.0}% of {} {})",
            r.score,
            r.threshold,
            100.0 * r.accept,
            r.calibration_images,
            r.calibrated_on
        )
    })
}

/// The run is complete: its training state is no longer needed.
fn finish_session<B: Backend>(tr: &Trainer<B>) {
    if let Some(s) = &tr.session {
        let _ = std::fs::remove_file(s.state_path());
    }
}

/// Evaluate on the tasks whose classes the test split holds; the others are NaN.
fn eval_present<B: Backend>(
    tr: &mut Trainer<B>,
    net: &Net<B>,
    meta: &Meta,
    test: &Split,
    norm: &Normalization,
    bs: usize,
    stats: Option<&ClassStats>,
) -> Accuracies {
    evaluate(tr, net, test, norm, &meta.tasks, meta.head_mode, bs, stats, &ClassifierKind::available(stats))
}

/// The classifier asked for, or the model's default; an error when the
/// checkpoint lacks what it needs.
fn choose_classifier(
    model: &Path,
    asked: Option<ClassifierKind>,
    stats: Option<&ClassStats>,
) -> Result<ClassifierKind> {
    let kind = asked.unwrap_or_else(|| ClassifierKind::default_for(stats));
    if !ClassifierKind::available(stats).contains(&kind) {
        let why = if stats.is_none() {
            "has no class statistics (imported without --data, or saved by an older version): only heads and \
             aligned-heads work"
                .to_string()
        } else {
            format!("has no {}", kind.needs().unwrap_or("statistics"))
        };
        return Err(Error::checkpoint(model, format!("--classifier {kind}: the model {why}")));
    }
    Ok(kind)
}

/// The one-line explanation eval and predict give for a model without class
/// statistics (an import without --data).
fn no_stats_note(stats: Option<&ClassStats>) -> Option<String> {
    stats.is_none().then(|| NO_STATS_NOTE.to_string())
}

/// A limit of 0 images would train or test on nothing: refused before any work.
fn check_limits(limits: &[(&str, Option<usize>)]) -> Result<()> {
    match limits.iter().find(|(_, v)| *v == Some(0)) {
        Some((flag, _)) => Err(Error::Config(format!("{flag} must be at least 1 (0 keeps no image)"))),
        None => Ok(()),
    }
}

/// Peak resident set size of this process in MB (Linux `VmHWM`), 0 elsewhere.
pub fn peak_rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

mod bench;
mod eval;
mod experiment;
mod export;
mod extend;
mod import;
mod predict;
mod train;

pub use bench::{bench, BenchReport};
pub use eval::{eval, EvalReport};
pub use experiment::{experiment, experiment_config, experiment_runs, merge, ExperimentRequest, Shard};
pub use export::{export, ExportReport};
pub use extend::{extend, ExtendRequest};
pub use import::{import, read_classes_file, ImportRequest, NO_STATS_NOTE};
pub use predict::{predict, Prediction, Predictions};
pub use train::{train, TrainRequest};
