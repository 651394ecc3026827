//! Continual-learning metrics and the reports an experiment writes.
//!
//! The central object is the accuracy matrix `A` of one run: row `t` holds the
//! accuracies measured right after training task `t`, column `j` is the test
//! set of task `j`, and cells with `j > t` are `None` (task not seen yet).
//! Everything the reference (`reference/lwf_ref.py`) reports is derived from
//! `A` (task-aware) and `C` (class-incremental accuracy restricted to each
//! task's images), so callers hand over only the raw matrices, the class-IL
//! accuracies and the timings, and [`RunResult::from_parts`] computes the rest.
//!
//! - [`report`]: JSON / CSV writers and the plain-text tables
//! - [`plot`]: the SVG accuracy-per-step plot
//!
//! All accuracies are fractions in [0, 1]; the tables print percentages.

pub mod plot;
pub mod report;

pub use plot::{render_plot_svg, write_plot_svg};
pub use report::{
    classifier_table, comparison_table, matrix_table, read_json, write_classifier_csv, write_csv, write_json,
    write_summary_csv,
};

use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The n×n accuracy matrix of one run (row = after task t, column = task j).
///
/// Serialised exactly as the reference does: a list of rows with `null` for
/// tasks not yet seen.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct AccMatrix(pub Vec<Vec<Option<f64>>>);

impl AccMatrix {
    /// An n×n matrix with every cell unseen, to be filled with [`AccMatrix::set_row`].
    pub fn new(n: usize) -> Self {
        AccMatrix(vec![vec![None; n]; n])
    }

    /// Build from the lower triangle: `rows[t]` holds the accuracies on tasks
    /// `0..=t` measured after task `t` (what the evaluation returns).
    pub fn from_lower(rows: &[Vec<f64>]) -> Result<Self> {
        let mut m = AccMatrix::new(rows.len());
        for (t, row) in rows.iter().enumerate() {
            m.set_row(t, row)?;
        }
        Ok(m)
    }

    /// Number of tasks.
    pub fn n(&self) -> usize {
        self.0.len()
    }

    /// `A[t][j]`, `None` when unseen or out of range (never panics).
    pub fn get(&self, t: usize, j: usize) -> Option<f64> {
        self.0.get(t).and_then(|r| r.get(j)).copied().flatten()
    }

    /// Record the evaluation after task `t`: `accs[j]` for tasks `0..=t`.
    pub fn set_row(&mut self, t: usize, accs: &[f64]) -> Result<()> {
        let n = self.n();
        if t >= n || accs.len() != t + 1 {
            return Err(Error::Report(format!(
                "accuracy row after task {t} needs {} values for a {n}-task matrix, got {}",
                t + 1,
                accs.len()
            )));
        }
        for (j, &a) in accs.iter().enumerate() {
            check_fraction(a, &format!("accuracy after task {t} on task {j}"))?;
            self.0[t][j] = Some(a);
        }
        Ok(())
    }

    /// Check the shape the derived metrics assume: square, every cell with
    /// `j <= t` present and a fraction, every cell with `j > t` absent.
    pub fn validate(&self, what: &str) -> Result<()> {
        let n = self.n();
        if n == 0 {
            return Err(Error::Report(format!("{what}: the accuracy matrix is empty")));
        }
        for (t, row) in self.0.iter().enumerate() {
            if row.len() != n {
                return Err(Error::Report(format!("{what}: row {t} has {} cells, expected {n}", row.len())));
            }
            for (j, cell) in row.iter().enumerate() {
                match (j <= t, cell) {
                    (true, Some(a)) => check_fraction(*a, &format!("{what}[{t}][{j}]"))?,
                    (true, None) => {
                        return Err(Error::Report(format!("{what}[{t}][{j}] is missing (task {j} seen)")))
                    }
                    (false, Some(_)) => {
                        return Err(Error::Report(format!("{what}[{t}][{j}] is set but task {j} is unseen")))
                    }
                    (false, None) => {}
                }
            }
        }
        Ok(())
    }

