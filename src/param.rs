//! Parameters and the parameterised layers, below the tape: a [`Param`]
//! is a named tensor with an id, and [`Linear`], [`Conv2d`] and
//! [`BatchNorm2d`] hold their weights (and BatchNorm its running
//! statistics) and know how to initialise them. The tape (`autodiff.rs`) records
//! ops that borrow these; the `Net` (`nn.rs`) arranges them into a model.
//! Neither of those is needed to read or test this file.
//!
//! Initialisation follows PyTorch's defaults for `nn.Linear`/`nn.Conv2d`:
//! weights and biases uniform in ±1/√fan_in (kaiming_uniform with a = √5
//! reduces to exactly that bound), drawn from one seeded [`Rng`] so the same
//! seed gives the same net.

use crate::backend::Backend;
use crate::rng::Rng;
use crate::tensor::Tensor;

/// Index of a parameter in its `Net`, stable for the net's lifetime; the
/// gradients (`autodiff::Grads`) are indexed by it.
pub type ParamId = usize;

pub struct Param<B: Backend> {
    pub id: ParamId,
    /// Stable name, used as the checkpoint key (e.g. `trunk.0.weight`).
    pub name: String,
    pub value: Tensor<B>,
    /// Frozen parameters get no gradient work at all.
    pub trainable: bool,
}

impl<B: Backend> Param<B> {
    /// A deep copy on the device.
    pub fn duplicate(&self, b: &B) -> Self {
        Param {
            id: self.id,
            name: self.name.clone(),
            value: self.value.duplicate(b),
            trainable: self.trainable,
        }
    }
}

fn uniform_param<B: Backend>(
    b: &B,
    rng: &mut Rng,
    id: ParamId,
    name: String,
    dims: &[usize],
    bound: f32,
) -> Param<B> {
    let n: usize = dims.iter().product();
    let data: Vec<f32> = (0..n).map(|_| rng.uniform(-bound, bound)).collect();
    Param { id, name, value: Tensor::from_vec(b, dims, &data), trainable: true }
}

/// Hand out the next parameter id.
fn next(ids: &mut ParamId) -> ParamId {
    *ids += 1;
    *ids - 1
}

/// `y = x · Wᵀ + b`, `W: (out, in)` as PyTorch stores it.
pub struct Linear<B: Backend> {
    pub w: Param<B>,
    pub b: Param<B>,
    pub in_f: usize,
    pub out_f: usize,
}

impl<B: Backend> Linear<B> {
    pub fn new(b: &B, rng: &mut Rng, ids: &mut ParamId, name: &str, in_f: usize, out_f: usize) -> Self {
        let bound = 1.0 / (in_f as f32).sqrt();
        let w = uniform_param(b, rng, next(ids), format!("{name}.weight"), &[out_f, in_f], bound);
        let bias = uniform_param(b, rng, next(ids), format!("{name}.bias"), &[out_f], bound);
        Linear { w, b: bias, in_f, out_f }
    }

    /// Add `extra` output rows (new classes) initialised like a fresh layer;
    /// the existing rows are kept bit for bit (the shared-head mode).
    pub fn grow_rows(&mut self, b: &B, rng: &mut Rng, extra: usize) {
        let bound = 1.0 / (self.in_f as f32).sqrt();
        let mut w = self.w.value.to_vec(b);
        w.extend((0..extra * self.in_f).map(|_| rng.uniform(-bound, bound)));
        let mut bias = self.b.value.to_vec(b);
        bias.extend((0..extra).map(|_| rng.uniform(-bound, bound)));
        self.out_f += extra;
        self.w.value = Tensor::from_vec(b, &[self.out_f, self.in_f], &w);
        self.b.value = Tensor::from_vec(b, &[self.out_f], &bias);
    }

