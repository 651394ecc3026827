//! The `lwf-engine` binary end to end: the user's path (train → extend with
//! new data only → eval → predict, through files), the experiment's reports,
//! every bad input's one-line error with no partial output, and `--help`.
//!
//! Data directories are written under the system temp dir from slices of the
//! shipped Fashion-MNIST (loaded with the library), so nothing here depends on
//! fixtures; every run is small enough for two slow cores.

//! The shared helpers (temp dirs, data slices, running the binary) are in
//! tests/common/cli.rs.

mod common;

use common::cli::*;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

// ---- 1. the user's path -------------------------------------------------------------

/// train on classes 0-4, extend with a directory that holds classes 5-9 only
/// (no old data anywhere), then eval on the full test set and predict.
#[test]
fn train_extend_eval_predict_with_new_data_only() {
    let old = npy_dir("old", &[0, 1, 2, 3, 4], 2000, 200, 28);
    let new = npy_dir("new", &[5, 6, 7, 8, 9], 1000, 200, 28);
    let models = TempDir::new("models");
    let (m1, m2) = (models.path("old.safetensors"), models.path("new.safetensors"));

    // Means only (no covariances): the path of the smaller checkpoints.
    let s = ok(&with(
        &["train", "--data", old.s(), "--classes", "0-4", "--out", p(&m1), "--epochs", "2"],
        &["--batch-size", "64", "--ewc-samples", "50", "--class-stats", "mean"],
    ));
    assert!(s.contains("trained classes 0-4") && s.contains(p(&m1)), "{s}");
    assert!(m1.is_file());

    let s = ok(&with(
        &["extend", "--model", p(&m1), "--data", new.s(), "--classes", "5-9", "--method", "lwf"],
        &with(&["--out", p(&m2)], &QUICK),
    ));
    assert!(s.contains("extended with classes 5-9 (") && s.contains(") by lwf") && s.contains(p(&m2)), "{s}");
    // The new-only data has no test image of task 1: its accuracy is "-".
    assert!(s.contains("0-4: -"), "{s}");
    // Class statistics were carried and the old means moved by drift
    // compensation, with σ chosen from the new data alone.
    assert!(s.contains("class statistics (mean) of 10 classes") && s.contains("σ = "), "{s}");
    assert_eq!(models.entries(), ["new.safetensors", "old.safetensors"], "no temporary files remain");

    let e = json(&ok(&["eval", "--model", p(&m2), "--data", "fashion-mnist", "--json"]));
    eprintln!("eval: {e}");
    let tasks: Vec<Vec<u32>> = serde_json::from_value(e["tasks"].clone()).unwrap();
    assert_eq!(tasks, [vec![0, 1, 2, 3, 4], vec![5, 6, 7, 8, 9]], "{e}");
    assert_eq!(e["images"], 10000, "{e}");
    let ta = e["task_aware"].as_array().expect("task_aware list");
    assert_eq!(ta.len(), 2, "{e}");
    let (t1, t2) = (frac(&ta[0], "task 1 accuracy"), frac(&ta[1], "task 2 accuracy"));
    // Chance is 0.2 within a task of five classes.
    assert!(t1 > 0.6, "task 1 should stay well above chance after extend: {t1} ({e})");
    assert!(t2 > 0.6, "task 2 should be learnt from its 1000 images: {t2} ({e})");
    frac(&e["class_il"], "class-IL accuracy");
    for (j, a) in e["class_il_per_task"].as_array().unwrap().iter().enumerate() {
        frac(a, &format!("class-IL accuracy of task {j}"));
    }
    // The statistics make ncm-task the default; every classifier
    // the checkpoint allows is reported (no covariances: no mahalanobis).
    assert_eq!(e["classifier"], "ncm-task", "{e}");
    let by = e["class_il_by_classifier"].as_object().expect("class_il_by_classifier");
    let names: Vec<&str> = by.keys().map(String::as_str).collect();
    assert_eq!(names, ["aligned-heads", "heads", "ncm", "ncm-task"], "{e}");
    assert_eq!(by["ncm-task"], e["class_il"], "{e}");
    let heads =
        json(&ok(&["eval", "--model", p(&m2), "--data", "fashion-mnist", "--json", "--classifier", "heads"]));
    assert_eq!(heads["classifier"], "heads");
    assert_eq!(heads["class_il"], by["heads"], "{heads}");
    fails(
        &["eval", "--model", p(&m2), "--data", "fashion-mnist", "--classifier", "mahalanobis"],
        &[p(&m2), "--classifier mahalanobis", "class covariances"],
    );

    let input = shipped().join("t10k-images-idx3-ubyte.gz");
    let args = ["predict", "--model", p(&m2), "--input", p(&input), "--top-k", "2", "--limit", "3", "--json"];
    let pr = json(&ok(&args));
    eprintln!("predict: {pr}");
    let names: Vec<String> =
        std::fs::read_to_string(shipped().join("classes.txt")).unwrap().lines().map(str::to_string).collect();
    let preds = pr["predictions"].as_array().expect("predictions list");
    assert_eq!(preds.len(), 3, "{pr}");
    assert_eq!(pr["classifier"], "ncm-task", "{pr}");
    // Over all ten classes the probabilities sum to 1.
    let all = json(&ok(&[
        "predict",
        "--model",
        p(&m2),
        "--input",
        p(&input),
        "--top-k",
        "10",
        "--limit",
        "2",
        "--json",
    ]));
    for pred in all["predictions"].as_array().unwrap() {
        let top = pred["top"].as_array().unwrap();
        assert_eq!(top.len(), 10, "{all}");
        let sum: f64 = top.iter().map(|t| t[2].as_f64().unwrap()).sum();
        assert!((sum - 1.0).abs() < 1e-4, "probabilities sum to {sum}: {all}");
    }
    for (i, pred) in preds.iter().enumerate() {
        assert_eq!(pred["image"], i, "{pr}");
        let top = pred["top"].as_array().expect("top list");
        assert_eq!(top.len(), 2, "{pr}");
        let mut last = f64::INFINITY;
        let mut seen = Vec::new();
        for entry in top {
            let (class, name, prob) =
                (entry[0].as_u64().unwrap(), entry[1].as_str().unwrap(), entry[2].as_f64());
            assert!(class < 10 && !seen.contains(&class), "{pr}");
            seen.push(class);
            assert_eq!(name, names[class as usize], "class names come from the data's classes.txt: {pr}");
            let prob = prob.unwrap();
            assert!(prob > 0.0 && prob <= 1.0, "probability {prob} not in (0, 1]: {pr}");
            assert!(prob <= last, "not sorted by probability: {pr}");
            last = prob;
        }
    }
}

// ---- 2. the experiment ----------------------------------------------------------------

const RUN_FIELDS: [&str; 15] = [
    "method",
    "protocol",
    "seed",
    "tasks",
    "config",
    "acc_matrix_task_aware",
    "acc_matrix_class_il_per_task",
    "class_il_acc_after_each_task",
    "final_task_aware_avg",
    "final_class_il_acc",
    "old_tasks_acc_final",
    "new_task_acc_final",
    "avg_forgetting_task_aware",
    "forgetting_per_task",
    "timings",
];

/// `experiment` writes the reference's JSON, the CSVs and the SVG and prints
/// the table; a second run with the same seed gives the same numbers.
#[test]
fn experiment_writes_reports_and_repeats_bit_for_bit() {
    let tmp = TempDir::new("exp");
    let run_into = |dir: &str| {
        let out = tmp.path(dir);
        let stdout = ok(&[
            "experiment",
            "--methods",
            "lwf,finetune",
            "--train-limit",
            "300",
            "--test-limit",
            "50",
            "--epochs",
            "1",
            "--batch-size",
            "64",
            "--out",
            p(&out),
        ]);
        (out, stdout)
    };
    let (out1, stdout) = run_into("one");
    assert!(stdout.contains("method") && stdout.contains("old task"), "the comparison table: {stdout}");
    for m in ["lwf", "finetune"] {
        assert!(stdout.lines().any(|l| l.starts_with(m) && l.contains('|')), "a row for {m}: {stdout}");
    }
    let mut files: Vec<String> =
        std::fs::read_dir(&out1).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    files.sort();
    assert_eq!(
        files,
        [
            "two-task_accuracies.csv",
            "two-task_accuracy.svg",
            "two-task_class_il_by_classifier.csv",
            "two-task_finetune_seed0.json",
            "two-task_lwf_seed0.json",
            "two-task_summary.csv",
        ],
        "exactly the reports, no temporary files"
    );
    let svg = std::fs::read_to_string(out1.join("two-task_accuracy.svg")).unwrap();
    assert!(svg.contains("<svg") && svg.contains("lwf") && svg.contains("finetune"), "{svg}");
    let csv = std::fs::read_to_string(out1.join("two-task_accuracies.csv")).unwrap();
    assert!(csv.starts_with("method,seed,protocol,after_task,task,"), "{csv}");
    // Per method: after task 1 on task 1, after task 2 on tasks 1 and 2.
    assert_eq!(csv.lines().count(), 1 + 2 * 3, "{csv}");

    for method in ["lwf", "finetune"] {
        let path = out1.join(format!("two-task_{method}_seed0.json"));
        let r = json(&std::fs::read_to_string(&path).unwrap());
        for f in RUN_FIELDS {
            assert!(r.get(f).is_some(), "{} lacks '{f}'", path.display());
        }
        assert_eq!(
            (r["method"].as_str(), r["protocol"].as_str(), r["seed"].as_u64()),
            (Some(method), Some("two-task"), Some(0))
        );
        assert_eq!(r["tasks"], serde_json::json!([[0, 1, 2, 3, 4], [5, 6, 7, 8, 9]]));
        assert_eq!(r["config"]["epochs"], 1);
        assert_eq!(r["config"]["train_limit"], 300);
        let a = &r["acc_matrix_task_aware"];
        assert!(a[0][1].is_null(), "task 2 is unseen after task 1: {a}");
        for (t, j) in [(0, 0), (1, 0), (1, 1)] {
            frac(&a[t][j], &format!("{method} A[{t}][{j}]"));
            frac(&r["acc_matrix_class_il_per_task"][t][j], &format!("{method} C[{t}][{j}]"));
        }
        assert_eq!(r["old_tasks_acc_final"], a[1][0]);
        assert_eq!(r["new_task_acc_final"], a[1][1]);
        // Every classifier side by side; heads repeats the reference's field.
        let by = &r["class_il_by_classifier"];
        assert_eq!(by["heads"]["after_each_task"], r["class_il_acc_after_each_task"], "{by}");
        for k in ["aligned-heads", "ncm", "ncm-task"] {
            frac(&by[k]["after_each_task"][1], &format!("{method} {k} class-IL"));
            frac(&by[k]["final_old_tasks"], &format!("{method} {k} old-task class-IL"));
        }
        // Drift compensation ran after task 2 and its check against the old images is recorded.
        let st = &r["class_stats_per_task"][1];
        assert!(st["sdc_sigma"].as_f64().is_some_and(|s| s > 0.0), "{st}");
        let cos = st["old_mean_cosine_compensated"].as_f64().unwrap();
        assert!(cos > 0.0 && cos <= 1.0 + 1e-9, "{st}");
        let forgetting = a[0][0].as_f64().unwrap() - a[1][0].as_f64().unwrap();
        assert!((r["avg_forgetting_task_aware"].as_f64().unwrap() - forgetting).abs() < 1e-12, "{r}");
        let t = &r["timings"];
        for k in ["task_train_seconds", "epoch_seconds", "train_images_per_second"] {
            assert_eq!(t[k].as_array().map(Vec::len), Some(2), "timings.{k} has one entry per task: {t}");
        }
        // lwf: one warm-up epoch and one main epoch on task 2.
        let epochs2 = if method == "lwf" { 2 } else { 1 };
        assert_eq!(t["epoch_seconds"][1].as_array().map(Vec::len), Some(epochs2), "{t}");
        assert!(t["train_images_per_second"][1].as_f64().unwrap() > 0.0, "{t}");
    }

    // The same command again: every number except timings is identical.
    let (out2, _) = run_into("two");
    for method in ["lwf", "finetune"] {
        let name = format!("two-task_{method}_seed0.json");
        let read = |dir: &Path| {
            let mut v = json(&std::fs::read_to_string(dir.join(&name)).unwrap());
            v.as_object_mut().unwrap().remove("timings").expect("timings present");
            v
        };
        assert_eq!(read(&out1), read(&out2), "{name} differs between two runs with seed 0");
    }
    let csv2 = std::fs::read_to_string(out2.join("two-task_accuracies.csv")).unwrap();
    assert_eq!(csv, csv2, "the accuracies CSV differs between two runs with seed 0");
}

