//! Layers and the `Net`: a trunk (θs) plus any number of heads (θo, θn),
//! recorded on the tape by `Net::features` / `Net::forward` (evaluation) and
//! `Net::forward_train` (a training step: BatchNorm per the net's
//! [`BnPolicy`]). Two families of trunk: the plain conv stacks (cnn-s,
//! cnn-m) and ResNets of BasicBlocks (resnet20/32 for small images, and
//! resnet18/34 with torchvision's layout and tensor names).
//!
//! The layers with parameters and their initialisation live below the tape
//! (`param.rs`); this file arranges them and drives the tape, one way.

use crate::autodiff::{Tape, Var};
use crate::backend::Backend;
pub use crate::param::{BatchNorm2d, Conv2d, Linear, Param, ParamId};
use crate::rng::Rng;
use serde::{Deserialize, Serialize};

pub enum Layer<B: Backend> {
    Conv2d(Conv2d<B>),
    BatchNorm(BatchNorm2d<B>),
    Relu,
    MaxPool2d {
        k: usize,
        s: usize,
        pad: usize,
    },
    Flatten,
    Linear(Linear<B>),
    /// A residual BasicBlock (He et al. 2016).
    Basic(Box<BasicBlock<B>>),
    /// (N, C, H, W) → (N, C), each plane's mean.
    GlobalAvgPool,
}

/// torchvision's BasicBlock: `relu(bn2(conv2(relu(bn1(conv1(x))))) + s(x))`
/// with `s` the identity, or `downsample` (1×1 conv, stride 2, + BN) where
/// the block halves H and W or changes the width.
pub struct BasicBlock<B: Backend> {
    pub conv1: Conv2d<B>,
    pub bn1: BatchNorm2d<B>,
    pub conv2: Conv2d<B>,
    pub bn2: BatchNorm2d<B>,
    pub downsample: Option<(Conv2d<B>, BatchNorm2d<B>)>,
}

impl<B: Backend> BasicBlock<B> {
    /// A block `c → oc` named `name` (`layer2.0`), its first convolution of
    /// stride `stride`.
    fn new(b: &B, rng: &mut Rng, ids: &mut ParamId, name: &str, c: usize, oc: usize, stride: usize) -> Self {
        let conv1 = Conv2d::unbiased(b, rng, ids, &format!("{name}.conv1"), c, oc, 3, stride, 1);
        let bn1 = BatchNorm2d::new(b, ids, &format!("{name}.bn1"), oc);
        let conv2 = Conv2d::unbiased(b, rng, ids, &format!("{name}.conv2"), oc, oc, 3, 1, 1);
        let bn2 = BatchNorm2d::new(b, ids, &format!("{name}.bn2"), oc);
        let downsample = (stride != 1 || c != oc).then(|| {
            let conv = Conv2d::unbiased(b, rng, ids, &format!("{name}.downsample.0"), c, oc, 1, stride, 0);
            (conv, BatchNorm2d::new(b, ids, &format!("{name}.downsample.1"), oc))
        });
        BasicBlock { conv1, bn1, conv2, bn2, downsample }
    }

    fn batchnorms(&self) -> Vec<&BatchNorm2d<B>> {
        let mut v = vec![&self.bn1, &self.bn2];
        v.extend(self.downsample.as_ref().map(|d| &d.1));
        v
    }

    fn batchnorms_mut(&mut self) -> Vec<&mut BatchNorm2d<B>> {
        let mut v = vec![&mut self.bn1, &mut self.bn2];
        v.extend(self.downsample.as_mut().map(|d| &mut d.1));
        v
    }

    fn params(&self) -> Vec<&Param<B>> {
        let mut v = self.conv1.params();
        v.extend([&self.bn1.w, &self.bn1.b]);
        v.extend(self.conv2.params());
        v.extend([&self.bn2.w, &self.bn2.b]);
        if let Some((c, bn)) = &self.downsample {
            v.extend(c.params());
            v.extend([&bn.w, &bn.b]);
        }
        v
    }

