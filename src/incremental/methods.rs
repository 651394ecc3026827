//! What each method does to learn a task (DESIGN.md "LwF" and "Baselines").
//!
//! LwF's four steps: (1) record Y_o = old model(X_new) once; (2) add the new
//! head; (3) warm up only the new head; (4) train θs, θo, θn together on
//! `λ_o·Σ KD + CE + R`. The baselines differ only in which parameters train
//! and which loss terms exist, so each is a few lines here.

use super::stats::{ClassStats, DriftReport, Sigma, StatsKind};
use super::train::{Anchors, Example, LossPlan, Phase, Teacher, Trainer, Validation};
use super::{feature_metric, FeatureMetric, HeadMode, Hyper, KdSoftmax, Method, Observer, Ssl, TeacherMode};
use crate::backend::Backend;
use crate::data::augment::{rotated, shape_keeping_turns};
use crate::data::split::TaskView;
use crate::data::{Normalization, Split};
use crate::error::{Error, Result};
use crate::metrics::{TaskTiming, ValPoint};
use crate::nn::{Arch, BnPolicy, Net};
use crate::param::Linear;
use crate::rng::Rng;
use crate::step::KdConcat;
use std::time::Instant;

/// Random streams of a run, `Rng::derive(seed, STREAM + task)`: each use has
/// its own, so e.g. every method sees the same shuffles at task t.
pub mod streams {
    pub const TRUNK: u64 = 0;
    pub const HEAD: u64 = 100;
    pub const SHUFFLE: u64 = 500;
    pub const FISHER: u64 = 700;
    pub const VALIDATION: u64 = 900;
    /// The first task's rotation head (`--ssl rotation`).
    pub const SSL_HEAD: u64 = 1100;
}

/// What learning one task did: where the time went and, when it ran, what
/// drift compensation did.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TaskReport {
    pub timing: TaskTiming,
    /// The loss of the last training step.
    pub last_loss: f32,
    pub drift: Option<DriftReport>,
    /// The task's validation images after each epoch (empty without
    /// `--val-fraction`).
    pub validation: Vec<ValPoint>,
}

impl TaskReport {
    /// Add a training phase; its epochs continue the task's numbering.
    fn add(&mut self, phase: Phase) {
        let before = self.timing.epoch_seconds.len();
        self.validation
            .extend(phase.validation.into_iter().map(|p| ValPoint { epoch: before + p.epoch, ..p }));
        self.timing.add_phase(phase.timing);
        self.last_loss = phase.last_loss;
    }

    /// Validation accuracy after the last epoch.
    pub fn final_validation_accuracy(&self) -> Option<f64> {
        self.validation.last().map(|p| p.accuracy)
    }
}

/// Split a task's training images into the part that trains and the
/// validation part (`--val-fraction`, stratified, seeded per task).
pub fn validation_split(view: &TaskView, cx: &TaskContext<'_>, t: usize) -> (TaskView, TaskView) {
    let f = cx.hyper.val_fraction;
    if f <= 0.0 {
        return (view.clone(), TaskView { classes: view.classes.clone(), indices: Vec::new() });
    }
    view.hold_out(cx.split, f, &mut Rng::derive(cx.seed, streams::VALIDATION + t as u64))
}

/// What a method carries from task to task.
pub struct MethodState<B: Backend> {
    /// EWC: the summed diagonal Fisher of θs over finished tasks.
    pub fisher: Option<Vec<B::Buf>>,
    /// Statistics of every class learnt so far; when present, the new
    /// task's classes are added and the old ones drift-compensated.
    pub stats: Option<ClassStats>,
}

impl<B: Backend> MethodState<B> {
    /// A deep copy (the Fisher's buffers copied on the device), so a trial
    /// can change it and be thrown away.
    pub fn duplicate(&self, b: &B) -> Self {
        MethodState {
            fisher: self.fisher.as_ref().map(|f| f.iter().map(|x| dup_buf(b, x)).collect()),
            stats: self.stats.clone(),
        }
    }
}

impl<B: Backend> Default for MethodState<B> {
    fn default() -> Self {
        MethodState { fisher: None, stats: None }
    }
}

/// Everything a task's training reads: the split, its normalisation, the
/// hyper-parameters, the seed and where progress goes.
pub struct TaskContext<'c> {
    pub split: &'c Split,
    pub norm: &'c Normalization,
    pub hyper: &'c Hyper,
    pub seed: u64,
    pub obs: &'c dyn Observer,
}

