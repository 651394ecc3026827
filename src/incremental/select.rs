//! Choosing LwF's stability–plasticity knobs (λ_o, and optionally T and the
//! learning rate) without old data, with the rule of the continual
//! hyper-parameter framework of Masana et al. ("Class-incremental learning:
//! survey and performance evaluation", the framework behind FACIL's grid
//! search):
//!
//! 1. Fine-tune on the new task alone (one run per learning rate of the grid)
//!    and take the best new-task validation accuracy as the reference A*
//!    (and its learning rate as the one LwF uses).
//! 2. Start from the most stable setting, the largest λ_o, and relax it down
//!    the grid until LwF's new-task validation accuracy is within the
//!    tolerance of the reference: acc ≥ (1 − tolerance) · A*. Keep that
//!    model. With several temperatures, each gets its own relaxation and the
//!    most stable accepted setting wins (larger λ_o, then higher accuracy).
//!
//! Only the new task's validation images are read: the old data is never
//! needed. Every trial starts from the same model and seed, so the kept model
//! is exactly what a plain run with the chosen values gives.

use super::methods::{learn_task, MethodState, TaskContext, TaskReport};
use super::selection::{Selection, Trial};
use super::train::Trainer;
use super::{Hyper, Method};
use crate::backend::Backend;
use crate::data::TaskView;
use crate::error::{Error, Result};
use crate::nn::Net;
use serde::{Deserialize, Serialize};
use std::time::Instant;

/// The grids and the tolerance (`--select-*`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SelectGrid {
    /// λ_o values; tried from the largest (most stable) down.
    pub lambdas: Vec<f32>,
    /// Temperatures; empty: the configured `--temperature` alone.
    pub temperatures: Vec<f32>,
    /// Learning rates of the fine-tuning reference; empty: `--lr` alone.
    pub lrs: Vec<f32>,
    /// Accepted drop of new-task validation accuracy, relative to the
    /// fine-tuning reference (0.2 = within 20 %).
    pub tolerance: f64,
}

impl Default for SelectGrid {
    fn default() -> Self {
        SelectGrid {
            lambdas: vec![8.0, 4.0, 2.0, 1.0, 0.5],
            temperatures: Vec::new(),
            lrs: Vec::new(),
            tolerance: 0.2,
        }
    }
}

impl SelectGrid {
    /// The grid is valid and `hyper` holds validation images to select on
    /// (checked by the verbs before any work, and by the selection itself).
    pub fn check(&self, hyper: &Hyper) -> Result<()> {
        self.validate()?;
        if hyper.val_fraction <= 0.0 {
            return Err(Error::Config(
                "--select needs validation images: --val-fraction must be above 0".into(),
            ));
        }
        Ok(())
    }

    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::Config(m));
        if self.lambdas.is_empty() {
            return bad("--select-lambdas is empty".into());
        }
        if let Some(l) = self.lambdas.iter().find(|l| !(l.is_finite() && **l > 0.0)) {
            return bad(format!("--select-lambdas: {l} is not a positive number"));
        }
        if let Some(t) = self.temperatures.iter().find(|t| !(t.is_finite() && **t >= 1.0)) {
            return bad(format!("--select-temperatures: {t} is not a number ≥ 1"));
        }
        if let Some(r) = self.lrs.iter().find(|r| !(r.is_finite() && **r > 0.0)) {
            return bad(format!("--select-lrs: {r} is not a positive number"));
        }
        if !(0.0..1.0).contains(&self.tolerance) {
            return bad(format!("--select-tolerance {} must be in [0, 1)", self.tolerance));
        }
        Ok(())
    }
}

/// One trial: `method` with `hyper` on copies of the net and state.
struct Outcome<B: Backend> {
    net: Net<B>,
    state: MethodState<B>,
    report: TaskReport,
    accuracy: Option<f64>,
    seconds: f64,
}

#[allow(clippy::too_many_arguments)]
fn trial<B: Backend>(
    tr: &mut Trainer<B>,
    net: &Net<B>,
    state: &MethodState<B>,
    method: Method,
    t: usize,
    new: &TaskView,
    old: &[TaskView],
    cx: &TaskContext<'_>,
    hyper: &Hyper,
) -> Result<Outcome<B>> {
    let b = tr.b.clone();
    let start = Instant::now();
    let mut net = net.duplicate(&b);
    let mut state = state.duplicate(&b);
    let cx = TaskContext { hyper, ..*cx };
    match learn_task(tr, &mut net, method, t, new, old, &mut state, &cx) {
        Ok(report) => {
            let accuracy = report.final_validation_accuracy();
            Ok(Outcome { net, state, report, accuracy, seconds: start.elapsed().as_secs_f64() })
        }
        // A diverged setting is a rejected trial, not the end of the selection.
        Err(Error::NonFiniteLoss { .. }) => Ok(Outcome {
            net,
            state,
            report: TaskReport::default(),
            accuracy: None,
            seconds: start.elapsed().as_secs_f64(),
        }),
        Err(e) => Err(e),
    }
}

