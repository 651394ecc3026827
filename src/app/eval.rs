//! `eval`: accuracies of a saved model on a test split.

use super::{check_input, choose_classifier, eval_present, load_for_model, no_stats_note, BackendChoice};
use crate::backend::Backend;
use crate::checkpoint;
use crate::data::{self, ClassList, FolderOptions};
use crate::error::{Error, Result};
use crate::incremental::classifier::ClassifierKind;
use crate::incremental::train::Trainer;
use crate::incremental::unknown::{auroc, score_of, standardisation_of, UnknownDetector, UnknownScore};
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;

/// `eval`: accuracies of a saved model on a test split.
#[derive(Clone, Debug, Serialize)]
pub struct EvalReport {
    pub model: String,
    pub data: String,
    pub backend: String,
    pub tasks: Vec<Vec<u32>>,
    /// Per task; null where the data has no test image of that task.
    pub task_aware: Vec<Option<f64>>,
    /// The classifier behind `class_il` and `class_il_per_task`.
    pub classifier: ClassifierKind,
    pub class_il: f64,
    pub class_il_per_task: Vec<Option<f64>>,
    /// Every classifier the checkpoint allows: class-IL over all images.
    pub class_il_by_classifier: BTreeMap<String, f64>,
    pub images: usize,
    pub seconds: f64,
    /// How well the model tells images of classes it has not learnt
    /// (`--unknown-classes`) from those it has.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unknown: Option<UnknownReport>,
    /// What the model lacks and what that means, when it has no statistics.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// `eval --unknown-classes`: the known test images against the test images
/// of classes the model has not learnt.
#[derive(Clone, Debug, Serialize)]
pub struct UnknownReport {
    pub classes: Vec<u32>,
    pub images: usize,
    /// The model's score (its calibrated rule's, else the default).
    pub score: UnknownScore,
    /// AUROC of that score: the chance an unknown image scores above a known one.
    pub auroc: f64,
    /// Every score the model's statistics allow.
    pub auroc_by_score: BTreeMap<String, f64>,
    /// The model's calibrated threshold, when it has one.
    pub threshold: Option<f32>,
    /// Share of the unknown images the threshold rejects (calls unknown).
    pub unknown_rejected: Option<f64>,
    /// Share of the known test images the threshold accepts.
    pub known_accepted: Option<f64>,
}

impl UnknownReport {
    fn to_table(&self) -> String {
        let mut s = format!(
            "unknown classes {} ({} images): AUROC {:.4} ({})",
            data::format_classes(&self.classes),
            self.images,
            self.auroc,
            self.score
        );
        match (self.threshold, self.unknown_rejected, self.known_accepted) {
            (Some(t), Some(r), Some(a)) => {
                s += &format!(
                    "; at the threshold {t:.4} {:.1}% of unknown images rejected, {:.1}% of known accepted",
                    100.0 * r,
                    100.0 * a
                )
            }
            _ => s += "; the model holds no calibrated threshold",
        }
        let all: Vec<String> = self.auroc_by_score.iter().map(|(k, v)| format!("{k} {v:.4}")).collect();
        s + &format!("\nAUROC by score: {}", all.join(", "))
    }
}

impl EvalReport {
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("serialisable")
    }
    pub fn to_table(&self) -> String {
        let pct = |a: &Option<f64>| a.map_or("-".to_string(), |a| format!("{:.2}%", 100.0 * a));
        let mut s = format!(
            "{} on {} ({}, {} images, {:.1}s)\n",
            self.model, self.data, self.backend, self.images, self.seconds
        );
        s += &format!("{:<8} {:<12} {:>10} {:>10}\n", "task", "classes", "task-aware", "class-IL");
        for (j, t) in self.tasks.iter().enumerate() {
            s += &format!(
                "{:<8} {:<12} {:>10} {:>10}\n",
                j + 1,
                data::format_classes(t),
                pct(&self.task_aware[j]),
                pct(&self.class_il_per_task[j])
            );
        }
        s += &format!(
            "class-incremental accuracy over all seen classes: {:.2}% ({})",
            100.0 * self.class_il,
            self.classifier
        );
        let others: Vec<String> =
            self.class_il_by_classifier.iter().map(|(k, v)| format!("{k} {:.2}%", 100.0 * v)).collect();
        s += &format!("\nby classifier: {}", others.join(", "));
        if let Some(u) = &self.unknown {
            s += &format!("\n{}", u.to_table());
        }
        s
    }
}

/// `classifier`: the one behind the headline class-IL (default:
/// `ClassifierKind::default_for` the model's statistics).
pub fn eval(
    choice: BackendChoice,
    model: &Path,
    data_spec: &str,
    folder: &FolderOptions,
    classifier: Option<ClassifierKind>,
    unknown_classes: Option<&ClassList>,
) -> Result<EvalReport> {
    on_backend!(choice, b => eval_on(&b, model, data_spec, folder, classifier, unknown_classes))
}