    fn params_mut(&mut self) -> Vec<&mut Param<B>> {
        let mut v = self.conv1.params_mut();
        v.extend([&mut self.bn1.w, &mut self.bn1.b]);
        v.extend(self.conv2.params_mut());
        v.extend([&mut self.bn2.w, &mut self.bn2.b]);
        if let Some((c, bn)) = &mut self.downsample {
            v.extend(c.params_mut());
            v.extend([&mut bn.w, &mut bn.b]);
        }
        v
    }

    fn duplicate(&self, b: &B) -> Self {
        BasicBlock {
            conv1: self.conv1.duplicate(b),
            bn1: self.bn1.duplicate(b),
            conv2: self.conv2.duplicate(b),
            bn2: self.bn2.duplicate(b),
            downsample: self.downsample.as_ref().map(|(c, bn)| (c.duplicate(b), bn.duplicate(b))),
        }
    }
}

impl<B: Backend> Layer<B> {
    pub fn params(&self) -> Vec<&Param<B>> {
        match self {
            Layer::Conv2d(c) => c.params(),
            Layer::BatchNorm(bn) => vec![&bn.w, &bn.b],
            Layer::Linear(l) => vec![&l.w, &l.b],
            Layer::Basic(blk) => blk.params(),
            _ => vec![],
        }
    }
    pub fn params_mut(&mut self) -> Vec<&mut Param<B>> {
        match self {
            Layer::Conv2d(c) => c.params_mut(),
            Layer::BatchNorm(bn) => vec![&mut bn.w, &mut bn.b],
            Layer::Linear(l) => vec![&mut l.w, &mut l.b],
            Layer::Basic(blk) => blk.params_mut(),
            _ => vec![],
        }
    }
    /// Whether the layer has parameters: a "layer" of `--freeze-layers`
    /// (a residual block counts as one).
    pub fn has_params(&self) -> bool {
        matches!(self, Layer::Conv2d(_) | Layer::BatchNorm(_) | Layer::Linear(_) | Layer::Basic(_))
    }
}

/// How BatchNorm layers behave in a training step (`--bn`). Evaluation,
/// Y_o recording and class statistics always use the running statistics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum BnPolicy {
    /// PyTorch's `model.train()`: normalise with each batch's statistics and
    /// update the running ones (a layer whose affine parameters are frozen
    /// keeps its running statistics too: a frozen layer stays as it was).
    #[default]
    Train,
    /// Normalise with the running statistics and never update them (the old
    /// model's statistics kept); γ and β still train with the trunk.
    Frozen,
}

impl BnPolicy {
    pub fn name(self) -> &'static str {
        match self {
            BnPolicy::Train => "train",
            BnPolicy::Frozen => "frozen",
        }
    }
}

/// Bounds on an architecture's input, so that shape arithmetic on a
/// checkpoint's claims cannot overflow: grey, RGB or RGBA images, and
/// sides far beyond any classifier's input (ImageNet models take 224).
pub const MAX_CHANNELS: usize = 4;
pub const MAX_IMAGE_SIDE: usize = 4096;

/// The architecture, as stored in checkpoints. Without `resnet`: a stack of
/// 3×3 pad-1 conv + ReLU + 2×2 maxpool blocks (run as conv, pool, ReLU: the
/// same function), then a hidden linear layer + ReLU (= θs); `cnn-s` is conv
/// widths [32, 64] and hidden 256 (DESIGN.md). With `resnet`: the stem and
/// stages of BasicBlocks it describes, then global average pooling; `conv`
/// is empty and `hidden` is the last stage's width (the feature size).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Arch {
    pub name: String,
    /// Input image (C, H, W); the hidden layer's fan-in is sized from it.
    pub input: [usize; 3],
    pub conv: Vec<usize>,
    /// Width of the trunk's output features.
    pub hidden: usize,
    /// Absent in plain-CNN checkpoints (which keep their exact metadata).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resnet: Option<ResNetSpec>,
}

