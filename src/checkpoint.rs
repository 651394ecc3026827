//! Checkpoints: safetensors files holding every parameter by its stable name
//! (`trunk.0.weight`, `heads.1.bias`, …) plus, under the metadata key
//! `lwf_engine`, a JSON description: architecture, input normalisation, head
//! mode, heads and their class names, the tasks learnt so far and the history
//! of verbs and methods. EWC's Fisher, when present, is stored as `fisher.K`.
//! Class statistics (see `incremental::stats`), when present, are the tensors
//! `class_stats.counts` (I64, classes), `class_stats.means` (F32, classes ×
//! dim) and, with covariances, `class_stats.tukey_means` (classes × dim) and
//! `class_stats.covs` (classes × dim(dim+1)/2, packed upper triangles), with
//! `class_stats` in the metadata saying what they are. A ResNet's BatchNorm
//! layers add their running statistics under PyTorch's names
//! (`bn1.running_mean`, `bn1.running_var`, F32, and `bn1.num_batches_tracked`,
//! an I64 scalar), so the trunk's tensors are a torchvision state_dict's.
//! Written atomically.

use crate::backend::Backend;
use crate::data::Normalization;
use crate::error::{Error, Result};
use crate::incremental::linalg::packed_len;
use crate::incremental::stats::{ClassStats, Gaussian, StatsKind};
use crate::incremental::HeadMode;
use crate::nn::{Arch, Net};
use crate::rng::Rng;
use crate::tensor::Tensor;
use safetensors::tensor::{Dtype, SafeTensors, TensorView};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::Path;

const META_KEY: &str = "lwf_engine";

/// A number (checkpoints before per-channel normalisation) or a list of numbers.
fn one_or_many<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Vec<f32>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(f32),
        Many(Vec<f32>),
    }
    Ok(match OneOrMany::deserialize(d)? {
        OneOrMany::One(v) => vec![v],
        OneOrMany::Many(v) => v,
    })
}
const FORMAT: &str = "lwf-engine-checkpoint/1";

/// One step of a model's life: how it got here.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HistoryEntry {
    /// `train` or `extend`.
    pub verb: String,
    pub method: String,
    pub classes: Vec<u32>,
    pub data: String,
    pub epochs: usize,
    pub seed: u64,
    pub train_seconds: f64,
    /// σ that drift compensation used for the old class means (null: none ran).
    #[serde(default)]
    pub sdc_sigma: Option<f32>,
    /// How that σ was chosen.
    #[serde(default)]
    pub sdc_sigma_chosen_by: Option<String>,
    /// New-task accuracy on the held-out validation images after training.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub validation_accuracy: Option<f64>,
    /// What `extend --select` tried and chose (λ_o, T, lr and the trials).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selection: Option<crate::incremental::selection::Selection>,
    /// The BatchNorm policy the step trained with (`train` or `frozen`;
    /// absent for nets without BatchNorm).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bn: Option<crate::nn::BnPolicy>,
    /// Classes of `classes` the model already knew: `extend` was given more
    /// images of them (they kept their id, head and name).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub known_classes: Vec<u32>,
    /// The random transforms of the training views (`--augment`, resolved
    /// for the data: `crop`, `flip` or both; absent: none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub augment: Option<crate::data::augment::Augment>,
    /// Where LwF's targets came from with augmented views (`--teacher`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub teacher: Option<crate::incremental::TeacherMode>,
}

/// What the `class_stats.*` tensors hold.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StatsMeta {
    /// Plain words for a reader of the file.
    pub description: String,
    /// Feature width (the trunk's output).
    pub dim: usize,
    /// The class of each row, in the order the classes were learnt.
    pub classes: Vec<u32>,
    pub kind: StatsKind,
}

