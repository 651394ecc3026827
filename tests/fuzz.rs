//! The readers against hostile bytes: arbitrary input and mutated valid files
//! (flipped bytes, truncations, huge counts and dimensions in headers, wrong
//! dtypes, inconsistent metadata). Each reader must return a value or an
//! error — never panic — and a value it returns must be consistent with the
//! header it came from. A header that claims more data than the file holds
//! must be refused before anything that large is allocated: a reader that
//! allocated first would abort the test process on the huge dimensions drawn
//! here.

mod common;

use common::{proptest_cfg, B};
use lwf_engine::backend::{Backend, CpuBackend};
use lwf_engine::checkpoint::{self, HeadMeta, Meta};
use lwf_engine::data::file::{gunzip_if_needed, Checksums};
use lwf_engine::data::{idx, npy};
use lwf_engine::incremental::stats::{ClassStats, StatsKind};
use lwf_engine::incremental::HeadMode;
use lwf_engine::nn::{Arch, Net};
use lwf_engine::rng::Rng;
use proptest::prelude::*;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

const CASES: u32 = 5000;

fn p() -> &'static Path {
    Path::new("fuzzed")
}

/// A mutation of a valid file: flip bytes, cut it, or overwrite a 4-byte
/// field with a value from a set of troublemakers (0, 1, huge, u32::MAX).
#[derive(Clone, Debug)]
enum Mutation {
    Flip(Vec<(usize, u8)>),
    Truncate(usize),
    Field(usize, u32),
    Append(Vec<u8>),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        prop::collection::vec((any::<usize>(), any::<u8>()), 1..6).prop_map(Mutation::Flip),
        any::<usize>().prop_map(Mutation::Truncate),
        (any::<usize>(), prop_oneof![Just(0u32), Just(1), Just(0x7fff_ffff), Just(u32::MAX), any::<u32>()])
            .prop_map(|(at, v)| Mutation::Field(at, v)),
        prop::collection::vec(any::<u8>(), 1..32).prop_map(Mutation::Append),
    ]
}

fn apply(mut bytes: Vec<u8>, m: &Mutation, header_len: usize) -> Vec<u8> {
    match m {
        Mutation::Flip(flips) => {
            for &(at, v) in flips {
                // Mostly in the header, where the parsing happens.
                let span = if at % 4 == 0 { bytes.len() } else { header_len.min(bytes.len()) };
                if span > 0 {
                    bytes[at % span] ^= v | 1;
                }
            }
        }
        Mutation::Truncate(at) => bytes.truncate(at % (bytes.len() + 1)),
        Mutation::Field(at, v) => {
            let fields = header_len / 4;
            if fields > 0 {
                let i = (at % fields) * 4;
                bytes[i..i + 4].copy_from_slice(&v.to_be_bytes());
            }
        }
        Mutation::Append(extra) => bytes.extend_from_slice(extra),
    }
    bytes
}

// ---- IDX ------------------------------------------------------------------------

fn idx_file(dims: &[u32]) -> Vec<u8> {
    let mut b = vec![0, 0, 0x08, dims.len() as u8];
    for d in dims {
        b.extend(d.to_be_bytes());
    }
    let n: u32 = dims.iter().product();
    b.extend((0..n).map(|i| (i * 7) as u8));
    b
}

fn check_idx(bytes: Vec<u8>) {
    for ndim in [1, 3] {
        if let Ok(a) = idx::parse(p(), bytes.clone(), ndim) {
            assert_eq!(a.dims.len(), ndim);
            assert_eq!(a.data.len(), a.dims.iter().product::<usize>(), "payload matches the header");
            if ndim == 3 {
                if let Ok((pixels, [n, h, w])) = idx::to_images(p(), a) {
                    assert_eq!(pixels.len(), n * h * w);
                }
            }
        }
    }
}

// ---- NPY ------------------------------------------------------------------------

fn npy_file(descr: &str, shape: &str, payload: &[u8]) -> Vec<u8> {
    let header = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}");
    let pad = 64 - (10 + header.len() + 1) % 64;
    let header = format!("{header}{}\n", " ".repeat(pad));
    let mut b = b"\x93NUMPY\x01\x00".to_vec();
    b.extend((header.len() as u16).to_le_bytes());
    b.extend(header.as_bytes());
    b.extend(payload);
    b
}

fn check_npy(bytes: Vec<u8>) {
    if let Ok(a) = npy::parse(p(), bytes) {
        let elems: usize = a.shape.iter().product();
        let b = a.clone();
        if let Ok((pixels, dims)) = npy::to_images(p(), a) {
            assert_eq!(pixels.len(), dims.iter().product::<usize>());
            assert_eq!(pixels.len(), elems);
        }
        if let Ok(labels) = npy::to_labels(p(), b) {
            assert_eq!(labels.len(), elems);
        }
    }
}

