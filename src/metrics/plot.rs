//! The experiment's SVG plot, two panels. Left: task-aware accuracy on each
//! task after each training step, the picture that shows forgetting at a
//! glance (a line that falls is a task being forgotten). Right: class-IL
//! accuracy (over every class seen so far, task unknown) after each step, one
//! line per method and classifier (heads, ncm, …).
//!
//! Lines of one method share a colour; each task (left) or classifier
//! (right) has its own marker shape; the legends list the methods (colours)
//! and the tasks or classifiers (markers).
//! Several seeds of a method are averaged. Text is written as SVG `<text>` elements, which needs no font
//! files (plotters' `ttf` feature is off; the viewer renders the font).

use super::report::group_by_method;
use super::{mean, RunResult};
use crate::error::{Error, Result};
use crate::fsio::write_atomic;
use plotters::coord::types::RangedCoordf64;
use plotters::coord::Shift;
use plotters::prelude::*;
use std::path::Path;

const WIDTH: u32 = 1500;
const HEIGHT: u32 = 600;
/// Width of the task-aware (left) panel.
const LEFT: u32 = 780;

/// Method colours (matplotlib's tab10, readable on white).
const PALETTE: [RGBColor; 8] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
];

/// Colour of the task entries in the legend (the marker alone, no method).
const NEUTRAL: RGBColor = RGBColor(70, 70, 70);

/// One plotted line: a method's accuracy on one task (or with one
/// classifier) over the steps.
#[derive(Clone, Debug, PartialEq)]
struct Line {
    method: String,
    /// The task or classifier (0-based); picks the marker shape.
    task: usize,
    colour: RGBColor,
    /// (after task, 1-based; accuracy in %), seeds averaged.
    points: Vec<(f64, f64)>,
}

/// Render the plot and write it atomically to `path`.
pub fn write_plot_svg(path: &Path, protocol: &str, results: &[RunResult]) -> Result<()> {
    let svg = render_plot_svg(protocol, results)?;
    write_atomic(path, svg.as_bytes())
}

/// The plot as an SVG document. An empty `results` is an error (there is
/// nothing to scale the axes to); a single task gives single points.
pub fn render_plot_svg(protocol: &str, results: &[RunResult]) -> Result<String> {
    let lines = seed_mean_lines(results);
    let n = results.iter().map(RunResult::n_tasks).max().unwrap_or(0);
    if lines.is_empty() || n == 0 {
        return Err(Error::Report("no accuracies to plot".to_string()));
    }
    let (cil_lines, classifiers) = class_il_lines(results);
    let tasks: Vec<String> = (1..=n).map(|j| format!("task {j}")).collect();
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (WIDTH, HEIGHT)).into_drawing_area();
        root.fill(&WHITE).map_err(plot_error)?;
        let (left, right) = root.split_horizontally(LEFT);
        let title = format!("Task-aware accuracy per task after each step ({protocol})");
        draw(&left, &title, "task-aware accuracy (%)", n, &lines, &tasks)?;
        let title = "Class-IL accuracy over all classes seen (task unknown)";
        draw(&right, title, "class-IL accuracy (%)", n, &cil_lines, &classifiers)?;
        root.present().map_err(plot_error)?;
    }
    Ok(svg)
}

/// Per method and classifier, the mean over seeds of the class-IL accuracy
/// after each step; and the classifiers' names (marker legend). Runs
/// without per-classifier figures contribute their heads' class-IL.
fn class_il_lines(results: &[RunResult]) -> (Vec<Line>, Vec<String>) {
    let curve = |r: &RunResult, c: &str| -> Option<Vec<f64>> {
        match r.class_il_by_classifier.get(c) {
            Some(k) => Some(k.after_each_task.clone()),
            None if c == "heads" => Some(r.class_il_acc_after_each_task.clone()),
            None => None,
        }
    };
    let mut names: Vec<String> = vec!["heads".into()];
    for r in results {
        for k in r.class_il_by_classifier.keys() {
            if !names.contains(k) {
                names.push(k.clone());
            }
        }
    }
    let mut lines = Vec::new();
    for (m, (method, runs)) in group_by_method(results).into_iter().enumerate() {
        for (c, name) in names.iter().enumerate() {
            let curves: Vec<Vec<f64>> = runs.iter().filter_map(|r| curve(r, name)).collect();
            let n = curves.iter().map(Vec::len).max().unwrap_or(0);
            let points: Vec<(f64, f64)> = (0..n)
                .filter_map(|t| {
                    let accs: Vec<f64> = curves.iter().filter_map(|v| v.get(t).copied()).collect();
                    mean(&accs).map(|a| ((t + 1) as f64, a * 100.0))
                })
                .collect();
            if !points.is_empty() {
                let colour = PALETTE[m % PALETTE.len()];
                lines.push(Line { method: method.to_string(), task: c, colour, points });
            }
        }
    }
    (lines, names)
}