const STATS_DESCRIPTION: &str = "per class: image count and mean of the L2-normalised trunk features \
(fc1 output after ReLU for cnn-s / cnn-m, the globally average-pooled last stage for ResNets), measured on the task's training images and moved by drift compensation; \
with kind 'cov' also the mean and covariance (packed upper triangle) of the Tukey-transformed \
(sqrt, then L2-normalised) features. No image is stored.";

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HeadMeta {
    pub classes: Vec<u32>,
    pub class_names: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Meta {
    pub format: String,
    pub engine_version: String,
    pub arch: Arch,
    /// Pixels are scaled to [0, 1], then `(x − mean[c]) / std[c]` per channel
    /// (one value: every channel). Older checkpoints hold one number each.
    #[serde(deserialize_with = "one_or_many")]
    pub norm_mean: Vec<f32>,
    #[serde(deserialize_with = "one_or_many")]
    pub norm_std: Vec<f32>,
    pub head_mode: HeadMode,
    pub heads: Vec<HeadMeta>,
    /// The tasks learnt so far, in order (their class lists).
    pub tasks: Vec<Vec<u32>>,
    pub history: Vec<HistoryEntry>,
    /// Present when the checkpoint holds class statistics.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub class_stats: Option<StatsMeta>,
    /// How `predict` decides an image belongs to no known class (the score
    /// and its calibrated threshold); absent in older checkpoints.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unknown: Option<crate::incremental::unknown::UnknownRule>,
}

impl Meta {
    pub fn new(arch: Arch, norm: &Normalization, head_mode: HeadMode) -> Self {
        Meta {
            format: FORMAT.into(),
            engine_version: env!("CARGO_PKG_VERSION").into(),
            arch,
            norm_mean: norm.mean.clone(),
            norm_std: norm.std.clone(),
            head_mode,
            heads: Vec::new(),
            tasks: Vec::new(),
            history: Vec::new(),
            class_stats: None,
            unknown: None,
        }
    }

    /// The normalisation every verb applies to this model's inputs.
    pub fn norm(&self) -> Normalization {
        Normalization { mean: self.norm_mean.clone(), std: self.norm_std.clone() }
    }

    /// All classes the model knows.
    pub fn classes(&self) -> Vec<u32> {
        self.tasks.iter().flatten().copied().collect()
    }

    /// The heads, the tasks and the class names must describe one model: a
    /// checkpoint whose metadata disagrees with itself is refused on load
    /// instead of failing later, deep inside evaluation.
    pub fn check_consistent(&self) -> std::result::Result<(), String> {
        self.norm().check(self.arch.input[0])?;
        if self.tasks.is_empty() || self.tasks.iter().any(|t| t.is_empty()) {
            return Err("the metadata lists no task, or an empty one".into());
        }
        let all = self.classes();
        let mut sorted = all.clone();
        sorted.sort_unstable();
        sorted.dedup();
        if sorted.len() != all.len() {
            return Err(format!("the metadata's tasks {:?} repeat a class", self.tasks));
        }
        let heads: Vec<&Vec<u32>> = self.heads.iter().map(|h| &h.classes).collect();
        let ok = match self.head_mode {
            HeadMode::PerTask => {
                heads.len() == self.tasks.len() && heads.iter().zip(&self.tasks).all(|(h, t)| *h == t)
            }
            HeadMode::Shared => heads.len() == 1 && *heads[0] == all,
        };
        if !ok {
            return Err(format!(
                "the metadata's heads {heads:?} do not match its tasks {:?} ({} heads)",
                self.tasks,
                self.head_mode.name()
            ));
        }
        if let Some(h) = self.heads.iter().find(|h| h.class_names.len() > h.classes.len()) {
            return Err(format!(
                "a head names {} classes but holds {}",
                h.class_names.len(),
                h.classes.len()
            ));
        }
        Ok(())
    }

    /// Every class the model knows with its name, in the order learnt.
    pub fn named_classes(&self) -> Vec<(u32, String)> {
        self.classes().into_iter().map(|c| (c, self.class_name(c))).collect()
    }

    /// The name of a global class, as recorded in the heads.
    pub fn class_name(&self, class: u32) -> String {
        for h in &self.heads {
            if let Some(i) = h.classes.iter().position(|&c| c == class) {
                return h.class_names.get(i).cloned().unwrap_or_else(|| format!("class {class}"));
            }
        }
        format!("class {class}")
    }
}

/// A loaded checkpoint: the net, its description, EWC's Fisher and the class
/// statistics if saved.
pub struct Checkpoint<B: Backend> {
    pub net: Net<B>,
    pub meta: Meta,
    pub fisher: Option<Vec<B::Buf>>,
    pub stats: Option<ClassStats>,
}

/// Write `net` with `meta` (and the optional Fisher and class statistics) to
/// `path`, atomically.
pub fn save<B: Backend>(
    path: &Path,
    b: &B,
    net: &Net<B>,
    meta: &Meta,
    fisher: Option<&[B::Buf]>,
    stats: Option<&ClassStats>,
) -> Result<()> {
    let mut meta = meta.clone();
    meta.class_stats = stats.map(|s| StatsMeta {
        description: STATS_DESCRIPTION.into(),
        dim: s.dim,
        classes: s.classes.clone(),
        kind: s.kind(),
    });
    meta.heads = net
        .heads
        .iter()
        .zip(meta.heads.iter().map(Some).chain(std::iter::repeat(None)))
        .map(|(h, m)| HeadMeta {
            classes: h.classes.clone(),
            class_names: m.map(|m| m.class_names.clone()).unwrap_or_default(),
        })
        .collect();
    let mut tensors: Vec<StoredTensor> = net
        .params()
        .iter()
        .map(|p| f32_tensor(p.name.clone(), p.value.shape.0.clone(), &p.value.to_vec(b)))
        .collect();
    for bn in net.batchnorms() {
        tensors.push(f32_tensor(format!("{}.running_mean", bn.name), vec![bn.c], &bn.running_mean.to_vec(b)));
        tensors.push(f32_tensor(format!("{}.running_var", bn.name), vec![bn.c], &bn.running_var.to_vec(b)));
        let count = (bn.num_batches_tracked as i64).to_le_bytes().to_vec();
        tensors.push((format!("{}.num_batches_tracked", bn.name), Dtype::I64, vec![], count));
    }
    if let Some(f) = fisher {
        for (k, buf) in f.iter().enumerate() {
            tensors.push(f32_tensor(format!("fisher.{k}"), vec![b.len(buf)], &b.download(buf)));
        }
    }
    if let Some(s) = stats {
        let c = s.classes.len();
        let counts = s.counts.iter().flat_map(|n| (*n as i64).to_le_bytes()).collect();
        tensors.push(("class_stats.counts".into(), Dtype::I64, vec![c], counts));
        tensors.push(f32_tensor("class_stats.means".into(), vec![c, s.dim], &s.means));
        if let Some(g) = &s.gauss {
            tensors.push(f32_tensor("class_stats.tukey_means".into(), vec![c, s.dim], &g.means));
            tensors.push(f32_tensor("class_stats.covs".into(), vec![c, packed_len(s.dim)], &g.covs));
        }
    }
    let json = serde_json::to_string(&meta).map_err(|e| Error::checkpoint(path, e.to_string()))?;
    // Tensors read back from a device that faulted are zeros, not the model.
    if let Some(why) = b.fault() {
        return Err(Error::Device(why));
    }
    write_safetensors(path, &tensors, META_KEY, json)
}

/// A tensor to store: name, dtype, shape, little-endian bytes.
pub(crate) type StoredTensor = (String, Dtype, Vec<usize>, Vec<u8>);

/// An f32 tensor to store.
pub(crate) fn f32_tensor(name: String, shape: Vec<usize>, values: &[f32]) -> StoredTensor {
    (name, Dtype::F32, shape, f32_bytes(values))
}

/// Write `tensors` with the JSON `json` under the metadata key `key` to
/// `path`, atomically.
pub(crate) fn write_safetensors(
    path: &Path,
    tensors: &[StoredTensor],
    key: &str,
    json: String,
) -> Result<()> {
    let views = tensors
        .iter()
        .map(|(name, dtype, shape, bytes)| {
            TensorView::new(*dtype, shape.clone(), bytes)
                .map(|v| (name.clone(), v))
                .map_err(|e| Error::checkpoint(path, e.to_string()))
        })
        .collect::<Result<Vec<_>>>()?;
    let info = HashMap::from([(key.to_string(), json)]);
    let bytes = safetensors::tensor::serialize(views, Some(info))
        .map_err(|e| Error::checkpoint(path, e.to_string()))?;
    crate::fsio::write_atomic(path, &bytes)
}

/// Parse a safetensors file's bytes and return its tensors and the JSON
/// stored under the metadata key `key`; `what` names the kind of file in the
/// errors ("checkpoint", "training-state file").
pub(crate) fn read_safetensors<'a>(
    path: &Path,
    bytes: &'a [u8],
    key: &str,
    what: &str,
) -> Result<(SafeTensors<'a>, String)> {
    let bad = |m: String| Error::checkpoint(path, m);
    let st = SafeTensors::deserialize(bytes).map_err(|e| bad(format!("not a safetensors {what} ({e})")))?;
    let (_, header) =
        SafeTensors::read_metadata(bytes).map_err(|e| bad(format!("unreadable header ({e})")))?;
    let json = header
        .metadata()
        .as_ref()
        .and_then(|m| m.get(key))
        .ok_or_else(|| bad(format!("not an lwf-engine {what} (no '{key}' metadata)")))?;
    Ok((st, json.clone()))
}