// ---- checkpoints ----------------------------------------------------------------

/// A valid small checkpoint (two heads, EWC Fisher, class statistics with
/// covariances), written once.
fn checkpoint_bytes() -> &'static [u8] {
    static BYTES: OnceLock<Vec<u8>> = OnceLock::new();
    BYTES.get_or_init(|| {
        let b = CpuBackend::new();
        let arch = Arch { name: "cnn-s".into(), input: [1, 4, 4], conv: vec![2], hidden: 3, resnet: None };
        let mut net = Net::<B>::new(&b, arch.clone(), &mut Rng::new(1));
        net.add_head(&b, &mut Rng::new(2), &[0, 1]);
        net.add_head(&b, &mut Rng::new(3), &[2]);
        let norm = lwf_engine::data::Normalization { mean: vec![0.5], std: vec![0.25] };
        let mut meta = Meta::new(arch, &norm, HeadMode::PerTask);
        meta.tasks = vec![vec![0, 1], vec![2]];
        meta.heads = vec![
            HeadMeta { classes: vec![0, 1], class_names: vec!["a".into(), "b".into()] },
            HeadMeta { classes: vec![2], class_names: vec!["c".into()] },
        ];
        let raw: Vec<f32> = (0..18).map(|i| (i % 5) as f32 * 0.3).collect();
        let stats = ClassStats::compute(&raw, &[0, 1, 2, 0, 1, 2], &[0, 1, 2], 3, StatsKind::Cov);
        let fisher: Vec<_> =
            net.trunk_params().iter().map(|p| b.upload(&vec![0.5; p.value.numel()])).collect();
        let path = scratch().join("valid.safetensors");
        checkpoint::save(&path, &b, &net, &meta, Some(&fisher), Some(&stats)).unwrap();
        std::fs::read(&path).unwrap()
    })
}

fn scratch() -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let d = std::env::temp_dir().join(format!("lwf-fuzz-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        d
    })
    .clone()
}

fn check_checkpoint(bytes: &[u8], name: &str) {
    let path = scratch().join(name);
    std::fs::write(&path, bytes).unwrap();
    match checkpoint::load(&path, &CpuBackend::new()) {
        Ok(ck) => {
            // What later verbs rely on without checking again.
            let b = CpuBackend::new();
            ck.meta.check_consistent().expect("a loaded checkpoint is consistent");
            if let Some(s) = &ck.stats {
                assert_eq!(s.classes, ck.meta.classes());
                assert_eq!(s.means.len(), s.classes.len() * s.dim);
                assert_eq!(s.counts.len(), s.classes.len());
                if let Some(g) = &s.gauss {
                    assert_eq!(g.means.len(), s.means.len());
                    assert_eq!(g.covs.len(), s.classes.len() * s.dim * (s.dim + 1) / 2);
                }
            }
            for p in ck.net.params() {
                assert!(p.value.to_vec(&b).iter().all(|v| v.is_finite()), "{} is finite", p.name);
            }
            if let Some(f) = &ck.fisher {
                let trunk = ck.net.trunk_params();
                assert_eq!(f.len(), trunk.len(), "a Fisher per trunk parameter");
                for (f, p) in f.iter().zip(trunk) {
                    assert_eq!(b.len(f), p.value.numel(), "the Fisher of {}", p.name);
                    assert!(b.download(f).iter().all(|v| v.is_finite() && *v >= 0.0));
                }
            }
        }
        Err(e) => {
            let msg = e.to_string();
            assert!(msg.contains(name) && !msg.contains('\n'), "one line naming the file: {msg}");
        }
    }
    let _ = std::fs::remove_file(&path);
}

/// Header length of a safetensors file: 8 bytes of length, then the JSON.
fn safetensors_header_len(bytes: &[u8]) -> usize {
    8 + u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize
}

// ---- the properties ---------------------------------------------------------------

