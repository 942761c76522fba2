//! `ladder.svg`: the main ladder at a glance. Top: throughput per rung, a bar for inflight 1
//! and one for inflight 16 (the fastest run; a whisker spans the slowest to the fastest run).
//! Bottom: the node's CPU time per operation, same bars. A rung that
//! is not built or failed gets a word instead of a bar, never a made-up height.

use std::path::Path;

use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use super::{LadderRow, RowStatus};

const WIDTH: u32 = 1000;
const HEIGHT: u32 = 780;
const INFLIGHTS: [(usize, RGBColor); 2] =
    [(1, RGBColor(70, 130, 180)), (16, RGBColor(230, 145, 56))];

/// One panel's numbers: per rung label, per inflight, a value or why there is none.
struct Panel<'a> {
    caption: &'a str,
    y_desc: &'a str,
    value: fn(&LadderRow) -> Option<f64>,
    /// Text over a bar.
    label: fn(f64) -> String,
    /// Text on the y axis.
    axis: fn(f64) -> String,
    /// Lowest and highest value over a case's runs, drawn as a whisker.
    spread: fn(&LadderRow) -> Option<(f64, f64)>,
}

/// Draw the chart of the main-ladder rows (`variant == ""`) into `path`.
pub(crate) fn draw(
    path: &Path,
    rows: &[LadderRow],
    rungs: &[&str],
    title: &str,
) -> Result<(), String> {
    let root = SVGBackend::new(path, (WIDTH, HEIGHT)).into_drawing_area();
    draw_on(&root, rows, rungs, title)
        .map_err(|e| format!("cannot draw {}: {e}", path.display()))?;
    root.present()
        .map_err(|e| format!("cannot write {}: {e}", path.display()))
}

type DrawResult = Result<(), Box<dyn std::error::Error>>;

fn draw_on(
    root: &DrawingArea<SVGBackend<'_>, plotters::coord::Shift>,
    rows: &[LadderRow],
    rungs: &[&str],
    title: &str,
) -> DrawResult {
    root.fill(&WHITE)?;
    let root = root.titled(title, ("sans-serif", 20))?;
    let (top, bottom) = root.split_vertically(HEIGHT / 2 - 20);
    let main: Vec<&LadderRow> = rows.iter().filter(|r| r.variant.is_empty()).collect();
    panel(
        &top,
        &main,
        rungs,
        &Panel {
            caption: "Throughput (higher is better)",
            y_desc: "ops/s",
            value: |r| r.ops_per_sec,
            label: thousands,
            axis: thousands,
            spread: |r| {
                let runs = &r.ops_per_sec_runs;
                (runs.len() > 1).then(|| {
                    let min = runs.iter().copied().fold(f64::INFINITY, f64::min);
                    (min, runs.iter().copied().fold(0.0, f64::max))
                })
            },
        },
    )?;
    panel(
        &bottom,
        &main,
        rungs,
        &Panel {
            caption: "Node CPU time per operation (lower is better)",
            y_desc: "server CPU µs/op",
            value: |r| r.server_cpu_us_per_op,
            label: |v| format!("{v:.1}"),
            axis: |v| format!("{v:.0}"),
            spread: |_| None,
        },
    )?;
    Ok(())
}

