//! Layers and the `Net`: a trunk (θs) plus any number of heads (θo, θn),
//! recorded on the tape by `Net::features` / `Net::forward`.
//!
//! The layers with parameters and their initialisation live below the tape
//! (`param.rs`); this file arranges them and drives the tape, one way.

use crate::autodiff::{Tape, Var};
use crate::backend::Backend;
pub use crate::param::{Conv2d, Linear, Param, ParamId};
use crate::rng::Rng;
use serde::{Deserialize, Serialize};

pub enum Layer<B: Backend> {
    Conv2d(Conv2d<B>),
    Relu,
    MaxPool2d { k: usize, s: usize },
    Flatten,
    Linear(Linear<B>),
}

impl<B: Backend> Layer<B> {
    pub fn params(&self) -> Vec<&Param<B>> {
        match self {
            Layer::Conv2d(c) => vec![&c.w, &c.b],
            Layer::Linear(l) => vec![&l.w, &l.b],
            _ => vec![],
        }
    }
    pub fn params_mut(&mut self) -> Vec<&mut Param<B>> {
        match self {
            Layer::Conv2d(c) => vec![&mut c.w, &mut c.b],
            Layer::Linear(l) => vec![&mut l.w, &mut l.b],
            _ => vec![],
        }
    }
    pub fn has_params(&self) -> bool {
        matches!(self, Layer::Conv2d(_) | Layer::Linear(_))
    }
}

/// The architecture, as stored in checkpoints: a stack of 3×3 pad-1 conv +
/// ReLU + 2×2 maxpool blocks (run as conv, pool, ReLU: the same function), then a hidden linear layer + ReLU (= θs).
/// `cnn-s` is conv widths [32, 64] and hidden 256 (DESIGN.md).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Arch {
    pub name: String,
    /// Input image (C, H, W); the hidden layer's fan-in is sized from it.
    pub input: [usize; 3],
    pub conv: Vec<usize>,
    pub hidden: usize,
}

/// The architectures `train --arch` offers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum ArchKind {
    /// Two conv blocks 32-64, hidden 256: the paper-sized model for 28×28 grey images.
    #[default]
    CnnS,
    /// Three conv blocks 32-64-128, hidden 256: wider and deeper, for colour
    /// images of 32×32 and up.
    CnnM,
}

impl ArchKind {
    pub fn name(self) -> &'static str {
        match self {
            ArchKind::CnnS => "cnn-s",
            ArchKind::CnnM => "cnn-m",
        }
    }

    /// This architecture for input images of (C, H, W).
    pub fn build(self, input: [usize; 3]) -> Arch {
        match self {
            ArchKind::CnnS => Arch::cnn_s(input),
            ArchKind::CnnM => Arch::cnn_m(input),
        }
    }
}

impl Arch {
    pub fn cnn_s(input: [usize; 3]) -> Self {
        Arch { name: ArchKind::CnnS.name().into(), input, conv: vec![32, 64], hidden: 256 }
    }

    /// `cnn-m`: one more block and twice the last width of `cnn-s`; at 32×32
    /// its hidden layer reads 128×4×4 = 2048 values, fewer than cnn-s's 3136
    /// at 28×28, so the extra block costs convolution work, not parameters.
    pub fn cnn_m(input: [usize; 3]) -> Self {
        Arch { name: ArchKind::CnnM.name().into(), input, conv: vec![32, 64, 128], hidden: 256 }
    }

    /// (C, H, W) after the conv blocks, i.e. what Flatten sees.
    pub fn conv_out(&self) -> [usize; 3] {
        let [mut c, mut h, mut w] = self.input;
        for &oc in &self.conv {
            c = oc;
            h /= 2;
            w /= 2;
        }
        [c, h, w]
    }

    pub fn image_len(&self) -> usize {
        self.input.iter().product()
    }

