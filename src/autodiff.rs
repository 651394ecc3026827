//! The tape: define-by-run reverse mode (a Wengert list).
//!
//! Each training step records its ops on a [`Tape`]; a [`Var`] is an index
//! into it, and the recording order is already a topological order, so
//! `backward` just walks the nodes in reverse — no graph search. Parameters
//! live below the tape (`param.rs`); the tape borrows them and accumulates
//! their gradients into [`Grads`], indexed by `ParamId`. The `Net` (`nn.rs`)
//! sits above and records its layers here: the dependency runs one way.
//!
//! Loss terms are ops too (cross-entropy, distillation, the anchor penalty):
//! each adds its value to the tape's loss and computes its gradient when it
//! is recorded, since the gradient of a loss term needs nothing from later
//! ops. So `loss_value` is complete as soon as the losses are recorded, and
//! `backward` has one dispatch: each op's arm moves the gradient that reached
//! it to its inputs and parameters.
//!
//! Whether a node needs a gradient is decided when it is recorded: a frozen
//! parameter launches no dW kernel and a layer whose input needs no gradient
//! launches no dX kernel (so LwF's warm-up costs only the head's backward).
//!
//! Buffers come from a [`Workspace`] that outlives the tape; when the tape is
//! dropped they go back to it, so after the first step a training step
//! allocates no new device buffers.

use crate::backend::{Backend, BnParams, Conv2dParams, Gemm, PoolParams};
use crate::param::{BatchNorm2d, Conv2d, Linear, Param, ParamId};
use crate::tensor::Shape;
use std::collections::HashMap;

/// A value recorded on the tape.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Var(u32);

impl Var {
    fn i(self) -> usize {
        self.0 as usize
    }
}

/// Recycled device buffers, keyed by length.
pub struct Workspace<B: Backend> {
    free: HashMap<usize, Vec<B::Buf>>,
    free_idx: HashMap<usize, Vec<B::IdxBuf>>,
    /// Fresh device allocations made so far (a test checks it stops growing).
    pub allocations: usize,
}

impl<B: Backend> Default for Workspace<B> {
    fn default() -> Self {
        Workspace { free: HashMap::new(), free_idx: HashMap::new(), allocations: 0 }
    }
}

impl<B: Backend> Workspace<B> {
    pub fn new() -> Self {
        Self::default()
    }
    /// A buffer of exactly `len` elements; its contents are unspecified.
    pub fn take(&mut self, b: &B, len: usize) -> B::Buf {
        if let Some(buf) = self.free.get_mut(&len).and_then(|v| v.pop()) {
            return buf;
        }
        self.allocations += 1;
        b.zeros(len)
    }
    pub fn take_zeroed(&mut self, b: &B, len: usize) -> B::Buf {
        let mut buf = self.take(b, len);
        b.fill(&mut buf, 0.0);
        buf
    }
    pub fn take_idx(&mut self, b: &B, len: usize) -> B::IdxBuf {
        if let Some(buf) = self.free_idx.get_mut(&len).and_then(|v| v.pop()) {
            return buf;
        }
        self.allocations += 1;
        b.zeros_idx(len)
    }
    pub fn give(&mut self, b: &B, buf: B::Buf) {
        self.free.entry(b.len(&buf)).or_default().push(buf);
    }
    pub fn give_idx(&mut self, b: &B, buf: B::IdxBuf) {
        self.free_idx.entry(b.len_idx(&buf)).or_default().push(buf);
    }
}

/// Parameter gradients, indexed by `ParamId`; kept across steps.
pub struct Grads<B: Backend> {
    bufs: Vec<Option<B::Buf>>,
}

impl<B: Backend> Default for Grads<B> {
    fn default() -> Self {
        Grads { bufs: Vec::new() }
    }
}

