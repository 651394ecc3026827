//! The tape: define-by-run reverse mode (a Wengert list).
//!
//! Each training step records its ops on a [`Tape`]; a [`Var`] is an index
//! into it, and the recording order is already a topological order, so
//! `backward` just walks the nodes in reverse — no graph search. Parameters
//! live in the modules (`nn.rs`); the tape borrows them and accumulates their
//! gradients into [`Grads`], indexed by `ParamId`.
//!
//! Whether a node needs a gradient is decided when it is recorded: a frozen
//! parameter launches no dW kernel and a layer whose input needs no gradient
//! launches no dX kernel (so LwF's warm-up costs only the head's backward).
//!
//! Buffers come from a [`Workspace`] that outlives the tape; when the tape is
//! dropped they go back to it, so after the first step a training step
//! allocates no new device buffers.

use crate::backend::{Backend, Conv2dParams, Gemm, PoolParams};
use crate::nn::{Conv2d, Linear, Param, ParamId};
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
    /// A view: shares its input's buffer and gradient.
    Reshape {
        x: Var,
    },
    /// A quadratic pull of a parameter towards an anchor (l2, ewc); its loss
    /// and gradient are computed in `backward`.
    AnchorPenalty {
        param: &'a Param<B>,
        anchor: &'a B::Buf,
        fisher: Option<&'a B::Buf>,
        scale: f32,
    },
}

struct Node<'a, B: Backend> {
    op: Op<'a, B>,
    shape: Shape,
    /// `None` for views (see `Op::Reshape`) and penalties.
    value: Option<B::Buf>,
    needs_grad: bool,
}

pub struct Tape<'a, B: Backend> {
    pub(crate) b: &'a B,
    ws: &'a mut Workspace<B>,
    nodes: Vec<Node<'a, B>>,
    /// Gradient of each node's value, allocated (zeroed) on first use.
    grads: Vec<Option<B::Buf>>,
    /// All loss terms accumulate here (a 1-element buffer; `None` only in drop).
    loss: Option<B::Buf>,
    /// Label buffers of the losses, kept until the tape is dropped.
    pub(crate) idx_bufs: Vec<B::IdxBuf>,
}

impl<'a, B: Backend> Tape<'a, B> {
    pub fn new(b: &'a B, ws: &'a mut Workspace<B>) -> Self {
        let loss = ws.take_zeroed(b, 1);
        Tape { b, ws, nodes: Vec::new(), grads: Vec::new(), loss: Some(loss), idx_bufs: Vec::new() }
    }

    fn push(&mut self, op: Op<'a, B>, shape: Shape, value: Option<B::Buf>, needs_grad: bool) -> Var {
        self.nodes.push(Node { op, shape, value, needs_grad });
        self.grads.push(None);
        Var((self.nodes.len() - 1) as u32)
    }

    /// The node that owns the buffer behind `v` (follows views).
    fn root(&self, mut v: Var) -> Var {
        while let Op::Reshape { x } = self.nodes[v.i()].op {
            v = x;
        }
        v
    }

    pub fn shape(&self, v: Var) -> &Shape {
        &self.nodes[v.i()].shape
    }

    pub fn needs_grad(&self, v: Var) -> bool {
        self.nodes[v.i()].needs_grad
    }

    pub fn value(&self, v: Var) -> &B::Buf {
        self.nodes[self.root(v).i()].value.as_ref().expect("a recorded value")
    }

    pub(crate) fn take_buf(&mut self, len: usize) -> B::Buf {
        self.ws.take(self.b, len)
    }
    pub(crate) fn take_idx(&mut self, len: usize) -> B::IdxBuf {
        self.ws.take_idx(self.b, len)
    }
    pub(crate) fn give_buf(&mut self, buf: B::Buf) {
        self.ws.give(self.b, buf)
    }

    /// The gradient buffer of `v` (its root), zeroed on first use.
    pub(crate) fn grad_mut(&mut self, v: Var) -> &mut B::Buf {
        let r = self.root(v).i();
        if self.grads[r].is_none() {
            let len = self.nodes[r].shape.numel();
            self.grads[r] = Some(self.ws.take_zeroed(self.b, len));
        }
        self.grads[r].as_mut().expect("just allocated")
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
        self.b.conv2d_fwd_bias(&mut y, self.value(x), &l.w.value.buf, &l.b.value.buf, &p);
        let ng = self.needs_grad(x) || l.w.trainable || l.b.trainable;
        self.push(Op::Conv2d { x, l, p }, Shape::new(&[p.n, p.oc, p.oh(), p.ow()]), Some(y), ng)
    }