// ---- 3. bad inputs ------------------------------------------------------------------------

/// `train` on a broken data directory: the error names the file and the
/// problem, and the output directory stays empty.
fn train_fails_on(data: &TempDir, want: &[&str]) -> String {
    let out = TempDir::new("no-output");
    let model = out.path("model.safetensors");
    let line = fails(&with(&["train", "--data", data.s(), "--out", p(&model)], &QUICK), want);
    assert!(out.entries().is_empty(), "no output may be written: {:?}", out.entries());
    line
}

#[test]
fn broken_data_files_are_one_line_errors_and_write_nothing() {
    // A gzip stream cut in half.
    let d = fm_copy("truncated-gz", false);
    let f = d.path("train-labels-idx1-ubyte.gz");
    let bytes = std::fs::read(&f).unwrap();
    std::fs::write(&f, &bytes[..bytes.len() / 2]).unwrap();
    train_fails_on(&d, &[p(&f), "truncated"]);

    // Bytes in the middle of the deflate stream overwritten.
    let d = fm_copy("corrupt-gz", false);
    let f = d.path("t10k-labels-idx1-ubyte.gz");
    let mut bytes = std::fs::read(&f).unwrap();
    for b in &mut bytes[1000..1400] {
        *b ^= 0xa5;
    }
    std::fs::write(&f, &bytes).unwrap();
    train_fails_on(&d, &[p(&f), "corrupt gzip stream"]);

    // The same corruption with the shipped SHA256SUMS present: a checksum error.
    let d = fm_copy("checksum", true);
    let f = d.path("t10k-labels-idx1-ubyte.gz");
    std::fs::write(&f, &bytes).unwrap();
    train_fails_on(&d, &[p(&f), "SHA256 mismatch"]);

    // A file that is not IDX: an uncompressed images file with a wrong magic.
    let d = fm_copy("magic", false);
    std::fs::remove_file(d.path("t10k-images-idx3-ubyte.gz")).unwrap();
    let f = d.path("t10k-images-idx3-ubyte");
    let mut raw = gunzip(&shipped().join("t10k-images-idx3-ubyte.gz"));
    raw[..4].copy_from_slice(b"\x89PNG");
    std::fs::write(&f, &raw).unwrap();
    train_fails_on(&d, &[p(&f), "not an IDX file", "bad magic"]);

    // 10000 test images but 9999 labels.
    let d = fm_copy("count", false);
    std::fs::remove_file(d.path("t10k-labels-idx1-ubyte.gz")).unwrap();
    let f = d.path("t10k-labels-idx1-ubyte");
    let raw = gunzip(&shipped().join("t10k-labels-idx1-ubyte.gz"));
    let mut short = vec![0, 0, 8, 1];
    short.extend_from_slice(&9999u32.to_be_bytes());
    short.extend_from_slice(&raw[8..8 + 9999]);
    std::fs::write(&f, &short).unwrap();
    train_fails_on(&d, &["t10k-images-idx3-ubyte.gz", "10000 images", p(&f), "9999 labels"]);

    // classes.txt names 9 classes, the labels go up to 9.
    let d = fm_copy("classes", false);
    let names = std::fs::read_to_string(d.path("classes.txt")).unwrap();
    let nine: Vec<&str> = names.lines().take(9).collect();
    std::fs::write(d.path("classes.txt"), nine.join("\n") + "\n").unwrap();
    train_fails_on(
        &d,
        &[p(&d.path("train-labels-idx1-ubyte.gz")), "label 9", "classes.txt", "only 9 classes"],
    );

    // A directory without data, and one that does not exist.
    let empty = TempDir::new("empty");
    train_fails_on(&empty, &[empty.s(), "no data files found"]);
    let gone = TempDir::new("gone");
    std::fs::remove_dir(&gone.0).unwrap();
    train_fails_on(&gone, &[gone.s(), "no such data directory"]);
}

#[test]
fn classes_absent_from_the_data_are_refused() {
    let out = TempDir::new("absent");
    let model = out.path("m.safetensors");
    fails(
        &with(&["train", "--data", "fashion-mnist", "--classes", "11", "--out", p(&model)], &QUICK),
        &["class 11", "fashion-mnist", "0-9"],
    );
    fails(
        &with(&["train", "--data", "fashion-mnist", "--classes", "4-2", "--out", p(&model)], &QUICK),
        &["4-2", "backwards"],
    );
    assert!(out.entries().is_empty(), "{:?}", out.entries());
}

/// Checkpoints that do not fit: another input shape, random bytes, a cut
/// file, classes the model already knows, and a diverging `extend` that must
/// leave the checkpoint it would have replaced byte for byte as it was.
#[test]
fn bad_checkpoints_and_diverging_training_leave_files_untouched() {
    let old = npy_dir("ck-old", &[0, 1, 2, 3, 4], 300, 50, 28);
    let new = npy_dir("ck-new", &[5, 6, 7, 8, 9], 300, 50, 28);
    let small = npy_dir("ck-14px", &[0, 1, 2, 3, 4], 300, 50, 14);
    let dir = TempDir::new("ck");
    let (m28, m14) = (dir.path("m28.safetensors"), dir.path("m14.safetensors"));
    ok(&with(&["train", "--data", old.s(), "--classes", "0-4", "--out", p(&m28)], &QUICK));
    ok(&with(&["train", "--data", small.s(), "--classes", "0-4", "--out", p(&m14)], &QUICK));
    let good = std::fs::read(&m28).unwrap();
    let out = dir.path("out.safetensors");

    // A checkpoint without class statistics (as older versions wrote them):
    // eval and predict fall back to aligned-heads, ncm is refused by name, and
    // extend still works and says what the model lacks.
    let b = lwf_engine::backend::CpuBackend::new();
    let ck = lwf_engine::checkpoint::load(&m28, &b).unwrap();
    assert!(ck.stats.is_some(), "train stores class statistics");
    let bare = dir.path("bare.safetensors");
    // Older versions wrote no "none of these" rule either (the default one
    // reads the covariances this copy drops).
    let meta = lwf_engine::checkpoint::Meta { unknown: None, ..ck.meta.clone() };
    lwf_engine::checkpoint::save(&bare, &b, &ck.net, &meta, ck.fisher.as_deref(), None).unwrap();
    let e = json(&ok(&["eval", "--model", p(&bare), "--data", old.s(), "--json"]));
    assert_eq!(e["classifier"], "aligned-heads", "{e}");
    frac(&e["class_il"], "aligned-heads class-IL of a checkpoint without statistics");
    fails(
        &[
            "predict",
            "--model",
            p(&bare),
            "--input",
            old.path("test_images.npy").to_str().unwrap(),
            "--classifier",
            "ncm",
        ],
        &[p(&bare), "no class statistics"],
    );
    let ext = dir.path("bare-ext.safetensors");
    let s = ok(&with(
        &["extend", "--model", p(&bare), "--data", new.s(), "--classes", "5-9", "--out", p(&ext)],
        &QUICK,
    ));
    assert!(s.contains("no class statistics"), "{s}");
    std::fs::remove_file(&ext).unwrap();

    // Metadata that disagrees with itself (a head's classes against the task
    // list): a one-line error on load, not a panic in evaluation.
    let mut meta = ck.meta.clone();
    meta.tasks = vec![vec![0, 1, 2]];
    let odd = dir.path("odd.safetensors");
    lwf_engine::checkpoint::save(&odd, &b, &ck.net, &meta, None, None).unwrap();
    fails(&["eval", "--model", p(&odd), "--data", old.s()], &[p(&odd), "do not match its tasks"]);

    // Tensors that the loader must check against the model, because later
    // verbs index them by the model's parameters: EWC's Fisher cut short (it
    // loaded, and `extend --method ewc` then panicked), a Fisher with a
    // negative value, a weight holding NaN. One line naming the tensor.
    for (name, tensor, edit, want) in [
        ("fisher-cut", "fisher.4", Edit::Cut(100), "expected F32 [802816]"),
        ("fisher-negative", "fisher.0", Edit::Put(-1.0), "negative"),
        ("weight-nan", "trunk.3.weight", Edit::Put(f32::NAN), "NaN"),
    ] {
        let broken = dir.path(&format!("{name}.safetensors"));
        rewrite_checkpoint(&m28, &broken, |t| edit.apply(t.get_mut(tensor).expect("a tensor of cnn-s")));
        let ewc = ["extend", "--model", p(&broken), "--data", new.s(), "--classes", "5-9", "--method", "ewc"];
        fails(&with(&with(&ewc, &["--out", p(&out)]), &QUICK), &[p(&broken), tensor, want]);
        fails(&["eval", "--model", p(&broken), "--data", old.s()], &[p(&broken), tensor]);
        std::fs::remove_file(&broken).unwrap();
    }
    // --freeze-layers beyond the trunk's depth (cnn-s: 3 layers with parameters).
    fails(
        &with(
            &["extend", "--model", p(&m28), "--data", new.s(), "--classes", "5-9", "--method", "freeze"],
            &["--freeze-layers", "4", "--out", p(&out)],
        ),
        &["--freeze-layers 4", "cnn-s has 3"],
    );
    assert!(!out.exists());

    // An output path that cannot be written fails before any training.
    let nowhere = dir.path("no-such-dir").join("x.safetensors");
    fails(
        &with(&["train", "--data", old.s(), "--classes", "0-4", "--out", p(&nowhere)], &QUICK),
        &[p(&nowhere), "does not exist"],
    );
    fails(&with(&["train", "--data", old.s(), "--out", p(&m28)], &["--epochs", "0"]), &["--epochs"]);
    let nothing = dir.path("no-images");
    for flag in ["--train-limit", "--test-limit"] {
        fails(&["experiment", flag, "0", "--out", p(&nothing)], &[flag, "at least 1"]);
    }
    assert!(!nothing.exists(), "refused before any output");

    // A 14×14 model meets 28×28 data.
    fails(&["eval", "--model", p(&m14), "--data", "fashion-mnist"], &[p(&m14), "1×14×14", "1×28×28"]);
    fails(
        &with(
            &["extend", "--model", p(&m14), "--data", "fashion-mnist", "--classes", "5-9", "--out", p(&out)],
            &QUICK,
        ),
        &[p(&m14), "1×14×14", "1×28×28"],
    );
    let input = shipped().join("t10k-images-idx3-ubyte.gz");
    fails(&["predict", "--model", p(&m14), "--input", p(&input), "--limit", "2"], &[p(&m14), "1×14×14"]);

    // Random bytes, and a real checkpoint cut in half.
    let junk = dir.path("junk.safetensors");
    let mut rng = lwf_engine::rng::Rng::new(7);
    std::fs::write(
        &junk,
        (0..4096).map(|_| (rng.uniform(0.0, 256.0) as u32).min(255) as u8).collect::<Vec<_>>(),
    )
    .unwrap();
    fails(&["eval", "--model", p(&junk), "--data", new.s()], &[p(&junk), "not a safetensors checkpoint"]);
    let cut = dir.path("cut.safetensors");
    std::fs::write(&cut, &good[..good.len() / 2]).unwrap();
    fails(&["eval", "--model", p(&cut), "--data", new.s()], &[p(&cut), "not a safetensors checkpoint"]);
    let missing = dir.path("missing.safetensors");
    fails(&["eval", "--model", p(&missing), "--data", new.s()], &[p(&missing)]);

    // Classes the model already has, with a method that retrains on the old
    // data: their extra images belong in --old-data.
    fails(
        &with(
            &[
                "extend",
                "--model",
                p(&m28),
                "--data",
                "fashion-mnist",
                "--classes",
                "3-6",
                "--method",
                "joint",
            ],
            &with(&["--out", p(&out)], &QUICK),
        ),
        &["classes 3,4", "already known", p(&m28), "--old-data"],
    );
    fails(
        &with(&["extend", "--model", p(&m28), "--data", old.s(), "--out", p(&out)], &QUICK),
        &[old.s(), "no class the model does not already know"],
    );

    // Diverging training: extend in place and train over the good checkpoint.
    let line = fails(
        &with(
            &[
                "extend",
                "--model",
                p(&m28),
                "--data",
                new.s(),
                "--classes",
                "5-9",
                "--lr",
                "1e30",
                "--warmup-epochs",
                "0",
                "--out",
                p(&m28),
            ],
            &QUICK,
        ),
        // Straight into the main phase, where LwF's default feature pull is
        // the other step size to lower, and its ramp the one to lengthen.
        &[
            "loss became",
            "at epoch 1, step",
            "lwf",
            "nothing written",
            "--lr or --lambda-f (now 0.03), or a longer --lr-ramp (now 20)",
        ],
    );
    assert!(line.contains("NaN") || line.contains("inf"), "{line}");
    let line = fails(
        &with(&["train", "--data", old.s(), "--classes", "0-4", "--lr", "1e30", "--out", p(&m28)], &QUICK),
        &["loss became", "at epoch 1, step", "task 1", "nothing written", "--lr"],
    );
    assert!(
        !line.contains("--lambda-f") && !line.contains("--lr-ramp"),
        "the first task has no feature pull and no ramp: {line}"
    );
    assert!(
        std::fs::read(&m28).unwrap() == good,
        "a failed run changed the checkpoint it would have replaced"
    );
    assert_eq!(
        dir.entries(),
        [
            "bare.safetensors",
            "cut.safetensors",
            "junk.safetensors",
            "m14.safetensors",
            "m28.safetensors",
            "odd.safetensors"
        ],
        "no output and no temporary file may remain"
    );
}