/// A ResNet of BasicBlocks: the stem, then stages; the first block of every
/// stage after the first has stride 2.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResNetSpec {
    pub stem: Stem,
    /// The stem convolution's output channels.
    pub stem_width: usize,
    /// Per stage (`layer1`, `layer2`, …): its width and its block count.
    pub stages: Vec<(usize, usize)>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Stem {
    /// He et al. 2016 §4.2 (CIFAR): 3×3 conv, stride 1, pad 1, BN, ReLU.
    Cifar,
    /// torchvision: 7×7 conv, stride 2, pad 3, BN, ReLU, 3×3 max-pool
    /// stride 2 pad 1.
    Imagenet,
}

/// One convolution of a ResNet, with the size of the map it reads.
#[derive(Clone, Copy, Debug)]
struct ConvGeom {
    c: usize,
    oc: usize,
    k: usize,
    stride: usize,
    /// Input height and width.
    h: usize,
    w: usize,
    /// Output height and width.
    oh: usize,
    ow: usize,
}

/// Output size of a k×k window, stride s, pad p over n cells.
fn out_len(n: usize, k: usize, s: usize, p: usize) -> usize {
    (n + 2 * p).saturating_sub(k) / s + 1
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
    /// He et al.'s CIFAR ResNet-20: 3×3 stem of 16, three stages of three
    /// BasicBlocks (16-32-64), 64 features; small images.
    Resnet20,
    /// The same with five blocks a stage.
    Resnet32,
    /// torchvision's resnet18 (2-2-2-2 blocks, 64-512), same tensor names.
    Resnet18,
    /// torchvision's resnet34 (3-4-6-3 blocks).
    Resnet34,
}

impl ArchKind {
    pub fn name(self) -> &'static str {
        match self {
            ArchKind::CnnS => "cnn-s",
            ArchKind::CnnM => "cnn-m",
            ArchKind::Resnet20 => "resnet20",
            ArchKind::Resnet32 => "resnet32",
            ArchKind::Resnet18 => "resnet18",
            ArchKind::Resnet34 => "resnet34",
        }
    }

    /// This architecture for input images of (C, H, W).
    pub fn build(self, input: [usize; 3]) -> Arch {
        let cifar = |blocks| ResNetSpec {
            stem: Stem::Cifar,
            stem_width: 16,
            stages: vec![(16, blocks), (32, blocks), (64, blocks)],
        };
        let imagenet = |blocks: [usize; 4]| ResNetSpec {
            stem: Stem::Imagenet,
            stem_width: 64,
            stages: vec![(64, blocks[0]), (128, blocks[1]), (256, blocks[2]), (512, blocks[3])],
        };
        match self {
            ArchKind::CnnS => Arch::cnn_s(input),
            ArchKind::CnnM => Arch::cnn_m(input),
            ArchKind::Resnet20 => Arch::resnet(self.name(), input, cifar(3)),
            ArchKind::Resnet32 => Arch::resnet(self.name(), input, cifar(5)),
            ArchKind::Resnet18 => Arch::resnet(self.name(), input, imagenet([2, 2, 2, 2])),
            ArchKind::Resnet34 => Arch::resnet(self.name(), input, imagenet([3, 4, 6, 3])),
        }
    }
}

impl Arch {
    pub fn cnn_s(input: [usize; 3]) -> Self {
        Arch { name: ArchKind::CnnS.name().into(), input, conv: vec![32, 64], hidden: 256, resnet: None }
    }

    /// A ResNet named `name` (its features are the last stage's width).
    pub fn resnet(name: &str, input: [usize; 3], spec: ResNetSpec) -> Self {
        let hidden = spec.stages.last().map_or(spec.stem_width, |s| s.0);
        Arch { name: name.into(), input, conv: Vec::new(), hidden, resnet: Some(spec) }
    }

