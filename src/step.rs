//! One SGD step of a [`Net`] on one batch: record the forward pass (training
//! mode) and the loss terms on a fresh tape, walk it backward, read the loss
//! back (the one sync of a step), apply the fused SGD update and fold
//! BatchNorm's batch statistics into its running ones. The trainer's epochs, the
//! step benchmark and the tests all step through [`sgd_step`], so what is
//! measured and tested is what trains.

use crate::autodiff::{Grads, Tape, Workspace};
use crate::backend::Backend;
use crate::nn::Net;
use crate::optim::Sgd;

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
    /// Distillation terms: a head and the teacher's logits of the batch,
    /// `n × cols` (cols may be fewer than the head's outputs: the old columns
    /// of a grown shared head).
    pub kd: Vec<(usize, &'s [f32], usize)>,
    /// Distillation temperature T.
    pub temperature: f32,
    /// Weight of each distillation term (λ_o, times T² for Hinton's
    /// scaling), divided by n.
    pub kd_weight: f32,
    pub anchors: Option<&'s Anchors<B>>,
    /// Feature distillation: the old model's features of the batch
    /// (`n × hidden`) and their weight λ_f (divided by n).
    pub features: Option<(&'s [f32], f32)>,
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
/// turn (its cross-entropy, then its distillations), then the feature
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
        for (&h, &z) in heads.iter().zip(&logits) {
            for &(_, labels) in loss.ce.iter().filter(|t| t.0 == h) {
                tape.cross_entropy(z, labels, 1.0 / n as f32);
            }
            for &(_, teacher, cols) in loss.kd.iter().filter(|t| t.0 == h) {
                let zt = tape.input(&[n, cols], teacher);
                tape.distill(z, zt, loss.temperature, loss.kd_weight / n as f32);
            }
        }
        if let Some((old, weight)) = loss.features {
            let target = tape.input(&[n, net.arch.hidden], old);
            tape.feature_distill(f, target, weight / n as f32);
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
