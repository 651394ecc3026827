//! `predict`: class names and probabilities for each image of image files,
//! folders of them, or IDX/NPY files.

use super::{check_input, check_limits, choose_classifier, no_stats_note, BackendChoice};
use crate::backend::Backend;
use crate::checkpoint;
use crate::data::folder::{decode_files, image_files_under, is_image_file};
use crate::data::{self, Split};
use crate::error::{Error, Result};
use crate::incremental::classifier::{ClassifierKind, FeatureClassifier};
use crate::incremental::train::Trainer;
use crate::incremental::unknown::{UnknownDetector, UnknownRule};
use crate::metrics::report::csv_field;
use crate::nn::Arch;
use serde::Serialize;
use std::path::{Path, PathBuf};

/// The top-k classes of one image, over every class the model knows.
#[derive(Clone, Debug, Serialize)]
pub struct Prediction {
    /// Position in the output, from 0.
    pub image: usize,
    /// The image's file; an IDX/NPY file's images are `FILE[i]`.
    pub file: String,
    /// (class, name, probability), most likely first.
    pub top: Vec<(u32, String, f32)>,
    /// "None of these": the model's unknown score is above its threshold
    /// (absent when the model has no rule).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unknown: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unknown_score: Option<f32>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Predictions {
    pub model: String,
    pub inputs: Vec<String>,
    /// Which classifier scored the classes (its `probability_rule` says how
    /// scores became probabilities).
    pub classifier: ClassifierKind,
    pub predictions: Vec<Prediction>,
    /// The rule that marks an image as none of the model's classes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unknown_rule: Option<UnknownRule>,
    /// What the model lacks and what that means, when it has no statistics.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

impl Predictions {
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("serialisable")
    }

    pub fn to_table(&self) -> String {
        let rule = self.classifier.probability_rule();
        let mut head = format!("classifier {} (probabilities: {rule})", self.classifier);
        if let Some(r) = &self.unknown_rule {
            head += &format!(
                "; none of these: {} score above {:.3}, which accepts {:.0}% of the {}",
                r.score,
                r.threshold,
                100.0 * r.accept,
                r.calibrated_on
            );
        }
        let mut lines = vec![head];
        let width = self.predictions.iter().map(|p| p.file.chars().count()).max().unwrap_or(0);
        for p in &self.predictions {
            let tops: Vec<String> =
                p.top.iter().map(|(c, n, pr)| format!("{n} ({c}) {:.1}%", 100.0 * pr)).collect();
            let verdict = match (p.unknown, p.unknown_score) {
                (Some(true), Some(v)) => format!("none of these (score {v:.3}); nearest: "),
                _ => String::new(),
            };
            lines.push(format!("{:<width$}  {verdict}{}", p.file, tops.join("   ")));
        }
        lines.join("\n")
    }

    /// One row per image and rank: `file,rank,class,name,probability,unknown`
    /// (`unknown`: true when the image is none of the model's classes,
    /// empty when the model has no rule).
    pub fn to_csv(&self) -> String {
        let mut s = String::from("file,rank,class,name,probability,unknown\n");
        for p in &self.predictions {
            let unknown = p.unknown.map_or(String::new(), |u| u.to_string());
            for (rank, (c, n, pr)) in p.top.iter().enumerate() {
                s += &format!("{},{},{c},{},{pr},{unknown}\n", csv_field(&p.file), rank + 1, csv_field(n));
            }
        }
        s
    }
}

/// `inputs`: image files (`.png`, `.jpg`, `.jpeg`), folders searched
/// recursively for them, and IDX/NPY files, in the order given; `limit`
/// keeps the first N images of all of them.
pub fn predict(
    choice: BackendChoice,
    model: &Path,
    inputs: &[PathBuf],
    top_k: usize,
    limit: Option<usize>,
    classifier: Option<ClassifierKind>,
) -> Result<Predictions> {
    check_limits(&[("--limit", limit)])?;
    on_backend!(choice, b => predict_on(&b, model, inputs, top_k, limit, classifier))
}

