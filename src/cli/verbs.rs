//! One flag struct per verb; the groups they share are in [`super::flags`].

use super::flags::*;
use clap::Args;
use lwf_engine::app::Shard;
use lwf_engine::data::{ClassList, Protocol, TaskList};
use lwf_engine::incremental::classifier::ClassifierKind;
use lwf_engine::incremental::stats::StatsKind;
use lwf_engine::incremental::{HeadMode, Method};
use lwf_engine::nn::ArchKind;
use std::path::PathBuf;

#[derive(Args)]
pub struct MergeArgs {
    /// Directories holding run files (PROTOCOL_METHOD_seedN.json).
    #[arg(required = true)]
    pub dirs: Vec<PathBuf>,
    /// Directory for the combined JSON, CSV and SVG.
    #[arg(long)]
    pub out: PathBuf,
}

#[derive(Args)]
pub struct TrainArgs {
    #[command(flatten)]
    pub data: DataArgs,
    /// Classes to learn: ids, ranges or names, e.g. `0-4`, `0,2,7` or
    /// `cat,dog`. Default: every class of an image folder, else 0-4.
    #[arg(long)]
    pub classes: Option<ClassList>,
    /// The model: cnn-s (two conv blocks, for small grey images), cnn-m
    /// (three, wider: colour images of 32×32 and up), resnet20 / resnet32
    /// (CIFAR ResNets, small images) or resnet18 / resnet34 (torchvision's).
    #[arg(long, value_enum, default_value_t = ArchKind::CnnS)]
    pub arch: ArchKind,
    /// Where to write the model (safetensors).
    #[arg(long)]
    pub out: PathBuf,
    /// Seed for initialisation and shuffling (same seed, same numbers on the CPU).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[command(flatten)]
    pub resume: ResumeArgs,
    #[command(flatten)]
    pub common: Common,
    #[command(flatten)]
    pub hyper: HyperArgs,
}

#[derive(Args)]
pub struct ExtendArgs {
    /// The trained model to extend.
    #[arg(long)]
    pub model: PathBuf,
    // The data holding the new classes (the old data is not needed).
    #[command(flatten)]
    pub data: DataArgs,
    /// Classes to learn (ids, ranges or names): new ones get a new head;
    /// classes the model knows are more images of them and keep their head
    /// (default: every class of the data the model does not know).
    #[arg(long)]
    pub classes: Option<ClassList>,
    /// How the new classes are learnt.
    #[arg(long, value_enum, default_value_t = Method::Lwf)]
    pub method: Method,
    /// Old data, only for `--method joint` (defaults to --data).
    #[arg(long)]
    pub old_data: Option<String>,
    /// Where to write the extended model (safetensors).
    #[arg(long)]
    pub out: PathBuf,
    /// Seed for initialisation and shuffling (same seed, same numbers on the CPU).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[command(flatten)]
    pub resume: ResumeArgs,
    #[command(flatten)]
    pub common: Common,
    #[command(flatten)]
    pub select: SelectArgs,
    #[command(flatten)]
    pub hyper: HyperArgs,
}

#[derive(Args)]
pub struct ImportArgs {
    /// The classifier's architecture; its state_dict's tensor names and
    /// shapes must be this architecture's (torchvision's for resnet18/34).
    #[arg(long, value_enum)]
    pub arch: ArchKind,
    /// The weights: `save_file(model.state_dict(), "model.safetensors")`
    /// (pickled .pt/.pth files are refused: unpickling runs code).
    #[arg(long)]
    pub weights: PathBuf,
    /// The final layer's classes, one per row in order: names (e.g.
    /// `cat,dog,frog`) or ids (`0-9`).
    #[arg(long, required_unless_present = "classes_file", conflicts_with = "classes_file")]
    pub classes: Option<ClassList>,
    /// The final layer's class names, one per line (e.g. ImageNet's 1000).
    #[arg(long)]
    pub classes_file: Option<PathBuf>,
    /// The images the classifier was trained on: HxW (or N for N×N).
    #[arg(long, value_name = "HxW", value_parser = parse_image_size)]
    pub image_size: (usize, usize),
    /// Image channels (3: RGB, 1: grey).
    #[arg(long, default_value_t = 3)]
    pub channels: usize,
    /// The training normalisation's per-channel means (pixels in [0, 1]),
    /// e.g. ImageNet's 0.485,0.456,0.406.
    #[arg(long, value_delimiter = ',', required = true, allow_hyphen_values = true)]
    pub norm_mean: Vec<f32>,
    /// Its per-channel standard deviations, e.g. 0.229,0.224,0.225.
    #[arg(long, value_delimiter = ',', required = true)]
    pub norm_std: Vec<f32>,
    /// Images of the classes the classifier knows, if you still have some
    /// (an image folder with their names, or IDX/NPY data for ids): class
    /// statistics and EWC's Fisher are measured on them.
    #[arg(long)]
    pub data: Option<String>,
    /// Image folder without train/ and test/: the share held out to report
    /// the imported model's accuracy.
    #[arg(long, default_value_t = 0.2, value_parser = parse_fraction)]
    pub test_fraction: f64,
    /// Head mode the model will be extended in (see extend --head-mode).
    #[arg(long, value_enum, default_value_t = HeadMode::PerTask)]
    pub head_mode: HeadMode,
    /// Class statistics measured on --data (cov, the default, as train's).
    #[arg(long, value_enum, default_value_t = StatsKind::Cov)]
    pub class_stats: StatsKind,
    #[arg(long, default_value_t = 128)]
    pub batch_size: usize,
    /// Where to write the model (safetensors).
    #[arg(long)]
    pub out: PathBuf,
    #[command(flatten)]
    pub common: Common,
}

