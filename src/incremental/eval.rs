//! Evaluation: task-aware accuracy (argmax within each task's own outputs)
//! and class-incremental accuracy (argmax over all outputs of all tasks seen).
//! Per batch the device returns only each head's row maxima and their
//! positions; the comparison across heads happens on the host. The other
//! class-incremental classifiers ([`super::classifier`]) score the trunk's
//! features, read back per batch, on the host.

use super::classifier::{ClassifierKind, FeatureClassifier};
use super::stats::ClassStats;
use super::train::Trainer;
use super::HeadMode;
use crate::autodiff::{Tape, Workspace};
use crate::backend::Backend;
use crate::data::{Normalization, Split};
use crate::nn::{Linear, Net};

/// Accuracies after a task, as fractions in [0, 1].
#[derive(Clone, Debug, PartialEq)]
pub struct Accuracies {
    /// Per seen task j: accuracy of task j's outputs on task j's test images.
    pub task_aware: Vec<f64>,
    /// Over all test images of the seen classes.
    pub class_il: f64,
    /// Class-IL accuracy restricted to each task's test images.
    pub class_il_per_task: Vec<f64>,
    /// Class-IL accuracy of every classifier the model allows (`heads` is
    /// the same as `class_il`).
    pub by_classifier: Vec<ClassIl>,
}

/// Class-incremental accuracy of one classifier.
#[derive(Clone, Debug, PartialEq)]
pub struct ClassIl {
    pub kind: ClassifierKind,
    pub overall: f64,
    pub per_task: Vec<f64>,
}

impl Accuracies {
    /// The class-IL figures of `kind`, when it was evaluated.
    pub fn of(&self, kind: ClassifierKind) -> Option<&ClassIl> {
        self.by_classifier.iter().find(|c| c.kind == kind)
    }
}

/// One evaluation output block per task, with the global class of each output.
fn task_heads<B: Backend>(
    b: &B,
    net: &Net<B>,
    tasks: &[Vec<u32>],
    mode: HeadMode,
) -> Vec<(Linear<B>, Vec<u32>)> {
    match mode {
        HeadMode::PerTask => tasks
            .iter()
            .enumerate()
            .map(|(j, t)| {
                let h = &net.heads[j];
                assert_eq!(&h.classes, t, "head {j} holds classes {:?}, task {j} is {t:?}", h.classes);
                (h.linear.rows(b, 0, h.classes.len()), t.clone())
            })
            .collect(),
        HeadMode::Shared => {
            let h = &net.heads[0];
            tasks
                .iter()
                .map(|t| {
                    let start =
                        h.classes.iter().position(|c| *c == t[0]).expect("task classes in the shared head");
                    assert_eq!(
                        &h.classes[start..start + t.len()],
                        &t[..],
                        "task classes must be contiguous in the shared head"
                    );
                    (h.linear.rows(b, start, t.len()), t.clone())
                })
                .collect()
        }
    }
}

/// The inference step of [`evaluate`], kept apart so that `bench` times
/// exactly it: one batch through the trunk and the task heads, then each
/// head's row maxima and their positions, read back to the host. The device
/// buffers come from the caller's [`Workspace`] (and the maxima's from here),
/// so after the first batch of a size a call allocates no device buffer.
pub struct HeadArgmax<B: Backend> {
    b: B,
    /// One output block per task, with the global class of each output.
    pub heads: Vec<(Linear<B>, Vec<u32>)>,
    vals: B::Buf,
    idx: B::IdxBuf,
    /// After [`HeadArgmax::run`], per head: the batch's row maxima and their
    /// positions within the head.
    pub best: Vec<(Vec<f32>, Vec<u32>)>,
}

impl<B: Backend> HeadArgmax<B> {
    /// For `heads` (see [`HeadArgmax::for_tasks`]) and batches of at most
    /// `max_batch` images.
    pub fn new(b: &B, heads: Vec<(Linear<B>, Vec<u32>)>, max_batch: usize) -> Self {
        let best = Vec::with_capacity(heads.len());
        HeadArgmax { b: b.clone(), heads, vals: b.zeros(max_batch), idx: b.zeros_idx(max_batch), best }
    }

    /// The heads of `net` that hold `tasks` (per task, or the blocks of the
    /// shared head), as `evaluate` scores them.
    pub fn for_tasks(b: &B, net: &Net<B>, tasks: &[Vec<u32>], mode: HeadMode, max_batch: usize) -> Self {
        Self::new(b, task_heads(b, net, tasks, mode), max_batch)
    }

