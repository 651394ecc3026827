//! `predict`: class names and probabilities for each image.

use super::{check_input, choose_classifier, BackendChoice};
use crate::backend::Backend;
use crate::checkpoint;
use crate::data::{self, Normalization, Split};
use crate::error::{Error, Result};
use crate::incremental::classifier::{ClassifierKind, FeatureClassifier};
use crate::incremental::train::Trainer;
use serde::Serialize;
use std::path::Path;

/// `predict`: the top-k classes of each image, over every class the model knows.
#[derive(Clone, Debug, Serialize)]
pub struct Prediction {
    pub image: usize,
    /// (class, name, probability), most likely first.
    pub top: Vec<(u32, String, f32)>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Predictions {
    pub model: String,
    pub input: String,
    /// Which classifier scored the classes (its `probability_rule` says how
    /// scores became probabilities).
    pub classifier: ClassifierKind,
    pub predictions: Vec<Prediction>,
}

impl Predictions {
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("serialisable")
    }
    pub fn to_table(&self) -> String {
        let rule = self.classifier.probability_rule();
        let mut lines = vec![format!("classifier {} (probabilities: {rule})", self.classifier)];
        for p in &self.predictions {
            let tops: Vec<String> =
                p.top.iter().map(|(c, n, pr)| format!("{n} ({c}) {:.1}%", 100.0 * pr)).collect();
            lines.push(format!("{:>6}  {}", p.image, tops.join("   ")));
        }
        lines.join("\n")
    }
}

pub fn predict(
    choice: BackendChoice,
    model: &Path,
    input: &Path,
    top_k: usize,
    limit: Option<usize>,
    classifier: Option<ClassifierKind>,
) -> Result<Predictions> {
    let mut images = data::load_images(input)?;
    if let Some(n) = limit {
        let keep: Vec<usize> = (0..images.len().min(n)).collect();
        images = images.subset(&keep);
    }
    on_backend!(choice, b => predict_on(&b, model, input, &images, top_k, classifier))
}

fn predict_on<B: Backend>(
    b: &B,
    model: &Path,
    input: &Path,
    images: &Split,
    top_k: usize,
    classifier: Option<ClassifierKind>,
) -> Result<Predictions> {
    let ck = checkpoint::load(model, b)?;
    check_input(model, &ck.meta.arch, images, input)?;
    let kind = choose_classifier(model, classifier, ck.stats.as_ref())?;
    let clf = FeatureClassifier::build(kind, b, &ck.net, &ck.meta.tasks, ck.stats.as_ref())
        .map_err(|e| Error::checkpoint(model, e))?;
    let norm = Normalization { mean: ck.meta.norm_mean, std: ck.meta.norm_std };
    let mut tr = Trainer::new(b.clone());
    let all: Vec<usize> = (0..images.len()).collect();
    let feats = tr.features(&ck.net, images, norm, &all, 128);
    let scores = clf.scores(&feats, images.len());
    let nc = clf.classes.len();
    let mut predictions = Vec::with_capacity(images.len());
    for i in 0..images.len() {
        let p = clf.probabilities(&scores[i * nc..(i + 1) * nc]);
        let mut order: Vec<usize> = (0..nc).collect();
        order.sort_by(|&a, &b| p[b].total_cmp(&p[a]));
        let top = order
            .iter()
            .take(top_k.max(1))
            .map(|&k| (clf.classes[k], ck.meta.class_name(clf.classes[k]), p[k]))
            .collect();
        predictions.push(Prediction { image: i, top });
    }
    Ok(Predictions {
        model: model.display().to_string(),
        input: input.display().to_string(),
        classifier: kind,
        predictions,
    })
}
