//! Image folders through the public API: both layouts, class ids, channel and
//! size choices, the seeded stratified split, the decoded-image cache, every
//! kind of bad input (each a one-line error naming the file), and pixel-exact
//! agreement with the shipped Fashion-MNIST IDX files.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime};

use image::{GrayImage, Luma, Rgb, RgbImage};
use lwf_engine::data::folder::{CacheStatus, Layout};
use lwf_engine::data::{self, load_folder, Dataset, FolderOptions, FolderSummary, Pixels, Split};

/// A fresh directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        static N: AtomicUsize = AtomicUsize::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("lwf-images-test-{}-{n}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    /// `dir/rel`, its parent folders created.
    fn file(&self, rel: &str) -> PathBuf {
        let p = self.0.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        p
    }

    /// A grey image of one value (h × w) at `rel`; the extension picks PNG or JPEG.
    fn grey(&self, rel: &str, (h, w): (u32, u32), v: u8) -> PathBuf {
        let p = self.file(rel);
        GrayImage::from_pixel(w, h, Luma([v])).save(&p).unwrap();
        p
    }

    /// A colour image of one colour.
    fn rgb(&self, rel: &str, (h, w): (u32, u32), v: [u8; 3]) -> PathBuf {
        let p = self.file(rel);
        RgbImage::from_pixel(w, h, Rgb(v)).save(&p).unwrap();
        p
    }

    fn write(&self, rel: &str, bytes: &[u8]) -> PathBuf {
        let p = self.file(rel);
        std::fs::write(&p, bytes).unwrap();
        p
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn opts() -> FolderOptions {
    FolderOptions::default()
}

fn load(dir: &TempDir, o: &FolderOptions) -> (Dataset, FolderSummary) {
    load_folder(&dir.0, o).unwrap_or_else(|e| panic!("load failed: {e}"))
}

/// The error of a load that must fail: one line, naming `names`.
fn error(dir: &TempDir, o: &FolderOptions, names: &Path) -> String {
    let e = load_folder(&dir.0, o).expect_err("load should fail").to_string();
    assert!(!e.contains('\n'), "not one line: {e}");
    assert!(e.contains(&names.display().to_string()), "{e} does not name {}", names.display());
    e
}

fn bytes(s: &Split) -> &[u8] {
    match &s.pixels {
        Pixels::U8(v) => v,
        Pixels::F32(_) => panic!("image folders load as bytes"),
    }
}

fn image(s: &Split, i: usize) -> &[u8] {
    let k = s.image_len();
    &bytes(s)[i * k..(i + 1) * k]
}

/// A mixed folder: PNG and JPEG, grey and colour, mostly 6×8 (one 10×10).
/// Train: ant 3, cat 3, dog 2; test: ant 1, dog 1 (no cat).
fn mixed(dir: &TempDir) {
    dir.grey("train/ant/a.jpg", (6, 8), 40);
    dir.grey("train/ant/b.jpeg", (6, 8), 50);
    dir.grey("train/ant/c.png", (10, 10), 77);
    for (i, v) in [[200, 0, 0], [0, 200, 0], [0, 0, 200]].into_iter().enumerate() {
        dir.rgb(&format!("train/cat/{i}.PNG"), (6, 8), v);
    }
    dir.rgb("train/dog/a.png", (6, 8), [10, 20, 30]);
    dir.rgb("train/dog/b.jpg", (6, 8), [90, 90, 90]);
    dir.grey("test/ant/t.png", (6, 8), 60);
    dir.rgb("test/dog/t.png", (6, 8), [1, 2, 3]);
}

#[test]
fn train_test_layout_gives_sorted_class_ids_shapes_and_counts() {
    let dir = TempDir::new("mixed");
    mixed(&dir);
    let (ds, summary) = load(&dir, &opts());
    assert_eq!(ds.class_names, ["ant", "cat", "dog"]);
    assert_eq!(ds.num_classes, 3);
    assert_eq!((ds.train.c, ds.train.h, ds.train.w), (3, 6, 8), "colour, the most common size");
    assert_eq!((ds.test.c, ds.test.h, ds.test.w), (3, 6, 8));
    assert_eq!(ds.train.class_counts(3), [3, 3, 2]);
    assert_eq!(ds.test.class_counts(3), [1, 0, 1]);
    assert_eq!(summary.layout, Layout::TrainTest);
    assert!(summary.size_chosen);
    assert_eq!((summary.train, summary.test, summary.decoded), (8, 2, 10));
    // Files in class, then name, order: train/dog/a.png is image 6, planar CHW.
    let dog = image(&ds.train, 6);
    assert!(dog[..48].iter().all(|&v| v == 10) && dog[48..96].iter().all(|&v| v == 20));
    assert!(dog[96..].iter().all(|&v| v == 30), "{dog:?}");
    // The 10×10 grey image is resized (a constant stays constant) and copied to RGB.
    assert!(image(&ds.train, 2).iter().all(|&v| v == 77), "{:?}", image(&ds.train, 2));
    let line = summary.to_string();
    assert!(line.contains("3 classes") && line.contains("3×6×8") && !line.contains('\n'), "{line}");
}

#[test]
fn grey_folders_load_as_one_channel_and_options_force_channels_and_size() {
    let dir = TempDir::new("grey");
    for (i, class) in ["x", "y"].iter().enumerate() {
        dir.grey(&format!("{class}/1.png"), (5, 7), 10 * i as u8);
        dir.grey(&format!("{class}/2.jpg"), (5, 7), 100);
        dir.grey(&format!("{class}/3.png"), (9, 9), 200);
    }
    let (ds, _) = load(&dir, &opts());
    assert_eq!((ds.train.c, ds.train.h, ds.train.w), (1, 5, 7));
    let forced = FolderOptions { channels: Some(3), image_size: Some((4, 3)), ..opts() };
    let (ds, summary) = load(&dir, &forced);
    assert_eq!((ds.train.c, ds.train.h, ds.train.w), (3, 4, 3));
    assert_eq!(ds.train.len() + ds.test.len(), 6);
    assert!(!summary.size_chosen);
    // Different options are a different cache, not a stale one.
    assert_eq!(summary.cache, CacheStatus::Miss);
}

/// Classes a, b, c of 10, 5 and 6 grey 4×4 images, each of its own value.
fn single(dir: &TempDir) {
    let mut v = 0u8;
    for (class, n) in [("a", 10), ("b", 5), ("c", 6)] {
        for i in 0..n {
            v += 1;
            dir.grey(&format!("{class}/{i:02}.png"), (4, 4), v);
        }
    }
}

/// The value of every image of a split, with its label.
fn ids(s: &Split) -> Vec<(u32, u8)> {
    (0..s.len()).map(|i| (s.labels[i], image(s, i)[0])).collect()
}

#[test]
fn single_folder_split_is_stratified_seeded_and_stable() {
    let dir = TempDir::new("single");
    single(&dir);
    let (ds, summary) = load(&dir, &opts());
    assert_eq!(summary.layout, Layout::Single);
    assert_eq!(ds.class_names, ["a", "b", "c"]);
    assert_eq!(ds.test.class_counts(3), [2, 1, 1], "round(n · 0.2) per class");
    assert_eq!(ds.train.class_counts(3), [8, 4, 5]);
    let mut all: Vec<u8> = ids(&ds.train).iter().chain(&ids(&ds.test)).map(|p| p.1).collect();
    all.sort();
    assert_eq!(all, (1..=21).collect::<Vec<u8>>(), "every image once");
    // Same seed: same split, whether decoded or read from the cache.
    let (again, s2) = load(&dir, &opts());
    assert_eq!(s2.cache, CacheStatus::Hit);
    assert_eq!((ids(&again.train), ids(&again.test)), (ids(&ds.train), ids(&ds.test)));
    let other = (1..10).map(|seed| load(&dir, &FolderOptions { seed, ..opts() }).0);
    assert!(other.map(|d| ids(&d.test)).any(|t| t != ids(&ds.test)), "the seed changes the split");
    let half = load(&dir, &FolderOptions { test_fraction: 0.5, ..opts() }).0;
    assert_eq!(half.test.class_counts(3), [5, 3, 3]);
}

#[test]
fn the_cache_is_used_on_the_second_load_and_rebuilt_when_a_file_changes() {
    let dir = TempDir::new("cache");
    mixed(&dir);
    let (first, s1) = load(&dir, &opts());
    assert_eq!((s1.cache.clone(), s1.decoded, s1.cache_error.clone()), (CacheStatus::Miss, 10, None));
    let cache = s1.cache_path.clone().unwrap();
    assert!(cache.starts_with(&dir.0) && cache.is_file(), "{}", cache.display());
    let (second, s2) = load(&dir, &opts());
    assert_eq!((s2.cache, s2.decoded), (CacheStatus::Hit, 0), "nothing decoded the second time");
    assert_eq!(
        (&second.train, &second.test, &second.class_names),
        (&first.train, &first.test, &first.class_names)
    );

    // Rewrite one file (same size, so only the time tells): the cache is stale.
    let p = dir.rgb("train/dog/a.png", (6, 8), [11, 21, 31]);
    let later = SystemTime::now() + Duration::from_secs(5);
    std::fs::File::options().write(true).open(&p).unwrap().set_modified(later).unwrap();
    let (third, s3) = load(&dir, &opts());
    assert_eq!((s3.cache, s3.decoded), (CacheStatus::Stale, 10));
    assert_eq!(image(&third.train, 6)[0], 11);
    assert_eq!(load(&dir, &opts()).1.cache, CacheStatus::Hit);

    // A damaged cache is ignored and rebuilt, never an error.
    let good = std::fs::read(&cache).unwrap();
    for bad in [b"junk".to_vec(), good[..good.len() / 2].to_vec(), {
        let mut b = good.clone();
        let last = b.len() - 1;
        b[last] ^= 1;
        b
    }] {
        std::fs::write(&cache, bad).unwrap();
        let (ds, s) = load(&dir, &opts());
        assert_eq!((s.cache, s.decoded), (CacheStatus::Stale, 10));
        assert_eq!(ds.train, third.train);
    }

    // A cache directory elsewhere; or none at all.
    let elsewhere = TempDir::new("cache-dir");
    let sub = elsewhere.0.join("sub");
    let in_dir = FolderOptions { cache_dir: Some(sub.clone()), ..opts() };
    let s = load(&dir, &in_dir).1;
    assert!(s.cache == CacheStatus::Miss && s.cache_path.as_ref().unwrap().starts_with(&sub), "{s:?}");
    assert_eq!(load(&dir, &in_dir).1.cache, CacheStatus::Hit);
    let off = load(&dir, &FolderOptions { cache: false, ..opts() }).1;
    assert_eq!((off.cache, off.decoded, off.cache_path), (CacheStatus::Off, 10, None));
}

/// Two good classes of three images, so each bad input below is the only fault.
fn two_classes(dir: &TempDir) {
    for class in ["p", "q"] {
        dir.grey(&format!("{class}/1.png"), (4, 4), 1);
        dir.rgb(&format!("{class}/2.jpg"), (4, 4), [5, 6, 7]);
        dir.rgb(&format!("{class}/3.png"), (4, 4), [8, 9, 10]);
    }
}

#[test]
fn corrupt_and_truncated_images_name_the_file() {
    let src = TempDir::new("src");
    let png = std::fs::read(src.grey("x.png", (32, 32), 9)).unwrap();
    // Noise, so that most of the JPEG is scan data and the cut falls inside it.
    let noisy = RgbImage::from_fn(64, 64, |x, y| {
        Rgb([((x * 37) ^ (y * 91)) as u8, (x * y) as u8, (x + 3 * y) as u8])
    });
    let jpg_path = src.file("noisy.jpg");
    noisy.save(&jpg_path).unwrap();
    let jpg = std::fs::read(jpg_path).unwrap();
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("p/cut.png", png[..png.len() / 2].to_vec()),
        ("p/cut.jpg", jpg[..jpg.len() * 2 / 3].to_vec()),
        ("p/garbage.png", b"this is not an image at all".to_vec()),
        ("p/empty.jpg", Vec::new()),
        ("p/flipped.png", {
            let mut b = png.clone();
            let mid = b.len() - 20;
            b[mid] ^= 0xff;
            b
        }),
    ];
    for (name, content) in cases {
        let dir = TempDir::new("bad");
        two_classes(&dir);
        let p = dir.write(name, &content);
        let e = error(&dir, &opts(), &p);
        assert!(e.contains("image") || e.contains("JPEG") || e.contains("PNG"), "{e}");
        if name == "p/cut.jpg" {
            assert!(e.contains("truncated JPEG"), "the decoder alone would fill in grey: {e}");
        }
    }
}