    /// The row after the last task, i.e. the final accuracies.
    pub fn last_row(&self) -> &[Option<f64>] {
        self.0.last().map(Vec::as_slice).unwrap_or(&[])
    }

    /// Average accuracy after the last task: the mean of the last row's seen cells.
    pub fn final_avg(&self) -> Option<f64> {
        mean(&self.last_row().iter().flatten().copied().collect::<Vec<_>>())
    }

    /// Mean final accuracy on the old tasks `0..n-1` (`None` when n = 1).
    pub fn old_tasks_final(&self) -> Option<f64> {
        let n = self.n();
        let old: Vec<f64> = (0..n.saturating_sub(1)).filter_map(|j| self.get(n - 1, j)).collect();
        mean(&old)
    }

    /// Final accuracy on the newest task, `A[n-1][n-1]`.
    pub fn new_task_final(&self) -> Option<f64> {
        let n = self.n();
        n.checked_sub(1).and_then(|l| self.get(l, l))
    }

    /// Forgetting of each old task `j < n-1`, as the reference defines it:
    /// the best accuracy it had before the last task (`max_{t in [j, n-2]} A[t][j]`)
    /// minus its final accuracy. `None` for a task whose cells are missing.
    pub fn forgetting_per_task(&self) -> Vec<Option<f64>> {
        let n = self.n();
        (0..n.saturating_sub(1))
            .map(|j| {
                let best = (j..n - 1).filter_map(|t| self.get(t, j)).reduce(f64::max)?;
                Some(best - self.get(n - 1, j)?)
            })
            .collect()
    }

    /// Mean of [`AccMatrix::forgetting_per_task`]; `None` when there is no old task.
    pub fn avg_forgetting(&self) -> Option<f64> {
        mean(&self.forgetting_per_task().into_iter().flatten().collect::<Vec<_>>())
    }

    /// Backward transfer (Lopez-Paz & Ranzato 2017):
    /// `mean_{j<n-1} (A[n-1][j] - A[j][j])`. Unlike forgetting it compares
    /// with the accuracy right after learning task j, so a later gain counts.
    pub fn backward_transfer(&self) -> Option<f64> {
        let n = self.n();
        let diffs: Vec<f64> =
            (0..n.saturating_sub(1)).filter_map(|j| Some(self.get(n - 1, j)? - self.get(j, j)?)).collect();
        mean(&diffs)
    }
}

/// Reject NaN, infinities and values outside [0, 1]: an accuracy is a fraction,
/// and a percentage passed by mistake would silently skew every average.
fn check_fraction(a: f64, what: &str) -> Result<()> {
    if a.is_finite() && (0.0..=1.0).contains(&a) {
        Ok(())
    } else {
        Err(Error::Report(format!("{what} = {a} is not a fraction in [0, 1]")))
    }
}

/// Reject NaN, infinities and negative durations or counts: serde_json would
/// write them as `null` and the file would no longer read back.
fn check_non_negative(x: f64, what: &str) -> Result<()> {
    if x.is_finite() && x >= 0.0 {
        Ok(())
    } else {
        Err(Error::Report(format!("{what} = {x} must be finite and >= 0")))
    }
}

/// Arithmetic mean; `None` for an empty slice (never NaN).
pub fn mean(xs: &[f64]) -> Option<f64> {
    if xs.is_empty() {
        None
    } else {
        Some(xs.iter().sum::<f64>() / xs.len() as f64)
    }
}

/// Mean and sample standard deviation (n − 1 denominator, 0 for one value),
/// the usual "mean ± std over seeds"; `None` for an empty slice.
pub fn mean_std(xs: &[f64]) -> Option<(f64, f64)> {
    let m = mean(xs)?;
    if xs.len() < 2 {
        return Some((m, 0.0));
    }
    let var = xs.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / (xs.len() - 1) as f64;
    Some((m, var.sqrt()))
}

