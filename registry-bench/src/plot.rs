//! An SVG plot of the bench's cost curves
//! (propagation p99, the separate discoverer's cold start, CPU and memory
//! against instances), one line per backend.

use std::collections::BTreeMap;
use std::path::Path;

use plotters::prelude::*;

use crate::row::Row;

/// One panel: a metric of a row.
struct Panel {
    title: &'static str,
    unit: &'static str,
    value: fn(&Row) -> f64,
}

const PANELS: [Panel; 4] = [
    Panel {
        title: "Propagation p99 (install→visible, uninstall→gone)", unit: "ms", value: |r| r.propagation_p99_ms
    },
    Panel { title: "Discoverer cold start (list + parse + index), median", unit: "ms", value: |r| r.cold_start_ms },
    Panel { title: "Discoverer CPU while the fleet heartbeats", unit: "% of one core", value: |r| r.disc_cpu_pct },
    Panel { title: "Discoverer memory (RSS of its process)", unit: "MiB", value: |r| r.disc_rss_mib },
];

/// Draws the four cost curves of `rows` (one series per backend) into an SVG file.
pub fn write_svg(path: &Path, title: &str, rows: &[Row]) -> anyhow::Result<()> {
    let draw = || -> Result<(), Box<dyn std::error::Error>> {
        let mut series: BTreeMap<&str, Vec<&Row>> = BTreeMap::new();
        for row in rows {
            series.entry(row.backend.as_str()).or_default().push(row);
        }
        for points in series.values_mut() {
            points.sort_by_key(|r| r.instances);
        }
        let x_min = rows.iter().map(|r| r.instances).min().unwrap_or(1).max(1) as f64;
        let x_max = (rows.iter().map(|r| r.instances).max().unwrap_or(10) as f64).max(x_min * 10.0);
        let root = SVGBackend::new(path, (1200, 860)).into_drawing_area();
        root.fill(&WHITE)?;
        let root = root.titled(title, ("sans-serif", 22))?;
        for (area, panel) in root.split_evenly((2, 2)).iter().zip(PANELS.iter()) {
            let y_max = rows.iter().map(panel.value).filter(|v| v.is_finite()).fold(0.0_f64, f64::max);
            let y_max = if y_max > 0.0 { y_max * 1.15 } else { 1.0 };
            let mut chart = ChartBuilder::on(area)
                .caption(panel.title, ("sans-serif", 16))
                .margin(12)
                .x_label_area_size(40)
                .y_label_area_size(60)
                .build_cartesian_2d((x_min * 0.8..x_max * 1.25).log_scale(), 0.0..y_max)?;
            chart
                .configure_mesh()
                .x_desc("instances in the env (log scale)")
                .y_desc(panel.unit)
                .x_labels(4)
                .x_label_formatter(&|x| format!("{x:.0}"))
                .light_line_style(WHITE)
                .draw()?;
            for (i, (backend, points)) in series.iter().enumerate() {
                let color = Palette99::pick(i).to_rgba();
                let xy: Vec<(f64, f64)> = points
                    .iter()
                    .map(|r| (r.instances as f64, (panel.value)(r)))
                    .filter(|(_, y)| y.is_finite())
                    .collect();
                chart
                    .draw_series(LineSeries::new(xy.clone(), color.stroke_width(2)))?
                    .label(*backend)
                    .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)));
                chart.draw_series(xy.iter().map(|&p| Circle::new(p, 4, color.filled())))?;
            }
            chart
                .configure_series_labels()
                .position(SeriesLabelPosition::UpperLeft)
                .background_style(WHITE.mix(0.85))
                .border_style(BLACK)
                .draw()?;
        }
        root.present()?;
        Ok(())
    };
    draw().map_err(|e| anyhow::anyhow!("drawing {}: {e}", path.display()))
}
