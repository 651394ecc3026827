//! A model as ONNX operators: normalisation, the trunk layer by layer (as
//! `Net::features` runs it in evaluation mode) and a classifier (as
//! `FeatureClassifier::scores` and `probabilities` compute it), its columns
//! put in class-id order.

use super::graph::{f32_value, Attr, Dim, Graph};
use super::proto::{ModelProto, OperatorSetIdProto, StringStringEntryProto};
use super::{IR_VERSION, OPSET};
use crate::backend::Backend;
use crate::data::Normalization;
use crate::incremental::classifier::{ClassifierKind, FeatureClassifier, Parts};
use crate::nn::{BatchNorm2d, Conv2d, Layer, Linear, Net};
use prost::Message;

/// What goes into the graph besides the net and the classifier.
pub struct ExportSpec {
    /// (id, name) of every class the model knows.
    pub classes: Vec<(u32, String)>,
    pub norm: Normalization,
    pub classifier: ClassifierKind,
    /// A line for the model's doc string (where it came from).
    pub description: String,
}

/// The encoded ONNX model of `net` with classifier `clf`.
pub fn export_model<B: Backend>(b: &B, net: &Net<B>, clf: &FeatureClassifier, spec: &ExportSpec) -> Vec<u8> {
    let [c, h, w] = net.arch.input;
    let mut g = Graph::new();
    for name in ["images", "probabilities", "features"] {
        g.reserve(name);
    }
    let x = normalise(&mut g, &spec.norm, c);
    let feats = trunk(&mut g, b, net, x);
    g.node_into("Identity", &[&feats], vec![], "features");

    // Columns in class-id order: `order[j]` is the classifier column of the
    // j-th smallest class id.
    let mut order: Vec<usize> = (0..clf.classes.len()).collect();
    order.sort_by_key(|&k| clf.classes[k]);
    let probs = classifier(&mut g, clf, &feats, &order);
    g.node_into("Identity", &[&probs], vec![], "probabilities");

    let k = clf.classes.len();
    let graph = g.finish(
        &net.arch.name,
        vec![f32_value("images", &[Dim::Named("N"), Dim::Fixed(c), Dim::Fixed(h), Dim::Fixed(w)])],
        vec![
            f32_value("probabilities", &[Dim::Named("N"), Dim::Fixed(k)]),
            f32_value("features", &[Dim::Named("N"), Dim::Fixed(clf.dim())]),
        ],
    );
    let ids: Vec<u32> = order.iter().map(|&j| clf.classes[j]).collect();
    let name_of = |id: u32| spec.classes.iter().find(|(c, _)| *c == id).map(|(_, n)| n.clone());
    let names: Vec<String> =
        ids.iter().map(|&id| name_of(id).unwrap_or_else(|| format!("class {id}"))).collect();
    let meta =
        |k: &str, v: String| StringStringEntryProto { key: Some(format!("lwf_engine.{k}")), value: Some(v) };
    // serde_json writes f32 in its shortest form (0.286, not 0.28600001335144043).
    fn json(v: &impl serde::Serialize) -> String {
        serde_json::to_string(v).expect("ids, names and f32s serialise")
    }
    let model = ModelProto {
        ir_version: Some(IR_VERSION),
        opset_import: vec![OperatorSetIdProto { domain: Some(String::new()), version: Some(OPSET) }],
        producer_name: Some("lwf-engine".into()),
        producer_version: Some(env!("CARGO_PKG_VERSION").into()),
        model_version: Some(1),
        doc_string: Some(format!(
            "{}. Input `images`: N×{c}×{h}×{w} f32 in [0, 1] (normalisation inside). Outputs: `probabilities` \
             (N×{k}, classes in id order, see metadata class_ids / class_names; {}), `features` (N×{}).",
            spec.description,
            spec.classifier.probability_rule(),
            clf.dim()
        )),
        graph: Some(graph),
        metadata_props: vec![
            meta("version", env!("CARGO_PKG_VERSION").into()),
            meta("architecture", net.arch.name.clone()),
            meta("classifier", spec.classifier.name().into()),
            meta("probability_rule", spec.classifier.probability_rule().into()),
            meta("class_ids", json(&ids)),
            meta("class_names", json(&names)),
            meta("normalisation", json(&spec.norm)),
            meta("input", format!("{c}x{h}x{w}, f32 in [0, 1], channels first")),
        ],
        ..Default::default()
    };
    model.encode_to_vec()
}