impl<B: Backend> Grads<B> {
    pub fn new() -> Self {
        Self::default()
    }
    /// Zero the gradients of the trainable `params` (allocating on first use
    /// or when a head grew), and drop those of frozen ones.
    pub fn prepare<'p>(&mut self, b: &B, params: impl IntoIterator<Item = &'p Param<B>>) {
        for p in params {
            if self.bufs.len() <= p.id {
                self.bufs.resize_with(p.id + 1, || None);
            }
            let slot = &mut self.bufs[p.id];
            if !p.trainable {
                *slot = None;
                continue;
            }
            match slot {
                Some(g) if b.len(g) == p.value.numel() => b.fill(g, 0.0),
                _ => *slot = Some(b.zeros(p.value.numel())),
            }
        }
    }
    pub fn get(&self, id: ParamId) -> Option<&B::Buf> {
        self.bufs.get(id).and_then(|g| g.as_ref())
    }
    fn get_mut(&mut self, id: ParamId) -> Option<&mut B::Buf> {
        self.bufs.get_mut(id).and_then(|g| g.as_mut())
    }
    /// The gradients of two different parameters at once.
    fn get_two_mut(&mut self, a: ParamId, b: ParamId) -> (Option<&mut B::Buf>, Option<&mut B::Buf>) {
        assert_ne!(a, b, "get_two_mut: one parameter twice");
        let hi = a.max(b);
        if self.bufs.len() <= hi {
            self.bufs.resize_with(hi + 1, || None);
        }
        let (lo_part, hi_part) = self.bufs.split_at_mut(hi);
        let (x, y) = (lo_part[a.min(b)].as_mut(), hi_part[0].as_mut());
        if a < b {
            (x, y)
        } else {
            (y, x)
        }
    }
}

/// The recorded ops: one variant per op, one arm each in `backward`.
enum Op<'a, B: Backend> {
    /// Data, labels' logits targets, anything that needs no gradient.
    Input,
    Linear {
        x: Var,
        l: &'a Linear<B>,
    },
    Conv2d {
        x: Var,
        l: &'a Conv2d<B>,
        p: Conv2dParams,
    },
    /// Backward reads the node's own output (the mask of y > 0).
    Relu {
        x: Var,
    },
    MaxPool {
        x: Var,
        argmax: B::IdxBuf,
        p: PoolParams,
    },
    /// A convolution (with bias) and the max pooling of its output, run as
    /// one kernel where the backend can: the convolution's output is never
    /// kept, backward rebuilds its gradient from the argmax.
    ConvPool {
        x: Var,
        l: &'a Conv2d<B>,
        p: Conv2dParams,
        argmax: B::IdxBuf,
        pool: PoolParams,
    },
    /// BatchNorm2d. `batch` holds this batch's (mean, biased variance)
    /// when the layer normalised with them (training mode); `None` when it
    /// used its running statistics (evaluation, or frozen statistics).
    BatchNorm {
        x: Var,
        l: &'a BatchNorm2d<B>,
        p: BnParams,
        batch: Option<(B::Buf, B::Buf)>,
    },
    /// `a + b` (a residual join).
    Add {
        a: Var,
        b: Var,
    },
    /// (N, C, H, W) → (N, C): each plane's mean.
    GlobalAvgPool {
        x: Var,
        inner: usize,
    },
    /// A view: shares its input's buffer and gradient.
    Reshape {
        x: Var,
    },
    /// Softmax cross-entropy; wrote the logits' gradient when recorded. The
    /// labels' device buffer stays with the node until the tape is dropped.
    CrossEntropy {
        labels: B::IdxBuf,
    },
    /// Temperature distillation; wrote the student's gradient when recorded.
    Distill,
    /// A quadratic pull of a parameter towards an anchor (l2, ewc). Its
    /// gradient was computed when recorded; backward adds it to the
    /// parameter's.
    AnchorPenalty {
        param: &'a Param<B>,
        grad: B::Buf,
    },
}

struct Node<'a, B: Backend> {
    op: Op<'a, B>,
    shape: Shape,
    /// `None` for views (see `Op::Reshape`) and loss terms.
    value: Option<B::Buf>,
    needs_grad: bool,
}

pub struct Tape<'a, B: Backend> {
    b: &'a B,
    ws: &'a mut Workspace<B>,
    nodes: Vec<Node<'a, B>>,
    /// Gradient of each node's value, allocated (zeroed) on first use. Kept
    /// apart from `nodes` so a kernel can read node values while it writes a
    /// gradient (see [`grad_slot`]).
    grads: Vec<Option<B::Buf>>,
    /// All loss terms accumulate here (a 1-element buffer; `None` only in drop).
    loss: Option<B::Buf>,
}