    /// A frozen copy of output rows `start..start + len` (evaluation of one
    /// task's slice of a shared head). Device-side copies, no host round trip.
    pub fn rows(&self, b: &B, start: usize, len: usize) -> Linear<B> {
        assert!(
            start + len <= self.out_f,
            "Linear::rows: rows {start}..{} of a {}-row layer",
            start + len,
            self.out_f
        );
        let mut w = Tensor::zeros(b, &[len, self.in_f]);
        b.copy(&mut w.buf, 0, &self.w.value.buf, start * self.in_f, len * self.in_f);
        let mut bias = Tensor::zeros(b, &[len]);
        b.copy(&mut bias.buf, 0, &self.b.value.buf, start, len);
        let frozen = |p: &Param<B>, value| Param { id: p.id, name: p.name.clone(), value, trainable: false };
        Linear { w: frozen(&self.w, w), b: frozen(&self.b, bias), in_f: self.in_f, out_f: len }
    }

    /// A deep copy on the device.
    pub fn duplicate(&self, b: &B) -> Self {
        Linear { w: self.w.duplicate(b), b: self.b.duplicate(b), in_f: self.in_f, out_f: self.out_f }
    }

    /// A fixed map `y = x · Wᵀ` (`w`: out_f × in_f, no bias) that is never
    /// trained: a loss's own matrix, not a model's layer. Its ids are never
    /// read, since only trainable parameters own gradients.
    pub fn fixed(b: &B, name: &str, w: &[f32], out_f: usize, in_f: usize) -> Self {
        assert_eq!(w.len(), out_f * in_f, "Linear::fixed: {} values for {out_f} × {in_f}", w.len());
        let param = |suffix: &str, dims: &[usize], data: &[f32]| Param {
            id: usize::MAX,
            name: format!("{name}.{suffix}"),
            value: Tensor::from_vec(b, dims, data),
            trainable: false,
        };
        Linear {
            w: param("weight", &[out_f, in_f], w),
            b: param("bias", &[out_f], &vec![0.0; out_f]),
            in_f,
            out_f,
        }
    }
}

/// 2-D convolution, with a bias or without (a convolution followed by
/// BatchNorm has none: the normalisation's β takes its place, as in
/// torchvision's ResNets). `w: (OC, C, KH, KW)`.
pub struct Conv2d<B: Backend> {
    pub w: Param<B>,
    pub b: Option<Param<B>>,
    pub c: usize,
    pub oc: usize,
    pub k: usize,
    pub stride: usize,
    pub pad: usize,
}

impl<B: Backend> Conv2d<B> {
    /// A k×k convolution with bias, PyTorch's default initialisation.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        b: &B,
        rng: &mut Rng,
        ids: &mut ParamId,
        name: &str,
        c: usize,
        oc: usize,
        k: usize,
        stride: usize,
        pad: usize,
    ) -> Self {
        let bound = 1.0 / ((c * k * k) as f32).sqrt();
        let w = uniform_param(b, rng, next(ids), format!("{name}.weight"), &[oc, c, k, k], bound);
        let bias = uniform_param(b, rng, next(ids), format!("{name}.bias"), &[oc], bound);
        Conv2d { w, b: Some(bias), c, oc, k, stride, pad }
    }

    /// A k×k convolution without bias, initialised as torchvision's ResNets
    /// do: He normal in fan-out mode for a ReLU, `N(0, 2 / (OC·KH·KW))`.
    #[allow(clippy::too_many_arguments)]
    pub fn unbiased(
        b: &B,
        rng: &mut Rng,
        ids: &mut ParamId,
        name: &str,
        c: usize,
        oc: usize,
        k: usize,
        stride: usize,
        pad: usize,
    ) -> Self {
        let std = (2.0 / (oc * k * k) as f32).sqrt();
        let data: Vec<f32> = (0..oc * c * k * k).map(|_| std * rng.normal()).collect();
        let w = Param {
            id: next(ids),
            name: format!("{name}.weight"),
            value: Tensor::from_vec(b, &[oc, c, k, k], &data),
            trainable: true,
        };
        Conv2d { w, b: None, c, oc, k, stride, pad }
    }

    /// The weight, then the bias if there is one.
    pub fn params(&self) -> Vec<&Param<B>> {
        std::iter::once(&self.w).chain(&self.b).collect()
    }
    pub fn params_mut(&mut self) -> Vec<&mut Param<B>> {
        std::iter::once(&mut self.w).chain(&mut self.b).collect()
    }

    /// Whether any of its parameters trains.
    pub fn trainable(&self) -> bool {
        self.params().iter().any(|p| p.trainable)
    }

    /// A deep copy on the device.
    pub fn duplicate(&self, b: &B) -> Self {
        Conv2d { w: self.w.duplicate(b), b: self.b.as_ref().map(|p| p.duplicate(b)), ..*self }
    }
}

