//! SVG charts of a report: per workload, the headline figure and the CPU cost of each
//! dataplane (median bar, min–max whisker over the rounds); and the programs' ns/packet.

use std::path::Path;

use anyhow::{Result, anyhow};
use plotters::prelude::*;

use super::{
    lab::Kind,
    report::{Report, Summary},
    work::Workload,
};

/// Fonts the charts' text is measured with (plotters needs one registered).
const FONTS: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
];

fn register_font() -> Result<()> {
    static DONE: std::sync::OnceLock<Result<(), String>> = std::sync::OnceLock::new();
    DONE.get_or_init(|| {
        let path = FONTS.iter().find(|p| Path::new(p).is_file()).ok_or_else(|| {
            "no DejaVu Sans font for the charts' text; install fonts-dejavu-core (`cargo xtask setup` does)".to_owned()
        })?;
        let bytes = std::fs::read(path).map_err(|e| format!("reading {path}: {e}"))?;
        // plotters keeps fonts for the life of the process.
        let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
        plotters::style::register_font("sans-serif", FontStyle::Normal, bytes)
            .map_err(|_| format!("{path} is not a usable font"))
    })
    .clone()
    .map_err(|e| anyhow!(e))
}

fn color(k: Kind) -> RGBColor {
    match k {
        Kind::Veth => RGBColor(150, 150, 150),
        Kind::Routing => RGBColor(100, 100, 100),
        Kind::Iptables => RGBColor(214, 96, 77),
        Kind::Nftables => RGBColor(244, 165, 130),
        Kind::NetfastOff => RGBColor(146, 197, 222),
        Kind::NetfastOn => RGBColor(33, 102, 172),
    }
}

/// Draws every chart; returns what it could not draw instead of failing the report.
pub fn draw(r: &Report, dir: &Path) -> Result<Vec<String>> {
    // Charts of an earlier run that this one does not redraw would sit beside its report.
    for name in Workload::ALL
        .iter()
        .map(|w| w.name())
        .chain(std::iter::once("programs"))
    {
        let _ = std::fs::remove_file(dir.join(format!("{name}.svg")));
    }
    if let Err(e) = register_font() {
        return Ok(vec![format!("no charts: {e}")]);
    }
    let mut notes = Vec::new();
    for &w in &r.workloads {
        let path = dir.join(format!("{}.svg", w.name()));
        if let Err(e) = workload_chart(r, w, &path) {
            notes.push(format!("{}: {e}", path.display()));
        }
    }
    if !r.programs.is_empty() {
        let path = dir.join("programs.svg");
        if let Err(e) = programs_chart(r, &path) {
            notes.push(format!("{}: {e}", path.display()));
        }
    }
    Ok(notes)
}

type Bars = Vec<(Kind, f64, f64, f64)>;

fn workload_chart(r: &Report, w: Workload, path: &Path) -> Result<()> {
    let rows: Vec<_> = r.summary.iter().filter(|s| s.workload == w).collect();
    if rows.is_empty() {
        return Ok(());
    }
    let root = SVGBackend::new(path, (1100, 420)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow!("{e}"))?;
    let (left, right) = root.split_horizontally(550);
    let (metric, unit) = w.metric();
    // Each panel's title, and its bar and whiskers from a summary. The CPU cost per unit has
    // no per-round min/max in the summary: the bar alone.
    type Figures = fn(&Summary) -> (f64, f64, f64);
    let panels: [(_, String, Figures); 2] = [
        (
            &left,
            format!("{} — {metric} ({unit}), higher is better", w.name()),
            |s| (s.median, s.min, s.max),
        ),
        (
            &right,
            format!("{} — {}, lower is better", w.name(), w.cpu_unit()),
            |s| (s.cpu_median, s.cpu_median, s.cpu_median),
        ),
    ];
    for (area, title, figures) in panels {
        let values: Bars = rows
            .iter()
            .map(|s| {
                let (bar, low, high) = figures(s);
                (s.kind, bar, low, high)
            })
            .collect();
        bars(area, &title, &values)?;
    }
    root.present().map_err(|e| anyhow!("{e}"))?;
    Ok(())
}