#[test]
fn diverging_experiment_writes_no_reports() {
    let tmp = TempDir::new("exp-nan");
    let out = tmp.path("results");
    let args =
        ["experiment", "--methods", "finetune", "--train-limit", "200", "--test-limit", "10", "--lr", "1e30"];
    let line = fails_with(
        &with(&args, &["--epochs", "1", "--out", p(&out)]),
        &["loss became", "at epoch 1, step"],
        true,
    );
    assert!(line.contains("task 1"), "{line}");
    assert!(!out.exists(), "no results directory after a failed experiment");
}

// ---- 4. help ---------------------------------------------------------------------------------

#[test]
fn every_verb_has_help_naming_its_key_flags() {
    let top = ok(&["--help"]);
    for verb in ["train", "extend", "import", "eval", "predict", "export", "experiment", "bench"] {
        assert!(top.contains(verb), "top-level help lists '{verb}': {top}");
    }
    let verbs: [(&str, &[&str]); 8] = [
        (
            "train",
            &["--data", "--classes", "--out", "--epochs", "--lr", "--seed", "--head-mode", "--backend"],
        ),
        (
            "extend",
            &[
                "--model",
                "--data",
                "--classes",
                "--method",
                "--old-data",
                "--out",
                "--lambda-o",
                "--temperature",
            ],
        ),
        ("eval", &["--model", "--data", "--json", "--backend"]),
        ("predict", &["--model", "--input", "--top-k", "--limit", "--json"]),
        (
            "import",
            &["--arch", "--weights", "--classes", "--image-size", "--norm-mean", "--norm-std", "--out"],
        ),
        ("export", &["--model", "--onnx", "--classifier", "--json"]),
        (
            "experiment",
            &["--protocol", "--tasks", "--methods", "--seeds", "--out", "--train-limit", "--test-limit"],
        ),
        ("bench", &["--backend", "--threads", "--simd", "--train-limit", "--json"]),
    ];
    for (verb, flags) in verbs {
        let help = ok(&[verb, "--help"]);
        for f in flags {
            assert!(help.contains(f), "`{verb} --help` should mention {f}:\n{help}");
        }
    }
}

// ---- bench and --simd --------------------------------------------------------------------

/// A forced `--simd portable` bench runs on that path and its JSON names it,
/// beside the old fields (benches/compare_torch.py reads them), the machine
/// (CPU model, FMA probe, peak) and inference at every batch size. No
/// figure is checked beyond being a positive number: the machine is shared.
#[test]
fn bench_json_names_the_forced_simd_path_and_the_machine() {
    let d = npy_dir("bench", &(0..10).collect::<Vec<_>>(), 400, 30, 14);
    let out = ok(&[
        "bench",
        "--data",
        d.s(),
        "--train-limit",
        "200",
        "--epochs",
        "1",
        "--json",
        "--simd",
        "portable",
    ]);
    let j: Value = serde_json::from_str(out.trim()).expect("one JSON object");
    assert_eq!(j["simd"], "portable", "{j}");
    for key in [
        "plain_epoch_images_per_second",
        "lwf_phase_images_per_second",
        "eval_images_per_second",
        "plain_epoch_gflops",
        "lwf_phase_gflops",
        "plain_flops_per_image",
        "lwf_flops_per_image",
    ] {
        let v = j[key].as_f64().unwrap_or_else(|| panic!("{key} missing: {j}"));
        assert!(v > 0.0 && v.is_finite(), "{key} = {v}");
    }
    assert!(!j["cpu_model"].as_str().unwrap().is_empty());
    let probe = j["fma_probe"].as_array().unwrap();
    if lwf_engine::backend::cpu::simd::SimdPath::Avx2.supported() {
        assert!(!probe.is_empty(), "{j}");
        // Portable code has no probe of its own: read against the best path's.
        assert!(j["peak_gflops"].as_f64().unwrap() > 0.0, "{j}");
        assert!(j["plain_epoch_peak_fraction"].as_f64().unwrap() > 0.0, "{j}");
        assert_ne!(j["peak_path"], "portable");
    }
    let rows = j["eval_by_batch"].as_array().unwrap();
    for batch in [1, 32, 128, 1000] {
        let row = rows.iter().find(|r| r["batch"] == batch && r["threads"] == 1).expect("1-thread row");
        assert!(row["images_per_second"].as_f64().unwrap() > 0.0, "{row}");
    }
    // The table prints the same things.
    let table = ok(&["bench", "--data", d.s(), "--train-limit", "50", "--epochs", "1", "--simd", "portable"]);
    for want in ["kernels: portable", "FMA probe", "GFLOP/s", "inference images/s by batch size"] {
        assert!(table.contains(want), "{want}: {table}");
    }
}

/// A bad `LWF_SIMD` is a one-line error before any work (the kernels would
/// panic on it); `--simd` wins over it. A forced path the CPU lacks is the
/// same one-line error (only checkable on a CPU without AVX-512).
#[test]
fn bad_simd_choice_is_one_line_error() {
    let d = npy_dir("simd", &(0..10).collect::<Vec<_>>(), 60, 5, 14);
    let args = ["bench", "--data", d.s(), "--train-limit", "20", "--epochs", "1", "--warmup-epochs", "0"];
    let out = Command::new(BIN).args(args).env("LWF_SIMD", "bogus").output().unwrap();
    let err = text(&out.stderr);
    assert!(!out.status.success() && out.status.code().is_some(), "{err}");
    assert!(out.stdout.is_empty(), "{}", text(&out.stdout));
    assert_eq!(err.lines().count(), 1, "one line: {err}");
    assert!(
        err.starts_with("lwf-engine: error: ") && err.contains("LWF_SIMD") && err.contains("bogus"),
        "{err}"
    );
    let mut forced = args.to_vec();
    forced.extend(["--simd", "portable", "--json"]);
    let out = Command::new(BIN).args(&forced).env("LWF_SIMD", "bogus").output().unwrap();
    assert!(out.status.success(), "--simd wins over LWF_SIMD: {}", text(&out.stderr));
    if !lwf_engine::backend::cpu::simd::SimdPath::Avx512.supported() {
        let mut forced = args.to_vec();
        forced.extend(["--simd", "avx512"]);
        fails(&forced, &["avx512", "lacks"]);
    }
}

// ---- interrupted and resumed runs --------------------------------------------------------

/// Parameter, Fisher and class-statistics bits of a checkpoint (the metadata's
/// timings differ between runs and are left out).
fn checkpoint_bits(path: &Path) -> Vec<(String, Vec<u32>)> {
    let b = lwf_engine::backend::CpuBackend::new();
    let ck = lwf_engine::checkpoint::load(path, &b).unwrap();
    let mut bits: Vec<(String, Vec<u32>)> = ck
        .net
        .params()
        .iter()
        .map(|p| (p.name.clone(), p.value.to_vec(&b).iter().map(|v| v.to_bits()).collect()))
        .collect();
    let stats = ck.stats.expect("class statistics");
    bits.push(("class means".into(), stats.means.iter().map(|v| v.to_bits()).collect()));
    bits
}