/// Examples of a task view, each on the head that holds its class and
/// labelled by its position there (the first head holding it; a class is in
/// one head). One view may span several heads: a task's own, or known
/// classes that `extend` is given more images of beside new ones.
pub fn examples_on_heads<B: Backend>(net: &Net<B>, view: &TaskView, split: &Split) -> Vec<Example> {
    view.indices
        .iter()
        .map(|&idx| {
            let class = split.labels[idx];
            let (head, label) = net
                .heads
                .iter()
                .enumerate()
                .find_map(|(h, head)| head.classes.iter().position(|&c| c == class).map(|l| (h, l as u32)))
                .expect("a head for every class of the view");
            Example { idx, head, label }
        })
        .collect()
}

/// Examples of a task view for head `head`, labelled by their position in
/// `head_classes`.
pub fn examples_for(view: &TaskView, split: &Split, head: usize, head_classes: &[u32]) -> Vec<Example> {
    view.indices
        .iter()
        .map(|&idx| {
            let label =
                head_classes.iter().position(|&c| c == split.labels[idx]).expect("label of a task class")
                    as u32;
            Example { idx, head, label }
        })
        .collect()
}

/// Class statistics of `kind` of a task's classes from its training images
/// under the current trunk.
pub fn task_stats<B: Backend>(
    tr: &mut Trainer<B>,
    net: &Net<B>,
    view: &TaskView,
    cx: &TaskContext<'_>,
    kind: StatsKind,
) -> ClassStats {
    let feats = tr.features(net, cx.split, cx.norm, &view.indices, cx.hyper.batch_size);
    let labels: Vec<u32> = view.indices.iter().map(|&i| cx.split.labels[i]).collect();
    ClassStats::compute(&feats, &labels, &view.classes, net.arch.hidden, kind)
}

/// Task 1: a fresh head on a fresh (or given) trunk, all trained with CE.
pub fn train_first_task<B: Backend>(
    tr: &mut Trainer<B>,
    net: &mut Net<B>,
    view: &TaskView,
    cx: &TaskContext<'_>,
) -> Result<TaskReport> {
    let start = Instant::now();
    let (view, val_view) = validation_split(view, cx, 0);
    net.add_head(&tr.b, &mut Rng::derive(cx.seed, streams::HEAD), &view.classes);
    let h = net.heads.len() - 1;
    net.set_trainable(true, 0, &[h]);
    let mut examples = examples_for(&view, cx.split, h, &view.classes);
    let val = Validation {
        examples: examples_for(&val_view, cx.split, h, &view.classes),
        teachers: Vec::new(),
        temperature: cx.hyper.temperature,
    };
    let mut plan = LossPlan {
        ce_heads: vec![h],
        teachers: &[],
        anchors: None,
        live: None,
        old_features: None,
        kd_concat: None,
        feature_metric: None,
    };
    // Rotation self-supervision: the turned copies of the training images
    // join the split (after every original image, so the class head's and
    // the validation's indices stay valid) and train an extra head of
    // (class, turn) pairs beside the class head.
    let rotated;
    let split = match cx.hyper.ssl {
        Ssl::Off => cx.split,
        Ssl::Rotation => {
            let (split, extra) = rotation_examples(cx.split, &examples, net.heads.len());
            let labels = (0..extra.iter().map(|e| e.label + 1).max().unwrap_or(0)).collect::<Vec<u32>>();
            net.add_head(&tr.b, &mut Rng::derive(cx.seed, streams::SSL_HEAD), &labels);
            net.set_trainable(true, 0, &[h, h + 1]);
            plan.ce_heads.push(h + 1);
            examples.extend(extra);
            rotated = split;
            &rotated
        }
    };
    let mut rng = Rng::derive(cx.seed, streams::SHUFFLE);
    // A net trained from scratch has no running statistics worth keeping:
    // `--bn` is a policy for new tasks, the first always trains BatchNorm.
    let hyper = Hyper { bn: BnPolicy::Train, ..cx.hyper.unramped() };
    let phase = tr.run_epochs(
        net,
        split,
        cx.norm,
        &examples,
        &plan,
        &hyper,
        cx.hyper.epochs,
        &mut rng,
        cx.obs,
        "task 1",
        Some(&val),
    )?;
    if cx.hyper.ssl == Ssl::Rotation {
        // The pretext head has done its work: the model keeps the class head.
        net.heads.truncate(h + 1);
        net.set_trainable(true, 0, &[h]);
    }
    let mut report = TaskReport::default();
    report.add(phase);
    report.timing.train_seconds = start.elapsed().as_secs_f64() - report.timing.validation_seconds;
    Ok(report)
}

