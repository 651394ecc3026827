//! `extend`: new classes into a saved model, from the new data only.

use super::{
    augment_note, calibrate_unknown, check_input, class_names, eval_present, finish_session, load_for_model,
    unknown_note, validation_note, BackendChoice, Resumable,
};
use crate::backend::Backend;
use crate::checkpoint::{self, HistoryEntry};
use crate::data::{self, ClassList, FolderOptions, TaskView};
use crate::error::{Error, Result};
use crate::incremental::classifier::ClassifierKind;
use crate::incremental::methods::{
    add_task_fisher, check_freeze_layers, learn_task, MethodState, TaskContext,
};
use crate::incremental::select::{learn_task_selected, SelectGrid};
use crate::incremental::train::Trainer;
use crate::incremental::{HeadMode, Hyper, Method, Observer};
use std::path::PathBuf;

/// `extend`: new classes into a saved model, from the new data only.
pub struct ExtendRequest {
    pub model: PathBuf,
    pub data: String,
    /// How an image folder is read; its size and channels default to the model's.
    pub folder: FolderOptions,
    /// Classes to learn (ids or names): new ones get a new head; known ones
    /// (more images of them) keep theirs. `None`: every class of the data
    /// the model does not know.
    pub classes: Option<ClassList>,
    pub method: Method,
    pub old_data: Option<String>,
    pub out: PathBuf,
    pub seed: u64,
    pub hyper: Hyper,
    pub resumable: Resumable,
    /// `--select`: choose LwF's λ_o (T, lr) on the new data's validation split.
    pub select: Option<SelectGrid>,
}

pub fn extend(choice: BackendChoice, req: &ExtendRequest, obs: &dyn Observer) -> Result<String> {
    let method = req.method;
    crate::fsio::check_output_file(&req.out)?;
    if let Some(grid) = &req.select {
        if method != Method::Lwf {
            return Err(Error::Config(format!(
                "--select chooses LwF's λ_o and T: it needs --method lwf, not {method}"
            )));
        }
        if req.resumable.checkpoint_every > 0 || req.resumable.resume.is_some() {
            return Err(Error::Config(
                "--select runs several trainings: it cannot be combined with --checkpoint-every or --resume"
                    .into(),
            ));
        }
        grid.check(&req.hyper)?;
    }
    if method == Method::JointShared {
        return Err(Error::Config(
            "--method joint-shared is for experiments; to extend a shared-head model with its old data use \
             --method joint on a model trained with --head-mode shared"
                .into(),
        ));
    }
    on_backend!(choice, b => extend_on(&b, method, req, obs))
}