#[test]
fn non_images_are_skipped_with_one_warning_or_refused_under_strict() {
    let dir = TempDir::new("notes");
    two_classes(&dir);
    let notes = dir.write("q/notes.txt", b"hello");
    dir.write("q/.DS_Store", b"hidden files are ignored");
    dir.write("README.md", b"files beside the class folders are ignored");
    let (ds, summary) = load(&dir, &opts());
    assert_eq!(ds.train.len() + ds.test.len(), 6);
    assert_eq!(summary.skipped, std::slice::from_ref(&notes));
    let e = error(&dir, &FolderOptions { strict: true, ..opts() }, &notes);
    assert!(e.contains("strict"), "{e}");
}

#[test]
fn bad_folder_structures_name_the_folder() {
    let dir = TempDir::new("empty-class");
    two_classes(&dir);
    let empty = dir.0.join("r");
    std::fs::create_dir_all(&empty).unwrap();
    dir.write("r/readme.txt", b"only a note");
    assert!(error(&dir, &opts(), &empty).contains("empty class folder"));

    let dir = TempDir::new("extra-test-class");
    mixed(&dir);
    let p = dir.grey("test/eel/1.png", (6, 8), 3);
    let e = error(&dir, &opts(), p.parent().unwrap());
    assert!(e.contains("no folder in"), "{e}");

    let dir = TempDir::new("no-test");
    dir.grey("train/a/1.png", (2, 2), 1);
    dir.grey("train/b/1.png", (2, 2), 1);
    assert!(error(&dir, &opts(), &dir.0.join("test")).contains("no such folder"));

    let dir = TempDir::new("one-class");
    dir.grey("only/1.png", (2, 2), 1);
    dir.grey("only/2.png", (2, 2), 1);
    assert!(error(&dir, &opts(), &dir.0).contains("only one class"));

    let dir = TempDir::new("too-few");
    dir.grey("a/1.png", (2, 2), 1);
    dir.grey("b/1.png", (2, 2), 1);
    assert!(error(&dir, &opts(), &dir.0).contains("test set"));
}