    /// Parameters of a net of this architecture with heads of `head_sizes`
    /// classes, or `None` when the count overflows; computed without building
    /// it (a checkpoint's header is checked against its file with this before
    /// anything is allocated). Follows `Net::new`: 3×3 convolutions with
    /// biases, the hidden layer over the flattened conv output, the heads.
    pub fn param_count(&self, head_sizes: &[usize]) -> Option<usize> {
        let mut total = 0usize;
        let mut c = self.input[0];
        for &oc in &self.conv {
            total = total.checked_add(oc.checked_mul(c)?.checked_mul(9)?.checked_add(oc)?)?;
            c = oc;
        }
        let flat = self.conv_out().iter().try_fold(1usize, |p, &d| p.checked_mul(d))?;
        total = total.checked_add(self.hidden.checked_mul(flat)?.checked_add(self.hidden)?)?;
        for &n in head_sizes {
            total = total.checked_add(n.checked_mul(self.hidden)?.checked_add(n)?)?;
        }
        Some(total)
    }

    /// Multiply-adds per image of each parameterised trunk layer, in order:
    /// the convolutions counted directly (3×3 at full resolution, pad 1, so
    /// H·W·C_out·C_in·9 whatever algorithm runs them: Winograd does fewer,
    /// and the figure is meant to be comparable across kernels), then the
    /// hidden layer. Biases, pooling and ReLU are left out: a few percent at
    /// most and not multiply-adds.
    fn trunk_macs(&self) -> Vec<f64> {
        let [mut c, mut h, mut w] = self.input;
        let mut macs = Vec::with_capacity(self.conv.len() + 1);
        for &oc in &self.conv {
            macs.push((h * w * oc * c * 9) as f64);
            c = oc;
            h /= 2;
            w /= 2;
        }
        macs.push((c * h * w * self.hidden) as f64);
        macs
    }

    fn head_macs(&self, head_sizes: &[usize]) -> f64 {
        head_sizes.iter().map(|&n| (n * self.hidden) as f64).sum()
    }

    /// FLOPs (a multiply-add is two) of the forward pass of one image
    /// through the trunk and heads of `head_sizes` classes.
    pub fn forward_flops(&self, head_sizes: &[usize]) -> f64 {
        2.0 * (self.trunk_macs().iter().sum::<f64>() + self.head_macs(head_sizes))
    }

    /// FLOPs of one training image with every parameter trainable: the
    /// forward pass, the weight gradients (the same multiply-adds again) and
    /// the input gradients (again, except the first layer's, which nothing
    /// needs). `cnn-s` on 1×28×28 with one 5-class head: ≈ 27.4 MFLOP.
    pub fn train_flops(&self, head_sizes: &[usize]) -> f64 {
        let first = self.trunk_macs()[0];
        3.0 * self.forward_flops(head_sizes) - 2.0 * first
    }

    /// FLOPs of one training image with the trunk frozen and only the heads
    /// of `trained` sizes learning (LwF's warm-up): the forward pass through
    /// the trunk and the `forward` heads, then only the trained heads'
    /// weight gradients (their input gradient would only feed the frozen
    /// trunk, so the tape computes none).
    pub fn head_train_flops(&self, forward: &[usize], trained: &[usize]) -> f64 {
        self.forward_flops(forward) + 2.0 * self.head_macs(trained)
    }

    /// Checks that pooling never shrinks the image to nothing.
    pub fn validate(&self) -> Result<(), String> {
        let [c, h, w] = self.conv_out();
        if c * h * w == 0 || self.input.contains(&0) {
            return Err(format!(
                "input {:?} is too small for {} conv blocks (each halves H and W)",
                self.input,
                self.conv.len()
            ));
        }
        Ok(())
    }
}

/// One output head: a linear layer and the global classes of its outputs.
pub struct Head<B: Backend> {
    pub linear: Linear<B>,
    pub classes: Vec<u32>,
}

