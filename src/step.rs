//! One SGD step of a [`Net`] on one batch: record the forward pass (training
//! mode) and the loss terms on a fresh tape, walk it backward, read the loss
//! back (the one sync of a step), apply the fused SGD update and fold
//! BatchNorm's batch statistics into its running ones. The trainer's epochs, the
//! step benchmark and the tests all step through [`sgd_step`], so what is
//! measured and tested is what trains.

use crate::autodiff::{Grads, Tape, Var, Workspace};
use crate::backend::Backend;
use crate::nn::Net;
use crate::optim::Sgd;
use crate::param::Linear;

/// A quadratic pull of θs towards an anchor (l2; ewc with a Fisher weight).
pub struct Anchors<B: Backend> {
    /// One per trunk parameter, in `Net::trunk_params` order.
    pub values: Vec<B::Buf>,
    pub fisher: Option<Vec<B::Buf>>,
    pub scale: f32,
}

/// The loss of one batch of `n` images.
pub struct BatchLoss<'s, B: Backend> {
    /// Cross-entropy terms: a head and one label per image (rows labelled
    /// `IGNORE_LABEL` are skipped), each weighted 1/n.
    pub ce: Vec<(usize, &'s [u32])>,
    /// Distillation terms: a head and the width of its old outputs (cols
    /// may be fewer than the head's outputs: the old columns of a grown
    /// shared head).
    pub kd: Vec<(usize, usize)>,
    /// Where the distillation terms' targets (and the old features) come from.
    pub targets: Targets<'s, B>,
    /// Distillation temperature T.
    pub temperature: f32,
    /// Weight of each distillation term (λ_o, times T² for Hinton's
    /// scaling), divided by n.
    pub kd_weight: f32,
    /// Feature distillation's weight λ_f (divided by n); 0 is none.
    pub feature_weight: f32,
    /// Feature distillation under a metric M = F Fᵀ, `(f − f_old)ᵀ M (f −
    /// f_old)`: the map `x ↦ x F` applied to both sides (`--feature-metric
    /// efm`); None is the plain squared distance.
    pub feature_metric: Option<&'s Linear<B>>,
    /// All the distillation terms in one softmax over their joined columns
    /// (`--kd-softmax all`) instead of one softmax per term.
    pub kd_concat: Option<&'s KdConcat<B>>,
    pub anchors: Option<&'s Anchors<B>>,
}

/// Joins the logits of several heads into one row, so that the old tasks'
/// outputs are distilled in a single softmax (the form of FACIL, Mammoth and
/// PyCIL). Made of the tape's own ops: each part goes through a frozen 0/1
/// placement matrix that puts its columns at their offset, and the parts
/// are summed, so no new kernel (or gradient) is needed.
pub struct KdConcat<B: Backend> {
    places: Vec<Linear<B>>,
}

impl<B: Backend> KdConcat<B> {
    /// Placements for parts of widths `cols`, in order.
    pub fn new(b: &B, cols: &[usize]) -> Self {
        let width: usize = cols.iter().sum();
        let mut offset = 0;
        let places = cols
            .iter()
            .map(|&c| {
                // y = x Wᵀ with W (width × c): W[offset + j][j] = 1.
                let mut w = vec![0.0; width * c];
                for j in 0..c {
                    w[(offset + j) * c + j] = 1.0;
                }
                offset += c;
                Linear::fixed(b, "kd_concat", &w, width, c)
            })
            .collect();
        KdConcat { places }
    }

    /// The parts (`n × cols[k]` each) side by side, `n × Σ cols`.
    pub fn join<'t>(&'t self, tape: &mut Tape<'t, B>, parts: &[Var]) -> Var {
        assert_eq!(
            parts.len(),
            self.places.len(),
            "KdConcat::join: {} parts for {} places",
            parts.len(),
            self.places.len()
        );
        let mut joined: Option<Var> = None;
        for (&part, place) in parts.iter().zip(&self.places) {
            assert_eq!(
                tape.shape(part).0.get(1),
                Some(&place.in_f),
                "KdConcat::join: a part of shape {} for a place of width {}",
                tape.shape(part),
                place.in_f
            );
            let y = tape.linear(part, place);
            joined = Some(match joined {
                Some(acc) => tape.add(acc, y),
                None => y,
            });
        }
        joined.expect("KdConcat::join: no parts")
    }
}

/// The old model's outputs that a batch is distilled towards.
pub enum Targets<'s, B: Backend> {
    /// Recorded on the host: the teacher's logits of the batch (`n × cols`)
    /// per distillation term, in `kd`'s order, and with feature
    /// distillation the old features (`n × hidden`).
    Recorded { logits: Vec<&'s [f32]>, features: Option<&'s [f32]> },
    /// The old model itself (every parameter frozen), run in evaluation mode
    /// on the same batch in the same tape: its logits and features never
    /// leave the device.
    Live(&'s Net<B>),
}