/// `(images − mean) / std`, per channel.
fn normalise(g: &mut Graph, norm: &Normalization, c: usize) -> String {
    let (mean, std): (Vec<f32>, Vec<f32>) = (0..c).map(|ch| norm.channel(ch)).unzip();
    let m = g.f32s("norm.mean", &[1, c, 1, 1], &mean);
    let s = g.f32s("norm.std", &[1, c, 1, 1], &std);
    let x = g.op("Sub", &["images", &m], vec![], "centred");
    g.op("Div", &[&x, &s], vec![], "normalised")
}

fn trunk<B: Backend>(g: &mut Graph, b: &B, net: &Net<B>, x: String) -> String {
    let mut h = x;
    for layer in &net.trunk {
        h = match layer {
            Layer::Conv2d(c) => conv(g, b, c, &h),
            Layer::BatchNorm(bn) => batchnorm(g, b, bn, &h),
            Layer::Relu => g.op("Relu", &[&h], vec![], "relu"),
            &Layer::MaxPool2d { k, s, pad } => g.op("MaxPool", &[&h], window(k, s, pad), "pool"),
            Layer::Flatten => g.op("Flatten", &[&h], vec![("axis", Attr::Int(1))], "flat"),
            Layer::Linear(l) => linear(g, b, l, &h),
            Layer::GlobalAvgPool => {
                let p = g.op("GlobalAveragePool", &[&h], vec![], "avgpool");
                g.op("Flatten", &[&p], vec![("axis", Attr::Int(1))], "pooled")
            }
            Layer::Basic(blk) => {
                let conv_bn = |g: &mut Graph, c: &Conv2d<B>, bn: &BatchNorm2d<B>, x: &str| {
                    let y = conv(g, b, c, x);
                    batchnorm(g, b, bn, &y)
                };
                let a = conv_bn(g, &blk.conv1, &blk.bn1, &h);
                let a = g.op("Relu", &[&a], vec![], "relu");
                let a = conv_bn(g, &blk.conv2, &blk.bn2, &a);
                let shortcut = match &blk.downsample {
                    Some((c, bn)) => conv_bn(g, c, bn, &h),
                    None => h.clone(),
                };
                let sum = g.op("Add", &[&a, &shortcut], vec![], "residual");
                g.op("Relu", &[&sum], vec![], "relu")
            }
        };
    }
    h
}

fn conv<B: Backend>(g: &mut Graph, b: &B, c: &Conv2d<B>, x: &str) -> String {
    let w = g.f32s(&c.w.name, &[c.oc, c.c, c.k, c.k], &c.w.value.to_vec(b));
    let mut inputs = vec![x.to_string(), w];
    if let Some(bias) = &c.b {
        inputs.push(g.f32s(&bias.name, &[c.oc], &bias.value.to_vec(b)));
    }
    let inputs: Vec<&str> = inputs.iter().map(String::as_str).collect();
    g.op("Conv", &inputs, window(c.k, c.stride, c.pad), "conv")
}

/// A square k×k window's attributes (Conv, MaxPool): stride s, padding p on every side.
fn window(k: usize, s: usize, p: usize) -> Vec<(&'static str, Attr)> {
    let (k, s, p) = (k as i64, s as i64, p as i64);
    vec![
        ("kernel_shape", Attr::Ints(vec![k, k])),
        ("strides", Attr::Ints(vec![s, s])),
        ("pads", Attr::Ints(vec![p, p, p, p])),
    ]
}

