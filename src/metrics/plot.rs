//! The experiment's SVG plot: task-aware accuracy on each task after each
//! training step, the picture that shows forgetting at a glance (a line that
//! falls is a task being forgotten).
//!
//! Lines of one method share a colour; each task gets its own marker shape
//! and a legend entry "method: task j". Several seeds of a method are
//! averaged. Text is written as SVG `<text>` elements, which needs no font
//! files (plotters' `ttf` feature is off; the viewer renders the font).

use super::report::group_by_method;
use super::{mean, RunResult};
use crate::error::{Error, Result};
use crate::fsio::write_atomic;
use plotters::coord::Shift;
use plotters::prelude::*;
use std::path::Path;

const WIDTH: u32 = 960;
const HEIGHT: u32 = 600;

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

/// One plotted line: a method's accuracy on one task over the steps.
#[derive(Clone, Debug, PartialEq)]
struct Line {
    label: String,
    colour: RGBColor,
    /// Which marker shape (the task index).
    shape: usize,
    /// (after task, 1-based; accuracy in %), seeds averaged.
    points: Vec<(i32, f64)>,
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
        return Err(Error::Config("no accuracies to plot".to_string()));
    }
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (WIDTH, HEIGHT)).into_drawing_area();
        draw(&root, protocol, n, &lines)?;
        root.present().map_err(plot_error)?;
    }
    Ok(svg)
}

/// Per method (in order of appearance) and task j, the mean over seeds of
/// `A[t][j]` for every step t ≥ j where some seed has it.
fn seed_mean_lines(results: &[RunResult]) -> Vec<Line> {
    let mut lines = Vec::new();
    for (m, (method, runs)) in group_by_method(results).into_iter().enumerate() {
        let n = runs.iter().map(|r| r.n_tasks()).max().unwrap_or(0);
        for j in 0..n {
            let points: Vec<(i32, f64)> = (j..n)
                .filter_map(|t| {
                    let accs: Vec<f64> = runs.iter().filter_map(|r| r.acc_matrix_task_aware.get(t, j)).collect();
                    mean(&accs).map(|a| (t as i32 + 1, a * 100.0))
                })
                .collect();
            if !points.is_empty() {
                let label = format!("{method}: task {}", j + 1);
                lines.push(Line { label, colour: PALETTE[m % PALETTE.len()], shape: j, points });
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
    Error::Config(format!("drawing the plot: {e}"))
}

/// A task's marker at `$at`, as one element of one concrete type whatever the
/// shape: every shape is composed in and all but the task's own are drawn
/// transparent (the SVG backend skips those). With `$segment` it is the legend
/// glyph, a short line through the marker. A macro, not a function, because
/// the composed type cannot be named, and plotters' type erasure
/// (`DynElement`) would demand a `'static` backend, which the in-memory SVG
/// backend is not.
macro_rules! glyph {
    ($at:expr, $shape:expr, $colour:expr, $segment:expr) => {{
        let (shape, colour): (usize, RGBColor) = ($shape % 5, $colour);
        let (filled, stroke) = (colour.filled(), colour.stroke_width(2));
        EmptyElement::at($at)
            + PathElement::new(vec![(-10, 0), (10, 0)], visible($segment, stroke))
            + Circle::new((0, 0), 4, visible(shape == 0, filled))
            + TriangleMarker::new((0, 0), 6, visible(shape == 1, filled))
            + Cross::new((0, 0), 4, visible(shape == 2, stroke))
            + Rectangle::new([(-4, -4), (4, 4)], visible(shape == 3, stroke))
            + Circle::new((0, 0), 4, visible(shape == 4, stroke))
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

fn draw<DB: DrawingBackend>(root: &DrawingArea<DB, Shift>, protocol: &str, n: usize, lines: &[Line]) -> Result<()> {
    root.fill(&WHITE).map_err(plot_error)?;
    let last = n as i32;
    let mut chart = ChartBuilder::on(root)
        .caption(format!("Task-aware accuracy per task after each step ({protocol})"), ("sans-serif", 22))
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(60)
        .build_cartesian_2d(0..last + 1, y_floor(lines)..100.0)
        .map_err(plot_error)?;
    let x_label = |x: &i32| if (1..=last).contains(x) { x.to_string() } else { String::new() };
    chart
        .configure_mesh()
        .x_labels(n + 2)
        .x_label_formatter(&x_label)
        .x_desc("after training task")
        .y_desc("accuracy (%)")
        .draw()
        .map_err(plot_error)?;
    for line in lines {
        let (colour, shape) = (line.colour, line.shape);
        chart
            .draw_series(LineSeries::new(line.points.iter().copied(), colour.stroke_width(2)))
            .map_err(plot_error)?
            .label(line.label.as_str())
            .legend(move |(x, y)| glyph!((x + 10, y), shape, colour, true));
        chart.draw_series(line.points.iter().map(|&p| glyph!(p, shape, colour, false))).map_err(plot_error)?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(plot_error)?;
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
        let labels: Vec<&str> = lines.iter().map(|l| l.label.as_str()).collect();
        assert_eq!(labels, ["lwf: task 1", "lwf: task 2", "finetune: task 1", "finetune: task 2"]);
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
    fn title_text_is_escaped() {
        let svg = render_plot_svg("a<b & c", &[sample_run("lwf", 0, 2, |_, _| 0.7)]).unwrap();
        assert!(svg.contains("a&lt;b &amp; c"));
        assert!(svg.contains("<text"));
    }
}
