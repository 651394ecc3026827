//! Image folders: one sub-folder of PNG/JPEG files per class.
//!
//! Two layouts are read:
//! - `DIR/train/<class>/…` and `DIR/test/<class>/…`, the split given;
//! - `DIR/<class>/…`, split into train and test by a seeded, stratified
//!   fraction ([`FolderOptions::test_fraction`]).
//!
//! Class ids are the class folders' names in sorted order, so the same folder
//! always gives the same ids. Every image is converted to one channel count
//! and resized to one size, then stored as bytes (N, C, H, W) like IDX data.
//! Decoding thousands of files is slow next to reading one IDX file, so the
//! decoded tensor is cached beside the data ([`cache`]) and the second load
//! reads one file instead.

mod cache;
mod decode;

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::{Instant, UNIX_EPOCH};

use super::{Dataset, Pixels, Split};
use crate::rng::Rng;
use crate::{Error, Result};

/// The share of each class held out for testing in the single-folder layout.
pub const DEFAULT_TEST_FRACTION: f64 = 0.2;

/// Images with more pixels (width × height) are refused before decoding:
/// 40 MP admits any camera photo but not a decompression bomb.
pub const DEFAULT_MAX_PIXELS: u64 = 40_000_000;

/// File extensions taken as images (compared case-insensitively).
pub const IMAGE_EXTENSIONS: [&str; 3] = ["png", "jpg", "jpeg"];

/// How an image folder is read. `Default` is what `data::load` uses.
#[derive(Clone, Debug, PartialEq)]
pub struct FolderOptions {
    /// Single-folder layout only: the share of each class held out for test, in (0, 1).
    pub test_fraction: f64,
    /// Seed of that split.
    pub seed: u64,
    /// Resize every image to (height, width); `None`: the most common size.
    pub image_size: Option<(usize, usize)>,
    /// 1 (grey) or 3 (RGB); `None`: 1 if every image is grey, else 3.
    pub channels: Option<usize>,
    /// Refuse files that are not images instead of skipping them.
    pub strict: bool,
    /// Read and write the decoded-image cache.
    pub cache: bool,
    /// Where the cache file goes; `None`: in the data folder itself.
    pub cache_dir: Option<PathBuf>,
    /// Refuse an image with more pixels than this, judged from its header.
    pub max_pixels: u64,
}

impl Default for FolderOptions {
    fn default() -> Self {
        FolderOptions {
            test_fraction: DEFAULT_TEST_FRACTION,
            seed: 0,
            image_size: None,
            channels: None,
            strict: false,
            cache: true,
            cache_dir: None,
            max_pixels: DEFAULT_MAX_PIXELS,
        }
    }
}

/// Which of the two layouts a folder has.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    /// `DIR/train/<class>` and `DIR/test/<class>`.
    TrainTest,
    /// `DIR/<class>`, split by [`FolderOptions::test_fraction`].
    Single,
}

/// What happened with the cache on one load.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CacheStatus {
    /// Caching was turned off.
    Off,
    /// The cache was valid: nothing was decoded.
    Hit,
    /// There was no cache: everything was decoded.
    Miss,
    /// A cache existed but was stale (files or options changed) or unreadable;
    /// everything was decoded again.
    Stale,
}

/// What [`load_folder`] did, for the user (its `Display` is one line).
#[derive(Clone, Debug, PartialEq)]
pub struct FolderSummary {
    pub root: PathBuf,
    pub layout: Layout,
    pub class_names: Vec<String>,
    pub train: usize,
    pub test: usize,
    pub channels: usize,
    pub height: usize,
    pub width: usize,
    /// Whether the size was chosen (the most common one) rather than given.
    pub size_chosen: bool,
    /// Images decoded on this load: 0 on a cache hit.
    pub decoded: usize,
    pub seconds: f64,
    pub cache: CacheStatus,
    pub cache_path: Option<PathBuf>,
    /// Why the cache could not be written, if it could not (loading still succeeds).
    pub cache_error: Option<String>,
    /// Files skipped as not images (by extension).
    pub skipped: Vec<PathBuf>,
}

impl fmt::Display for FolderSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let how =
            if self.size_chosen { "the most common size" } else { "as set by --image-size or the model" };
        write!(
            f,
            "{}: {} classes, {} train + {} test images, {}×{}×{} ({how}); ",
            self.root.display(),
            self.class_names.len(),
            self.train,
            self.test,
            self.channels,
            self.height,
            self.width
        )?;
        let cache = self.cache_path.as_ref().map(|p| p.display().to_string()).unwrap_or_default();
        match self.cache {
            CacheStatus::Hit => write!(f, "read from cache {cache}")?,
            CacheStatus::Off => write!(f, "decoded {} images, no cache", self.decoded)?,
            CacheStatus::Miss | CacheStatus::Stale => {
                write!(f, "decoded {} images in {:.1} s", self.decoded, self.seconds)?;
                match &self.cache_error {
                    None => write!(f, ", cached in {cache}")?,
                    Some(e) => write!(f, ", cache not written: {e}")?,
                }
            }
        }
        Ok(())
    }
}