/// Read a checkpoint, checking that every tensor the architecture needs is
/// present with the right shape.
pub fn load<B: Backend>(path: &Path, b: &B) -> Result<Checkpoint<B>> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let bad = |m: String| Error::checkpoint(path, m);
    let (st, json) = read_safetensors(path, &bytes, META_KEY, "checkpoint")?;
    let meta: Meta = serde_json::from_str(&json).map_err(|e| bad(format!("bad metadata ({e})")))?;
    if meta.format != FORMAT {
        return Err(bad(format!(
            "checkpoint format '{}' is not supported (expected '{FORMAT}')",
            meta.format
        )));
    }
    meta.arch.validate().map_err(bad)?;
    meta.check_consistent().map_err(bad)?;
    // The parameters the metadata's architecture needs must fit in the file
    // before any of them is allocated (a header can claim any size).
    let head_sizes: Vec<usize> = meta.heads.iter().map(|h| h.classes.len()).collect();
    let need =
        meta.arch.param_count(&head_sizes).filter(|n| n.checked_mul(4).is_some_and(|b| b <= bytes.len()));
    if need.is_none() {
        return Err(bad(format!(
            "the metadata describes a {} net larger than the file ({} bytes): the checkpoint is corrupt",
            meta.arch.name,
            bytes.len()
        )));
    }
    let mut net = Net::new(b, meta.arch.clone(), &mut Rng::new(0));
    for h in &meta.heads {
        net.add_head(b, &mut Rng::new(0), &h.classes);
    }
    let mut used = 0;
    for p in net.params_mut() {
        let view = st.tensor(&p.name).map_err(|_| {
            bad(format!("tensor '{}' is missing: the checkpoint is from another architecture", p.name))
        })?;
        if view.dtype() != Dtype::F32 || view.shape() != p.value.shape.dims() {
            return Err(bad(format!(
                "tensor '{}' is {:?} {:?}, the architecture needs F32 {:?}",
                p.name,
                view.dtype(),
                view.shape(),
                p.value.shape.dims()
            )));
        }
        let values = f32_from_bytes(view.data());
        if values.iter().any(|v| !v.is_finite()) {
            return Err(bad(format!("tensor '{}' holds a NaN or infinite value", p.name)));
        }
        p.value = Tensor::from_vec(b, p.value.shape.dims(), &values);
        used += 1;
    }
    for bn in net.batchnorms_mut() {
        let (mean, var) = (
            bn_state(&st, &bn.name, "running_mean", bn.c, path)?,
            bn_state(&st, &bn.name, "running_var", bn.c, path)?,
        );
        if var.iter().any(|&v| v < 0.0) {
            return Err(bad(format!("tensor '{}.running_var' holds a negative variance", bn.name)));
        }
        bn.running_mean = Tensor::from_vec(b, &[bn.c], &mean);
        bn.running_var = Tensor::from_vec(b, &[bn.c], &var);
        let name = format!("{}.num_batches_tracked", bn.name);
        let view = st.tensor(&name).map_err(|_| bad(format!("tensor '{name}' is missing")))?;
        if view.dtype() != Dtype::I64 || view.shape().iter().product::<usize>() != 1 {
            return Err(bad(format!(
                "tensor '{name}' is {:?} {:?}, expected an I64 scalar",
                view.dtype(),
                view.shape()
            )));
        }
        let n = i64::from_le_bytes(view.data().try_into().expect("8 bytes"));
        bn.num_batches_tracked =
            u64::try_from(n).map_err(|_| bad(format!("tensor '{name}' is negative ({n})")))?;
        used += 3;
    }
    let fisher = load_fisher(&st, &net, b, path)?;
    let fisher_tensors = fisher.as_ref().map_or(0, Vec::len);
    let stats = match &meta.class_stats {
        Some(sm) => Some(load_stats(&st, sm, &meta, path)?),
        None => None,
    };
    if let Some(rule) = &meta.unknown {
        rule.check(stats.as_ref()).map_err(bad)?;
    }
    let stats_tensors = stats.as_ref().map_or(0, |s| if s.gauss.is_some() { 4 } else { 2 });
    let extra = st.names().len() - used - fisher_tensors - stats_tensors;
    if extra > 0 {
        return Err(bad(format!(
            "{extra} tensors do not belong to a {} net: the checkpoint is from another architecture",
            meta.arch.name
        )));
    }
    Ok(Checkpoint { net, meta, fisher, stats })
}