/// Run the binary with `args` and send it SIGINT as soon as `state` exists
/// (the first training state is written at the end of an epoch, so the
/// signal lands in the middle of the next one).
fn interrupt_once_state_exists(args: &[String], state: &Path) -> Output {
    let child = Command::new(BIN)
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while !state.exists() {
        assert!(std::time::Instant::now() < deadline, "no training state appeared");
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    let killed = Command::new("kill").args(["-INT", &child.id().to_string()]).status().unwrap();
    assert!(killed.success());
    child.wait_with_output().unwrap()
}

/// SIGINT in the middle of an epoch stops `train` and `extend` at the end of
/// a step with a one-line message naming the state file; `--resume` then
/// finishes the run with exactly the numbers of an uninterrupted one, and
/// the state file is gone once the output exists.
#[test]
fn interrupted_runs_resume_to_the_same_numbers() {
    let data = npy_dir("resume", &[0, 1, 2, 3], 3000, 100, 28);
    let dir = TempDir::new("resume-out");
    let base = ["--data", data.s(), "--epochs", "2", "--batch-size", "16", "--seed", "9"];
    let train = |out: &Path, extra: &[&str]| -> Vec<String> {
        let mut v: Vec<String> =
            ["train", "--classes", "0-1", "--out", p(out)].iter().map(|s| s.to_string()).collect();
        v.extend(base.iter().chain(extra).map(|s| s.to_string()));
        v
    };
    let (plain, cut) = (dir.path("plain.safetensors"), dir.path("cut.safetensors"));
    let args = train(&plain, &[]);
    ok(&args.iter().map(String::as_str).collect::<Vec<_>>());

    let state = dir.path("cut.safetensors.state");
    let args = train(&cut, &["--checkpoint-every", "1"]);
    let out = interrupt_once_state_exists(&args, &state);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("interrupted at epoch 2") && err.contains("--resume") && err.contains(p(&state)),
        "{err}"
    );
    assert!(!cut.exists(), "no output before the run is complete");
    assert_eq!(dir.entries(), ["cut.safetensors.state", "plain.safetensors"], "only the state file is left");

    // Another run's flags are refused by name; the same flags finish it.
    let mut other = train(&cut, &["--resume", p(&state)]);
    other.iter_mut().filter(|a| a.as_str() == "9").for_each(|a| *a = "10".into());
    fails(&other.iter().map(String::as_str).collect::<Vec<_>>(), &[p(&state), "another run"]);
    let args = train(&cut, &["--checkpoint-every", "1", "--resume", p(&state)]);
    ok(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(!state.exists(), "the state file is removed once the output is written");
    assert_eq!(
        checkpoint_bits(&plain),
        checkpoint_bits(&cut),
        "a resumed run differs from an uninterrupted one"
    );

    // extend with LwF: the state is written after the warm-up phase and the
    // run is interrupted in the main phase; Y_o is recorded again on resume.
    let extend = |out: &Path, extra: &[&str]| -> Vec<String> {
        let mut v: Vec<String> =
            ["extend", "--model", p(&plain), "--classes", "2-3", "--method", "lwf", "--out", p(out)]
                .iter()
                .map(|s| s.to_string())
                .collect();
        v.extend(base.iter().chain(extra).map(|s| s.to_string()));
        v
    };
    let (whole, parts) = (dir.path("whole.safetensors"), dir.path("parts.safetensors"));
    ok(&extend(&whole, &[]).iter().map(String::as_str).collect::<Vec<_>>());
    let state = dir.path("parts.safetensors.state");
    let args = extend(&parts, &["--checkpoint-every", "1"]);
    let err = text(&interrupt_once_state_exists(&args, &state).stderr);
    assert!(err.contains("interrupted") && err.contains("after epoch 1 of phase 1"), "{err}");
    let args = extend(&parts, &["--checkpoint-every", "1", "--resume", p(&state)]);
    ok(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(
        checkpoint_bits(&whole),
        checkpoint_bits(&parts),
        "a resumed extend differs from an uninterrupted one"
    );
}

/// An experiment writes each run's JSON when the run is done; interrupted,
/// it keeps those, and `--resume` runs only the missing ones, ending with the
/// same reports as an uninterrupted experiment. Other settings are refused.
#[test]
fn interrupted_experiment_resumes_its_missing_runs() {
    let dir = TempDir::new("exp-resume");
    let (full, cut) = (dir.path("full"), dir.path("cut"));
    let args = |out: &Path, extra: &[&str]| -> Vec<String> {
        let mut v: Vec<String> = ["experiment", "--methods", "lwf,finetune", "--seeds", "0", "--out", p(out)]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let quick = ["--train-limit", "1500", "--test-limit", "50", "--epochs", "1", "--batch-size", "32"];
        v.extend(quick.iter().chain(extra).map(|s| s.to_string()));
        v
    };
    ok(&args(&full, &[]).iter().map(String::as_str).collect::<Vec<_>>());
    let first = cut.join("two-task_lwf_seed0.json");
    let out = interrupt_once_state_exists(&args(&cut, &[]), &first);
    let err = text(&out.stderr);
    assert!(err.contains("interrupted") && err.contains("experiment --resume"), "{err}");
    assert!(
        !cut.join("two-task_finetune_seed0.json").exists(),
        "the experiment was stopped before its last run"
    );
    assert!(!cut.join("two-task_summary.csv").exists(), "no combined report from an unfinished experiment");

    let other = args(&cut, &["--resume", "--lr", "0.01"]);
    fails(&other.iter().map(String::as_str).collect::<Vec<_>>(), &[p(&first), "other settings"]);
    let s = ok(&args(&cut, &["--resume"]).iter().map(String::as_str).collect::<Vec<_>>());
    assert!(s.contains("lwf") && s.contains("finetune"), "{s}");
    same_reports(&full, &cut, &["lwf_seed0", "finetune_seed0"]);
}

/// Two experiment directories hold the same runs (their JSON, timings aside)
/// and the same accuracies CSV.
fn same_reports(a: &Path, b: &Path, runs: &[&str]) {
    for name in runs {
        let read = |d: &Path| {
            let mut v = json(&std::fs::read_to_string(d.join(format!("two-task_{name}.json"))).unwrap());
            v.as_object_mut().unwrap().remove("timings");
            v
        };
        assert_eq!(read(a), read(b), "{name} differs between {} and {}", a.display(), b.display());
    }
    let csv = |d: &Path| std::fs::read_to_string(d.join("two-task_accuracies.csv")).unwrap();
    assert_eq!(csv(a), csv(b));
}

/// `experiment --shard i/n` runs its share of the (seed, method) runs; three
/// shards run as separate processes and merged give the run files and the
/// accuracies of one unsharded run. `merge` names missing runs, refuses runs
/// of another experiment by naming both files, and `--shard` is checked.
#[test]
fn shards_merge_into_the_unsharded_experiment() {
    let dir = TempDir::new("shards");
    let args = |out: &Path, extra: &[&str]| -> Vec<String> {
        let mut v: Vec<String> =
            ["experiment", "--methods", "lwf,finetune", "--seeds", "0,1", "--out", p(out)]
                .iter()
                .map(|s| s.to_string())
                .collect();
        let quick = ["--train-limit", "600", "--test-limit", "30", "--epochs", "1", "--batch-size", "64"];
        v.extend(quick.iter().chain(extra).map(|s| s.to_string()));
        v
    };
    let run = |v: Vec<String>| ok(&v.iter().map(String::as_str).collect::<Vec<_>>());
    let full = dir.path("full");
    run(args(&full, &[]));
    let shards: Vec<PathBuf> = (0..3).map(|i| dir.path(&format!("shard{i}"))).collect();
    for (i, s) in shards.iter().enumerate() {
        run(args(s, &["--shard", &format!("{i}/3")]));
    }
    let files = |d: &Path| -> usize {
        std::fs::read_dir(d)
            .unwrap()
            .filter(|e| e.as_ref().unwrap().file_name().to_string_lossy().contains("_seed"))
            .count()
    };
    assert_eq!(shards.iter().map(|s| files(s)).collect::<Vec<_>>(), [2, 1, 1], "4 runs dealt round-robin");

    let partial = ok(&["merge", p(&shards[0]), p(&shards[1]), "--out", p(&dir.path("partial"))]);
    assert!(partial.contains("missing: lwf seed 1"), "{partial}");
    let merged = dir.path("merged");
    let s = ok(&["merge", p(&shards[0]), p(&shards[1]), p(&shards[2]), "--out", p(&merged)]);
    assert!(s.contains("none missing"), "{s}");
    same_reports(&full, &merged, &["lwf_seed0", "lwf_seed1", "finetune_seed0", "finetune_seed1"]);

    let other = dir.path("other");
    run(args(&other, &["--lr", "0.01"]));
    let err =
        fails(&["merge", p(&full), p(&other), "--out", p(&dir.path("bad"))], &["different experiments"]);
    assert!(err.contains("full/") && err.contains("other/"), "names both files: {err}");
    for bad in ["3/2", "0/0", "x"] {
        fails(
            &args(&dir.path("never"), &["--shard", bad]).iter().map(String::as_str).collect::<Vec<_>>(),
            &["--shard"],
        );
    }
}

// ---- validation split and --select ---------------------------------------------------------

/// `extend --select` prints its trial table, keeps the chosen values in the
/// checkpoint's history, and refuses what it cannot do in one line.
/// More images of classes the model knows, beside a new class: the known
/// classes keep their id, head and name and train on their own head, their
/// statistics are merged count-weighted with the compensated old ones, and
/// only the new class makes a task; given known classes alone, no task or
/// head is added.
#[test]
fn extend_takes_more_images_of_known_classes() {
    let old = npy_dir("known-old", &[0, 1], 200, 100, 28);
    let more = npy_dir("known-more", &[0, 1, 2], 900, 150, 28);
    let models = TempDir::new("known-models");
    let (m1, m2, m3) =
        (models.path("a.safetensors"), models.path("b.safetensors"), models.path("c.safetensors"));
    let b = lwf_engine::CpuBackend::new();
    ok(&with(
        &["train", "--data", old.s(), "--classes", "0-1", "--class-stats", "cov", "--out", p(&m1)],
        &QUICK,
    ));
    let before = lwf_engine::checkpoint::load(&m1, &b).unwrap();

    let s = ok(&with(
        &["extend", "--model", p(&m1), "--data", more.s(), "--classes", "0-2", "--out", p(&m2)],
        &QUICK,
    ));
    assert!(s.contains("extended with classes 2 (Pullover) and refined known classes 0,1"), "{s}");
    let after = lwf_engine::checkpoint::load(&m2, &b).unwrap();
    assert_eq!(after.meta.tasks, vec![vec![0, 1], vec![2]]);
    let heads: Vec<(Vec<u32>, Vec<String>)> =
        after.meta.heads.iter().map(|h| (h.classes.clone(), h.class_names.clone())).collect();
    assert_eq!(
        heads,
        vec![(vec![0, 1], vec!["T-shirt/top".into(), "Trouser".into()]), (vec![2], vec!["Pullover".into()])]
    );
    let last = after.meta.history.last().unwrap();
    assert_eq!((last.classes.clone(), last.known_classes.clone()), (vec![0, 1, 2], vec![0, 1]));
    // Counts add: the old ones plus this extend's training images of the
    // class (the validation share is held out of both).
    let (s1, s2) = (before.stats.unwrap(), after.stats.unwrap());
    assert_eq!(s2.classes, vec![0, 1, 2]);
    let labels: Vec<u8> = slice(&fmnist().train, &[0, 1, 2], 900, 28).1;
    for (k, c) in [0u8, 1, 2].iter().enumerate() {
        let given = labels.iter().filter(|&&l| l == *c).count() as u64;
        let old_count = if k < 2 { s1.counts[k] } else { 0 };
        let added = s2.counts[k] - old_count;
        assert!(added > given * 3 / 4 && added <= given, "class {c}: {added} added of {given} given");
    }
    assert!(s2.gauss.is_some(), "the covariances are merged too");

    // Known classes alone: no new task, head or output.
    let s = ok(&with(
        &["extend", "--model", p(&m2), "--data", more.s(), "--classes", "0,2", "--out", p(&m3)],
        &QUICK,
    ));
    assert!(s.contains("refined known classes 0,2") && !s.contains("extended with"), "{s}");
    let again = lwf_engine::checkpoint::load(&m3, &b).unwrap();
    assert_eq!(again.meta.tasks, after.meta.tasks);
    assert_eq!(again.net.heads.len(), 2);
    let s3 = again.stats.unwrap();
    assert!(s3.counts[0] > s2.counts[0] && s3.counts[1] == s2.counts[1] && s3.counts[2] > s2.counts[2]);
    let eval = json(&ok(&["eval", "--model", p(&m3), "--data", more.s(), "--json"]));
    assert!(eval.is_object(), "the refined model evaluates: {eval}");
}

#[test]
fn extend_select_chooses_lambda_and_records_it() {
    let dir = TempDir::new("select");
    let (m1, m2) = (dir.path("m1.safetensors"), dir.path("m2.safetensors"));
    let quick = ["--epochs", "1", "--batch-size", "64"];
    let small = npy_dir("select-data", &(0..10).collect::<Vec<u32>>(), 800, 200, 28);
    ok(&with(&["train", "--data", small.s(), "--classes", "0-4", "--out", p(&m1)], &quick));
    let base = ["extend", "--model", p(&m1), "--data", small.s(), "--classes", "5-9", "--out", p(&m2)];
    let args = with(&base, &["--epochs", "1", "--batch-size", "64", "--select", "--select-lambdas", "4,1"]);
    let out = run(&args);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("trial") && stderr.contains("finetune") && stderr.contains("threshold"),
        "{stderr}"
    );
    assert!(stdout.contains("chosen by --select") && stdout.contains("validation accuracy"), "{stdout}");
    let meta = lwf_engine::checkpoint::load(&m2, &lwf_engine::CpuBackend::new()).unwrap().meta;
    let last = meta.history.last().unwrap();
    let sel = last.selection.as_ref().expect("the selection is in the history");
    assert!([4.0, 1.0].contains(&sel.lambda_o), "{sel:?}");
    assert_eq!(sel.trials[0].method, "finetune");
    assert!(last.validation_accuracy.is_some_and(|a| (0.0..=1.0).contains(&a)));

    let m3 = dir.path("m3.safetensors");
    let other = ["extend", "--model", p(&m1), "--data", small.s(), "--classes", "5-9", "--out", p(&m3)];
    fails(&with(&other, &["--select", "--method", "finetune"]), &["--select", "--method lwf"]);
    fails(&with(&other, &["--select", "--val-fraction", "0"]), &["--val-fraction"]);
    fails(&with(&other, &["--select", "--select-lambdas", "4,x"]), &["--select-lambdas", "'x'"]);
    fails(&with(&other, &["--select", "--select-tolerance", "1.5"]), &["--select-tolerance"]);
    fails(&with(&other, &["--val-fraction", "1.5"]), &["--val-fraction"]);
    assert!(!m3.exists());
}

// ---- image folders ---------------------------------------------------------------------

/// The model's classes and their names, from its metadata.
fn model_classes(path: &Path) -> (Vec<Vec<u32>>, Vec<(u32, String)>) {
    let ck = lwf_engine::checkpoint::load(path, &lwf_engine::backend::CpuBackend::new()).unwrap();
    (ck.meta.tasks.clone(), ck.meta.named_classes())
}

/// A user's own images end to end: train cnn-m on a folder of two classes
/// given by name, extend it with a folder holding only two new classes
/// (whose sorted names interleave with the old ones, so ids follow the
/// model, not the folder), eval on a folder of all four, predict files and
/// folders in three formats; the same folder and seed give the same ids and
/// numbers; bad input is one line.
#[test]
fn image_folders_train_extend_eval_predict() {
    let t = TempDir::new("images");
    let (old, new, all) = (t.path("old"), t.path("new"), t.path("all"));
    image_folder(&old, &[(0, "cat"), (1, "dog")], 21);
    image_folder(&new, &[(2, "ant"), (3, "eel")], 21);
    image_folder(&all, &[(0, "cat"), (1, "dog"), (2, "ant"), (3, "eel")], 10);
    let quick = ["--epochs", "2", "--warmup-epochs", "1", "--batch-size", "8", "--ewc-samples", "20"];
    let (m1, m1b, m2) = (t.path("m1.safetensors"), t.path("m1b.safetensors"), t.path("m2.safetensors"));

    let train = |out: &Path, classes: &str| {
        let args = ["train", "--data", p(&old), "--arch", "cnn-m", "--classes", classes, "--out", p(out)];
        let out = run(&with(&args, &quick));
        assert!(out.status.success(), "train failed: {}", text(&out.stderr));
        text(&out.stderr)
    };
    let stderr = train(&m1, "cat,dog");
    assert!(stderr.contains("3×16×16 (the most common size)"), "the chosen size is said: {stderr}");
    // The same folder and seed: the same ids and the same numbers (the
    // second run reads the decoded images from the cache); ids given as
    // numbers or mixed with names are the same classes.
    let stderr = train(&m1b, "0,dog");
    assert!(stderr.contains("read from cache"), "{stderr}");
    assert_eq!(checkpoint_bits(&m1), checkpoint_bits(&m1b));
    let (tasks, named) = model_classes(&m1);
    assert_eq!(tasks, [vec![0, 1]]);
    assert_eq!(named, [(0, "cat".to_string()), (1, "dog".to_string())]);

    // extend: the folder's own ids would be ant 0, eel 1; the model's are 2, 3.
    ok(&with(
        &["extend", "--model", p(&m1), "--data", p(&new), "--classes", "ant,eel", "--out", p(&m2)],
        &quick,
    ));
    let (tasks, named) = model_classes(&m2);
    assert_eq!(tasks, [vec![0, 1], vec![2, 3]]);
    let names: Vec<&str> = named.iter().map(|(_, n)| n.as_str()).collect();
    assert_eq!(names, ["cat", "dog", "ant", "eel"]);

    // eval on a folder of all four classes, at the model's size without --image-size.
    let ev = json(&ok(&["eval", "--model", p(&m2), "--data", p(&all), "--json"]));
    assert_eq!(ev["images"], 8, "20 % of 10 images of each of 4 classes: {ev}");
    for a in ev["task_aware"].as_array().unwrap() {
        frac(a, "task-aware accuracy");
    }
    frac(&ev["class_il"], "class-IL");

    // predict: two files, then a folder (searched recursively) and a file.
    let (f1, f2) = (new.join("ant").join("img01.jpg"), old.join("cat").join("img03.png"));
    let table = ok(&["predict", "--model", p(&m2), "--input", p(&f1), p(&f2), "--top-k", "2"]);
    let rows: Vec<&str> = table.lines().skip(1).collect();
    assert_eq!(rows.len(), 2, "{table}");
    assert!(rows[0].starts_with(p(&f1)) && rows[1].starts_with(p(&f2)), "{table}");
    let pr = json(&ok(&["predict", "--model", p(&m2), "--input", p(&new), p(&f2), "--json"]));
    let preds = pr["predictions"].as_array().unwrap();
    assert_eq!(preds.len(), 43, "42 images under new/ and one file: {pr}");
    assert_eq!(preds[42]["file"], p(&f2), "{pr}");
    for pred in preds {
        for entry in pred["top"].as_array().unwrap() {
            assert!(names.contains(&entry[1].as_str().unwrap()), "{pr}");
        }
    }
    let csv = ok(&["predict", "--model", p(&m2), "--input", p(&new.join("eel")), "--csv", "--top-k", "4"]);
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines[0], "file,rank,class,name,probability,unknown");
    assert_eq!(lines.len(), 1 + 21 * 4, "{csv}");
    let first: Vec<&str> = lines[1].split(',').collect();
    assert_eq!((first[0], first[1]), (p(&new.join("eel").join("img00.png")), "1"), "{csv}");
    let sum: f64 = lines[1..5].iter().map(|l| l.rsplit(',').nth(1).unwrap().parse::<f64>().unwrap()).sum();
    assert!((sum - 1.0).abs() < 1e-4, "one image's four probabilities sum to {sum}");

    // Bad input: one line naming the flag or file, nothing written.
    let out = t.path("never.safetensors");
    let base = ["train", "--data", p(&old), "--out", p(&out)];
    fails(&with(&base, &["--image-size", "0x5"]), &["--image-size", "0x5"]);
    fails(&with(&base, &["--test-fraction", "1.5"]), &["--test-fraction", "1.5"]);
    fails_with(&with(&base, &["--classes", "cat,cow"]), &["--classes", "'cow'", "cat, dog"], true);
    let empty = t.path("empty");
    std::fs::create_dir_all(empty.join("sub")).unwrap();
    fails(&["predict", "--model", p(&m2), "--input", p(&empty)], &[p(&empty), "no .png"]);
    let bad = t.path("bad.png");
    std::fs::write(&bad, b"\x89PNG\r\n\x1a\n not really").unwrap();
    fails(&["predict", "--model", p(&m2), "--input", p(&f1), p(&bad)], &[p(&bad), "decode"]);
    assert!(!out.exists());
}

