//! The epoch loop, generic over the backend: each step stages one batch
//! (images, drawn into random views with `--augment`, labels, teacher
//! logits recorded or computed live) on the host and runs
//! `step::sgd_step`. Buffers are recycled through the `Trainer`'s step state,
//! so the steady state allocates nothing on the device.

use super::session::{PhaseStart, Session};
use super::{Hyper, Observer};
use crate::autodiff::Tape;
use crate::backend::{Backend, IGNORE_LABEL};
use crate::data::augment::Views;
use crate::data::{Normalization, Split};
use crate::error::{Error, Result};
use crate::metrics::{TaskTiming, ValPoint};
use crate::nn::Net;
use crate::optim::{ramped_lr, Sgd};
use crate::param::Linear;
use crate::rng::Rng;
pub use crate::step::Anchors;
use crate::step::{sgd_step, BatchLoss, KdConcat, StepState, Targets};
use std::time::Instant;

/// One training example: its index in the split, the head whose
/// cross-entropy it feeds, and its label within that head.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Example {
    pub idx: usize,
    pub head: usize,
    pub label: u32,
}

/// Recorded outputs of an old head on the training examples (LwF's Y_o):
/// row `i` belongs to `examples[i]`.
pub struct Teacher {
    pub head: usize,
    pub cols: usize,
    pub logits: Vec<f32>,
}

/// What the loss of a phase is made of.
pub struct LossPlan<'p, B: Backend> {
    /// Heads with a cross-entropy term (examples of other heads are ignored
    /// in each; the sum is divided by the batch size, as the reference).
    pub ce_heads: Vec<usize>,
    pub teachers: &'p [Teacher],
    pub anchors: Option<&'p Anchors<B>>,
    /// `--teacher live`: the old model, run on every (augmented) batch for
    /// the teachers' targets in place of their recorded logits.
    pub live: Option<&'p Net<B>>,
    /// Feature distillation (`--lambda-f`): the old trunk's features of each
    /// example (rows of `hidden`, recorded with Y_o; computed on each view
    /// with `live`).
    pub old_features: Option<&'p [f32]>,
    /// `--kd-softmax all`: the teachers' outputs joined for one softmax.
    pub kd_concat: Option<&'p KdConcat<B>>,
    /// `--feature-metric efm`: the map that applies the metric to the
    /// features of both sides of the feature distillation.
    pub feature_metric: Option<&'p Linear<B>>,
}

impl<B: Backend> LossPlan<'_, B> {
    /// Whether the phase has a feature-distillation term.
    pub fn pulls_features(&self, hyper: &Hyper) -> bool {
        self.old_features.is_some() && hyper.lambda_f > 0.0
    }
}

/// The validation images of the task being learnt, checked after every epoch.
pub struct Validation {
    /// The images, each with the head that learns it and its label there.
    pub examples: Vec<Example>,
    /// LwF: the old model's outputs on these images, recorded before training
    /// (the distillation loss on them is reported); empty otherwise.
    pub teachers: Vec<Teacher>,
    pub temperature: f32,
}

/// What one training phase (warm-up or main epochs) did.
#[derive(Clone, Debug, Default)]
pub struct Phase {
    pub timing: TaskTiming,
    /// The last step's loss (NaN when the phase ran none).
    pub last_loss: f32,
    /// One point per epoch when the phase had validation images.
    pub validation: Vec<ValPoint>,
}

/// Long-lived state of a training session: the device, recycled buffers,
/// parameter gradients and host staging vectors.
pub struct Trainer<B: Backend> {
    pub b: B,
    /// Recycled device buffers and parameter gradients.
    pub st: StepState<B>,
    /// Saving and resuming training state (`train`/`extend` only).
    pub session: Option<Session>,
    xs: Vec<f32>,
    /// One image's values while its augmented view is written.
    scratch: Vec<f32>,
    /// Host staging of a batch's teacher logits (one per teacher) and labels
    /// (one per cross-entropy head).
    teacher_rows: Vec<Vec<f32>>,
    /// The old trunk's features of a batch (feature distillation).
    feature_rows: Vec<f32>,
    labels: Vec<Vec<u32>>,
    idx: Vec<usize>,
}