/// CRC-32 (IEEE), for hand-made PNG chunks.
fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in bytes {
        crc ^= b as u32;
        for _ in 0..8 {
            crc = if crc & 1 == 1 { (crc >> 1) ^ 0xEDB8_8320 } else { crc >> 1 };
        }
    }
    !crc
}

fn chunk(kind: &[u8; 4], data: &[u8]) -> Vec<u8> {
    let mut c = (data.len() as u32).to_be_bytes().to_vec();
    c.extend_from_slice(kind);
    c.extend_from_slice(data);
    c.extend_from_slice(&crc32(&[&kind[..], data].concat()).to_be_bytes());
    c
}

/// A PNG whose header claims `w × h` grey pixels (tens of GB decoded) over a
/// few bytes of data: it must be refused from the header alone.
fn huge_png(w: u32, h: u32) -> Vec<u8> {
    let mut ihdr = w.to_be_bytes().to_vec();
    ihdr.extend_from_slice(&h.to_be_bytes());
    ihdr.extend_from_slice(&[8, 0, 0, 0, 0]);
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    png.extend(chunk(b"IHDR", &ihdr));
    png.extend(chunk(b"IDAT", &[0x78, 0x9c, 0x63, 0, 0, 0, 1, 0, 1]));
    png.extend(chunk(b"IEND", &[]));
    png
}

