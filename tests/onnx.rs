//! `export` against a real ONNX runtime: for every architecture and every
//! classifier, a model trained and extended through the CLI is exported,
//! checked by `onnx.checker` (full check) and run by ONNX Runtime on 500
//! test images, whose probabilities must equal `predict`'s (top-1 identical,
//! each probability within 1e-4); and the bad inputs of `export` are one
//! line with nothing written.
//!
//! ONNX Runtime comes from Python (tests/onnx/run_onnx.py): the interpreter
//! is `LWF_ONNX_PYTHON`, else `python3`, and needs onnx, onnxruntime and
//! numpy. Without them the comparison is reported as SKIPPED on stderr,
//! unless `LWF_REQUIRE_ONNXRUNTIME=1` (set by .ci/run), which makes their
//! absence a failure: CI never counts a skipped comparison as passed.

mod common;

use common::cli::*;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;

const CLASSIFIERS: [&str; 6] = ["heads", "aligned-heads", "ncm", "mahalanobis", "ncm-task", "analytic"];
const TEST_IMAGES: usize = 500;

/// The Python interpreter that has onnx, onnxruntime and numpy, if any.
fn onnx_python() -> Option<String> {
    let python = std::env::var("LWF_ONNX_PYTHON").unwrap_or_else(|_| "python3".into());
    let probe = Command::new(&python).args(["-c", "import onnx, onnxruntime, numpy"]).output();
    let found = matches!(&probe, Ok(out) if out.status.success());
    let required = std::env::var("LWF_REQUIRE_ONNXRUNTIME").is_ok_and(|v| v == "1");
    if !found {
        let why = match &probe {
            Ok(out) => text(&out.stderr).lines().last().unwrap_or_default().to_string(),
            Err(e) => e.to_string(),
        };
        assert!(
            !required,
            "LWF_REQUIRE_ONNXRUNTIME=1 but {python} cannot import onnx/onnxruntime/numpy: {why}"
        );
        eprintln!("SKIPPED: ONNX Runtime comparison ({python}: {why}); set LWF_ONNX_PYTHON");
        return None;
    }
    Some(python)
}

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests").join("onnx").join("run_onnx.py")
}

/// Three channels from one grey image, each a different view (the image,
/// its mirror, its negative), so per-channel normalisation and colour
/// convolutions are exercised with data a network can still learn.
fn colourise(grey: &[u8], side: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(grey.len() * 3);
    for img in grey.chunks(side * side) {
        out.extend_from_slice(img);
        for row in img.chunks(side) {
            out.extend(row.iter().rev());
        }
        out.extend(img.iter().map(|&v| 255 - v));
    }
    out
}

/// An NPY data directory of Fashion-MNIST `classes` (grey, or colourised),
/// `n_train` training and `n_test` test images of 28×28.
fn data_dir(tag: &str, classes: &[u32], n_train: usize, n_test: usize, colour: bool) -> TempDir {
    let d = npy_dir(tag, classes, n_train, n_test, 28);
    if colour {
        for (prefix, split, n) in [("train", &fmnist().train, n_train), ("test", &fmnist().test, n_test)] {
            let (images, labels) = slice(split, classes, n, 28);
            d.write(
                &format!("{prefix}_images.npy"),
                &npy("|u1", &[labels.len(), 3, 28, 28], &colourise(&images, 28)),
            );
        }
    }
    d
}

/// `TEST_IMAGES` test images of all ten classes as one NPY file in `dir`.
fn test_images(dir: &TempDir, colour: bool) -> PathBuf {
    let (images, labels) = slice(&fmnist().test, &(0..10).collect::<Vec<_>>(), TEST_IMAGES, 28);
    let n = labels.len();
    let (name, bytes) = if colour {
        ("test-colour.npy", npy("|u1", &[n, 3, 28, 28], &colourise(&images, 28)))
    } else {
        ("test-grey.npy", npy("|u1", &[n, 28, 28], &images))
    };
    dir.write(name, &bytes);
    dir.path(name)
}

/// predict's probabilities, one row per image over `classes` (id order).
fn predicted(model: &Path, images: &Path, classifier: &str, classes: usize) -> Vec<Vec<f64>> {
    let k = classes.to_string();
    let n = TEST_IMAGES.to_string();
    let args = ["predict", "--model", p(model), "--input", p(images), "--json", "--top-k", &k, "--limit", &n];
    let pr = json(&ok(&with(&args, &["--classifier", classifier])));
    assert_eq!(pr["classifier"], classifier, "{}", pr["classifier"]);
    let rows = pr["predictions"].as_array().unwrap();
    assert_eq!(rows.len(), TEST_IMAGES);
    rows.iter()
        .map(|row| {
            let mut probs = vec![f64::NAN; classes];
            for entry in row["top"].as_array().unwrap() {
                probs[entry[0].as_u64().unwrap() as usize] = entry[2].as_f64().unwrap();
            }
            assert!(probs.iter().all(|p| p.is_finite()), "every class listed: {row}");
            probs
        })
        .collect()
}

