//! `--plot`: nodes by capacity type and pending pods over time, as an SVG.

use std::error::Error;
use std::path::Path;

use plotters::coord::types::RangedCoordf64;
use plotters::coord::Shift;
use plotters::prelude::*;
use spotguard_sim::{Comparison, Sample};

const SPOT: RGBColor = RGBColor(0x1f, 0x77, 0xb4);
const ON_DEMAND: RGBColor = RGBColor(0xff, 0x7f, 0x0e);
const BASELINE: RGBColor = RGBColor(0xd6, 0x27, 0x28);
const BASELINE_NODES: RGBColor = RGBColor(0x99, 0x99, 0x99);

/// Step-line points of one count over time, in hours, ending at `end` hours.
fn steps(series: &[Sample], end: f64, count: impl Fn(&Sample) -> u32) -> Vec<(f64, f64)> {
    let mut points = Vec::with_capacity(series.len() * 2 + 1);
    let mut last: Option<f64> = None;
    for s in series {
        let t = s.at as f64 / 3600.0;
        let v = f64::from(count(s));
        if let Some(prev) = last {
            points.push((t, prev));
        }
        points.push((t, v));
        last = Some(v);
    }
    if let Some(v) = last {
        points.push((end, v));
    }
    points
}

type Chart<'a> = ChartContext<'a, SVGBackend<'a>, Cartesian2d<RangedCoordf64, RangedCoordf64>>;

/// One step line with its legend entry.
fn line(
    chart: &mut Chart<'_>,
    points: Vec<(f64, f64)>,
    color: RGBColor,
    width: u32,
    label: &str,
) -> Result<(), Box<dyn Error>> {
    chart
        .draw_series(LineSeries::new(points, color.stroke_width(width)))?
        .label(label)
        .legend(move |(x, y)| {
            PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(width))
        });
    Ok(())
}

/// A chart over `0..end` hours and `0..top`, with its caption, axes and grid.
fn chart<'a>(
    area: &DrawingArea<SVGBackend<'a>, Shift>,
    caption: &str,
    y_desc: &str,
    end: f64,
    top: f64,
) -> Result<Chart<'a>, Box<dyn Error>> {
    let mut chart = ChartBuilder::on(area)
        .caption(caption, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(30)
        .y_label_area_size(44)
        .build_cartesian_2d(0f64..end, 0f64..top)?;
    chart
        .configure_mesh()
        .x_desc("hours")
        .y_desc(y_desc)
        .x_label_formatter(&|h| format!("{h:.0}"))
        .y_label_formatter(&|n| format!("{n:.0}"))
        .draw()?;
    Ok(chart)
}

/// Draws the plot: Spot Guard's nodes by capacity type (with the total nodes of *no Spot
/// Guard* for reference) above, pending pods of both below.
pub fn draw(c: &Comparison, path: &Path) -> Result<(), Box<dyn Error>> {
    let end = c.duration_seconds as f64 / 3600.0;
    let sg = &c.spot_guard.series;
    let plain = &c.no_spot_guard.series;
    let max_nodes = sg
        .iter()
        .chain(plain)
        .map(|s| s.spot_nodes + s.on_demand_nodes)
        .max()
        .unwrap_or(1);
    let max_pending = sg
        .iter()
        .chain(plain)
        .map(|s| s.pending_pods)
        .max()
        .unwrap_or(0)
        .max(1);

    let root = SVGBackend::new(path, (1100, 720)).into_drawing_area();
    root.fill(&WHITE)?;
    let (top, bottom) = root.split_vertically(400);

    let caption = format!("{}: nodes by capacity type", c.scenario);
    let mut nodes = chart(&top, &caption, "nodes", end, f64::from(max_nodes) + 1.0)?;
    let all = |s: &Sample| s.spot_nodes + s.on_demand_nodes;
    line(
        &mut nodes,
        steps(plain, end, all),
        BASELINE_NODES,
        1,
        "no Spot Guard: all nodes",
    )?;
    let spot = steps(sg, end, |s| s.spot_nodes);
    line(&mut nodes, spot, SPOT, 2, "Spot Guard: spot nodes")?;
    let od = steps(sg, end, |s| s.on_demand_nodes);
    line(&mut nodes, od, ON_DEMAND, 2, "Spot Guard: on-demand nodes")?;
    nodes
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()?;

    let top = f64::from(max_pending) * 1.1;
    let mut pending = chart(&bottom, "pods without a node", "pending pods", end, top)?;
    let pods = |s: &Sample| s.pending_pods;
    line(
        &mut pending,
        steps(plain, end, pods),
        BASELINE,
        2,
        "no Spot Guard",
    )?;
    line(&mut pending, steps(sg, end, pods), SPOT, 2, "Spot Guard")?;
    pending
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}