/// Rotation self-supervision's training examples for a task whose class
/// examples are `examples` (labels are positions among the task's classes):
/// `split` followed by the examples' images turned by each shape-keeping
/// turn but none, and one example per image and turn (the upright ones
/// included) for head `head`, labelled `class · turns + turn`.
pub fn rotation_examples(split: &Split, examples: &[Example], head: usize) -> (Split, Vec<Example>) {
    let turns = shape_keeping_turns(split.h, split.w);
    let idx: Vec<usize> = examples.iter().map(|e| e.idx).collect();
    let n = split.len();
    let mut all = split.clone();
    let mut extra = Vec::with_capacity(examples.len() * turns.len());
    for (k, &turn) in turns.iter().enumerate() {
        if turn != 0 {
            all = all.concat(rotated(split, &idx, turn));
        }
        let label_of = |e: &Example| e.label * turns.len() as u32 + k as u32;
        extra.extend(examples.iter().enumerate().map(|(j, e)| Example {
            // The upright copy is the original image; turned copies follow
            // the split in blocks of `examples.len()`.
            idx: if turn == 0 { e.idx } else { n + (k - 1) * examples.len() + j },
            head,
            label: label_of(e),
        }));
    }
    (all, extra)
}

/// FLOPs per new image of LwF's whole phase for a second task, following
/// [`learn_task`]'s steps (the counts per image are `Arch`'s): Y_o recorded
/// once (forward through the old head), `warmup_epochs` with the trunk
/// frozen (per task: forward and weight gradient of the new head alone;
/// shared: of the whole grown head, which KD keeps in place) and `epochs`
/// training everything. `bench` divides it by the phase's seconds, which
/// cover the same work.
pub fn lwf_phase_flops(
    arch: &Arch,
    mode: HeadMode,
    old_classes: usize,
    new_classes: usize,
    warmup_epochs: usize,
    epochs: usize,
) -> f64 {
    let record = arch.forward_flops(&[old_classes]);
    let (warm, main) = match mode {
        HeadMode::PerTask => (
            arch.head_train_flops(&[new_classes], &[new_classes]),
            arch.train_flops(&[old_classes, new_classes]),
        ),
        HeadMode::Shared => {
            let all = old_classes + new_classes;
            (arch.head_train_flops(&[all], &[all]), arch.train_flops(&[all]))
        }
    };
    record + warmup_epochs as f64 * warm + epochs as f64 * main
}