proptest! {
    #![proptest_config(proptest_cfg(CASES))]

    #[test]
    fn idx_arbitrary_bytes(bytes in prop::collection::vec(any::<u8>(), 0..96)) {
        check_idx(bytes.clone());
        // The same bytes behind IDX's magic, so the header parser is reached.
        let mut framed = vec![0, 0, 0x08, 3];
        framed.extend(bytes);
        check_idx(framed);
    }

    #[test]
    fn idx_mutated(m in mutation(), three_d in any::<bool>()) {
        let (file, header) = if three_d { (idx_file(&[3, 4, 5]), 16) } else { (idx_file(&[7]), 8) };
        check_idx(apply(file, &m, header));
    }

    #[test]
    fn npy_arbitrary_bytes(bytes in prop::collection::vec(any::<u8>(), 0..160)) {
        check_npy(bytes.clone());
        let mut framed = b"\x93NUMPY\x01\x00".to_vec();
        framed.extend(bytes);
        check_npy(framed);
    }

    #[test]
    fn npy_mutated(
        m in mutation(),
        descr in prop_oneof![Just("|u1"), Just("<f4"), Just("<i8"), Just("<u4"), Just(">f4"), Just("<f8"), Just("|b1")],
        shape in prop_oneof![
            Just("(2, 3, 4)".to_string()),
            Just("(6,)".to_string()),
            Just("(1, 2, 3, 4)".to_string()),
            (any::<u64>(), any::<u64>()).prop_map(|(a, b)| format!("({a}, {b})")),
            Just("(18446744073709551615, 2)".to_string()),
            Just("()".to_string()),
            Just("(-1,)".to_string()),
            Just("(3,".to_string()),
        ],
    ) {
        let file = npy_file(descr, &shape, &[1u8; 96]);
        let header = 10 + u16::from_le_bytes([file[8], file[9]]) as usize;
        check_npy(apply(file, &m, header));
    }

    #[test]
    fn gzip_and_checksums_arbitrary(bytes in prop::collection::vec(any::<u8>(), 0..128), text in ".{0,200}") {
        let mut gz = vec![0x1f, 0x8b];
        gz.extend(&bytes);
        let _ = gunzip_if_needed(p(), &gz);
        let _ = gunzip_if_needed(p(), &bytes);
        let _ = Checksums::parse(p(), &text);
    }
}