    /// Every convolution of a ResNet in the order the net runs them (stem;
    /// per block conv1, conv2, then the downsample), with the sizes of the
    /// maps: the one description `param_count`, the FLOP counts and
    /// `validate` read, and `Net::new` follows.
    fn resnet_convs(&self, spec: &ResNetSpec) -> Vec<ConvGeom> {
        let [c0, mut h, mut w] = self.input;
        let mut out = Vec::new();
        let mut conv = |c: usize, oc: usize, k: usize, stride: usize, h: usize, w: usize| {
            let (oh, ow) = (out_len(h, k, stride, k / 2), out_len(w, k, stride, k / 2));
            out.push(ConvGeom { c, oc, k, stride, h, w, oh, ow });
            (oh, ow)
        };
        let (k, s) = match spec.stem {
            Stem::Cifar => (3, 1),
            Stem::Imagenet => (7, 2),
        };
        (h, w) = conv(c0, spec.stem_width, k, s, h, w);
        if spec.stem == Stem::Imagenet {
            (h, w) = (out_len(h, 3, 2, 1), out_len(w, 3, 2, 1));
        }
        let mut c = spec.stem_width;
        for (i, &(oc, blocks)) in spec.stages.iter().enumerate() {
            for j in 0..blocks {
                let stride = if i > 0 && j == 0 { 2 } else { 1 };
                let (oh, ow) = conv(c, oc, 3, stride, h, w);
                conv(oc, oc, 3, 1, oh, ow);
                if stride != 1 || c != oc {
                    conv(c, oc, 1, stride, h, w);
                }
                (h, w, c) = (oh, ow, oc);
            }
        }
        out
    }

