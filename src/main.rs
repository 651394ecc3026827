//! The `lwf-engine` command line: parse, call the library, print. All the
//! work lives in the library; errors become one line and a non-zero exit.

use clap::{Args, Parser, Subcommand};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use lwf_engine::app::{self, BackendChoice, Shard};
use lwf_engine::backend::cpu::simd::{self, SimdPath};
use lwf_engine::data::{ClassList, FolderOptions, Protocol, TaskList};
use lwf_engine::incremental::classifier::ClassifierKind;
use lwf_engine::incremental::select::SelectGrid;
use lwf_engine::incremental::stats::{Sigma, StatsKind};
use lwf_engine::incremental::{CovDrift, HeadMode, Hyper, Method, Observer, Ssl};
use lwf_engine::nn::{ArchKind, BnPolicy};
use std::cell::RefCell;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "lwf-engine",
    version,
    about = "Add classes to a trained image classifier without forgetting the old ones \
(Learning without Forgetting), on a from-scratch engine with CPU and GPU (wgpu) kernels."
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
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

#[derive(Args)]
struct MergeArgs {
    /// Directories holding run files (PROTOCOL_METHOD_seedN.json).
    #[arg(required = true)]
    dirs: Vec<PathBuf>,
    /// Directory for the combined JSON, CSV and SVG.
    #[arg(long)]
    out: PathBuf,
}

#[derive(Args, Clone)]
struct Common {
    /// Compute backend.
    #[arg(long, value_enum, default_value_t = BackendChoice::Cpu)]
    backend: BackendChoice,
    /// CPU threads (rayon); 0 = one per core.
    #[arg(long, default_value_t = 0)]
    threads: usize,
    /// Instruction set of the CPU kernels (default: LWF_SIMD, else the best
    /// this CPU has); a path the CPU lacks is an error.
    #[arg(long, value_enum)]
    simd: Option<SimdPath>,
}

/// `--data` and how an image folder is read (IDX/NPY data ignore the rest).
#[derive(Args, Clone)]
struct DataArgs {
    /// Data: `fashion-mnist` (shipped), a directory of IDX or NPY files, or an
    /// image folder: one sub-folder of PNG/JPEG images per class (DIR/<class>/),
    /// or DIR/train/<class>/ and DIR/test/<class>/.
    #[arg(long, default_value = "fashion-mnist")]
    data: String,
    /// Image folder without train/ and test/: the share of each class's
    /// images held out for testing (seeded, the same split every run).
    #[arg(long, default_value_t = 0.2, value_parser = parse_fraction)]
    test_fraction: f64,
    /// Image folder: resize every image to HxW (or N for N×N). Default: the
    /// most common size; for a saved model (extend, eval), the model's.
    #[arg(long, value_name = "HxW", value_parser = parse_image_size)]
    image_size: Option<(usize, usize)>,
    /// Image folder: refuse files that are not .png/.jpg/.jpeg instead of
    /// skipping them with a warning.
    #[arg(long)]
    strict: bool,
}

impl DataArgs {
    fn folder(&self) -> FolderOptions {
        FolderOptions {
            test_fraction: self.test_fraction,
            image_size: self.image_size,
            strict: self.strict,
            ..FolderOptions::default()
        }
    }
}

fn parse_fraction(s: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(f) if f > 0.0 && f < 1.0 => Ok(f),
        _ => Err(format!("expected a fraction above 0 and below 1, e.g. 0.2, got '{s}'")),
    }
}

/// `HxW`, `H×W` or `N` (N×N), each at least 1.
fn parse_image_size(s: &str) -> Result<(usize, usize), String> {
    let bad = || format!("expected HxW or N with sides of at least 1, e.g. 32x32 or 32, got '{s}'");
    let side = |t: &str| t.trim().parse::<usize>().ok().filter(|&v| v >= 1).ok_or_else(bad);
    match s.split_once(['x', 'X', '×']) {
        Some((h, w)) => Ok((side(h)?, side(w)?)),
        None => side(s).map(|n| (n, n)),
    }
}