impl<B: Backend> Trainer<B> {
    pub fn new(b: B) -> Self {
        Trainer {
            b,
            st: StepState::default(),
            session: None,
            xs: Vec::new(),
            scratch: Vec::new(),
            teacher_rows: Vec::new(),
            feature_rows: Vec::new(),
            labels: Vec::new(),
            idx: Vec::new(),
        }
    }

    /// Train `net` (with its `trainable` flags already set) for `epochs` over
    /// `examples`, shuffled by `rng` each epoch, last partial batch kept.
    /// With `val`, the validation images are evaluated after every epoch and
    /// reported to `obs` (outside the epoch's seconds).
    #[allow(clippy::too_many_arguments)]
    pub fn run_epochs(
        &mut self,
        net: &mut Net<B>,
        split: &Split,
        norm: &Normalization,
        examples: &[Example],
        plan: &LossPlan<'_, B>,
        hyper: &Hyper,
        epochs: usize,
        rng: &mut Rng,
        obs: &dyn Observer,
        label: &str,
        val: Option<&Validation>,
    ) -> Result<Phase> {
        let mut phase = Phase { last_loss: f32::NAN, ..Phase::default() };
        let mut sgd = Sgd::new(hyper.sgd());
        let bs = hyper.batch_size;
        net.bn_policy = hyper.bn;
        // Batch statistics of a single image are no statistics (its 1×1
        // maps would have variance 0): refuse such batches up front, and fold
        // an epoch's last batch of one into the batch before it.
        let batch_stats = net.uses_batch_stats();
        if batch_stats && (bs == 1 || examples.len() == 1) {
            return Err(Error::Config(format!(
                "{label}: BatchNorm cannot train on the statistics of one image (--batch-size {bs}, {} training images); \
                 use a larger --batch-size or --bn frozen",
                examples.len()
            )));
        }
        let steps = examples.len().div_ceil(bs) - usize::from(batch_stats && examples.len() % bs == 1);
        let policy = hyper.augment.views(split.c, split.h, split.w);
        let first = match self.session.as_mut() {
            None => 0,
            Some(s) => match s.start_phase(&self.b, net, &mut sgd, rng)? {
                PhaseStart::Fresh => 0,
                PhaseStart::Skip => return Ok(phase),
                PhaseStart::From(e) => e,
            },
        };
        for epoch in first..epochs {
            let start = Instant::now();
            obs.phase(&format!("{label} epoch {}/{epochs}", epoch + 1), steps as u64);
            let order = rng.permutation(examples.len());
            // The epoch's views come from a stream of their own, seeded from
            // the run's (drawn only with --augment, so runs without it keep
            // their shuffles); a resumed run restarts at an epoch boundary,
            // so it draws the same seed again.
            let mut views = policy.map(|v| (v, Rng::new(rng.next_u64())));
            let mut batches: Vec<&[usize]> = order.chunks(bs).collect();
            if batch_stats && batches.len() > 1 && batches.last().is_some_and(|b| b.len() == 1) {
                batches.pop();
                let start = (batches.len() - 1) * bs;
                *batches.last_mut().expect("two batches") = &order[start..];
            }
            for (step, &batch) in batches.iter().enumerate() {
                sgd.hyper.lr = ramped_lr(hyper.lr, hyper.lr_ramp, epoch * steps + step + 1);
                let aug = views.as_mut().map(|(v, r)| (&*v, r));
                let loss = self.step(net, split, norm, examples, batch, plan, hyper, &mut sgd, aug);
                if let Some(why) = self.b.fault() {
                    obs.phase_done();
                    return Err(Error::Device(why));
                }
                if !loss.is_finite() {
                    obs.phase_done();
                    return Err(Error::NonFiniteLoss {
                        value: loss,
                        epoch: epoch + 1,
                        step: step + 1,
                        context: label.to_string(),
                        // The feature pull's strength is the other step size.
                        remedy: if plan.pulls_features(hyper) {
                            format!(
                                "--lr or --lambda-f (now {}), or a longer --lr-ramp (now {})",
                                hyper.lambda_f, hyper.lr_ramp
                            )
                        } else {
                            "--lr".to_string()
                        },
                    });
                }
                phase.timing.train_images += batch.len() as u64;
                phase.last_loss = loss;
                obs.step(loss, batch.len());
                if crate::interrupt::requested() {
                    obs.phase_done();
                    let saved = self.session.as_ref().map_or_else(
                        || {
                            "no training state was kept (train and extend resume with --checkpoint-every N; \
                             experiment --resume keeps the runs it finished)"
                                .to_string()
                        },
                        Session::saved_text,
                    );
                    return Err(Error::Interrupted {
                        epoch: epoch + 1,
                        step: step + 1,
                        context: label.into(),
                        saved,
                    });
                }
            }
            obs.phase_done();
            phase.timing.epoch_seconds.push(start.elapsed().as_secs_f64());
            if let Some(v) = val.filter(|v| !v.examples.is_empty()) {
                let t0 = Instant::now();
                let (accuracy, kd_loss) = self.validate(net, split, norm, v, hyper.batch_size);
                phase.timing.validation_seconds += t0.elapsed().as_secs_f64();
                let kd = kd_loss.map_or(String::new(), |l| format!(", distillation loss {l:.4}"));
                obs.note(&format!(
                    "{label} epoch {}/{epochs}: validation accuracy {:.2}% ({} images){kd}",
                    epoch + 1,
                    100.0 * accuracy,
                    v.examples.len()
                ));
                phase.validation.push(ValPoint { epoch: epoch + 1, accuracy, kd_loss });
            }
            if let Some(s) = self.session.as_mut() {
                s.end_epoch(&self.b, net, &sgd, rng, epoch + 1)?;
            }
        }
        Ok(phase)
    }

