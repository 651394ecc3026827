//! Hands each verb's flags to the library and collects what it answers, to
//! be printed by `main`.

use super::flags::Common;
use super::progress::Bars;
use super::{Cli, Cmd};
use lwf_engine::app::{self, BackendChoice};
use lwf_engine::backend::cpu::simd;
use lwf_engine::data::FolderOptions;
use std::cell::RefCell;

fn setup(c: &Common) -> lwf_engine::Result<BackendChoice> {
    app::set_threads(c.threads)?;
    // Once, before any kernel runs: the kernels would otherwise resolve
    // LWF_SIMD on first use and panic on a bad value.
    simd::configure(c.simd)?;
    Ok(c.backend)
}

/// What a verb answers: notes for stderr, then the text for stdout.
#[derive(Default)]
pub struct Output {
    pub notes: Vec<String>,
    pub text: String,
}

impl Output {
    fn line(text: impl std::fmt::Display) -> Self {
        Output { notes: Vec::new(), text: format!("{text}\n") }
    }

    /// A report's optional note, then the report as JSON or a table.
    fn report(
        note: &Option<String>,
        json: bool,
        to_json: impl FnOnce() -> String,
        to_table: impl FnOnce() -> String,
    ) -> Self {
        let mut out = Output::line(if json { to_json() } else { to_table() });
        out.notes.extend(note.iter().map(|n| format!("note: {n}")));
        out
    }

    pub fn print(&self) {
        for n in &self.notes {
            eprintln!("{n}");
        }
        print!("{}", self.text);
    }
}

pub fn run(cli: Cli) -> lwf_engine::Result<Output> {
    if matches!(cli.cmd, Cmd::Train(_) | Cmd::Extend(_) | Cmd::Experiment(_) | Cmd::Bench(_)) {
        lwf_engine::interrupt::install_handlers();
    }
    let obs = Bars { bar: RefCell::new(None) };
    Ok(match cli.cmd {
        Cmd::Train(a) => {
            let be = setup(&a.common)?;
            let req = app::TrainRequest {
                folder: a.data.folder(),
                data: a.data.data,
                classes: a.classes,
                arch: a.arch,
                out: a.out,
                seed: a.seed,
                hyper: a.hyper.hyper()?,
                resumable: a.resume.resumable(),
            };
            Output::line(app::train(be, &req, &obs)?)
        }
        Cmd::Extend(a) => {
            let be = setup(&a.common)?;
            let req = app::ExtendRequest {
                model: a.model,
                folder: a.data.folder(),
                data: a.data.data,
                classes: a.classes,
                method: a.method,
                old_data: a.old_data,
                out: a.out,
                seed: a.seed,
                hyper: a.hyper.hyper()?,
                resumable: a.resume.resumable(),
                select: a.select.grid(),
            };
            Output::line(app::extend(be, &req, &obs)?)
        }
        Cmd::Import(a) => {
            let be = setup(&a.common)?;
            let classes = match (a.classes, &a.classes_file) {
                (Some(c), _) => c,
                (None, Some(f)) => app::read_classes_file(f)?,
                (None, None) => unreachable!("clap requires one of them"),
            };
            let req = app::ImportRequest {
                arch: a.arch,
                weights: a.weights,
                classes,
                image_size: a.image_size,
                channels: a.channels,
                norm: lwf_engine::data::Normalization { mean: a.norm_mean, std: a.norm_std },
                data: a.data,
                folder: FolderOptions { test_fraction: a.test_fraction, ..FolderOptions::default() },
                head_mode: a.head_mode,
                class_stats: a.class_stats,
                batch_size: a.batch_size,
                out: a.out,
            };
            Output::line(app::import(be, &req, &obs)?)
        }
        Cmd::Eval(a) => {
            let be = setup(&a.common)?;
            let r = app::eval(
                be,
                &a.model,
                &a.data.data,
                &a.data.folder(),
                a.classifier,
                a.unknown_classes.as_ref(),
            )?;
            Output::report(&r.note, a.json, || r.to_json(), || r.to_table())
        }
        Cmd::Export(a) => {
            let r = app::export(&a.model, &a.onnx, a.classifier)?;
            Output::report(&r.note, a.json, || r.to_json(), || r.to_table())
        }
        Cmd::Predict(a) => {
            let be = setup(&a.common)?;
            let p = app::predict(be, &a.model, &a.input, a.top_k, a.limit, a.classifier)?;
            let mut out = match (a.json, a.csv) {
                (true, _) => Output::line(p.to_json()),
                (_, true) => Output { notes: Vec::new(), text: p.to_csv() },
                _ => Output::line(p.to_table()),
            };
            out.notes.extend(p.note.iter().map(|n| format!("note: {n}")));
            out
        }
        Cmd::Experiment(a) => {
            let be = setup(&a.common)?;
            let req = app::ExperimentRequest {
                folder: a.data.folder(),
                data: a.data.data,
                arch: a.arch,
                protocol: a.protocol,
                tasks: a.tasks.map(|t| t.0),
                methods: a.methods,
                seeds: a.seeds,
                out: a.out,
                train_limit: a.train_limit,
                test_limit: a.test_limit,
                hyper: a.hyper.hyper()?,
                resume: a.resume,
                shard: a.shard,
                select: a.select.grid(),
            };
            Output::line(app::experiment(be, &req, &obs)?)
        }
        Cmd::Merge(a) => Output::line(app::merge(&a.dirs, &a.out)?),
        Cmd::Bench(a) => {
            let be = match (setup(&a.common)?, a.im2col_only) {
                (BackendChoice::Cpu, true) => BackendChoice::CpuIm2col,
                (_, true) => {
                    return Err(lwf_engine::Error::Config(
                        "--im2col-only applies to the cpu backend only".into(),
                    ))
                }
                (be, false) => be,
            };
            let folder = a.data.folder();
            let r = app::bench(be, &a.data.data, &folder, a.train_limit, &a.hyper.hyper()?, a.arch, &obs)?;
            Output::line(if a.json { r.to_json() } else { r.to_table() })
        }
    })
}