/// One image file found while scanning.
#[derive(Clone, Debug)]
struct Entry {
    path: PathBuf,
    /// Path relative to the data folder, `/`-separated: the cache key's name.
    rel: String,
    class: u32,
    /// In `test/` (train/test layout only).
    test: bool,
    len: u64,
    mtime_ns: u128,
}

/// Everything found in a data folder, before decoding.
struct Scan {
    layout: Layout,
    class_names: Vec<String>,
    /// Sorted by class, then file name.
    entries: Vec<Entry>,
    skipped: Vec<PathBuf>,
}

/// Whether `dir` looks like an image folder: it has a sub-folder that is not
/// hidden. (Whether the classes in it are usable is [`load_folder`]'s call.)
pub fn is_image_folder(dir: &Path) -> bool {
    let Ok(read) = std::fs::read_dir(dir) else { return false };
    read.flatten().any(|e| !is_hidden(&e.file_name().to_string_lossy()) && e.path().is_dir())
}

/// Load an image folder (either layout) into a [`Dataset`] whose class names
/// are the class folders' names. Prints one warning line on stderr when
/// non-image files were skipped; the returned summary says the rest.
pub fn load_folder(root: &Path, opts: &FolderOptions) -> Result<(Dataset, FolderSummary)> {
    check_options(opts)?;
    let start = Instant::now();
    let scan = scan(root, opts.strict)?;
    if let Some(line) = skipped_warning(root, &scan.skipped) {
        eprintln!("{line}");
    }
    let labels: Vec<u32> = scan.entries.iter().map(|e| e.class).collect();
    // Split before decoding: an unusable split should not cost a decode.
    let (train_idx, test_idx) = train_test(root, &scan, &labels, opts)?;
    let (images, cache) = cache::load_or_decode(root, &entries_of(&scan), opts)?;
    let (c, h, w) = (images.c, images.h, images.w);
    let all = Split::new(Pixels::U8(images.pixels), labels, c, h, w);
    let (train, test) = (all.subset(&train_idx), all.subset(&test_idx));
    drop(all);
    let summary = FolderSummary {
        root: root.to_path_buf(),
        layout: scan.layout,
        class_names: scan.class_names.clone(),
        train: train.len(),
        test: test.len(),
        channels: c,
        height: h,
        width: w,
        size_chosen: opts.image_size.is_none(),
        decoded: images.decoded,
        seconds: start.elapsed().as_secs_f64(),
        cache: cache.status,
        cache_path: cache.path,
        cache_error: cache.error,
        skipped: scan.skipped,
    };
    Ok((Dataset::assemble(root.to_path_buf(), train, test, Some(scan.class_names), true), summary))
}

/// Decode image files as a model reads them: each converted to `channels`
/// (1 or 3) and resized to `size` (height, width) through the loader's own
/// decoder, into an unlabelled split in `paths` order. Errors name the file.
pub fn decode_files(paths: &[PathBuf], channels: usize, size: (usize, usize)) -> Result<Split> {
    let opts = FolderOptions { channels: Some(channels), image_size: Some(size), ..FolderOptions::default() };
    check_options(&opts)?;
    let keys: Vec<decode::FileKey> =
        paths.iter().map(|p| decode::FileKey { path: p, rel: "", len: 0, mtime_ns: 0 }).collect();
    let root = paths.first().map_or(Path::new("."), |p| p.as_path());
    let images = decode::decode_all(root, &keys, &opts)?;
    Ok(Split { pixels: Pixels::U8(images.pixels), labels: Vec::new(), c: images.c, h: images.h, w: images.w })
}

/// Every `.png`/`.jpg`/`.jpeg` file under `dir` and its sub-folders, sorted
/// by path, hidden entries skipped. A folder without one is an error.
pub fn image_files_under(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for path in sorted_files(&d)? {
            if path.is_dir() {
                stack.push(path);
            } else if is_image_file(&path) {
                found.push(path);
            }
        }
    }
    if found.is_empty() {
        return Err(Error::format(dir, "no .png, .jpg or .jpeg images in this folder or its sub-folders"));
    }
    found.sort();
    Ok(found)
}

