//! The `lwf-engine` binary as the CLI tests drive it: temp directories,
//! data directories sliced from the shipped Fashion-MNIST, small learnable
//! image folders, and running the binary with one-line-error checks.
//! Shared by tests/cli.rs and tests/onnx.rs.

use lwf_engine::data::{self, Dataset, Pixels};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;
pub const BIN: &str = env!("CARGO_BIN_EXE_lwf-engine");

/// The shipped data directory.
pub fn shipped() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("datasets").join("fashion-mnist")
}

/// The shipped data, loaded once per test binary (source of the slices).
pub fn fmnist() -> &'static Dataset {
    static DATA: OnceLock<Dataset> = OnceLock::new();
    DATA.get_or_init(|| data::load("fashion-mnist").expect("the shipped Fashion-MNIST loads"))
}

// ---- temp dirs and files --------------------------------------------------------

/// A fresh directory under the system temp dir, unique per process and call,
/// removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static N: AtomicUsize = AtomicUsize::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("lwf-cli-test-{}-{n}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }

    pub fn s(&self) -> &str {
        self.0.to_str().unwrap()
    }

    pub fn write(&self, name: &str, bytes: &[u8]) {
        std::fs::write(self.path(name), bytes).unwrap();
    }

    /// Names of the entries in the directory, sorted.
    pub fn entries(&self) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(&self.0)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// A version-1.0 `.npy` file: little-endian, C order.
pub fn npy(descr: &str, shape: &[usize], payload: &[u8]) -> Vec<u8> {
    let shape = match shape {
        [n] => format!("({n},)"),
        _ => format!("({})", shape.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(", ")),
    };
    let mut header = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}");
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let mut v = b"\x93NUMPY\x01\x00".to_vec();
    v.extend_from_slice(&(header.len() as u16).to_le_bytes());
    v.extend_from_slice(header.as_bytes());
    v.extend_from_slice(payload);
    v
}

/// The first `n` images of `split` whose class is in `classes`, as
/// (N, side, side) bytes and their labels; `side` 14 averages 2×2 blocks.
pub fn slice(split: &data::Split, classes: &[u32], n: usize, side: usize) -> (Vec<u8>, Vec<u8>) {
    let Pixels::U8(px) = &split.pixels else { panic!("the shipped images are bytes") };
    let (mut images, mut labels) = (Vec::new(), Vec::new());
    for i in (0..split.len()).filter(|&i| classes.contains(&split.labels[i])).take(n) {
        let img = &px[i * 784..(i + 1) * 784];
        match side {
            28 => images.extend_from_slice(img),
            14 => {
                for y in 0..14 {
                    for x in 0..14 {
                        let at = |dy: usize, dx: usize| img[(2 * y + dy) * 28 + 2 * x + dx] as u32;
                        images.push(((at(0, 0) + at(0, 1) + at(1, 0) + at(1, 1)) / 4) as u8);
                    }
                }
            }
            _ => unreachable!(),
        }
        labels.push(split.labels[i] as u8);
    }
    (images, labels)
}

/// An NPY data directory holding only `classes`: the first `n_train` train
/// and `n_test` test images of those classes, `side`×`side`, and the shipped
/// `classes.txt`.
pub fn npy_dir(tag: &str, classes: &[u32], n_train: usize, n_test: usize, side: usize) -> TempDir {
    let d = TempDir::new(tag);
    let fm = fmnist();
    for (prefix, split, n) in [("train", &fm.train, n_train), ("test", &fm.test, n_test)] {
        let (images, labels) = slice(split, classes, n, side);
        let count = labels.len();
        d.write(&format!("{prefix}_images.npy"), &npy("|u1", &[count, side, side], &images));
        d.write(&format!("{prefix}_labels.npy"), &npy("|u1", &[count], &labels));
    }
    std::fs::copy(shipped().join("classes.txt"), d.path("classes.txt")).unwrap();
    d
}

/// A copy of the shipped IDX files (and `classes.txt`, and `SHA256SUMS`
/// when `sums`), to be broken by the caller.
pub fn fm_copy(tag: &str, sums: bool) -> TempDir {
    let d = TempDir::new(tag);
    let mut names = vec![
        "train-images-idx3-ubyte.gz",
        "train-labels-idx1-ubyte.gz",
        "t10k-images-idx3-ubyte.gz",
        "t10k-labels-idx1-ubyte.gz",
        "classes.txt",
    ];
    if sums {
        names.push("SHA256SUMS");
    }
    for name in names {
        std::fs::copy(shipped().join(name), d.path(name)).unwrap();
    }
    d
}

pub fn gunzip(path: &Path) -> Vec<u8> {
    use std::io::Read;
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(std::fs::File::open(path).unwrap()).read_to_end(&mut out).unwrap();
    out
}

// ---- running the binary ---------------------------------------------------------

