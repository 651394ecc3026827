//! LwF end to end at the library level, on small slices of the shipped
//! Fashion-MNIST with the CPU backend:
//!
//! - LwF keeps the old task where finetune forgets it (one head per task, and
//!   the shared head grown from 5 to 10 outputs);
//! - the same seed gives the same numbers, bit for bit;
//! - a split5 run fills exactly the lower triangle of its accuracy matrix.
//!
//! The two-task setting: task 1 (classes 0-4) trains on its first 3000 images
//! for 2 epochs with the default hyper-parameters; task 2 (classes 5-9) on its
//! first 1000 images for 4 epochs in batches of 32 (128 steps, so finetune's
//! trunk drifts away from the frozen old head), LwF with Hinton's T² scaling
//! (`--kd-t2`). Task 1 is trained once per seed and shared by both head
//! modes. The margins were checked on seeds 0–3 (`LWF_TEST_SEED=N` moves the
//! base seed); the numbers are in the comments of each test.

use lwf_engine::app::{self, BackendChoice};
use lwf_engine::backend::CpuBackend;
use lwf_engine::data::{self, Dataset, Normalization, Split, TaskView};
use lwf_engine::incremental::eval::{evaluate, Accuracies};
use lwf_engine::incremental::methods::{
    examples_for, learn_task, streams, train_first_task, validation_split, MethodState, TaskContext,
};
use lwf_engine::incremental::protocol::{ExperimentConfig, MethodRun};
use lwf_engine::incremental::select::{learn_task_selected, SelectGrid};
use lwf_engine::incremental::train::Trainer;
use lwf_engine::incremental::{HeadMode, Hyper, KdSoftmax, Method, Silent};
use lwf_engine::metrics::EngineInfo;
use lwf_engine::nn::{Arch, ArchKind, Net};
use lwf_engine::rng::Rng;
use std::sync::OnceLock;

/// Fashion-MNIST's fixed normalisation, as every verb uses it.
fn fm_norm() -> Normalization {
    Normalization::fashion_mnist()
}

type B = CpuBackend;

/// Task-1 and task-2 training images, and test images per class.
const N1: usize = 3000;
const N2: usize = 1000;
const TEST_PER_CLASS: usize = 200;

/// The shipped data set, loaded (and checksummed) once per test binary.
fn fmnist() -> &'static Dataset {
    static DATA: OnceLock<Dataset> = OnceLock::new();
    DATA.get_or_init(|| data::load("fashion-mnist").expect("the shipped Fashion-MNIST loads"))
}

fn seed() -> u64 {
    std::env::var("LWF_TEST_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(0)
}

fn tasks() -> Vec<Vec<u32>> {
    vec![(0..5).collect(), (5..10).collect()]
}

/// The first `n` test images of each class, in data order.
fn test_prefix(split: &Split, n: usize) -> Split {
    let mut seen = [0usize; 256];
    let keep: Vec<usize> = (0..split.len())
        .filter(|&i| {
            let c = &mut seen[split.labels[i] as usize];
            *c += 1;
            *c <= n
        })
        .collect();
    split.subset(&keep)
}

fn view(classes: &[u32], n: usize) -> TaskView {
    data::task_view(&fmnist().train, classes).limit(n)
}

fn in_unit(x: f64) -> bool {
    (0.0..=1.0).contains(&x)
}

fn check_accuracies(what: &str, a: &Accuracies, tasks: usize) {
    assert_eq!(a.task_aware.len(), tasks, "{what}: {a:?}");
    assert_eq!(a.class_il_per_task.len(), tasks, "{what}: {a:?}");
    let mut all = a.task_aware.iter().chain(&a.class_il_per_task).chain([&a.class_il]);
    assert!(all.all(|&x| in_unit(x)), "{what}: accuracies outside [0, 1]: {a:?}");
}

// ---- two tasks: LwF against finetune --------------------------------------------------

/// The model after task 1, trained once for every test that needs it.
struct Base {
    net: Net<B>,
    acc: Accuracies,
}

fn base() -> &'static Base {
    base_at(0)
}

