//! SGD with momentum and weight decay (PyTorch semantics), one fused kernel
//! per parameter. Velocities are indexed by `ParamId`; a fresh `Sgd` per task
//! and phase matches the reference (zero momentum buffers each time).

use crate::autodiff::Grads;
use crate::backend::{Backend, SgdHyper};
use crate::nn::Net;

/// The learning rate of step `done` (1-based) of a phase that ramps up
/// linearly over its first `ramp` steps: `lr·done/ramp`, then `lr`; `ramp`
/// 0 is no ramp. LwF's main phase starts from a trained trunk with a fresh
/// momentum buffer, and the feature pull adds curvature proportional to
/// λ_f: at full lr its first steps can throw the trunk out of the basin it
/// is meant to stay in (DESIGN.md "Feature distillation").
pub fn ramped_lr(lr: f32, ramp: usize, done: usize) -> f32 {
    if ramp == 0 || done >= ramp {
        lr
    } else {
        lr * done as f32 / ramp as f32
    }
}

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

#[cfg(test)]
mod tests {
    use super::ramped_lr;

    #[test]
    fn the_ramp_rises_linearly_then_holds() {
        assert_eq!(ramped_lr(0.05, 0, 1), 0.05, "ramp 0 is none");
        assert_eq!(ramped_lr(0.08, 4, 1), 0.02);
        assert_eq!(ramped_lr(0.08, 4, 2), 0.04);
        assert_eq!(ramped_lr(0.08, 4, 4), 0.08);
        assert_eq!(ramped_lr(0.08, 4, 100), 0.08);
        let lrs: Vec<f32> = (1..=10).map(|s| ramped_lr(1.0, 10, s)).collect();
        assert!(lrs.windows(2).all(|w| w[0] < w[1]), "not rising: {lrs:?}");
    }
}
