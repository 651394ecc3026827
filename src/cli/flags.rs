//! Flag groups that several verbs share: the backend, the data, the
//! training hyper-parameters, the λ_o selection grid and resuming.

use clap::Args;
use lwf_engine::app::{self, BackendChoice};
use lwf_engine::backend::cpu::simd::SimdPath;
use lwf_engine::data::augment::Augment;
use lwf_engine::data::FolderOptions;
use lwf_engine::incremental::select::SelectGrid;
use lwf_engine::incremental::stats::{Sigma, StatsKind};
use lwf_engine::incremental::{CovDrift, FeatureMetric, HeadMode, Hyper, KdSoftmax, Ssl, TeacherMode};
use lwf_engine::nn::BnPolicy;
use std::path::PathBuf;

#[derive(Args, Clone)]
pub struct Common {
    /// Compute backend.
    #[arg(long, value_enum, default_value_t = BackendChoice::Cpu)]
    pub backend: BackendChoice,
    /// CPU threads (rayon); 0 = one per core.
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
    /// Instruction set of the CPU kernels (default: LWF_SIMD, else the best
    /// this CPU has); a path the CPU lacks is an error.
    #[arg(long, value_enum)]
    pub simd: Option<SimdPath>,
}

/// `--data` and how an image folder is read (IDX/NPY data ignore the rest).
#[derive(Args, Clone)]
pub struct DataArgs {
    /// Data: `fashion-mnist` (shipped), a directory of IDX or NPY files, or an
    /// image folder: one sub-folder of PNG/JPEG images per class (DIR/<class>/),
    /// or DIR/train/<class>/ and DIR/test/<class>/.
    #[arg(long, default_value = "fashion-mnist")]
    pub data: String,
    /// Image folder without train/ and test/: the share of each class's
    /// images held out for testing (seeded, the same split every run).
    #[arg(long, default_value_t = 0.2, value_parser = parse_fraction)]
    pub test_fraction: f64,
    /// Image folder: resize every image to HxW (or N for N×N). Default: the
    /// most common size; for a saved model (extend, eval), the model's.
    #[arg(long, value_name = "HxW", value_parser = parse_image_size)]
    pub image_size: Option<(usize, usize)>,
    /// Image folder: refuse files that are not .png/.jpg/.jpeg instead of
    /// skipping them with a warning.
    #[arg(long)]
    pub strict: bool,
}

impl DataArgs {
    pub fn folder(&self) -> FolderOptions {
        FolderOptions {
            test_fraction: self.test_fraction,
            image_size: self.image_size,
            strict: self.strict,
            ..FolderOptions::default()
        }
    }
}

pub(super) fn parse_fraction(s: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(f) if f > 0.0 && f < 1.0 => Ok(f),
        _ => Err(format!("expected a fraction above 0 and below 1, e.g. 0.2, got '{s}'")),
    }
}

/// `HxW`, `H×W` or `N` (N×N), each at least 1.
pub(super) fn parse_image_size(s: &str) -> Result<(usize, usize), String> {
    let bad = || format!("expected HxW or N with sides of at least 1, e.g. 32x32 or 32, got '{s}'");
    let side = |t: &str| t.trim().parse::<usize>().ok().filter(|&v| v >= 1).ok_or_else(bad);
    match s.split_once(['x', 'X', '×']) {
        Some((h, w)) => Ok((side(h)?, side(w)?)),
        None => side(s).map(|n| (n, n)),
    }
}

