//! The user's verbs (train, extend, eval, predict, experiment, bench) as
//! library functions: they load and check the inputs, run the work on the
//! chosen backend and return reports that the CLI prints. Every failure is an
//! `Error` whose message is one line naming the file and the problem; every
//! output is written atomically, after the work succeeded.

use crate::backend::{Backend, CpuBackend};
use crate::checkpoint::{self, HistoryEntry, Meta};
use crate::data::{self, Dataset, Normalization, Split, TaskView};
use crate::error::{Error, Result};
use crate::incremental::classifier::{ClassifierKind, FeatureClassifier};
use crate::incremental::eval::{evaluate, Accuracies};
use crate::incremental::methods::{
    examples_for, learn_task, streams, task_stats, train_first_task, MethodState, TaskContext,
};
use crate::incremental::protocol::{run_experiment, run_experiment_with, ExperimentConfig, MethodRun};
use crate::incremental::session::Session;
use crate::incremental::stats::ClassStats;
use crate::incremental::train::Trainer;
use crate::incremental::{HeadMode, Hyper, Method, Observer};
use crate::nn::{Arch, Net};
use crate::rng::Rng;
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Which device runs the work.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BackendChoice {
    Cpu,
    /// The CPU backend with every convolution on im2col + gemm (no Winograd,
    /// no direct path): the baseline `bench --im2col-only` measures against.
    CpuIm2col,
    Wgpu,
}