/// The task-1 model of seed `seed() + offset` (offset 0 or 1).
fn base_at(offset: usize) -> &'static Base {
    static BASE: [OnceLock<Base>; 3] = [const { OnceLock::new() }; 3];
    BASE[offset].get_or_init(|| {
        let (d, b) = (fmnist(), B::new());
        let seed = seed() + offset as u64;
        let hyper = Hyper { epochs: 2, ..Hyper::default() };
        let mut tr = Trainer::new(b.clone());
        let cx = TaskContext { split: &d.train, norm: &fm_norm(), hyper: &hyper, seed, obs: &Silent };
        let mut net = Net::new(&b, Arch::cnn_s([1, 28, 28]), &mut Rng::derive(seed, streams::TRUNK));
        train_first_task(&mut tr, &mut net, &view(&tasks()[0], N1), &cx).expect("task 1 trains");
        let test = test_prefix(&d.test, TEST_PER_CLASS);
        let acc =
            evaluate(&mut tr, &net, &test, &fm_norm(), &tasks()[..1], HeadMode::PerTask, 256, None, &[]);
        check_accuracies("after task 1", &acc, 1);
        Base { net, acc }
    })
}

/// One method's state after task 2.
struct After {
    acc: Accuracies,
    /// Mean KL(softmax(Y_o/T) ‖ softmax(z_old/T)) over the task-2 training
    /// images: how far the old outputs moved from what LwF recorded.
    old_kl: f64,
}

/// Logits of the first five outputs of head 0 (task 1's classes) on `view`.
fn old_logits(tr: &mut Trainer<B>, net: &Net<B>, view: &TaskView) -> Vec<Vec<f64>> {
    let d = fmnist();
    let probe = examples_for(view, &d.train, 0, &view.classes);
    let t = tr.record_outputs(net, &d.train, &fm_norm(), &probe, &[0], 256, false).0.pop().unwrap();
    t.logits.chunks(t.cols).map(|r| r[..5].iter().map(|&z| z as f64).collect()).collect()
}

/// Mean KL(softmax(p/T) ‖ softmax(q/T)) over rows, in f64.
fn mean_kl(p: &[Vec<f64>], q: &[Vec<f64>], t: f64) -> f64 {
    let soft = |z: &[f64]| {
        let m = z.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let e: Vec<f64> = z.iter().map(|v| ((v - m) / t).exp()).collect();
        let s: f64 = e.iter().sum();
        e.into_iter().map(|v| v / s).collect::<Vec<f64>>()
    };
    let total: f64 = p
        .iter()
        .zip(q)
        .map(|(a, b)| soft(a).iter().zip(soft(b)).map(|(p, q)| p * (p / q).ln()).sum::<f64>())
        .sum();
    total / p.len() as f64
}

/// Task 2 by `method` from a copy of the task-1 model, in `mode`.
fn task2(method: Method, mode: HeadMode) -> After {
    task2_at(0, method, mode)
}

/// Task 2 of seed `seed() + offset`.
fn task2_at(offset: usize, method: Method, mode: HeadMode) -> After {
    let base = base_at(offset);
    let seed = seed() + offset as u64;
    let (d, b) = (fmnist(), B::new());
    let hyper = Hyper { epochs: 4, batch_size: 32, kd_t2: true, head_mode: mode, ..Hyper::default() };
    let (v1, v2) = (view(&tasks()[0], N1), view(&tasks()[1], N2));
    let mut tr = Trainer::new(b.clone());
    let y_o = old_logits(&mut tr, &base.net, &v2);
    let mut net = base.net.duplicate(&b);
    let cx = TaskContext { split: &d.train, norm: &fm_norm(), hyper: &hyper, seed, obs: &Silent };
    let mut state = MethodState::default();
    learn_task(&mut tr, &mut net, method, 1, &v2, std::slice::from_ref(&v1), &mut state, &cx)
        .unwrap_or_else(|e| panic!("task 2 by {method}: {e}"));
    match mode {
        HeadMode::Shared => {
            assert_eq!(net.heads.len(), 1, "shared mode keeps one head");
            let h = &net.heads[0];
            assert_eq!(
                (h.linear.out_f, h.linear.in_f),
                (10, 256),
                "the shared head grew from 5 to 10 outputs"
            );
            assert_eq!(h.classes, (0..10).collect::<Vec<u32>>());
        }
        HeadMode::PerTask => {
            assert_eq!(net.heads.len(), 2, "per-task mode adds a head");
            assert_eq!((net.heads[0].linear.out_f, net.heads[1].linear.out_f), (5, 5));
            assert_eq!(net.heads[1].classes, tasks()[1]);
        }
    }
    let test = test_prefix(&d.test, TEST_PER_CLASS);
    let acc = evaluate(&mut tr, &net, &test, &fm_norm(), &tasks(), mode, 256, None, &[]);
    check_accuracies(&format!("{method} ({}) after task 2", mode.name()), &acc, 2);
    let old_kl = mean_kl(&y_o, &old_logits(&mut tr, &net, &v2), hyper.temperature as f64);
    After { acc, old_kl }
}

