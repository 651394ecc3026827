//! Data: IDX/NPY readers, image folders ([`folder`]), the in-memory data
//! set, class splits into tasks and seeded batching.
//!
//! Images stay in their file's element type ([`Pixels`]): 60,000 Fashion-MNIST
//! images are 47 MB as bytes but 188 MB as f32. They are scaled and normalised
//! only when a batch is filled ([`Split::fill_batch`]), which is cheap next to
//! a training step.

pub mod augment;
pub mod file;
pub mod folder;
pub mod idx;
mod load;
pub mod npy;
pub mod split;

use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

pub use folder::{load_folder, FolderOptions, FolderSummary};
pub use load::{load, load_images, load_with, resolve};
pub use split::{
    check_classes_present, format_classes, joint_split, local_label, parse_classes, parse_tasks,
    protocol_tasks, task_view, to_local, ClassList, ClassRef, Protocol, TaskList, TaskView,
};

/// The name that resolves to the shipped Fashion-MNIST directory.
pub const FASHION_MNIST: &str = "fashion-mnist";

/// Image pixels in their stored type.
#[derive(Clone, Debug, PartialEq)]
pub enum Pixels {
    /// Bytes 0..=255, scaled by 1/255 (as torchvision's `ToTensor`).
    U8(Vec<u8>),
    /// Already in [0, 1] units; used as is.
    F32(Vec<f32>),
}

impl Pixels {
    /// The number of pixel values (all images, all channels).
    pub fn len(&self) -> usize {
        match self {
            Pixels::U8(v) => v.len(),
            Pixels::F32(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Pixel `i` in [0, 1] units.
    pub fn value(&self, i: usize) -> f32 {
        match self {
            Pixels::U8(v) => v[i] as f32 / 255.0,
            Pixels::F32(v) => v[i],
        }
    }
}

/// Per-channel normalisation `(x − mean[c]) / std[c]`, x in [0, 1] units.
/// One value stands for every channel (Fashion-MNIST's, and checkpoints
/// written before normalisation was per channel).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Normalization {
    pub mean: Vec<f32>,
    pub std: Vec<f32>,
}

impl Normalization {
    /// The usual Fashion-MNIST training-set statistics (and the reference
    /// run's): kept as constants so the accuracy tables stay comparable.
    pub fn fashion_mnist() -> Normalization {
        Normalization { mean: vec![0.2860], std: vec![0.3530] }
    }

    /// No change: mean 0, std 1.
    pub fn identity() -> Normalization {
        Normalization { mean: vec![0.0], std: vec![1.0] }
    }

    /// The mean and std of channel `c` (the single value when there is one).
    pub fn channel(&self, c: usize) -> (f32, f32) {
        let pick = |v: &[f32]| if v.len() == 1 { v[0] } else { v[c] };
        (pick(&self.mean), pick(&self.std))
    }

    /// Whether this normalisation fits images of `channels` channels: one
    /// value or one per channel, finite means and positive finite stds.
    pub fn check(&self, channels: usize) -> std::result::Result<(), String> {
        let n = self.mean.len();
        if n != self.std.len() || !(n == 1 || n == channels) {
            return Err(format!(
                "the normalisation has {n} means and {} stds for {channels}-channel images (expected 1 or {channels} of each)",
                self.std.len()
            ));
        }
        if self.mean.iter().any(|m| !m.is_finite()) || self.std.iter().any(|s| !(s.is_finite() && *s > 0.0)) {
            return Err(format!(
                "the normalisation {:?} / {:?} is not finite with positive stds",
                self.mean, self.std
            ));
        }
        Ok(())
    }

    /// Per channel, the mean and (population) standard deviation of images
    /// `idx` of `split`: a user's own data is normalised by its first task's
    /// training images. Accumulated in f64 so millions of values sum exactly
    /// enough; a constant channel gets std 1 rather than a division by zero.
    pub fn of_images(split: &Split, idx: &[usize]) -> Normalization {
        let (k, hw) = (split.image_len(), split.h * split.w);
        let (mut mean, mut std) = (Vec::with_capacity(split.c), Vec::with_capacity(split.c));
        for ch in 0..split.c {
            let planes = idx.iter().map(|&i| i * k + ch * hw..i * k + (ch + 1) * hw);
            let (sum, sum_sq, n) = match &split.pixels {
                Pixels::U8(v) => moments_u8(planes.map(|r| &v[r])),
                Pixels::F32(v) => moments_f32(planes.map(|r| &v[r])),
            };
            if n == 0 {
                return Normalization::identity();
            }
            let m = sum / n as f64;
            let sd = (sum_sq / n as f64 - m * m).max(0.0).sqrt();
            mean.push(m as f32);
            std.push(if sd < 1e-6 { 1.0 } else { sd as f32 });
        }
        Normalization { mean, std }
    }
}

/// Sum, sum of squares and count in [0, 1] units, via a byte histogram (exact).
fn moments_u8<'a>(planes: impl Iterator<Item = &'a [u8]>) -> (f64, f64, usize) {
    let mut hist = [0u64; 256];
    let mut n = 0;
    for plane in planes {
        n += plane.len();
        for &p in plane {
            hist[p as usize] += 1;
        }
    }
    let (mut s, mut s2) = (0.0f64, 0.0f64);
    for (p, &c) in hist.iter().enumerate() {
        let x = p as f64 / 255.0;
        s += c as f64 * x;
        s2 += c as f64 * x * x;
    }
    (s, s2, n)
}

fn moments_f32<'a>(planes: impl Iterator<Item = &'a [f32]>) -> (f64, f64, usize) {
    let (mut s, mut s2, mut n) = (0.0f64, 0.0f64, 0);
    for plane in planes {
        n += plane.len();
        for &x in plane {
            s += x as f64;
            s2 += x as f64 * x as f64;
        }
    }
    (s, s2, n)
}