fn argmax(row: &[f64]) -> usize {
    (0..row.len()).fold(0, |best, j| if row[j] > row[best] { j } else { best })
}

/// ONNX Runtime's answers equal predict's: top-1 identical, every probability
/// within 1e-4; and the answers vary from image to image (a model that
/// answers one class for everything would hide a broken trunk).
fn assert_same(what: &str, onnx: &[Vec<f64>], engine: &[Vec<f64>]) -> (f64, usize) {
    assert_eq!(onnx.len(), engine.len(), "{what}: rows");
    let mut worst = 0.0f64;
    for (i, (o, e)) in onnx.iter().zip(engine).enumerate() {
        assert_eq!(o.len(), e.len(), "{what}: image {i}: columns");
        assert_eq!(argmax(o), argmax(e), "{what}: image {i}: top-1 differs: onnx {o:?}, predict {e:?}");
        for (a, b) in o.iter().zip(e) {
            worst = worst.max((a - b).abs());
        }
        let sum: f64 = o.iter().sum();
        assert!((sum - 1.0).abs() < 1e-4, "{what}: image {i}: probabilities sum to {sum}");
    }
    assert!(worst <= 1e-4, "{what}: a probability differs by {worst:.2e}");
    let mut tops: Vec<usize> = engine.iter().map(|r| argmax(r)).collect();
    tops.sort_unstable();
    tops.dedup();
    let spread = (0..engine[0].len())
        .map(|j| {
            let col = engine.iter().map(|r| r[j]);
            col.clone().fold(f64::MIN, f64::max) - col.fold(f64::MAX, f64::min)
        })
        .fold(0.0, f64::max);
    assert!(
        tops.len() >= 3 && spread >= 0.01,
        "{what}: the model answers {tops:?}, probabilities spread {spread:.3}: too degenerate to compare"
    );
    (worst, tops.len())
}

/// train classes 0-4 with covariances, extend with 5-9 (data of the new
/// classes only), export both models with every classifier, run them all.
fn check_arch(python: &str, arch: &str, colour: bool, epochs: &str) {
    let tag = format!("onnx-{arch}");
    let t = TempDir::new(&tag);
    let old = data_dir(&format!("{tag}-old"), &[0, 1, 2, 3, 4], 600, 50, colour);
    let new = data_dir(&format!("{tag}-new"), &[5, 6, 7, 8, 9], 600, 50, colour);
    let images = test_images(&t, colour);
    let quick = ["--epochs", epochs, "--warmup-epochs", "1", "--batch-size", "32"];
    let (m1, m2) = (t.path("m1.safetensors"), t.path("m2.safetensors"));
    let train = ["train", "--data", old.s(), "--classes", "0-4", "--arch", arch, "--class-stats", "cov"];
    ok(&with(&with(&train, &quick), &["--out", p(&m1)]));
    let extend = ["extend", "--model", p(&m1), "--data", new.s(), "--classes", "5-9", "--out", p(&m2)];
    ok(&with(&extend, &quick));

    let mut exported = Vec::new();
    for (model, classes) in [(&m1, 5), (&m2, 10)] {
        for classifier in CLASSIFIERS {
            let name = format!("{}-{classifier}.onnx", model.file_stem().unwrap().to_str().unwrap());
            let onnx = t.path(&name);
            let report = json(&ok(&[
                "export",
                "--model",
                p(model),
                "--onnx",
                p(&onnx),
                "--classifier",
                classifier,
                "--json",
            ]));
            assert_eq!(report["classifier"], classifier, "{report}");
            assert_eq!(report["architecture"], arch, "{report}");
            assert_eq!(report["opset"], 17, "{report}");
            let ids: Vec<u64> = (0..classes as u64).collect();
            assert_eq!(report["class_ids"], Value::from(ids), "{report}");
            exported.push((model.to_path_buf(), classes, classifier, onnx));
        }
    }
    let out = t.path("onnxruntime.json");
    let mut args: Vec<String> = vec![p(&script()).into(), p(&images).into(), p(&out).into()];
    args.extend(exported.iter().map(|(.., onnx)| p(onnx).to_string()));
    args.extend(["--limit".into(), TEST_IMAGES.to_string()]);
    let run = Command::new(python).args(&args).output().expect("python runs");
    assert!(run.status.success(), "run_onnx.py failed: {}", text(&run.stderr));
    let report: Value = serde_json::from_slice(&std::fs::read(&out).unwrap()).unwrap();

    for (model, classes, classifier, onnx) in &exported {
        let what = format!("{arch} {} {classifier}", model.file_name().unwrap().to_str().unwrap());
        let got = &report["models"][p(onnx)];
        assert_eq!(got["inputs"], serde_json::json!(["images"]), "{what}");
        assert_eq!(got["outputs"], serde_json::json!(["probabilities", "features"]), "{what}");
        assert_eq!(got["opset"], serde_json::json!([17]), "{what}");
        let dim = if arch.starts_with("resnet2") || arch.starts_with("resnet3") {
            64
        } else if arch.starts_with("resnet") {
            512
        } else {
            256
        };
        assert_eq!(got["features_shape"], serde_json::json!([TEST_IMAGES, dim]), "{what}");
        let meta = &got["metadata"];
        assert_eq!(meta["lwf_engine.classifier"], *classifier, "{what}: {meta}");
        assert_eq!(meta["lwf_engine.architecture"], arch, "{what}: {meta}");
        assert_eq!(meta["lwf_engine.version"], env!("CARGO_PKG_VERSION"), "{what}: {meta}");
        let names: Value = serde_json::from_str(meta["lwf_engine.class_names"].as_str().unwrap()).unwrap();
        assert_eq!(names[0], "T-shirt/top", "{what}: {meta}");
        assert_eq!(names.as_array().unwrap().len(), *classes, "{what}: {meta}");
        let norm: Value = serde_json::from_str(meta["lwf_engine.normalisation"].as_str().unwrap()).unwrap();
        assert!(norm["mean"].is_array() && norm["std"].is_array(), "{what}: {meta}");

        let onnx_probs: Vec<Vec<f64>> = got["probabilities"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r.as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect())
            .collect();
        let engine = predicted(model, &images, classifier, *classes);
        let (worst, answered) = assert_same(&what, &onnx_probs, &engine);
        eprintln!("{what}: {TEST_IMAGES} images, top-1 identical, max |Δp| {worst:.1e} ({answered} classes answered)");
    }
}