#[derive(Args)]
pub struct EvalArgs {
    #[arg(long)]
    pub model: PathBuf,
    #[command(flatten)]
    pub data: DataArgs,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Classifier of the headline class-IL accuracy (default: ncm-task when the
    /// model holds class statistics, else aligned-heads); every available one is listed.
    #[arg(long, value_enum)]
    pub classifier: Option<ClassifierKind>,
    /// Classes the model has not learnt (ids, ranges or names): their test
    /// images are scored against the known ones, giving the AUROC of the
    /// model's "none of these" score and the share its threshold rejects.
    #[arg(long)]
    pub unknown_classes: Option<ClassList>,
    #[command(flatten)]
    pub common: Common,
}

#[derive(Args)]
pub struct PredictArgs {
    #[arg(long)]
    pub model: PathBuf,
    /// Images: PNG/JPEG files, folders of them (searched recursively), IDX
    /// (optionally .gz) or NPY files; several may follow one --input.
    #[arg(long, required = true, num_args = 1..)]
    pub input: Vec<PathBuf>,
    /// Classes listed per image.
    #[arg(long, default_value_t = 3)]
    pub top_k: usize,
    /// Predict only the first N images.
    #[arg(long)]
    pub limit: Option<usize>,
    /// Print one JSON object instead of a table.
    #[arg(long, conflicts_with = "csv")]
    pub json: bool,
    /// Print CSV rows file,rank,class,name,probability instead of a table.
    #[arg(long)]
    pub csv: bool,
    /// How classes are scored (default: ncm-task when the model holds class
    /// statistics, else aligned-heads).
    #[arg(long, value_enum)]
    pub classifier: Option<ClassifierKind>,
    #[command(flatten)]
    pub common: Common,
}

#[derive(Args)]
pub struct ExportArgs {
    #[arg(long)]
    pub model: PathBuf,
    /// The ONNX file to write.
    #[arg(long)]
    pub onnx: PathBuf,
    /// The classifier inside the graph (default: the model's default, what
    /// predict answers with).
    #[arg(long, value_enum)]
    pub classifier: Option<ClassifierKind>,
    /// Print one JSON object instead of a line.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args)]
pub struct ExperimentArgs {
    /// two-task (classes 0-4 then 5-9) or splitN (N equal tasks, e.g. split5).
    #[arg(long, default_value = "two-task")]
    pub protocol: Protocol,
    /// Explicit tasks instead of a protocol, e.g. "0-4;5-9".
    #[arg(long)]
    pub tasks: Option<TaskList>,
    /// Comma-separated methods.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "lwf,finetune,feature-extraction,l2,joint,joint-shared"
    )]
    pub methods: Vec<Method>,
    /// Comma-separated seeds.
    #[arg(long, value_delimiter = ',', default_value = "0")]
    pub seeds: Vec<u64>,
    #[command(flatten)]
    pub data: DataArgs,
    /// The model every run trains (see train --arch).
    #[arg(long, value_enum, default_value_t = ArchKind::CnnS)]
    pub arch: ArchKind,
    /// Directory for the JSON, CSV and SVG results.
    #[arg(long, default_value = "results")]
    pub out: PathBuf,
    /// Keep only the first N training images of each task (quick runs).
    #[arg(long)]
    pub train_limit: Option<usize>,
    /// Keep only the first N test images of each class (quick runs).
    #[arg(long)]
    pub test_limit: Option<usize>,
    /// Keep the runs an interrupted experiment already wrote to --out (same
    /// settings) and run only the missing ones.
    #[arg(long)]
    pub resume: bool,
    /// Run only share i of n of the (seed, method) runs, i from 0 to n-1 (a
    /// cluster job array's index); combine the shards with `merge`.
    #[arg(long, value_name = "i/n")]
    pub shard: Option<Shard>,
    #[command(flatten)]
    pub common: Common,
    #[command(flatten)]
    pub select: SelectArgs,
    #[command(flatten)]
    pub hyper: HyperArgs,
}

#[derive(Args)]
pub struct BenchArgs {
    #[command(flatten)]
    pub data: DataArgs,
    /// The model timed (see train --arch).
    #[arg(long, value_enum, default_value_t = ArchKind::CnnS)]
    pub arch: ArchKind,
    /// Print one JSON line.
    #[arg(long)]
    pub json: bool,
    /// Keep only the first N training images of each task (quick runs).
    #[arg(long)]
    pub train_limit: Option<usize>,
    /// CPU only: every convolution through im2col + gemm (the baseline the
    /// Winograd and direct convolutions are measured against).
    #[arg(long)]
    pub im2col_only: bool,
    #[command(flatten)]
    pub common: Common,
    #[command(flatten)]
    pub hyper: HyperArgs,
}