/// Where one task's time went: the one timing record, filled by the epoch
/// loop (epochs, images), the task's method (train, Y_o and statistics
/// seconds) and the protocol (evaluation), and stored in the JSON through
/// [`Timings`]. The reference's definitions: `train_seconds` covers Y_o
/// recording, warm-up and the main epochs (and EWC's Fisher estimate),
/// evaluation and class statistics excluded.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TaskTiming {
    /// Wall seconds of the whole task's training, Y_o recording and warm-up included.
    pub train_seconds: f64,
    /// Seconds of each epoch in order, warm-up epochs first.
    pub epoch_seconds: Vec<f64>,
    /// Images that went through training steps, warm-up included.
    pub train_images: u64,
    /// Seconds of the evaluation after this task.
    pub eval_seconds: f64,
    /// Seconds spent recording the old model's responses (LwF only).
    pub yo_record_seconds: Option<f64>,
    /// Class statistics of the task and drift compensation of the old ones
    /// (outside `train_seconds`).
    pub stats_seconds: f64,
    /// Evaluating the validation images after each epoch (outside
    /// `train_seconds` and `epoch_seconds`).
    pub validation_seconds: f64,
}

/// The validation images of the task being learnt, after one epoch: the
/// accuracy of the head that learns them and, for LwF, the distillation loss
/// of the old heads on them (against the old model's outputs recorded before
/// training, averaged per image).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ValPoint {
    /// The task's epoch, 1-based, warm-up epochs first.
    pub epoch: usize,
    pub accuracy: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kd_loss: Option<f64>,
}

impl TaskTiming {
    /// Training images per second; 0 for a task that took no measurable time.
    pub fn images_per_second(&self) -> f64 {
        if self.train_seconds > 0.0 {
            self.train_images as f64 / self.train_seconds
        } else {
            0.0
        }
    }

    /// Add the epochs of one training phase (warm-up, main) of this task.
    pub fn add_phase(&mut self, phase: TaskTiming) {
        self.epoch_seconds.extend(phase.epoch_seconds);
        self.train_images += phase.train_images;
        self.validation_seconds += phase.validation_seconds;
    }
}

/// Per-task timings as stored in the JSON (`timings`).
///
/// Every field has a serde default so the reference's JSON, which lays its
/// timings out differently, still reads back.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Timings {
    /// Wall seconds of each task's training (incl. Y_o recording and warm-up).
    #[serde(default)]
    pub task_train_seconds: Vec<f64>,
    /// Per task, one entry per epoch, warm-up epochs included in order.
    #[serde(default)]
    pub epoch_seconds: Vec<Vec<f64>>,
    /// Per task: training images (warm-up included) / that task's train seconds.
    #[serde(default)]
    pub train_images_per_second: Vec<f64>,
    /// Per task: images through training steps (the numerator above).
    #[serde(default)]
    pub train_images: Vec<u64>,
    /// Per task: seconds of the evaluation after it.
    #[serde(default)]
    pub eval_seconds: Vec<f64>,
    /// Per task: Y_o recording seconds, 0 where none was recorded (as the
    /// reference does); absent when no task recorded any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub yo_record_seconds: Option<Vec<f64>>,
    /// Per task: seconds spent on class statistics and drift compensation
    /// (outside the train seconds); absent for runs without statistics.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub class_stats_seconds: Vec<f64>,
    /// Per task: seconds spent on the validation images (outside the train
    /// seconds); absent without a validation split.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub validation_seconds: Vec<f64>,
}