/// EWC's Fisher information, `fisher.K`: absent, or one F32 vector per
/// trunk parameter (in `trunk_params` order) of that parameter's size,
/// finite and non-negative, since `extend --method ewc` and the training
/// loop index it by the parameters.
fn load_fisher<B: Backend>(
    st: &SafeTensors<'_>,
    net: &Net<B>,
    b: &B,
    path: &Path,
) -> Result<Option<Vec<B::Buf>>> {
    let bad = |m: String| Error::checkpoint(path, m);
    let present = st.names().iter().filter(|n| n.starts_with("fisher.")).count();
    if present == 0 {
        return Ok(None);
    }
    let trunk = net.trunk_params();
    if present != trunk.len() {
        return Err(bad(format!(
            "{present} Fisher tensors (fisher.*) for a trunk of {} parameters: the checkpoint is corrupt",
            trunk.len()
        )));
    }
    let mut fisher = Vec::with_capacity(trunk.len());
    for (k, p) in trunk.iter().enumerate() {
        let name = format!("fisher.{k}");
        let view = st
            .tensor(&name)
            .map_err(|_| bad(format!("tensor '{name}' is missing (the Fisher of '{}')", p.name)))?;
        let n = p.value.numel();
        if view.dtype() != Dtype::F32 || view.shape() != [n] {
            return Err(bad(format!(
                "tensor '{name}' is {:?} {:?}, expected F32 [{n}] (the Fisher of '{}')",
                view.dtype(),
                view.shape(),
                p.name
            )));
        }
        let v = f32_from_bytes(view.data());
        if v.iter().any(|x| !(x.is_finite() && *x >= 0.0)) {
            return Err(bad(format!(
                "tensor '{name}' holds a negative, NaN or infinite value (a Fisher is ≥ 0)"
            )));
        }
        fisher.push(b.upload(&v));
    }
    Ok(Some(fisher))
}

