//! Integration tests of the public metrics API: the reports an experiment
//! writes (JSON with the reference's field names, CSVs, SVG plot, tables).

use lwf_engine::metrics::{
    comparison_table, matrix_table, read_json, write_csv, write_json, write_plot_svg, write_summary_csv,
    AccMatrix, EngineInfo, RunParts, RunResult, TaskTiming,
};
use serde_json::Value;
use std::path::{Path, PathBuf};

/// A fresh scratch directory per test (tests run in parallel).
fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("lwf-metrics-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The hand-worked example: A = [[.90], [.95, .85], [.70, .80, .95]],
/// C = [[.90], [.60, .70], [.40, .50, .90]].
///
/// - forgetting (A): task 1: max(.90, .95) − .70 = .25; task 2: .85 − .80 = .05; mean .15
/// - BWT (A): ((.70 − .90) + (.80 − .85)) / 2 = −.125
/// - forgetting (C): task 1: max(.90, .60) − .40 = .50; task 2: .70 − .50 = .20; mean .35
/// - old tasks final = (.70 + .80) / 2 = .75, new task final = .95, final avg = 2.45 / 3
fn run(method: &str, seed: u64, n: usize) -> RunResult {
    let a = [vec![0.90], vec![0.95, 0.85], vec![0.70, 0.80, 0.95]];
    let c = [vec![0.90], vec![0.60, 0.70], vec![0.40, 0.50, 0.90]];
    let engine = EngineInfo { backend: "cpu".into(), device: "test".into(), threads: Some(2) };
    let tasks: Vec<Vec<u32>> = [vec![0, 1, 2, 3], vec![4, 5, 6], vec![7, 8, 9]][..n].to_vec();
    RunResult::from_parts(RunParts {
        method: method.into(),
        protocol: "split3".into(),
        seed,
        tasks,
        config: serde_json::json!({"lr": 0.05, "temperature": 2.0}),
        task_aware: AccMatrix::from_lower(&a[..n]).unwrap(),
        class_il_per_task: AccMatrix::from_lower(&c[..n]).unwrap(),
        class_il_after_each_task: [0.9, 0.65, 0.6][..n].to_vec(),
        task_timings: (0..n)
            .map(|t| TaskTiming {
                train_seconds: 4.0,
                epoch_seconds: vec![1.0; 3 + usize::from(t > 0)],
                train_images: 10_000 + seed * 2_000,
                eval_seconds: 0.5,
                yo_record_seconds: (t > 0).then_some(0.2),
                stats_seconds: 0.0,
                validation_seconds: 0.0,
            })
            .collect(),
        versions: engine.versions(),
        engine,
    })
    .unwrap()
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-12
}

fn no_tmp_left(dir: &Path) {
    for e in std::fs::read_dir(dir).unwrap() {
        let name = e.unwrap().file_name().to_string_lossy().into_owned();
        assert!(!name.ends_with(".tmp"), "temporary file left behind: {name}");
    }
}

#[test]
fn derived_numbers_of_the_hand_worked_example() {
    let r = run("lwf", 0, 3);
    assert!(close(r.final_task_aware_avg, 2.45 / 3.0));
    assert!(close(r.old_tasks_acc_final.unwrap(), 0.75));
    assert!(close(r.new_task_acc_final, 0.95));
    assert!(close(r.forgetting_per_task[0], 0.25) && close(r.forgetting_per_task[1], 0.05));
    assert!(close(r.avg_forgetting_task_aware.unwrap(), 0.15));
    assert!(close(r.backward_transfer.unwrap(), -0.125));
    assert!(close(r.avg_forgetting_class_il.unwrap(), 0.35));
    assert!(close(r.final_class_il_acc, 0.6));
    assert_eq!(r.timings.train_images_per_second, vec![2500.0; 3]);
    assert_eq!(r.timings.epoch_seconds.iter().map(Vec::len).collect::<Vec<_>>(), [3, 4, 4]);
}

#[test]
fn json_has_the_reference_field_names_and_nulls() {
    let dir = scratch("json");
    let path = dir.join("split3_lwf_seed0.json");
    let r = run("lwf", 0, 3);
    write_json(&path, &r).unwrap();
    no_tmp_left(&dir);
    let v: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    let reference_keys = [
        "method",
        "protocol",
        "seed",
        "tasks",
        "config",
        "acc_matrix_task_aware",
        "acc_matrix_class_il_per_task",
        "class_il_acc_after_each_task",
        "final_task_aware_avg",
        "final_class_il_acc",
        "old_tasks_acc_final",
        "new_task_acc_final",
        "avg_forgetting_task_aware",
        "forgetting_per_task",
        "avg_forgetting_class_il",
        "timings",
    ];
    let ours = ["backward_transfer", "versions", "engine", "class_il_by_classifier", "class_stats_per_task"];
    let obj = v.as_object().unwrap();
    for k in reference_keys.iter().chain(&ours) {
        assert!(obj.contains_key(*k), "missing key {k}");
    }
    assert_eq!(obj.len(), reference_keys.len() + ours.len(), "unexpected keys: {:?}", obj.keys());
    let timings = v["timings"].as_object().unwrap();
    for k in [
        "task_train_seconds",
        "epoch_seconds",
        "train_images_per_second",
        "eval_seconds",
        "yo_record_seconds",
    ] {
        assert!(timings.contains_key(k), "missing timings.{k}");
    }
    assert_eq!(v["acc_matrix_task_aware"][0], serde_json::json!([0.9, null, null]));
    assert_eq!(v["acc_matrix_task_aware"][1][2], Value::Null);
    assert_eq!(v["acc_matrix_class_il_per_task"][0][1], Value::Null);
    assert_eq!(v["tasks"][1], serde_json::json!([4, 5, 6]));
    assert_eq!(v["config"]["temperature"], serde_json::json!(2.0));
    assert_eq!(v["versions"]["lwf-engine"], Value::String(env!("CARGO_PKG_VERSION").into()));
    assert_eq!(read_json(&path).unwrap(), r, "round trip");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn single_task_json_uses_null_not_nan() {
    let dir = scratch("one");
    let path = dir.join("one.json");
    write_json(&path, &run("lwf", 0, 1)).unwrap();
    let v: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    for k in
        ["old_tasks_acc_final", "avg_forgetting_task_aware", "avg_forgetting_class_il", "backward_transfer"]
    {
        assert_eq!(v[k], Value::Null, "{k}");
    }
    assert_eq!(v["forgetting_per_task"], serde_json::json!([]));
    assert_eq!(v["final_task_aware_avg"], serde_json::json!(0.9));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn reference_json_reads_back() {
    // The shape lwf_ref.py writes (abridged): its own timings layout, extra
    // keys, none of our additions.
    let reference = r#"{"method": "lwf", "protocol": "two-task", "seed": 0, "tasks": [[0,1,2,3,4],[5,6,7,8,9]],
        "config": {"epochs": 3}, "torch_version": "2.5", "torch_threads": 2, "python": "3.11", "cpu": "x86_64",
        "acc_matrix_task_aware": [[0.97, null], [0.93, 0.95]],
        "acc_matrix_class_il_per_task": [[0.97, null], [0.2, 0.94]],
        "class_il_acc_after_each_task": [0.97, 0.57], "final_task_aware_avg": 0.94, "final_class_il_acc": 0.57,
        "old_tasks_acc_final": 0.93, "new_task_acc_final": 0.95, "avg_forgetting_task_aware": 0.04,
        "forgetting_per_task": [0.04], "avg_forgetting_class_il": 0.77,
        "timings": {"data_load_seconds": 1.0, "per_task": [], "task_train_seconds": [10.0, 20.0]}}"#;
    let dir = scratch("ref");
    let path = dir.join("ref.json");
    std::fs::write(&path, reference).unwrap();
    let r = read_json(&path).unwrap();
    assert_eq!(r.acc_matrix_task_aware.get(1, 0), Some(0.93));
    assert_eq!(r.timings.task_train_seconds, [10.0, 20.0]);
    assert_eq!(r.backward_transfer, None);
    let table = comparison_table(&[r]);
    assert!(table.contains("30.0"), "{table}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn csv_files_have_header_and_one_row_per_cell() {
    let dir = scratch("csv");
    let runs = [run("lwf", 0, 3), run("lwf", 1, 3), run("finetune", 0, 2)];
    let long = dir.join("acc.csv");
    write_csv(&long, &runs).unwrap();
    let text = std::fs::read_to_string(&long).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[0], "method,seed,protocol,after_task,task,task_aware_acc,class_il_acc_per_task");
    // seen cells only: 6 + 6 + 3
    assert_eq!(lines.len(), 1 + 6 + 6 + 3);
    assert!(lines.iter().all(|l| l.split(',').count() == 7));
    assert!(lines.contains(&"lwf,1,split3,3,1,0.7,0.4"), "{text}");
    let summary = dir.join("summary.csv");
    write_summary_csv(&summary, &runs).unwrap();
    let text = std::fs::read_to_string(&summary).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 1 + 3);
    let header: Vec<&str> = lines[0].split(',').collect();
    assert_eq!(&header[..3], ["method", "seed", "protocol"]);
    assert!(header.contains(&"backward_transfer") && header.contains(&"train_seconds_total"));
    assert!(lines.iter().all(|l| l.split(',').count() == header.len()));
    assert!(lines[1].starts_with("lwf,0,split3,"));
    no_tmp_left(&dir);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn svg_plot_has_one_line_per_method_and_task() {
    let dir = scratch("svg");
    let path = dir.join("split3.svg");
    let runs = [run("lwf", 0, 3), run("lwf", 1, 3), run("finetune", 0, 3)];
    write_plot_svg(&path, "split3", &runs).unwrap();
    no_tmp_left(&dir);
    let svg = std::fs::read_to_string(&path).unwrap();
    assert!(svg.trim_start().starts_with("<svg"), "{}", &svg[..100]);
    assert!(svg.trim_end().ends_with("</svg>"));
    assert!(svg.contains("split3"), "title names the protocol");
    // Left panel: 2 methods × 3 tasks = 6 data lines, drawn 2 px wide in a
    // method colour (the axes are 1 px black), plus one 2 px legend segment
    // per method. Right (class-IL) panel: these runs carry only the heads'
    // class-IL, so one line and one legend segment per method.
    let data_lines = svg.matches("<polyline").count();
    let wide = svg.split("<polyline").skip(1).filter(|p| p.contains(r#"stroke-width="2""#)).count();
    assert!(data_lines >= 6 + 2, "{data_lines} polylines");
    assert_eq!(wide, (6 + 2) + (2 + 2), "data lines + legend segments, both panels");
    // Legend: one entry per method (colour) and per task (marker).
    let texts: Vec<String> = svg
        .split("<text")
        .skip(1)
        .filter_map(|t| t.split_once('>'))
        .map(|(_, rest)| rest)
        .map(|r| r.split("</text>").next().unwrap_or("").trim().to_string())
        .collect();
    for label in ["lwf", "finetune", "task 1", "task 2", "task 3"] {
        assert!(texts.iter().any(|t| t == label), "legend lacks {label}: {texts:?}");
    }
    // n = 1: a single point per line, drawn as a marker; no panic.
    let one = dir.join("one.svg");
    write_plot_svg(&one, "one-task", &[run("lwf", 0, 1)]).unwrap();
    assert!(std::fs::read_to_string(&one).unwrap().contains("<circle"));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn tables_are_aligned() {
    let runs = [run("lwf", 0, 3), run("lwf", 1, 3), run("feature-extraction", 0, 3), run("x", 0, 1)];
    for table in [comparison_table(&runs), matrix_table(&runs[0]), matrix_table(&runs[3])] {
        let widths: Vec<usize> = table.lines().map(|l| l.chars().count()).collect();
        assert!(widths.iter().all(|&w| w == widths[0]), "not aligned:\n{table}");
    }
    let table = comparison_table(&runs);
    assert_eq!(table.lines().count(), 2 + 3, "{table}");
    let header = table.lines().next().unwrap();
    for col in ["method", "old task", "new task", "class-IL", "forgetting", "BWT", "train s", "img/s"] {
        assert!(header.contains(col), "{header}");
    }
    // lwf: same accuracies for both seeds -> ± 0.0; img/s differ (2500, 3000).
    let lwf = table.lines().nth(2).unwrap();
    assert!(lwf.contains("75.0 ± 0.0") && lwf.contains("-12.5 ± 0.0"), "{table}");
    assert!(lwf.contains("2750 ± 354"), "{table}");
    let m = matrix_table(&runs[0]);
    assert!(m.lines().nth(2).unwrap().contains("0.9000"), "{m}");
    assert_eq!(m.lines().nth(2).unwrap().matches('-').count(), 2, "{m}");
}

/// One of the report writers, bound to its data.
type Writer<'a> = dyn Fn(&Path) -> lwf_engine::Result<()> + 'a;

#[test]
fn writes_into_a_missing_directory_fail_naming_the_path() {
    let dir = scratch("missing");
    let r = run("lwf", 0, 2);
    let bad = dir.join("no-such-dir");
    let checks: [(&str, Box<Writer>); 4] = [
        ("r.json", Box::new(|p| write_json(p, &r))),
        ("r.csv", Box::new(|p| write_csv(p, std::slice::from_ref(&r)))),
        ("s.csv", Box::new(|p| write_summary_csv(p, std::slice::from_ref(&r)))),
        ("p.svg", Box::new(|p| write_plot_svg(p, "two-task", std::slice::from_ref(&r)))),
    ];
    for (name, write) in checks {
        let path = bad.join(name);
        let msg = write(&path).unwrap_err().to_string();
        assert!(msg.contains(&path.display().to_string()), "{name}: {msg}");
    }
    assert!(!bad.exists());
    std::fs::remove_dir_all(&dir).unwrap();
}