impl Timings {
    /// Collect the per-task measurements and derive images/s. A task that took
    /// no measurable time gets 0 images/s rather than infinity.
    pub fn from_tasks(tasks: &[TaskTiming]) -> Result<Self> {
        for (t, tt) in tasks.iter().enumerate() {
            check_non_negative(tt.train_seconds, &format!("train seconds of task {t}"))?;
            check_non_negative(tt.eval_seconds, &format!("eval seconds of task {t}"))?;
            for (e, s) in tt.epoch_seconds.iter().enumerate() {
                check_non_negative(*s, &format!("seconds of task {t} epoch {e}"))?;
            }
            if let Some(y) = tt.yo_record_seconds {
                check_non_negative(y, &format!("Y_o record seconds of task {t}"))?;
            }
        }
        let any_yo = tasks.iter().any(|t| t.yo_record_seconds.is_some());
        Ok(Timings {
            task_train_seconds: tasks.iter().map(|t| t.train_seconds).collect(),
            epoch_seconds: tasks.iter().map(|t| t.epoch_seconds.clone()).collect(),
            train_images_per_second: tasks.iter().map(TaskTiming::images_per_second).collect(),
            train_images: tasks.iter().map(|t| t.train_images).collect(),
            eval_seconds: tasks.iter().map(|t| t.eval_seconds).collect(),
            yo_record_seconds: any_yo
                .then(|| tasks.iter().map(|t| t.yo_record_seconds.unwrap_or(0.0)).collect()),
            class_stats_seconds: Vec::new(),
            validation_seconds: if tasks.iter().any(|t| t.validation_seconds > 0.0) {
                tasks.iter().map(|t| t.validation_seconds).collect()
            } else {
                Vec::new()
            },
        })
    }

    /// Total training seconds over all tasks.
    pub fn train_seconds_total(&self) -> f64 {
        self.task_train_seconds.iter().sum()
    }

    /// Training throughput of the last task (the incremental step being compared).
    pub fn last_task_images_per_second(&self) -> Option<f64> {
        self.train_images_per_second.last().copied()
    }
}

/// Which engine produced a run.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct EngineInfo {
    /// `cpu` or `wgpu`.
    pub backend: String,
    /// The GPU adapter's name, or the CPU model.
    pub device: String,
    /// Worker threads of the CPU backend, if it was the CPU backend.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threads: Option<usize>,
}

impl EngineInfo {
    /// What ran the work: the backend's family (`cpu`, `wgpu`) and the
    /// device's name; the CPU's thread count is read from rayon's pool.
    pub fn new(backend: &str, device: String) -> Self {
        EngineInfo {
            backend: backend.into(),
            device,
            threads: (backend == "cpu").then(rayon::current_num_threads),
        }
    }

    /// The version map stored as `versions`: this crate's version, the backend
    /// and device, the target, and rustc when the build exported
    /// `RUSTC_VERSION` (cargo does not by itself). Callers may add entries.
    pub fn versions(&self) -> BTreeMap<String, String> {
        let mut v = BTreeMap::new();
        v.insert("lwf-engine".to_string(), env!("CARGO_PKG_VERSION").to_string());
        v.insert("backend".to_string(), self.backend.clone());
        v.insert("device".to_string(), self.device.clone());
        v.insert("os".to_string(), std::env::consts::OS.to_string());
        v.insert("arch".to_string(), std::env::consts::ARCH.to_string());
        if let Some(rustc) = option_env!("RUSTC_VERSION") {
            v.insert("rustc".to_string(), rustc.to_string());
        }
        v
    }
}

/// The raw measurements of one (method, seed) run; see [`RunResult::from_parts`].
#[derive(Clone, Debug)]
pub struct RunParts {
    pub method: String,
    pub protocol: String,
    pub seed: u64,
    /// The classes of each task, in training order.
    pub tasks: Vec<Vec<u32>>,
    /// Hyper-parameters, stored verbatim (a JSON object).
    pub config: serde_json::Value,
    /// Task-aware accuracy matrix A.
    pub task_aware: AccMatrix,
    /// Class-IL accuracy restricted to each task's images, C.
    pub class_il_per_task: AccMatrix,
    /// Class-IL accuracy over all seen classes after each task.
    pub class_il_after_each_task: Vec<f64>,
    /// One entry per task.
    pub task_timings: Vec<TaskTiming>,
    pub engine: EngineInfo,
    /// Usually `engine.versions()`, possibly extended.
    pub versions: BTreeMap<String, String>,
}

