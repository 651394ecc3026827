//! Reports of finished runs: the JSON per run, the long and summary CSVs, and
//! the plain-text tables the CLI prints. Every file is written atomically
//! (temporary file beside the target, then rename) so an interrupted
//! experiment never leaves a truncated report that later tooling would trust.

use super::{mean_std, RunResult};
use crate::error::{Error, Result};
use crate::fsio::write_atomic;
use std::fmt::Write as _;
use std::path::Path;

/// Write one run as pretty JSON with the reference's field names.
pub fn write_json(path: &Path, result: &RunResult) -> Result<()> {
    let mut bytes = serde_json::to_vec_pretty(result)
        .map_err(|e| Error::io(path, std::io::Error::other(e.to_string())))?;
    bytes.push(b'\n');
    write_atomic(path, &bytes)
}

/// Read a run back (ours, or the reference's: our extra fields default).
pub fn read_json(path: &Path) -> Result<RunResult> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    serde_json::from_slice(&bytes).map_err(|e| Error::format(path, e.to_string()))
}

/// Header of [`write_csv`].
pub const CSV_HEADER: &str = "method,seed,protocol,after_task,task,task_aware_acc,class_il_acc_per_task";

/// Header of [`write_summary_csv`].
pub const SUMMARY_CSV_HEADER: &str = "method,seed,protocol,final_task_aware_avg,old_tasks_acc_final,\
new_task_acc_final,final_class_il_acc,avg_forgetting_task_aware,backward_transfer,\
train_seconds_total,last_task_train_images_per_second";

/// Header of [`write_classifier_csv`].
pub const CLASSIFIER_CSV_HEADER: &str =
    "method,seed,protocol,classifier,final_class_il_acc,final_old_tasks_class_il,final_new_task_class_il";

/// One row per (method, seed, classifier): the final class-IL accuracy over
/// all classes and restricted to the old tasks' and the new task's images.
pub fn write_classifier_csv(path: &Path, results: &[RunResult]) -> Result<()> {
    write_atomic(path, classifier_csv(results).as_bytes())
}

fn classifier_csv(results: &[RunResult]) -> String {
    let mut s = format!("{CLASSIFIER_CSV_HEADER}\n");
    for r in results {
        for (name, c) in &r.class_il_by_classifier {
            let _ = writeln!(
                s,
                "{},{},{},{},{},{},{}",
                csv_field(&r.method),
                r.seed,
                csv_field(&r.protocol),
                csv_field(name),
                csv_num(c.after_each_task.last().copied()),
                csv_num(c.final_old_tasks),
                c.final_new_task,
            );
        }
    }
    s
}

/// Class-IL after the last task by classifier: one row per method, a column
/// per classifier, each cell "class-IL (old / new)" in percent, mean ± std
/// over seeds for the class-IL and means for the old and new tasks' images.
pub fn classifier_table(results: &[RunResult]) -> String {
    let mut names: Vec<&str> = Vec::new();
    for r in results {
        for k in r.class_il_by_classifier.keys() {
            if !names.contains(&k.as_str()) {
                names.push(k);
            }
        }
    }
    let order = |n: &str| {
        ["heads", "aligned-heads", "ncm", "mahalanobis", "ncm-task", "analytic"].iter().position(|k| *k == n)
    };
    names.sort_by_key(|n| order(n).unwrap_or(usize::MAX));
    let header: Vec<String> = std::iter::once("method".to_string())
        .chain(names.iter().map(|n| format!("{n}: class-IL (old / new)")))
        .collect();
    let rows: Vec<Vec<String>> = group_by_method(results)
        .into_iter()
        .map(|(method, runs)| {
            std::iter::once(method.to_string())
                .chain(names.iter().map(|n| {
                    let curves: Vec<_> =
                        runs.iter().filter_map(|r| r.class_il_by_classifier.get(*n)).collect();
                    let all: Vec<f64> =
                        curves.iter().filter_map(|c| c.after_each_task.last().copied()).collect();
                    let old: Vec<f64> = curves.iter().filter_map(|c| c.final_old_tasks).collect();
                    let new: Vec<f64> = curves.iter().map(|c| c.final_new_task).collect();
                    let m = |v: &[f64]| {
                        crate::metrics::mean(v).map_or("-".into(), |x| format!("{:.1}", 100.0 * x))
                    };
                    format!("{} ({} / {})", mean_pm_std(&all, 100.0, 1), m(&old), m(&new))
                }))
                .collect()
        })
        .collect();
    let header: Vec<&str> = header.iter().map(String::as_str).collect();
    render_table(&header, &rows)
}