/// The ResNets through the CLI on a colour image folder: resnet20 learns
/// two easy classes (well above chance on held-out images), its checkpoint
/// holds the BatchNorm running statistics under PyTorch's names (moved from
/// their initial 0 / 1, batches counted) so eval answers as training did,
/// extend works with LwF and feature extraction under both `--bn`
/// policies (recorded in the history; feature extraction leaves the old
/// task's answers exactly where they were), and the bad inputs of the
/// issue are one line with nothing written: an image too small for the
/// architecture, and batch statistics of a batch of one.
#[test]
fn resnets_train_extend_eval_on_a_colour_folder() {
    use safetensors::{tensor::Dtype, SafeTensors};
    let t = TempDir::new("resnet");
    let (old, new) = (t.path("old"), t.path("new"));
    image_folder(&old, &[(0, "cat"), (1, "dog")], 30);
    image_folder(&new, &[(2, "ant"), (3, "eel")], 30);
    let quick = ["--epochs", "4", "--warmup-epochs", "1", "--batch-size", "8", "--ewc-samples", "10"];
    let m1 = t.path("r20.safetensors");
    // Without rotation self-supervision, whose views would add to the count below.
    let out = run(&with(
        &["train", "--data", p(&old), "--arch", "resnet20", "--ssl", "off", "--out", p(&m1)],
        &quick,
    ));
    assert!(out.status.success(), "train failed: {}", text(&out.stderr));
    let bytes = std::fs::read(&m1).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let var = st.tensor("layer2.0.downsample.1.running_var").unwrap();
    assert_eq!((var.dtype(), var.shape()), (Dtype::F32, &[32][..]));
    let var: Vec<f32> = var.data().chunks(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect();
    assert!(var.iter().all(|&v| v > 0.0) && var.iter().any(|&v| (v - 1.0).abs() > 1e-3), "{var:?}");
    let count = st.tensor("bn1.num_batches_tracked").unwrap();
    assert_eq!((count.dtype(), count.shape()), (Dtype::I64, &[][..]));
    // 48 training images (80 %, less 10 % validation: 44) → 6 batches of ≤ 8, 4 epochs.
    let count = i64::from_le_bytes(count.data().try_into().unwrap());
    assert!((20..=28).contains(&count), "batches counted: {count}");
    assert!(st.tensor("conv1.bias").is_err(), "ResNet convolutions have no bias");

    let ev = json(&ok(&["eval", "--model", p(&m1), "--data", p(&old), "--json"]));
    let acc = ev["task_aware"][0].as_f64().unwrap();
    assert!(acc >= 0.75, "resnet20 on two easy classes: {acc} (chance 0.5): {ev}");
    let again = json(&ok(&["eval", "--model", p(&m1), "--data", p(&old), "--json"]));
    assert_eq!(ev["task_aware"], again["task_aware"]);

    for (method, bn) in [("lwf", "train"), ("feature-extraction", "frozen"), ("lwf", "frozen")] {
        let m2 = t.path(&format!("r20-{method}-{bn}.safetensors"));
        let args =
            ["extend", "--model", p(&m1), "--data", p(&new), "--method", method, "--bn", bn, "--out", p(&m2)];
        // Without batch statistics nothing renormalises the trunk's
        // activations while it trains; the default --lr-ramp keeps the
        // feature pull's first steps from diverging (with --lr-ramp 0 this
        // case gave a NaN loss at step 4 of the main phase, even at lr 0.01).
        ok(&with(&args, &quick));
        let ck = lwf_engine::checkpoint::load(&m2, &lwf_engine::backend::CpuBackend::new()).unwrap();
        let last = ck.meta.history.last().unwrap();
        assert_eq!(last.bn.map(|b| b.name()), Some(bn), "{:?}", last);
        let ev2 = json(&ok(&["eval", "--model", p(&m2), "--data", p(&old), "--json"]));
        if method == "feature-extraction" {
            // Trunk, old head and BatchNorm statistics untouched.
            assert_eq!(ev2["task_aware"][0], ev["task_aware"][0], "{ev2}");
        }
    }

    // Bad input: one line, nothing written.
    let never = t.path("never.safetensors");
    let small = ["train", "--data", p(&old), "--arch", "resnet18", "--image-size", "8", "--out", p(&never)];
    fails_with(&small, &["resnet18", "8×8", "at least"], true);
    let one = ["train", "--data", p(&old), "--arch", "resnet20", "--batch-size", "1", "--out", p(&never)];
    fails_with(&one, &["BatchNorm", "--batch-size 1", "--bn frozen"], true);
    assert!(!never.exists());
}

// ---- a classifier trained in PyTorch: import, extend, hand back -------------------

/// tests/fixtures/import (tools/torch_import_fixture.py): a resnet20 trained by
/// PyTorch, eight PNG images and PyTorch's eval-mode softmax on them.
fn torch_fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests").join("fixtures").join("import")
}