#[test]
fn cnn_s_exports_every_classifier_and_onnx_runtime_agrees() {
    let Some(python) = onnx_python() else { return };
    check_arch(&python, "cnn-s", false, "2");
}

#[test]
fn cnn_m_exports_every_classifier_and_onnx_runtime_agrees() {
    let Some(python) = onnx_python() else { return };
    check_arch(&python, "cnn-m", true, "2");
}

#[test]
fn resnet20_exports_every_classifier_and_onnx_runtime_agrees() {
    let Some(python) = onnx_python() else { return };
    check_arch(&python, "resnet20", true, "3");
}

#[test]
fn resnet18_exports_every_classifier_and_onnx_runtime_agrees() {
    let Some(python) = onnx_python() else { return };
    check_arch(&python, "resnet18", false, "3");
}

/// The bad inputs: a classifier the model cannot offer, an output that
/// cannot be written, a model that is not one. One line each; an existing
/// file at the output path is left as it was, and no temp file remains.
#[test]
fn export_bad_input_is_one_line_and_writes_nothing() {
    let t = TempDir::new("onnx-bad");
    let data = data_dir("onnx-bad-data", &[0, 1, 2, 3, 4], 200, 20, false);
    let model = t.path("m.safetensors");
    // Means only: the classifiers that need covariances are refused.
    ok(&with(
        &["train", "--data", data.s(), "--classes", "0-4", "--class-stats", "mean", "--out", p(&model)],
        &QUICK,
    ));
    let out = t.path("out.onnx");
    t.write("out.onnx", b"the user's earlier file");

    let line = fails(
        &["export", "--model", p(&model), "--onnx", p(&out), "--classifier", "mahalanobis"],
        &["mahalanobis", "--class-stats cov"],
    );
    assert!(line.contains(p(&model)), "names the model: {line}");
    let missing_dir = t.path("no-such-dir").join("m.onnx");
    fails(&["export", "--model", p(&model), "--onnx", p(&missing_dir)], &[p(&missing_dir)]);
    fails(&["export", "--model", p(&model), "--onnx", t.s()], &[t.s()]);
    let not_a_model = t.path("not-a-model.safetensors");
    t.write("not-a-model.safetensors", b"\x10\0\0\0\0\0\0\0{\"oops\": 1}     ");
    fails(&["export", "--model", p(&not_a_model), "--onnx", p(&out)], &[p(&not_a_model)]);

    assert_eq!(std::fs::read(&out).unwrap(), b"the user's earlier file");
    assert_eq!(t.entries(), ["m.safetensors", "not-a-model.safetensors", "out.onnx"]);
}