fn panel(
    area: &DrawingArea<SVGBackend<'_>, plotters::coord::Shift>,
    rows: &[&LadderRow],
    rungs: &[&str],
    spec: &Panel<'_>,
) -> DrawResult {
    let find = |rung: &str, inflight: usize| {
        rows.iter()
            .find(|r| r.rung == rung && r.inflight == inflight)
            .copied()
    };
    let max = rows
        .iter()
        .filter_map(|r| (spec.value)(r))
        .chain(
            rows.iter()
                .filter_map(|r| (spec.spread)(r).map(|(_, hi)| hi)),
        )
        .fold(0.0_f64, f64::max);
    // Headroom for the labels over the bars and for the legend above them.
    let top = if max > 0.0 { max * 1.35 } else { 1.0 };
    let n = rungs.len();
    let mut chart = ChartBuilder::on(area)
        .caption(spec.caption, ("sans-serif", 16))
        .margin(12)
        .x_label_area_size(28)
        .y_label_area_size(72)
        .build_cartesian_2d(-0.5..(n as f64 - 0.5), 0.0..top)?;
    let names: Vec<String> = rungs.iter().map(|s| s.to_string()).collect();
    let label_of = move |x: &f64| {
        let i = x.round();
        if (x - i).abs() < 1e-6 && i >= 0.0 && (i as usize) < names.len() {
            names[i as usize].clone()
        } else {
            String::new()
        }
    };
    let y_label = spec.axis;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(n)
        .x_label_formatter(&label_of)
        .y_labels(6)
        .y_label_formatter(&|y| y_label(*y))
        .y_desc(spec.y_desc)
        .label_style(("sans-serif", 13))
        .draw()?;

    // Two bars per rung: inflight 1 left of the tick, inflight 16 right of it.
    let width = 0.38;
    for (slot, (inflight, color)) in INFLIGHTS.into_iter().enumerate() {
        let left_of = |i: usize| i as f64 - width + slot as f64 * width;
        let mut bars = Vec::new();
        let mut whiskers = Vec::new();
        let mut words = Vec::new();
        for (i, rung) in rungs.iter().enumerate() {
            let x0 = left_of(i);
            let row = find(rung, inflight);
            match row.and_then(|r| (spec.value)(r).map(|v| (r, v))) {
                Some((r, v)) => {
                    let centre = x0 + width * 0.46;
                    bars.push(Rectangle::new(
                        [(x0, 0.0), (x0 + width * 0.92, v)],
                        color.filled(),
                    ));
                    let mut text_at = v;
                    if let Some((lo, hi)) = (spec.spread)(r) {
                        let cap = width * 0.15;
                        whiskers.push(vec![(centre, lo), (centre, hi)]);
                        whiskers.push(vec![(centre - cap, lo), (centre + cap, lo)]);
                        whiskers.push(vec![(centre - cap, hi), (centre + cap, hi)]);
                        text_at = text_at.max(hi);
                    }
                    words.push((centre, text_at, (spec.label)(v)));
                }
                None => {
                    let word = match row.map(|r| r.status) {
                        Some(RowStatus::NotBuilt) => "not built yet",
                        Some(RowStatus::Failed) => "failed",
                        Some(RowStatus::Skipped) => "skipped",
                        Some(RowStatus::Ok) => "n/a",
                        None => "",
                    };
                    // One word per rung, centred over the tick, not one per bar.
                    if slot == 0 && !word.is_empty() {
                        words.push((i as f64, 0.0, word.to_owned()));
                    }
                }
            }
        }
        chart
            .draw_series(bars)?
            .label(format!("inflight {inflight}"))
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], color.filled()));
        chart.draw_series(
            whiskers
                .into_iter()
                .map(|points| PathElement::new(points, BLACK.mix(0.6).stroke_width(1))),
        )?;
        let style = TextStyle::from(("sans-serif", 11).into_font())
            .color(&BLACK)
            .pos(Pos::new(HPos::Center, VPos::Bottom));
        chart.draw_series(words.into_iter().map(|(x, y, text)| {
            EmptyElement::at((x, y)) + Text::new(text, (0, -3), style.clone())
        }))?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperMiddle)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK.mix(0.3))
        .label_font(("sans-serif", 13))
        .draw()?;
    Ok(())
}

/// `123456.0` as `123k`, small numbers as they are.
fn thousands(v: f64) -> String {
    if v >= 10_000.0 {
        format!("{:.0}k", v / 1000.0)
    } else if v >= 1000.0 {
        format!("{:.1}k", v / 1000.0)
    } else {
        format!("{v:.0}")
    }
}