/// One run's report, field for field the reference's JSON (same names, same
/// units: fractions, `null` for unseen tasks) plus our `backward_transfer`,
/// `versions`, `engine` and a richer `timings`.
///
/// Values that do not exist for a single task (forgetting, old-task accuracy,
/// BWT) are `null` rather than the reference's NaN.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunResult {
    pub method: String,
    pub protocol: String,
    pub seed: u64,
    pub tasks: Vec<Vec<u32>>,
    pub config: serde_json::Value,
    pub acc_matrix_task_aware: AccMatrix,
    pub acc_matrix_class_il_per_task: AccMatrix,
    pub class_il_acc_after_each_task: Vec<f64>,
    pub final_task_aware_avg: f64,
    pub final_class_il_acc: f64,
    pub old_tasks_acc_final: Option<f64>,
    pub new_task_acc_final: f64,
    pub avg_forgetting_task_aware: Option<f64>,
    pub forgetting_per_task: Vec<f64>,
    pub avg_forgetting_class_il: Option<f64>,
    #[serde(default)]
    pub backward_transfer: Option<f64>,
    #[serde(default)]
    pub versions: BTreeMap<String, String>,
    #[serde(default)]
    pub engine: EngineInfo,
    #[serde(default)]
    pub timings: Timings,
    /// Class-IL accuracy of each class-incremental classifier (`heads` is
    /// `class_il_acc_after_each_task` again, for side-by-side reading).
    #[serde(default)]
    pub class_il_by_classifier: BTreeMap<String, ClassifierCurve>,
    /// Per task: drift compensation of the class statistics and how close the
    /// stored means stayed to the truth (empty for runs without statistics).
    #[serde(default)]
    pub class_stats_per_task: Vec<StatsRecord>,
    /// Per task: its validation images after each epoch (empty without a
    /// validation split).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub validation_per_task: Vec<Vec<ValPoint>>,
    /// Per task: what `--select` tried and chose (null for tasks it did not
    /// choose; empty when it was off).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub selection_per_task: Vec<serde_json::Value>,
}

/// One classifier's class-IL accuracy over a run.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ClassifierCurve {
    pub after_each_task: Vec<f64>,
    /// After the last task, restricted to each task's test images.
    pub final_per_task: Vec<f64>,
    /// Mean of `final_per_task` over the old tasks (null with one task).
    pub final_old_tasks: Option<f64>,
    pub final_new_task: f64,
}

impl ClassifierCurve {
    pub fn new(after_each_task: Vec<f64>, final_per_task: Vec<f64>) -> Self {
        let n = final_per_task.len();
        let final_old_tasks = (n > 1).then(|| final_per_task[..n - 1].iter().sum::<f64>() / (n - 1) as f64);
        let final_new_task = final_per_task.last().copied().unwrap_or(f64::NAN);
        ClassifierCurve { after_each_task, final_per_task, final_old_tasks, final_new_task }
    }
}

/// The class statistics after one task.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct StatsRecord {
    /// σ of drift compensation (null where it did not run).
    pub sdc_sigma: Option<f32>,
    pub sdc_sigma_tukey: Option<f32>,
    /// How σ was chosen.
    pub sdc_sigma_chosen_by: Option<String>,
    /// (σ, mean cosine to the held-out new class's true mean) per σ tried.
    pub sdc_sigma_trials: Vec<(f32, f64)>,
    /// Mean length of the moves applied to the old means.
    pub sdc_mean_shift: Option<f64>,
    /// Diagnostics that read the old images (an experiment has them; no
    /// classifier uses them): mean cosine between the stored old means and
    /// the means recomputed on the old images, with and without compensation.
    pub old_mean_cosine_compensated: Option<f64>,
    pub old_mean_cosine_uncompensated: Option<f64>,
    /// Class-IL of NCM with the old means recomputed on the old images.
    pub ncm_recomputed_class_il: Option<f64>,
}