/// Learn task `t` (t ≥ 1) with `method`. `old` holds the finished tasks' data
/// in task order; only `joint` (and `ewc`, for its Fisher, when no Fisher was
/// carried in) read it.
#[allow(clippy::too_many_arguments)]
pub fn learn_task<B: Backend>(
    tr: &mut Trainer<B>,
    net: &mut Net<B>,
    method: Method,
    t: usize,
    new: &TaskView,
    old: &[TaskView],
    state: &mut MethodState<B>,
    cx: &TaskContext<'_>,
) -> Result<TaskReport> {
    let start = Instant::now();
    let hyper = cx.hyper;
    let unramped = hyper.unramped();
    let b = tr.b.clone();
    let mode = method.head_mode(hyper.head_mode);
    let old_heads: Vec<usize> = (0..net.heads.len()).collect();
    let mut report = TaskReport::default();
    // From here on `new` is the part that trains; `val_view` is held out.
    let (train_part, val_view) = validation_split(new, cx, t);
    let new = &train_part;

    // (1) LwF: the old model's outputs on the new images, before any change;
    // in the same pass, the old trunk's features of the new images (drift
    // compensation of the class statistics).
    let compensate = state.stats.is_some()
        && method.moves_trunk()
        && !method.needs_old_data()
        && hyper.sdc_sigma != Sigma::Off;
    let mut teachers: Vec<Teacher> = Vec::new();
    let mut old_features = Vec::new();
    // LwF's feature distillation reads the same old features.
    let distil_features = method == Method::Lwf && hyper.lambda_f > 0.0;
    if method == Method::Lwf || compensate {
        let t0 = Instant::now();
        let probe = examples_for(new, cx.split, 0, &new.classes); // labels unused
        let heads: &[usize] = if method == Method::Lwf { &old_heads } else { &[] };
        (teachers, old_features) = tr.record_outputs(
            net,
            cx.split,
            cx.norm,
            &probe,
            heads,
            hyper.batch_size,
            compensate || distil_features,
        );
        if method == Method::Lwf {
            report.timing.yo_record_seconds = Some(t0.elapsed().as_secs_f64());
        } else {
            report.timing.stats_seconds = t0.elapsed().as_secs_f64();
        }
    }

    // `--teacher live` with augmented views: the old model itself, kept
    // unchanged beside the one that trains, gives the targets of each view.
    let augmenting = hyper.augment.views(cx.split.c, cx.split.h, cx.split.w).is_some();
    let live = (method == Method::Lwf && hyper.teacher == TeacherMode::Live && augmenting)
        .then(|| net.frozen_copy(&b));
    // `--feature-metric efm`: the old heads' metric, from their weights and
    // outputs before anything trains.
    let metric = (distil_features && hyper.feature_metric == FeatureMetric::Efm && !teachers.is_empty())
        .then(|| efm_map(&b, net, &teachers));

    // The old model's outputs on the validation images too (LwF reports
    // the distillation loss on them after every epoch).
    let mut val_teachers = Vec::new();
    if method == Method::Lwf && !val_view.indices.is_empty() {
        let t0 = Instant::now();
        let probe = examples_for(&val_view, cx.split, 0, &val_view.classes);
        (val_teachers, _) =
            tr.record_outputs(net, cx.split, cx.norm, &probe, &old_heads, hyper.batch_size, false);
        report.timing.validation_seconds += t0.elapsed().as_secs_f64();
    }

    // EWC: Fisher of the task just finished, at the parameters it ended with.
    if method == Method::Ewc && old.len() < t && state.fisher.is_none() {
        return Err(crate::Error::Config(
            "ewc needs the old task's Fisher information: the model carries none and no old data was given"
                .into(),
        ));
    }
    if method == Method::Ewc && old.len() >= t {
        add_task_fisher(tr, net, &old[t - 1], t as u64, cx, &mut state.fisher);
    }
    let anchors = match method {
        Method::L2 | Method::Ewc => Some(Anchors {
            values: net.trunk_params().iter().map(|p| p.value.duplicate(&b).buf).collect(),
            fisher: if method == Method::Ewc {
                state.fisher.as_ref().map(|f| f.iter().map(|x| dup_buf(&b, x)).collect())
            } else {
                None
            },
            scale: if method == Method::Ewc { hyper.lambda_ewc / 2.0 } else { hyper.lambda_l2 },
        }),
        _ => None,
    };

    // (2) The new outputs: a new head, or new rows of the shared head, for
    // the classes no head holds yet. Known classes among `new` (more images
    // of them) keep their head and train there.
    let fresh: Vec<u32> =
        new.classes.iter().copied().filter(|c| !net.heads.iter().any(|h| h.classes.contains(c))).collect();
    let mut head_rng = Rng::derive(cx.seed, streams::HEAD + t as u64);
    let new_head = (!fresh.is_empty()).then(|| match mode {
        HeadMode::PerTask => {
            net.add_head(&b, &mut head_rng, &fresh);
            net.heads.len() - 1
        }
        HeadMode::Shared => {
            net.grow_head(&b, &mut head_rng, 0, &fresh);
            0
        }
    });
    let mut examples = examples_on_heads(net, new, cx.split);
    let val = Validation {
        examples: examples_on_heads(net, &val_view, cx.split),
        teachers: val_teachers,
        temperature: hyper.temperature,
    };
    // The heads the new images train: the new one and those of known classes.
    let mut trained_heads: Vec<usize> = examples.iter().map(|e| e.head).collect();
    trained_heads.sort_unstable();
    trained_heads.dedup();
    let all_heads: Vec<usize> = (0..net.heads.len()).collect();
    let mut rng = Rng::derive(cx.seed, streams::SHUFFLE + t as u64);
    let label = format!("task {} {method}", t + 1);

    // (3) LwF's warm-up: only the new outputs train. In per-task mode the old
    // heads and θs are frozen, so their outputs equal Y_o and KD is constant
    // (omitted, as the reference). In shared mode the whole head trains, so
    // KD keeps the old outputs in place.
    // Without new classes there is no new output to warm up.
    if let (Method::Lwf, Some(new_head), true) = (method, new_head, hyper.warmup_epochs > 0) {
        net.set_trainable(false, 0, &[new_head]);
        let kd: &[Teacher] = if mode == HeadMode::Shared { &teachers } else { &[] };
        let plan = LossPlan {
            ce_heads: vec![new_head],
            teachers: kd,
            anchors: None,
            live: live.as_ref(),
            old_features: None,
            kd_concat: None,
            feature_metric: None,
        };
        let warm = format!("{label} warm-up");
        let phase = tr.run_epochs(
            net,
            cx.split,
            cx.norm,
            &examples,
            &plan,
            &unramped,
            hyper.warmup_epochs,
            &mut rng,
            cx.obs,
            &warm,
            Some(&val),
        )?;
        report.add(phase);
    }

    // (4) The main phase.
    let mut ce_heads = trained_heads.clone();
    match method {
        Method::Lwf | Method::Joint | Method::JointShared => net.set_trainable(true, 0, &all_heads),
        Method::Finetune | Method::L2 | Method::Ewc => net.set_trainable(true, 0, &trained_heads),
        Method::Freeze => net.set_trainable(true, hyper.freeze_layers, &trained_heads),
        Method::FeatureExtraction => net.set_trainable(false, 0, &trained_heads),
    }
    if method.needs_old_data() {
        for view in old {
            let view_examples = examples_on_heads(net, view, cx.split);
            ce_heads.extend(view_examples.iter().map(|e| e.head));
            examples.extend(view_examples);
        }
        ce_heads.sort_unstable();
        ce_heads.dedup();
    }
    let kd: &[Teacher] = if method == Method::Lwf { &teachers } else { &[] };
    // One softmax over the old tasks only means something with two or more.
    let kd_concat = (hyper.kd_softmax == KdSoftmax::All && kd.len() > 1)
        .then(|| KdConcat::new(&b, &kd.iter().map(|t| t.cols).collect::<Vec<_>>()));
    let plan = LossPlan {
        ce_heads,
        teachers: kd,
        anchors: anchors.as_ref(),
        live: live.as_ref(),
        old_features: distil_features.then_some(old_features.as_slice()),
        kd_concat: kd_concat.as_ref(),
        feature_metric: metric.as_ref(),
    };
    let phase = tr.run_epochs(
        net,
        cx.split,
        cx.norm,
        &examples,
        &plan,
        if method == Method::Lwf { hyper } else { &unramped },
        hyper.epochs,
        &mut rng,
        cx.obs,
        &label,
        Some(&val),
    )?;
    report.add(phase);
    net.set_trainable(true, 0, &all_heads);
    report.timing.train_seconds =
        start.elapsed().as_secs_f64() - report.timing.stats_seconds - report.timing.validation_seconds;

    // The class statistics: the old classes' moved (or, by joint, recomputed
    // on the old images it keeps), the new classes' measured.
    if let Some(stats) = state.stats.as_mut() {
        let t0 = Instant::now();
        let kind = stats.kind();
        let new_features = tr.features(net, cx.split, cx.norm, &new.indices, hyper.batch_size);
        let labels: Vec<u32> = new.indices.iter().map(|&i| cx.split.labels[i]).collect();
        if method.needs_old_data() && old.len() >= t {
            let mut fresh = ClassStats::empty(net.arch.hidden, kind);
            for view in &old[..t] {
                fresh.append(task_stats(tr, net, view, cx, kind));
            }
            *stats = fresh;
        } else if compensate {
            report.drift =
                stats.compensate(&old_features, &new_features, &labels, hyper.sdc_sigma, hyper.cov_drift);
        }
        // Known classes among `new`: the measured statistics are merged with
        // the (compensated) old ones, count-weighted; new classes appended.
        stats.merge(ClassStats::compute(&new_features, &labels, &new.classes, net.arch.hidden, kind));
        report.timing.stats_seconds += t0.elapsed().as_secs_f64();
    }
    Ok(report)
}