/// `out[j] = f(src[j])`: one straight loop the compiler vectorises. Serial
/// on purpose: a batch is ~100k values (~0.2 ms), and splitting it over
/// rayon measured slower on the 2-vCPU target.
#[inline]
fn map_into<T: Copy>(out: &mut [f32], src: &[T], f: impl Fn(T) -> f32) {
    for (d, &p) in out.iter_mut().zip(src) {
        *d = f(p);
    }
}

/// One side of a data set (train or test): images (N, C, H, W) and labels.
#[derive(Clone, Debug, PartialEq)]
pub struct Split {
    pub pixels: Pixels,
    /// Global class indices. Empty for unlabelled inputs ([`load_images`]).
    pub labels: Vec<u32>,
    pub c: usize,
    pub h: usize,
    pub w: usize,
}

impl Split {
    /// Build a split, panicking with both sizes if pixels and labels disagree
    /// (a programming error; files are checked with proper errors by [`load`]).
    pub fn new(pixels: Pixels, labels: Vec<u32>, c: usize, h: usize, w: usize) -> Split {
        let s = Split { pixels, labels, c, h, w };
        assert!(s.image_len() > 0, "Split::new: empty image shape {c}×{h}×{w}");
        assert_eq!(s.pixels.len() % s.image_len(), 0, "Split::new: pixels not a whole number of {c}×{h}×{w}");
        let n = s.len();
        assert!(
            s.labels.is_empty() || s.labels.len() == n,
            "Split::new: {n} images, {} labels",
            s.labels.len()
        );
        s
    }

