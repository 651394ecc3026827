//! `eval`: accuracies of a saved model on a test split.

use super::{check_input, choose_classifier, eval_present, load_for_model, no_stats_note, BackendChoice};
use crate::backend::Backend;
use crate::checkpoint;
use crate::data::{self, FolderOptions};
use crate::error::{Error, Result};
use crate::incremental::classifier::ClassifierKind;
use crate::incremental::train::Trainer;
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
    /// What the model lacks and what that means, when it has no statistics.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
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
) -> Result<EvalReport> {
    on_backend!(choice, b => eval_on(&b, model, data_spec, folder, classifier))
}

fn eval_on<B: Backend>(
    b: &B,
    model: &Path,
    data_spec: &str,
    folder: &FolderOptions,
    classifier: Option<ClassifierKind>,
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
        note: no_stats_note(ck.stats.as_ref()),
    })
}