    /// One SGD step on the examples at positions `batch`, on views drawn by
    /// `aug` when given; returns the loss.
    #[allow(clippy::too_many_arguments)]
    pub fn step(
        &mut self,
        net: &mut Net<B>,
        split: &Split,
        norm: &Normalization,
        examples: &[Example],
        batch: &[usize],
        plan: &LossPlan<'_, B>,
        hyper: &Hyper,
        sgd: &mut Sgd<B>,
        aug: Option<(&Views, &mut Rng)>,
    ) -> f32 {
        let n = batch.len();
        let dims = [n, split.c, split.h, split.w];
        self.stage_images(split, norm, examples, batch);
        if let Some((views, rng)) = aug {
            views.apply(&mut self.xs, dims, norm, rng, &mut self.scratch);
        }
        self.labels.resize_with(plan.ce_heads.len(), Vec::new);
        for (labels, &h) in self.labels.iter_mut().zip(&plan.ce_heads) {
            labels.clear();
            labels.extend(batch.iter().map(|&i| {
                let e = examples[i];
                if e.head == h {
                    e.label
                } else {
                    IGNORE_LABEL
                }
            }));
        }
        let distil_features = plan.pulls_features(hyper);
        let targets = match plan.live {
            // The old model on the views that train, in the same tape.
            Some(old) => Targets::Live(old),
            None => {
                let dim = net.arch.hidden;
                self.teacher_rows.resize_with(plan.teachers.len(), Vec::new);
                for (rows, t) in self.teacher_rows.iter_mut().zip(plan.teachers) {
                    rows.clear();
                    for &i in batch {
                        rows.extend_from_slice(&t.logits[i * t.cols..(i + 1) * t.cols]);
                    }
                }
                self.feature_rows.clear();
                if let Some(old) = plan.old_features.filter(|_| distil_features) {
                    for &i in batch {
                        self.feature_rows.extend_from_slice(&old[i * dim..(i + 1) * dim]);
                    }
                }
                Targets::Recorded {
                    logits: self.teacher_rows.iter().map(Vec::as_slice).collect(),
                    features: distil_features.then_some(self.feature_rows.as_slice()),
                }
            }
        };
        let t2 = if hyper.kd_t2 { hyper.temperature * hyper.temperature } else { 1.0 };
        let loss = BatchLoss {
            ce: plan.ce_heads.iter().copied().zip(self.labels.iter().map(Vec::as_slice)).collect(),
            kd: plan.teachers.iter().map(|t| (t.head, t.cols)).collect(),
            targets,
            temperature: hyper.temperature,
            kd_weight: hyper.lambda_o * t2,
            feature_weight: if distil_features { hyper.lambda_f } else { 0.0 },
            kd_concat: plan.kd_concat,
            feature_metric: plan.feature_metric,
            anchors: plan.anchors,
        };
        sgd_step(&self.b, &mut self.st, net, sgd, &self.xs, dims, &loss)
    }

