//! A throughput-over-time chart as SVG: operations (and errors) per second as a step line,
//! with vertical markers for events ("kill n2", "heal") and shaded spans for windows such as
//! a shard's unavailability. It knows nothing of what caused the events: whoever ran the
//! workload and the faults passes them in, in seconds on the samples' clock.
//!
//! The look follows the ladder's chart (`docs/ladder/ladder.svg`): white background,
//! sans-serif, the same blue and orange.

use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use crate::series::SecondSample;

const WIDTH: u32 = 1000;
const HEIGHT: u32 = 420;
const OPS: RGBColor = RGBColor(70, 130, 180);
const ERRORS: RGBColor = RGBColor(230, 145, 56);
const SPAN: RGBColor = RGBColor(200, 60, 50);
/// Rows of marker labels, so events close together do not print over each other.
const LABEL_ROWS: usize = 3;

/// An event at one moment: a vertical line with `label` at its top.
#[derive(Debug, Clone, PartialEq)]
pub struct Marker {
    /// Seconds on the samples' clock (sample `n` covers `[n, n + 1)`).
    pub at_second: f64,
    /// What happened, e.g. `kill n2`.
    pub label: String,
}

/// A stretch of time, shaded, with `label` at its top left: e.g. a shard without a leader.
#[derive(Debug, Clone, PartialEq)]
pub struct Span {
    /// Start, seconds on the samples' clock.
    pub from_second: f64,
    /// End, seconds on the samples' clock (not before `from_second`).
    pub to_second: f64,
    /// What the span is, e.g. `shard 1 unavailable`.
    pub label: String,
}

/// The chart could not be drawn.
#[derive(Debug, thiserror::Error)]
#[error("cannot draw the throughput chart: {0}")]
pub struct ChartError(String);

/// Draw `samples` (one a second, as [`BenchReport::per_second`](crate::BenchReport) holds
/// them; pass [`BenchReport::full_seconds`](crate::BenchReport::full_seconds) to leave out
/// a last, partial second) as an SVG document titled `title`, with `markers` and `spans`
/// over it. The errors line is drawn only when some sample has errors. Labels are escaped
/// (and control characters blanked), so any text is safe in them. Write the string to a `.svg` file to keep it.
pub fn throughput_chart_svg(
    title: &str,
    samples: &[SecondSample],
    markers: &[Marker],
    spans: &[Span],
) -> Result<String, ChartError> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (WIDTH, HEIGHT)).into_drawing_area();
        draw(&root, title, samples, markers, spans).map_err(|e| ChartError(e.to_string()))?;
        root.present().map_err(|e| ChartError(e.to_string()))?;
    }
    Ok(svg)
}

type DrawResult = Result<(), Box<dyn std::error::Error>>;

fn draw(
    root: &DrawingArea<SVGBackend<'_>, plotters::coord::Shift>,
    title: &str,
    samples: &[SecondSample],
    markers: &[Marker],
    spans: &[Span],
) -> DrawResult {
    root.fill(&WHITE)?;
    // Non-finite times would make a range plotters cannot map; they are left out.
    let markers: Vec<&Marker> = markers.iter().filter(|m| m.at_second.is_finite()).collect();
    let spans: Vec<&Span> = spans
        .iter()
        .filter(|s| s.from_second.is_finite() && s.to_second.is_finite())
        .collect();
    let end = samples
        .iter()
        .map(|s| (s.second + 1) as f64)
        .chain(markers.iter().map(|m| m.at_second))
        .chain(spans.iter().map(|s| s.to_second.max(s.from_second)))
        .fold(1.0_f64, f64::max);
    let start = markers
        .iter()
        .map(|m| m.at_second)
        .chain(spans.iter().map(|s| s.from_second.min(s.to_second)))
        .fold(0.0_f64, f64::min);
    let max = samples
        .iter()
        .map(|s| s.ops.max(s.errors))
        .max()
        .unwrap_or(0) as f64;
    // Headroom for the marker labels and the legend above the line.
    let top = if max > 0.0 { max * 1.3 } else { 1.0 };

    let mut chart = ChartBuilder::on(root)
        .caption(plain(title), ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(72)
        .build_cartesian_2d(start..end, 0.0..top)?;
    chart
        .configure_mesh()
        .x_desc("seconds")
        .x_label_formatter(&|x| format!("{x:.0}"))
        .y_labels(6)
        .y_label_formatter(&|y| thousands(*y))
        .y_desc("per second")
        .label_style(("sans-serif", 13))
        .draw()?;

    let small = TextStyle::from(("sans-serif", 12).into_font())
        .color(&BLACK)
        .pos(Pos::new(HPos::Left, VPos::Top));
    // Spans first, so the lines are drawn over them.
    for span in &spans {
        let (from, to) = (
            span.from_second.min(span.to_second),
            span.from_second.max(span.to_second),
        );
        chart.draw_series([Rectangle::new(
            [(from, 0.0), (to, top)],
            SPAN.mix(0.15).filled(),
        )])?;
        chart
            .draw_series([EmptyElement::at((from, top))
                + Text::new(plain(&span.label), (4, 4), small.clone())])?;
    }

    let ops = step(samples, |s| s.ops);
    chart
        .draw_series([PathElement::new(ops, OPS.stroke_width(2))])?
        .label("ops/s")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], OPS.stroke_width(2)));
    if samples.iter().any(|s| s.errors > 0) {
        let errors = step(samples, |s| s.errors);
        chart
            .draw_series([PathElement::new(errors, ERRORS.stroke_width(2))])?
            .label("errors/s")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], ERRORS.stroke_width(2)));
    }

    for (i, marker) in markers.iter().enumerate() {
        let x = marker.at_second;
        chart.draw_series([PathElement::new(
            vec![(x, 0.0), (x, top)],
            BLACK.mix(0.6).stroke_width(1),
        )])?;
        // Below the spans' labels, staggered over a few rows.
        let row = (i % LABEL_ROWS) as i32;
        chart.draw_series([EmptyElement::at((x, top))
            + Text::new(plain(&marker.label), (4, 20 + 15 * row), small.clone())])?;
    }

    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK.mix(0.3))
        .label_font(("sans-serif", 13))
        .draw()?;
    Ok(())
}