#[derive(Args, Clone)]
struct HyperArgs {
    /// Epochs per task.
    #[arg(long, default_value_t = 3)]
    epochs: usize,
    /// LwF warm-up epochs (only the new head trains).
    #[arg(long, default_value_t = 1)]
    warmup_epochs: usize,
    #[arg(long, default_value_t = 128)]
    batch_size: usize,
    /// SGD learning rate.
    #[arg(long, default_value_t = 0.05)]
    lr: f32,
    #[arg(long, default_value_t = 0.9)]
    momentum: f32,
    #[arg(long, default_value_t = 5e-4)]
    weight_decay: f32,
    /// Distillation temperature T (≥ 1).
    #[arg(long, default_value_t = 2.0)]
    temperature: f32,
    /// λ_o: weight of the distillation loss on the old outputs.
    #[arg(long, default_value_t = 1.0)]
    lambda_o: f32,
    /// Multiply the distillation loss by T² (Hinton et al.).
    #[arg(long)]
    kd_t2: bool,
    /// λ of the l2 method's pull towards the old trunk.
    #[arg(long, default_value_t = 0.01)]
    lambda_l2: f32,
    /// λ of EWC's Fisher-weighted pull.
    #[arg(long, default_value_t = 100.0)]
    lambda_ewc: f32,
    /// Images used to estimate EWC's Fisher after a task.
    #[arg(long, default_value_t = 1000)]
    ewc_samples: usize,
    /// Trunk layers frozen by the `freeze` method.
    #[arg(long, default_value_t = 2)]
    freeze_layers: usize,
    /// per-task: one head per task (the paper); shared: one softmax grown with the new classes.
    #[arg(long, value_enum, default_value_t = HeadMode::PerTask)]
    head_mode: HeadMode,
    /// Class statistics kept in the model after each task (no image is kept).
    #[arg(long, value_enum, default_value_t = StatsKind::Mean)]
    class_stats: StatsKind,
    /// σ of drift compensation of the old class means: a number (the default
    /// was chosen on a validation split of training images), auto (chosen from
    /// the new data by leaving one new class out at a time) or off.
    #[arg(long, default_value = "0.1", value_parser = parse_sigma)]
    sdc_sigma: Sigma,
    /// How the old classes' covariances follow the trunk (with --class-stats
    /// cov): sdc moves only their means; ridge fits a linear map from old to
    /// new features on the new images and moves means and covariances.
    #[arg(long, value_enum, default_value_t = CovDrift::Sdc)]
    cov_drift: CovDrift,
    /// Share of each task's training images held out for validation
    /// (stratified, seeded); accuracy on them is reported after every epoch.
    /// 0 trains on all images.
    #[arg(long, default_value_t = 0.1)]
    val_fraction: f64,
    /// BatchNorm while a new task trains (ResNets; the first task always
    /// trains it): train normalises with each batch's statistics and updates
    /// the running ones (PyTorch's model.train()); frozen keeps the old
    /// model's running statistics as they were.
    #[arg(long, value_enum, default_value_t = BnPolicy::Train)]
    bn: BnPolicy,
    /// Self-supervision while the first task trains: rotation also trains the
    /// trunk to name each image's class and which way up it is (four quarter
    /// turns; half turns for non-square images), which costs about five times
    /// the first task's steps.
    #[arg(long, value_enum, default_value_t = Ssl::Off)]
    ssl: Ssl,
    /// Share of the task's validation images (its training images without a
    /// validation split) that the "none of these" threshold accepts; predict
    /// calls an image unknown when its score is above that threshold.
    #[arg(long, default_value_t = 0.95)]
    unknown_accept: f64,
}