/// The indices of the train and test images in `scan.entries`.
fn train_test(
    root: &Path,
    scan: &Scan,
    labels: &[u32],
    opts: &FolderOptions,
) -> Result<(Vec<usize>, Vec<usize>)> {
    let (train, test) = match scan.layout {
        Layout::TrainTest => split_indices(scan.entries.iter().map(|e| e.test)),
        Layout::Single => stratified_split(labels, scan.class_names.len(), opts.test_fraction, opts.seed),
    };
    if test.is_empty() {
        let msg = format!(
            "no image is left for the test set: {} of each class rounds to none; add images or raise the test fraction",
            opts.test_fraction
        );
        return Err(Error::format(root, msg));
    }
    Ok((train, test))
}

/// The one warning line for skipped files, if any were.
fn skipped_warning(root: &Path, skipped: &[PathBuf]) -> Option<String> {
    let first = skipped.first()?;
    Some(format!(
        "warning: {}: skipped {} file(s) that are not .png/.jpg/.jpeg images (first: {})",
        root.display(),
        skipped.len(),
        first.display()
    ))
}

fn check_options(opts: &FolderOptions) -> Result<()> {
    let f = opts.test_fraction;
    if !(f > 0.0 && f < 1.0) {
        return Err(Error::Config(format!("test fraction {f} must be above 0 and below 1")));
    }
    if let Some(c) = opts.channels.filter(|c| ![1, 3].contains(c)) {
        return Err(Error::Config(format!(
            "{c} channels asked for: images can be read as 1 (grey) or 3 (RGB)"
        )));
    }
    if let Some((h, w)) = opts.image_size {
        let pixels = (h as u64).saturating_mul(w as u64);
        if h == 0 || w == 0 || pixels > opts.max_pixels {
            let msg =
                format!("image size {h}×{w} must be at least 1×1 and at most {} pixels", opts.max_pixels);
            return Err(Error::Config(msg));
        }
    }
    Ok(())
}

/// The indices whose flag is false (train), and those whose flag is true (test).
fn split_indices(test: impl Iterator<Item = bool>) -> (Vec<usize>, Vec<usize>) {
    let (mut train_idx, mut test_idx) = (Vec::new(), Vec::new());
    for (i, t) in test.enumerate() {
        if t {
            test_idx.push(i)
        } else {
            train_idx.push(i)
        }
    }
    (train_idx, test_idx)
}

/// Hold out `round(n · fraction)` images of each class (at most n − 1, so
/// every class keeps a training image), chosen by a generator seeded with
/// the seed and the class id: one class's files changing leaves the other
/// classes' split as it was. Both sides keep file order.
fn stratified_split(
    labels: &[u32],
    num_classes: usize,
    fraction: f64,
    seed: u64,
) -> (Vec<usize>, Vec<usize>) {
    let mut test_mask = vec![false; labels.len()];
    for class in 0..num_classes {
        let members: Vec<usize> = (0..labels.len()).filter(|&i| labels[i] as usize == class).collect();
        let n_test =
            ((members.len() as f64 * fraction).round() as usize).min(members.len().saturating_sub(1));
        let order = Rng::derive(seed, class as u64).permutation(members.len());
        for &k in &order[..n_test] {
            test_mask[members[k]] = true;
        }
    }
    split_indices(test_mask.into_iter())
}

fn is_hidden(name: &str) -> bool {
    name.starts_with('.')
}

/// Whether `path` names an image by its extension (compared case-insensitively).
pub fn is_image_file(path: &Path) -> bool {
    let ext = path.extension().map(|e| e.to_string_lossy().to_ascii_lowercase());
    ext.is_some_and(|e| IMAGE_EXTENSIONS.contains(&e.as_str()))
}

/// Find the layout, the classes and every image file.
fn scan(root: &Path, strict: bool) -> Result<Scan> {
    if !root.is_dir() {
        return Err(Error::format(root, "no such image folder"));
    }
    let (train_dir, test_dir) = (root.join("train"), root.join("test"));
    if !train_dir.is_dir() && !test_dir.is_dir() {
        let names = class_folders(root, 2)?;
        let mut scan = Scan::new(Layout::Single, names.clone());
        scan.add_classes(root, root, &names, false, strict)?;
        return Ok(scan);
    }
    for (dir, other) in [(&train_dir, "test"), (&test_dir, "train")] {
        if !dir.is_dir() {
            let msg = format!("no such folder; a data folder with {other}/ needs both train/ and test/");
            return Err(Error::format(dir, msg));
        }
    }
    let names = class_folders(&train_dir, 2)?;
    // The test set may lack a class, but not have one training never saw.
    let test_names = class_folders(&test_dir, 1)?;
    if let Some(extra) = test_names.iter().find(|n| !names.contains(n)) {
        let msg = format!("this test class has no folder in {}", train_dir.display());
        return Err(Error::format(&test_dir.join(extra), msg));
    }
    let mut scan = Scan::new(Layout::TrainTest, names.clone());
    scan.add_classes(root, &train_dir, &names, false, strict)?;
    scan.add_classes(root, &test_dir, &test_names, true, strict)?;
    Ok(scan)
}