/// A BatchNorm's running statistic `NAME.field`: F32, `c` values, finite.
fn bn_state(st: &SafeTensors<'_>, name: &str, field: &str, c: usize, path: &Path) -> Result<Vec<f32>> {
    let bad = |m: String| Error::checkpoint(path, m);
    let full = format!("{name}.{field}");
    let view = st.tensor(&full).map_err(|_| bad(format!("tensor '{full}' is missing")))?;
    if view.dtype() != Dtype::F32 || view.shape() != [c] {
        return Err(bad(format!(
            "tensor '{full}' is {:?} {:?}, expected F32 [{c}]",
            view.dtype(),
            view.shape()
        )));
    }
    let v = f32_from_bytes(view.data());
    if v.iter().any(|x| !x.is_finite()) {
        return Err(bad(format!("tensor '{full}' holds a NaN or infinite value")));
    }
    Ok(v)
}

/// The class statistics, checked against their metadata and the model's tasks.
fn load_stats(st: &SafeTensors<'_>, sm: &StatsMeta, meta: &Meta, path: &Path) -> Result<ClassStats> {
    let bad = |m: String| Error::checkpoint(path, m);
    if sm.dim != meta.arch.hidden {
        return Err(bad(format!(
            "class statistics are {}-wide but the model's features are {}",
            sm.dim, meta.arch.hidden
        )));
    }
    if sm.classes != meta.classes() {
        return Err(bad(format!(
            "class statistics cover classes {:?} but the model knows {:?}",
            sm.classes,
            meta.classes()
        )));
    }
    let c = sm.classes.len();
    let tensor = |name: &str, dtype: Dtype, shape: &[usize]| {
        let v = st
            .tensor(name)
            .map_err(|_| bad(format!("tensor '{name}' is missing (the metadata lists class statistics)")))?;
        if v.dtype() != dtype || v.shape() != shape {
            return Err(bad(format!(
                "tensor '{name}' is {:?} {:?}, expected {dtype:?} {shape:?}",
                v.dtype(),
                v.shape()
            )));
        }
        Ok(v)
    };
    let counts = tensor("class_stats.counts", Dtype::I64, &[c])?
        .data()
        .chunks_exact(8)
        .map(|b| i64::from_le_bytes(b.try_into().expect("8 bytes")))
        .map(|n| {
            u64::try_from(n).map_err(|_| bad(format!("class_stats.counts holds a negative count ({n})")))
        })
        .collect::<Result<Vec<u64>>>()?;
    let means = f32_from_bytes(tensor("class_stats.means", Dtype::F32, &[c, sm.dim])?.data());
    let gauss = match sm.kind {
        StatsKind::Mean => None,
        StatsKind::Cov => Some(Gaussian {
            means: f32_from_bytes(tensor("class_stats.tukey_means", Dtype::F32, &[c, sm.dim])?.data()),
            covs: f32_from_bytes(tensor("class_stats.covs", Dtype::F32, &[c, packed_len(sm.dim)])?.data()),
        }),
    };
    if means.iter().chain(gauss.iter().flat_map(|g| g.means.iter().chain(&g.covs))).any(|v| !v.is_finite()) {
        return Err(bad("class statistics hold a NaN or infinite value".into()));
    }
    Ok(ClassStats { dim: sm.dim, classes: sm.classes.clone(), counts, means, gauss })
}