/// `--select`: choose LwF's λ_o (and T, lr) from the new data alone.
#[derive(Args, Clone)]
struct SelectArgs {
    /// Choose λ_o (and T, lr from the grids below) by the rule of Masana et
    /// al.: fine-tune for a reference validation accuracy, then relax λ_o from
    /// the largest until LwF's is within --select-tolerance of it.
    #[arg(long)]
    select: bool,
    /// λ_o grid, tried from the largest (most stable) down.
    #[arg(long, value_delimiter = ',', default_value = "8,4,2,1,0.5", value_parser = positive)]
    select_lambdas: Vec<f32>,
    /// Temperatures to try (default: --temperature alone).
    #[arg(long, value_delimiter = ',', value_parser = positive)]
    select_temperatures: Vec<f32>,
    /// Learning rates of the fine-tuning reference (default: --lr alone).
    #[arg(long, value_delimiter = ',', value_parser = positive)]
    select_lrs: Vec<f32>,
    /// Accepted relative drop of new-task validation accuracy from the
    /// fine-tuning reference.
    #[arg(long, default_value_t = 0.2)]
    select_tolerance: f64,
}

impl SelectArgs {
    fn grid(&self) -> Option<SelectGrid> {
        self.select.then(|| SelectGrid {
            lambdas: self.select_lambdas.clone(),
            temperatures: self.select_temperatures.clone(),
            lrs: self.select_lrs.clone(),
            tolerance: self.select_tolerance,
        })
    }
}

/// A finite number above 0 (grid values).
fn positive(s: &str) -> Result<f32, String> {
    match s.trim().parse::<f32>() {
        Ok(v) if v.is_finite() && v > 0.0 => Ok(v),
        _ => Err(format!("'{s}' is not a positive number")),
    }
}

fn parse_sigma(s: &str) -> Result<Sigma, String> {
    Sigma::parse(s)
}

impl HyperArgs {
    fn hyper(&self) -> lwf_engine::Result<Hyper> {
        let h = Hyper {
            epochs: self.epochs,
            warmup_epochs: self.warmup_epochs,
            batch_size: self.batch_size,
            lr: self.lr,
            momentum: self.momentum,
            weight_decay: self.weight_decay,
            temperature: self.temperature,
            lambda_o: self.lambda_o,
            kd_t2: self.kd_t2,
            lambda_l2: self.lambda_l2,
            lambda_ewc: self.lambda_ewc,
            ewc_samples: self.ewc_samples,
            freeze_layers: self.freeze_layers,
            head_mode: self.head_mode,
            class_stats: self.class_stats,
            sdc_sigma: self.sdc_sigma,
            cov_drift: self.cov_drift,
            val_fraction: self.val_fraction,
            bn: self.bn,
            ssl: self.ssl,
            unknown_accept: self.unknown_accept,
        };
        h.validate()?;
        Ok(h)
    }
}

#[derive(Args, Clone)]
struct ResumeArgs {
    /// Write the training state (parameters, momentum, RNG) beside --out as
    /// OUT.state every N epochs, so an interrupted run can continue (0: never).
    #[arg(long, default_value_t = 0)]
    checkpoint_every: usize,
    /// Continue an interrupted run from its training-state file (give the
    /// same flags it was started with).
    #[arg(long)]
    resume: Option<PathBuf>,
}

impl ResumeArgs {
    fn resumable(&self) -> app::Resumable {
        app::Resumable { checkpoint_every: self.checkpoint_every, resume: self.resume.clone() }
    }
}

#[derive(Args)]
struct TrainArgs {
    #[command(flatten)]
    data: DataArgs,
    /// Classes to learn: ids, ranges or names, e.g. `0-4`, `0,2,7` or
    /// `cat,dog`. Default: every class of an image folder, else 0-4.
    #[arg(long)]
    classes: Option<ClassList>,
    /// The model: cnn-s (two conv blocks, for small grey images), cnn-m
    /// (three, wider: colour images of 32×32 and up), resnet20 / resnet32
    /// (CIFAR ResNets, small images) or resnet18 / resnet34 (torchvision's).
    #[arg(long, value_enum, default_value_t = ArchKind::CnnS)]
    arch: ArchKind,
    /// Where to write the model (safetensors).
    #[arg(long)]
    out: PathBuf,
    /// Seed for initialisation and shuffling (same seed, same numbers on the CPU).
    #[arg(long, default_value_t = 0)]
    seed: u64,
    #[command(flatten)]
    resume: ResumeArgs,
    #[command(flatten)]
    common: Common,
    #[command(flatten)]
    hyper: HyperArgs,
}