/// The sorted names of the class folders (non-hidden sub-folders) of `dir`;
/// fewer than `min` is an error (one class is nothing to learn).
fn class_folders(dir: &Path, min: usize) -> Result<Vec<String>> {
    let read = std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))?;
    let mut names: Vec<String> = read
        .flatten()
        .filter(|e| e.path().is_dir())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !is_hidden(n))
        .collect();
    names.sort();
    match names.len() {
        n if n >= min => Ok(names),
        0 => Err(Error::format(dir, "no class folders: expected one sub-folder of images per class")),
        _ => Err(Error::format(
            dir,
            format!("only one class folder ({}): at least two classes are needed", names[0]),
        )),
    }
}

impl Scan {
    fn new(layout: Layout, class_names: Vec<String>) -> Scan {
        Scan { layout, class_names, entries: Vec::new(), skipped: Vec::new() }
    }

    /// Add the images of the class folders `names` under `dir`; a class's id
    /// is its name's position in `class_names`.
    fn add_classes(
        &mut self,
        root: &Path,
        dir: &Path,
        names: &[String],
        test: bool,
        strict: bool,
    ) -> Result<()> {
        for name in names {
            let class = self.class_names.iter().position(|n| n == name).expect("a known class") as u32;
            let folder = dir.join(name);
            let before = self.entries.len();
            for path in sorted_files(&folder)? {
                if is_image_file(&path) && path.is_file() {
                    self.entries.push(entry(root, path, class, test)?);
                } else if strict {
                    let msg = "not a .png, .jpg or .jpeg image (strict mode refuses other files)";
                    return Err(Error::format(&path, msg));
                } else {
                    self.skipped.push(path);
                }
            }
            if self.entries.len() == before {
                return Err(Error::format(
                    &folder,
                    "empty class folder: it has no .png, .jpg or .jpeg images",
                ));
            }
        }
        Ok(())
    }
}

/// The non-hidden entries of `dir`, sorted by name.
fn sorted_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let read = std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))?;
    let mut paths: Vec<PathBuf> =
        read.flatten().filter(|e| !is_hidden(&e.file_name().to_string_lossy())).map(|e| e.path()).collect();
    paths.sort();
    Ok(paths)
}

fn entry(root: &Path, path: PathBuf, class: u32, test: bool) -> Result<Entry> {
    let meta = std::fs::metadata(&path).map_err(|e| Error::io(&path, e))?;
    let mtime_ns =
        meta.modified().ok().and_then(|t| t.duration_since(UNIX_EPOCH).ok()).map_or(0, |d| d.as_nanos());
    let rel = path.strip_prefix(root).unwrap_or(&path);
    let rel = rel.components().map(|c| c.as_os_str().to_string_lossy()).collect::<Vec<_>>().join("/");
    Ok(Entry { path, rel, class, test, len: meta.len(), mtime_ns })
}

/// The files to decode, as the cache and decoder see them.
fn entries_of(scan: &Scan) -> Vec<decode::FileKey<'_>> {
    scan.entries
        .iter()
        .map(|e| decode::FileKey { path: &e.path, rel: &e.rel, len: e.len, mtime_ns: e.mtime_ns })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stratified_split_holds_out_a_rounded_share_of_each_class_and_is_seeded() {
        let labels: Vec<u32> = [vec![0; 10], vec![1; 5], vec![2; 1]].concat();
        let (train, test) = stratified_split(&labels, 3, 0.2, 7);
        let count = |idx: &[usize], c: u32| idx.iter().filter(|&&i| labels[i] == c).count();
        assert_eq!([count(&test, 0), count(&test, 1), count(&test, 2)], [2, 1, 0]);
        assert_eq!(train.len() + test.len(), labels.len());
        assert!(train.windows(2).all(|w| w[0] < w[1]) && test.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(stratified_split(&labels, 3, 0.2, 7), (train.clone(), test.clone()));
        let differs = (0..20).any(|s| stratified_split(&labels, 3, 0.2, s).1 != test);
        assert!(differs);
    }

    #[test]
    fn options_are_checked() {
        let bad = |o: FolderOptions| check_options(&o).unwrap_err().to_string();
        assert!(bad(FolderOptions { test_fraction: 1.0, ..Default::default() }).contains("test fraction"));
        assert!(bad(FolderOptions { channels: Some(2), ..Default::default() }).contains("2 channels"));
        assert!(bad(FolderOptions { image_size: Some((0, 5)), ..Default::default() }).contains("0×5"));
        assert!(check_options(&FolderOptions::default()).is_ok());
    }
}