/// Learn task `t` with LwF, its λ_o (T, lr) chosen by the rule above; `net`
/// and `state` end as the kept trial left them.
#[allow(clippy::too_many_arguments)]
pub fn learn_task_selected<B: Backend>(
    tr: &mut Trainer<B>,
    net: &mut Net<B>,
    t: usize,
    new: &TaskView,
    old: &[TaskView],
    state: &mut MethodState<B>,
    cx: &TaskContext<'_>,
    grid: &SelectGrid,
) -> Result<(TaskReport, Selection)> {
    grid.check(cx.hyper)?;
    let start = Instant::now();
    let base = cx.hyper;
    let lrs = if grid.lrs.is_empty() { vec![base.lr] } else { grid.lrs.clone() };
    let temps = if grid.temperatures.is_empty() { vec![base.temperature] } else { grid.temperatures.clone() };
    let mut lambdas = grid.lambdas.clone();
    lambdas.sort_by(|a, b| b.total_cmp(a));
    let mut trials = Vec::new();

    // (1) The fine-tuning reference.
    let mut reference: Option<(f64, f32)> = None;
    for &lr in &lrs {
        let hyper = Hyper { lr, ..base.clone() };
        cx.obs.note(&format!("select: reference, finetune with lr {lr}"));
        let o = trial(tr, net, state, Method::Finetune, t, new, old, cx, &hyper)?;
        trials.push(Trial {
            method: "finetune".into(),
            lambda_o: None,
            temperature: None,
            lr,
            val_accuracy: o.accuracy,
            accepted: false,
            seconds: o.seconds,
        });
        if let Some(a) = o.accuracy {
            if reference.is_none_or(|(best, _)| a > best) {
                reference = Some((a, lr));
            }
        }
    }
    let Some((reference, lr)) = reference else {
        return Err(Error::Config(format!("--select: fine-tuning diverged at every learning rate {lrs:?}")));
    };
    let threshold = (1.0 - grid.tolerance) * reference;

    // (2) From the most stable λ_o down, per temperature.
    let mut kept: Option<(Outcome<B>, f32, f32, bool)> = None;
    let better = |a: &(Outcome<B>, f32, f32, bool), lambda: f32, acc: f64, within: bool| {
        let a_acc = a.0.accuracy.unwrap_or(f64::NEG_INFINITY);
        match (a.3, within) {
            (false, true) => true,
            (true, false) => false,
            (true, true) => lambda > a.1 || (lambda == a.1 && acc > a_acc),
            (false, false) => acc > a_acc,
        }
    };
    for &temperature in &temps {
        for &lambda in &lambdas {
            let hyper = Hyper { lambda_o: lambda, temperature, lr, ..base.clone() };
            cx.obs.note(&format!("select: lwf with λ_o {lambda}, T {temperature}, lr {lr}"));
            let o = trial(tr, net, state, Method::Lwf, t, new, old, cx, &hyper)?;
            let within = o.accuracy.is_some_and(|a| a >= threshold);
            trials.push(Trial {
                method: "lwf".into(),
                lambda_o: Some(lambda),
                temperature: Some(temperature),
                lr,
                val_accuracy: o.accuracy,
                accepted: within,
                seconds: o.seconds,
            });
            if let Some(acc) = o.accuracy {
                if kept.as_ref().is_none_or(|k| better(k, lambda, acc, within)) {
                    kept = Some((o, lambda, temperature, within));
                }
            }
            if within {
                break;
            }
        }
    }
    let Some((o, lambda, temperature, within)) = kept else {
        return Err(Error::Config("--select: LwF diverged for every λ_o of the grid".into()));
    };
    *net = o.net;
    *state = o.state;
    let selection = Selection {
        rule: format!(
            "Masana et al.: finetune reference, then λ_o relaxed from the largest until the new task's \
             validation accuracy is within {}% of it",
            100.0 * grid.tolerance
        ),
        reference_val_accuracy: reference,
        threshold,
        lambda_o: lambda,
        temperature,
        lr,
        within_tolerance: within,
        trials,
        seconds_total: start.elapsed().as_secs_f64(),
    };
    cx.obs.note(&selection.table());
    Ok((o.report, selection))
}
