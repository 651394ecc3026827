//! Loss terms on the tape: softmax cross-entropy and temperature distillation
//! (DESIGN.md "The loss"). Both run one fused kernel that writes the loss into
//! the tape's accumulator and the gradient straight into the logits' gradient
//! slot, so their backward is free.

use crate::autodiff::{Tape, Var};
use crate::backend::Backend;

impl<'a, B: Backend> Tape<'a, B> {
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
        let mut lab = self.take_idx(rows);
        self.b.write_idx(&mut lab, labels);
        self.fused_loss(logits, rows * cols, |b, dz, loss, z| {
            b.softmax_xent(dz, loss, z, &lab, rows, cols, scale)
        });
        self.idx_bufs.push(lab);
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
        // The kernel reads the teacher while the student's gradient slot is
        // written: lend the teacher's buffer out for the call.
        let zt = self.take_value(teacher);
        self.fused_loss(student, rows * ld, |b, dz, loss, z| {
            b.kd_loss(dz, loss, z, &zt, rows, cols, ld, t, scale)
        });
        self.put_value(teacher, zt);
    }

    /// Run a fused loss kernel `f(backend, dlogits, loss, logits)`. If the
    /// logits need no gradient, the gradient goes to a scratch buffer.
    fn fused_loss(&mut self, logits: Var, len: usize, f: impl FnOnce(&B, &mut B::Buf, &mut B::Buf, &B::Buf)) {
        let b = self.b;
        let z = self.take_value(logits);
        let mut loss = self.take_loss();
        if self.needs_grad(logits) {
            f(b, self.grad_mut(logits), &mut loss, &z);
        } else {
            let mut scratch = self.take_buf(len);
            b.fill(&mut scratch, 0.0);
            f(b, &mut scratch, &mut loss, &z);
            self.give_buf(scratch);
        }
        self.put_loss(loss);
        self.put_value(logits, z);
    }
}
