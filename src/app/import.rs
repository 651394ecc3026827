//! `import`: a classifier trained elsewhere (a PyTorch state_dict saved with
//! safetensors) becomes an lwf-engine model whose first task is the classes
//! its final layer knows. Every tensor is checked by name, dtype and shape
//! against the architecture before anything is built; the trunk keeps its
//! PyTorch names in the saved model, so the extended model loads back into
//! PyTorch (`load_state_dict(strict=False)`).

use super::{check_input, load_for_model, BackendChoice};
use crate::backend::Backend;
use crate::checkpoint::{self, HeadMeta, HistoryEntry, Meta};
use crate::data::{self, ClassList, ClassRef, FolderOptions, Normalization};
use crate::error::{Error, Result};
use crate::incremental::methods::{add_task_fisher, task_stats, TaskContext};
use crate::incremental::stats::StatsKind;
use crate::incremental::train::Trainer;
use crate::incremental::{HeadMode, Hyper, Observer};
use crate::nn::{ArchKind, Net};
use crate::rng::Rng;
use crate::tensor::Tensor;
use safetensors::tensor::Dtype;
use safetensors::SafeTensors;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// The name PyTorch models give their final linear layer; it becomes head 0.
pub const FC: &str = "fc";

/// `import`: what the user knows about their classifier.
pub struct ImportRequest {
    pub arch: ArchKind,
    pub weights: PathBuf,
    /// The final layer's rows in order: names (ids 0, 1, … follow the order)
    /// or ids.
    pub classes: ClassList,
    /// (height, width) of the images the classifier was trained on.
    pub image_size: (usize, usize),
    pub channels: usize,
    pub norm: Normalization,
    /// Images of (some of) the known classes: class statistics (and EWC's
    /// Fisher) are measured on them.
    pub data: Option<String>,
    pub folder: FolderOptions,
    pub head_mode: HeadMode,
    pub class_stats: StatsKind,
    pub batch_size: usize,
    pub out: PathBuf,
}

/// `--classes-file`: one class name per line (blank lines skipped), in the
/// final layer's row order.
pub fn read_classes_file(path: &Path) -> Result<ClassList> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let names: Vec<ClassRef> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(|l| ClassRef::Name(l.to_string()))
        .collect();
    if names.is_empty() {
        return Err(Error::Config(format!("{}: no class name in the file", path.display())));
    }
    Ok(ClassList(names))
}

/// Say why a file is a pickle and how to convert it; `None` for anything else.
fn pickle_note(path: &Path, bytes: &[u8]) -> Option<String> {
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("").to_ascii_lowercase();
    // torch.save writes a zip archive (since 1.6) or a bare pickle (protocol 2+).
    let zip = bytes.starts_with(b"PK\x03\x04");
    let pickle = bytes.len() > 1 && bytes[0] == 0x80 && (2..=5).contains(&bytes[1]);
    if !(zip || pickle || ["pt", "pth", "pkl", "ckpt", "bin"].contains(&ext.as_str())) {
        return None;
    }
    let out = path.with_extension("safetensors");
    Some(format!(
        "a pickled PyTorch file (torch.save), which lwf-engine does not read because unpickling runs code from the file; \
         convert it to safetensors with: python3 -c \"import torch; from safetensors.torch import save_file; \
         save_file(torch.load('{}', map_location='cpu'), '{}')\" (for a whole saved model, save its .state_dict())",
        path.display(),
        out.display()
    ))
}

/// One tensor of the file as f32, converting the float dtypes PyTorch saves.
/// F16 and BF16 widen exactly; F64 rounds to the nearest f32 (what
/// `model.float()` does); any other dtype is refused.
fn read_f32(
    path: &Path,
    st: &SafeTensors<'_>,
    name: &str,
    want: &[usize],
) -> Result<(Vec<f32>, Option<Dtype>)> {
    let bad = |m: String| Error::checkpoint(path, m);
    let v = st.tensor(name).map_err(|_| bad(format!("tensor '{name}' is missing")))?;
    if v.shape() != want {
        return Err(bad(format!(
            "tensor '{name}' has shape {:?}, the architecture needs {want:?}",
            v.shape()
        )));
    }
    let d = v.data();
    let (vals, converted) = match v.dtype() {
        Dtype::F32 => (checkpoint::f32_from_bytes(d), None),
        Dtype::F16 => (
            d.chunks_exact(2).map(|c| f16_to_f32(u16::from_le_bytes([c[0], c[1]]))).collect(),
            Some(Dtype::F16),
        ),
        Dtype::BF16 => (
            d.chunks_exact(2)
                .map(|c| f32::from_bits((u16::from_le_bytes([c[0], c[1]]) as u32) << 16))
                .collect(),
            Some(Dtype::BF16),
        ),
        Dtype::F64 => (
            d.chunks_exact(8).map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes")) as f32).collect(),
            Some(Dtype::F64),
        ),
        other => {
            return Err(bad(format!(
            "tensor '{name}' is {other:?}; only floating-point weights (F32, F16, BF16, F64) can be imported"
        )))
        }
    };
    if vals.iter().any(|x| !x.is_finite()) {
        return Err(bad(format!("tensor '{name}' holds a NaN or infinite value")));
    }
    Ok((vals, converted))
}