fn batchnorm<B: Backend>(g: &mut Graph, b: &B, bn: &BatchNorm2d<B>, x: &str) -> String {
    let c = bn.c;
    let scale = g.f32s(&bn.w.name, &[c], &bn.w.value.to_vec(b));
    let bias = g.f32s(&bn.b.name, &[c], &bn.b.value.to_vec(b));
    let mean = g.f32s(&format!("{}.running_mean", bn.name), &[c], &bn.running_mean.to_vec(b));
    let var = g.f32s(&format!("{}.running_var", bn.name), &[c], &bn.running_var.to_vec(b));
    g.op("BatchNormalization", &[x, &scale, &bias, &mean, &var], vec![("epsilon", Attr::Float(bn.eps))], "bn")
}

fn linear<B: Backend>(g: &mut Graph, b: &B, l: &Linear<B>, x: &str) -> String {
    let w = g.f32s(&l.w.name, &[l.out_f, l.in_f], &l.w.value.to_vec(b));
    let bias = g.f32s(&l.b.name, &[l.out_f], &l.b.value.to_vec(b));
    g.op("Gemm", &[x, &w, &bias], vec![("transB", Attr::Int(1))], "linear")
}

/// Rows `order[0], order[1], …` of a row-major matrix of `width` columns.
fn rows_in(order: &[usize], m: &[f32], width: usize) -> Vec<f32> {
    order.iter().flat_map(|&r| m[r * width..(r + 1) * width].iter().copied()).collect()
}

/// Rows of `x` scaled to unit L2 norm (a zero row stays zero), as
/// `stats::l2_rows`.
fn l2_rows(g: &mut Graph, x: &str) -> String {
    let n = g.op("ReduceL2", &[x], vec![("axes", Attr::Ints(vec![1])), ("keepdims", Attr::Int(1))], "norm");
    let tiny = g.f32s("tiny", &[], &[1e-30]);
    let n = g.op("Max", &[&n, &tiny], vec![], "norm");
    g.op("Div", &[x, &n], vec![], "unit")
}

/// `softmax(scale · scores)` over the classes.
fn softmax(g: &mut Graph, scores: &str, scale: f32) -> String {
    let z = if scale == 1.0 {
        scores.to_string()
    } else {
        let s = g.f32s("softmax_scale", &[], &[scale]);
        g.op("Mul", &[scores, &s], vec![], "scaled")
    };
    g.op("Softmax", &[&z], vec![("axis", Attr::Int(1))], "softmax")
}

/// Probabilities (N × K, the columns `order` of `clf`).
fn classifier(g: &mut Graph, clf: &FeatureClassifier, feats: &str, order: &[usize]) -> String {
    let k = clf.classes.len();
    match clf.parts() {
        Parts::NcmTask { ncm, heads, task_of } => {
            // Both halves over the same classes in class-id order: NCM's
            // columns are this classifier's, the heads' are found by class.
            let p = classifier(g, ncm, feats, order);
            let heads_order: Vec<usize> = order
                .iter()
                .map(|&j| heads.classes.iter().position(|c| *c == clf.classes[j]).expect("same classes"))
                .collect();
            let logits = scores(g, heads, feats, &heads_order);
            // Per task: its share of the NCM probability times the softmax
            // of its own head's logits; then back into class-id order.
            let n_tasks = task_of.iter().max().map_or(0, |m| m + 1);
            let axes = g.i64s("axis1", &[1], &[1]);
            let mut parts = Vec::new();
            let mut concat_order = Vec::new();
            for t in 0..n_tasks {
                let cols: Vec<i64> = (0..k).filter(|&j| task_of[order[j]] == t).map(|j| j as i64).collect();
                if cols.is_empty() {
                    continue;
                }
                concat_order.extend(cols.iter().map(|&j| j as usize));
                let idx = g.i64s(&format!("task{t}.columns"), &[cols.len()], &cols);
                let pt = g.op("Gather", &[&p, &idx], vec![("axis", Attr::Int(1))], "task_classes");
                let pt =
                    g.op("ReduceSum", &[&pt, &axes], vec![("keepdims", Attr::Int(1))], "task_probability");
                let lt = g.op("Gather", &[&logits, &idx], vec![("axis", Attr::Int(1))], "task_logits");
                let st = g.op("Softmax", &[&lt], vec![("axis", Attr::Int(1))], "task_softmax");
                parts.push(g.op("Mul", &[&st, &pt], vec![], "task_part"));
            }
            let inputs: Vec<&str> = parts.iter().map(String::as_str).collect();
            let joined = g.op("Concat", &inputs, vec![("axis", Attr::Int(1))], "tasks");
            // Column j of the output is column `back[j]` of `joined`.
            let back: Vec<i64> = (0..k)
                .map(|j| concat_order.iter().position(|&c| c == j).expect("every column") as i64)
                .collect();
            let back = g.i64s("class_order", &[k], &back);
            g.op("Gather", &[&joined, &back], vec![("axis", Attr::Int(1))], "ncm_task")
        }
        _ => {
            let s = scores(g, clf, feats, order);
            softmax(g, &s, clf.softmax_scale().expect("a classifier with scores"))
        }
    }
}