/// The fixture's import command, writing `out` from `weights`.
fn import_args<'a>(weights: &'a str, out: &'a str) -> Vec<&'a str> {
    let mut v = vec!["import", "--arch", "resnet20", "--weights", weights, "--classes", "red,green,blue"];
    v.extend([
        "--image-size",
        "32x32",
        "--norm-mean",
        "0.4914,0.4822,0.4465",
        "--norm-std",
        "0.2470,0.2435,0.2616",
    ]);
    v.extend(["--out", out]);
    v
}

/// Every tensor of a safetensors file: name → (dtype, shape, bytes).
type Tensors = std::collections::BTreeMap<String, (safetensors::Dtype, Vec<usize>, Vec<u8>)>;

fn read_tensors(path: &Path) -> Tensors {
    let bytes = std::fs::read(path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    st.tensors().into_iter().map(|(n, v)| (n, (v.dtype(), v.shape().to_vec(), v.data().to_vec()))).collect()
}

fn write_tensors(path: &Path, t: &Tensors) {
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = t
        .iter()
        .map(|(n, (d, s, b))| (n.clone(), safetensors::tensor::TensorView::new(*d, s.clone(), b).unwrap()))
        .collect();
    std::fs::write(path, safetensors::serialize(views, None).unwrap()).unwrap();
}

/// A change to one stored tensor: keep its first N values (shape [N]), or
/// set its first value.
enum Edit {
    Cut(usize),
    Put(f32),
}

impl Edit {
    fn apply(&self, (dtype, shape, data): &mut (safetensors::Dtype, Vec<usize>, Vec<u8>)) {
        assert_eq!(*dtype, safetensors::Dtype::F32);
        match *self {
            Edit::Cut(n) => {
                data.truncate(4 * n);
                *shape = vec![n];
            }
            Edit::Put(v) => data[..4].copy_from_slice(&v.to_le_bytes()),
        }
    }
}

/// `src` rewritten to `dst` with its tensors edited and its metadata kept.
fn rewrite_checkpoint(src: &Path, dst: &Path, edit: impl FnOnce(&mut Tensors)) {
    let bytes = std::fs::read(src).unwrap();
    let (_, header) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let mut t = read_tensors(src);
    edit(&mut t);
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = t
        .iter()
        .map(|(n, (d, s, b))| (n.clone(), safetensors::tensor::TensorView::new(*d, s.clone(), b).unwrap()))
        .collect();
    std::fs::write(dst, safetensors::serialize(views, header.metadata().clone()).unwrap()).unwrap();
}

/// The softmax PyTorch recorded for each fixture image: (file name, label, probabilities).
fn torch_expected() -> Vec<(String, String, Vec<f64>)> {
    let e = json(&std::fs::read_to_string(torch_fixture().join("expected.json")).unwrap());
    e["images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            let probs = i["probabilities"].as_array().unwrap().iter().map(|p| p.as_f64().unwrap()).collect();
            (i["file"].as_str().unwrap().to_string(), i["label"].as_str().unwrap().to_string(), probs)
        })
        .collect()
}

/// One image's answer: its file and (class, name, probability), best first.
type Answer = (String, Vec<(u64, String, f64)>);

/// `predict --json` of the fixture's images: the JSON and every image's answer.
fn predicted(model: &Path, extra: &[&str]) -> (Value, Vec<Answer>) {
    let images = torch_fixture().join("images");
    let v = json(&ok(&with(
        &["predict", "--model", p(model), "--input", p(&images), "--json", "--top-k", "9"],
        extra,
    )));
    let rows = v["predictions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            let top = r["top"]
                .as_array()
                .unwrap()
                .iter()
                .map(|t| (t[0].as_u64().unwrap(), t[1].as_str().unwrap().to_string(), t[2].as_f64().unwrap()))
                .collect();
            (r["file"].as_str().unwrap().to_string(), top)
        })
        .collect();
    (v, rows)
}

/// predict's answers against PyTorch's: the same files in the same order,
/// the same top-1 class, every probability within `tol`.
fn assert_as_torch(rows: &[Answer], tol: f64) {
    let want = torch_expected();
    assert_eq!(rows.len(), want.len());
    let names = ["red", "green", "blue"];
    for ((file, top), (wfile, _, probs)) in rows.iter().zip(&want) {
        assert!(file.ends_with(wfile.as_str()), "{file} vs {wfile}");
        let best = (0..3).max_by(|&a, &b| probs[a].total_cmp(&probs[b])).unwrap();
        assert_eq!(top[0].0 as usize, best, "{file}: top-1 {top:?}, PyTorch {probs:?}");
        for (c, name, pr) in top.iter().filter(|t| t.0 < 3) {
            assert_eq!(name, names[*c as usize]);
            let d = (pr - probs[*c as usize]).abs();
            assert!(
                d <= tol,
                "{file} class {name}: {pr} vs PyTorch {} (|Δ| {d:.2e} > {tol})",
                probs[*c as usize]
            );
        }
    }
}

