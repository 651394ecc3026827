//! SGD with momentum and weight decay (PyTorch semantics), one fused kernel
//! per parameter. Velocities are indexed by `ParamId`; a fresh `Sgd` per task
//! and phase matches the reference (zero momentum buffers each time).

use crate::autodiff::Grads;
use crate::backend::{Backend, SgdHyper};
use crate::nn::Net;

pub struct Sgd<B: Backend> {
    pub hyper: SgdHyper,
    velocity: Vec<Option<B::Buf>>,
}

impl<B: Backend> Sgd<B> {
    pub fn new(hyper: SgdHyper) -> Self {
        Sgd { hyper, velocity: Vec::new() }
    }

    /// The momentum buffers that exist, by parameter id (a training-state
    /// file stores them).
    pub fn velocities(&self, b: &B) -> Vec<(usize, Vec<f32>)> {
        self.velocity
            .iter()
            .enumerate()
            .filter_map(|(id, v)| v.as_ref().map(|v| (id, b.download(v))))
            .collect()
    }

    /// Restore one parameter's momentum buffer.
    pub fn set_velocity(&mut self, b: &B, id: usize, values: &[f32]) {
        if self.velocity.len() <= id {
            self.velocity.resize_with(id + 1, || None);
        }
        self.velocity[id] = Some(b.upload(values));
    }

    /// Update every trainable parameter that has a gradient.
    pub fn step(&mut self, b: &B, net: &mut Net<B>, grads: &Grads<B>) {
        for p in net.params_mut() {
            if !p.trainable {
                continue;
            }
            let Some(g) = grads.get(p.id) else { continue };
            if self.velocity.len() <= p.id {
                self.velocity.resize_with(p.id + 1, || None);
            }
            let n = p.value.numel();
            let v = match &mut self.velocity[p.id] {
                Some(v) if b.len(v) == n => v,
                slot => slot.insert(b.zeros(n)),
            };
            b.sgd_step(&mut p.value.buf, v, g, self.hyper);
        }
    }
}