    /// Normalised images of the batch into the host staging vector.
    fn stage_images(&mut self, split: &Split, norm: &Normalization, examples: &[Example], batch: &[usize]) {
        self.idx.clear();
        self.idx.extend(batch.iter().map(|&i| examples[i].idx));
        self.xs.resize(batch.len() * split.image_len(), 0.0);
        split.fill_batch(&self.idx, norm, &mut self.xs);
    }

    /// Accuracy of the learning head on the validation images and, with
    /// teachers, the distillation loss of the old heads on them (summed over
    /// teachers, averaged per image, at the validation's temperature): the
    /// tape's own distillation term, the one training minimises, with one
    /// loss read-back per batch.
    pub fn validate(
        &mut self,
        net: &Net<B>,
        split: &Split,
        norm: &Normalization,
        v: &Validation,
        batch_size: usize,
    ) -> (f64, Option<f64>) {
        let head = v.examples[0].head;
        let cols = net.heads[head].linear.out_f;
        let (mut hits, mut kd) = (0usize, 0.0f64);
        let positions: Vec<usize> = (0..v.examples.len()).collect();
        for batch in positions.chunks(batch_size) {
            let n = batch.len();
            self.stage_images(split, norm, &v.examples, batch);
            self.teacher_rows.resize_with(v.teachers.len(), Vec::new);
            for (rows, t) in self.teacher_rows.iter_mut().zip(&v.teachers) {
                rows.clear();
                for &i in batch {
                    rows.extend_from_slice(&t.logits[i * t.cols..(i + 1) * t.cols]);
                }
            }
            let mut tape = Tape::new(&self.b, &mut self.st.ws);
            let x = tape.input(&[n, split.c, split.h, split.w], &self.xs);
            let f = net.features(&mut tape, x);
            let z = tape.linear(f, &net.heads[head].linear);
            let logits = self.b.download(tape.value(z));
            hits += batch
                .iter()
                .enumerate()
                .filter(|&(r, &i)| {
                    let row = &logits[r * cols..(r + 1) * cols];
                    let best = (0..cols).fold(0, |b, k| if row[k] > row[b] { k } else { b });
                    best == v.examples[i].label as usize
                })
                .count();
            if v.teachers.is_empty() {
                continue;
            }
            for (t, rows) in v.teachers.iter().zip(&self.teacher_rows) {
                let zs = if t.head == head { z } else { tape.linear(f, &net.heads[t.head].linear) };
                let zt = tape.input(&[n, t.cols], rows);
                tape.distill(zs, zt, v.temperature, 1.0);
            }
            kd += tape.loss_value() as f64;
        }
        let total = v.examples.len() as f64;
        (hits as f64 / total, (!v.teachers.is_empty()).then(|| kd / total))
    }

