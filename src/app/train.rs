//! `train`: a new model on some classes of a data set.

use super::{
    augment_note, calibrate_unknown, class_names, finish_session, unknown_note, validation_note,
    BackendChoice, Resumable,
};
use crate::backend::Backend;
use crate::checkpoint::{self, HistoryEntry, Meta};
use crate::data::{self, ClassList, Dataset, FolderOptions};
use crate::error::{Error, Result};
use crate::incremental::eval::evaluate;
use crate::incremental::methods::{add_task_fisher, streams, task_stats, train_first_task, TaskContext};
use crate::incremental::train::Trainer;
use crate::incremental::{Hyper, Observer, Ssl};
use crate::nn::{ArchKind, Net};
use crate::rng::Rng;
use std::path::PathBuf;

/// `train`: a new model on some classes of a data set.
pub struct TrainRequest {
    pub data: String,
    /// How an image folder is read (IDX/NPY data ignore it).
    pub folder: FolderOptions,
    /// Ids and names; names are resolved against the data's class names.
    /// `None`: every class of an image folder (a user's own classes), else
    /// 0-4 (the first half of Fashion-MNIST, the paper's first task).
    pub classes: Option<ClassList>,
    pub arch: ArchKind,
    pub out: PathBuf,
    pub seed: u64,
    pub hyper: Hyper,
    pub resumable: Resumable,
}

pub fn train(choice: BackendChoice, req: &TrainRequest, obs: &dyn Observer) -> Result<String> {
    crate::fsio::check_output_file(&req.out)?;
    let data = data::load_with(&req.data, &req.folder)?;
    let where_ = data.root.display().to_string();
    let classes = match &req.classes {
        Some(c) => c.resolve(&data.class_names, &where_)?,
        None if data.ids_from_names => (0..data.num_classes as u32).collect(),
        None => (0..5).collect(),
    };
    data::check_classes_present(&data.train, &classes, &where_)?;
    on_backend!(choice, b => train_on(&b, &data, &classes, req, obs))
}

fn train_on<B: Backend>(
    b: &B,
    data: &Dataset,
    classes: &[u32],
    req: &TrainRequest,
    obs: &dyn Observer,
) -> Result<String> {
    let arch = req.arch.build([data.train.c, data.train.h, data.train.w]);
    arch.validate().map_err(Error::Config)?;
    let mut tr = Trainer::new(b.clone());
    let run = serde_json::json!({
        "verb": "train", "data": data.root, "classes": classes, "seed": req.seed, "hyper": req.hyper,
        "arch": arch,
    });
    tr.session = req.resumable.session(&req.out, run)?;
    let mut net = Net::new(b, arch.clone(), &mut Rng::derive(req.seed, streams::TRUNK));
    let view = data::task_view(&data.train, classes);
    let norm = data.norm_for(&view);
    let cx = TaskContext { split: &data.train, norm: &norm, hyper: &req.hyper, seed: req.seed, obs };
    let report = train_first_task(&mut tr, &mut net, &view, &cx)?;
    let mut meta = Meta::new(arch, &norm, req.hyper.head_mode);
    meta.heads =
        vec![checkpoint::HeadMeta { classes: classes.to_vec(), class_names: class_names(data, classes) }];
    meta.tasks = vec![classes.to_vec()];
    meta.history.push(HistoryEntry {
        verb: "train".into(),
        method: "train".into(),
        classes: classes.to_vec(),
        data: data.root.display().to_string(),
        epochs: req.hyper.epochs,
        seed: req.seed,
        train_seconds: report.timing.train_seconds,
        sdc_sigma: None,
        sdc_sigma_chosen_by: None,
        validation_accuracy: report.final_validation_accuracy(),
        selection: None,
        bn: (!net.batchnorms().is_empty()).then_some(crate::nn::BnPolicy::Train),
        known_classes: Vec::new(),
        augment: req.hyper.augment.resolved(data.train.c, data.train.h, data.train.w),
        teacher: None,
    });
    let stats = task_stats(&mut tr, &net, &view, &cx, req.hyper.class_stats);
    let mut fisher = None;
    add_task_fisher(&mut tr, &mut net, &view, 1, &cx, &mut fisher);
    let fisher = fisher.expect("just estimated");
    meta.unknown = calibrate_unknown(&mut tr, &net, &meta.tasks, Some(&stats), &view, &cx, 0);
    let acc = evaluate(
        &mut tr,
        &net,
        &data.test,
        &norm,
        &meta.tasks,
        meta.head_mode,
        req.hyper.batch_size,
        None,
        &[],
    );
    checkpoint::save(&req.out, b, &net, &meta, Some(&fisher), Some(&stats))?;
    finish_session(&tr);
    Ok(format!(
        "trained classes {} ({}) on {} in {:.1}s ({:.0} images/s){}{}; test accuracy {:.2}%{}; class statistics: {}{} → {}",
        data::format_classes(classes),
        class_names(data, classes).join(", "),
        b.name(),
        report.timing.train_seconds,
        report.timing.images_per_second(),
        augment_note(meta.history.last()),
        match req.hyper.ssl {
            Ssl::Rotation => ", with rotation self-supervision",
            Ssl::Off => "",
        },
        100.0 * acc.task_aware[0],
        validation_note(&report),
        stats.kind().name(),
        unknown_note(meta.unknown.as_ref()),
        req.out.display()
    ))
}