#[derive(Args, Clone)]
pub struct HyperArgs {
    /// Epochs per task.
    #[arg(long, default_value_t = 3)]
    pub epochs: usize,
    /// LwF warm-up epochs (only the new head trains).
    #[arg(long, default_value_t = 1)]
    pub warmup_epochs: usize,
    #[arg(long, default_value_t = 128)]
    pub batch_size: usize,
    /// SGD learning rate.
    #[arg(long, default_value_t = 0.05)]
    pub lr: f32,
    #[arg(long, default_value_t = 0.9)]
    pub momentum: f32,
    #[arg(long, default_value_t = 5e-4)]
    pub weight_decay: f32,
    /// Distillation temperature T (≥ 1).
    #[arg(long, default_value_t = 2.0)]
    pub temperature: f32,
    /// λ_o: weight of the distillation loss on the old outputs.
    #[arg(long, default_value_t = 1.0)]
    pub lambda_o: f32,
    /// λ_f: weight of LwF's feature distillation, `λ_f · Σ (f − f_old)²` per
    /// image over the trunk's features, the old trunk's recorded with Y_o
    /// (0: off, the paper's LwF). The default 0.03 was the best of 0-0.1 on
    /// validation splits (two-task and split5). It adds curvature in
    /// proportion: without --lr-ramp, 0.1 collapsed the trunk at the default
    /// lr, and a ResNet with --bn frozen diverged at 0.03.
    #[arg(long, default_value_t = 0.03)]
    pub lambda_f: f32,
    /// Steps over which LwF's main phase (after the warm-up of the new head)
    /// raises the learning rate linearly to --lr; 0: none (the paper). The
    /// default 20 (about a quarter of an epoch of a split5 task) keeps the
    /// first steps of the feature pull from throwing the trunk out: without
    /// it one split5 validation seed in six collapsed at task 5 and others
    /// lost points.
    #[arg(long, value_name = "STEPS", default_value_t = 20)]
    pub lr_ramp: usize,
    /// Multiply the distillation loss by T² (Hinton et al.).
    #[arg(long)]
    pub kd_t2: bool,
    /// λ of the l2 method's pull towards the old trunk.
    #[arg(long, default_value_t = 0.01)]
    pub lambda_l2: f32,
    /// λ of EWC's Fisher-weighted pull.
    #[arg(long, default_value_t = 100.0)]
    pub lambda_ewc: f32,
    /// Images used to estimate EWC's Fisher after a task.
    #[arg(long, default_value_t = 1000)]
    pub ewc_samples: usize,
    /// Trunk layers frozen by the `freeze` method.
    #[arg(long, default_value_t = 2)]
    pub freeze_layers: usize,
    /// per-task: one head per task (the paper); shared: one softmax grown with the new classes.
    #[arg(long, value_enum, default_value_t = HeadMode::PerTask)]
    pub head_mode: HeadMode,
    /// Class statistics kept in the model after each task (no image is
    /// kept). cov (the default) adds what the analytic and Mahalanobis
    /// classifiers and the combined "none of these" score need; mean keeps
    /// about a hundredth of the size.
    #[arg(long, value_enum, default_value_t = StatsKind::Cov)]
    pub class_stats: StatsKind,
    /// σ of drift compensation of the old class means: a number (the default
    /// was chosen on a validation split of training images), auto (chosen from
    /// the new data by leaving one new class out at a time) or off.
    #[arg(long, default_value = "0.1", value_parser = parse_sigma)]
    pub sdc_sigma: Sigma,
    /// How the old classes' covariances follow the trunk (with --class-stats
    /// cov): sdc moves only their means; ridge fits a linear map from old to
    /// new features on the new images and moves means and covariances (the
    /// default: better for mahalanobis and analytic on validation splits).
    #[arg(long, value_enum, default_value_t = CovDrift::Ridge)]
    pub cov_drift: CovDrift,
    /// Share of each task's training images held out for validation
    /// (stratified, seeded); accuracy on them is reported after every epoch.
    /// 0 trains on all images.
    #[arg(long, default_value_t = 0.1)]
    pub val_fraction: f64,
    /// BatchNorm while a new task trains (ResNets; the first task always
    /// trains it): train normalises with each batch's statistics and updates
    /// the running ones (PyTorch's model.train()); frozen keeps the old
    /// model's running statistics as they were.
    #[arg(long, value_enum, default_value_t = BnPolicy::Train)]
    pub bn: BnPolicy,
    /// Self-supervision while the first task trains: rotation also trains the
    /// trunk to name each image's class and which way up it is (four quarter
    /// turns; half turns for non-square images), which costs about twice
    /// the first task's training time and was better on validation splits
    /// (class-IL after extend, "none of these"), so it is the default.
    #[arg(long, value_enum, default_value_t = Ssl::Rotation)]
    pub ssl: Ssl,
    /// Share of the task's validation images (its training images without a
    /// validation split) that the "none of these" threshold accepts; predict
    /// calls an image unknown when its score is above that threshold.
    #[arg(long, default_value_t = 0.95)]
    pub unknown_accept: f64,
    /// Random views of the training images at every step, seeded: crop
    /// (shift by up to an eighth of the side, black padding) and flip (left-right).
    /// Alone, the policy for the data: crop,flip for colour images, crop for
    /// grey ones. Also off, or a list, e.g. --augment crop,flip.
    #[arg(long, num_args = 0..=1, default_value = "off", default_missing_value = "auto",
          value_parser = parse_augment)]
    pub augment: Augment,
    /// LwF's targets with --augment: live (the old model run on every
    /// augmented batch, one more forward pass per step; measured better) or
    /// recorded (Y_o once, on the un-augmented images).
    #[arg(long, value_enum, default_value_t = TeacherMode::Live)]
    pub teacher: TeacherMode,
    /// LwF with several old tasks: per-task (one softmax per old head, the
    /// paper) or all (one softmax over every old output side by side).
    #[arg(long, value_enum, default_value_t = KdSoftmax::PerTask)]
    pub kd_softmax: KdSoftmax,
    /// Feature distillation's distance (with --lambda-f): plain (every
    /// direction alike) or efm (EFC's empirical feature matrix of the old
    /// heads: what they read held, other directions a tenth as much).
    #[arg(long, value_enum, default_value_t = FeatureMetric::Plain)]
    pub feature_metric: FeatureMetric,
}