#[test]
fn images_over_the_pixel_limit_are_refused_before_decoding() {
    let dir = TempDir::new("huge");
    two_classes(&dir);
    let p = dir.write("p/bomb.png", &huge_png(200_000, 100_000));
    let e = error(&dir, &opts(), &p);
    assert!(e.contains("200000×100000") && e.contains("over the limit"), "{e}");

    let dir = TempDir::new("limit");
    two_classes(&dir);
    let p = dir.grey("q/big.png", (20, 20), 1);
    let e = error(&dir, &FolderOptions { max_pixels: 399, ..opts() }, &p);
    assert!(e.contains("400 pixels"), "{e}");
}

#[test]
fn data_load_reads_an_image_folder_and_idx_files_still_win() {
    let dir = TempDir::new("via-load");
    mixed(&dir);
    let ds = data::load(dir.0.to_str().unwrap()).unwrap();
    assert_eq!(ds.class_names, ["ant", "cat", "dog"]);
    assert_eq!((ds.train.len(), ds.test.len()), (8, 2));
    assert!(ds.name.starts_with("lwf-images-test"));
    let with = FolderOptions { image_size: Some((3, 3)), channels: Some(1), ..opts() };
    let ds = data::load_with(dir.0.to_str().unwrap(), &with).unwrap();
    assert_eq!((ds.train.c, ds.train.h, ds.train.w), (1, 3, 3));
    let e = data::load(dir.0.join("nope").to_str().unwrap()).unwrap_err().to_string();
    assert!(e.contains("no such data directory"), "{e}");

    // IDX files beside sub-folders: the IDX data is what is loaded.
    let idx = |magic: u8, dims: &[u32], body: &[u8]| {
        let mut b = vec![0, 0, 8, magic];
        dims.iter().for_each(|d| b.extend_from_slice(&d.to_be_bytes()));
        b.extend_from_slice(body);
        b
    };
    let both = TempDir::new("idx-and-folders");
    two_classes(&both);
    for prefix in ["train", "t10k"] {
        both.write(&format!("{prefix}-images-idx3-ubyte"), &idx(3, &[2, 2, 2], &[0, 1, 2, 3, 4, 5, 6, 7]));
        both.write(&format!("{prefix}-labels-idx1-ubyte"), &idx(1, &[2], &[0, 1]));
    }
    let ds = data::load(both.0.to_str().unwrap()).unwrap();
    assert_eq!((ds.train.len(), ds.train.h, ds.class_names[0].as_str()), (2, 2, "class 0"));
}