pub fn run(args: &[&str]) -> Output {
    Command::new(BIN).args(args).output().expect("the lwf-engine binary runs")
}

pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Run and require success; returns stdout.
pub fn ok(args: &[&str]) -> String {
    let out = run(args);
    assert!(
        out.status.success(),
        "lwf-engine {} failed ({}):\nstdout: {}\nstderr: {}",
        args.join(" "),
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stdout)
}

/// Run and require a failure whose stderr is exactly one line,
/// `lwf-engine: error: …`, containing every string of `want`; returns it.
/// (Experiments may print progress notes before it: `notes_ok`.)
pub fn fails(args: &[&str], want: &[&str]) -> String {
    fails_with(args, want, false)
}

pub fn fails_with(args: &[&str], want: &[&str], notes_ok: bool) -> String {
    let out = run(args);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    let what = format!("lwf-engine {}\nstdout: {stdout}\nstderr: {stderr}", args.join(" "));
    assert!(!out.status.success(), "should have failed: {what}");
    assert_ne!(out.status.code(), Some(0), "{what}");
    assert!(out.status.code().is_some(), "killed by a signal, not an error exit: {what}");
    assert!(stdout.is_empty(), "nothing belongs on stdout after an error: {what}");
    let lines: Vec<&str> = stderr.lines().collect();
    let errors: Vec<&&str> = lines.iter().filter(|l| l.contains("error")).collect();
    assert_eq!(errors.len(), 1, "exactly one error line expected: {what}");
    if !notes_ok {
        assert_eq!(lines.len(), 1, "stderr must be one line: {what}");
    }
    let line = lines.last().copied().unwrap_or_default();
    assert!(line.starts_with("lwf-engine: error: "), "{what}");
    assert!(!line.contains("panicked") && !line.contains("RUST_BACKTRACE"), "a panic, not an error: {what}");
    for w in want {
        assert!(line.contains(w), "the error should mention '{w}': {line}");
    }
    eprintln!("{line}"); // shown with --nocapture, to read the messages as a user would
    line.to_string()
}

/// Quick training flags: one epoch, small batches, a small Fisher estimate.
pub const QUICK: [&str; 6] = ["--epochs", "1", "--batch-size", "64", "--ewc-samples", "50"];

pub fn with<'a>(args: &[&'a str], extra: &[&'a str]) -> Vec<&'a str> {
    args.iter().chain(extra).copied().collect()
}

pub fn json(s: &str) -> Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("not JSON ({e}): {s}"))
}

pub fn frac(v: &Value, what: &str) -> f64 {
    let x = v.as_f64().unwrap_or_else(|| panic!("{what} is not a number: {v}"));
    assert!((0.0..=1.0).contains(&x), "{what} = {x} is not in [0, 1]");
    x
}

/// A small learnable image: the class's colour plus seeded noise, with a
/// bright square whose corner the class also sets. Saved as PNG or JPEG (by
/// `name`'s extension), grey or colour, at `h` × `w`.
pub fn class_image(path: &Path, class: usize, i: usize, (h, w): (u32, u32), grey: bool) {
    const COLOURS: [[u8; 3]; 6] =
        [[200, 40, 40], [40, 200, 40], [40, 40, 200], [200, 200, 40], [40, 200, 200], [200, 40, 200]];
    let mut state = (class * 1000 + i) as u64 * 0x9E37_79B9_7F4A_7C15 + 1;
    let mut noise = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state % 41) as i32 - 20
    };
    let (cy, cx) = ((class as u32 / 2) * h / 2, (class as u32 % 2) * w / 2);
    let mut img = image::RgbImage::new(w, h);
    for (x, y, px) in img.enumerate_pixels_mut() {
        let inside = (cy..cy + h / 2).contains(&y) && (cx..cx + w / 2).contains(&x);
        for (ch, v) in px.0.iter_mut().enumerate() {
            let base = if inside { 250 } else { COLOURS[class][ch] as i32 };
            *v = (base + noise()).clamp(0, 255) as u8;
        }
    }
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    if grey {
        image::DynamicImage::ImageRgb8(img).to_luma8().save(path).unwrap();
    } else {
        img.save(path).unwrap();
    }
}

/// `dir/<name>/…` for each (class index, name): `n` images each, mostly
/// 16×16 colour PNGs, with JPEGs, grey images and other sizes mixed in.
pub fn image_folder(dir: &Path, classes: &[(usize, &str)], n: usize) {
    for &(class, name) in classes {
        for i in 0..n {
            let ext = if i % 3 == 1 { "jpg" } else { "png" };
            let size = match i % 7 {
                3 => (20, 20),
                5 => (12, 18),
                _ => (16, 16),
            };
            class_image(&dir.join(name).join(format!("img{i:02}.{ext}")), class, i, size, i % 5 == 2);
        }
    }
}
