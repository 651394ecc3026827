//! Data loading through the public API: the shipped Fashion-MNIST, every way a
//! user's files can be broken (each must be a one-line error naming the file),
//! NPY input, class/task parsing and seeded batching.

mod common;

use common::cli::npy;
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};

use lwf_engine::data::{self, Normalization, Pixels, Split};
use lwf_engine::rng::Rng;

/// A fresh directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        static N: AtomicUsize = AtomicUsize::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("lwf-data-test-{}-{n}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }

    fn write(&self, name: &str, bytes: &[u8]) {
        std::fs::write(self.path(name), bytes).unwrap();
    }

    fn spec(&self) -> &str {
        self.0.to_str().unwrap()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn gz(bytes: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

fn idx_bytes(dims: &[u32], payload: &[u8]) -> Vec<u8> {
    let mut v = vec![0, 0, 0x08, dims.len() as u8];
    for d in dims {
        v.extend_from_slice(&d.to_be_bytes());
    }
    v.extend_from_slice(payload);
    v
}

/// Deterministic, varied pixel bytes for `n` images of h×w.
fn pixels(n: usize, h: usize, w: usize) -> Vec<u8> {
    (0..n * h * w).map(|i| (i * 37 % 256) as u8).collect()
}

/// A gzipped IDX data set: `train` and `test` labels, 4×3 images.
fn idx_dir(tag: &str, train: &[u8], test: &[u8]) -> TempDir {
    let d = TempDir::new(tag);
    for (prefix, labels) in [("train", train), ("t10k", test)] {
        let n = labels.len();
        let images = idx_bytes(&[n as u32, 4, 3], &pixels(n, 4, 3));
        d.write(&format!("{prefix}-images-idx3-ubyte.gz"), &gz(&images));
        d.write(&format!("{prefix}-labels-idx1-ubyte.gz"), &gz(&idx_bytes(&[n as u32], labels)));
    }
    d
}

/// Load `d` and return the error's Display, checking it is one line and names `file`.
fn load_err(d: &TempDir, file: &str) -> String {
    let e = data::load(d.spec()).expect_err("load should fail").to_string();
    assert!(!e.contains('\n'), "error is not one line: {e}");
    assert!(e.contains(file), "error does not name {file}: {e}");
    e
}

fn f32_bytes(xs: &[f32]) -> Vec<u8> {
    xs.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn i64_bytes(xs: &[i64]) -> Vec<u8> {
    xs.iter().flat_map(|x| x.to_le_bytes()).collect()
}

#[test]
fn shipped_fashion_mnist_loads_with_checksums_and_balanced_classes() {
    let root = data::resolve("fashion-mnist");
    assert!(root.join("SHA256SUMS").is_file() && root.join("LICENSE").is_file());
    let ds = data::load("fashion-mnist").unwrap();
    assert_eq!(ds.name, "fashion-mnist");
    assert_eq!((ds.train.len(), ds.test.len()), (60_000, 10_000));
    assert_eq!((ds.train.c, ds.train.h, ds.train.w), (1, 28, 28));
    assert_eq!((ds.test.c, ds.test.h, ds.test.w), (1, 28, 28));
    assert!(matches!(ds.train.pixels, Pixels::U8(_)));
    assert_eq!(ds.num_classes, 10);
    assert_eq!(ds.class_names[0], "T-shirt/top");
    assert_eq!(ds.class_names[9], "Ankle boot");
    assert_eq!(ds.fixed_norm, Some(Normalization::fashion_mnist()));
    assert_eq!(ds.train.class_counts(10), vec![6000; 10]);
    assert_eq!(ds.test.class_counts(10), vec![1000; 10]);
    // The published statistics are the training set's own.
    let all: Vec<usize> = (0..ds.train.len()).collect();
    let own = Normalization::of_images(&ds.train, &all);
    assert!((own.mean[0] - 0.2860).abs() < 5e-4 && (own.std[0] - 0.3530).abs() < 5e-4, "{own:?}");
    // Whatever the first task, Fashion-MNIST keeps the published constants.
    let view = data::task_view(&ds.train, &[5, 6]);
    assert_eq!(ds.norm_for(&view), Normalization::fashion_mnist());
}

#[test]
fn gzipped_and_raw_idx_load_and_classes_default_to_numbers() {
    let d = idx_dir("ok", &[0, 2, 1, 2, 0], &[1, 0]);
    let ds = data::load(d.spec()).unwrap();
    assert_eq!((ds.train.len(), ds.test.len(), ds.train.image_len()), (5, 2, 12));
    assert_eq!(ds.train.labels, [0, 2, 1, 2, 0]);
    assert_eq!(ds.num_classes, 3);
    assert_eq!(ds.class_names, ["class 0", "class 1", "class 2"]);
    assert_eq!(ds.train.pixels, Pixels::U8(pixels(5, 4, 3)));
    // Other data: the first task's training images set the normalisation.
    assert_eq!(ds.fixed_norm, None);
    let view = data::task_view(&ds.train, &[0, 2]);
    assert_eq!(ds.norm_for(&view), Normalization::of_images(&ds.train, &view.indices));
    // The same bytes uncompressed, and classes.txt widening num_classes.
    let raw = std::fs::read(d.path("t10k-images-idx3-ubyte.gz")).unwrap();
    std::fs::remove_file(d.path("t10k-images-idx3-ubyte.gz")).unwrap();
    d.write("t10k-images-idx3-ubyte", &flate2_decode(&raw));
    d.write("classes.txt", b"a\nb\nc\nd\n\n");
    let ds2 = data::load(d.spec()).unwrap();
    assert_eq!(ds2.test.pixels, ds.test.pixels);
    assert_eq!((ds2.num_classes, ds2.class_names[3].as_str()), (4, "d"));
}

fn flate2_decode(z: &[u8]) -> Vec<u8> {
    use std::io::Read;
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(z).read_to_end(&mut out).unwrap();
    out
}

#[test]
fn truncated_gz_is_reported() {
    let d = idx_dir("trunc-gz", &[0, 1, 0, 1], &[0, 1]);
    let z = std::fs::read(d.path("train-images-idx3-ubyte.gz")).unwrap();
    d.write("train-images-idx3-ubyte.gz", &z[..z.len() - 12]);
    let e = load_err(&d, "train-images-idx3-ubyte.gz");
    assert!(e.contains("truncated"), "{e}");
}

#[test]
fn truncated_raw_idx_says_expected_and_got_bytes() {
    let d = idx_dir("trunc-raw", &[0, 1, 0], &[0, 1]);
    std::fs::remove_file(d.path("t10k-images-idx3-ubyte.gz")).unwrap();
    d.write("t10k-images-idx3-ubyte", &idx_bytes(&[2, 4, 3], &pixels(2, 4, 3)[..20]));
    let e = load_err(&d, "t10k-images-idx3-ubyte");
    assert!(e.contains("truncated") && e.contains("24 bytes") && e.contains("20 bytes"), "{e}");
}

#[test]
fn corrupt_gz_is_reported() {
    let d = idx_dir("corrupt-gz", &[0, 1, 0, 1], &[0, 1]);
    let mut z = std::fs::read(d.path("train-labels-idx1-ubyte.gz")).unwrap();
    let end = z.len() - 8;
    for b in &mut z[10..end] {
        *b = !*b;
    }
    d.write("train-labels-idx1-ubyte.gz", &z);
    let e = load_err(&d, "train-labels-idx1-ubyte.gz");
    assert!(e.contains("corrupt gzip stream"), "{e}");
}

#[test]
fn wrong_magic_is_reported() {
    let d = idx_dir("magic", &[0, 1], &[0, 1]);
    let mut bad = idx_bytes(&[2], &[0, 1]);
    bad[0] = 0x50;
    d.write("train-labels-idx1-ubyte.gz", &gz(&bad));
    let e = load_err(&d, "train-labels-idx1-ubyte.gz");
    assert!(e.contains("magic"), "{e}");
}

#[test]
fn image_label_count_mismatch_names_both_files_and_counts() {
    let d = idx_dir("count", &[0, 1, 0], &[0, 1]);
    d.write("train-labels-idx1-ubyte.gz", &gz(&idx_bytes(&[2], &[0, 1])));
    let e = load_err(&d, "train-images-idx3-ubyte.gz");
    assert!(
        e.contains("train-labels-idx1-ubyte.gz") && e.contains("3 images") && e.contains("2 labels"),
        "{e}"
    );
}

#[test]
fn label_beyond_classes_txt_names_value_and_index() {
    let d = idx_dir("label", &[0, 1, 0], &[0, 1, 3]);
    d.write("classes.txt", b"zero\none\ntwo\n");
    let e = load_err(&d, "t10k-labels-idx1-ubyte.gz");
    assert!(e.contains("label 3") && e.contains("index 2") && e.contains("classes.txt"), "{e}");
}

#[test]
fn sha256_mismatch_is_reported_and_a_match_passes() {
    let d = idx_dir("sha", &[0, 1], &[0, 1]);
    let good = |name: &str| data::file::sha256_hex(&std::fs::read(d.path(name)).unwrap());
    let names = ["train-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"];
    let sums: String = names.iter().map(|n| format!("{}  {n}\n", good(n))).collect();
    d.write("SHA256SUMS", sums.as_bytes());
    data::load(d.spec()).unwrap();
    let mut labels = std::fs::read(d.path("t10k-labels-idx1-ubyte.gz")).unwrap();
    *labels.last_mut().unwrap() ^= 1;
    d.write("t10k-labels-idx1-ubyte.gz", &labels);
    let e = load_err(&d, "t10k-labels-idx1-ubyte.gz");
    assert!(e.contains("SHA256 mismatch") && e.contains(&good("t10k-labels-idx1-ubyte.gz")), "{e}");
    // A listed file that is not one of the data files is checked too.
    let d2 = idx_dir("sha2", &[0, 1], &[0, 1]);
    d2.write("classes.txt", b"a\nb\n");
    d2.write("SHA256SUMS", format!("{}  classes.txt\n", "0".repeat(64)).as_bytes());
    let e = load_err(&d2, "classes.txt");
    assert!(e.contains("SHA256 mismatch"), "{e}");
}

#[test]
fn missing_directory_and_files_list_what_was_looked_for() {
    let d = TempDir::new("missing");
    let e = load_err(&d, "train-images-idx3-ubyte[.gz]");
    assert!(e.contains("train_images.npy"), "{e}");
    let gone = d.path("nope");
    let e = data::load(gone.to_str().unwrap()).unwrap_err().to_string();
    assert!(e.contains("nope") && e.contains("no such data directory") && !e.contains('\n'), "{e}");
    let d = idx_dir("partial", &[0, 1], &[0, 1]);
    std::fs::remove_file(d.path("t10k-labels-idx1-ubyte.gz")).unwrap();
    let e = load_err(&d, "t10k-labels-idx1-ubyte[.gz]");
    assert!(e.contains("missing"), "{e}");
}

#[test]
fn train_and_test_shapes_must_match() {
    let d = idx_dir("shape", &[0, 1], &[0, 1]);
    d.write("t10k-images-idx3-ubyte.gz", &gz(&idx_bytes(&[2, 3, 4], &pixels(2, 3, 4))));
    let e = load_err(&d, "t10k-images-idx3-ubyte.gz");
    assert!(e.contains("train-images-idx3-ubyte.gz") && e.contains("1×3×4") && e.contains("1×4×3"), "{e}");
}

#[test]
fn npy_round_trip_u8_nhw_and_f32_nchw() {
    let d = TempDir::new("npy");
    let train_px = pixels(3, 2, 2);
    d.write("train_images.npy", &npy("|u1", &[3, 2, 2], &train_px));
    d.write("train_labels.npy", &npy("<i8", &[3], &i64_bytes(&[0, 4, 1])));
    d.write("test_images.npy", &npy("|u1", &[1, 1, 2, 2], &[1, 2, 3, 4]));
    d.write("test_labels.npy", &npy("|u1", &[1], &[2]));
    let ds = data::load(d.spec()).unwrap();
    assert_eq!((ds.train.c, ds.train.h, ds.train.w, ds.train.len()), (1, 2, 2, 3));
    assert_eq!(ds.train.pixels, Pixels::U8(train_px));
    assert_eq!((ds.train.labels.clone(), ds.test.labels.clone()), (vec![0, 4, 1], vec![2]));
    assert_eq!(ds.num_classes, 5);

    let d = TempDir::new("npy-f32");
    let xs: Vec<f32> = (0..2 * 3 * 2 * 2).map(|i| i as f32 / 24.0).collect();
    d.write("train_images.npy", &npy("<f4", &[2, 3, 2, 2], &f32_bytes(&xs)));
    d.write("train_labels.npy", &npy("<i4", &[2], &[1, 0, 0, 0, 0, 0, 0, 0]));
    d.write("test_images.npy", &npy("<f4", &[1, 3, 2, 2], &f32_bytes(&xs[..12])));
    d.write("test_labels.npy", &npy("<u8", &[1], &1u64.to_le_bytes()));
    let ds = data::load(d.spec()).unwrap();
    assert_eq!((ds.train.c, ds.train.h, ds.train.w), (3, 2, 2));
    assert_eq!(ds.train.pixels, Pixels::F32(xs.clone()));
    assert_eq!(ds.train.labels, [1, 0]);
    // Per channel, over the first task's images (class 1: image 0).
    let norm = ds.norm_for(&data::task_view(&ds.train, &[1]));
    for (ch, m) in norm.mean.iter().enumerate() {
        let want = xs[ch * 4..ch * 4 + 4].iter().sum::<f32>() / 4.0;
        assert!((m - want).abs() < 1e-6, "{norm:?}");
    }
    let split = data::load_images(&d.path("test_images.npy")).unwrap();
    assert_eq!((split.len(), split.c, split.labels.len()), (1, 3, 0));
}

#[test]
fn npy_errors_name_the_file() {
    let d = TempDir::new("npy-bad");
    d.write("train_images.npy", &npy("|u1", &[2, 2], &[0; 4]));
    d.write("train_labels.npy", &npy("|u1", &[2], &[0, 1]));
    d.write("test_images.npy", &npy("|u1", &[1, 2, 2], &[0; 4]));
    d.write("test_labels.npy", &npy("|u1", &[1], &[0]));
    let e = load_err(&d, "train_images.npy");
    assert!(e.contains("(N,H,W)"), "{e}");
    d.write("train_images.npy", &npy("|u1", &[2, 2, 2], &[0; 8]));
    d.write("test_labels.npy", &npy("<i8", &[1], &i64_bytes(&[-1])));
    let e = load_err(&d, "test_labels.npy");
    assert!(e.contains("label -1"), "{e}");
    let mut fortran = npy("|u1", &[1], &[0]);
    let at = fortran.windows(5).position(|w| w == b"False").unwrap();
    fortran.splice(at..at + 5, *b"True ");
    d.write("test_labels.npy", &fortran);
    let e = load_err(&d, "test_labels.npy");
    assert!(e.contains("fortran_order"), "{e}");
}

#[test]
fn load_images_reads_idx_by_content_not_name() {
    let d = TempDir::new("predict");
    d.write("input.bin", &gz(&idx_bytes(&[2, 4, 3], &pixels(2, 4, 3))));
    let s = data::load_images(&d.path("input.bin")).unwrap();
    assert_eq!((s.len(), s.c, s.h, s.w), (2, 1, 4, 3));
    assert_eq!(s.pixels, Pixels::U8(pixels(2, 4, 3)));
}

#[test]
fn class_lists_tasks_and_protocols() {
    assert_eq!(data::parse_classes("0-4").unwrap(), [0, 1, 2, 3, 4]);
    assert_eq!(data::parse_classes("9,5,7").unwrap(), [5, 7, 9]);
    assert_eq!(data::parse_classes(" 0-2, 7,1 ").unwrap(), [0, 1, 2, 7]);
    for bad in ["", "a", "3-1", "1-", "1,,2", "-3", "99999999"] {
        let e = data::parse_classes(bad).unwrap_err().to_string();
        assert!(e.contains(&format!("'{bad}'")) && !e.contains('\n'), "{bad}: {e}");
    }
    assert_eq!(data::parse_tasks("0-4;5-9").unwrap(), [vec![0, 1, 2, 3, 4], vec![5, 6, 7, 8, 9]]);
    let e = data::parse_tasks("0-4;4-9").unwrap_err().to_string();
    assert!(e.contains("class 4") && e.contains("overlap"), "{e}");
    assert!(data::parse_tasks("0-4;").is_err());

    assert_eq!(data::protocol_tasks("two-task", 10).unwrap(), data::parse_tasks("0-4;5-9").unwrap());
    assert_eq!(
        data::protocol_tasks("split5", 10).unwrap(),
        data::parse_tasks("0,1;2,3;4,5;6,7;8,9").unwrap()
    );
    assert_eq!(data::protocol_tasks("split2", 10).unwrap(), data::parse_tasks("0-4;5-9").unwrap());
    assert!(data::protocol_tasks("split3", 10).unwrap_err().to_string().contains("3 equal tasks"));
    let e = data::protocol_tasks("three-task", 10).unwrap_err().to_string();
    assert!(e.contains("two-task") && e.contains("splitN"), "{e}");
    assert!(data::protocol_tasks("split0", 10).is_err());
}

#[test]
fn task_views_and_class_presence() {
    let s = Split::new(Pixels::U8(vec![0; 6]), vec![5, 1, 7, 5, 2, 9], 1, 1, 1);
    let v = data::task_view(&s, &data::parse_classes("5-9").unwrap());
    assert_eq!(v.indices, [0, 2, 3, 5]);
    assert_eq!(v.clone().limit(3).len(), 3);
    let mut labels = Vec::new();
    s.labels_of(&v.indices, &mut labels);
    data::to_local(&v.classes, &mut labels);
    assert_eq!(labels, [0, 2, 0, 4]);
    let e = data::check_classes_present(&s, &[1, 11], "data/mine").unwrap_err().to_string();
    assert_eq!(e, "class 11 is not in data/mine: it has classes 1,2,5,7,9");
}

#[test]
fn fill_batch_writes_normalised_images_contiguously() {
    let px: Vec<u8> = vec![0, 255, 128, 64, 1, 2, 3, 4];
    let s = Split::new(Pixels::U8(px.clone()), vec![0, 1], 1, 2, 2);
    let norm = Normalization::fashion_mnist();
    let mut out = vec![f32::NAN; 12];
    s.fill_batch(&[1, 0, 1], &norm, &mut out);
    let expect = |p: u8| (p as f32 / 255.0 - 0.2860) / 0.3530;
    let want: Vec<f32> = [&px[4..], &px[..4], &px[4..]].concat().into_iter().map(expect).collect();
    assert_eq!(out, want);
    assert!((out[5] - (1.0 - 0.2860) / 0.3530).abs() < 1e-6);
    let f = Split::new(Pixels::F32(vec![0.25, 0.75]), vec![], 1, 1, 1);
    let mut out = [0.0f32; 1];
    f.fill_batch(&[1], &Normalization { mean: vec![0.5], std: vec![0.5] }, &mut out);
    assert_eq!(out, [0.5]);
}

#[test]
fn epoch_orders_are_seeded_permutations() {
    let a = Rng::derive(7, 500).permutation(1000);
    assert_eq!(a, Rng::derive(7, 500).permutation(1000), "same seed and stream, same order");
    assert_ne!(a, Rng::derive(8, 500).permutation(1000));
    assert_ne!(a, Rng::derive(7, 501).permutation(1000));
    let mut sorted = a.clone();
    sorted.sort_unstable();
    assert_eq!(sorted, (0..1000).collect::<Vec<_>>());
}