    /// `maxpool(conv2d(x))` as one op: x (N, C, H, W) → (N, OC, OH', OW').
    pub fn conv2d_maxpool(&mut self, x: Var, l: &'a Conv2d<B>, k: usize, s: usize) -> Var {
        let p = self.conv_params(x, l);
        let pool = pool_params(&Shape::new(&[p.n, p.oc, p.oh(), p.ow()]), k, s);
        let mut y = self.take_buf(pool.y_len());
        let mut argmax = self.take_idx(pool.y_len());
        let mut conv_out = self.take_buf(p.y_len());
        self.b.conv2d_bias_maxpool_fwd(
            &mut y,
            &mut argmax,
            &mut conv_out,
            self.value(x),
            &l.w.value.buf,
            &l.b.value.buf,
            &p,
            &pool,
        );
        self.give_buf(conv_out);
        let ng = self.needs_grad(x) || l.w.trainable || l.b.trainable;
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

    pub fn maxpool2d(&mut self, x: Var, k: usize, s: usize) -> Var {
        let p = pool_params(self.shape(x), k, s);
        let mut y = self.take_buf(p.y_len());
        let mut argmax = self.take_idx(p.y_len());
        self.b.maxpool2d_fwd(&mut y, &mut argmax, self.value(x), &p);
        let ng = self.needs_grad(x);
        self.push(Op::MaxPool { x, argmax, p }, Shape::new(&[p.n, p.c, p.oh(), p.ow()]), Some(y), ng)
    }

    /// (N, …) → (N, prod(…)); a view, no copy.
    pub fn flatten(&mut self, x: Var) -> Var {
        let xs = self.shape(x);
        let shape = Shape::new(&[xs.rows(), xs.row_len()]);
        let ng = self.needs_grad(x);
        self.push(Op::Reshape { x }, shape, None, ng)
    }

    /// Add `scale · Σ f (w − anchor)²` to the loss (f = 1 without Fisher).
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
        self.push(
            Op::AnchorPenalty { param, anchor, fisher, scale },
            Shape::default(),
            None,
            param.trainable,
        );
    }

    /// Read the summed loss back (the one sync of a training step). Complete
    /// only after `backward`, which adds the anchor penalties.
    pub fn loss_value(&self) -> f32 {
        self.b.download(self.loss.as_ref().expect("live tape"))[0]
    }

    /// Lend the loss accumulator out (and back) to a fused loss kernel.
    pub(crate) fn take_loss(&mut self) -> B::Buf {
        self.loss.take().expect("live tape")
    }
    pub(crate) fn put_loss(&mut self, loss: B::Buf) {
        self.loss = Some(loss);
    }

    /// Lend a node's value out while the tape is borrowed mutably (e.g. the
    /// logits while their gradient slot is written).
    pub(crate) fn take_value(&mut self, v: Var) -> B::Buf {
        let r = self.root(v).i();
        self.nodes[r].value.take().expect("a recorded value")
    }
    pub(crate) fn put_value(&mut self, v: Var, buf: B::Buf) {
        let r = self.root(v).i();
        self.nodes[r].value = Some(buf);
    }

    /// Walk the tape in reverse, accumulating parameter gradients into `grads`
    /// (prepared with `Grads::prepare`). Losses recorded their gradient already.
    pub fn backward(&mut self, grads: &mut Grads<B>) {
        for i in (0..self.nodes.len()).rev() {
            if !self.nodes[i].needs_grad {
                continue;
            }
            if let Op::AnchorPenalty { param, anchor, fisher, scale } = self.nodes[i].op {
                if let Some(dw) = grads.get_mut(param.id) {
                    let loss = self.loss.as_mut().expect("live tape");
                    self.b.anchor_penalty(dw, loss, &param.value.buf, anchor, fisher, scale);
                }
                continue;
            }
            if matches!(self.nodes[i].op, Op::Reshape { .. }) {
                continue; // shares its input's gradient slot
            }
            // Nothing flowed into this node: no work.
            let Some(dy) = self.grads[i].take() else { continue };
            self.backward_node(i, &dy, grads);
            self.give_buf(dy);
        }
    }