/// `--freeze-layers N` freezes the first N parameterised trunk layers: N
/// beyond the trunk's depth is a mistake, not "freeze everything" (that is
/// `--method feature-extraction`).
pub fn check_freeze_layers<B: Backend>(net: &Net<B>, method: Method, hyper: &Hyper) -> Result<()> {
    let depth = net.trunk_depth();
    if method == Method::Freeze && hyper.freeze_layers > depth {
        return Err(Error::Config(format!(
            "--freeze-layers {}: {} has {depth} trunk layers with parameters (0 to {depth}; all of them is \
             --method feature-extraction)",
            hyper.freeze_layers, net.arch.name
        )));
    }
    Ok(())
}

/// EWC's diagonal Fisher of finished task number `task` (1-based), at the
/// parameters the net holds now, added to `fisher` (created on first use).
/// The one place that says which examples estimate it: `ewc_samples` of the
/// task's training images, shuffled by the seed's Fisher stream. `learn_task`
/// uses it when it has the old data, `train`/`extend` to store it in the
/// checkpoint so a later `extend --method ewc` needs none. Leaves every
/// parameter trainable.
pub fn add_task_fisher<B: Backend>(
    tr: &mut Trainer<B>,
    net: &mut Net<B>,
    view: &TaskView,
    task: u64,
    cx: &TaskContext<'_>,
    fisher: &mut Option<Vec<B::Buf>>,
) {
    let b = tr.b.clone();
    let mut ex = examples_on_heads(net, view, cx.split);
    Rng::derive(cx.seed, streams::FISHER + task).shuffle(&mut ex);
    ex.truncate(cx.hyper.ewc_samples);
    let sums =
        fisher.get_or_insert_with(|| net.trunk_params().iter().map(|p| b.zeros(p.value.numel())).collect());
    tr.accumulate_fisher(net, cx.split, cx.norm, &ex, sums);
    let all: Vec<usize> = (0..net.heads.len()).collect();
    net.set_trainable(true, 0, &all);
}