    /// `cnn-m`: one more block and twice the last width of `cnn-s`; at 32×32
    /// its hidden layer reads 128×4×4 = 2048 values, fewer than cnn-s's 3136
    /// at 28×28, so the extra block costs convolution work, not parameters.
    pub fn cnn_m(input: [usize; 3]) -> Self {
        Arch { name: ArchKind::CnnM.name().into(), input, conv: vec![32, 64, 128], hidden: 256, resnet: None }
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
        if let Some(spec) = &self.resnet {
            // Convolutions without bias, each followed by a BatchNorm (γ, β,
            // and the running mean and variance stored beside them).
            for g in self.resnet_convs(spec) {
                total = total
                    .checked_add(g.oc.checked_mul(g.c)?.checked_mul(g.k * g.k)?.checked_add(4 * g.oc)?)?;
            }
            for &n in head_sizes {
                total = total.checked_add(n.checked_mul(self.hidden)?.checked_add(n)?)?;
            }
            return Some(total);
        }
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
        if let Some(spec) = &self.resnet {
            return self
                .resnet_convs(spec)
                .iter()
                .map(|g| (g.oh * g.ow * g.oc * g.c * g.k * g.k) as f64)
                .collect();
        }
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

    /// Checks that pooling never shrinks the image to nothing, and that no
    /// ResNet stage is asked to halve a map that is already 1×1.
    pub fn validate(&self) -> Result<(), String> {
        let [c, h, w] = self.input;
        if c > MAX_CHANNELS || h > MAX_IMAGE_SIDE || w > MAX_IMAGE_SIDE {
            return Err(format!(
                "input {c}×{h}×{w} is beyond what the engine takes (at most {MAX_CHANNELS} channels and \
                 {MAX_IMAGE_SIDE} pixels a side; --image-size resizes)"
            ));
        }
        if let Some(spec) = &self.resnet {
            if self.input.contains(&0) {
                return Err(format!("input {:?} does not fit {}", self.input, self.name));
            }
            if let Some(g) = self.resnet_convs(spec).iter().find(|g| g.stride > 1 && (g.h < 2 || g.w < 2)) {
                let min = (1..=512).find(|&s| {
                    let mut a = self.clone();
                    a.input = [self.input[0], s, s];
                    a.resnet_convs(spec).iter().all(|g| g.stride == 1 || (g.h >= 2 && g.w >= 2))
                });
                return Err(format!(
                    "{} cannot take {}×{} images: a stride-2 layer would halve a {}×{} map{}",
                    self.name,
                    self.input[1],
                    self.input[2],
                    g.h,
                    g.w,
                    min.map(|m| format!(" (it needs at least {m}×{m})")).unwrap_or_default()
                ));
            }
            return Ok(());
        }
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
    /// What BatchNorm does in training steps (`forward_train`).
    pub bn_policy: BnPolicy,
}

impl<B: Backend> Net<B> {
    /// A freshly initialised trunk with no heads.
    pub fn new(b: &B, arch: Arch, rng: &mut Rng) -> Self {
        if let Some(spec) = arch.resnet.clone() {
            return Self::resnet(b, arch, &spec, rng);
        }
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
            trunk.push(Layer::MaxPool2d { k: 2, s: 2, pad: 0 });
            trunk.push(Layer::Relu);
            c = oc;
        }
        trunk.push(Layer::Flatten);
        let flat: usize = arch.conv_out().iter().product();
        let name = format!("trunk.{}", trunk.len());
        trunk.push(Layer::Linear(Linear::new(b, rng, &mut ids, &name, flat, arch.hidden)));
        trunk.push(Layer::Relu);
        Net { arch, trunk, heads: Vec::new(), next_id: ids, bn_policy: BnPolicy::default() }
    }

    /// A ResNet trunk, with torchvision's tensor names (`conv1`, `bn1`,
    /// `layer1.0.conv1`, …, `layer2.0.downsample.0`) and initialisation.
    fn resnet(b: &B, arch: Arch, spec: &ResNetSpec, rng: &mut Rng) -> Self {
        let mut ids = 0;
        let mut trunk = Vec::new();
        let (k, s) = match spec.stem {
            Stem::Cifar => (3, 1),
            Stem::Imagenet => (7, 2),
        };
        let c0 = arch.input[0];
        trunk.push(Layer::Conv2d(Conv2d::unbiased(
            b,
            rng,
            &mut ids,
            "conv1",
            c0,
            spec.stem_width,
            k,
            s,
            k / 2,
        )));
        trunk.push(Layer::BatchNorm(BatchNorm2d::new(b, &mut ids, "bn1", spec.stem_width)));
        trunk.push(Layer::Relu);
        if spec.stem == Stem::Imagenet {
            trunk.push(Layer::MaxPool2d { k: 3, s: 2, pad: 1 });
        }
        let mut c = spec.stem_width;
        for (i, &(oc, blocks)) in spec.stages.iter().enumerate() {
            for j in 0..blocks {
                let stride = if i > 0 && j == 0 { 2 } else { 1 };
                let name = format!("layer{}.{j}", i + 1);
                trunk.push(Layer::Basic(Box::new(BasicBlock::new(b, rng, &mut ids, &name, c, oc, stride))));
                c = oc;
            }
        }
        trunk.push(Layer::GlobalAvgPool);
        Net { arch, trunk, heads: Vec::new(), next_id: ids, bn_policy: BnPolicy::default() }
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

    /// Every BatchNorm of the trunk, in order.
    pub fn batchnorms(&self) -> Vec<&BatchNorm2d<B>> {
        self.trunk
            .iter()
            .flat_map(|l| match l {
                Layer::BatchNorm(bn) => vec![bn],
                Layer::Basic(blk) => blk.batchnorms(),
                _ => vec![],
            })
            .collect()
    }

    pub fn batchnorms_mut(&mut self) -> Vec<&mut BatchNorm2d<B>> {
        self.trunk
            .iter_mut()
            .flat_map(|l| match l {
                Layer::BatchNorm(bn) => vec![bn],
                Layer::Basic(blk) => blk.batchnorms_mut(),
                _ => vec![],
            })
            .collect()
    }

    /// Fold a step's batch statistics (from `Tape::take_batch_stats`) into
    /// the running statistics of the layers they came from, and hand the
    /// buffers back to `ws`.
    pub fn update_running_stats(
        &mut self,
        b: &B,
        stats: Vec<(String, B::Buf, B::Buf, usize)>,
        ws: &mut crate::autodiff::Workspace<B>,
    ) {
        let mut bns = self.batchnorms_mut();
        for (name, mean, var, count) in stats {
            if let Some(bn) = bns.iter_mut().find(|bn| bn.name == name) {
                bn.update_running(b, &mean, &var, count);
            }
            ws.give(b, mean);
            ws.give(b, var);
        }
    }
}

impl<B: Backend> Net<B> {
    /// Record the trunk on the tape in evaluation mode (BatchNorm with its
    /// running statistics): x (N, C, H, W) → features (N, hidden).
    pub fn features<'a>(&'a self, tape: &mut Tape<'a, B>, x: Var) -> Var {
        self.trunk_pass(tape, x, false)
    }

    /// The trunk, in training mode (`train`: BatchNorm per `bn_policy`) or
    /// evaluation mode.
    fn trunk_pass<'a>(&'a self, tape: &mut Tape<'a, B>, x: Var, train: bool) -> Var {
        // Batch statistics only in a training step, under the `train`
        // policy, and in layers whose affine parameters train.
        let batch = |bn: &BatchNorm2d<B>| train && self.bn_policy == BnPolicy::Train && bn.trainable();
        let mut h = x;
        let mut layers = self.trunk.iter().peekable();
        while let Some(layer) = layers.next() {
            h = match layer {
                // A convolution and the pooling after it run as one op.
                Layer::Conv2d(c) => match layers.next_if(|l| matches!(l, Layer::MaxPool2d { pad: 0, .. })) {
                    Some(&Layer::MaxPool2d { k, s, .. }) => tape.conv2d_maxpool(h, c, k, s),
                    _ => tape.conv2d(h, c),
                },
                Layer::BatchNorm(bn) => tape.batchnorm(h, bn, batch(bn)),
                Layer::Relu => tape.relu(h),
                Layer::MaxPool2d { k, s, pad } => tape.maxpool2d(h, *k, *s, *pad),
                Layer::Flatten => tape.flatten(h),
                Layer::Linear(l) => tape.linear(h, l),
                Layer::GlobalAvgPool => tape.global_avgpool(h),
                Layer::Basic(blk) => {
                    let a = tape.conv2d(h, &blk.conv1);
                    let a = tape.batchnorm(a, &blk.bn1, batch(&blk.bn1));
                    let a = tape.relu(a);
                    let a = tape.conv2d(a, &blk.conv2);
                    let a = tape.batchnorm(a, &blk.bn2, batch(&blk.bn2));
                    let shortcut = match &blk.downsample {
                        Some((conv, bn)) => {
                            let s = tape.conv2d(h, conv);
                            tape.batchnorm(s, bn, batch(bn))
                        }
                        None => h,
                    };
                    let sum = tape.add(a, shortcut);
                    tape.relu(sum)
                }
            };
        }
        h
    }