/// The user's scenario: a resnet20 trained in PyTorch, imported without data,
/// answers exactly as PyTorch; extended with images of new classes only, its
/// saved file still holds every PyTorch tensor under its own name and shape
/// (bit-equal where the method froze the trunk), so it loads back with
/// `load_state_dict(strict=False)`; imported with --data it has class
/// statistics and the statistics-based classifiers.
#[test]
fn imported_pytorch_resnet_predicts_as_pytorch_extends_and_hands_back() {
    let t = TempDir::new("import");
    let weights = torch_fixture().join("model.safetensors");
    let m1 = t.path("imported.safetensors");
    let said = ok(&import_args(p(&weights), p(&m1)));
    assert!(said.contains("imported resnet20") && said.contains("red, green, blue"), "{said}");
    assert!(said.contains("no class statistics"), "{said}");

    let (v, rows) = predicted(&m1, &["--classifier", "heads"]);
    assert_eq!(v["classifier"], "heads");
    assert_as_torch(&rows, 1e-3);
    // The default classifier of a model without statistics is aligned-heads
    // (with one head, the heads' own softmax), said once.
    let images = torch_fixture().join("images");
    let out = run(&["predict", "--model", p(&m1), "--input", p(&images), "--json", "--top-k", "9"]);
    assert!(out.status.success());
    let notes = text(&out.stderr).lines().filter(|l| l.starts_with("note: no class statistics")).count();
    assert_eq!(notes, 1, "{}", text(&out.stderr));
    let default = json(&text(&out.stdout));
    assert_eq!(default["classifier"], "aligned-heads");
    assert_eq!(default["predictions"], v["predictions"], "one head: aligned-heads is the heads");

    // The imported file: PyTorch's tensors, bit for bit, fc as head 0.
    let torch = read_tensors(&weights);
    let saved = read_tensors(&m1);
    let engine_name = |n: &str| n.strip_prefix("fc.").map_or(n.to_string(), |r| format!("heads.0.{r}"));
    for (name, tensor) in &torch {
        assert_eq!(saved.get(&engine_name(name)), Some(tensor), "{name} differs after import");
    }

    // Extend with two new classes only.
    let new = t.path("new");
    image_folder(&new, &[(3, "yellow"), (4, "cyan")], 12);
    let quick = ["--epochs", "1", "--warmup-epochs", "1", "--batch-size", "8"];
    let m2 = t.path("fe.safetensors");
    ok(&with(
        &["extend", "--model", p(&m1), "--data", p(&new), "--method", "feature-extraction", "--out", p(&m2)],
        &quick,
    ));
    let fe = read_tensors(&m2);
    for (name, tensor) in &torch {
        assert_eq!(fe.get(&engine_name(name)), Some(tensor), "{name} changed under feature-extraction");
    }
    assert_eq!(fe["heads.1.weight"].1, [2, 64]);
    let (tasks, named) = model_classes(&m2);
    assert_eq!(tasks, [vec![0, 1, 2], vec![3, 4]]);
    assert_eq!(
        named.iter().map(|(_, n)| n.as_str()).collect::<Vec<_>>(),
        ["red", "green", "blue", "cyan", "yellow"]
    );
    // Old head and trunk untouched: the old classes' task-aware answers are PyTorch's.
    let (_, rows) = predicted(&m2, &["--classifier", "heads"]);
    assert_eq!(rows[0].1.len(), 5, "all five classes scored");

    let m3 = t.path("lwf.safetensors");
    ok(&with(&["extend", "--model", p(&m1), "--data", p(&new), "--out", p(&m3)], &quick));
    let lwf = read_tensors(&m3);
    let mut moved = 0;
    for (name, (d, shape, bytes)) in &torch {
        let (d2, s2, b2) = &lwf[&engine_name(name)];
        assert_eq!((d2, s2), (d, shape), "{name}: the dtype and shape PyTorch expects");
        moved += usize::from(b2 != bytes);
    }
    assert!(moved > torch.len() / 2, "lwf trains the trunk: {moved} of {} tensors moved", torch.len());
    let ev = json(&ok(&["eval", "--model", p(&m3), "--data", p(&new), "--json"]));
    assert_eq!(ev["classifier"], "aligned-heads", "{ev}");
    assert!(ev["note"].as_str().unwrap().contains("no class statistics"), "{ev}");

    // With --data: statistics of the known classes, so ncm-task is the default.
    let old = t.path("old");
    image_folder(&old, &[(0, "red"), (1, "green"), (2, "blue")], 12);
    let m4 = t.path("with-data.safetensors");
    let said = ok(&with(&import_args(p(&weights), p(&m4)), &["--data", p(&old)]));
    assert!(said.contains("class statistics") && !said.contains("no class statistics"), "{said}");
    let (v, rows) = predicted(&m4, &["--classifier", "heads"]);
    assert!(v.get("note").is_none(), "{v}");
    assert_as_torch(&rows, 1e-3);
    let m5 = t.path("with-data-lwf.safetensors");
    ok(&with(&["extend", "--model", p(&m4), "--data", p(&new), "--out", p(&m5)], &quick));
    let ev = json(&ok(&["eval", "--model", p(&m5), "--data", p(&new), "--json"]));
    assert!(ev["class_il_by_classifier"].get("ncm-task").is_some(), "{ev}");
    assert!(ev.get("note").is_none(), "{ev}");
}

/// Bad weights and arguments: one line naming the file and the problem, no
/// output. F16 weights are converted (said), not refused.
#[test]
fn import_refuses_bad_weights_with_one_line_and_writes_nothing() {
    use safetensors::Dtype;
    let t = TempDir::new("import-bad");
    let weights = torch_fixture().join("model.safetensors");
    let torch = read_tensors(&weights);
    let out = t.path("never.safetensors");
    let broken = |name: &str, change: &dyn Fn(&mut Tensors)| {
        let mut m = torch.clone();
        change(&mut m);
        let path = t.path(name);
        write_tensors(&path, &m);
        path
    };

    let f = broken("missing.safetensors", &|m| {
        m.remove("layer2.0.bn1.running_var");
    });
    fails(&import_args(p(&f), p(&out)), &["missing.safetensors", "'layer2.0.bn1.running_var' is missing"]);
    let f = broken("extra.safetensors", &|m| {
        let extra = m["layer1.0.conv1.weight"].clone();
        m.insert("layer4.0.conv1.weight".into(), extra);
    });
    fails(&import_args(p(&f), p(&out)), &["'layer4.0.conv1.weight' does not belong to a resnet20"]);
    let f = broken("shape.safetensors", &|m| {
        m.get_mut("layer1.1.conv2.weight").unwrap().1 = vec![16, 16, 9, 1];
    });
    fails(
        &import_args(p(&f), p(&out)),
        &["'layer1.1.conv2.weight' has shape [16, 16, 9, 1]", "[16, 16, 3, 3]"],
    );
    let f = broken("int.safetensors", &|m| {
        m.get_mut("bn1.weight").unwrap().0 = Dtype::I32;
    });
    fails(&import_args(p(&f), p(&out)), &["'bn1.weight' is I32"]);
    let f = broken("nan.safetensors", &|m| {
        m.get_mut("bn1.bias").unwrap().2[..4].copy_from_slice(&f32::NAN.to_le_bytes());
    });
    fails(&import_args(p(&f), p(&out)), &["'bn1.bias' holds a NaN"]);

    // Another architecture's weights.
    let mut other = import_args(p(&weights), p(&out));
    other[2] = "resnet18";
    fails(&other, &["not the weights of a resnet18"]);
    other[2] = "resnet32";
    fails(&other, &["layer1.3.conv1.weight", "not a complete resnet32"]);

    // Not a safetensors file: a pickle (named by content, then by extension), a truncated file.
    let bytes = std::fs::read(&weights).unwrap();
    t.write("model.pt", b"PK\x03\x04 a zip archive as torch.save writes");
    fails(&import_args(p(&t.path("model.pt")), p(&out)), &["model.pt", "pickle", "runs code", "save_file"]);
    t.write("model.safetensors.bak", &[0x80, 0x02, b'}', b'q']);
    fails(&import_args(p(&t.path("model.safetensors.bak")), p(&out)), &["pickle"]);
    t.write("half.safetensors", &bytes[..bytes.len() / 2]);
    fails(&import_args(p(&t.path("half.safetensors")), p(&out)), &["half.safetensors", "truncated"]);

    // Arguments that disagree with the weights.
    let mut two = import_args(p(&weights), p(&out));
    two[6] = "red,green";
    fails(&two, &["'fc.weight' has 3 rows", "--classes gives 2"]);
    let mut tiny = import_args(p(&weights), p(&out));
    tiny[8] = "2x2";
    fails(&tiny, &["--image-size 2x2"]);
    let mut norm = import_args(p(&weights), p(&out));
    norm[10] = "0.5,0.5";
    fails(&norm, &["--norm-mean"]);
    assert!(!out.exists(), "an error writes nothing");
    let left: Vec<String> = t.entries().into_iter().filter(|e| e.contains("never")).collect();
    assert!(left.is_empty(), "no temp file left: {left:?}");

    // F16 (what model.half() saves): widened exactly, said, answers close to PyTorch's f32.
    let f = broken("f16.safetensors", &|m| {
        for (d, _, b) in m.values_mut().filter(|v| v.0 == Dtype::F32) {
            *b = b
                .chunks_exact(4)
                .flat_map(|c| f32_to_f16(f32::from_le_bytes(c.try_into().unwrap())).to_le_bytes())
                .collect();
            *d = Dtype::F16;
        }
    });
    let said = ok(&import_args(p(&f), p(&out)));
    assert!(said.contains("converted to F32") && said.contains("from F16"), "{said}");
    let (_, rows) = predicted(&out, &["--classifier", "heads"]);
    let want = torch_expected();
    for ((_, top), (_, _, probs)) in rows.iter().zip(&want) {
        for (c, _, pr) in top {
            assert!((pr - probs[*c as usize]).abs() < 0.05, "f16 weights: {pr} vs {}", probs[*c as usize]);
        }
    }
}

/// f32 → IEEE half, round to nearest (normal numbers only: the fixture's weights).
fn f32_to_f16(x: f32) -> u16 {
    let bits = x.to_bits();
    let sign = ((bits >> 16) & 0x8000) as u16;
    let exp = ((bits >> 23) & 0xff) as i32 - 127 + 15;
    if x == 0.0 || exp <= 0 {
        return sign; // flush the tiny ones: exactness is not what this test checks
    }
    assert!(exp < 31, "{x} overflows f16");
    let man = bits & 0x7f_ffff;
    let mut h = ((exp as u32) << 10) | (man >> 13);
    if man & 0x1fff > 0x1000 || (man & 0x1fff == 0x1000 && h & 1 == 1) {
        h += 1;
    }
    sign | h as u16
}

/// An engine-trained cnn-s, saved back the way PyTorch would hold it (its
/// trunk's names, head 0 as `fc`, nothing else), imports to a model that
/// answers bit for bit as the original.
#[test]
fn an_engine_cnn_s_round_trips_through_import() {
    let t = TempDir::new("import-cnn");
    let d = npy_dir("import-cnn", &[0, 1, 2, 3, 4], 200, 40, 28);
    let m1 = t.path("trained.safetensors");
    ok(&with(&["train", "--data", d.s(), "--arch", "cnn-s", "--out", p(&m1)], &QUICK));
    let plain: Tensors = read_tensors(&m1)
        .into_iter()
        .filter_map(|(n, v)| {
            let name = if let Some(r) = n.strip_prefix("heads.0.") { format!("fc.{r}") } else { n.clone() };
            (n.starts_with("trunk.") || n.starts_with("heads.0.")).then_some((name, v))
        })
        .collect();
    assert!(plain.contains_key("fc.weight") && plain.contains_key("trunk.0.weight"), "{:?}", plain.keys());
    let w = t.path("plain.safetensors");
    write_tensors(&w, &plain);
    let m2 = t.path("imported.safetensors");
    let norm =
        lwf_engine::checkpoint::load(&m1, &lwf_engine::backend::CpuBackend::new()).unwrap().meta.norm();
    let (mean, std) = (format!("{}", norm.mean[0]), format!("{}", norm.std[0]));
    let args = ["import", "--arch", "cnn-s", "--weights", p(&w), "--classes", "0-4", "--image-size", "28x28"];
    ok(&with(&args, &["--channels", "1", "--norm-mean", &mean, "--norm-std", &std, "--out", p(&m2)]));
    let input = d.path("test_images.npy");
    // (class, probability) of every image's top 3: names differ (ids were given).
    let answer = |m: &Path| -> Vec<Vec<(u64, f64)>> {
        let v =
            json(&ok(&["predict", "--model", p(m), "--input", p(&input), "--json", "--classifier", "heads"]));
        let rows = v["predictions"].as_array().unwrap().iter();
        rows.map(|r| {
            r["top"]
                .as_array()
                .unwrap()
                .iter()
                .map(|t| (t[0].as_u64().unwrap(), t[2].as_f64().unwrap()))
                .collect()
        })
        .collect()
    };
    let a = answer(&m1);
    assert_eq!(a.len(), 40);
    assert_eq!(answer(&m2), a, "the imported copy answers as the original, bit for bit");
    let (tasks, named) = model_classes(&m2);
    assert_eq!(tasks, [vec![0, 1, 2, 3, 4]]);
    assert_eq!(named[0], (0, "class 0".to_string()));
    // Without --data there is no Fisher: EWC says so instead of pulling towards nothing.
    let new = npy_dir("import-cnn-new", &[5, 6], 40, 10, 28);
    let never = t.path("never.safetensors");
    fails(
        &["extend", "--model", p(&m2), "--data", new.s(), "--method", "ewc", "--out", p(&never)],
        &["Fisher", "--data"],
    );
    assert!(!never.exists());
}