#[derive(Args)]
struct ExtendArgs {
    /// The trained model to extend.
    #[arg(long)]
    model: PathBuf,
    // The data holding the new classes (the old data is not needed).
    #[command(flatten)]
    data: DataArgs,
    /// New classes (ids, ranges or names); default: every class of the data
    /// the model does not know.
    #[arg(long)]
    classes: Option<ClassList>,
    /// How the new classes are learnt.
    #[arg(long, value_enum, default_value_t = Method::Lwf)]
    method: Method,
    /// Old data, only for `--method joint` (defaults to --data).
    #[arg(long)]
    old_data: Option<String>,
    /// Where to write the extended model (safetensors).
    #[arg(long)]
    out: PathBuf,
    /// Seed for initialisation and shuffling (same seed, same numbers on the CPU).
    #[arg(long, default_value_t = 0)]
    seed: u64,
    #[command(flatten)]
    resume: ResumeArgs,
    #[command(flatten)]
    common: Common,
    #[command(flatten)]
    select: SelectArgs,
    #[command(flatten)]
    hyper: HyperArgs,
}

#[derive(Args)]
struct ImportArgs {
    /// The classifier's architecture; its state_dict's tensor names and
    /// shapes must be this architecture's (torchvision's for resnet18/34).
    #[arg(long, value_enum)]
    arch: ArchKind,
    /// The weights: `save_file(model.state_dict(), "model.safetensors")`
    /// (pickled .pt/.pth files are refused: unpickling runs code).
    #[arg(long)]
    weights: PathBuf,
    /// The final layer's classes, one per row in order: names (e.g.
    /// `cat,dog,frog`) or ids (`0-9`).
    #[arg(long, required_unless_present = "classes_file", conflicts_with = "classes_file")]
    classes: Option<ClassList>,
    /// The final layer's class names, one per line (e.g. ImageNet's 1000).
    #[arg(long)]
    classes_file: Option<PathBuf>,
    /// The images the classifier was trained on: HxW (or N for N×N).
    #[arg(long, value_name = "HxW", value_parser = parse_image_size)]
    image_size: (usize, usize),
    /// Image channels (3: RGB, 1: grey).
    #[arg(long, default_value_t = 3)]
    channels: usize,
    /// The training normalisation's per-channel means (pixels in [0, 1]),
    /// e.g. ImageNet's 0.485,0.456,0.406.
    #[arg(long, value_delimiter = ',', required = true, allow_hyphen_values = true)]
    norm_mean: Vec<f32>,
    /// Its per-channel standard deviations, e.g. 0.229,0.224,0.225.
    #[arg(long, value_delimiter = ',', required = true)]
    norm_std: Vec<f32>,
    /// Images of the classes the classifier knows, if you still have some
    /// (an image folder with their names, or IDX/NPY data for ids): class
    /// statistics and EWC's Fisher are measured on them.
    #[arg(long)]
    data: Option<String>,
    /// Image folder without train/ and test/: the share held out to report
    /// the imported model's accuracy.
    #[arg(long, default_value_t = 0.2, value_parser = parse_fraction)]
    test_fraction: f64,
    /// Head mode the model will be extended in (see extend --head-mode).
    #[arg(long, value_enum, default_value_t = HeadMode::PerTask)]
    head_mode: HeadMode,
    /// Class statistics measured on --data.
    #[arg(long, value_enum, default_value_t = StatsKind::Mean)]
    class_stats: StatsKind,
    #[arg(long, default_value_t = 128)]
    batch_size: usize,
    /// Where to write the model (safetensors).
    #[arg(long)]
    out: PathBuf,
    #[command(flatten)]
    common: Common,
}