fn bars(
    area: &DrawingArea<SVGBackend<'_>, plotters::coord::Shift>,
    title: &str,
    v: &Bars,
) -> Result<()> {
    let top = v
        .iter()
        .map(|&(_, m, _, max)| m.max(max))
        .filter(|x| x.is_finite())
        .fold(0.0f64, f64::max)
        .max(1e-9)
        * 1.15;
    let n = v.len() as u32;
    let mut chart = ChartBuilder::on(area)
        .caption(title, ("sans-serif", 16))
        .margin(12)
        .x_label_area_size(30)
        .y_label_area_size(60)
        .build_cartesian_2d((0..n.saturating_sub(1)).into_segmented(), 0.0..top)
        .map_err(|e| anyhow!("{e}"))?;
    let names: Vec<&str> = v.iter().map(|(k, ..)| k.name()).collect();
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(v.len())
        .x_label_formatter(&|x| match x {
            SegmentValue::CenterOf(i) => names.get(*i as usize).copied().unwrap_or("").to_owned(),
            _ => String::new(),
        })
        .label_style(("sans-serif", 12))
        .draw()
        .map_err(|e| anyhow!("{e}"))?;
    chart
        .draw_series(v.iter().enumerate().map(|(i, &(k, m, _, _))| {
            let i = i as u32;
            let mut bar = Rectangle::new(
                [
                    (SegmentValue::Exact(i), 0.0),
                    (SegmentValue::Exact(i + 1), m),
                ],
                color(k).filled(),
            );
            bar.set_margin(0, 0, 12, 12);
            bar
        }))
        .map_err(|e| anyhow!("{e}"))?;
    chart
        .draw_series(
            v.iter()
                .enumerate()
                .filter(|(_, (_, _, lo, hi))| hi > lo)
                .map(|(i, &(_, _, lo, hi))| {
                    PathElement::new(
                        vec![
                            (SegmentValue::CenterOf(i as u32), lo),
                            (SegmentValue::CenterOf(i as u32), hi),
                        ],
                        BLACK.stroke_width(2),
                    )
                }),
        )
        .map_err(|e| anyhow!("{e}"))?;
    Ok(())
}

fn programs_chart(r: &Report, path: &Path) -> Result<()> {
    let root = SVGBackend::new(path, (1100, 460)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow!("{e}"))?;
    let p = &r.programs;
    let top = p
        .iter()
        .flat_map(|c| [Some(c.established_ns), c.established_large_ns, c.new_ns])
        .flatten()
        .fold(0.0f64, f64::max)
        .max(1.0)
        * 1.15;
    let n = p.len() as u32;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "ns per packet (BPF_PROG_TEST_RUN): established, established beside 1M flows, new flow",
            ("sans-serif", 16),
        )
        .margin(12)
        .x_label_area_size(30)
        .y_label_area_size(60)
        .build_cartesian_2d((0..n.saturating_sub(1)).into_segmented(), 0.0..top)
        .map_err(|e| anyhow!("{e}"))?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(p.len())
        .x_label_formatter(&|x| match x {
            SegmentValue::CenterOf(i) => format!("case {}", i + 1),
            _ => String::new(),
        })
        .label_style(("sans-serif", 12))
        .draw()
        .map_err(|e| anyhow!("{e}"))?;
    let series = [
        (RGBColor(33, 102, 172), 0usize),
        (RGBColor(146, 197, 222), 1),
        (RGBColor(214, 96, 77), 2),
    ];
    for (c, which) in series {
        chart
            .draw_series(p.iter().enumerate().filter_map(|(i, cost)| {
                let v = [
                    Some(cost.established_ns),
                    cost.established_large_ns,
                    cost.new_ns,
                ][which]?;
                let i = i as u32;
                let mut bar = Rectangle::new(
                    [
                        (SegmentValue::Exact(i), 0.0),
                        (SegmentValue::Exact(i + 1), v),
                    ],
                    c.filled(),
                );
                // Three bars side by side within the segment.
                let width = 100;
                let left = 10 + which as u32 * width / 3;
                bar.set_margin(0, 0, left, 10 + (2 - which as u32) * width / 3);
                Some(bar)
            }))
            .map_err(|e| anyhow!("{e}"))?;
    }
    root.present().map_err(|e| anyhow!("{e}"))?;
    Ok(())
}