impl RunResult {
    /// Validate the raw measurements and derive every summary number from
    /// them, so no caller can report a forgetting that disagrees with its matrix.
    pub fn from_parts(p: RunParts) -> Result<Self> {
        let n = p.tasks.len();
        check_shapes(&p, n)?;
        let a = &p.task_aware;
        let c = &p.class_il_per_task;
        let timings = Timings::from_tasks(&p.task_timings)?;
        // validate() guarantees n >= 1 and a full lower triangle, so the
        // Options below are Some and the forgetting list has no gaps.
        let missing = || Error::Report("accuracy matrix incomplete".to_string());
        Ok(RunResult {
            final_task_aware_avg: a.final_avg().ok_or_else(missing)?,
            final_class_il_acc: *p.class_il_after_each_task.last().ok_or_else(missing)?,
            old_tasks_acc_final: a.old_tasks_final(),
            new_task_acc_final: a.new_task_final().ok_or_else(missing)?,
            avg_forgetting_task_aware: a.avg_forgetting(),
            forgetting_per_task: a.forgetting_per_task().into_iter().flatten().collect(),
            avg_forgetting_class_il: c.avg_forgetting(),
            backward_transfer: a.backward_transfer(),
            method: p.method,
            protocol: p.protocol,
            seed: p.seed,
            tasks: p.tasks,
            config: p.config,
            acc_matrix_task_aware: p.task_aware,
            acc_matrix_class_il_per_task: p.class_il_per_task,
            class_il_acc_after_each_task: p.class_il_after_each_task,
            versions: p.versions,
            engine: p.engine,
            timings,
            class_il_by_classifier: BTreeMap::new(),
            class_stats_per_task: Vec::new(),
            validation_per_task: Vec::new(),
            selection_per_task: Vec::new(),
        })
    }

    /// Number of tasks of the protocol.
    pub fn n_tasks(&self) -> usize {
        self.acc_matrix_task_aware.n()
    }
}

