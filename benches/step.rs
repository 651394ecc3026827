//! One cnn-s training step on the CPU backend (28×28 inputs, batch 128),
//! as `incremental::train::Trainer::step` runs it: upload the batch, record
//! forward + losses on a fresh tape over a long-lived workspace, backward,
//! read the loss back, fused SGD update.
//!
//! - `lwf_step`: two heads (old: 5 classes, new: 5), CE on the new head plus
//!   distillation of the old head against recorded teacher logits (T = 2);
//! - `plain_step`: one head, CE only (task 1 / finetune);
//! - `eval_forward`: forward + per-row argmax (`max_rows`), no backward.
//!
//! `cargo bench --bench step`. Prints a `summary` line with images/s from
//! the median step time. Threads come from the environment (RAYON_NUM_THREADS).

use criterion::{criterion_group, criterion_main, Criterion, SamplingMode, Throughput};
use lwf_engine::autodiff::Tape;
use lwf_engine::backend::{Backend, SgdHyper};
use lwf_engine::nn::{Arch, Net};
use lwf_engine::optim::Sgd;
use lwf_engine::rng::Rng;
use lwf_engine::step::{sgd_step, BatchLoss, StepState, Targets};
use lwf_engine::CpuBackend;
use std::hint::black_box;
use std::time::Duration;

mod common;
use common::{bench, SAMPLES};

const BATCH: usize = 128;
const HYPER: SgdHyper = SgdHyper { lr: 0.05, momentum: 0.9, weight_decay: 5e-4 };

/// Long-lived training state, as the app's `Trainer` keeps it.
struct State {
    b: CpuBackend,
    net: Net<CpuBackend>,
    st: StepState<CpuBackend>,
    sgd: Sgd<CpuBackend>,
    x: Vec<f32>,
    labels: Vec<u32>,
    teacher: Vec<f32>,
}

impl State {
    fn new(heads: usize) -> Self {
        let b = CpuBackend::new();
        let mut rng = Rng::new(0);
        let mut net = Net::new(&b, Arch::cnn_s([1, 28, 28]), &mut rng);
        for h in 0..heads {
            let classes: Vec<u32> = (0..5).map(|c| (5 * h + c) as u32).collect();
            net.add_head(&b, &mut rng, &classes);
        }
        let x = (0..BATCH * 784).map(|_| rng.normal()).collect();
        let labels = (0..BATCH).map(|_| rng.below(5) as u32).collect();
        let teacher = (0..BATCH * 5).map(|_| 2.0 * rng.normal()).collect();
        State { b, net, st: StepState::default(), sgd: Sgd::new(HYPER), x, labels, teacher }
    }

    /// One step; `distill` adds LwF's KD term on head 0 (CE is on the last head).
    fn step(&mut self, distill: bool) -> f32 {
        let loss = BatchLoss {
            ce: vec![(if distill { 1 } else { 0 }, self.labels.as_slice())],
            kd: if distill { vec![(0, 5)] } else { vec![] },
            targets: Targets::Recorded {
                logits: if distill { vec![self.teacher.as_slice()] } else { vec![] },
                features: None,
            },
            temperature: 2.0,
            kd_weight: 1.0,
            feature_weight: 0.0,
            kd_concat: None,
            feature_metric: None,
            anchors: None,
        };
        sgd_step(&self.b, &mut self.st, &mut self.net, &mut self.sgd, &self.x, [BATCH, 1, 28, 28], &loss)
    }

    /// Evaluation forward: logits of every head and their row argmax.
    fn eval(
        &mut self,
        vals: &mut <CpuBackend as Backend>::Buf,
        idx: &mut <CpuBackend as Backend>::IdxBuf,
    ) -> u32 {
        let mut tape = Tape::new(&self.b, &mut self.st.ws);
        let x = tape.input(&[BATCH, 1, 28, 28], &self.x);
        let f = self.net.features(&mut tape, x);
        let mut first = 0;
        for h in &self.net.heads {
            let z = tape.linear(f, &h.linear);
            self.b.max_rows(vals, idx, tape.value(z), BATCH, h.classes.len());
            first = self.b.download_idx(idx)[0];
        }
        first
    }
}

fn steps(c: &mut Criterion) {
    let mut g = c.benchmark_group("cnn_s_step");
    g.sampling_mode(SamplingMode::Flat);
    g.throughput(Throughput::Elements(BATCH as u64));
    eprintln!(
        "backend: {}; RAYON_NUM_THREADS={:?}",
        CpuBackend::new().name(),
        std::env::var("RAYON_NUM_THREADS").ok()
    );
    let report = |name: &str, t: Option<f64>| {
        if let Some(t) = t {
            println!(
                "summary step/{name:<21} batch {BATCH:<15} {:>10.4} ms {:>9.0} images/s",
                t * 1e3,
                BATCH as f64 / t
            );
        }
    };

    let mut lwf = State::new(2);
    let t = bench(&mut g, "lwf_step", || {
        black_box(lwf.step(true));
    });
    report("lwf_step", t);

    let mut plain = State::new(1);
    let t = bench(&mut g, "plain_step", || {
        black_box(plain.step(false));
    });
    report("plain_step", t);

    let mut eval = State::new(1);
    let (mut vals, mut idx) = (eval.b.zeros(BATCH), eval.b.zeros_idx(BATCH));
    let t = bench(&mut g, "eval_forward", || {
        black_box(eval.eval(&mut vals, &mut idx));
    });
    report("eval_forward", t);
    g.finish();
}

fn config() -> Criterion {
    Criterion::default()
        .sample_size(SAMPLES)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(5))
}

criterion_group! {
    name = benches;
    config = config();
    targets = steps
}
criterion_main!(benches);