    /// Run `xs`, `dims` = (N, C, H, W) with N at most the `max_batch` given
    /// to `new`, filling `best`; with `features`, the trunk's features
    /// (N × hidden) are read back into it too.
    pub fn run(
        &mut self,
        ws: &mut Workspace<B>,
        net: &Net<B>,
        xs: &[f32],
        dims: [usize; 4],
        features: Option<&mut Vec<f32>>,
    ) {
        let b = &self.b;
        let n = dims[0];
        assert!(
            n <= b.len(&self.vals),
            "HeadArgmax::run: batch {n} over the {} it was built for",
            b.len(&self.vals)
        );
        self.best.clear();
        let mut tape = Tape::new(b, ws);
        let x = tape.input(&dims, xs);
        let f = net.features(&mut tape, x);
        for (lin, classes) in &self.heads {
            let z = tape.linear(f, lin);
            b.max_rows(&mut self.vals, &mut self.idx, tape.value(z), n, classes.len());
            self.best.push((b.download(&self.vals), b.download_idx(&self.idx)));
        }
        if let Some(out) = features {
            *out = b.download(tape.value(f));
        }
    }
}

/// Evaluate `net` on the test images of the seen `tasks`, with the heads and
/// the class-incremental classifiers `kinds` beside them (`&[]`: the heads
/// alone, which reads no features back; each of `kinds` must be available
/// from `stats`).
#[allow(clippy::too_many_arguments)]
pub fn evaluate<B: Backend>(
    tr: &mut Trainer<B>,
    net: &Net<B>,
    test: &Split,
    norm: &Normalization,
    tasks: &[Vec<u32>],
    mode: HeadMode,
    batch_size: usize,
    stats: Option<&ClassStats>,
    kinds: &[ClassifierKind],
) -> Accuracies {
    let b = tr.b.clone();
    let heads = task_heads(&b, net, tasks, mode);
    let others: Vec<FeatureClassifier> = kinds
        .iter()
        .filter(|&&k| k != ClassifierKind::Heads)
        .map(|&k| FeatureClassifier::build(k, &b, net, tasks, stats).expect("available classifier"))
        .collect();
    let mut other_ok = vec![vec![0usize; tasks.len()]; others.len()];
    let dim = net.arch.hidden;
    let task_of = |label: u32| tasks.iter().position(|t| t.contains(&label));
    let examples: Vec<(usize, usize)> =
        (0..test.len()).filter_map(|i| task_of(test.labels[i]).map(|t| (i, t))).collect();
    let nt = tasks.len();
    let (mut seen, mut ta_ok, mut cil_ok) = (vec![0usize; nt], vec![0usize; nt], vec![0usize; nt]);
    let mut xs = Vec::new();
    let mut step = HeadArgmax::new(&b, heads, batch_size);
    let mut feats = Vec::new();
    for batch in examples.chunks(batch_size) {
        let n = batch.len();
        let ids: Vec<usize> = batch.iter().map(|e| e.0).collect();
        xs.resize(n * test.image_len(), 0.0);
        test.fill_batch(&ids, norm, &mut xs);
        let want_feats = (!others.is_empty()).then_some(&mut feats);
        step.run(&mut tr.st.ws, net, &xs, [n, test.c, test.h, test.w], want_feats);
        for (c, ok) in others.iter().zip(other_ok.iter_mut()) {
            let top = c.argmax(&c.scores(&feats[..n * dim], n));
            for (r, &(i, t)) in batch.iter().enumerate() {
                if c.classes[top[r]] == test.labels[i] {
                    ok[t] += 1;
                }
            }
        }
        let (heads, best) = (&step.heads, &step.best);
        for (r, &(i, t)) in batch.iter().enumerate() {
            let label = test.labels[i];
            seen[t] += 1;
            if heads[t].1[best[t].1[r] as usize] == label {
                ta_ok[t] += 1;
            }
            // argmax over the concatenation: the first head holding the maximum.
            let mut top = 0;
            for j in 1..heads.len() {
                if best[j].0[r] > best[top].0[r] {
                    top = j;
                }
            }
            if heads[top].1[best[top].1[r] as usize] == label {
                cil_ok[t] += 1;
            }
        }
    }
    // NaN marks a task with no test image here (e.g. `eval` on data lacking it).
    let frac = |ok: usize, n: usize| if n == 0 { f64::NAN } else { ok as f64 / n as f64 };
    let class_il = |kind, ok: &[usize]| ClassIl {
        kind,
        overall: frac(ok.iter().sum(), seen.iter().sum()),
        per_task: (0..nt).map(|t| frac(ok[t], seen[t])).collect(),
    };
    let mut by_classifier = vec![class_il(ClassifierKind::Heads, &cil_ok)];
    by_classifier.extend(others.iter().zip(&other_ok).map(|(c, ok)| class_il(c.kind, ok)));
    Accuracies {
        task_aware: (0..nt).map(|t| frac(ta_ok[t], seen[t])).collect(),
        class_il: frac(cil_ok.iter().sum(), seen.iter().sum()),
        class_il_per_task: (0..nt).map(|t| frac(cil_ok[t], seen[t])).collect(),
        by_classifier,
    }
}