/// The long ("tidy") CSV: one row per (method, seed, after_task, task) for
/// every task seen by then (`task <= after_task`), so plotting tools need no
/// null handling. Task numbers are 1-based, as in the tables and the plot.
pub fn write_csv(path: &Path, results: &[RunResult]) -> Result<()> {
    write_atomic(path, long_csv(results).as_bytes())
}

fn long_csv(results: &[RunResult]) -> String {
    let mut s = format!("{CSV_HEADER}\n");
    for r in results {
        let (a, c) = (&r.acc_matrix_task_aware, &r.acc_matrix_class_il_per_task);
        for t in 0..a.n() {
            for j in 0..=t {
                let _ = writeln!(
                    s,
                    "{},{},{},{},{},{},{}",
                    csv_field(&r.method),
                    r.seed,
                    csv_field(&r.protocol),
                    t + 1,
                    j + 1,
                    csv_num(a.get(t, j)),
                    csv_num(c.get(t, j)),
                );
            }
        }
    }
    s
}

/// One row per (method, seed) with the headline numbers.
pub fn write_summary_csv(path: &Path, results: &[RunResult]) -> Result<()> {
    write_atomic(path, summary_csv(results).as_bytes())
}

fn summary_csv(results: &[RunResult]) -> String {
    let mut s = format!("{SUMMARY_CSV_HEADER}\n");
    for r in results {
        let _ = writeln!(
            s,
            "{},{},{},{},{},{},{},{},{},{},{}",
            csv_field(&r.method),
            r.seed,
            csv_field(&r.protocol),
            r.final_task_aware_avg,
            csv_num(r.old_tasks_acc_final),
            r.new_task_acc_final,
            r.final_class_il_acc,
            csv_num(r.avg_forgetting_task_aware),
            csv_num(r.backward_transfer),
            r.timings.train_seconds_total(),
            csv_num(r.timings.last_task_images_per_second()),
        );
    }
    s
}

/// Quote a text field when it would otherwise break the row (RFC 4180).
pub fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// Full precision (shortest round-trip form); empty for a missing value.
fn csv_num(x: Option<f64>) -> String {
    x.map(|v| v.to_string()).unwrap_or_default()
}

/// Methods in order of first appearance, each with its runs (one per seed).
pub(crate) fn group_by_method(results: &[RunResult]) -> Vec<(&str, Vec<&RunResult>)> {
    let mut groups: Vec<(&str, Vec<&RunResult>)> = Vec::new();
    for r in results {
        match groups.iter_mut().find(|(m, _)| *m == r.method) {
            Some((_, runs)) => runs.push(r),
            None => groups.push((&r.method, vec![r])),
        }
    }
    groups
}

/// "m ± s" over the values present (just "m" for one), "-" for none.
fn mean_pm_std(values: &[f64], scale: f64, decimals: usize) -> String {
    match mean_std(values) {
        None => "-".to_string(),
        Some((m, _)) if values.len() == 1 => format!("{:.*}", decimals, m * scale),
        Some((m, s)) => format!("{:.*} ± {:.*}", decimals, m * scale, decimals, s * scale),
    }
}

/// The classifier `predict` answers with for a run's model, and its final
/// class-IL accuracy: ncm-task when the model kept class statistics, else
/// aligned-heads (predict's default rule); a report without per-classifier
/// curves (an older one, or the reference's) has only the heads'.
pub fn default_class_il(r: &RunResult) -> (&'static str, f64) {
    for k in ["analytic", "ncm-task", "aligned-heads"] {
        if let Some(&acc) = r.class_il_by_classifier.get(k).and_then(|c| c.after_each_task.last()) {
            return (k, acc);
        }
    }
    ("heads", r.final_class_il_acc)
}