/// The node that owns the buffer behind `v` (follows views).
fn root<B: Backend>(nodes: &[Node<'_, B>], mut v: Var) -> Var {
    while let Op::Reshape { x } = nodes[v.i()].op {
        v = x;
    }
    v
}

/// The value behind `v` (its root's).
fn value_of<'n, B: Backend>(nodes: &'n [Node<'_, B>], v: Var) -> &'n B::Buf {
    nodes[root(nodes, v).i()].value.as_ref().expect("a recorded value")
}

/// The gradient buffer of `v` (its root's), zeroed on first use. A function
/// of the tape's parts rather than a method, so that the caller can hold
/// node values (`nodes`) while it writes the gradient (`grads`).
fn grad_slot<'g, B: Backend>(
    b: &B,
    ws: &mut Workspace<B>,
    nodes: &[Node<'_, B>],
    grads: &'g mut [Option<B::Buf>],
    v: Var,
) -> &'g mut B::Buf {
    let r = root(nodes, v).i();
    grads[r].get_or_insert_with(|| ws.take_zeroed(b, nodes[r].shape.numel()))
}

impl<'a, B: Backend> Tape<'a, B> {
    pub fn new(b: &'a B, ws: &'a mut Workspace<B>) -> Self {
        let loss = ws.take_zeroed(b, 1);
        Tape { b, ws, nodes: Vec::new(), grads: Vec::new(), loss: Some(loss) }
    }

    fn push(&mut self, op: Op<'a, B>, shape: Shape, value: Option<B::Buf>, needs_grad: bool) -> Var {
        self.nodes.push(Node { op, shape, value, needs_grad });
        self.grads.push(None);
        Var((self.nodes.len() - 1) as u32)
    }

    pub fn shape(&self, v: Var) -> &Shape {
        &self.nodes[v.i()].shape
    }

    pub fn needs_grad(&self, v: Var) -> bool {
        self.nodes[v.i()].needs_grad
    }

    pub fn value(&self, v: Var) -> &B::Buf {
        value_of(&self.nodes, v)
    }

    fn take_buf(&mut self, len: usize) -> B::Buf {
        self.ws.take(self.b, len)
    }

    /// Record host data (images, teacher logits) as a constant.
    pub fn input(&mut self, dims: &[usize], data: &[f32]) -> Var {
        let shape = Shape::new(dims);
        assert_eq!(
            shape.numel(),
            data.len(),
            "input: shape {shape} needs {} values, got {}",
            shape.numel(),
            data.len()
        );
        let mut buf = self.take_buf(data.len());
        self.b.write(&mut buf, data);
        self.push(Op::Input, shape, Some(buf), false)
    }

    /// `y = x · Wᵀ + b`; x: (N, in) → y: (N, out).
    pub fn linear(&mut self, x: Var, l: &'a Linear<B>) -> Var {
        let xs = self.shape(x).clone();
        assert!(
            xs.0.len() == 2 && xs.0[1] == l.in_f,
            "linear: input shape {xs} does not fit weight shape {}",
            l.w.value.shape
        );
        let n = xs.0[0];
        let mut y = self.take_buf(n * l.out_f);
        self.b.sgemm(&mut y, self.value(x), &l.w.value.buf, Gemm::nn(n, l.out_f, l.in_f).trans(false, true));
        self.b.bias_add(&mut y, &l.b.value.buf, n, l.out_f, 1);
        let ng = self.needs_grad(x) || l.w.trainable || l.b.trainable;
        self.push(Op::Linear { x, l }, Shape::new(&[n, l.out_f]), Some(y), ng)
    }

    /// The geometry of `l` applied to `x`, checking that they fit.
    fn conv_params(&self, x: Var, l: &Conv2d<B>) -> Conv2dParams {
        let xs = self.shape(x);
        assert!(
            xs.0.len() == 4 && xs.0[1] == l.c,
            "conv2d: input shape {xs} does not fit weight shape {}",
            l.w.value.shape
        );
        Conv2dParams {
            n: xs.0[0],
            c: l.c,
            h: xs.0[2],
            w: xs.0[3],
            oc: l.oc,
            kh: l.k,
            kw: l.k,
            sh: l.stride,
            sw: l.stride,
            ph: l.pad,
            pw: l.pad,
        }
    }

    /// x: (N, C, H, W) → (N, OC, OH, OW).
    pub fn conv2d(&mut self, x: Var, l: &'a Conv2d<B>) -> Var {
        let p = self.conv_params(x, l);
        let mut y = self.take_buf(p.y_len());
        match &l.b {
            Some(bias) => self.b.conv2d_fwd_bias(&mut y, self.value(x), &l.w.value.buf, &bias.value.buf, &p),
            None => self.b.conv2d_fwd(&mut y, self.value(x), &l.w.value.buf, &p),
        }
        let ng = self.needs_grad(x) || l.trainable();
        self.push(Op::Conv2d { x, l, p }, Shape::new(&[p.n, p.oc, p.oh(), p.ow()]), Some(y), ng)
    }

    /// `maxpool(conv2d(x))` as one op: x (N, C, H, W) → (N, OC, OH', OW').
    /// The convolution must have a bias (the cnn-s / cnn-m blocks).
    pub fn conv2d_maxpool(&mut self, x: Var, l: &'a Conv2d<B>, k: usize, s: usize) -> Var {
        let p = self.conv_params(x, l);
        let bias = l.b.as_ref().expect("conv2d_maxpool: a convolution with a bias");
        let pool = pool_params(&Shape::new(&[p.n, p.oc, p.oh(), p.ow()]), k, s, 0);
        let mut y = self.take_buf(pool.y_len());
        let mut argmax = self.ws.take_idx(self.b, pool.y_len());
        let mut conv_out = self.take_buf(p.y_len());
        self.b.conv2d_bias_maxpool_fwd(
            &mut y,
            &mut argmax,
            &mut conv_out,
            self.value(x),
            &l.w.value.buf,
            &bias.value.buf,
            &p,
            &pool,
        );
        self.ws.give(self.b, conv_out);
        let ng = self.needs_grad(x) || l.trainable();
        let shape = Shape::new(&[p.n, p.oc, pool.oh(), pool.ow()]);
        self.push(Op::ConvPool { x, l, p, argmax, pool }, shape, Some(y), ng)
    }

    pub fn relu(&mut self, x: Var) -> Var {
        let shape = self.shape(x).clone();
        let mut y = self.take_buf(shape.numel());
        self.b.relu_fwd(&mut y, self.value(x));
        let ng = self.needs_grad(x);
        self.push(Op::Relu { x }, shape, Some(y), ng)
    }

    /// k×k max pooling, stride s, `pad` cells of −∞ padding on each side.
    pub fn maxpool2d(&mut self, x: Var, k: usize, s: usize, pad: usize) -> Var {
        let p = pool_params(self.shape(x), k, s, pad);
        let mut y = self.take_buf(p.y_len());
        let mut argmax = self.ws.take_idx(self.b, p.y_len());
        self.b.maxpool2d_fwd(&mut y, &mut argmax, self.value(x), &p);
        let ng = self.needs_grad(x);
        self.push(Op::MaxPool { x, argmax, p }, Shape::new(&[p.n, p.c, p.oh(), p.ow()]), Some(y), ng)
    }

    /// BatchNorm2d of x (N, C, H, W). With `batch_stats` it normalises with
    /// this batch's statistics (PyTorch's training mode; they are kept on the
    /// node for backward and for [`Tape::take_batch_stats`]), else with the
    /// layer's running statistics (evaluation, or statistics kept frozen).
    pub fn batchnorm(&mut self, x: Var, l: &'a BatchNorm2d<B>, batch_stats: bool) -> Var {
        let xs = self.shape(x).clone();
        assert!(
            xs.0.len() == 4 && xs.0[1] == l.c,
            "batchnorm: input shape {xs} does not fit {} ({} channels)",
            l.name,
            l.c
        );
        let p = BnParams { n: xs.0[0], c: l.c, hw: xs.0[2] * xs.0[3], eps: l.eps };
        assert!(
            !batch_stats || p.count() > 1,
            "batchnorm: {} would normalise a batch with one value per channel (input {xs}): \
             batch statistics need at least two",
            l.name
        );
        let mut y = self.take_buf(p.x_len());
        let batch = batch_stats.then(|| {
            let (mut mean, mut var) = (self.take_buf(p.c), self.take_buf(p.c));
            self.b.batchnorm_stats(&mut mean, &mut var, self.value(x), &p);
            (mean, var)
        });
        let (mean, var) = match &batch {
            Some((m, v)) => (m, v),
            None => (&l.running_mean.buf, &l.running_var.buf),
        };
        self.b.batchnorm_fwd(&mut y, value_of(&self.nodes, x), mean, var, &l.w.value.buf, &l.b.value.buf, &p);
        let ng = self.needs_grad(x) || l.trainable();
        self.push(Op::BatchNorm { x, l, p, batch }, xs, Some(y), ng)
    }

    /// Every batch-statistics BatchNorm of this step: the layer's name, the
    /// batch's mean and biased variance, and the count of values per channel,
    /// moved out of the tape (call it after `backward`, which reads them) so
    /// the caller can update the running statistics once the tape, which
    /// borrows the layers, is gone. Hand the buffers back with
    /// [`Workspace::give`].
    pub fn take_batch_stats(&mut self) -> Vec<(String, B::Buf, B::Buf, usize)> {
        let mut out = Vec::new();
        for node in &mut self.nodes {
            if let Op::BatchNorm { l, p, batch, .. } = &mut node.op {
                if let Some((mean, var)) = batch.take() {
                    out.push((l.name.clone(), mean, var, p.count()));
                }
            }
        }
        out
    }

    /// `a + b`, same shapes.
    pub fn add(&mut self, a: Var, b: Var) -> Var {
        let shape = self.shape(a).clone();
        assert_eq!(&shape, self.shape(b), "add: shapes {shape} and {} differ", self.shape(b));
        let mut y = self.take_buf(shape.numel());
        self.b.add(&mut y, self.value(a), self.value(b));
        let ng = self.needs_grad(a) || self.needs_grad(b);
        self.push(Op::Add { a, b }, shape, Some(y), ng)
    }

    /// Global average pooling: (N, C, H, W) → (N, C).
    pub fn global_avgpool(&mut self, x: Var) -> Var {
        let xs = self.shape(x).clone();
        assert!(xs.0.len() == 4, "global_avgpool: input shape {xs} is not (N, C, H, W)");
        let (rows, inner) = (xs.0[0] * xs.0[1], xs.0[2] * xs.0[3]);
        let mut y = self.take_buf(rows);
        self.b.avgpool_fwd(&mut y, self.value(x), rows, inner);
        let ng = self.needs_grad(x);
        self.push(Op::GlobalAvgPool { x, inner }, Shape::new(&[xs.0[0], xs.0[1]]), Some(y), ng)
    }

    /// (N, …) → (N, prod(…)); a view, no copy.
    pub fn flatten(&mut self, x: Var) -> Var {
        let xs = self.shape(x);
        let shape = Shape::new(&[xs.rows(), xs.row_len()]);
        let ng = self.needs_grad(x);
        self.push(Op::Reshape { x }, shape, None, ng)
    }

    // ---- Loss terms (DESIGN.md "The loss"). Cross-entropy and distillation
    // run one fused kernel that adds the loss to the tape's accumulator and
    // writes the gradient straight into the logits' gradient slot.

    /// Add `scale · Σ_rows CE(logits_r, labels_r)` to the loss. For the usual
    /// mean over a batch, `scale = weight / batch`. Rows labelled
    /// `IGNORE_LABEL` are skipped (mixed-task batches of `joint`).
    pub fn cross_entropy(&mut self, logits: Var, labels: &[u32], scale: f32) {
        let s = self.shape(logits).clone();
        assert!(
            s.0.len() == 2 && s.0[0] == labels.len(),
            "cross_entropy: logits {s} vs {} labels",
            labels.len()
        );
        let (rows, cols) = (s.0[0], s.0[1]);
        let mut lab = self.ws.take_idx(self.b, rows);
        self.b.write_idx(&mut lab, labels);
        self.fused_loss(logits, |b, dz, loss, nodes| {
            b.softmax_xent(dz, loss, value_of(nodes, logits), &lab, rows, cols, scale)
        });
        self.push(Op::CrossEntropy { labels: lab }, Shape::default(), None, false);
    }

    /// Add `scale · Σ_rows −Σ_i softmax(zt/T)_i log softmax(zs/T)_i` over the
    /// first `teacher`-width columns of `student` (the old outputs of a grown
    /// shared head, or a whole old head). Gradient `(q − p)/T` per DESIGN.md;
    /// pass `scale = λ_o / batch`, times T² for Hinton's scaling.
    pub fn distill(&mut self, student: Var, teacher: Var, t: f32, scale: f32) {
        assert!(t >= 1.0, "distill: temperature {t} < 1");
        let (ss, ts) = (self.shape(student).clone(), self.shape(teacher).clone());
        assert!(
            ss.0.len() == 2 && ts.0.len() == 2 && ss.0[0] == ts.0[0] && ts.0[1] <= ss.0[1],
            "distill: student logits {ss} do not fit teacher logits {ts}"
        );
        let (rows, ld, cols) = (ss.0[0], ss.0[1], ts.0[1]);
        self.fused_loss(student, |b, dz, loss, nodes| {
            b.kd_loss(dz, loss, value_of(nodes, student), value_of(nodes, teacher), rows, cols, ld, t, scale)
        });
        self.push(Op::Distill, Shape::default(), None, false);
    }

    /// Add `scale · Σ (f − f_old)²` over every element of `features` and the
    /// constant `target` of the same shape (feature distillation: the trunk's
    /// features held near the old model's). Gradient `2·scale·(f − f_old)`,
    /// written when recorded, as the other loss terms; pass `scale = λ_f / batch`.
    pub fn feature_distill(&mut self, features: Var, target: Var, scale: f32) {
        let (fs, ts) = (self.shape(features).clone(), self.shape(target).clone());
        assert!(fs == ts, "feature_distill: features {fs} and old features {ts} differ in shape");
        self.fused_loss(features, |b, df, loss, nodes| {
            b.anchor_penalty(df, loss, value_of(nodes, features), value_of(nodes, target), None, scale)
        });
        self.push(Op::Distill, Shape::default(), None, false);
    }

    /// Run a fused loss kernel `f(backend, dlogits, loss, nodes)` on the
    /// gradient slot of `logits`; if the logits need no gradient, the
    /// gradient goes to a scratch buffer.
    fn fused_loss(&mut self, logits: Var, f: impl FnOnce(&B, &mut B::Buf, &mut B::Buf, &[Node<'a, B>])) {
        let Tape { b, ws, nodes, grads, loss } = self;
        let (b, ws): (&B, &mut Workspace<B>) = (b, ws);
        let loss = loss.as_mut().expect("live tape");
        if nodes[logits.i()].needs_grad {
            f(b, grad_slot(b, ws, nodes, grads, logits), loss, nodes);
        } else {
            let mut scratch = ws.take_zeroed(b, nodes[logits.i()].shape.numel());
            f(b, &mut scratch, loss, nodes);
            ws.give(b, scratch);
        }
    }

    /// Add `scale · Σ f (w − anchor)²` to the loss (f = 1 without Fisher),
    /// and keep its gradient for `backward`. A frozen parameter's penalty is
    /// a constant: it is left out (no loss, no gradient).
    pub fn anchor_penalty(
        &mut self,
        param: &'a Param<B>,
        anchor: &'a B::Buf,
        fisher: Option<&'a B::Buf>,
        scale: f32,
    ) {
        assert_eq!(
            self.b.len(anchor),
            param.value.numel(),
            "anchor_penalty: anchor of {} does not fit {}",
            param.name,
            param.value.shape
        );
        if !param.trainable {
            return;
        }
        let b = self.b;
        let mut grad = self.ws.take_zeroed(b, param.value.numel());
        b.anchor_penalty(
            &mut grad,
            self.loss.as_mut().expect("live tape"),
            &param.value.buf,
            anchor,
            fisher,
            scale,
        );
        self.push(Op::AnchorPenalty { param, grad }, Shape::default(), None, true);
    }

    /// Read the summed loss back (the one sync of a training step).
    pub fn loss_value(&self) -> f32 {
        self.b.download(self.loss.as_ref().expect("live tape"))[0]
    }

    /// Walk the tape in reverse, accumulating parameter gradients into `grads`
    /// (prepared with `Grads::prepare`). Loss terms wrote their gradients when
    /// recorded; each layer moves the gradient that reached it to its inputs
    /// and parameters.
    pub fn backward(&mut self, grads: &mut Grads<B>) {
        for i in (0..self.nodes.len()).rev() {
            if self.nodes[i].needs_grad {
                self.backward_node(i, grads);
            }
        }
    }

    /// One node's backward: the single dispatch on its op.
    fn backward_node(&mut self, i: usize, pgrads: &mut Grads<B>) {
        let Tape { b, ws, nodes, grads, .. } = self;
        let (b, ws): (&B, &mut Workspace<B>) = (b, ws);
        // What flowed into this node: `None` when nothing did (no work), and
        // always for views and loss terms, which own no gradient slot.
        let dy = grads[i].take();
        match (&nodes[i].op, &dy) {
            (Op::AnchorPenalty { param, grad }, _) => {
                if let Some(dw) = pgrads.get_mut(param.id) {
                    b.axpy(dw, 1.0, grad);
                }
            }
            (Op::Input | Op::Reshape { .. } | Op::CrossEntropy { .. } | Op::Distill, _) | (_, None) => {}
            (&Op::Linear { x, l }, Some(dy)) => {
                let n = nodes[x.i()].shape.0[0];
                if let Some(dw) = pgrads.get_mut(l.w.id) {
                    // dW (out, in) += dYᵀ (out, N) · X (N, in)
                    b.sgemm(
                        dw,
                        dy,
                        value_of(nodes, x),
                        Gemm::nn(l.out_f, l.in_f, n).trans(true, false).acc(),
                    );
                }
                if let Some(db) = pgrads.get_mut(l.b.id) {
                    b.bias_grad(db, dy, n, l.out_f, 1);
                }
                if nodes[x.i()].needs_grad {
                    // dX (N, in) += dY (N, out) · W (out, in)
                    b.sgemm(
                        grad_slot(b, ws, nodes, grads, x),
                        dy,
                        &l.w.value.buf,
                        Gemm::nn(n, l.in_f, l.out_f).acc(),
                    );
                }
            }
            (&Op::Conv2d { x, l, p }, Some(dy)) => {
                let bias = (dy, p.oh() * p.ow());
                conv_backward(b, ws, nodes, grads, pgrads, x, l, &p, dy, bias);
            }
            (Op::ConvPool { x, l, p, argmax, pool }, Some(dy)) if !nodes[x.i()].needs_grad => {
                // The first layer: only the parameters' gradients, the
                // weight's straight from the pooled gradient (the backend
                // may skip building the convolution's output gradient).
                let mut dconv = ws.take(b, p.y_len());
                if let Some(dw) = pgrads.get_mut(l.w.id) {
                    b.conv2d_maxpool_bwd_weight(dw, &mut dconv, value_of(nodes, *x), dy, argmax, p, pool);
                }
                if let Some(db) = l.b.as_ref().and_then(|bias| pgrads.get_mut(bias.id)) {
                    b.bias_grad(db, dy, p.n, p.oc, pool.oh() * pool.ow());
                }
                ws.give(b, dconv);
            }
            (Op::ConvPool { x, l, p, argmax, pool }, Some(dy)) => {
                // The convolution's output gradient: the pooled gradient
                // routed back to each window's argmax, zero elsewhere.
                let mut dconv = ws.take(b, p.y_len());
                b.maxpool2d_bwd_set(&mut dconv, dy, argmax, pool);
                let bias = (dy, pool.oh() * pool.ow());
                conv_backward(b, ws, nodes, grads, pgrads, *x, l, p, &dconv, bias);
                ws.give(b, dconv);
            }
            (&Op::Relu { x }, Some(dy)) => {
                if nodes[x.i()].needs_grad {
                    let y = nodes[i].value.as_ref().expect("relu output");
                    b.relu_bwd(grad_slot(b, ws, nodes, grads, x), y, dy);
                }
            }
            (Op::MaxPool { x, argmax, p }, Some(dy)) => {
                if nodes[x.i()].needs_grad {
                    b.maxpool2d_bwd(grad_slot(b, ws, nodes, grads, *x), dy, argmax, p);
                }
            }
            (Op::BatchNorm { x, l, p, batch }, Some(dy)) => {
                let (mean, var) = match batch {
                    Some((m, v)) => (m, v),
                    None => (&l.running_mean.buf, &l.running_var.buf),
                };
                let mut sums = ws.take(b, 2 * p.c);
                // γ and β have distinct ids, so their two slots can be
                // borrowed at once.
                let (dgamma, dbeta) = pgrads.get_two_mut(l.w.id, l.b.id);
                let dx =
                    if nodes[x.i()].needs_grad { Some(grad_slot(b, ws, nodes, grads, *x)) } else { None };
                b.batchnorm_bwd(
                    dx,
                    dgamma,
                    dbeta,
                    &mut sums,
                    value_of(nodes, *x),
                    dy,
                    mean,
                    var,
                    &l.w.value.buf,
                    p,
                    batch.is_some(),
                );
                ws.give(b, sums);
            }
            (&Op::Add { a, b: bb }, Some(dy)) => {
                for v in [a, bb] {
                    if nodes[v.i()].needs_grad {
                        b.axpy(grad_slot(b, ws, nodes, grads, v), 1.0, dy);
                    }
                }
            }
            (&Op::GlobalAvgPool { x, inner }, Some(dy)) => {
                if nodes[x.i()].needs_grad {
                    let rows = nodes[i].shape.numel();
                    b.avgpool_bwd(grad_slot(b, ws, nodes, grads, x), dy, rows, inner);
                }
            }
        }
        if let Some(dy) = dy {
            ws.give(b, dy);
        }
    }
}

/// Gradients of a convolution with bias from its output gradient `dy`.
/// The bias gradient is the per-channel sum of `bias_dy`, planes of
/// `bias_inner` values: `dy` itself, or for a pooled convolution the
/// pooled gradient, whose sum is the same (pooling's backward only moves
/// each value to its window's winner) and 4× shorter.
#[allow(clippy::too_many_arguments)]
fn conv_backward<B: Backend>(
    b: &B,
    ws: &mut Workspace<B>,
    nodes: &[Node<'_, B>],
    grads: &mut [Option<B::Buf>],
    pgrads: &mut Grads<B>,
    x: Var,
    l: &Conv2d<B>,
    p: &Conv2dParams,
    dy: &B::Buf,
    (bias_dy, bias_inner): (&B::Buf, usize),
) {
    if let Some(dw) = pgrads.get_mut(l.w.id) {
        b.conv2d_bwd_weight(dw, value_of(nodes, x), dy, p);
    }
    if let Some(db) = l.b.as_ref().and_then(|bias| pgrads.get_mut(bias.id)) {
        b.bias_grad(db, bias_dy, p.n, p.oc, bias_inner);
    }
    if nodes[x.i()].needs_grad {
        b.conv2d_bwd_data(grad_slot(b, ws, nodes, grads, x), dy, &l.w.value.buf, p);
    }
}

/// The geometry of a k×k, stride-s max pooling of a (N, C, H, W) input,
/// checking that the window fits.
fn pool_params(xs: &Shape, k: usize, s: usize, pad: usize) -> PoolParams {
    assert!(
        xs.0.len() == 4 && xs.0[2] + 2 * pad >= k && xs.0[3] + 2 * pad >= k && pad < k && s > 0,
        "maxpool2d: input shape {xs} does not fit a {k}×{k} window, stride {s}, pad {pad}"
    );
    PoolParams::new(xs.0[0], xs.0[1], xs.0[2], xs.0[3], k, s).padded(pad)
}

impl<B: Backend> Drop for Tape<'_, B> {
    /// Return every buffer to the workspace for the next step.
    fn drop(&mut self) {
        let b = self.b;
        for node in self.nodes.drain(..) {
            if let Some(v) = node.value {
                self.ws.give(b, v);
            }
            match node.op {
                Op::MaxPool { argmax, .. } | Op::ConvPool { argmax, .. } => self.ws.give_idx(b, argmax),
                Op::CrossEntropy { labels } => self.ws.give_idx(b, labels),
                Op::AnchorPenalty { grad, .. } => self.ws.give(b, grad),
                Op::BatchNorm { batch: Some((mean, var)), .. } => {
                    self.ws.give(b, mean);
                    self.ws.give(b, var);
                }
                _ => {}
            }
        }
        for g in self.grads.drain(..).flatten() {
            self.ws.give(b, g);
        }
        if let Some(loss) = self.loss.take() {
            self.ws.give(b, loss);
        }
    }
}