fn eval_on<B: Backend>(
    b: &B,
    model: &Path,
    data_spec: &str,
    folder: &FolderOptions,
    classifier: Option<ClassifierKind>,
    unknown_classes: Option<&ClassList>,
) -> Result<EvalReport> {
    let ck = checkpoint::load(model, b)?;
    let data = load_for_model(data_spec, folder, &ck.meta)?;
    check_input(model, &ck.meta.arch, &data.test, &data.root)?;
    let kind = choose_classifier(model, classifier, ck.stats.as_ref())?;
    let mut tr = Trainer::new(b.clone());
    let norm = ck.meta.norm();
    let start = Instant::now();
    let known = ck.meta.classes();
    let images = data.test.labels.iter().filter(|l| known.contains(l)).count();
    if images == 0 {
        let names = |v: Vec<String>| v.into_iter().take(6).collect::<Vec<_>>().join(", ");
        let model_names = names(ck.meta.named_classes().into_iter().map(|(_, n)| n).collect());
        return Err(Error::Config(format!(
            "{} has no test image of a class {} knows ({model_names}; the data has {}): image folders are matched \
             to the model's classes by name",
            data.root.display(),
            model.display(),
            names({
                let mut present: Vec<u32> = data.test.labels.clone();
                present.sort_unstable();
                present.dedup();
                present.iter().map(|&l| data.class_names[l as usize].clone()).collect()
            })
        )));
    }
    let acc = eval_present(&mut tr, &ck.net, &ck.meta, &data.test, &norm, 128, ck.stats.as_ref());
    let chosen = acc.of(kind).expect("an available classifier is evaluated");
    let unknown = match unknown_classes {
        Some(list) => {
            let ids = list.resolve(&data.class_names, &data.root.display().to_string())?;
            Some(unknown_report(&mut tr, &ck, &data, model, &ids)?)
        }
        None => None,
    };
    let opt = |v: &[f64]| v.iter().map(|a| if a.is_nan() { None } else { Some(*a) }).collect();
    Ok(EvalReport {
        model: model.display().to_string(),
        data: data.root.display().to_string(),
        backend: b.name(),
        tasks: ck.meta.tasks.clone(),
        task_aware: opt(&acc.task_aware),
        classifier: kind,
        class_il: chosen.overall,
        class_il_per_task: opt(&chosen.per_task),
        class_il_by_classifier: acc.by_classifier.iter().map(|c| (c.kind.name().into(), c.overall)).collect(),
        images,
        seconds: start.elapsed().as_secs_f64(),
        unknown,
        note: no_stats_note(ck.stats.as_ref()),
    })
}

fn unknown_report<B: Backend>(
    tr: &mut Trainer<B>,
    ck: &checkpoint::Checkpoint<B>,
    data: &data::Dataset,
    model: &Path,
    classes: &[u32],
) -> Result<UnknownReport> {
    let known = ck.meta.classes();
    if let Some(c) = classes.iter().find(|c| known.contains(c)) {
        return Err(Error::Config(format!(
            "--unknown-classes names class {c}, which {} has learnt: list classes it does not know",
            model.display()
        )));
    }
    let pick = |keep: &dyn Fn(u32) -> bool| -> Vec<usize> {
        (0..data.test.labels.len()).filter(|&i| keep(data.test.labels[i])).collect()
    };
    let (known_idx, unknown_idx) = (pick(&|l| known.contains(&l)), pick(&|l| classes.contains(&l)));
    if unknown_idx.is_empty() {
        return Err(Error::Config(format!(
            "--unknown-classes {}: {} has no test image of these classes",
            data::format_classes(classes),
            data.root.display()
        )));
    }
    let norm = ck.meta.norm();
    let b = tr.b.clone();
    let detector = UnknownDetector::new(&b, &ck.net, &ck.meta.tasks, ck.stats.as_ref());
    let known_feats = tr.features(&ck.net, &data.test, &norm, &known_idx, 128);
    let unknown_feats = tr.features(&ck.net, &data.test, &norm, &unknown_idx, 128);
    // Combined's standardisation: the model's, else the known images' own
    // (never the unknown ones', which would hide the shift being measured).
    let kept = ck.meta.unknown.as_ref().and_then(|r| r.standardise);
    let k = detector.all_scores(&known_feats, known_idx.len(), kept);
    let u = detector.all_scores(&unknown_feats, unknown_idx.len(), kept.or_else(|| standardisation_of(&k)));
    let score =
        ck.meta.unknown.as_ref().map_or_else(|| UnknownScore::default_for(ck.stats.as_ref()), |r| r.score);
    let auroc_by_score: BTreeMap<String, f64> =
        k.iter().zip(&u).map(|((s, kv), (_, uv))| (s.name().to_string(), auroc(kv, uv))).collect();
    let (ks, us) = (score_of(&k, score).expect("available"), score_of(&u, score).expect("available"));
    let threshold = ck.meta.unknown.as_ref().map(|r| r.threshold);
    let share = |v: &[f32], above: bool, t: f32| {
        v.iter().filter(|&&x| (x > t) == above).count() as f64 / v.len() as f64
    };
    Ok(UnknownReport {
        classes: classes.to_vec(),
        images: unknown_idx.len(),
        score,
        auroc: auroc(ks, us),
        auroc_by_score,
        threshold,
        unknown_rejected: threshold.map(|t| share(us, true, t)),
        known_accepted: threshold.map(|t| share(ks, false, t)),
    })
}