#[derive(Args)]
struct EvalArgs {
    #[arg(long)]
    model: PathBuf,
    #[command(flatten)]
    data: DataArgs,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
    /// Classifier of the headline class-IL accuracy (default: ncm-task when the
    /// model holds class statistics, else aligned-heads); every available one is listed.
    #[arg(long, value_enum)]
    classifier: Option<ClassifierKind>,
    /// Classes the model has not learnt (ids, ranges or names): their test
    /// images are scored against the known ones, giving the AUROC of the
    /// model's "none of these" score and the share its threshold rejects.
    #[arg(long)]
    unknown_classes: Option<ClassList>,
    #[command(flatten)]
    common: Common,
}

#[derive(Args)]
struct PredictArgs {
    #[arg(long)]
    model: PathBuf,
    /// Images: PNG/JPEG files, folders of them (searched recursively), IDX
    /// (optionally .gz) or NPY files; several may follow one --input.
    #[arg(long, required = true, num_args = 1..)]
    input: Vec<PathBuf>,
    /// Classes listed per image.
    #[arg(long, default_value_t = 3)]
    top_k: usize,
    /// Predict only the first N images.
    #[arg(long)]
    limit: Option<usize>,
    /// Print one JSON object instead of a table.
    #[arg(long, conflicts_with = "csv")]
    json: bool,
    /// Print CSV rows file,rank,class,name,probability instead of a table.
    #[arg(long)]
    csv: bool,
    /// How classes are scored (default: ncm-task when the model holds class
    /// statistics, else aligned-heads).
    #[arg(long, value_enum)]
    classifier: Option<ClassifierKind>,
    #[command(flatten)]
    common: Common,
}

#[derive(Args)]
struct ExportArgs {
    #[arg(long)]
    model: PathBuf,
    /// The ONNX file to write.
    #[arg(long)]
    onnx: PathBuf,
    /// The classifier inside the graph (default: the model's default, what
    /// predict answers with).
    #[arg(long, value_enum)]
    classifier: Option<ClassifierKind>,
    /// Print one JSON object instead of a line.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct ExperimentArgs {
    /// two-task (classes 0-4 then 5-9) or splitN (N equal tasks, e.g. split5).
    #[arg(long, default_value = "two-task")]
    protocol: Protocol,
    /// Explicit tasks instead of a protocol, e.g. "0-4;5-9".
    #[arg(long)]
    tasks: Option<TaskList>,
    /// Comma-separated methods.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "lwf,finetune,feature-extraction,l2,joint,joint-shared"
    )]
    methods: Vec<Method>,
    /// Comma-separated seeds.
    #[arg(long, value_delimiter = ',', default_value = "0")]
    seeds: Vec<u64>,
    #[command(flatten)]
    data: DataArgs,
    /// The model every run trains (see train --arch).
    #[arg(long, value_enum, default_value_t = ArchKind::CnnS)]
    arch: ArchKind,
    /// Directory for the JSON, CSV and SVG results.
    #[arg(long, default_value = "results")]
    out: PathBuf,
    /// Keep only the first N training images of each task (quick runs).
    #[arg(long)]
    train_limit: Option<usize>,
    /// Keep only the first N test images of each class (quick runs).
    #[arg(long)]
    test_limit: Option<usize>,
    /// Keep the runs an interrupted experiment already wrote to --out (same
    /// settings) and run only the missing ones.
    #[arg(long)]
    resume: bool,
    /// Run only share i of n of the (seed, method) runs, i from 0 to n-1 (a
    /// cluster job array's index); combine the shards with `merge`.
    #[arg(long, value_name = "i/n")]
    shard: Option<Shard>,
    #[command(flatten)]
    common: Common,
    #[command(flatten)]
    select: SelectArgs,
    #[command(flatten)]
    hyper: HyperArgs,
}