    /// The number of images.
    pub fn len(&self) -> usize {
        match self.image_len() {
            0 => self.labels.len(),
            k => self.pixels.len() / k,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Values per image: c·h·w.
    pub fn image_len(&self) -> usize {
        self.c * self.h * self.w
    }

    /// Write the normalised images `idx` contiguously as (N, C, H, W) into the
    /// front of `out`. Called every training step, so it allocates nothing and
    /// each image is one straight, vectorisable loop.
    ///
    /// Panics if `out` is shorter than `idx.len() · image_len()` or an index
    /// is out of range.
    pub fn fill_batch(&self, idx: &[usize], norm: &Normalization, out: &mut [f32]) {
        let k = self.image_len();
        assert!(
            out.len() >= idx.len() * k,
            "fill_batch: out has {} values, need {}",
            out.len(),
            idx.len() * k
        );
        let hw = self.h * self.w;
        for (dst, &i) in out.chunks_exact_mut(k).zip(idx) {
            for (ch, plane) in dst.chunks_exact_mut(hw).enumerate() {
                let (mean, std) = norm.channel(ch);
                let at = i * k + ch * hw;
                match &self.pixels {
                    Pixels::U8(v) => map_into(plane, &v[at..at + hw], |p| (p as f32 / 255.0 - mean) / std),
                    Pixels::F32(v) => map_into(plane, &v[at..at + hw], |p| (p - mean) / std),
                }
            }
        }
    }

    /// The labels of examples `idx`, replacing the contents of `out`.
    pub fn labels_of(&self, idx: &[usize], out: &mut Vec<u32>) {
        out.clear();
        out.extend(idx.iter().map(|&i| self.labels[i]));
    }

    /// This split's images followed by `other`'s; bytes stay bytes unless
    /// either side holds f32 pixels.
    pub fn concat(self, other: Split) -> Split {
        let (a, b) = (self, other);
        let pixels = match (a.pixels, b.pixels) {
            (Pixels::U8(mut x), Pixels::U8(y)) => {
                x.extend(y);
                Pixels::U8(x)
            }
            (x, y) => {
                let to_f32 = |p: Pixels| match p {
                    Pixels::U8(v) => v.iter().map(|&p| p as f32 / 255.0).collect::<Vec<f32>>(),
                    Pixels::F32(v) => v,
                };
                let mut x = to_f32(x);
                x.extend(to_f32(y));
                Pixels::F32(x)
            }
        };
        let mut labels = a.labels;
        labels.extend(b.labels);
        Split::new(pixels, labels, a.c, a.h, a.w)
    }

    /// A new split holding only examples `idx`, in that order (small test
    /// sets, the joint baseline's kept data).
    pub fn subset(&self, idx: &[usize]) -> Split {
        let k = self.image_len();
        let pixels = match &self.pixels {
            Pixels::U8(v) => Pixels::U8(idx.iter().flat_map(|&i| &v[i * k..(i + 1) * k]).copied().collect()),
            Pixels::F32(v) => {
                Pixels::F32(idx.iter().flat_map(|&i| &v[i * k..(i + 1) * k]).copied().collect())
            }
        };
        let labels =
            if self.labels.is_empty() { Vec::new() } else { idx.iter().map(|&i| self.labels[i]).collect() };
        Split { pixels, labels, c: self.c, h: self.h, w: self.w }
    }

    /// The number of examples of each class 0..num_classes.
    pub fn class_counts(&self, num_classes: usize) -> Vec<usize> {
        let mut counts = vec![0; num_classes];
        for &l in &self.labels {
            if let Some(c) = counts.get_mut(l as usize) {
                *c += 1;
            }
        }
        counts
    }
}

/// A loaded data set: train and test splits of the same image shape.
#[derive(Clone, Debug)]
pub struct Dataset {
    /// The directory's name (`fashion-mnist` for the shipped data).
    pub name: String,
    /// The directory it was loaded from.
    pub root: PathBuf,
    pub train: Split,
    pub test: Split,
    /// One name per class; `classes.txt` or "class 0", "class 1", ….
    pub class_names: Vec<String>,
    /// max(label) + 1 over both splits, at least the number of names.
    pub num_classes: usize,
    /// A normalisation fixed for this data set whatever the task
    /// (Fashion-MNIST's published constants); `None`: measured on the first
    /// task's training images ([`Dataset::norm_for`]).
    pub fixed_norm: Option<Normalization>,
    /// Class ids are the positions of the class folders' sorted names (an
    /// image folder), so they are matched to a model's by name
    /// ([`Dataset::align_classes`]).
    pub ids_from_names: bool,
}

impl Dataset {
    /// Name the data set, count the classes and fix Fashion-MNIST's normalisation.
    pub(crate) fn assemble(
        root: PathBuf,
        train: Split,
        test: Split,
        names: Option<Vec<String>>,
        ids_from_names: bool,
    ) -> Dataset {
        let max_label = train.labels.iter().chain(&test.labels).max().map_or(0, |&m| m as usize + 1);
        let num_classes = max_label.max(names.as_ref().map_or(0, Vec::len));
        let class_names = names.unwrap_or_else(|| (0..num_classes).map(|i| format!("class {i}")).collect());
        let name = dir_name(&root);
        let is_fmnist = name == FASHION_MNIST
            && matches!(train.pixels, Pixels::U8(_))
            && (train.c, train.h, train.w) == (1, 28, 28);
        let fixed_norm = is_fmnist.then(Normalization::fashion_mnist);
        Dataset { name, root, train, test, class_names, num_classes, fixed_norm, ids_from_names }
    }

    /// The normalisation of a model whose first task is `first`: the data
    /// set's fixed one, else per channel over that task's training images
    /// (the only images a model has seen when its normalisation is chosen;
    /// later tasks keep it, as their checkpoint does).
    pub fn norm_for(&self, first: &TaskView) -> Normalization {
        match &self.fixed_norm {
            Some(n) => n.clone(),
            None => Normalization::of_images(&self.train, &first.indices),
        }
    }

    /// Renumber an image folder's classes for a model that knows `known`
    /// (id, name): a class the model knows gets the model's id, matched by
    /// name, and every other class a new id after the model's largest, in
    /// name order. Needed because a folder's ids are its sorted folder
    /// names: the folder of new classes handed to `extend` (or the old one
    /// with new class folders added) numbers its classes differently from
    /// the folder the model was trained on. IDX/NPY data keep their ids.
    pub fn align_classes(&mut self, known: &[(u32, String)]) {
        if !self.ids_from_names {
            return;
        }
        let mut next = known.iter().map(|(c, _)| c + 1).max().unwrap_or(0);
        let map: Vec<u32> = self
            .class_names
            .iter()
            .map(|n| match known.iter().find(|(_, k)| k == n) {
                Some((c, _)) => *c,
                None => {
                    next += 1;
                    next - 1
                }
            })
            .collect();
        for l in self.train.labels.iter_mut().chain(self.test.labels.iter_mut()) {
            *l = map[*l as usize];
        }
        let mut names: Vec<String> = (0..next).map(|c| format!("class {c}")).collect();
        for (c, n) in known {
            names[*c as usize] = n.clone();
        }
        for (&c, n) in map.iter().zip(&self.class_names) {
            names[c as usize] = n.clone();
        }
        self.num_classes = names.len();
        self.class_names = names;
    }
}

/// The directory's own name, looking through `.` and `..`.
fn dir_name(root: &Path) -> String {
    let named = root.file_name().map(|n| n.to_string_lossy().into_owned());
    named
        .or_else(|| root.canonicalize().ok()?.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_else(|| root.display().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split_u8() -> Split {
        Split::new(Pixels::U8(vec![0, 255, 51, 102, 10, 20, 30, 40]), vec![3, 1], 1, 2, 2)
    }

    #[test]
    fn fill_batch_scales_and_normalises_in_index_order() {
        let s = split_u8();
        let norm = Normalization { mean: vec![0.5], std: vec![0.25] };
        let mut out = [9.0f32; 10];
        s.fill_batch(&[1, 0], &norm, &mut out);
        let want0 = [0.0f32, 1.0, 0.2, 0.4].map(|x| (x - 0.5) / 0.25);
        assert_eq!(out[8..], [9.0, 9.0]);
        for (a, b) in out[4..8].iter().zip(want0) {
            assert!((a - b).abs() < 1e-6, "{a} {b}");
        }
        assert!((out[0] - (10.0 / 255.0 - 0.5) / 0.25).abs() < 1e-6);
        let f = Split::new(Pixels::F32(vec![0.5, 1.0]), vec![0, 1], 1, 1, 1);
        f.fill_batch(&[1], &norm, &mut out);
        assert_eq!(out[0], 2.0);
        let mut labels = vec![7];
        s.labels_of(&[1, 1, 0], &mut labels);
        assert_eq!(labels, [1, 1, 3]);
    }

    #[test]
    fn per_channel_statistics_and_normalisation() {
        // Two 2-channel 1×2 images: channel 0 holds 0 and 255, channel 1 is constant.
        let s = Split::new(Pixels::U8(vec![0, 255, 51, 51, 255, 0, 51, 51]), vec![0, 1], 2, 1, 2);
        let n = Normalization::of_images(&s, &[0, 1]);
        assert_eq!(n.mean, [0.5, 0.2]);
        assert_eq!(n.std, [0.5, 1.0], "a constant channel gets std 1");
        let mut out = [0.0f32; 4];
        s.fill_batch(&[1], &n, &mut out);
        assert_eq!(out, [1.0, -1.0, 0.0, 0.0]);
        // Only the images asked for are measured.
        assert_eq!(Normalization::of_images(&s, &[0]).mean, [0.5, 0.2]);
        assert!(n.check(2).is_ok() && Normalization::fashion_mnist().check(3).is_ok());
        assert!(n.check(3).unwrap_err().contains("2 means"));
        assert!(Normalization { mean: vec![0.0], std: vec![0.0] }.check(1).is_err());
    }

    #[test]
    fn from_images_matches_direct_moments_and_subset_keeps_order() {
        let s = split_u8();
        let xs: Vec<f64> = (0..8).map(|i| s.pixels.value(i) as f64).collect();
        let mean = xs.iter().sum::<f64>() / 8.0;
        let std = (xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / 8.0).sqrt();
        let n = Normalization::of_images(&s, &[0, 1]);
        assert!((n.mean[0] as f64 - mean).abs() < 1e-6 && (n.std[0] as f64 - std).abs() < 1e-6, "{n:?}");
        let constant = Split::new(Pixels::F32(vec![0.3; 4]), vec![0], 1, 2, 2);
        assert_eq!(Normalization::of_images(&constant, &[0]).std, [1.0]);
        let sub = s.subset(&[1]);
        assert_eq!(sub.pixels, Pixels::U8(vec![10, 20, 30, 40]));
        assert_eq!((sub.labels.clone(), sub.len()), (vec![1], 1));
        assert_eq!(s.class_counts(4), [0, 1, 0, 1]);
    }
}