/// `text` without control characters, which XML 1.0 does not allow even escaped (the
/// backend escapes the markup characters).
fn plain(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

/// The samples as a step line: each second's value held from its start to its end.
fn step(samples: &[SecondSample], value: fn(&SecondSample) -> u64) -> Vec<(f64, f64)> {
    samples
        .iter()
        .flat_map(|s| {
            let (x, y) = (s.second as f64, value(s) as f64);
            [(x, y), (x + 1.0, y)]
        })
        .collect()
}

/// `123456.0` as `123k`, small numbers as they are (as on the ladder's chart).
fn thousands(v: f64) -> String {
    if v >= 10_000.0 {
        format!("{:.0}k", v / 1000.0)
    } else if v >= 1000.0 {
        format!("{:.1}k", v / 1000.0)
    } else {
        format!("{v:.0}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Check that every element is closed, in order: enough XML to know a browser will
    /// parse it (plotters writes no comments, CDATA or entities other than escapes).
    fn assert_balanced(svg: &str) {
        let mut open: Vec<String> = Vec::new();
        let mut rest = svg;
        while let Some(at) = rest.find('<') {
            let end = rest[at..].find('>').expect("every tag is closed") + at;
            let tag = &rest[at + 1..end];
            rest = &rest[end + 1..];
            if tag.starts_with('?') || tag.starts_with('!') {
                continue;
            }
            let name = |t: &str| {
                t.split(|c: char| c.is_whitespace() || c == '/')
                    .next()
                    .unwrap_or("")
                    .to_owned()
            };
            if let Some(closing) = tag.strip_prefix('/') {
                assert_eq!(open.pop().as_deref(), Some(closing.trim()), "in {svg}");
            } else if !tag.ends_with('/') {
                open.push(name(tag));
            }
        }
        assert!(open.is_empty(), "unclosed {open:?}");
    }

    fn samples() -> Vec<SecondSample> {
        (0..10)
            .map(|second| SecondSample {
                second,
                ops: if (4..6).contains(&second) { 50 } else { 20_000 },
                errors: if second == 4 { 120 } else { 0 },
            })
            .collect()
    }

    #[test]
    fn the_chart_is_an_svg_with_its_line_markers_and_spans() {
        let markers = [
            Marker {
                at_second: 4.0,
                label: "kill n2".into(),
            },
            Marker {
                at_second: 6.2,
                label: "heal <n1 & n3>\u{7}".into(),
            },
        ];
        let spans = [Span {
            from_second: 4.0,
            to_second: 5.7,
            label: "shard 1 unavailable".into(),
        }];
        let svg = throughput_chart_svg("put, 3 nodes", &samples(), &markers, &spans).unwrap();
        let body = svg.trim_start();
        assert!(body.starts_with("<svg"), "{svg}");
        assert!(body.trim_end().ends_with("</svg>"), "{svg}");
        assert_balanced(&svg);
        for text in [
            "put, 3 nodes",
            "kill n2",
            "heal &lt;n1 &amp; n3&gt;",
            "shard 1 unavailable",
            "ops/s",
            "errors/s",
        ] {
            assert!(svg.contains(text), "{text:?} missing from {svg}");
        }
        assert!(!svg.contains("<n1"), "labels are escaped");
        assert!(!svg.contains('\u{7}'), "control characters are blanked");
        assert!(svg.contains("<polyline"), "the lines are drawn");
    }

    #[test]
    fn no_errors_no_errors_line_and_empty_input_still_draws() {
        let mut quiet = samples();
        quiet.iter_mut().for_each(|s| s.errors = 0);
        let svg = throughput_chart_svg("t", &quiet, &[], &[]).unwrap();
        assert!(!svg.contains("errors/s"));
        assert_balanced(&svg);

        let odd = [Marker {
            at_second: f64::NAN,
            label: "never".into(),
        }];
        let svg = throughput_chart_svg("empty", &[], &odd, &[]).unwrap();
        assert!(svg.trim_start().starts_with("<svg"));
        assert!(!svg.contains("never"), "a marker at no time is left out");
        assert_balanced(&svg);
    }

    #[test]
    fn a_step_holds_each_second() {
        let s = [
            SecondSample {
                second: 0,
                ops: 5,
                errors: 0,
            },
            SecondSample {
                second: 1,
                ops: 7,
                errors: 0,
            },
        ];
        assert_eq!(
            step(&s, |s| s.ops),
            vec![(0.0, 5.0), (1.0, 5.0), (1.0, 7.0), (2.0, 7.0)]
        );
    }
}