/// The method comparison: one row per method, mean ± std over its seeds
/// (sample std) when there are several. Accuracies, forgetting and BWT in
/// percent; train s = all tasks' training; img/s = the last task's. The
/// class-IL column is what `predict` would answer (the default classifier,
/// named in the header); the heads' class-IL, the paper's and the PyTorch
/// reference's measure, has its own column.
pub fn comparison_table(results: &[RunResult]) -> String {
    let mut defaults: Vec<&str> = results.iter().map(|r| default_class_il(r).0).collect();
    defaults.dedup();
    let class_il = match defaults[..] {
        [one] => format!("class-IL ({one})"),
        _ => "class-IL (default)".to_string(),
    };
    let header = [
        "method",
        "old task",
        "new task",
        &class_il,
        "heads class-IL",
        "forgetting",
        "BWT",
        "train s",
        "img/s",
    ];
    let rows: Vec<Vec<String>> = group_by_method(results)
        .into_iter()
        .map(|(method, runs)| {
            let col =
                |f: &dyn Fn(&RunResult) -> Option<f64>| runs.iter().filter_map(|r| f(r)).collect::<Vec<_>>();
            vec![
                method.to_string(),
                mean_pm_std(&col(&|r| r.old_tasks_acc_final), 100.0, 1),
                mean_pm_std(&col(&|r| Some(r.new_task_acc_final)), 100.0, 1),
                mean_pm_std(&col(&|r| Some(default_class_il(r).1)), 100.0, 1),
                mean_pm_std(&col(&|r| Some(r.final_class_il_acc)), 100.0, 1),
                mean_pm_std(&col(&|r| r.avg_forgetting_task_aware), 100.0, 1),
                mean_pm_std(&col(&|r| r.backward_transfer), 100.0, 1),
                mean_pm_std(&col(&|r| Some(r.timings.train_seconds_total())), 1.0, 1),
                mean_pm_std(&col(&|r| r.timings.last_task_images_per_second()), 1.0, 0),
            ]
        })
        .collect();
    render_table(&header, &rows)
}

/// The task-aware accuracy matrix as the reference prints it (fractions,
/// 4 decimals, "-" for tasks not seen yet), with 1-based row/column labels.
pub fn matrix_table(result: &RunResult) -> String {
    let a = &result.acc_matrix_task_aware;
    let n = a.n();
    let header: Vec<String> =
        std::iter::once("after \\ task".to_string()).chain((1..=n).map(|j| j.to_string())).collect();
    let rows: Vec<Vec<String>> = (0..n)
        .map(|t| {
            std::iter::once((t + 1).to_string())
                .chain((0..n).map(|j| a.get(t, j).map_or("-".to_string(), |v| format!("{v:.4}"))))
                .collect()
        })
        .collect();
    let header: Vec<&str> = header.iter().map(String::as_str).collect();
    render_table(&header, &rows)
}