/// Run `$body` with `$b` bound to the chosen backend (generic code, two
/// monomorphisations).
macro_rules! on_backend {
    ($choice:expr, $b:ident => $body:expr) => {
        match $choice {
            BackendChoice::Cpu => {
                let $b = CpuBackend::new();
                $body
            }
            BackendChoice::CpuIm2col => {
                let $b = CpuBackend::im2col_only();
                $body
            }
            BackendChoice::Wgpu => {
                let $b = crate::backend::wgpu::WgpuBackend::new()?;
                $body
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

fn load_data(spec: &str) -> Result<Dataset> {
    data::load(spec)
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

fn class_names(data: &Dataset, classes: &[u32]) -> Vec<String> {
    classes
        .iter()
        .map(|&c| data.class_names.get(c as usize).cloned().unwrap_or_else(|| format!("class {c}")))
        .collect()
}

/// `train`: a new model on some classes of a data set.
pub struct TrainRequest {
    pub data: String,
    pub classes: String,
    pub out: PathBuf,
    pub seed: u64,
    pub hyper: Hyper,
    pub resumable: Resumable,
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

/// The run is complete: its training state is no longer needed.
fn finish_session<B: Backend>(tr: &Trainer<B>) {
    if let Some(s) = &tr.session {
        let _ = std::fs::remove_file(s.state_path());
    }
}

pub fn train(choice: BackendChoice, req: &TrainRequest, obs: &dyn Observer) -> Result<String> {
    crate::fsio::check_output_file(&req.out)?;
    let data = load_data(&req.data)?;
    let classes = data::parse_classes(&req.classes)?;
    data::check_classes_present(&data.train, &classes, &data.root.display().to_string())?;
    on_backend!(choice, b => train_on(&b, &data, &classes, req, obs))
}

fn train_on<B: Backend>(
    b: &B,
    data: &Dataset,
    classes: &[u32],
    req: &TrainRequest,
    obs: &dyn Observer,
) -> Result<String> {
    let arch = Arch::cnn_s([data.train.c, data.train.h, data.train.w]);
    arch.validate().map_err(Error::Config)?;
    let mut tr = Trainer::new(b.clone());
    let run = serde_json::json!({
        "verb": "train", "data": data.root, "classes": classes, "seed": req.seed, "hyper": req.hyper,
    });
    tr.session = req.resumable.session(&req.out, run)?;
    let mut net = Net::new(b, arch.clone(), &mut Rng::derive(req.seed, streams::TRUNK));
    let view = data::task_view(&data.train, classes);
    let cx = TaskContext { split: &data.train, norm: data.norm, hyper: &req.hyper, seed: req.seed, obs };
    let report = train_first_task(&mut tr, &mut net, &view, &cx)?;
    let mut meta = Meta::new(arch, data.norm.mean, data.norm.std, req.hyper.head_mode);
    meta.heads =
        vec![checkpoint::HeadMeta { classes: classes.to_vec(), class_names: class_names(data, classes) }];
    meta.tasks = vec![classes.to_vec()];
    meta.history.push(HistoryEntry {
        verb: "train".into(),
        method: "train".into(),
        classes: classes.to_vec(),
        data: data.root.display().to_string(),
        epochs: req.hyper.epochs,
        seed: req.seed,
        train_seconds: report.train_seconds,
        sdc_sigma: None,
        sdc_sigma_chosen_by: None,
    });
    let stats = task_stats(&mut tr, &net, &view, &cx, req.hyper.class_stats);
    let fisher =
        fisher_after(&mut tr, &mut net, &data.train, data.norm, &view, None, &req.hyper, req.seed, 1);
    let acc = evaluate(
        &mut tr,
        &net,
        &data.test,
        data.norm,
        &meta.tasks,
        meta.head_mode,
        req.hyper.batch_size,
        None,
        &[],
    );
    checkpoint::save(&req.out, b, &net, &meta, Some(&fisher), Some(&stats))?;
    finish_session(&tr);
    Ok(format!(
        "trained classes {} on {} in {:.1}s ({:.0} images/s); test accuracy {:.2}%; class statistics: {} → {}",
        data::format_classes(classes),
        b.name(),
        report.train_seconds,
        report.images_per_second(),
        100.0 * acc.task_aware[0],
        stats.kind().name(),
        req.out.display()
    ))
}

/// EWC's Fisher after a task, added to what the model carried, so a later
/// `extend --method ewc` needs no old data.
#[allow(clippy::too_many_arguments)]
fn fisher_after<B: Backend>(
    tr: &mut Trainer<B>,
    net: &mut Net<B>,
    split: &Split,
    norm: Normalization,
    view: &TaskView,
    carried: Option<Vec<B::Buf>>,
    hyper: &Hyper,
    seed: u64,
    task: u64,
) -> Vec<B::Buf> {
    let b = tr.b.clone();
    let (head, classes) = match hyper.head_mode {
        HeadMode::Shared => (0, net.heads[0].classes.clone()),
        HeadMode::PerTask => (net.heads.len() - 1, view.classes.clone()),
    };
    let mut ex = examples_for(view, split, head, &classes);
    Rng::derive(seed, streams::FISHER + task).shuffle(&mut ex);
    ex.truncate(hyper.ewc_samples);
    let mut fisher =
        carried.unwrap_or_else(|| net.trunk_params().iter().map(|p| b.zeros(p.value.numel())).collect());
    tr.accumulate_fisher(net, split, norm, &ex, &mut fisher);
    let n = net.heads.len();
    net.set_trainable(true, 0, &(0..n).collect::<Vec<_>>());
    fisher
}

/// `extend`: new classes into a saved model, from the new data only.
pub struct ExtendRequest {
    pub model: PathBuf,
    pub data: String,
    pub classes: Option<String>,
    pub method: String,
    pub old_data: Option<String>,
    pub out: PathBuf,
    pub seed: u64,
    pub hyper: Hyper,
    pub resumable: Resumable,
}

pub fn extend(choice: BackendChoice, req: &ExtendRequest, obs: &dyn Observer) -> Result<String> {
    let method = Method::parse(&req.method)?;
    crate::fsio::check_output_file(&req.out)?;
    if method == Method::JointShared {
        return Err(Error::Config(
            "--method joint-shared is for experiments; to extend a shared-head model with its old data use \
             --method joint on a model trained with --head-mode shared"
                .into(),
        ));
    }
    let data = load_data(&req.data)?;
    on_backend!(choice, b => extend_on(&b, method, &data, req, obs))
}

fn extend_on<B: Backend>(
    b: &B,
    method: Method,
    data: &Dataset,
    req: &ExtendRequest,
    obs: &dyn Observer,
) -> Result<String> {
    let ck = checkpoint::load(&req.model, b)?;
    let (mut net, mut meta) = (ck.net, ck.meta);
    check_input(&req.model, &meta.arch, &data.train, &data.root)?;
    let known = meta.classes();
    let classes = match &req.classes {
        Some(s) => data::parse_classes(s)?,
        None => {
            let present: Vec<u32> = (0..data.num_classes as u32)
                .filter(|c| data.train.labels.contains(c) && !known.contains(c))
                .collect();
            if present.is_empty() {
                return Err(Error::Config(format!(
                    "{} has no class the model does not already know ({})",
                    data.root.display(),
                    data::format_classes(&known)
                )));
            }
            present
        }
    };
    if let Some(c) = classes.iter().find(|c| known.contains(c)) {
        return Err(Error::Config(format!(
            "class {c} is already known by {} (it knows {}): extend adds new classes only",
            req.model.display(),
            data::format_classes(&known)
        )));
    }
    data::check_classes_present(&data.train, &classes, &data.root.display().to_string())?;
    if meta.head_mode != req.hyper.head_mode {
        return Err(Error::Config(format!(
            "{} uses --head-mode {}, not {}",
            req.model.display(),
            meta.head_mode.name(),
            req.hyper.head_mode.name()
        )));
    }
    // Only joint reads old data; it must hold every class the model knows.
    let old_data = match (method, &req.old_data) {
        (Method::Joint, Some(spec)) => Some(load_data(spec)?),
        (Method::Joint, None) => Some(data.clone()),
        _ => None,
    };
    let old_views: Vec<TaskView> = match &old_data {
        Some(od) => {
            check_input(&req.model, &meta.arch, &od.train, &od.root)?;
            meta.tasks
                .iter()
                .map(|t| {
                    data::check_classes_present(&od.train, t, &od.root.display().to_string())
                        .map(|_| data::task_view(&od.train, t))
                })
                .collect::<Result<_>>()?
        }
        None => Vec::new(),
    };
    // joint trains on old and new images together: one split holding both.
    let (split, new_view, old_views) = match &old_data {
        Some(od) => merged(&od.train, &old_views, &data.train, &classes),
        None => (data.train.clone(), data::task_view(&data.train, &classes), old_views),
    };
    let t = meta.tasks.len();
    let mut tr = Trainer::new(b.clone());
    let run = serde_json::json!({
        "verb": "extend", "model": req.model, "data": data.root, "classes": classes, "method": method,
        "old_data": req.old_data, "seed": req.seed, "hyper": req.hyper,
    });
    tr.session = req.resumable.session(&req.out, run)?;
    let had_stats = ck.stats.is_some();
    let mut state = MethodState { fisher: ck.fisher, stats: ck.stats };
    let cx = TaskContext {
        split: &split,
        norm: Normalization { mean: meta.norm_mean, std: meta.norm_std },
        hyper: &req.hyper,
        seed: req.seed,
        obs,
    };
    let report = learn_task(&mut tr, &mut net, method, t, &new_view, &old_views, &mut state, &cx)?;
    meta.tasks.push(classes.clone());
    let mut heads = meta.heads.clone();
    match meta.head_mode {
        HeadMode::PerTask => heads.push(checkpoint::HeadMeta {
            classes: classes.clone(),
            class_names: class_names(data, &classes),
        }),
        HeadMode::Shared => {
            heads[0].classes.extend(&classes);
            heads[0].class_names.extend(class_names(data, &classes));
        }
    }
    meta.heads = heads;
    meta.history.push(HistoryEntry {
        verb: "extend".into(),
        method: method.name().into(),
        classes: classes.clone(),
        data: data.root.display().to_string(),
        epochs: req.hyper.epochs,
        seed: req.seed,
        train_seconds: report.train_seconds,
        sdc_sigma: report.drift.as_ref().map(|d| d.sigma),
        sdc_sigma_chosen_by: report.drift.as_ref().map(|d| d.how.clone()),
    });
    let fisher = fisher_after(
        &mut tr,
        &mut net,
        &split,
        cx.norm,
        &new_view,
        state.fisher.take(),
        &req.hyper,
        req.seed,
        t as u64 + 1,
    );
    let stats = state.stats.take();
    let acc = eval_present(&mut tr, &net, &meta, &data.test, cx.norm, req.hyper.batch_size, stats.as_ref());
    checkpoint::save(&req.out, b, &net, &meta, Some(&fisher), stats.as_ref())?;
    finish_session(&tr);
    let per: Vec<String> = meta
        .tasks
        .iter()
        .zip(&acc.task_aware)
        .map(|(t, a)| {
            if a.is_nan() {
                format!("{}: -", data::format_classes(t))
            } else {
                format!("{}: {:.2}%", data::format_classes(t), 100.0 * a)
            }
        })
        .collect();
    let stats_note = match (&stats, &report.drift) {
        (None, _) if !had_stats => {
            "; the model has no class statistics (saved by an older version): predictions use the heads"
                .into()
        }
        (Some(s), Some(d)) => format!(
            "; class statistics ({}) of {} classes, old means drift-compensated with σ = {} ({})",
            s.kind().name(),
            s.classes.len(),
            d.sigma,
            d.how
        ),
        (Some(s), None) => format!("; class statistics ({}) of {} classes", s.kind().name(), s.classes.len()),
        (None, _) => String::new(),
    };
    let cil = match acc.of(ClassifierKind::default_for(stats.as_ref())) {
        Some(c) if !c.overall.is_nan() => format!("; class-IL {:.2}% ({})", 100.0 * c.overall, c.kind),
        _ => String::new(),
    };
    Ok(format!(
        "extended with classes {} by {method} on {} in {:.1}s ({:.0} images/s); test accuracy per task [{}]{cil}{stats_note} → {}",
        data::format_classes(&classes),
        b.name(),
        report.train_seconds,
        report.images_per_second(),
        per.join(", "),
        req.out.display()
    ))
}

/// One split holding the old tasks' images followed by the new ones, with
/// task views into it (joint only).
fn merged(
    old: &Split,
    old_views: &[TaskView],
    new: &Split,
    classes: &[u32],
) -> (Split, TaskView, Vec<TaskView>) {
    let mut idx: Vec<usize> = Vec::new();
    let mut views = Vec::new();
    for v in old_views {
        let start = idx.len();
        idx.extend(&v.indices);
        views.push(TaskView { classes: v.classes.clone(), indices: (start..idx.len()).collect() });
    }
    let old_part = old.subset(&idx);
    let new_view = data::task_view(new, classes);
    let new_part = new.subset(&new_view.indices);
    let n_old = old_part.len();
    let split = concat(old_part, new_part);
    let new_view = TaskView { classes: classes.to_vec(), indices: (n_old..split.len()).collect() };
    (split, new_view, views)
}

fn concat(a: Split, b: Split) -> Split {
    use crate::data::Pixels;
    let pixels = match (a.pixels, b.pixels) {
        (Pixels::U8(mut x), Pixels::U8(y)) => {
            x.extend(y);
            Pixels::U8(x)
        }
        (x, y) => {
            let to_f32 = |p: Pixels| match p {
                Pixels::U8(v) => v.iter().map(|&p| p as f32 / 255.0).collect::<Vec<f32>>(),
                Pixels::F32(v) => v,
            };
            let mut x = to_f32(x);
            x.extend(to_f32(y));
            Pixels::F32(x)
        }
    };
    let mut labels = a.labels;
    labels.extend(b.labels);
    Split::new(pixels, labels, a.c, a.h, a.w)
}

/// Evaluate on the tasks whose classes the test split holds; the others are NaN.
fn eval_present<B: Backend>(
    tr: &mut Trainer<B>,
    net: &Net<B>,
    meta: &Meta,
    test: &Split,
    norm: Normalization,
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
            "has no class statistics (saved by an older version; only heads and aligned-heads work)"
                .to_string()
        } else {
            format!("has no {}", kind.needs().unwrap_or("statistics"))
        };
        return Err(Error::checkpoint(model, format!("--classifier {kind}: the model {why}")));
    }
    Ok(kind)
}

/// `eval`: accuracies of a saved model on a test split.
#[derive(Clone, Debug, Serialize)]
pub struct EvalReport {
    pub model: String,
    pub data: String,
    pub backend: String,
    pub tasks: Vec<Vec<u32>>,
    /// Per task; null where the data has no test image of that task.
    pub task_aware: Vec<Option<f64>>,
    /// The classifier behind `class_il` and `class_il_per_task`.
    pub classifier: ClassifierKind,
    pub class_il: f64,
    pub class_il_per_task: Vec<Option<f64>>,
    /// Every classifier the checkpoint allows: class-IL over all images.
    pub class_il_by_classifier: BTreeMap<String, f64>,
    pub images: usize,
    pub seconds: f64,
}

impl EvalReport {
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("serialisable")
    }
    pub fn to_table(&self) -> String {
        let pct = |a: &Option<f64>| a.map_or("-".to_string(), |a| format!("{:.2}%", 100.0 * a));
        let mut s = format!(
            "{} on {} ({}, {} images, {:.1}s)\n",
            self.model, self.data, self.backend, self.images, self.seconds
        );
        s += &format!("{:<8} {:<12} {:>10} {:>10}\n", "task", "classes", "task-aware", "class-IL");
        for (j, t) in self.tasks.iter().enumerate() {
            s += &format!(
                "{:<8} {:<12} {:>10} {:>10}\n",
                j + 1,
                data::format_classes(t),
                pct(&self.task_aware[j]),
                pct(&self.class_il_per_task[j])
            );
        }
        s += &format!(
            "class-incremental accuracy over all seen classes: {:.2}% ({})",
            100.0 * self.class_il,
            self.classifier
        );
        let others: Vec<String> =
            self.class_il_by_classifier.iter().map(|(k, v)| format!("{k} {:.2}%", 100.0 * v)).collect();
        s += &format!("\nby classifier: {}", others.join(", "));
        s
    }
}

/// `classifier`: the one behind the headline class-IL (default:
/// `ClassifierKind::default_for` the model's statistics).
pub fn eval(
    choice: BackendChoice,
    model: &Path,
    data_spec: &str,
    classifier: Option<ClassifierKind>,
) -> Result<EvalReport> {
    let data = load_data(data_spec)?;
    on_backend!(choice, b => eval_on(&b, model, &data, classifier))
}

fn eval_on<B: Backend>(
    b: &B,
    model: &Path,
    data: &Dataset,
    classifier: Option<ClassifierKind>,
) -> Result<EvalReport> {
    let ck = checkpoint::load(model, b)?;
    check_input(model, &ck.meta.arch, &data.test, &data.root)?;
    let kind = choose_classifier(model, classifier, ck.stats.as_ref())?;
    let mut tr = Trainer::new(b.clone());
    let norm = Normalization { mean: ck.meta.norm_mean, std: ck.meta.norm_std };
    let start = Instant::now();
    let acc = eval_present(&mut tr, &ck.net, &ck.meta, &data.test, norm, 128, ck.stats.as_ref());
    let chosen = acc.of(kind).expect("an available classifier is evaluated");
    let known = ck.meta.classes();
    let images = data.test.labels.iter().filter(|l| known.contains(l)).count();
    let opt = |v: &[f64]| v.iter().map(|a| if a.is_nan() { None } else { Some(*a) }).collect();
    Ok(EvalReport {
        model: model.display().to_string(),
        data: data.root.display().to_string(),
        backend: b.name(),
        tasks: ck.meta.tasks.clone(),
        task_aware: opt(&acc.task_aware),
        classifier: kind,
        class_il: chosen.overall,
        class_il_per_task: opt(&chosen.per_task),
        class_il_by_classifier: acc.by_classifier.iter().map(|c| (c.kind.name().into(), c.overall)).collect(),
        images,
        seconds: start.elapsed().as_secs_f64(),
    })
}

/// `predict`: the top-k classes of each image, over every class the model knows.
#[derive(Clone, Debug, Serialize)]
pub struct Prediction {
    pub image: usize,
    /// (class, name, probability), most likely first.
    pub top: Vec<(u32, String, f32)>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Predictions {
    pub model: String,
    pub input: String,
    /// Which classifier scored the classes (its `probability_rule` says how
    /// scores became probabilities).
    pub classifier: ClassifierKind,
    pub predictions: Vec<Prediction>,
}

impl Predictions {
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("serialisable")
    }
    pub fn to_table(&self) -> String {
        let rule = self.classifier.probability_rule();
        let mut lines = vec![format!("classifier {} (probabilities: {rule})", self.classifier)];
        for p in &self.predictions {
            let tops: Vec<String> =
                p.top.iter().map(|(c, n, pr)| format!("{n} ({c}) {:.1}%", 100.0 * pr)).collect();
            lines.push(format!("{:>6}  {}", p.image, tops.join("   ")));
        }
        lines.join("\n")
    }
}

pub fn predict(
    choice: BackendChoice,
    model: &Path,
    input: &Path,
    top_k: usize,
    limit: Option<usize>,
    classifier: Option<ClassifierKind>,
) -> Result<Predictions> {
    let mut images = data::load_images(input)?;
    if let Some(n) = limit {
        let keep: Vec<usize> = (0..images.len().min(n)).collect();
        images = images.subset(&keep);
    }
    on_backend!(choice, b => predict_on(&b, model, input, &images, top_k, classifier))
}

fn predict_on<B: Backend>(
    b: &B,
    model: &Path,
    input: &Path,
    images: &Split,
    top_k: usize,
    classifier: Option<ClassifierKind>,
) -> Result<Predictions> {
    let ck = checkpoint::load(model, b)?;
    check_input(model, &ck.meta.arch, images, input)?;
    let kind = choose_classifier(model, classifier, ck.stats.as_ref())?;
    let clf = FeatureClassifier::build(kind, b, &ck.net, &ck.meta.tasks, ck.stats.as_ref())
        .map_err(|e| Error::checkpoint(model, e))?;
    let norm = Normalization { mean: ck.meta.norm_mean, std: ck.meta.norm_std };
    let mut tr = Trainer::new(b.clone());
    let all: Vec<usize> = (0..images.len()).collect();
    let feats = tr.features(&ck.net, images, norm, &all, 128);
    let scores = clf.scores(&feats, images.len());
    let nc = clf.classes.len();
    let mut predictions = Vec::with_capacity(images.len());
    for i in 0..images.len() {
        let p = clf.probabilities(&scores[i * nc..(i + 1) * nc]);
        let mut order: Vec<usize> = (0..nc).collect();
        order.sort_by(|&a, &b| p[b].total_cmp(&p[a]));
        let top = order
            .iter()
            .take(top_k.max(1))
            .map(|&k| (clf.classes[k], ck.meta.class_name(clf.classes[k]), p[k]))
            .collect();
        predictions.push(Prediction { image: i, top });
    }
    Ok(Predictions {
        model: model.display().to_string(),
        input: input.display().to_string(),
        classifier: kind,
        predictions,
    })
}

/// `experiment`: methods × seeds on a protocol; writes JSON, CSV and SVG.
pub struct ExperimentRequest {
    pub data: String,
    pub protocol: String,
    pub tasks: Option<String>,
    pub methods: String,
    pub seeds: String,
    pub out: PathBuf,
    pub train_limit: Option<usize>,
    pub test_limit: Option<usize>,
    pub hyper: Hyper,
    /// Keep the runs already in `out` (same settings) and run the rest.
    pub resume: bool,
    /// `(i, n)`: run only share i of n of the (seed, method) runs.
    pub shard: Option<(usize, usize)>,
}

/// `--shard i/n`: i from 0 to n − 1, as Slurm's `SLURM_ARRAY_TASK_ID` (with
/// `--array=0-N`) and Kubernetes' `JOB_COMPLETION_INDEX` count.
pub fn parse_shard(s: &str) -> Result<(usize, usize)> {
    let bad = || Error::Config(format!("--shard '{s}': expected i/n with 0 ≤ i < n, e.g. 0/4"));
    let (i, n) = s.split_once('/').ok_or_else(bad)?;
    let (i, n): (usize, usize) = (i.trim().parse().map_err(|_| bad())?, n.trim().parse().map_err(|_| bad())?);
    if n == 0 || i >= n {
        return Err(bad());
    }
    Ok((i, n))
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

/// A limit of 0 images would train or test on nothing: refused before any work.
fn check_limits(limits: &[(&str, Option<usize>)]) -> Result<()> {
    match limits.iter().find(|(_, v)| *v == Some(0)) {
        Some((flag, _)) => Err(Error::Config(format!("{flag} must be at least 1 (0 keeps no image)"))),
        None => Ok(()),
    }
}

/// Parse the request into a config against the loaded data.
pub fn experiment_config(req: &ExperimentRequest, data: &Dataset) -> Result<ExperimentConfig> {
    let (protocol, tasks) = match &req.tasks {
        Some(t) => ("custom".to_string(), data::parse_tasks(t)?),
        None => (req.protocol.clone(), data::protocol_tasks(&req.protocol, data.num_classes)?),
    };
    let methods = Method::parse_list(&req.methods)?;
    if methods.is_empty() {
        return Err(Error::Config("--methods is empty".into()));
    }
    let seeds = req
        .seeds
        .split(',')
        .filter(|s| !s.trim().is_empty())
        .map(|s| {
            s.trim().parse::<u64>().map_err(|_| Error::Config(format!("--seeds: '{s}' is not a number")))
        })
        .collect::<Result<Vec<u64>>>()?;
    if seeds.is_empty() {
        return Err(Error::Config("--seeds is empty".into()));
    }
    check_limits(&[("--train-limit", req.train_limit), ("--test-limit", req.test_limit)])?;
    Ok(ExperimentConfig {
        protocol,
        tasks,
        methods,
        seeds,
        hyper: req.hyper.clone(),
        train_limit: req.train_limit,
        test_limit: req.test_limit,
    })
}

pub fn experiment(choice: BackendChoice, req: &ExperimentRequest, obs: &dyn Observer) -> Result<String> {
    crate::fsio::check_output_dir(&req.out)?;
    let data = load_data(&req.data)?;
    let cfg = experiment_config(req, &data)?;
    let mut results =
        if req.resume { crate::results::finished_runs(&req.out, &cfg, &data)? } else { Vec::new() };
    if req.resume {
        obs.note(&format!("resuming: {} finished runs kept from {}", results.len(), req.out.display()));
    }
    let done: Vec<(String, u64)> = results.iter().map(|r| (r.method.clone(), r.seed)).collect();
    let elsewhere = |m: Method, seed: u64| req.shard.is_some_and(|(i, n)| shard_of(&cfg, m, seed, n) != i);
    let skip = |m: Method, seed: u64| {
        elsewhere(m, seed) || done.iter().any(|(name, s)| name == m.name() && *s == seed)
    };
    if let Some((i, n)) = req.shard {
        let mine = cfg.seeds.iter().flat_map(|&s| cfg.methods.iter().map(move |&m| (m, s)));
        if mine.filter(|&(m, s)| !elsewhere(m, s)).count() == 0 {
            return Ok(format!(
                "shard {i}/{n}: no run falls to this shard (the experiment has fewer runs than shards)"
            ));
        }
    }
    let device = on_backend!(choice, b => {
        let device = b.name();
        run_experiment_with(&b, &data, &cfg, obs, &skip, &mut |run| {
            results.push(crate::results::write_run(&req.out, &cfg, &data, &device, &run)?);
            Ok(())
        })?;
        device
    });
    crate::results::write_reports(&req.out, &cfg, &data, &device, results)
}

/// `bench`: throughput of the three things an experiment spends its time on.
#[derive(Clone, Debug, Serialize)]
pub struct BenchReport {
    pub backend: String,
    pub threads: usize,
    pub batch_size: usize,
    /// Task 1 (classes 0-4) plain training, images/s over its epochs.
    pub plain_epoch_images_per_second: f64,
    /// Task 2's whole LwF phase: Y_o recording + warm-up + epochs.
    pub lwf_phase_images_per_second: f64,
    /// Inference over the whole test set.
    pub eval_images_per_second: f64,
    pub peak_rss_mb: f64,
    pub plain_seconds: f64,
    pub lwf_seconds: f64,
    pub eval_seconds: f64,
}

impl BenchReport {
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("serialisable")
    }
    pub fn to_table(&self) -> String {
        format!(
            "backend {} (rayon threads {}), batch {}\n\
             plain epoch     {:>9.0} images/s  ({:.2}s)\n\
             LwF phase       {:>9.0} images/s  ({:.2}s)\n\
             evaluation      {:>9.0} images/s  ({:.2}s)\n\
             peak RSS        {:>9.1} MB",
            self.backend,
            self.threads,
            self.batch_size,
            self.plain_epoch_images_per_second,
            self.plain_seconds,
            self.lwf_phase_images_per_second,
            self.lwf_seconds,
            self.eval_images_per_second,
            self.eval_seconds,
            self.peak_rss_mb
        )
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

/// Time task 1's plain training, task 2's whole LwF phase and an evaluation
/// of the test set, with the same code and definitions as `experiment`.
pub fn bench(
    choice: BackendChoice,
    data_spec: &str,
    train_limit: Option<usize>,
    hyper: &Hyper,
    obs: &dyn Observer,
) -> Result<BenchReport> {
    check_limits(&[("--train-limit", train_limit)])?;
    let data = load_data(data_spec)?;
    on_backend!(choice, b => bench_on(&b, &data, train_limit, hyper, obs))
}

fn bench_on<B: Backend>(
    b: &B,
    data: &Dataset,
    train_limit: Option<usize>,
    hyper: &Hyper,
    obs: &dyn Observer,
) -> Result<BenchReport> {
    let tasks = data::protocol_tasks("two-task", data.num_classes)?;
    let arch = Arch::cnn_s([data.train.c, data.train.h, data.train.w]);
    let views: Vec<TaskView> = tasks
        .iter()
        .map(|t| {
            let v = data::task_view(&data.train, t);
            match train_limit {
                Some(n) => v.limit(n),
                None => v,
            }
        })
        .collect();
    let mut tr = Trainer::new(b.clone());
    let cx = TaskContext { split: &data.train, norm: data.norm, hyper, seed: 0, obs };
    let mut net = Net::new(b, arch, &mut Rng::derive(0, streams::TRUNK));
    let plain = train_first_task(&mut tr, &mut net, &views[0], &cx)?;
    let lwf =
        learn_task(&mut tr, &mut net, Method::Lwf, 1, &views[1], &[], &mut MethodState::default(), &cx)?;
    let start = Instant::now();
    let _ =
        evaluate(&mut tr, &net, &data.test, data.norm, &tasks, hyper.head_mode, hyper.batch_size, None, &[]);
    let eval_seconds = start.elapsed().as_secs_f64();
    Ok(BenchReport {
        backend: b.name(),
        threads: rayon::current_num_threads(),
        batch_size: hyper.batch_size,
        plain_epoch_images_per_second: plain.images_per_second(),
        lwf_phase_images_per_second: lwf.images_per_second(),
        eval_images_per_second: data.test.len() as f64 / eval_seconds,
        peak_rss_mb: peak_rss_mb(),
        plain_seconds: plain.train_seconds,
        lwf_seconds: lwf.train_seconds,
        eval_seconds,
    })
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