/// Feature distillation (`--lambda-f`) holds the trunk's features of the
/// new images nearer the old trunk's than LwF's logit distillation alone:
/// the mean squared move of the features, relative to their mean square.
#[test]
fn feature_distillation_keeps_the_old_features_nearer() {
    let base = base();
    let (d, b) = (fmnist(), B::new());
    let v2 = view(&tasks()[1], N2);
    let moved = |lambda_f: f32| {
        let hyper = Hyper { epochs: 2, lambda_f, val_fraction: 0.0, ..Hyper::default() };
        let mut tr = Trainer::new(b.clone());
        let before = tr.features(&base.net, &d.train, &fm_norm(), &v2.indices, 256);
        let mut net = base.net.duplicate(&b);
        let cx = TaskContext { split: &d.train, norm: &fm_norm(), hyper: &hyper, seed: seed(), obs: &Silent };
        learn_task(&mut tr, &mut net, Method::Lwf, 1, &v2, &[], &mut MethodState::default(), &cx)
            .unwrap_or_else(|e| panic!("task 2 with λ_f {lambda_f}: {e}"));
        let after = tr.features(&net, &d.train, &fm_norm(), &v2.indices, 256);
        let sq: f64 = before.iter().map(|&v| (v as f64).powi(2)).sum();
        before.iter().zip(&after).map(|(&a, &c)| (a as f64 - c as f64).powi(2)).sum::<f64>() / sq
    };
    let (plain, held) = (moved(0.0), moved(0.01));
    eprintln!("features moved by {plain:.4} under LwF, {held:.4} with λ_f 0.01 (relative mean square)");
    assert!(held < 0.7 * plain, "λ_f 0.01 moved the features by {held:.4}, plain LwF by {plain:.4}");
}