/// Per method (in order of appearance) and task j, the mean over seeds of
/// `A[t][j]` for every step t ≥ j where some seed has it.
fn seed_mean_lines(results: &[RunResult]) -> Vec<Line> {
    let mut lines = Vec::new();
    for (m, (method, runs)) in group_by_method(results).into_iter().enumerate() {
        let n = runs.iter().map(|r| r.n_tasks()).max().unwrap_or(0);
        for j in 0..n {
            let points: Vec<(f64, f64)> = (j..n)
                .filter_map(|t| {
                    let accs: Vec<f64> =
                        runs.iter().filter_map(|r| r.acc_matrix_task_aware.get(t, j)).collect();
                    mean(&accs).map(|a| ((t + 1) as f64, a * 100.0))
                })
                .collect();
            if !points.is_empty() {
                let colour = PALETTE[m % PALETTE.len()];
                lines.push(Line { method: method.to_string(), task: j, colour, points });
            }
        }
    }
    lines
}

/// Lowest y shown: 5 points of headroom under the lowest value, rounded down
/// to a multiple of 10, so lines near 100 % are not squashed together.
fn y_floor(lines: &[Line]) -> f64 {
    let min = lines.iter().flat_map(|l| l.points.iter().map(|p| p.1)).fold(100.0, f64::min);
    (((min - 5.0) / 10.0).floor() * 10.0).clamp(0.0, 90.0)
}

fn plot_error(e: impl std::fmt::Display) -> Error {
    Error::Report(format!("drawing the plot: {e}"))
}

/// A task's marker at `$at` (`$shape`: `Some(task)`, or `None` for no
/// marker), as one element of one concrete type whatever the shape: every
/// shape is composed in and all but the task's own are drawn transparent (the
/// SVG backend skips those). With `$segment`, a short line through it (the
/// legend glyph of a method). A macro, not a function, because
/// the composed type cannot be named, and plotters' type erasure
/// (`DynElement`) would demand a `'static` backend, which the in-memory SVG
/// backend is not.
macro_rules! glyph {
    ($at:expr, $shape:expr, $colour:expr, $segment:expr) => {{
        let (shape, colour): (Option<usize>, RGBColor) = ($shape.map(|t: usize| t % 5), $colour);
        let (filled, stroke) = (colour.filled(), colour.stroke_width(2));
        EmptyElement::at($at)
            + PathElement::new(vec![(-10, 0), (10, 0)], visible($segment, stroke))
            + Circle::new((0, 0), 4, visible(shape == Some(0), filled))
            + TriangleMarker::new((0, 0), 6, visible(shape == Some(1), filled))
            + Cross::new((0, 0), 4, visible(shape == Some(2), stroke))
            + Rectangle::new([(-4, -4), (4, 4)], visible(shape == Some(3), stroke))
            + Circle::new((0, 0), 4, visible(shape == Some(4), stroke))
    }};
}

/// `style` when `on`, else fully transparent (not drawn at all).
fn visible(on: bool, style: ShapeStyle) -> ShapeStyle {
    if on {
        style
    } else {
        TRANSPARENT.into()
    }
}

/// The x range: the steps 1..=n with half a step of air on each side.
fn x_range(n: usize) -> std::ops::Range<f64> {
    0.5..n as f64 + 0.5
}

/// Tick labels only at whole steps.
fn step_label(x: &f64) -> String {
    if (x - x.round()).abs() < 1e-6 {
        format!("{}", x.round())
    } else {
        String::new()
    }
}

fn draw<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    title: &str,
    y_desc: &str,
    n: usize,
    lines: &[Line],
    markers: &[String],
) -> Result<()> {
    let mut chart = ChartBuilder::on(root)
        .caption(title, ("sans-serif", 20))
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(60)
        .build_cartesian_2d(x_range(n), y_floor(lines)..100.0)
        .map_err(plot_error)?;
    chart
        .configure_mesh()
        .x_labels(n)
        .x_label_formatter(&step_label)
        .x_max_light_lines(0)
        .y_max_light_lines(1)
        .y_label_formatter(&|y| format!("{y:.0}"))
        .x_desc("after training task")
        .y_desc(y_desc)
        .label_style(("sans-serif", 15))
        .axis_desc_style(("sans-serif", 16))
        .draw()
        .map_err(plot_error)?;
    draw_lines(&mut chart, lines, markers)?;
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font(("sans-serif", 14))
        .draw()
        .map_err(plot_error)?;
    Ok(())
}

type Chart<'a, DB> = ChartContext<'a, DB, Cartesian2d<RangedCoordf64, RangedCoordf64>>;