    /// Gradients of a convolution with bias from its output gradient `dy`.
    /// The bias gradient is the per-channel sum of `bias_dy`, planes of
    /// `bias_inner` values: `dy` itself, or for a pooled convolution the
    /// pooled gradient, whose sum is the same (pooling's backward only moves
    /// each value to its window's winner) and 4× shorter.
    fn conv_backward(
        &mut self,
        x: Var,
        l: &'a Conv2d<B>,
        p: &Conv2dParams,
        dy: &B::Buf,
        (bias_dy, bias_inner): (&B::Buf, usize),
        grads: &mut Grads<B>,
    ) {
        let b = self.b;
        if let Some(dw) = grads.get_mut(l.w.id) {
            b.conv2d_bwd_weight(dw, self.value(x), dy, p);
        }
        if let Some(db) = grads.get_mut(l.b.id) {
            b.bias_grad(db, bias_dy, p.n, p.oc, bias_inner);
        }
        if self.needs_grad(x) {
            let w = &l.w.value.buf;
            let dx = self.grad_mut(x);
            b.conv2d_bwd_data(dx, dy, w, p);
        }
    }

    fn backward_node(&mut self, i: usize, dy: &B::Buf, grads: &mut Grads<B>) {
        let b = self.b;
        match self.nodes[i].op {
            Op::Input | Op::Reshape { .. } | Op::AnchorPenalty { .. } => {}
            Op::Linear { x, l } => {
                let n = self.shape(x).0[0];
                if let Some(dw) = grads.get_mut(l.w.id) {
                    // dW (out, in) += dYᵀ (out, N) · X (N, in)
                    b.sgemm(dw, dy, self.value(x), Gemm::nn(l.out_f, l.in_f, n).trans(true, false).acc());
                }
                if let Some(db) = grads.get_mut(l.b.id) {
                    b.bias_grad(db, dy, n, l.out_f, 1);
                }
                if self.needs_grad(x) {
                    // dX (N, in) += dY (N, out) · W (out, in). `l` outlives the tape,
                    // so its weight can be read while the tape is borrowed mutably.
                    let w = &l.w.value.buf;
                    let dx = self.grad_mut(x);
                    b.sgemm(dx, dy, w, Gemm::nn(n, l.in_f, l.out_f).acc());
                }
            }
            Op::Conv2d { x, l, p } => self.conv_backward(x, l, &p, dy, (dy, p.oh() * p.ow()), grads),
            Op::ConvPool { x, l, p, pool, .. } => {
                // The convolution's output gradient: the pooled gradient
                // routed back to each window's argmax, zero elsewhere.
                let mut dconv = self.ws.take(b, p.y_len());
                if let Op::ConvPool { argmax, .. } = &self.nodes[i].op {
                    b.maxpool2d_bwd_set(&mut dconv, dy, argmax, &pool);
                }
                self.conv_backward(x, l, &p, &dconv, (dy, pool.oh() * pool.ow()), grads);
                self.give_buf(dconv);
            }
            Op::Relu { x } => {
                if self.needs_grad(x) {
                    let y = self.nodes[i].value.take().expect("relu output");
                    b.relu_bwd(self.grad_mut(x), &y, dy);
                    self.nodes[i].value = Some(y);
                }
            }
            Op::MaxPool { x, p, .. } => {
                if self.needs_grad(x) {
                    let Op::MaxPool { argmax, .. } = std::mem::replace(&mut self.nodes[i].op, Op::Input)
                    else {
                        unreachable!()
                    };
                    b.maxpool2d_bwd(self.grad_mut(x), dy, &argmax, &p);
                    self.nodes[i].op = Op::MaxPool { x, argmax, p };
                }
            }
        }
    }
}

/// The geometry of a k×k, stride-s max pooling of a (N, C, H, W) input,
/// checking that the window fits.
fn pool_params(xs: &Shape, k: usize, s: usize) -> PoolParams {
    assert!(
        xs.0.len() == 4 && xs.0[2] >= k && xs.0[3] >= k,
        "maxpool2d: input shape {xs} too small for a {k}×{k} window"
    );
    PoolParams { n: xs.0[0], c: xs.0[1], h: xs.0[2], w: xs.0[3], k, s }
}

impl<B: Backend> Drop for Tape<'_, B> {
    /// Return every buffer to the workspace for the next step.
    fn drop(&mut self) {
        let b = self.b;
        for node in self.nodes.drain(..) {
            if let Some(v) = node.value {
                self.ws.give(b, v);
            }
            if let Op::MaxPool { argmax, .. } | Op::ConvPool { argmax, .. } = node.op {
                self.ws.give_idx(b, argmax);
            }
        }
        for g in self.grads.drain(..).flatten() {
            self.ws.give(b, g);
        }
        for ib in self.idx_bufs.drain(..) {
            self.ws.give_idx(b, ib);
        }
        if let Some(loss) = self.loss.take() {
            self.ws.give(b, loss);
        }
    }
}
