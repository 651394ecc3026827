//! Finding, checking and loading a data directory into a [`Dataset`].
//!
//! A directory holds train and test files as IDX (MNIST style, optionally
//! gzipped) or NPY, an optional `classes.txt` (one name per line) and an
//! optional `SHA256SUMS`. Everything that can be wrong with a user's files is
//! checked here, so training never meets a label it has no head for.

use std::path::{Path, PathBuf};

use super::file::{read_decoded, Checksums};
use super::folder::{self, FolderOptions};
use super::{idx, npy, Dataset, Pixels, Split, FASHION_MNIST};
use crate::{Error, Result};

/// IDX names (each may also end in `.gz`): train images, labels, test images, labels.
const IDX_NAMES: [&str; 4] = [
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
];
/// NPY names in the same order.
const NPY_NAMES: [&str; 4] = ["train_images.npy", "train_labels.npy", "test_images.npy", "test_labels.npy"];

const CLASSES_TXT: &str = "classes.txt";

/// Which reader a directory's files need.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Format {
    Idx,
    Npy,
}

/// The four data files of a directory, in `IDX_NAMES` order.
struct Files {
    format: Format,
    paths: [PathBuf; 4],
}

/// Turn a `--data` argument into a directory: `fashion-mnist` means
/// `./datasets/fashion-mnist` when run from a checkout, else the copy next to
/// this crate's manifest; anything else is a path.
pub fn resolve(spec: &str) -> PathBuf {
    if spec != FASHION_MNIST {
        return PathBuf::from(spec);
    }
    let local = Path::new("datasets").join(FASHION_MNIST);
    if local.is_dir() {
        local
    } else {
        PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/datasets/fashion-mnist"))
    }
}

/// Load a data set from a directory or the name `fashion-mnist` (see [`resolve`]).
/// Checks checksums, shapes, counts and labels against `classes.txt`. A
/// directory without IDX/NPY files but with sub-folders is read as an image
/// folder with default options (see [`load_with`]).
pub fn load(spec: &str) -> Result<Dataset> {
    load_with(spec, &FolderOptions::default())
}

/// [`load`], reading an image folder with `opts` (IDX/NPY data ignores
/// them). What the image loader chose and did is one line on stderr.
pub fn load_with(spec: &str, opts: &FolderOptions) -> Result<Dataset> {
    let root = resolve(spec);
    if !root.is_dir() {
        let msg = format!(
            "no such data directory; expected a directory with {}, an image folder, or the name {FASHION_MNIST}",
            wanted()
        );
        return Err(Error::format(&root, msg));
    }
    if !has_data_files(&root) && folder::is_image_folder(&root) {
        let (data, summary) = folder::load_folder(&root, opts)?;
        eprintln!("images: {summary}");
        return Ok(data);
    }
    let files = find_files(&root)?;
    let sums = Checksums::read_dir(&root)?;
    let train = read_split(&files, 0, sums.as_ref())?;
    let test = read_split(&files, 2, sums.as_ref())?;
    check_same_shape(&files, &train, &test)?;
    let names = read_class_names(&root)?;
    if let Some(names) = &names {
        check_labels_named(&files.paths[1], &train.labels, names.len())?;
        check_labels_named(&files.paths[3], &test.labels, names.len())?;
    }
    if let Some(sums) = &sums {
        let done: Vec<&str> = files.paths.iter().filter_map(|p| p.file_name()?.to_str()).collect();
        sums.verify_rest(&root, &done)?;
    }
    Ok(Dataset::assemble(root, train, test, names, false))
}

/// Load unlabelled images (IDX or NPY, raw or gzipped, told apart by content)
/// for prediction. The split's `labels` are empty.
pub fn load_images(path: &Path) -> Result<Split> {
    let bytes = read_decoded(path, None)?;
    let (pixels, [_, c, h, w]) = if bytes.starts_with(npy::MAGIC) {
        npy::to_images(path, npy::parse(path, bytes)?)?
    } else {
        let (v, [n, h, w]) = idx::to_images(path, idx::parse(path, bytes, 3)?)?;
        (Pixels::U8(v), [n, 1, h, w])
    };
    Ok(Split { pixels, labels: Vec::new(), c, h, w })
}

/// What a data directory must contain, for messages.
fn wanted() -> String {
    let idx: Vec<String> = IDX_NAMES.iter().map(|n| format!("{n}[.gz]")).collect();
    format!("IDX files {} or NPY files {}", idx.join(", "), NPY_NAMES.join(", "))
}