/// IEEE half to single precision, exactly (subnormals, infinities, NaN).
pub fn f16_to_f32(h: u16) -> f32 {
    let sign = ((h >> 15) as u32) << 31;
    let exp = ((h >> 10) & 0x1f) as u32;
    let man = (h & 0x3ff) as u32;
    let bits = match (exp, man) {
        (0, 0) => sign,
        (0, m) => {
            // Subnormal: m · 2^-24, exact in f32.
            let v = m as f32 * f32::powi(2.0, -24);
            return if sign != 0 { -v } else { v };
        }
        (0x1f, 0) => sign | 0x7f80_0000,
        (0x1f, m) => sign | 0x7fc0_0000 | (m << 13),
        (e, m) => sign | ((e + 127 - 15) << 23) | (m << 13),
    };
    f32::from_bits(bits)
}

/// The final layer's classes in row order, and their names when given as
/// names. Names number the rows 0, 1, …; ids keep their numbers.
fn fc_classes(list: &ClassList) -> Result<(Vec<u32>, Option<Vec<String>>)> {
    let names: Vec<&String> =
        list.0.iter().filter_map(|r| if let ClassRef::Name(n) = r { Some(n) } else { None }).collect();
    let (ids, names) = if names.is_empty() {
        (
            list.0
                .iter()
                .flat_map(|r| if let ClassRef::Ids(v) = r { v.clone() } else { Vec::new() })
                .collect::<Vec<u32>>(),
            None,
        )
    } else if names.len() == list.0.len() {
        ((0..names.len() as u32).collect(), Some(names.into_iter().cloned().collect::<Vec<_>>()))
    } else {
        return Err(Error::Config(
            "--classes: give the final layer's classes either all as names or all as ids, not mixed".into(),
        ));
    };
    let mut seen = std::collections::HashSet::new();
    if let Some(n) = names.iter().flatten().find(|n| !seen.insert(n.to_string())) {
        return Err(Error::Config(format!("--classes: the name '{n}' is given twice")));
    }
    let mut seen = std::collections::HashSet::new();
    if let Some(c) = ids.iter().find(|c| !seen.insert(**c)) {
        return Err(Error::Config(format!("--classes: class {c} is given twice")));
    }
    if ids.is_empty() {
        return Err(Error::Config("--classes: no class given".into()));
    }
    Ok((ids, names))
}

/// The file's name for an engine parameter: head 0 is PyTorch's `fc`.
fn file_name(engine: &str) -> String {
    match engine.strip_prefix("heads.0.") {
        Some(rest) => format!("{FC}.{rest}"),
        None => engine.to_string(),
    }
}