impl<B: Backend> Targets<'_, B> {
    /// No distillation at all.
    pub fn none() -> Self {
        Targets::Recorded { logits: Vec::new(), features: None }
    }
}

/// Long-lived state of the steps: recycled device buffers and the parameter
/// gradients (kept across steps so a step allocates nothing).
pub struct StepState<B: Backend> {
    pub ws: Workspace<B>,
    pub grads: Grads<B>,
}

impl<B: Backend> Default for StepState<B> {
    fn default() -> Self {
        StepState { ws: Workspace::new(), grads: Grads::new() }
    }
}

/// One step on images `x` of shape `dims` (N, C, H, W); returns the loss.
/// The heads are run in ascending order and each head's terms recorded in
/// turn (its cross-entropy, then its distillations; with `kd_concat` the
/// one joined distillation after all heads), then the feature
/// distillation, then the anchors, so the
/// loss sums in a fixed order. A non-finite loss updates nothing (the caller
/// reports it).
pub fn sgd_step<B: Backend>(
    b: &B,
    st: &mut StepState<B>,
    net: &mut Net<B>,
    sgd: &mut Sgd<B>,
    x: &[f32],
    dims: [usize; 4],
    loss: &BatchLoss<'_, B>,
) -> f32 {
    let n = dims[0];
    let mut heads: Vec<usize> = loss.ce.iter().map(|t| t.0).chain(loss.kd.iter().map(|t| t.0)).collect();
    heads.sort_unstable();
    heads.dedup();
    let (value, batch_stats) = {
        let mut tape = Tape::new(b, &mut st.ws);
        let xv = tape.input(&dims, x);
        let f = net.features_train(&mut tape, xv);
        let logits: Vec<_> = heads.iter().map(|&h| tape.linear(f, &net.heads[h].linear)).collect();
        // The live teacher's features, recorded once when anything reads them.
        let old_f = match loss.targets {
            Targets::Live(old) if !loss.kd.is_empty() || loss.feature_weight > 0.0 => {
                assert!(
                    old.params().iter().all(|p| !p.trainable),
                    "sgd_step: the live teacher's parameters must be frozen (they share the student's ids)"
                );
                Some((old, old.features(&mut tape, xv)))
            }
            _ => None,
        };
        // The targets of the distillation terms, in `kd`'s order.
        let targets: Vec<Var> = loss
            .kd
            .iter()
            .enumerate()
            .map(|(k, &(h, cols))| match (&loss.targets, old_f) {
                (_, Some((old, of))) => tape.linear(of, &old.heads[h].linear),
                (Targets::Recorded { logits, .. }, None) => tape.input(&[n, cols], logits[k]),
                (Targets::Live(_), None) => unreachable!("live features are recorded when kd has terms"),
            })
            .collect();
        let kd_scale = loss.kd_weight / n as f32;
        for (&h, &z) in heads.iter().zip(&logits) {
            for &(_, labels) in loss.ce.iter().filter(|t| t.0 == h) {
                tape.cross_entropy(z, labels, 1.0 / n as f32);
            }
            if loss.kd_concat.is_none() {
                for (k, _) in loss.kd.iter().enumerate().filter(|(_, t)| t.0 == h) {
                    tape.distill(z, targets[k], loss.temperature, kd_scale);
                }
            }
        }
        if let Some(concat) = loss.kd_concat {
            let student: Vec<Var> =
                loss.kd.iter().map(|t| logits[heads.binary_search(&t.0).expect("kd head is run")]).collect();
            let (zs, zt) = (concat.join(&mut tape, &student), concat.join(&mut tape, &targets));
            tape.distill(zs, zt, loss.temperature, kd_scale);
        }
        if loss.feature_weight > 0.0 {
            let target = match (&loss.targets, old_f) {
                (_, Some((_, of))) => Some(of),
                (Targets::Recorded { features: Some(old), .. }, None) => {
                    Some(tape.input(&[n, net.arch.hidden], old))
                }
                _ => None,
            };
            if let Some(target) = target {
                let (f, target) = match loss.feature_metric {
                    Some(m) => (tape.linear(f, m), tape.linear(target, m)),
                    None => (f, target),
                };
                tape.feature_distill(f, target, loss.feature_weight / n as f32);
            }
        }
        if let Some(a) = loss.anchors {
            for (k, p) in net.trunk_params().into_iter().enumerate() {
                let fisher = a.fisher.as_ref().map(|f| &f[k]);
                tape.anchor_penalty(p, &a.values[k], fisher, a.scale);
            }
        }
        st.grads.prepare(b, net.params());
        tape.backward(&mut st.grads);
        (tape.loss_value(), tape.take_batch_stats())
    };
    if value.is_finite() {
        sgd.step(b, net, &st.grads);
        // BatchNorm's running statistics move only with a step that was
        // taken, as the parameters do.
        net.update_running_stats(b, batch_stats, &mut st.ws);
    } else {
        for (_, mean, var, _) in batch_stats {
            st.ws.give(b, mean);
            st.ws.give(b, var);
        }
    }
    value
}
