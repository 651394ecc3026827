//! Progress on long work: indicatif bars on stderr, drawn only when stderr
//! is a terminal, and the trainer's notes as lines.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use lwf_engine::incremental::Observer;
use std::cell::RefCell;

/// Progress bars on a terminal; nothing when stderr is not one.
pub struct Bars {
    pub bar: RefCell<Option<ProgressBar>>,
}

impl Observer for Bars {
    fn phase(&self, label: &str, steps: u64) {
        let bar = ProgressBar::with_draw_target(Some(steps), ProgressDrawTarget::stderr());
        bar.set_style(
            ProgressStyle::with_template("{msg:32} [{bar:28}] {pos}/{len} {prefix} {per_sec} ETA {eta}")
                .expect("valid template")
                .progress_chars("=> "),
        );
        bar.set_message(label.to_string());
        *self.bar.borrow_mut() = Some(bar);
    }
    fn step(&self, loss: f32, _images: usize) {
        if let Some(b) = self.bar.borrow().as_ref() {
            if loss.is_finite() {
                b.set_prefix(format!("loss {loss:.4}"));
            }
            b.inc(1);
        }
    }
    fn phase_done(&self) {
        if let Some(b) = self.bar.borrow_mut().take() {
            b.finish_and_clear();
        }
    }
    fn note(&self, line: &str) {
        eprintln!("{line}");
    }
}