#[derive(Args)]
struct BenchArgs {
    #[command(flatten)]
    data: DataArgs,
    /// The model timed (see train --arch).
    #[arg(long, value_enum, default_value_t = ArchKind::CnnS)]
    arch: ArchKind,
    /// Print one JSON line.
    #[arg(long)]
    json: bool,
    /// Keep only the first N training images of each task (quick runs).
    #[arg(long)]
    train_limit: Option<usize>,
    /// CPU only: every convolution through im2col + gemm (the baseline the
    /// Winograd and direct convolutions are measured against).
    #[arg(long)]
    im2col_only: bool,
    #[command(flatten)]
    common: Common,
    #[command(flatten)]
    hyper: HyperArgs,
}

/// Progress bars on a terminal; nothing when stderr is not one.
struct Bars {
    bar: RefCell<Option<ProgressBar>>,
}

impl Observer for Bars {
    fn phase(&self, label: &str, steps: u64) {
        let bar = ProgressBar::with_draw_target(Some(steps), ProgressDrawTarget::stderr());
        bar.set_style(
            ProgressStyle::with_template("{msg:32} [{bar:28}] {pos}/{len} {prefix} {per_sec} ETA {eta}")
                .expect("valid template")
                .progress_chars("=> "),
        );
        bar.set_message(label.to_string());
        *self.bar.borrow_mut() = Some(bar);
    }
    fn step(&self, loss: f32, _images: usize) {
        if let Some(b) = self.bar.borrow().as_ref() {
            if loss.is_finite() {
                b.set_prefix(format!("loss {loss:.4}"));
            }
            b.inc(1);
        }
    }
    fn phase_done(&self) {
        if let Some(b) = self.bar.borrow_mut().take() {
            b.finish_and_clear();
        }
    }
    fn note(&self, line: &str) {
        eprintln!("{line}");
    }
}

fn setup(c: &Common) -> lwf_engine::Result<BackendChoice> {
    app::set_threads(c.threads)?;
    // Once, before any kernel runs: the kernels would otherwise resolve
    // LWF_SIMD on first use and panic on a bad value.
    simd::configure(c.simd)?;
    Ok(c.backend)
}