/// `--lr-ramp` touches LwF's main phase only: with a ramp far longer than
/// the phase, LwF's trunk barely moves (its learning rate stays near 0),
/// while without one it moves; finetune and the first task, which never
/// ramp, give the same bits with and without it.
#[test]
fn the_lr_ramp_slows_only_lwfs_main_phase() {
    let (d, b) = (fmnist(), B::new());
    let base = base();
    let v2 = view(&tasks()[1], 300);
    let trunk =
        |net: &Net<B>| -> Vec<f32> { net.trunk_params().iter().flat_map(|p| p.value.to_vec(&b)).collect() };
    let before = trunk(&base.net);
    let after = |method: Method, lr_ramp: usize| {
        let hyper = Hyper { epochs: 1, lambda_f: 0.01, val_fraction: 0.0, lr_ramp, ..Hyper::default() };
        let mut tr = Trainer::new(b.clone());
        let mut net = base.net.duplicate(&b);
        let cx = TaskContext { split: &d.train, norm: &fm_norm(), hyper: &hyper, seed: seed(), obs: &Silent };
        learn_task(&mut tr, &mut net, method, 1, &v2, &[], &mut MethodState::default(), &cx)
            .unwrap_or_else(|e| panic!("task 2 by {method} with --lr-ramp {lr_ramp}: {e}"));
        trunk(&net)
    };
    let moved = |w: &[f32]| -> f64 {
        let sq: f64 = before.iter().map(|&v| (v as f64).powi(2)).sum();
        before.iter().zip(w).map(|(&a, &c)| (a as f64 - c as f64).powi(2)).sum::<f64>() / sq
    };
    let (free, ramped) = (moved(&after(Method::Lwf, 0)), moved(&after(Method::Lwf, 1_000_000_000)));
    eprintln!("LwF's trunk moved by {free:.3e} without a ramp, {ramped:.3e} under a ramp of 10^9 steps");
    assert!(free > 1e-6, "LwF without a ramp left the trunk in place ({free:.3e})");
    assert!(
        ramped < 1e-4 * free,
        "a ramp of 10^9 steps still moved the trunk by {ramped:.3e} (free: {free:.3e})"
    );
    assert_eq!(after(Method::Finetune, 1_000_000_000), after(Method::Finetune, 0), "finetune does not ramp");

    let first = |lr_ramp: usize| {
        let hyper = Hyper { epochs: 1, val_fraction: 0.0, lr_ramp, ..Hyper::default() };
        let mut tr = Trainer::new(b.clone());
        let cx = TaskContext { split: &d.train, norm: &fm_norm(), hyper: &hyper, seed: seed(), obs: &Silent };
        let mut net = Net::new(&b, Arch::cnn_s([1, 28, 28]), &mut Rng::derive(seed(), streams::TRUNK));
        train_first_task(&mut tr, &mut net, &view(&tasks()[0], 300), &cx).expect("task 1 trains");
        trunk(&net)
    };
    assert_eq!(first(1_000_000_000), first(0), "the first task does not ramp");
}

/// One head per task (the paper), on three seeds: on a 1000-image task one
/// seed's old-task accuracy moves by several points with the arithmetic (it
/// did when the convolutions moved to Winograd, and again when the first
/// layer's weight gradient and the linear layers' gemms changed their
/// summation order, when finetune came out ahead on seed 3 by chance), so
/// the accuracy margins are asserted on the mean of the three; the
/// distillation (KL), which does not move, on each. Measured (task-aware
/// accuracy on 1000 old / 1000 new test images; KL of the old outputs on the
/// task-2 images; AVX-512 path):
///
/// | seed | after task 1 | lwf old | finetune old | lwf new | finetune new | KL lwf / finetune |
/// |------|--------------|---------|--------------|---------|--------------|-------------------|
/// | 0    | 0.848        | 0.820   | 0.667        | 0.958   | 0.933        | 0.017 / 0.17      |
/// | 1    | 0.790        | 0.735   | 0.702        | 0.932   | 0.919        | 0.020 / 0.16      |
/// | 2    | 0.847        | 0.825   | 0.775        | 0.946   | 0.922        | 0.007 / 0.13      |
/// | 3    | 0.808        | 0.756   | 0.825        | 0.943   | 0.944        | 0.010 / 0.19      |
#[test]
fn lwf_keeps_the_old_task_where_finetune_forgets_it() {
    let mut reports = Vec::new();
    let (mut first, mut lwf_old, mut ft_old) = (0.0, 0.0, 0.0);
    const SEEDS: usize = 3;
    for offset in 0..SEEDS {
        let f = base_at(offset).acc.task_aware[0];
        let (lwf, ft) = (
            task2_at(offset, Method::Lwf, HeadMode::PerTask),
            task2_at(offset, Method::Finetune, HeadMode::PerTask),
        );
        let report = format!(
            "seed {}: after task 1 {f:.3}; lwf {:?} (KL {:.4}); finetune {:?} (KL {:.4})",
            seed() + offset as u64,
            lwf.acc.task_aware,
            lwf.old_kl,
            ft.acc.task_aware,
            ft.old_kl
        );
        eprintln!("per-task, {report}");
        assert!(f > 0.75, "task 1 should be learnt: {report}");
        assert!(lwf.acc.task_aware[1] > 0.85 && ft.acc.task_aware[1] > 0.85, "both learn task 2: {report}");
        assert!(lwf.old_kl < ft.old_kl / 2.0, "LwF distils the old head's outputs: {report}");
        first += f / SEEDS as f64;
        lwf_old += lwf.acc.task_aware[0] / SEEDS as f64;
        ft_old += ft.acc.task_aware[0] / SEEDS as f64;
        reports.push(report);
    }
    let report = reports.join(" | ");
    assert!(
        lwf_old - ft_old > 0.04,
        "LwF should keep the old task well above finetune (mean of {SEEDS} seeds): {report}"
    );
    assert!(lwf_old > first - 0.04, "LwF should barely forget task 1 (mean of {SEEDS} seeds): {report}");
}