/// Read, check and convert the weights into `net` (built with one head of
/// the right size). Returns how many tensors were converted from each
/// non-F32 dtype.
fn fill_net<B: Backend>(
    b: &B,
    path: &Path,
    st: &SafeTensors<'_>,
    net: &mut Net<B>,
) -> Result<Vec<(Dtype, usize)>> {
    let bad = |m: String| Error::checkpoint(path, m);
    let arch = net.arch.name.clone();
    let mut expected: Vec<String> = net.params().iter().map(|p| file_name(&p.name)).collect();
    for bn in net.batchnorms() {
        for f in ["running_mean", "running_var", "num_batches_tracked"] {
            expected.push(format!("{}.{f}", bn.name));
        }
    }
    let present: std::collections::HashSet<String> = st.names().into_iter().map(|s| s.to_string()).collect();
    let missing: Vec<&String> = expected.iter().filter(|n| !present.contains(*n)).collect();
    let mut unexpected: Vec<&String> = present.iter().filter(|n| !expected.contains(n)).collect();
    unexpected.sort();
    if !missing.is_empty() && (missing.len() * 2 > expected.len() || !unexpected.is_empty()) {
        return Err(bad(format!(
            "these are not the weights of a {arch}: {} of its {} tensors are missing (first '{}') and the file has {} it does not use{}",
            missing.len(),
            expected.len(),
            missing[0],
            unexpected.len(),
            unexpected.first().map_or(String::new(), |u| format!(" (first '{u}')"))
        )));
    }
    if let Some(m) = missing.first() {
        return Err(bad(format!(
            "tensor '{m}' is missing ({} missing in all): the weights are not a complete {arch}",
            missing.len()
        )));
    }
    if let Some(u) = unexpected.first() {
        return Err(bad(format!(
            "tensor '{u}' does not belong to a {arch} ({} such in all): the weights are of another architecture",
            unexpected.len()
        )));
    }
    let mut converted: Vec<(Dtype, usize)> = Vec::new();
    let mut note = |d: Option<Dtype>| {
        if let Some(d) = d {
            match converted.iter_mut().find(|(k, _)| *k == d) {
                Some((_, n)) => *n += 1,
                None => converted.push((d, 1)),
            }
        }
    };
    for p in net.params_mut() {
        let dims = p.value.shape.dims().to_vec();
        let (v, d) = read_f32(path, st, &file_name(&p.name), &dims)?;
        note(d);
        p.value = Tensor::from_vec(b, &dims, &v);
    }
    for bn in net.batchnorms_mut() {
        let (mean, d1) = read_f32(path, st, &format!("{}.running_mean", bn.name), &[bn.c])?;
        let (var, d2) = read_f32(path, st, &format!("{}.running_var", bn.name), &[bn.c])?;
        note(d1);
        note(d2);
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
    }
    Ok(converted)
}

pub fn import(choice: BackendChoice, req: &ImportRequest, obs: &dyn Observer) -> Result<String> {
    crate::fsio::check_output_file(&req.out)?;
    on_backend!(choice, b => import_on(&b, req, obs))
}