fn f32_bytes(xs: &[f32]) -> Vec<u8> {
    xs.iter().flat_map(|v| v.to_le_bytes()).collect()
}

pub(crate) fn f32_from_bytes(bytes: &[u8]) -> Vec<f32> {
    bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Checkpoints written before normalisation was per channel hold one
    /// number each for `norm_mean` and `norm_std`: they read as one channel.
    /// New ones write lists, per channel.
    #[test]
    fn scalar_normalisation_of_older_checkpoints_reads_as_one_channel() {
        let norm = Normalization { mean: vec![0.1, 0.2, 0.3], std: vec![0.4, 0.5, 0.6] };
        let mut meta = Meta::new(Arch::cnn_m([3, 32, 32]), &norm, HeadMode::PerTask);
        meta.tasks = vec![vec![0, 1]];
        meta.heads = vec![HeadMeta { classes: vec![0, 1], class_names: vec!["a".into(), "b".into()] }];
        let mut json = serde_json::to_value(&meta).unwrap();
        assert_eq!(json["norm_mean"], serde_json::json!([0.1f32, 0.2f32, 0.3f32]));
        let back: Meta = serde_json::from_value(json.clone()).unwrap();
        assert_eq!(back.norm(), norm);
        json["norm_mean"] = serde_json::json!(0.286f32);
        json["norm_std"] = serde_json::json!(0.353f32);
        let old: Meta = serde_json::from_value(json).unwrap();
        assert_eq!(old.norm(), Normalization { mean: vec![0.286], std: vec![0.353] });
        assert!(old.check_consistent().is_ok(), "one value stands for every channel");
        let mut two = old.clone();
        two.norm_mean = vec![0.1, 0.2];
        assert!(two.check_consistent().unwrap_err().contains("2 means"));
    }
}