/// One softmax grown from 5 to 10 outputs: CE over all ten, KD on the first
/// five. Finetune trains the whole head on the new labels only, so the old
/// rows are pushed around; LwF distils them. Measured:
///
/// | seed | lwf old | finetune old | lwf new | finetune new | KL lwf / finetune |
/// |------|---------|--------------|---------|--------------|-------------------|
/// | 0    | 0.826   | 0.552        | 0.944   | 0.941        | 0.007 / 0.34      |
/// | 1    | 0.816   | 0.362        | 0.945   | 0.935        | 0.017 / 0.65      |
#[test]
fn shared_head_grows_and_its_old_rows_are_distilled() {
    let first = base().acc.task_aware[0];
    let (lwf, ft) = (task2(Method::Lwf, HeadMode::Shared), task2(Method::Finetune, HeadMode::Shared));
    let report = format!(
        "after task 1 {first:.3}; lwf {:?} class-IL {:?} (KL {:.4}); finetune {:?} class-IL {:?} (KL {:.4})",
        lwf.acc.task_aware,
        lwf.acc.class_il_per_task,
        lwf.old_kl,
        ft.acc.task_aware,
        ft.acc.class_il_per_task,
        ft.old_kl
    );
    eprintln!("shared, seed {}: {report}", seed());
    let (lwf_old, ft_old) = (lwf.acc.task_aware[0], ft.acc.task_aware[0]);
    assert!(lwf_old - ft_old > 0.10, "LwF should keep the old outputs' ranking: {report}");
    assert!(lwf_old > first - 0.05, "LwF should barely forget task 1: {report}");
    assert!(lwf.acc.task_aware[1] > 0.85 && ft.acc.task_aware[1] > 0.85, "both learn task 2: {report}");
    assert!(lwf.old_kl < ft.old_kl / 4.0, "KD holds the old rows' outputs: {report}");
    assert!(lwf.old_kl.is_finite() && lwf.old_kl >= 0.0, "{report}");
}

// ---- determinism and split5 ---------------------------------------------------------------

fn experiment(protocol: &str, methods: &[Method], seeds: &[u64], hyper: Hyper) -> ExperimentConfig {
    ExperimentConfig {
        protocol: protocol.into(),
        tasks: data::protocol_tasks(protocol, fmnist().num_classes).unwrap(),
        methods: methods.to_vec(),
        seeds: seeds.to_vec(),
        hyper,
        arch: ArchKind::CnnS,
        train_limit: Some(300),
        test_limit: Some(40),
        select: None,
    }
}

fn runs(cfg: &ExperimentConfig) -> Vec<MethodRun> {
    app::experiment_runs(BackendChoice::Cpu, fmnist(), cfg, &Silent).expect("the experiment runs")
}

/// Bit patterns of every number a run reports (accuracies, last losses,
/// image counts, epochs), for exact comparison.
fn fingerprint(run: &MethodRun) -> (String, u64, Vec<u64>) {
    let mut bits = Vec::new();
    for rec in &run.records {
        let a = &rec.acc;
        bits.extend(
            a.task_aware.iter().chain(&a.class_il_per_task).chain([&a.class_il]).map(|x| x.to_bits()),
        );
        bits.extend([rec.report.last_loss.to_bits() as u64, rec.report.timing.train_images]);
        bits.push(rec.report.timing.epoch_seconds.len() as u64);
    }
    (run.method.name().to_string(), run.seed, bits)
}