/// Whether any IDX or NPY data file is in `dir`: those win over sub-folders.
fn has_data_files(dir: &Path) -> bool {
    IDX_NAMES.iter().any(|n| find_idx(dir, n).is_some()) || NPY_NAMES.iter().any(|n| dir.join(n).is_file())
}

/// Pick IDX if any IDX file is present, else NPY; all four must exist.
fn find_files(dir: &Path) -> Result<Files> {
    let idx: Vec<Option<PathBuf>> = IDX_NAMES.iter().map(|n| find_idx(dir, n)).collect();
    let npy: Vec<Option<PathBuf>> =
        NPY_NAMES.iter().map(|n| Some(dir.join(n)).filter(|p| p.is_file())).collect();
    let (format, found, names, suffix) = if idx.iter().any(Option::is_some) {
        (Format::Idx, idx, IDX_NAMES, "[.gz]")
    } else if npy.iter().any(Option::is_some) {
        (Format::Npy, npy, NPY_NAMES, "")
    } else {
        let msg = format!("no data files found; looked for {}, or class sub-folders of images", wanted());
        return Err(Error::format(dir, msg));
    };
    let missing: Vec<String> =
        found.iter().zip(names).filter(|(p, _)| p.is_none()).map(|(_, n)| format!("{n}{suffix}")).collect();
    if !missing.is_empty() {
        return Err(Error::format(dir, format!("incomplete data: missing {}", missing.join(", "))));
    }
    let paths = found.into_iter().map(Option::unwrap).collect::<Vec<_>>().try_into().expect("four files");
    Ok(Files { format, paths })
}

fn find_idx(dir: &Path, name: &str) -> Option<PathBuf> {
    [dir.join(name), dir.join(format!("{name}.gz"))].into_iter().find(|p| p.is_file())
}

/// Read the images and labels at `files.paths[first..first + 2]`.
fn read_split(files: &Files, first: usize, sums: Option<&Checksums>) -> Result<Split> {
    let (images, labels) = (&files.paths[first], &files.paths[first + 1]);
    let sha = |p: &Path| sums.and_then(|s| s.get(p.file_name()?.to_str()?));
    let (pixels, [n, c, h, w]) = match files.format {
        Format::Idx => {
            let (v, [n, h, w]) = idx::read_images(images, sha(images))?;
            (Pixels::U8(v), [n, 1, h, w])
        }
        Format::Npy => npy::read_images(images, sha(images))?,
    };
    let labels_v = match files.format {
        Format::Idx => idx::read_labels(labels, sha(labels))?,
        Format::Npy => npy::read_labels(labels, sha(labels))?,
    };
    if n != labels_v.len() {
        let msg = format!("has {n} images but {} has {} labels", labels.display(), labels_v.len());
        return Err(Error::format(images, msg));
    }
    if n == 0 {
        return Err(Error::format(images, "has no images"));
    }
    Ok(Split { pixels, labels: labels_v, c, h, w })
}

fn check_same_shape(files: &Files, train: &Split, test: &Split) -> Result<()> {
    let (a, b) = ((train.c, train.h, train.w), (test.c, test.h, test.w));
    if a == b {
        return Ok(());
    }
    let msg = format!(
        "test images are {}×{}×{} but the train images in {} are {}×{}×{}; both must have the same shape",
        b.0,
        b.1,
        b.2,
        files.paths[0].display(),
        a.0,
        a.1,
        a.2
    );
    Err(Error::format(&files.paths[2], msg))
}

/// Read `classes.txt` if present: one name per line, trailing blank lines ignored.
fn read_class_names(dir: &Path) -> Result<Option<Vec<String>>> {
    let path = dir.join(CLASSES_TXT);
    if !path.is_file() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
    let mut names: Vec<String> = text.lines().map(|l| l.trim().to_string()).collect();
    while names.last().is_some_and(String::is_empty) {
        names.pop();
    }
    if let Some(i) = names.iter().position(String::is_empty) {
        return Err(Error::format(&path, format!("line {} is empty: every class needs a name", i + 1)));
    }
    if names.is_empty() {
        return Err(Error::format(&path, "names no classes"));
    }
    Ok(Some(names))
}

/// Every label must have a name in `classes.txt`.
fn check_labels_named(path: &Path, labels: &[u32], num_names: usize) -> Result<()> {
    match labels.iter().position(|&l| l as usize >= num_names) {
        None => Ok(()),
        Some(i) => {
            let msg = format!(
                "label {} at index {i} is out of range: {CLASSES_TXT} names only {num_names} classes (0-{})",
                labels[i],
                num_names - 1
            );
            Err(Error::format(path, msg))
        }
    }
}