/// Scores (N × K, the columns `order`) of a heads, NCM, Mahalanobis or analytic classifier.
fn scores(g: &mut Graph, clf: &FeatureClassifier, feats: &str, order: &[usize]) -> String {
    let (d, k) = (clf.dim(), order.len());
    match clf.parts() {
        Parts::Linear { w, b } => {
            let w = g.f32s("classifier.weight", &[k, d], &rows_in(order, w, d));
            let b = g.f32s("classifier.bias", &[k], &rows_in(order, b, 1));
            g.op("Gemm", &[feats, &w, &b], vec![("transB", Attr::Int(1))], "logits")
        }
        Parts::Ncm { means } => {
            let x = l2_rows(g, feats);
            // Means as columns: D × K.
            let m = rows_in(order, means, d);
            let m = &m;
            let mt: Vec<f32> = (0..d).flat_map(|i| (0..k).map(move |j| m[j * d + i])).collect();
            let mt = g.f32s("ncm.means_t", &[d, k], &mt);
            g.op("MatMul", &[&x, &mt], vec![], "cosine")
        }
        Parts::TukeyLinear { w, b } => {
            let r = g.op("Relu", &[feats], vec![], "nonneg");
            let s = g.op("Sqrt", &[&r], vec![], "tukey");
            let t = l2_rows(g, &s);
            let w = g.f32s("analytic.weight", &[k, d], &rows_in(order, w, d));
            let b = g.f32s("analytic.bias", &[k], &rows_in(order, b, 1));
            g.op("Gemm", &[&t, &w, &b], vec![("transB", Attr::Int(1))], "scores")
        }
        Parts::Mahalanobis { means, inv } => {
            // t = Tukey space; centred[k, n, :] = t[n] − μ_k; d²[n, k] =
            // Σ_i (centred · Σ_k⁻¹)[k, n, i] · centred[k, n, i].
            let r = g.op("Relu", &[feats], vec![], "nonneg");
            let s = g.op("Sqrt", &[&r], vec![], "tukey");
            let t = l2_rows(g, &s);
            let axes0 = g.i64s("axis0", &[1], &[0]);
            let t = g.op("Unsqueeze", &[&t, &axes0], vec![], "tukey_1nd");
            let mu = g.f32s("mahalanobis.means", &[k, 1, d], &rows_in(order, means, d));
            let centred = g.op("Sub", &[&t, &mu], vec![], "centred_knd");
            let inv = g.f32s("mahalanobis.inverse_covariances", &[k, d, d], &rows_in(order, inv, d * d));
            let prod = g.op("MatMul", &[&centred, &inv], vec![], "whitened");
            let sq = g.op("Mul", &[&prod, &centred], vec![], "terms");
            let axes2 = g.i64s("axis2", &[1], &[2]);
            let d2 = g.op("ReduceSum", &[&sq, &axes2], vec![("keepdims", Attr::Int(0))], "d2_kn");
            let d2 = g.op("Transpose", &[&d2], vec![("perm", Attr::Ints(vec![1, 0]))], "d2");
            let neg = g.f32s("minus_one", &[], &[-1.0]);
            g.op("Mul", &[&d2, &neg], vec![], "neg_d2")
        }
        Parts::NcmTask { .. } => unreachable!("ncm-task has probabilities, not scores"),
    }
}