fn import_on<B: Backend>(b: &B, req: &ImportRequest, obs: &dyn Observer) -> Result<String> {
    let start = Instant::now();
    let path = req.weights.as_path();
    let bad = |m: String| Error::checkpoint(path, m);
    let (ids, names) = fc_classes(&req.classes)?;
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    if let Some(note) = pickle_note(path, &bytes) {
        return Err(bad(note));
    }
    let st = SafeTensors::deserialize(&bytes)
        .map_err(|e| bad(format!("not a safetensors file, or a truncated one ({e})")))?;
    let (h, w) = req.image_size;
    let arch = req.arch.build([req.channels, h, w]);
    arch.validate().map_err(|e| Error::Config(format!("--image-size {h}x{w}: {e}")))?;
    req.norm.check(req.channels).map_err(|e| Error::Config(format!("--norm-mean/--norm-std: {e}")))?;
    let fc_rows = st.tensor(&format!("{FC}.weight")).ok().and_then(|v| v.shape().first().copied());
    if let Some(rows) = fc_rows.filter(|&r| r != ids.len()) {
        return Err(bad(format!(
            "the final layer '{FC}.weight' has {rows} rows (classes) but --classes gives {}",
            ids.len()
        )));
    }
    let mut net = Net::new(b, arch.clone(), &mut Rng::new(0));
    net.add_head(b, &mut Rng::new(0), &ids);
    let converted = fill_net(b, path, &st, &mut net)?;
    drop(st);

    // The data (optional): decoded at the model's size, its classes matched
    // to the model's by name (ids given: the data's own ids and names).
    let mut meta = Meta::new(arch.clone(), &req.norm, req.head_mode);
    let provisional: Vec<String> = match &names {
        Some(n) => n.clone(),
        None => ids.iter().map(|c| format!("class {c}")).collect(),
    };
    meta.heads = vec![HeadMeta { classes: ids.clone(), class_names: provisional }];
    meta.tasks = vec![ids.clone()];
    let data = match &req.data {
        Some(spec) => {
            let mut d = load_for_model(spec, &req.folder, &meta)?;
            if names.is_none() {
                // load_for_model matched names, which ids do not have: reload with the data's own ids.
                let mut opts = req.folder.clone();
                opts.image_size.get_or_insert((h, w));
                opts.channels.get_or_insert(req.channels);
                d = data::load_with(spec, &opts)?;
                meta.heads[0].class_names = ids
                    .iter()
                    .map(|&c| d.class_names.get(c as usize).cloned().unwrap_or_else(|| format!("class {c}")))
                    .collect();
            }
            check_input(&req.out, &arch, &d.train, &d.root)?;
            let hint = format!(
                "{} (--data must hold images of every class the final layer knows, to measure their statistics)",
                d.root.display()
            );
            data::check_classes_present(&d.train, &ids, &hint)?;
            Some(d)
        }
        None => None,
    };
    meta.history.push(HistoryEntry {
        verb: "import".into(),
        method: "import".into(),
        classes: ids.clone(),
        data: path.display().to_string(),
        epochs: 0,
        seed: 0,
        train_seconds: 0.0,
        sdc_sigma: None,
        sdc_sigma_chosen_by: None,
        validation_accuracy: None,
        selection: None,
        bn: None,
        known_classes: Vec::new(),
        augment: None,
        teacher: None,
    });

    let mut tr = Trainer::new(b.clone());
    let hyper = Hyper { batch_size: req.batch_size, class_stats: req.class_stats, ..Hyper::default() };
    let (stats, fisher, measured) = match &data {
        Some(d) => {
            let view = data::task_view(&d.train, &ids);
            let cx = TaskContext { split: &d.train, norm: &req.norm, hyper: &hyper, seed: 0, obs };
            let stats = task_stats(&mut tr, &net, &view, &cx, req.class_stats);
            let mut fisher = None;
            add_task_fisher(&mut tr, &mut net, &view, 1, &cx, &mut fisher);
            let test_view = data::task_view(&d.test, &ids);
            let acc = (!test_view.indices.is_empty()).then(|| {
                crate::incremental::eval::evaluate(
                    &mut tr,
                    &net,
                    &d.test,
                    &req.norm,
                    &meta.tasks,
                    req.head_mode,
                    req.batch_size,
                    None,
                    &[],
                )
                .task_aware[0]
            });
            (
                Some(stats),
                fisher,
                Some((view.indices.len(), d.root.display().to_string(), acc, test_view.indices.len())),
            )
        }
        None => (None, None, None),
    };
    checkpoint::save(&req.out, b, &net, &meta, fisher.as_deref(), stats.as_ref())?;

    let conv = if converted.is_empty() {
        String::new()
    } else {
        let parts: Vec<String> = converted.iter().map(|(d, n)| format!("{n} from {d:?}")).collect();
        format!(
            " ({} converted to F32{})",
            parts.join(", "),
            if converted.iter().any(|(d, _)| *d == Dtype::F64) {
                "; F64 rounded to the nearest F32"
            } else {
                ", exactly"
            }
        )
    };
    let tensors = net.params().len() + 3 * net.batchnorms().len();
    let stats_line = match &measured {
        Some((n, root, acc, n_test)) => format!(
            "; class statistics ({}) and EWC's Fisher from {n} images of {root}{}",
            req.class_stats.name(),
            acc.map_or(String::new(), |a| format!(
                "; accuracy on its {n_test} test images {:.2}%",
                100.0 * a
            ))
        ),
        None => format!("; {}", NO_STATS_NOTE),
    };
    let stats_line = match (&names, &req.data) {
        (None, None) => format!(
            "{stats_line}; the classes were given as ids and are named 'class N': image folders are matched to \
             a model's classes by name, so give their folder names (--classes a,b,… or --classes-file) to use \
             image folders with this model"
        ),
        _ => stats_line,
    };
    let shown: Vec<String> = meta.heads[0].class_names.iter().take(12).cloned().collect();
    let more = if ids.len() > 12 { format!(", … ({} in all)", ids.len()) } else { String::new() };
    Ok(format!(
        "imported {} ({} parameters in {tensors} tensors{conv}) for {}×{}×{} images, classes {}{more} as task 1 in {:.1}s{stats_line} → {}",
        arch.name,
        net.params().iter().map(|p| p.value.numel()).sum::<usize>(),
        req.channels,
        h,
        w,
        shown.join(", "),
        start.elapsed().as_secs_f64(),
        req.out.display()
    ))
}

/// What a model imported without `--data` lacks, said once by import, eval and predict.
pub const NO_STATS_NOTE: &str = "no class statistics (imported without --data): predictions use the aligned-heads \
classifier (the heads, their scales aligned across tasks); ncm, ncm-task and mahalanobis need statistics of every class (import with --data DIR to have them) \
and extend --method ewc needs the Fisher they come with";