fn dup_buf<B: Backend>(b: &B, x: &B::Buf) -> B::Buf {
    let n = b.len(x);
    let mut y = b.zeros(n);
    b.copy(&mut y, 0, x, 0, n);
    y
}

/// `--feature-metric efm`: the fixed map that applies EFC's metric
/// ([`feature_metric`]), from the old heads' weights (the rows their
/// teachers distil) and their recorded outputs on the new images, joined.
fn efm_map<B: Backend>(b: &B, net: &Net<B>, teachers: &[Teacher]) -> Linear<B> {
    let d = net.arch.hidden;
    let c: usize = teachers.iter().map(|t| t.cols).sum();
    let n = teachers[0].logits.len() / teachers[0].cols;
    let mut w = Vec::with_capacity(c * d);
    for t in teachers {
        w.extend_from_slice(&net.heads[t.head].linear.w.value.to_vec(b)[..t.cols * d]);
    }
    let mut z = Vec::with_capacity(n * c);
    for i in 0..n {
        for t in teachers {
            z.extend_from_slice(&t.logits[i * t.cols..(i + 1) * t.cols]);
        }
    }
    let m = feature_metric::metric(&feature_metric::empirical_feature_matrix(&w, &z, c, d), d);
    Linear::fixed(b, "feature_metric", &feature_metric::metric_map(&m, d), d, d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::Pixels;

    /// Three 2×2 images; the task's examples are images 0 and 2.
    #[test]
    fn rotation_examples_point_at_turned_copies_with_class_and_turn_labels() {
        let split = Split::new(Pixels::U8((0..12).collect()), vec![4, 9, 6], 1, 2, 2);
        let examples = [Example { idx: 0, head: 0, label: 0 }, Example { idx: 2, head: 0, label: 1 }];
        let (all, extra) = rotation_examples(&split, &examples, 1);
        assert_eq!(all.len(), 3 + 2 * 3, "three turned copies of two images after the split");
        assert_eq!(extra.len(), 2 * 4);
        let px = |s: &Split, i: usize| match &s.pixels {
            Pixels::U8(v) => v[i * 4..(i + 1) * 4].to_vec(),
            Pixels::F32(_) => unreachable!(),
        };
        for e in &extra {
            assert_eq!(e.head, 1);
            let (class, turn) = (e.label / 4, e.label % 4);
            let original = examples[class as usize].idx;
            // The example's image is its original turned `turn` times.
            assert_eq!(px(&all, e.idx), px(&rotated(&split, &[original], turn as usize), 0), "{e:?}");
        }
        let mut labels: Vec<u32> = extra.iter().map(|e| e.label).collect();
        labels.sort_unstable();
        assert_eq!(labels, (0..8).collect::<Vec<u32>>(), "each (class, turn) pair once");
    }
}