/// The same seed gives the same numbers, bit for bit (LwF, finetune and EWC,
/// whose Fisher estimate is a separate pass); another seed does not.
#[test]
fn same_seed_same_numbers_bit_for_bit() {
    let hyper = Hyper { epochs: 1, batch_size: 64, ewc_samples: 100, ..Hyper::default() };
    let cfg = experiment("two-task", &[Method::Lwf, Method::Finetune, Method::Ewc], &[3, 4], hyper);
    let (a, b) = (runs(&cfg), runs(&cfg));
    assert_eq!(a.len(), 6, "3 methods × 2 seeds");
    for r in &a {
        assert_eq!(r.records.len(), 2);
        let losses: Vec<f32> = r.records.iter().map(|rec| rec.report.last_loss).collect();
        assert!(losses.iter().all(|l| l.is_finite() && *l > 0.0), "{losses:?}");
        check_accuracies(&format!("{} seed {}", r.method, r.seed), &r.records[1].acc, 2);
    }
    let (fa, fb): (Vec<_>, Vec<_>) =
        (a.iter().map(fingerprint).collect(), b.iter().map(fingerprint).collect());
    assert_eq!(fa, fb, "two runs with the same seeds differ");
    let (s3, s4) = (&fa[0], &fa[3]);
    assert_eq!((s3.0.as_str(), s3.1, s4.0.as_str(), s4.1), ("lwf", 3, "lwf", 4));
    assert_ne!(s3.2, s4.2, "seeds 3 and 4 gave identical numbers: the seed is not used");
}

/// split5: five binary tasks learnt one after another; the 5×5 accuracy
/// matrices have exactly the lower triangle filled.
#[test]
fn split5_run_fills_the_lower_triangle() {
    // Every one of the 300 images a task keeps trains: with a tenth held out
    // for validation, one epoch of 5 steps is too few for some seeds to learn
    // task 5 (bag vs ankle boot), which is not what this test is about.
    let hyper = Hyper { epochs: 1, batch_size: 64, val_fraction: 0.0, ..Hyper::default() };
    let cfg = experiment("split5", &[Method::Lwf], &[0], hyper);
    assert_eq!(cfg.tasks, [[0, 1], [2, 3], [4, 5], [6, 7], [8, 9]]);
    let run = runs(&cfg).pop().unwrap();
    assert_eq!(run.records.len(), 5);
    let r = lwf_engine::results::run_result(&cfg, fmnist(), &EngineInfo::new("cpu", "test cpu".into()), &run)
        .expect("a valid report");
    for (name, m) in [("task-aware", &r.acc_matrix_task_aware), ("class-IL", &r.acc_matrix_class_il_per_task)]
    {
        assert_eq!(m.n(), 5, "{name}: {m:?}");
        for t in 0..5 {
            assert_eq!(m.0[t].len(), 5, "{name}: {m:?}");
            for j in 0..5 {
                match m.0[t][j] {
                    Some(a) => assert!(j <= t && in_unit(a), "{name}[{t}][{j}] = {a}: {m:?}"),
                    None => assert!(j > t, "{name}[{t}][{j}] is missing: {m:?}"),
                }
            }
        }
    }
    // Each binary task is learnt when it is trained (chance is 0.5).
    let diag: Vec<f64> = (0..5).map(|t| r.acc_matrix_task_aware.get(t, t).unwrap()).collect();
    eprintln!("split5 task-aware matrix: {:?}", r.acc_matrix_task_aware);
    assert!(diag.iter().all(|&a| a > 0.75), "diagonal {diag:?}");
    assert_eq!(r.forgetting_per_task.len(), 4);
    assert_eq!(r.class_il_acc_after_each_task.len(), 5);
    assert!(r.class_il_acc_after_each_task.iter().all(|&a| in_unit(a)));
    assert_eq!(r.timings.task_train_seconds.len(), 5);
    // Class statistics grow by two classes a task and the old means are
    // drift-compensated at every task after the first, each σ chosen anew;
    // the stored means stay closer to the truth than uncompensated ones.
    for t in 0..5 {
        let st = &r.class_stats_per_task[t];
        assert_eq!(st.sdc_sigma.is_some(), t > 0, "task {t}: {st:?}");
        if t > 0 {
            let (c, u) = (st.old_mean_cosine_compensated.unwrap(), st.old_mean_cosine_uncompensated.unwrap());
            assert!(c > u, "task {t}: compensated cosine {c} not above uncompensated {u}");
        }
        let ncm = &r.class_il_by_classifier["ncm"];
        assert!(in_unit(ncm.after_each_task[t]), "{ncm:?}");
    }
}