fn extend_on<B: Backend>(b: &B, method: Method, req: &ExtendRequest, obs: &dyn Observer) -> Result<String> {
    // The model first: it says how the data's images are read.
    let ck = checkpoint::load(&req.model, b)?;
    let (mut net, mut meta) = (ck.net, ck.meta);
    let data = &load_for_model(&req.data, &req.folder, &meta)?;
    check_input(&req.model, &meta.arch, &data.train, &data.root)?;
    let known = meta.classes();
    let classes = match &req.classes {
        Some(c) => c.resolve(&data.class_names, &data.root.display().to_string())?,
        None => {
            let present: Vec<u32> = (0..data.num_classes as u32)
                .filter(|c| data.train.labels.contains(c) && !known.contains(c))
                .collect();
            if present.is_empty() {
                return Err(Error::Config(format!(
                    "{} has no class the model does not already know ({})",
                    data.root.display(),
                    data::format_classes(&known)
                )));
            }
            present
        }
    };
    // Known classes given again are more images of them: LwF distils every
    // old head as usual, each known class trains on its own head, and its
    // statistics are merged with the old ones. New classes get a new head.
    let (again, fresh): (Vec<u32>, Vec<u32>) = classes.iter().partition(|c| known.contains(c));
    if !again.is_empty() && method.needs_old_data() {
        return Err(Error::Config(format!(
            "classes {} are already known by {}: --method {method} retrains on the old data, so put their \
             extra images there (--old-data) and extend with new classes only",
            data::format_classes(&again),
            req.model.display()
        )));
    }
    data::check_classes_present(&data.train, &classes, &data.root.display().to_string())?;
    if meta.head_mode != req.hyper.head_mode {
        return Err(Error::Config(format!(
            "{} uses --head-mode {}, not {}",
            req.model.display(),
            meta.head_mode.name(),
            req.hyper.head_mode.name()
        )));
    }
    check_freeze_layers(&net, method, &req.hyper)?;
    if method == Method::Ewc && ck.fisher.is_none() {
        return Err(Error::checkpoint(
            &req.model,
            "--method ewc: the model carries no Fisher information (a model imported without --data): \
             import it again with --data DIR holding images of its classes, or choose another method",
        ));
    }
    // Only joint reads old data; it must hold every class the model knows.
    let old_data = match (method, &req.old_data) {
        (Method::Joint, Some(spec)) => Some(load_for_model(spec, &req.folder, &meta)?),
        (Method::Joint, None) => Some(data.clone()),
        _ => None,
    };
    let old_views: Vec<TaskView> = match &old_data {
        Some(od) => {
            check_input(&req.model, &meta.arch, &od.train, &od.root)?;
            meta.tasks
                .iter()
                .map(|t| {
                    data::check_classes_present(&od.train, t, &od.root.display().to_string())
                        .map(|_| data::task_view(&od.train, t))
                })
                .collect::<Result<_>>()?
        }
        None => Vec::new(),
    };
    // joint trains on old and new images together: one split holding both.
    let (split, new_view, old_views) = match &old_data {
        Some(od) => data::joint_split(&od.train, &old_views, &data.train, &classes),
        None => (data.train.clone(), data::task_view(&data.train, &classes), old_views),
    };
    let t = meta.tasks.len();
    let mut tr = Trainer::new(b.clone());
    let run = serde_json::json!({
        "verb": "extend", "model": req.model, "data": data.root, "classes": classes, "method": method,
        "old_data": req.old_data, "seed": req.seed, "hyper": req.hyper,
    });
    let norm = meta.norm();
    tr.session = req.resumable.session(&req.out, run)?;
    let had_stats = ck.stats.is_some();
    let mut state = MethodState { fisher: ck.fisher, stats: ck.stats };
    let cx = TaskContext { split: &split, norm: &norm, hyper: &req.hyper, seed: req.seed, obs };
    let (report, selection) = match &req.select {
        Some(grid) => {
            let (r, s) =
                learn_task_selected(&mut tr, &mut net, t, &new_view, &old_views, &mut state, &cx, grid)?;
            (r, Some(s))
        }
        None => (learn_task(&mut tr, &mut net, method, t, &new_view, &old_views, &mut state, &cx)?, None),
    };
    // Only new classes make a task (and a head); known ones stay in theirs.
    if !fresh.is_empty() {
        meta.tasks.push(fresh.clone());
        match meta.head_mode {
            HeadMode::PerTask => meta.heads.push(checkpoint::HeadMeta {
                classes: fresh.clone(),
                class_names: class_names(data, &fresh),
            }),
            HeadMode::Shared => {
                meta.heads[0].classes.extend(&fresh);
                meta.heads[0].class_names.extend(class_names(data, &fresh));
            }
        }
    }
    meta.history.push(HistoryEntry {
        verb: "extend".into(),
        method: method.name().into(),
        classes: classes.clone(),
        data: data.root.display().to_string(),
        epochs: req.hyper.epochs,
        seed: req.seed,
        train_seconds: report.timing.train_seconds,
        sdc_sigma: report.drift.as_ref().map(|d| d.sigma),
        sdc_sigma_chosen_by: report.drift.as_ref().map(|d| d.how.clone()),
        validation_accuracy: report.final_validation_accuracy(),
        selection: selection.clone(),
        bn: (!net.batchnorms().is_empty()).then_some(req.hyper.bn),
        known_classes: again.clone(),
        augment: req.hyper.augment.resolved(split.c, split.h, split.w),
        teacher: (method == Method::Lwf && req.hyper.augment.resolved(split.c, split.h, split.w).is_some())
            .then_some(req.hyper.teacher),
    });
    add_task_fisher(&mut tr, &mut net, &new_view, t as u64 + 1, &cx, &mut state.fisher);
    let fisher = state.fisher.take().expect("just estimated");
    let stats = state.stats.take();
    meta.unknown = calibrate_unknown(&mut tr, &net, &meta.tasks, stats.as_ref(), &new_view, &cx, t);
    let acc = eval_present(&mut tr, &net, &meta, &data.test, cx.norm, req.hyper.batch_size, stats.as_ref());
    checkpoint::save(&req.out, b, &net, &meta, Some(&fisher), stats.as_ref())?;
    finish_session(&tr);
    let per: Vec<String> = meta
        .tasks
        .iter()
        .zip(&acc.task_aware)
        .map(|(t, a)| {
            if a.is_nan() {
                format!("{}: -", data::format_classes(t))
            } else {
                format!("{}: {:.2}%", data::format_classes(t), 100.0 * a)
            }
        })
        .collect();
    let stats_note = match (&stats, &report.drift) {
        (None, _) if !had_stats => {
            "; the model has no class statistics (imported without --data, or saved by an older version): \
             predictions use aligned-heads"
                .into()
        }
        (Some(s), Some(d)) => format!(
            "; class statistics ({}) of {} classes, old means drift-compensated with σ = {} ({})",
            s.kind().name(),
            s.classes.len(),
            d.sigma,
            d.how
        ),
        (Some(s), None) => format!("; class statistics ({}) of {} classes", s.kind().name(), s.classes.len()),
        (None, _) => String::new(),
    };
    let cil = match acc.of(ClassifierKind::default_for(stats.as_ref())) {
        Some(c) if !c.overall.is_nan() => format!("; class-IL {:.2}% ({})", 100.0 * c.overall, c.kind),
        _ => String::new(),
    };
    let chosen = selection.as_ref().map_or(String::new(), |s| {
        format!(
            " (λ_o {}, T {}, lr {} chosen by --select in {:.1}s)",
            s.lambda_o, s.temperature, s.lr, s.seconds_total
        )
    });
    let unk = unknown_note(meta.unknown.as_ref());
    let what = match (again.is_empty(), fresh.is_empty()) {
        (true, _) => format!(
            "extended with classes {} ({})",
            data::format_classes(&fresh),
            class_names(data, &fresh).join(", ")
        ),
        (false, true) => format!(
            "refined known classes {} ({}) with more images",
            data::format_classes(&again),
            class_names(data, &again).join(", ")
        ),
        (false, false) => format!(
            "extended with classes {} ({}) and refined known classes {} with more images",
            data::format_classes(&fresh),
            class_names(data, &fresh).join(", "),
            data::format_classes(&again)
        ),
    };
    Ok(format!(
        "{what} by {method}{chosen} on {} in {:.1}s ({:.0} images/s){}{}; test accuracy per task [{}]{cil}{stats_note}{unk} → {}",
        b.name(),
        report.timing.train_seconds,
        report.timing.images_per_second(),
        augment_note(meta.history.last()),
        validation_note(&report),
        per.join(", "),
        req.out.display()
    ))
}