/// `train` with the defaults trains with rotation self-supervision (the
/// rotation head trains beside the class head and is gone from the saved
/// model, which loads, evaluates and extends as any other) and keeps
/// covariances, so the analytic classifier answers.
#[test]
fn train_with_rotation_self_supervision_saves_the_class_head_only() {
    let old = npy_dir("ssl-old", &[0, 1, 2], 600, 150, 28);
    let models = TempDir::new("ssl-models");
    let m = models.path("m.safetensors");
    let out = ok(&with(&["train", "--data", old.s(), "--classes", "0-2", "--out", p(&m)], &QUICK));
    assert!(out.contains("trained classes 0-2"), "{out}");
    assert!(out.contains("with rotation self-supervision") && out.contains("class statistics: cov"), "{out}");
    let e = json(&ok(&["eval", "--model", p(&m), "--data", old.s(), "--json"]));
    assert_eq!(e["tasks"], serde_json::json!([[0, 1, 2]]), "{e}");
    assert_eq!(e["classifier"], "analytic", "the default with covariances ({e})");
    let acc = frac(&e["task_aware"][0], "task-aware");
    assert!(acc > 0.6, "three clothing classes after one epoch: {acc} ({e})");
    fails_with(
        &[
            "train",
            "--data",
            old.s(),
            "--classes",
            "0-2",
            "--unknown-accept",
            "0",
            "--out",
            p(&models.path("x.safetensors")),
        ],
        &["--unknown-accept"],
        false,
    );
}

/// `eval --unknown-classes`: a model of classes 0-4 scores the test images
/// of 5-9 against its own, by every score its statistics allow; classes it
/// has learnt are refused as "unknown".
#[test]
fn eval_scores_classes_the_model_has_not_learnt() {
    let old = npy_dir("unknown-old", &[0, 1, 2, 3, 4], 1500, 300, 28);
    let models = TempDir::new("unknown-models");
    let m = models.path("m.safetensors");
    ok(&with(
        &["train", "--data", old.s(), "--classes", "0-4", "--class-stats", "cov", "--out", p(&m)],
        &QUICK,
    ));
    let e = json(&ok(&[
        "eval",
        "--model",
        p(&m),
        "--data",
        "fashion-mnist",
        "--unknown-classes",
        "5-9",
        "--json",
    ]));
    let u = &e["unknown"];
    assert_eq!(u["images"], 5000, "{e}");
    let by: std::collections::BTreeMap<String, f64> =
        serde_json::from_value(u["auroc_by_score"].clone()).unwrap();
    assert_eq!(
        by.keys().map(String::as_str).collect::<Vec<_>>(),
        ["combined", "energy", "mahalanobis", "max-cosine", "max-softmax"],
        "{e}"
    );
    // Sandals, sneakers, bags and boots are far from shirts and coats: every
    // score must tell them apart well above chance (0.5).
    for (k, v) in &by {
        assert!(*v > 0.7 && *v <= 1.0, "AUROC of {k}: {v} ({e})");
    }
    assert_eq!(u["score"], "combined", "the default with covariances ({e})");
    assert_eq!(frac(&u["auroc"], "auroc"), by["combined"], "{e}");
    // train calibrated the threshold on its validation images to accept
    // 95 % of them: test images of the same classes land near that share,
    // and it turns most unknown images away.
    assert!(u["threshold"].as_f64().is_some_and(f64::is_finite), "{e}");
    let accepted = frac(&u["known_accepted"], "known accepted");
    assert!((0.85..=1.0).contains(&accepted), "known accepted {accepted} ({e})");
    let rejected = frac(&u["unknown_rejected"], "unknown rejected");
    assert!(rejected > 0.5, "unknown rejected {rejected} ({e})");

    // predict applies the rule: images of 5-9 are mostly "none of these",
    // images of 0-4 mostly not, and the CSV carries the same verdicts.
    let unseen = npy_dir("unknown-new", &[5, 6, 7, 8, 9], 0, 200, 28);
    let unseen_train = npy_dir("unknown-new-train", &[5, 6, 7, 8, 9], 1500, 100, 28);
    let marked = |dir: &TempDir| -> f64 {
        let pr = json(&ok(&[
            "predict",
            "--model",
            p(&m),
            "--input",
            &dir.path("test_images.npy").display().to_string(),
            "--json",
        ]));
        assert_eq!(pr["unknown_rule"]["score"], "combined", "{pr}");
        let preds = pr["predictions"].as_array().unwrap();
        preds.iter().filter(|q| q["unknown"].as_bool().expect("every image gets a verdict")).count() as f64
            / preds.len() as f64
    };
    let (on_unknown, on_known) = (marked(&unseen), marked(&old));
    assert!(on_unknown > 0.5 && on_known < 0.15, "marked unknown: {on_unknown} of 5-9, {on_known} of 0-4");
    let csv = ok(&[
        "predict",
        "--model",
        p(&m),
        "--input",
        &unseen.path("test_images.npy").display().to_string(),
        "--csv",
        "--top-k",
        "1",
        "--limit",
        "50",
    ]);
    let trues = csv.lines().skip(1).filter(|l| l.ends_with(",true")).count();
    assert!(csv.lines().skip(1).all(|l| l.ends_with(",true") || l.ends_with(",false")), "{csv}");
    assert!(trues > 25, "{trues} of 50 unknown images marked in the CSV: {csv}");
    let table = ok(&[
        "predict",
        "--model",
        p(&m),
        "--input",
        &unseen.path("test_images.npy").display().to_string(),
        "--limit",
        "20",
    ]);
    assert!(table.lines().next().unwrap().contains("none of these: combined score above"), "{table}");
    assert!(table.lines().skip(1).any(|l| l.contains("none of these (score")), "{table}");

    // extend calibrates again (on the new classes), and --cov-drift ridge
    // moves the old Gaussians differently from SDC's means-only move.
    let mut maha = Vec::new();
    for drift in ["sdc", "ridge"] {
        let out = models.path(&format!("x-{drift}.safetensors"));
        let said = ok(&with(
            &[
                "extend",
                "--model",
                p(&m),
                "--data",
                unseen_train.s(),
                "--classes",
                "5-9",
                "--cov-drift",
                drift,
                "--out",
                p(&out),
            ],
            &QUICK,
        ));
        assert!(
            said.contains("none of these: combined score above") && said.contains("classes 5-9"),
            "{said}"
        );
        let e = json(&ok(&["eval", "--model", p(&out), "--data", "fashion-mnist", "--json"]));
        let m = frac(&e["class_il_by_classifier"]["mahalanobis"], "mahalanobis class-IL");
        assert!(m > 0.4, "{drift}: mahalanobis class-IL {m} over ten classes ({e})");
        maha.push(m);
    }
    assert_ne!(maha[0], maha[1], "ridge moved the covariances: the classifiers differ");
    fails_with(
        &["eval", "--model", p(&m), "--data", "fashion-mnist", "--unknown-classes", "3,7"],
        &["--unknown-classes names class 3", "has learnt"],
        false,
    );
}

/// Every parameter of the model in `path`.
fn weights(path: &Path) -> Vec<Vec<f32>> {
    let b = lwf_engine::CpuBackend::new();
    let ck = lwf_engine::checkpoint::load(path, &b).unwrap();
    ck.net.params().iter().map(|p| p.value.to_vec(&b)).collect()
}

/// `--augment` trains on random views drawn from the seed: the same seed
/// gives the same weights bit for bit, and other weights than without it;
/// the history names what was done (`auto` resolved: crop alone for grey
/// images). With LwF, `--teacher live` (the old model on each view) gives
/// other weights than the recorded targets, and is recorded too.
#[test]
fn augmented_views_are_seeded_recorded_and_the_live_teacher_differs() {
    use lwf_engine::data::augment::Augment;
    use lwf_engine::incremental::TeacherMode;
    let d = npy_dir("augment", &[0, 1, 2, 3], 160, 40, 28);
    let m = TempDir::new("augment-models");
    let train = |out: &Path, extra: &[&str]| {
        let base = with(&["train", "--data", d.s(), "--classes", "0-1", "--out", p(out)], &QUICK);
        ok(&with(&base, extra))
    };
    let (plain, a1, a2) = (m.path("plain.st"), m.path("a1.st"), m.path("a2.st"));
    train(&plain, &[]);
    let s = train(&a1, &["--augment"]);
    assert!(s.contains("with augmented views (crop)"), "{s}");
    train(&a2, &["--augment", "auto"]);
    assert_eq!(weights(&a1), weights(&a2), "the same seed gave other views");
    assert_ne!(weights(&a1), weights(&plain), "--augment changed nothing");
    let b = lwf_engine::CpuBackend::new();
    let last = |f: &Path| lwf_engine::checkpoint::load(f, &b).unwrap().meta.history.last().cloned().unwrap();
    assert_eq!(last(&a1).augment, Some(Augment::Set { crop: true, flip: false }));
    assert_eq!(last(&plain).augment, None);

    let extend = |out: &Path, teacher: &str| {
        let args = [
            "extend",
            "--model",
            p(&plain),
            "--data",
            d.s(),
            "--classes",
            "2-3",
            "--augment",
            "crop,flip",
            "--teacher",
            teacher,
            "--out",
            p(out),
        ];
        ok(&with(&args, &QUICK))
    };
    let (rec, live) = (m.path("rec.st"), m.path("live.st"));
    let s = extend(&live, "live");
    assert!(s.contains("with augmented views (crop,flip; live teacher)"), "{s}");
    extend(&rec, "recorded");
    assert_eq!(last(&live).teacher, Some(TeacherMode::Live));
    assert_eq!(last(&rec).augment, Some(Augment::Set { crop: true, flip: true }));
    assert_ne!(weights(&live), weights(&rec), "the live teacher gave the recorded targets");
    fails(&with(&["train", "--data", d.s(), "--augment", "crop,blur", "--out", p(&a1)], &QUICK), &["'blur'"]);
}