/// `--kd-softmax all` distils the old heads in one softmax: with a single
/// old head (task 2) that is the per-task loss, bit for bit; from task 3 on
/// (two old heads) it trains something else.
#[test]
fn one_softmax_over_the_old_tasks_changes_only_runs_with_several() {
    let hyper = Hyper { epochs: 1, batch_size: 64, val_fraction: 0.0, ..Hyper::default() };
    let joined = Hyper { kd_softmax: KdSoftmax::All, ..hyper.clone() };
    let (a, b) = (
        runs(&experiment("split5", &[Method::Lwf], &[0], hyper)).pop().unwrap(),
        runs(&experiment("split5", &[Method::Lwf], &[0], joined)).pop().unwrap(),
    );
    // Every number of each task's record (accuracies, last loss).
    let bits = |r: &MethodRun, t: usize| -> Vec<u64> {
        let (acc, loss) = (&r.records[t].acc, r.records[t].report.last_loss);
        acc.task_aware
            .iter()
            .chain(&acc.class_il_per_task)
            .map(|x| x.to_bits())
            .chain([loss.to_bits() as u64])
            .collect()
    };
    // Tasks 1-2 distil at most one old head, where the two forms are one loss.
    for t in 0..5 {
        let several = t >= 2;
        assert_eq!(
            bits(&a, t) != bits(&b, t),
            several,
            "task {}: {} the forms should {}",
            t + 1,
            if several { "several old heads:" } else { "at most one old head:" },
            if several { "differ" } else { "agree bit for bit" }
        );
    }
}

/// For a given thread count the same seed gives the same bits, on one
/// thread as on two. (Across thread counts the last bits differ: the
/// convolutions' weight gradients are summed from one partial per thread, in
/// chunk order; the README says so.)
#[test]
fn a_fixed_thread_count_gives_the_same_bits() {
    let hyper = Hyper { epochs: 1, batch_size: 64, ..Hyper::default() };
    let cfg = experiment("two-task", &[Method::Lwf], &[5], hyper);
    let on = |threads: usize| {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
        pool.install(|| runs(&cfg)).iter().map(fingerprint).collect::<Vec<_>>()
    };
    for threads in [1, 2] {
        assert_eq!(on(threads), on(threads), "two runs on {threads} threads differ");
    }
}

// ---- choosing λ_o without old data (--select) -------------------------------------------