/// Aligned plain text: the first column left-aligned, the rest right-aligned,
/// a rule under the header; every line has the same width in characters
/// (`format!` pads by `char`s, so "±" counts as one).
fn render_table(header: &[&str], rows: &[Vec<String>]) -> String {
    let widths: Vec<usize> = (0..header.len())
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|s| s.chars().count())
                .chain(std::iter::once(header[c].chars().count()))
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |cells: &mut dyn Iterator<Item = &str>| -> String {
        let parts: Vec<String> = widths
            .iter()
            .enumerate()
            .map(|(c, &w)| {
                let s = cells.next().unwrap_or("");
                if c == 0 {
                    format!("{s:<w$}")
                } else {
                    format!("{s:>w$}")
                }
            })
            .collect();
        parts.join(" | ")
    };
    let mut out = line(&mut header.iter().copied());
    out.push('\n');
    let rule: Vec<String> = widths.iter().map(|&w| "-".repeat(w)).collect();
    out.push_str(&rule.join("-+-"));
    out.push('\n');
    for r in rows {
        out.push_str(&line(&mut r.iter().map(String::as_str)));
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::super::tests::sample_run;
    use super::*;

    fn widths(table: &str) -> Vec<usize> {
        table.lines().map(|l| l.chars().count()).collect()
    }

    #[test]
    fn comparison_table_aligns_and_aggregates_seeds() {
        let runs = vec![
            sample_run("lwf", 0, 2, |_, _| 0.9),
            sample_run("lwf", 1, 2, |_, j| if j == 0 { 0.8 } else { 0.9 }),
            sample_run("finetune, naive", 0, 2, |t, j| if t > j { 0.5 } else { 0.95 }),
        ];
        let table = comparison_table(&runs);
        let w = widths(&table);
        assert_eq!(w.len(), 4, "{table}");
        assert!(w.iter().all(|&x| x == w[0]), "{table}");
        let lwf = table.lines().nth(2).unwrap();
        assert!(lwf.starts_with("lwf "), "{table}");
        // old task: 90 % and 80 % -> 85.0 ± 7.1 (sample std = 10/√2)
        assert!(lwf.contains("85.0 ± 7.1"), "{table}");
        let ft = table.lines().nth(3).unwrap();
        assert!(ft.contains("50.0") && ft.contains("45.0") && !ft.contains('±'), "{table}");
    }

    /// The headline class-IL is what predict answers (ncm-task when the
    /// runs kept statistics), beside the heads' own column.
    #[test]
    fn comparison_table_headlines_the_default_classifier() {
        use crate::metrics::ClassifierCurve;
        let curve = |acc: f64| ClassifierCurve::new(vec![0.9, acc], vec![acc, acc]);
        let mut runs = vec![sample_run("lwf", 0, 2, |_, _| 0.9), sample_run("lwf", 1, 2, |_, _| 0.9)];
        for (r, acc) in runs.iter_mut().zip([0.84, 0.82]) {
            r.class_il_by_classifier.insert("heads".into(), curve(r.final_class_il_acc));
            r.class_il_by_classifier.insert("aligned-heads".into(), curve(0.7));
            r.class_il_by_classifier.insert("ncm-task".into(), curve(acc));
        }
        let table = comparison_table(&runs);
        let header = table.lines().next().unwrap();
        assert!(header.contains("class-IL (ncm-task)") && header.contains("heads class-IL"), "{table}");
        let row = table.lines().nth(2).unwrap();
        let heads = format!("{:.1}", 100.0 * runs[0].final_class_il_acc);
        assert!(row.contains("83.0 ± 1.4") && row.contains(&heads), "{table}");
        // Without statistics: aligned-heads, as predict.
        for r in &mut runs {
            r.class_il_by_classifier.remove("ncm-task");
        }
        let table = comparison_table(&runs);
        assert!(table.lines().next().unwrap().contains("class-IL (aligned-heads)"), "{table}");
        assert!(table.lines().nth(2).unwrap().contains(" 70.0 "), "{table}");
    }

    #[test]
    fn tables_handle_one_task_and_no_runs() {
        let one = sample_run("lwf", 0, 1, |_, _| 0.9);
        let table = comparison_table(std::slice::from_ref(&one));
        assert!(table.lines().nth(2).unwrap().contains(" - "), "{table}");
        let empty = comparison_table(&[]);
        assert_eq!(empty.lines().count(), 2);
        let m = matrix_table(&one);
        assert!(m.contains("0.9000"), "{m}");
    }

    #[test]
    fn matrix_table_marks_unseen_tasks() {
        let r = sample_run("lwf", 0, 3, |t, j| 0.5 + 0.1 * (t + j) as f64 / 4.0);
        let m = matrix_table(&r);
        let w = widths(&m);
        assert!(w.iter().all(|&x| x == w[0]), "{m}");
        let first = m.lines().nth(2).unwrap();
        assert_eq!(first.matches(" -").count(), 2, "{m}");
        assert!(m.lines().nth(4).unwrap().ends_with("0.6000"), "{m}");
    }

    #[test]
    fn csv_rows_and_quoting() {
        let runs = vec![sample_run("a,b", 0, 3, |_, _| 0.5), sample_run("lwf", 1, 2, |_, _| 0.5)];
        let long = long_csv(&runs);
        assert_eq!(long.lines().count(), 1 + 6 + 3);
        assert!(long.lines().nth(1).unwrap().starts_with("\"a,b\",0,split-test,1,1,0.5,0.25"), "{long}");
        let summary = summary_csv(&runs);
        assert_eq!(summary.lines().count(), 3);
        let cols = SUMMARY_CSV_HEADER.split(',').count();
        let last = summary.lines().last().unwrap();
        assert_eq!(last.split(',').count(), cols, "{summary}");
    }
}