/// Every per-task input must describe the same n tasks.
fn check_shapes(p: &RunParts, n: usize) -> Result<()> {
    if n == 0 {
        return Err(Error::Report("a run needs at least one task".to_string()));
    }
    for (what, m) in
        [("acc_matrix_task_aware", &p.task_aware), ("acc_matrix_class_il_per_task", &p.class_il_per_task)]
    {
        if m.n() != n {
            return Err(Error::Report(format!("{what} is {}×{0}, but there are {n} tasks", m.n())));
        }
        m.validate(what)?;
    }
    let lens = [
        ("class_il_acc_after_each_task", p.class_il_after_each_task.len()),
        ("task_timings", p.task_timings.len()),
    ];
    for (what, len) in lens {
        if len != n {
            return Err(Error::Report(format!("{what} has {len} entries, but there are {n} tasks")));
        }
    }
    for (t, &acc) in p.class_il_after_each_task.iter().enumerate() {
        check_fraction(acc, &format!("class-IL accuracy after task {t}"))?;
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    const EPS: f64 = 1e-12;

    /// The hand-worked 3-task example (rows: after task t; cols: task j):
    ///
    /// ```text
    ///          j=0   j=1   j=2
    ///   t=0   0.90    -     -
    ///   t=1   0.95  0.85    -
    ///   t=2   0.70  0.80  0.95
    /// ```
    ///
    /// - final avg = (0.70 + 0.80 + 0.95) / 3 = 2.45 / 3 = 0.81666…
    /// - old tasks final = (0.70 + 0.80) / 2 = 0.75; new task final = 0.95
    /// - forgetting j=0: max(A[0][0], A[1][0]) − A[2][0] = max(0.90, 0.95) − 0.70 = 0.25
    /// - forgetting j=1: max(A[1][1]) − A[2][1] = 0.85 − 0.80 = 0.05; average 0.15
    /// - BWT = ((A[2][0] − A[0][0]) + (A[2][1] − A[1][1])) / 2
    ///   = ((0.70 − 0.90) + (0.80 − 0.85)) / 2 = (−0.20 − 0.05) / 2 = −0.125
    ///   (not −0.15: BWT credits task 0's gain after task 1, forgetting does not)
    pub(crate) fn example_3x3() -> AccMatrix {
        AccMatrix::from_lower(&[vec![0.90], vec![0.95, 0.85], vec![0.70, 0.80, 0.95]]).unwrap()
    }

    /// A complete, valid run over `n` tasks with accuracies drawn from `acc`.
    pub(crate) fn sample_run(
        method: &str,
        seed: u64,
        n: usize,
        acc: impl Fn(usize, usize) -> f64,
    ) -> RunResult {
        let rows: Vec<Vec<f64>> = (0..n).map(|t| (0..=t).map(|j| acc(t, j)).collect()).collect();
        let a = AccMatrix::from_lower(&rows).unwrap();
        let c_rows: Vec<Vec<f64>> = rows.iter().map(|r| r.iter().map(|x| x * 0.5).collect()).collect();
        let c = AccMatrix::from_lower(&c_rows).unwrap();
        let engine = EngineInfo { backend: "cpu".into(), device: "test cpu".into(), threads: Some(2) };
        RunResult::from_parts(RunParts {
            method: method.into(),
            protocol: "split-test".into(),
            seed,
            tasks: (0..n as u32).map(|t| vec![2 * t, 2 * t + 1]).collect(),
            config: serde_json::json!({"lr": 0.05, "epochs": 3}),
            task_aware: a,
            class_il_per_task: c,
            class_il_after_each_task: (0..n).map(|t| 0.5 - 0.01 * t as f64).collect(),
            task_timings: (0..n)
                .map(|t| TaskTiming {
                    train_seconds: 2.0 + t as f64,
                    epoch_seconds: vec![0.5; 3],
                    train_images: 1000,
                    eval_seconds: 0.25,
                    yo_record_seconds: (t > 0).then_some(0.1),
                    stats_seconds: 0.0,
                    validation_seconds: 0.0,
                })
                .collect(),
            versions: engine.versions(),
            engine,
        })
        .unwrap()
    }

    #[test]
    fn hand_computed_3x3() {
        let a = example_3x3();
        assert!((a.final_avg().unwrap() - 2.45 / 3.0).abs() < EPS);
        assert!((a.old_tasks_final().unwrap() - 0.75).abs() < EPS);
        assert!((a.new_task_final().unwrap() - 0.95).abs() < EPS);
        let f: Vec<f64> = a.forgetting_per_task().into_iter().map(Option::unwrap).collect();
        assert_eq!(f.len(), 2);
        assert!((f[0] - 0.25).abs() < EPS && (f[1] - 0.05).abs() < EPS, "{f:?}");
        assert!((a.avg_forgetting().unwrap() - 0.15).abs() < EPS);
        assert!((a.backward_transfer().unwrap() + 0.125).abs() < EPS);
    }

    #[test]
    fn single_task_has_no_forgetting_and_no_nan() {
        let a = AccMatrix::from_lower(&[vec![0.9]]).unwrap();
        assert_eq!(a.forgetting_per_task(), Vec::<Option<f64>>::new());
        assert_eq!(a.avg_forgetting(), None);
        assert_eq!(a.backward_transfer(), None);
        assert_eq!(a.old_tasks_final(), None);
        assert_eq!(a.final_avg(), Some(0.9));
        let r = sample_run("lwf", 0, 1, |_, _| 0.9);
        assert!(r.forgetting_per_task.is_empty());
        assert_eq!((r.avg_forgetting_task_aware, r.backward_transfer), (None, None));
        assert_eq!(r.avg_forgetting_class_il, None);
    }

    #[test]
    fn empty_and_malformed_inputs_are_errors_not_panics() {
        let empty = AccMatrix::new(0);
        assert_eq!((empty.final_avg(), empty.new_task_final(), empty.avg_forgetting()), (None, None, None));
        assert!(empty.last_row().is_empty());
        assert!(empty.validate("A").is_err());
        let mut a = AccMatrix::new(2);
        assert!(a.set_row(0, &[0.5, 0.5]).is_err(), "row 0 has one seen task");
        assert!(a.set_row(2, &[0.5, 0.5, 0.5]).is_err(), "no row 2");
        assert!(a.set_row(0, &[f64::NAN]).is_err());
        assert!(a.set_row(0, &[93.0]).is_err(), "percentages are rejected");
        a.set_row(0, &[0.5]).unwrap();
        let err = a.validate("A").unwrap_err().to_string();
        assert!(err.contains("A[1][0]"), "{err}");
        assert_eq!(a.get(7, 7), None);
        // Partial matrix: metrics skip the gaps instead of panicking.
        assert_eq!(a.forgetting_per_task(), vec![None]);
        assert_eq!(a.backward_transfer(), None);
    }

    #[test]
    fn from_parts_checks_lengths() {
        let good = sample_run("lwf", 0, 2, |_, _| 0.8);
        let engine = good.engine.clone();
        let parts = RunParts {
            method: "lwf".into(),
            protocol: "two-task".into(),
            seed: 0,
            tasks: vec![vec![0], vec![1]],
            config: serde_json::json!({}),
            task_aware: good.acc_matrix_task_aware.clone(),
            class_il_per_task: good.acc_matrix_class_il_per_task.clone(),
            class_il_after_each_task: vec![0.5],
            task_timings: vec![TaskTiming::default(); 2],
            versions: engine.versions(),
            engine,
        };
        let err = RunResult::from_parts(parts.clone()).unwrap_err().to_string();
        assert!(err.contains("class_il_acc_after_each_task"), "{err}");
        let mut p = parts.clone();
        p.class_il_after_each_task = vec![0.5, 0.4];
        p.task_timings[1].train_seconds = f64::INFINITY;
        assert!(RunResult::from_parts(p.clone()).is_err());
        p.task_timings[1].train_seconds = 0.0;
        let r = RunResult::from_parts(p).unwrap();
        assert_eq!(r.timings.train_images_per_second, vec![0.0, 0.0], "no division by zero");
        assert_eq!(r.timings.yo_record_seconds, None);
    }

    #[test]
    fn derived_fields_match_the_matrix() {
        let r = sample_run("lwf", 1, 3, |t, j| example_3x3().get(t, j).unwrap());
        assert!((r.final_task_aware_avg - 2.45 / 3.0).abs() < EPS);
        assert!((r.backward_transfer.unwrap() + 0.125).abs() < EPS);
        assert_eq!(r.forgetting_per_task.len(), 2);
        // C = A / 2, so its forgetting is half of A's.
        assert!((r.avg_forgetting_class_il.unwrap() - 0.075).abs() < EPS);
        assert_eq!(r.final_class_il_acc, 0.48);
        assert_eq!(r.timings.train_images_per_second, vec![500.0, 1000.0 / 3.0, 250.0]);
        assert_eq!(r.timings.yo_record_seconds, Some(vec![0.0, 0.1, 0.1]));
        assert_eq!(r.timings.train_seconds_total(), 9.0);
    }

    #[test]
    fn mean_std_edge_cases() {
        assert_eq!(mean(&[]), None);
        assert_eq!(mean_std(&[]), None);
        assert_eq!(mean_std(&[2.0]), Some((2.0, 0.0)));
        let (m, s) = mean_std(&[1.0, 3.0]).unwrap();
        assert!((m - 2.0).abs() < EPS && (s - 2f64.sqrt()).abs() < EPS);
    }
}