    /// The trunk's output features (rows of `net.arch.hidden`) of the images
    /// `indices` of `split`, in order.
    pub fn features(
        &mut self,
        net: &Net<B>,
        split: &Split,
        norm: &Normalization,
        indices: &[usize],
        batch_size: usize,
    ) -> Vec<f32> {
        let probe: Vec<Example> = indices.iter().map(|&idx| Example { idx, head: 0, label: 0 }).collect();
        self.record_outputs(net, split, norm, &probe, &[], batch_size, true).1
    }

    /// One forward pass over `examples`, batch by batch: the logits of `heads`
    /// (LwF's Y_o recording: the old model's outputs, no augmentation, so
    /// exact) and, when `want_features`, the trunk's features (else an empty
    /// vector), so Y_o and the old trunk's features for drift compensation
    /// come from one pass.
    #[allow(clippy::too_many_arguments)]
    pub fn record_outputs(
        &mut self,
        net: &Net<B>,
        split: &Split,
        norm: &Normalization,
        examples: &[Example],
        heads: &[usize],
        batch_size: usize,
        want_features: bool,
    ) -> (Vec<Teacher>, Vec<f32>) {
        let mut out: Vec<Teacher> = heads
            .iter()
            .map(|&h| {
                let cols = net.heads[h].linear.out_f;
                Teacher { head: h, cols, logits: Vec::with_capacity(examples.len() * cols) }
            })
            .collect();
        let dim = net.arch.hidden;
        let mut feats = Vec::with_capacity(if want_features { examples.len() * dim } else { 0 });
        let positions: Vec<usize> = (0..examples.len()).collect();
        for batch in positions.chunks(batch_size) {
            self.stage_images(split, norm, examples, batch);
            let mut tape = Tape::new(&self.b, &mut self.st.ws);
            let x = tape.input(&[batch.len(), split.c, split.h, split.w], &self.xs);
            let f = net.features(&mut tape, x);
            if want_features {
                let v = self.b.download(tape.value(f));
                feats.extend_from_slice(&v[..batch.len() * dim]);
            }
            for t in out.iter_mut() {
                let z = tape.linear(f, &net.heads[t.head].linear);
                let v = self.b.download(tape.value(z));
                t.logits.extend_from_slice(&v[..batch.len() * t.cols]);
            }
        }
        (out, feats)
    }

    /// EWC's diagonal Fisher of θs, `E[(∂ log p(y|x) / ∂θ)²]`, estimated from
    /// single examples (the empirical Fisher with the true labels) and added
    /// into `fisher` (one buffer per trunk parameter). Leaves `net`'s
    /// trainable flags with the trunk trainable.
    pub fn accumulate_fisher(
        &mut self,
        net: &mut Net<B>,
        split: &Split,
        norm: &Normalization,
        examples: &[Example],
        fisher: &mut [B::Buf],
    ) {
        if examples.is_empty() {
            return;
        }
        net.set_trainable(true, 0, &[]);
        let weight = 1.0 / examples.len() as f32;
        for i in 0..examples.len() {
            self.stage_images(split, norm, examples, &[i]);
            let e = examples[i];
            {
                let mut tape = Tape::new(&self.b, &mut self.st.ws);
                let x = tape.input(&[1, split.c, split.h, split.w], &self.xs);
                let z = net.forward(&mut tape, x, &[e.head]);
                tape.cross_entropy(z[0], &[e.label], 1.0);
                self.st.grads.prepare(&self.b, net.params());
                tape.backward(&mut self.st.grads);
            }
            for (k, p) in net.trunk_params().into_iter().enumerate() {
                if let Some(g) = self.st.grads.get(p.id) {
                    self.b.add_squared(&mut fisher[k], weight, g);
                }
            }
        }
    }
}