/// Sorted (label, image bytes) of a split: equal data in any order compares equal.
fn multiset(s: &Split) -> Vec<(u32, Vec<u8>)> {
    let mut v: Vec<(u32, Vec<u8>)> = (0..s.len()).map(|i| (s.labels[i], image(s, i).to_vec())).collect();
    v.sort();
    v
}

#[test]
fn fashion_mnist_written_as_png_folders_loads_byte_identical() {
    let fm = data::load(data::FASHION_MNIST).unwrap();
    let (train, test) =
        (fm.train.subset(&(0..200).collect::<Vec<_>>()), fm.test.subset(&(0..100).collect::<Vec<_>>()));
    let dir = TempDir::new("fmnist");
    for (side, split) in [("train", &train), ("test", &test)] {
        for i in 0..split.len() {
            let img = GrayImage::from_raw(28, 28, image(split, i).to_vec()).unwrap();
            img.save(dir.file(&format!("{side}/{}/{i:04}.png", split.labels[i]))).unwrap();
        }
    }
    let (ds, summary) = load(&dir, &opts());
    let digits: Vec<String> = (0..10).map(|d| d.to_string()).collect();
    assert_eq!(ds.class_names, digits, "folder names sort as the IDX labels");
    assert_eq!((ds.train.c, ds.train.h, ds.train.w), (1, 28, 28));
    assert_eq!((summary.train, summary.test), (200, 100));
    assert_eq!(multiset(&ds.train), multiset(&train));
    assert_eq!(multiset(&ds.test), multiset(&test));
}

/// Not a check: how long Fashion-MNIST's 70,000 images take to decode as
/// PNG folders (DIR/train|test/<class name>/), and to read back from the
/// cache. `cargo test --release --test images -- --ignored --nocapture`;
/// with `LWF_TIMING_DIR=DIR` the folder is written there and kept (to time
/// `lwf-engine` on it).
#[test]
#[ignore = "timing, not a check: writes and decodes 70,000 PNGs; run by hand"]
fn timing_decoded_vs_cached() {
    let fm = data::load(data::FASHION_MNIST).unwrap();
    let kept = std::env::var_os("LWF_TIMING_DIR").map(PathBuf::from);
    let temp = TempDir::new("timing");
    let root = kept.clone().unwrap_or_else(|| temp.0.clone());
    let t = std::time::Instant::now();
    for (side, split) in [("train", &fm.train), ("test", &fm.test)] {
        for i in 0..split.len() {
            let class = &fm.class_names[split.labels[i] as usize].replace('/', "-");
            let path = root.join(side).join(class).join(format!("{i:05}.png"));
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            GrayImage::from_raw(28, 28, image(split, i).to_vec()).unwrap().save(path).unwrap();
        }
    }
    eprintln!("wrote 70,000 PNGs in {:.1} s to {}", t.elapsed().as_secs_f64(), root.display());
    for _ in 0..2 {
        let t = std::time::Instant::now();
        let s = load_folder(&root, &opts()).unwrap().1;
        eprintln!("70,000 PNGs 28×28: {:?} in {:.3} s ({s})", s.cache, t.elapsed().as_secs_f64());
    }
}
