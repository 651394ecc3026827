//! `export`: a saved model as an ONNX file with its classifier inside.

use super::{choose_classifier, no_stats_note};
use crate::backend::CpuBackend;
use crate::checkpoint;
use crate::error::{Error, Result};
use crate::fsio;
use crate::incremental::classifier::{ClassifierKind, FeatureClassifier};
use crate::onnx::{export_model, ExportSpec, OPSET};
use serde::Serialize;
use std::path::Path;

/// What `export` wrote.
#[derive(Clone, Debug, Serialize)]
pub struct ExportReport {
    pub model: String,
    pub onnx: String,
    pub classifier: ClassifierKind,
    pub architecture: String,
    pub opset: i64,
    /// Class ids of the `probabilities` columns, in order.
    pub class_ids: Vec<u32>,
    pub bytes: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

impl ExportReport {
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("serialisable")
    }

    pub fn to_table(&self) -> String {
        let [first, last] = [self.class_ids.first(), self.class_ids.last()].map(|c| c.copied().unwrap_or(0));
        format!(
            "wrote {} ({:.1} MB, opset {}): {} with the {} classifier; outputs `probabilities` ({} classes, ids \
             {first}…{last} in order) and `features`",
            self.onnx,
            self.bytes as f64 / 1e6,
            self.opset,
            self.architecture,
            self.classifier,
            self.class_ids.len()
        )
    }
}

/// Write `model` as ONNX to `out` with `classifier` (default: the model's own).
/// Runs on the CPU backend: export only reads the weights.
pub fn export(model: &Path, out: &Path, classifier: Option<ClassifierKind>) -> Result<ExportReport> {
    fsio::check_output_file(out)?;
    let b = CpuBackend::new();
    let ck = checkpoint::load(model, &b)?;
    let kind = choose_classifier(model, classifier, ck.stats.as_ref())?;
    let clf = FeatureClassifier::build(kind, &b, &ck.net, &ck.meta.tasks, ck.stats.as_ref())
        .map_err(|e| Error::checkpoint(model, e))?;
    let spec = ExportSpec {
        classes: ck.meta.named_classes(),
        norm: ck.meta.norm(),
        classifier: kind,
        description: format!("lwf-engine model {} ({} tasks)", model.display(), ck.meta.tasks.len()),
    };
    let bytes = export_model(&b, &ck.net, &clf, &spec);
    fsio::write_atomic(out, &bytes)?;
    let mut class_ids = clf.classes.clone();
    class_ids.sort_unstable();
    Ok(ExportReport {
        model: model.display().to_string(),
        onnx: out.display().to_string(),
        classifier: kind,
        architecture: ck.meta.arch.name.clone(),
        opset: OPSET,
        class_ids,
        bytes: bytes.len(),
        note: no_stats_note(ck.stats.as_ref()),
    })
}