/// PyTorch's BatchNorm2d over `c` channels: the affine parameters γ
/// (`weight`, starts at 1) and β (`bias`, starts at 0), and the running
/// statistics that evaluation uses, which are state rather than parameters:
/// no gradient, updated by training steps in batch-statistics mode as
/// `r ← (1 − momentum)·r + momentum·batch` (the variance's batch value
/// unbiased, `· M/(M − 1)` for `M` values per channel), counted in
/// `num_batches_tracked`.
pub struct BatchNorm2d<B: Backend> {
    pub w: Param<B>,
    pub b: Param<B>,
    pub running_mean: Tensor<B>,
    pub running_var: Tensor<B>,
    pub num_batches_tracked: u64,
    /// The checkpoint name of the layer (`bn1`, `layer1.0.bn2`, …).
    pub name: String,
    pub c: usize,
    pub eps: f32,
    pub momentum: f32,
}

impl<B: Backend> BatchNorm2d<B> {
    /// PyTorch's defaults: eps 1e-5, momentum 0.1, γ = 1, β = 0, running
    /// mean 0 and variance 1.
    pub fn new(b: &B, ids: &mut ParamId, name: &str, c: usize) -> Self {
        let param = |id, suffix: &str, v: f32| Param {
            id,
            name: format!("{name}.{suffix}"),
            value: Tensor::from_vec(b, &[c], &vec![v; c]),
            trainable: true,
        };
        let w = param(next(ids), "weight", 1.0);
        let bias = param(next(ids), "bias", 0.0);
        BatchNorm2d {
            w,
            b: bias,
            running_mean: Tensor::from_vec(b, &[c], &vec![0.0; c]),
            running_var: Tensor::from_vec(b, &[c], &vec![1.0; c]),
            num_batches_tracked: 0,
            name: name.into(),
            c,
            eps: 1e-5,
            momentum: 0.1,
        }
    }

    /// Whether any of its affine parameters trains.
    pub fn trainable(&self) -> bool {
        self.w.trainable || self.b.trainable
    }

    /// Fold one batch's statistics (`mean`, biased `var` over `count`
    /// values per channel) into the running ones, as PyTorch does.
    pub fn update_running(&mut self, b: &B, mean: &B::Buf, var: &B::Buf, count: usize) {
        let m = self.momentum;
        let unbias = count as f32 / (count.max(2) - 1) as f32;
        b.scale(&mut self.running_mean.buf, 1.0 - m);
        b.axpy(&mut self.running_mean.buf, m, mean);
        b.scale(&mut self.running_var.buf, 1.0 - m);
        b.axpy(&mut self.running_var.buf, m * unbias, var);
        self.num_batches_tracked += 1;
    }

    /// A deep copy on the device.
    pub fn duplicate(&self, b: &B) -> Self {
        BatchNorm2d {
            w: self.w.duplicate(b),
            b: self.b.duplicate(b),
            running_mean: self.running_mean.duplicate(b),
            running_var: self.running_var.duplicate(b),
            num_batches_tracked: self.num_batches_tracked,
            name: self.name.clone(),
            ..*self
        }
    }
}