/// The lines and their markers, plus the legend entries: one per method
/// (its colour) and one per task or classifier (its marker, named by
/// `markers`), rather than one per line, so split5 with six methods needs 11
/// entries, not 30.
fn draw_lines<'a, DB: DrawingBackend + 'a>(
    chart: &mut Chart<'a, DB>,
    lines: &[Line],
    markers: &[String],
) -> Result<()> {
    let mut methods_seen: Vec<&str> = Vec::new();
    for line in lines {
        let (colour, shape) = (line.colour, Some(line.task));
        let series = chart
            .draw_series(LineSeries::new(line.points.iter().copied(), colour.stroke_width(2)))
            .map_err(plot_error)?;
        if !methods_seen.contains(&line.method.as_str()) {
            methods_seen.push(&line.method);
            series.label(line.method.as_str()).legend(move |(x, y)| glyph!((x + 10, y), None, colour, true));
        }
        chart
            .draw_series(line.points.iter().map(|&p| glyph!(p, shape, colour, false)))
            .map_err(plot_error)?;
    }
    let used = lines.iter().map(|l| l.task + 1).max().unwrap_or(0);
    for (j, name) in markers.iter().enumerate().take(used) {
        chart
            .draw_series(std::iter::empty::<Circle<(f64, f64), i32>>())
            .map_err(plot_error)?
            .label(name.clone())
            .legend(move |(x, y)| glyph!((x + 10, y), Some(j), NEUTRAL, false));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::tests::sample_run;
    use super::*;

    #[test]
    fn averages_seeds_per_method_and_task() {
        let runs = vec![
            sample_run("lwf", 0, 2, |_, _| 0.8),
            sample_run("lwf", 1, 2, |_, _| 0.9),
            sample_run("finetune", 0, 2, |_, _| 0.5),
        ];
        let lines = seed_mean_lines(&runs);
        let labels: Vec<(&str, usize)> = lines.iter().map(|l| (l.method.as_str(), l.task)).collect();
        assert_eq!(labels, [("lwf", 0), ("lwf", 1), ("finetune", 0), ("finetune", 1)]);
        assert_eq!(lines[0].points.len(), 2);
        assert_eq!(lines[1].points.len(), 1);
        assert!((lines[0].points[0].1 - 85.0).abs() < 1e-9);
        assert_eq!(lines[0].colour, lines[1].colour);
        assert_ne!(lines[0].colour, lines[2].colour);
        assert_eq!(y_floor(&lines), 40.0);
    }

    #[test]
    fn renders_single_task_and_rejects_nothing() {
        let svg = render_plot_svg("one", &[sample_run("lwf", 0, 1, |_, _| 1.0)]).unwrap();
        assert!(svg.starts_with("<svg"), "{}", &svg[..80.min(svg.len())]);
        assert!(svg.contains("<circle"), "the single point is drawn as a marker");
        assert!(render_plot_svg("none", &[]).is_err());
    }

    #[test]
    fn class_il_panel_has_a_line_per_method_and_classifier() {
        let mut a = sample_run("lwf", 0, 2, |_, _| 0.8);
        let mut b = sample_run("lwf", 1, 2, |_, _| 0.8);
        for (r, v) in [(&mut a, 0.6), (&mut b, 0.8)] {
            r.class_il_by_classifier
                .insert("ncm".into(), crate::metrics::ClassifierCurve::new(vec![0.9, v], vec![v, v]));
        }
        let old = sample_run("finetune", 0, 2, |_, _| 0.5); // no per-classifier figures
        let (lines, names) = class_il_lines(&[a, b, old]);
        assert_eq!(names, ["heads", "ncm"]);
        let labels: Vec<(&str, usize)> = lines.iter().map(|l| (l.method.as_str(), l.task)).collect();
        assert_eq!(labels, [("lwf", 0), ("lwf", 1), ("finetune", 0)]);
        assert!((lines[1].points[1].1 - 70.0).abs() < 1e-9, "seeds averaged: {:?}", lines[1].points);
        assert!((lines[2].points[0].1 - 50.0).abs() < 1e-9, "heads from class_il_acc_after_each_task");
        let svg = render_plot_svg("p", &lines_fixture()).unwrap();
        assert!(
            svg.contains("Class-IL accuracy") && svg.contains("ncm"),
            "both panels and the legend: {svg}"
        );
    }

    fn lines_fixture() -> Vec<RunResult> {
        let mut r = sample_run("lwf", 0, 2, |_, _| 0.8);
        r.class_il_by_classifier
            .insert("ncm".into(), crate::metrics::ClassifierCurve::new(vec![0.9, 0.7], vec![0.6, 0.8]));
        vec![r]
    }

    #[test]
    fn title_text_is_escaped() {
        let svg = render_plot_svg("a<b & c", &[sample_run("lwf", 0, 2, |_, _| 0.7)]).unwrap();
        assert!(svg.contains("a&lt;b &amp; c"));
        assert!(svg.contains("<text"));
    }
}