fn run(cli: Cli) -> lwf_engine::Result<()> {
    if matches!(cli.cmd, Cmd::Train(_) | Cmd::Extend(_) | Cmd::Experiment(_) | Cmd::Bench(_)) {
        lwf_engine::interrupt::install_handlers();
    }
    let obs = Bars { bar: RefCell::new(None) };
    match cli.cmd {
        Cmd::Train(a) => {
            let be = setup(&a.common)?;
            let req = app::TrainRequest {
                folder: a.data.folder(),
                data: a.data.data,
                classes: a.classes,
                arch: a.arch,
                out: a.out,
                seed: a.seed,
                hyper: a.hyper.hyper()?,
                resumable: a.resume.resumable(),
            };
            let s = app::train(be, &req, &obs)?;
            println!("{s}");
        }
        Cmd::Extend(a) => {
            let be = setup(&a.common)?;
            let req = app::ExtendRequest {
                model: a.model,
                folder: a.data.folder(),
                data: a.data.data,
                classes: a.classes,
                method: a.method,
                old_data: a.old_data,
                out: a.out,
                seed: a.seed,
                hyper: a.hyper.hyper()?,
                resumable: a.resume.resumable(),
                select: a.select.grid(),
            };
            let s = app::extend(be, &req, &obs)?;
            println!("{s}");
        }
        Cmd::Import(a) => {
            let be = setup(&a.common)?;
            let classes = match (a.classes, &a.classes_file) {
                (Some(c), _) => c,
                (None, Some(f)) => app::read_classes_file(f)?,
                (None, None) => unreachable!("clap requires one of them"),
            };
            let req = app::ImportRequest {
                arch: a.arch,
                weights: a.weights,
                classes,
                image_size: a.image_size,
                channels: a.channels,
                norm: lwf_engine::data::Normalization { mean: a.norm_mean, std: a.norm_std },
                data: a.data,
                folder: FolderOptions { test_fraction: a.test_fraction, ..FolderOptions::default() },
                head_mode: a.head_mode,
                class_stats: a.class_stats,
                batch_size: a.batch_size,
                out: a.out,
            };
            println!("{}", app::import(be, &req, &obs)?);
        }
        Cmd::Eval(a) => {
            let be = setup(&a.common)?;
            let r = app::eval(
                be,
                &a.model,
                &a.data.data,
                &a.data.folder(),
                a.classifier,
                a.unknown_classes.as_ref(),
            )?;
            if let Some(n) = &r.note {
                eprintln!("note: {n}");
            }
            println!("{}", if a.json { r.to_json() } else { r.to_table() });
        }
        Cmd::Export(a) => {
            let r = app::export(&a.model, &a.onnx, a.classifier)?;
            if let Some(n) = &r.note {
                eprintln!("note: {n}");
            }
            println!("{}", if a.json { r.to_json() } else { r.to_table() });
        }
        Cmd::Predict(a) => {
            let be = setup(&a.common)?;
            let p = app::predict(be, &a.model, &a.input, a.top_k, a.limit, a.classifier)?;
            if let Some(n) = &p.note {
                eprintln!("note: {n}");
            }
            match (a.json, a.csv) {
                (true, _) => println!("{}", p.to_json()),
                (_, true) => print!("{}", p.to_csv()),
                _ => println!("{}", p.to_table()),
            }
        }
        Cmd::Experiment(a) => {
            let be = setup(&a.common)?;
            let req = app::ExperimentRequest {
                folder: a.data.folder(),
                data: a.data.data,
                arch: a.arch,
                protocol: a.protocol,
                tasks: a.tasks.map(|t| t.0),
                methods: a.methods,
                seeds: a.seeds,
                out: a.out,
                train_limit: a.train_limit,
                test_limit: a.test_limit,
                hyper: a.hyper.hyper()?,
                resume: a.resume,
                shard: a.shard,
                select: a.select.grid(),
            };
            let s = app::experiment(be, &req, &obs)?;
            println!("{s}");
        }
        Cmd::Merge(a) => {
            println!("{}", app::merge(&a.dirs, &a.out)?);
        }
        Cmd::Bench(a) => {
            let be = match (setup(&a.common)?, a.im2col_only) {
                (BackendChoice::Cpu, true) => BackendChoice::CpuIm2col,
                (_, true) => {
                    return Err(lwf_engine::Error::Config(
                        "--im2col-only applies to the cpu backend only".into(),
                    ))
                }
                (be, false) => be,
            };
            let folder = a.data.folder();
            let r = app::bench(be, &a.data.data, &folder, a.train_limit, &a.hyper.hyper()?, a.arch, &obs)?;
            println!("{}", if a.json { r.to_json() } else { r.to_table() });
        }
    }
    Ok(())
}

/// A panic (a broken invariant, a GPU device lost in a read-back) still ends
/// in one line on stderr, like every other error; nothing half-written is
/// left, since outputs are only renamed into place after the work.
fn one_line_panics() {
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

fn main() -> ExitCode {
    one_line_panics();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if !e.use_stderr() => {
            let _ = e.print(); // --help, --version
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            // clap's message is several lines (usage, a tip); ours are one.
            let text = e.render().to_string();
            let line: Vec<&str> = text
                .lines()
                .map(str::trim)
                .filter(|l| {
                    !l.is_empty() && !l.starts_with("Usage:") && !l.starts_with("For more information")
                })
                .collect();
            eprintln!("lwf-engine: {}", line.join(" "));
            return ExitCode::from(2);
        }
    };
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("lwf-engine: error: {e}");
            ExitCode::FAILURE
        }
    }
}