proptest! {
    #![proptest_config(proptest_cfg(1000))]

    /// Checkpoints: mutations concentrated in the JSON header (metadata and
    /// tensor table), plus truncations and a rewritten header length.
    #[test]
    fn checkpoint_mutated(m in mutation(), case in any::<u32>()) {
        let valid = checkpoint_bytes();
        let header = safetensors_header_len(valid);
        let bytes = apply(valid.to_vec(), &m, header);
        check_checkpoint(&bytes, &format!("m{case}.safetensors"));
    }

    /// One stored tensor changed in its data or its shape, the metadata
    /// intact: refused with one line naming the file, or loaded into a
    /// checkpoint whose every tensor fits the model (the Fisher and class
    /// statistics included, which verbs index by the model's parameters).
    #[test]
    fn checkpoint_tensor_mutated(which in any::<usize>(), edit in 0usize..9, at in any::<usize>(), case in any::<u32>()) {
        use safetensors::{tensor::TensorView, Dtype, SafeTensors};
        let valid = checkpoint_bytes();
        let (_, header) = SafeTensors::read_metadata(valid).unwrap();
        let st = SafeTensors::deserialize(valid).unwrap();
        let mut tensors: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> =
            st.tensors().into_iter().map(|(n, v)| (n, v.dtype(), v.shape().to_vec(), v.data().to_vec())).collect();
        tensors.sort_by(|a, b| a.0.cmp(&b.0));
        let i = which % tensors.len();
        let (name, dtype, shape, data) = &mut tensors[i];
        let elem = if *dtype == Dtype::I64 { 8 } else { 4 };
        let n = data.len() / elem;
        let put = |data: &mut Vec<u8>, bytes: &[u8]| {
            if n > 0 {
                let j = (at % n) * elem;
                data[j..j + elem].copy_from_slice(&bytes[..elem]);
            }
        };
        let mut drop = false;
        match edit {
            // Cut short, one value more, flattened, one more dimension.
            0 => {
                let keep = at % n.max(1);
                data.truncate(keep * elem);
                *shape = vec![keep];
            }
            1 => {
                data.extend(std::iter::repeat_n(0, elem));
                *shape = vec![n + 1];
            }
            2 => *shape = vec![n],
            3 => shape.insert(0, 1),
            // One value replaced: NaN, negative, infinite, a negative count.
            4 => put(data, &f32::NAN.to_le_bytes().repeat(2)),
            5 => put(data, &(-1.0f32).to_le_bytes().repeat(2)),
            6 => put(data, &f32::INFINITY.to_le_bytes().repeat(2)),
            7 => put(data, &(-1i64).to_le_bytes()),
            // Gone.
            _ => drop = true,
        }
        let gone = if drop { Some(name.clone()) } else { None };
        let views: Vec<(String, TensorView<'_>)> = tensors
            .iter()
            .filter(|(n, ..)| Some(n) != gone.as_ref())
            .filter_map(|(n, d, s, b)| TensorView::new(*d, s.clone(), b).ok().map(|v| (n.clone(), v)))
            .collect();
        let bytes = safetensors::serialize(views, header.metadata().clone()).unwrap();
        check_checkpoint(&bytes, &format!("t{case}.safetensors"));
    }

    /// The metadata JSON with one value replaced: numbers, lists and strings
    /// that are valid JSON but describe another model.
    #[test]
    fn checkpoint_inconsistent_metadata(
        which in 0usize..8,
        value in prop_oneof![
            Just("0".to_string()), Just("4294967295".to_string()), Just("[]".to_string()),
            Just("[[0,1],[1]]".to_string()), Just("[[0,1,2]]".to_string()), Just("\"x\"".to_string()),
            Just("null".to_string()), Just("[0,1,7]".to_string()), Just("1e300".to_string()),
        ],
    ) {
        let valid = checkpoint_bytes();
        let header = safetensors_header_len(valid);
        let text = String::from_utf8(valid[8..header].to_vec()).unwrap();
        let keys = ["\\\"tasks\\\":", "\\\"classes\\\":", "\\\"hidden\\\":", "\\\"dim\\\":", "\\\"input\\\":", "\\\"conv\\\":", "\\\"norm_std\\\":", "\\\"head_mode\\\":"];
        let key = keys[which];
        let Some(at) = text.find(key) else { return Ok(()) };
        // Replace the value after the key up to the next ',' or '}' at depth 0.
        let start = at + key.len();
        let rest = &text[start..];
        let mut depth = 0i32;
        let mut end = rest.len();
        for (i, ch) in rest.char_indices() {
            match ch {
                '[' | '{' => depth += 1,
                ']' | '}' if depth > 0 => depth -= 1,
                ',' | '}' if depth == 0 => { end = i; break; }
                _ => {}
            }
        }
        let escaped = value.replace('"', "\\\"");
        let new_text = format!("{}{}{}", &text[..start], escaped, &rest[end..]);
        let mut bytes = (new_text.len() as u64).to_le_bytes().to_vec();
        bytes.extend(new_text.as_bytes());
        bytes.extend(&valid[header..]);
        check_checkpoint(&bytes, &format!("meta{which}.safetensors"));
    }
}

// ---- training-state files -------------------------------------------------------------

fn small_net(b: &CpuBackend) -> Net<B> {
    let arch = Arch { name: "cnn-s".into(), input: [1, 4, 4], conv: vec![2], hidden: 3, resnet: None };
    let mut net = Net::<B>::new(b, arch, &mut Rng::new(1));
    net.add_head(b, &mut Rng::new(2), &[0, 1]);
    net
}

/// A valid training-state file (parameters, momentum of two of them, RNG).
fn state_bytes() -> &'static [u8] {
    use lwf_engine::incremental::session::Session;
    use lwf_engine::optim::Sgd;
    static BYTES: OnceLock<Vec<u8>> = OnceLock::new();
    BYTES.get_or_init(|| {
        let b = CpuBackend::new();
        let mut net = small_net(&b);
        let hyper = lwf_engine::backend::SgdHyper { lr: 0.1, momentum: 0.9, weight_decay: 0.0 };
        let mut sgd = Sgd::new(hyper);
        sgd.set_velocity(&b, 0, &[0.25; 18]);
        sgd.set_velocity(&b, 1, &[0.5; 2]);
        let mut rng = Rng::new(7);
        let path = scratch().join("valid.state");
        let mut s = Session::new(path.clone(), 1, serde_json::json!({"run": 1}), None).unwrap();
        s.start_phase(&b, &mut net, &mut sgd, &mut rng).unwrap();
        s.end_epoch(&b, &net, &sgd, &rng, 1).unwrap();
        std::fs::read(&path).unwrap()
    })
}

proptest! {
    #![proptest_config(proptest_cfg(1000))]

    /// A mutated training-state file is refused with one line naming it, or
    /// restores into a model of the right shape; it never panics.
    #[test]
    fn training_state_mutated(m in mutation(), case in any::<u32>()) {
        use lwf_engine::incremental::session::Session;
        use lwf_engine::optim::Sgd;
        let valid = state_bytes();
        let bytes = apply(valid.to_vec(), &m, safetensors_header_len(valid));
        let name = format!("s{case}.state");
        let path = scratch().join(&name);
        std::fs::write(&path, &bytes).unwrap();
        let b = CpuBackend::new();
        let outcome = Session::new(scratch().join("unused.state"), 0, serde_json::json!({"run": 1}), Some(&path))
            .and_then(|mut s| {
                let mut net = small_net(&b);
                let hyper = lwf_engine::backend::SgdHyper { lr: 0.1, momentum: 0.9, weight_decay: 0.0 };
                s.start_phase(&b, &mut net, &mut Sgd::new(hyper), &mut Rng::new(0)).map(|_| ())
            });
        if let Err(e) = outcome {
            let msg = e.to_string();
            prop_assert!(msg.contains(&name) && !msg.contains('\n'), "one line naming the file: {msg}");
        }
        let _ = std::fs::remove_file(&path);
    }
}