pub struct Net<B: Backend> {
    pub arch: Arch,
    pub trunk: Vec<Layer<B>>,
    pub heads: Vec<Head<B>>,
    next_id: ParamId,
}

impl<B: Backend> Net<B> {
    /// A freshly initialised trunk with no heads.
    pub fn new(b: &B, arch: Arch, rng: &mut Rng) -> Self {
        let mut ids = 0;
        let mut trunk = Vec::new();
        let mut c = arch.input[0];
        for (i, &oc) in arch.conv.iter().enumerate() {
            trunk.push(Layer::Conv2d(Conv2d::new(
                b,
                rng,
                &mut ids,
                &format!("trunk.{}", 3 * i),
                c,
                oc,
                3,
                1,
                1,
            )));
            // NOTE: pool before ReLU. relu(maxpool(x)) = maxpool(relu(x)) exactly
            // (ReLU is monotone; the gradient reaches the same argmax or is 0),
            // but the ReLU then touches a 4× smaller tensor, forward and backward.
            trunk.push(Layer::MaxPool2d { k: 2, s: 2 });
            trunk.push(Layer::Relu);
            c = oc;
        }
        trunk.push(Layer::Flatten);
        let flat: usize = arch.conv_out().iter().product();
        let name = format!("trunk.{}", trunk.len());
        trunk.push(Layer::Linear(Linear::new(b, rng, &mut ids, &name, flat, arch.hidden)));
        trunk.push(Layer::Relu);
        Net { arch, trunk, heads: Vec::new(), next_id: ids }
    }

    /// Append a freshly initialised head for `classes` (per-task mode, and the
    /// first head of the shared mode).
    pub fn add_head(&mut self, b: &B, rng: &mut Rng, classes: &[u32]) {
        let name = format!("heads.{}", self.heads.len());
        let linear = Linear::new(b, rng, &mut self.next_id, &name, self.arch.hidden, classes.len());
        self.heads.push(Head { linear, classes: classes.to_vec() });
    }

    /// Grow head `h` by new classes (shared mode: "4 outputs become 7").
    pub fn grow_head(&mut self, b: &B, rng: &mut Rng, h: usize, classes: &[u32]) {
        let head = &mut self.heads[h];
        head.linear.grow_rows(b, rng, classes.len());
        head.classes.extend_from_slice(classes);
    }

    pub fn num_params(&self) -> usize {
        self.next_id
    }

    pub fn params(&self) -> Vec<&Param<B>> {
        let mut v: Vec<&Param<B>> = self.trunk.iter().flat_map(|l| l.params()).collect();
        for h in &self.heads {
            v.push(&h.linear.w);
            v.push(&h.linear.b);
        }
        v
    }

    pub fn params_mut(&mut self) -> Vec<&mut Param<B>> {
        let mut v: Vec<&mut Param<B>> = self.trunk.iter_mut().flat_map(|l| l.params_mut()).collect();
        for h in &mut self.heads {
            v.push(&mut h.linear.w);
            v.push(&mut h.linear.b);
        }
        v
    }

    /// Parameters of θs (the trunk), in order.
    pub fn trunk_params(&self) -> Vec<&Param<B>> {
        self.trunk.iter().flat_map(|l| l.params()).collect()
    }

    /// Set which parameters train: the whole trunk or its first `frozen_layers`
    /// parameterised layers frozen, and the listed heads.
    pub fn set_trainable(&mut self, trunk: bool, frozen_layers: usize, heads: &[usize]) {
        let mut seen = 0;
        for layer in &mut self.trunk {
            let has = layer.has_params();
            let train = trunk && seen >= frozen_layers;
            for p in layer.params_mut() {
                p.trainable = train;
            }
            if has {
                seen += 1;
            }
        }
        for (i, h) in self.heads.iter_mut().enumerate() {
            h.linear.w.trainable = heads.contains(&i);
            h.linear.b.trainable = heads.contains(&i);
        }
    }