    /// Record the trunk and the listed heads in evaluation mode: one logits
    /// Var per head.
    pub fn forward<'a>(&'a self, tape: &mut Tape<'a, B>, x: Var, heads: &[usize]) -> Vec<Var> {
        let f = self.features(tape, x);
        heads.iter().map(|&h| tape.linear(f, &self.heads[h].linear)).collect()
    }

    /// The same for a training step: BatchNorm per `bn_policy`. The batch
    /// statistics it records are folded into the running ones by
    /// `update_running_stats` after the step.
    pub fn forward_train<'a>(&'a self, tape: &mut Tape<'a, B>, x: Var, heads: &[usize]) -> Vec<Var> {
        let f = self.features_train(tape, x);
        heads.iter().map(|&h| tape.linear(f, &self.heads[h].linear)).collect()
    }

    /// The trunk alone for a training step (BatchNorm per `bn_policy`).
    pub fn features_train<'a>(&'a self, tape: &mut Tape<'a, B>, x: Var) -> Var {
        self.trunk_pass(tape, x, true)
    }

    /// Whether a training step normalises with batch statistics anywhere
    /// (then a batch needs more than one value per channel).
    pub fn uses_batch_stats(&self) -> bool {
        self.bn_policy == BnPolicy::Train && self.batchnorms().iter().any(|bn| bn.trainable())
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
                Layer::BatchNorm(bn) => Layer::BatchNorm(bn.duplicate(b)),
                Layer::Relu => Layer::Relu,
                &Layer::MaxPool2d { k, s, pad } => Layer::MaxPool2d { k, s, pad },
                Layer::Flatten => Layer::Flatten,
                Layer::Linear(l) => Layer::Linear(l.duplicate(b)),
                Layer::Basic(blk) => Layer::Basic(Box::new(blk.duplicate(b))),
                Layer::GlobalAvgPool => Layer::GlobalAvgPool,
            })
            .collect();
        let heads = self
            .heads
            .iter()
            .map(|h| Head { linear: h.linear.duplicate(b), classes: h.classes.clone() })
            .collect();
        Net { arch: self.arch.clone(), trunk, heads, next_id: self.next_id, bn_policy: self.bn_policy }
    }

    /// A deep copy with every parameter frozen: the old model that a live
    /// teacher runs beside the one that trains (it shares the parameter ids,
    /// so it must never take a gradient).
    pub fn frozen_copy(&self, b: &B) -> Self {
        let mut old = self.duplicate(b);
        old.set_trainable(false, 0, &[]);
        old
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

    /// resnet18 counted by hand, layer by layer, at 224×224 (torchvision's
    /// published ≈ 1.82 G multiply-adds) and at 32×32, where every map is 7×
    /// smaller on each side (112→16 after the stem, 56→8, 28→4, 14→2, 7→1),
    /// so the count is exactly 49× smaller.
    #[test]
    fn flops_of_resnet18_match_a_hand_count() {
        // Multiply-adds of the convolutions at an output map of s×s after
        // the stem (s = 112 at 224×224): stem 7×7 3→64 at s; layer1: four
        // 3×3 64→64 at s/2; layers 2-4 (width c, map t): a stride-2 3×3
        // c/2→c, three 3×3 c→c, the 1×1 stride-2 c/2→c shortcut.
        let hand = |s: usize| {
            let sq = |t: usize| (t * t) as f64;
            let mut macs = sq(s) * 64.0 * 3.0 * 49.0 + 4.0 * sq(s / 2) * 64.0 * 64.0 * 9.0;
            for (c, t) in [(128.0, s / 4), (256.0, s / 8), (512.0, s / 16)] {
                macs += sq(t) * c * (c / 2.0) * 9.0 + 3.0 * sq(t) * c * c * 9.0 + sq(t) * c * (c / 2.0);
            }
            macs
        };
        let big = ArchKind::Resnet18.build([3, 224, 224]);
        let fc = 512.0 * 1000.0;
        assert_eq!(big.forward_flops(&[1000]), 2.0 * (hand(112) + fc));
        // torchvision's figure, 1.814 G multiply-adds with the fc layer.
        assert!((big.forward_flops(&[1000]) / 2.0 - 1.814e9).abs() < 0.005e9);
        let small = ArchKind::Resnet18.build([3, 32, 32]);
        let macs = hand(16);
        assert_eq!(macs * 49.0, hand(112));
        assert!((macs - 37.0e6).abs() < 0.1e6, "{macs}");
        assert_eq!(small.forward_flops(&[5]), 2.0 * (macs + 512.0 * 5.0));
        // Training: forward, weight gradients, and input gradients but the stem's.
        let stem = 16.0 * 16.0 * 64.0 * 3.0 * 49.0;
        assert_eq!(small.train_flops(&[5]), 3.0 * small.forward_flops(&[5]) - 2.0 * stem);
    }
}