/// `--select`: choose LwF's λ_o (and T, lr) from the new data alone.
#[derive(Args, Clone)]
pub struct SelectArgs {
    /// Choose λ_o (and T, lr from the grids below) by the rule of Masana et
    /// al.: fine-tune for a reference validation accuracy, then relax λ_o from
    /// the largest until LwF's is within --select-tolerance of it.
    #[arg(long)]
    pub select: bool,
    /// λ_o grid, tried from the largest (most stable) down.
    #[arg(long, value_delimiter = ',', default_value = "8,4,2,1,0.5", value_parser = positive)]
    pub select_lambdas: Vec<f32>,
    /// Temperatures to try (default: --temperature alone).
    #[arg(long, value_delimiter = ',', value_parser = positive)]
    pub select_temperatures: Vec<f32>,
    /// Learning rates of the fine-tuning reference (default: --lr alone).
    #[arg(long, value_delimiter = ',', value_parser = positive)]
    pub select_lrs: Vec<f32>,
    /// Accepted relative drop of new-task validation accuracy from the
    /// fine-tuning reference.
    #[arg(long, default_value_t = 0.2)]
    pub select_tolerance: f64,
}

impl SelectArgs {
    pub fn grid(&self) -> Option<SelectGrid> {
        self.select.then(|| SelectGrid {
            lambdas: self.select_lambdas.clone(),
            temperatures: self.select_temperatures.clone(),
            lrs: self.select_lrs.clone(),
            tolerance: self.select_tolerance,
        })
    }
}

/// A finite number above 0 (grid values).
pub(super) fn positive(s: &str) -> Result<f32, String> {
    match s.trim().parse::<f32>() {
        Ok(v) if v.is_finite() && v > 0.0 => Ok(v),
        _ => Err(format!("'{s}' is not a positive number")),
    }
}

pub(super) fn parse_augment(s: &str) -> Result<Augment, String> {
    Augment::parse(s)
}

pub(super) fn parse_sigma(s: &str) -> Result<Sigma, String> {
    Sigma::parse(s)
}

impl HyperArgs {
    pub fn hyper(&self) -> lwf_engine::Result<Hyper> {
        let h = Hyper {
            epochs: self.epochs,
            warmup_epochs: self.warmup_epochs,
            batch_size: self.batch_size,
            lr: self.lr,
            momentum: self.momentum,
            weight_decay: self.weight_decay,
            temperature: self.temperature,
            lambda_o: self.lambda_o,
            lambda_f: self.lambda_f,
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
            augment: self.augment,
            teacher: self.teacher,
            kd_softmax: self.kd_softmax,
            feature_metric: self.feature_metric,
            lr_ramp: self.lr_ramp,
        };
        h.validate()?;
        Ok(h)
    }
}

#[derive(Args, Clone)]
pub struct ResumeArgs {
    /// Write the training state (parameters, momentum, RNG) beside --out as
    /// OUT.state every N epochs, so an interrupted run can continue (0: never).
    #[arg(long, default_value_t = 0)]
    pub checkpoint_every: usize,
    /// Continue an interrupted run from its training-state file (give the
    /// same flags it was started with).
    #[arg(long)]
    pub resume: Option<PathBuf>,
}

impl ResumeArgs {
    pub fn resumable(&self) -> app::Resumable {
        app::Resumable { checkpoint_every: self.checkpoint_every, resume: self.resume.clone() }
    }
}