    /// Total output classes over all heads.
    pub fn num_outputs(&self) -> usize {
        self.heads.iter().map(|h| h.classes.len()).sum()
    }

    /// Number of parameterised trunk layers (for `--freeze-layers`).
    pub fn trunk_depth(&self) -> usize {
        self.trunk.iter().filter(|l| l.has_params()).count()
    }
}

impl<B: Backend> Net<B> {
    /// Record the trunk on the tape: x (N, C, H, W) → features (N, hidden).
    pub fn features<'a>(&'a self, tape: &mut Tape<'a, B>, x: Var) -> Var {
        let mut h = x;
        let mut layers = self.trunk.iter().peekable();
        while let Some(layer) = layers.next() {
            h = match layer {
                // A convolution and the pooling after it run as one op.
                Layer::Conv2d(c) => match layers.next_if(|l| matches!(l, Layer::MaxPool2d { .. })) {
                    Some(&Layer::MaxPool2d { k, s }) => tape.conv2d_maxpool(h, c, k, s),
                    _ => tape.conv2d(h, c),
                },
                Layer::Relu => tape.relu(h),
                Layer::MaxPool2d { k, s } => tape.maxpool2d(h, *k, *s),
                Layer::Flatten => tape.flatten(h),
                Layer::Linear(l) => tape.linear(h, l),
            };
        }
        h
    }

    /// Record the trunk and the listed heads: one logits Var per head.
    pub fn forward<'a>(&'a self, tape: &mut Tape<'a, B>, x: Var, heads: &[usize]) -> Vec<Var> {
        let f = self.features(tape, x);
        heads.iter().map(|&h| tape.linear(f, &self.heads[h].linear)).collect()
    }
}

impl<B: Backend> Net<B> {
    /// A deep copy on the device (task 1 is trained once and copied per method).
    pub fn duplicate(&self, b: &B) -> Self {
        let trunk = self
            .trunk
            .iter()
            .map(|layer| match layer {
                Layer::Conv2d(c) => Layer::Conv2d(c.duplicate(b)),
                Layer::Relu => Layer::Relu,
                Layer::MaxPool2d { k, s } => Layer::MaxPool2d { k: *k, s: *s },
                Layer::Flatten => Layer::Flatten,
                Layer::Linear(l) => Layer::Linear(l.duplicate(b)),
            })
            .collect();
        let heads = self
            .heads
            .iter()
            .map(|h| Head { linear: h.linear.duplicate(b), classes: h.classes.clone() })
            .collect();
        Net { arch: self.arch.clone(), trunk, heads, next_id: self.next_id }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// cnn-s on Fashion-MNIST (1×28×28, one 5-class head), by hand:
    /// conv1 28·28·32·1·9 = 225 792 multiply-adds, conv2 14·14·64·32·9 =
    /// 3 612 672, hidden 64·7·7·256 = 802 816, head 256·5 = 1 280; 4 642 560
    /// in all. Forward 2× that, the weight gradients the same again, the input
    /// gradients the same less conv1's.
    #[test]
    fn flops_of_cnn_s_match_a_hand_count() {
        let arch = Arch::cnn_s([1, 28, 28]);
        let macs = 225_792.0 + 3_612_672.0 + 802_816.0 + 1_280.0;
        assert_eq!(arch.forward_flops(&[5]), 2.0 * macs);
        let train = 3.0 * 2.0 * macs - 2.0 * 225_792.0;
        assert_eq!(arch.train_flops(&[5]), train);
        assert_eq!(train, 27_403_776.0);
        // A second head adds its own forward, weight and input gradients.
        assert_eq!(arch.train_flops(&[5, 5]), train + 6.0 * 1_280.0);
        // The warm-up: forward through trunk and the new head, and that
        // head's weight gradient only.
        assert_eq!(arch.head_train_flops(&[5], &[5]), 2.0 * macs + 2.0 * 1_280.0);
    }
}