/// The selection's rule, checked on its own trial table, and the kept model
/// is bit for bit what a plain LwF run with the chosen values gives.
#[test]
fn selection_relaxes_from_the_most_stable_and_keeps_that_model() {
    let b = B::new();
    let hyper = Hyper { epochs: 1, batch_size: 64, ..Hyper::default() };
    assert!(hyper.val_fraction > 0.0, "the default holds out validation images");
    let cx = TaskContext { split: &fmnist().train, norm: &fm_norm(), hyper: &hyper, seed: 5, obs: &Silent };
    let (v1, v2) = (view(&tasks()[0], 600), view(&tasks()[1], 400));
    let mut tr = Trainer::new(b.clone());
    let mut base = Net::new(&b, Arch::cnn_s([1, 28, 28]), &mut Rng::derive(5, streams::TRUNK));
    train_first_task(&mut tr, &mut base, &v1, &cx).unwrap();
    // A tolerance of 2 %: the strong pulls are likely to be rejected, so the
    // table shows a relaxation.
    let grid =
        SelectGrid { lambdas: vec![0.25, 64.0, 16.0, 4.0, 1.0], tolerance: 0.02, ..SelectGrid::default() };
    let mut net = base.duplicate(&b);
    let mut state = MethodState::default();
    let (report, sel) =
        learn_task_selected(&mut tr, &mut net, 1, &v2, std::slice::from_ref(&v1), &mut state, &cx, &grid)
            .unwrap();
    eprintln!("{}", sel.table());

    // The reference comes first, then λ_o from the largest down, stopping at
    // the first accepted one; every rejected trial is below the threshold.
    assert_eq!(sel.trials[0].method, "finetune");
    let reference = sel.trials[0].val_accuracy.expect("fine-tuning converges");
    assert_eq!(sel.reference_val_accuracy, reference);
    assert!((sel.threshold - 0.98 * reference).abs() < 1e-12);
    let lwf: Vec<_> = sel.trials[1..].iter().collect();
    let lambdas: Vec<f32> = lwf.iter().map(|t| t.lambda_o.unwrap()).collect();
    assert!(lambdas.windows(2).all(|w| w[0] > w[1]), "tried from the most stable down: {lambdas:?}");
    assert_eq!(lambdas[0], 64.0);
    for t in &lwf[..lwf.len() - 1] {
        assert!(!t.accepted && t.val_accuracy.is_none_or(|a| a < sel.threshold), "{t:?}");
    }
    let last = lwf.last().unwrap();
    if sel.within_tolerance {
        assert!(last.accepted && last.val_accuracy.unwrap() >= sel.threshold);
        assert_eq!(sel.lambda_o, last.lambda_o.unwrap());
    } else {
        assert_eq!(lambdas.len(), 5, "no acceptance: the whole grid was tried");
    }
    assert_eq!(
        report.final_validation_accuracy(),
        lwf.iter().find(|t| t.lambda_o == Some(sel.lambda_o)).unwrap().val_accuracy
    );

    // A plain run with the chosen values from the same start: the same bits.
    let plain_hyper =
        Hyper { lambda_o: sel.lambda_o, temperature: sel.temperature, lr: sel.lr, ..hyper.clone() };
    let cx2 = TaskContext { hyper: &plain_hyper, ..cx };
    let mut plain = base.duplicate(&b);
    let mut plain_state = MethodState::default();
    learn_task(&mut tr, &mut plain, Method::Lwf, 1, &v2, std::slice::from_ref(&v1), &mut plain_state, &cx2)
        .unwrap();
    for (a, p) in net.params().iter().zip(plain.params()) {
        assert_eq!(a.value.to_vec(&b), p.value.to_vec(&b), "{} differs from the plain run", a.name);
    }
}

/// The validation images are held out of training: a task's examples and
/// its validation images are disjoint, stratified and seeded.
#[test]
fn validation_images_are_held_out_stratified_and_seeded() {
    let split = &fmnist().train;
    let v = view(&tasks()[1], 2000);
    let hyper = Hyper { val_fraction: 0.25, ..Hyper::default() };
    let cx = TaskContext { split, norm: &fm_norm(), hyper: &hyper, seed: 3, obs: &Silent };
    let (train, val) = validation_split(&v, &cx, 1);
    assert_eq!(validation_split(&v, &cx, 1), (train.clone(), val.clone()), "seeded");
    assert_ne!(validation_split(&v, &cx, 2).1, val, "each task draws its own");
    let mut all: Vec<usize> = train.indices.iter().chain(&val.indices).copied().collect();
    all.sort_unstable();
    assert_eq!(all, v.indices, "a partition of the task's images");
    for &c in &v.classes {
        let n = v.indices.iter().filter(|&&i| split.labels[i] == c).count();
        let k = val.indices.iter().filter(|&&i| split.labels[i] == c).count();
        assert_eq!(k, (n as f64 * 0.25).round() as usize, "class {c}: stratified");
    }
    let none = Hyper { val_fraction: 0.0, ..Hyper::default() };
    let (all_train, no_val) = validation_split(&v, &TaskContext { hyper: &none, ..cx }, 1);
    assert_eq!((all_train, no_val.indices.len()), (v.clone(), 0));
}