fn predict_on<B: Backend>(
    b: &B,
    model: &Path,
    inputs: &[PathBuf],
    top_k: usize,
    limit: Option<usize>,
    classifier: Option<ClassifierKind>,
) -> Result<Predictions> {
    let ck = checkpoint::load(model, b)?;
    let kind = choose_classifier(model, classifier, ck.stats.as_ref())?;
    let (images, files) = read_inputs(model, &ck.meta.arch, inputs, limit.unwrap_or(usize::MAX))?;
    let clf = FeatureClassifier::build(kind, b, &ck.net, &ck.meta.tasks, ck.stats.as_ref())
        .map_err(|e| Error::checkpoint(model, e))?;
    let mut tr = Trainer::new(b.clone());
    let all: Vec<usize> = (0..images.len()).collect();
    let feats = tr.features(&ck.net, &images, &ck.meta.norm(), &all, 128);
    let scores = clf.scores(&feats, images.len());
    let verdicts = ck.meta.unknown.as_ref().map(|rule| {
        let detector = UnknownDetector::new(b, &ck.net, &ck.meta.tasks, ck.stats.as_ref());
        rule.apply(&detector, &feats, images.len())
    });
    let nc = clf.classes.len();
    let mut predictions = Vec::with_capacity(images.len());
    for (i, file) in files.into_iter().enumerate() {
        let p = clf.probabilities(&scores[i * nc..(i + 1) * nc]);
        let mut order: Vec<usize> = (0..nc).collect();
        order.sort_by(|&a, &b| p[b].total_cmp(&p[a]));
        let top = order
            .iter()
            .take(top_k.max(1))
            .map(|&k| (clf.classes[k], ck.meta.class_name(clf.classes[k]), p[k]))
            .collect();
        let verdict = verdicts.as_ref().map(|v| v[i]);
        predictions.push(Prediction {
            image: i,
            file,
            top,
            unknown: verdict.map(|v| v.0),
            unknown_score: verdict.map(|v| v.1),
        });
    }
    Ok(Predictions {
        model: model.display().to_string(),
        inputs: inputs.iter().map(|p| p.display().to_string()).collect(),
        classifier: kind,
        predictions,
        unknown_rule: ck.meta.unknown.clone(),
        note: no_stats_note(ck.stats.as_ref()),
    })
}

/// Where predicted images come from, in the order given.
enum Source {
    /// Image files, decoded together (converted and resized to the model's input).
    Images(Vec<PathBuf>),
    /// An IDX or NPY file of images already of the model's shape.
    Tensor(PathBuf),
}

/// The first `limit` images of `inputs` as the model reads them, one split,
/// and a name for each. Image files go through the image-folder loader's
/// decoder at the model's size and channel count.
fn read_inputs(model: &Path, arch: &Arch, inputs: &[PathBuf], limit: usize) -> Result<(Split, Vec<String>)> {
    let mut sources: Vec<Source> = Vec::new();
    for input in inputs {
        let found = if input.is_dir() {
            image_files_under(input)?
        } else if is_image_file(input) {
            vec![input.clone()]
        } else {
            sources.push(Source::Tensor(input.clone()));
            continue;
        };
        match sources.last_mut() {
            Some(Source::Images(v)) => v.extend(found),
            _ => sources.push(Source::Images(found)),
        }
    }
    let [c, h, w] = arch.input;
    let (mut split, mut names): (Option<Split>, Vec<String>) = (None, Vec::new());
    for source in sources {
        let left = limit - names.len();
        if left == 0 {
            break;
        }
        let (part, part_names) = match source {
            Source::Images(mut paths) => {
                paths.truncate(left);
                if ![1, 3].contains(&c) {
                    let msg = format!(
                        "the model takes {c}-channel images; image files are read as 1 or 3 channels"
                    );
                    return Err(Error::checkpoint(model, msg));
                }
                let names: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
                (decode_files(&paths, c, (h, w))?, names)
            }
            Source::Tensor(path) => {
                let all = data::load_images(&path)?;
                check_input(model, arch, &all, &path)?;
                let keep: Vec<usize> = (0..all.len().min(left)).collect();
                let names: Vec<String> = keep.iter().map(|i| format!("{}[{i}]", path.display())).collect();
                (all.subset(&keep), names)
            }
        };
        names.extend(part_names);
        split = Some(match split {
            None => part,
            Some(s) => s.concat(part),
        });
    }
    match split {
        Some(s) => Ok((s, names)),
        None => Err(Error::Config("--input names no image to predict".into())),
    }
}
