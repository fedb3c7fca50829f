//! Results of the experiment's training runs: validation-loss curves over tokens, written as CSV, a
//! Markdown summary table and an SVG plot.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::io::Write as _;
use std::path::Path;

use plotters::prelude::*;

/// One validation measurement.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Point {
    pub round: u64,
    pub step: u64,
    /// Tokens consumed by all honest workers so far.
    pub tokens: u64,
    pub val_loss: f32,
}

/// One training run (one run id, one seed).
#[derive(Debug, Clone, PartialEq)]
pub struct Curve {
    /// Short id: "A", "B", "C", "D-krum", "E-int8", ...
    pub run: String,
    /// Human description: "DiLoCo, 4 nodes, fp32, mean".
    pub label: String,
    pub seed: u64,
    /// The exact command line that reproduces this run.
    pub command: String,
    /// Delta bytes one node uploaded over the run (0 for single-worker runs).
    pub bytes_sent: u64,
    /// Wall time of the run.
    pub seconds: f64,
    /// In round order; `tokens` = tokens consumed by all honest workers so far.
    pub points: Vec<Point>,
}

impl Curve {
    fn final_loss(&self) -> Option<f32> {
        self.points.last().map(|p| p.val_loss)
    }
}

const CSV_HEADER: &str =
    "run,label,seed,round,step,tokens,val_loss,perplexity,bytes_sent,seconds,command";

/// Writes one CSV row per point (header first; LF line ends). Fields are quoted as RFC 4180 says:
/// a field holding a comma, a double quote, CR or LF is enclosed in double quotes, with its double
/// quotes doubled. `perplexity` = exp(`val_loss`).
pub fn write_csv(path: &Path, curves: &[Curve]) -> std::io::Result<()> {
    let mut out = String::new();
    out.push_str(CSV_HEADER);
    out.push('\n');
    for curve in curves {
        for p in &curve.points {
            let fields = [
                csv_field(&curve.run),
                csv_field(&curve.label),
                curve.seed.to_string(),
                p.round.to_string(),
                p.step.to_string(),
                p.tokens.to_string(),
                p.val_loss.to_string(),
                perplexity(p.val_loss).to_string(),
                curve.bytes_sent.to_string(),
                format!("{:.3}", curve.seconds),
                csv_field(&curve.command),
            ];
            out.push_str(&fields.join(","));
            out.push('\n');
        }
    }
    let mut file = std::fs::File::create(path)?;
    file.write_all(out.as_bytes())?;
    file.flush()
}

fn csv_field(value: &str) -> String {
    if value.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", value.replace('"', "\"\""))
    } else {
        value.to_string()
    }
}

fn perplexity(loss: f32) -> f64 {
    f64::from(loss).exp()
}

/// The curves of one run id, over its seeds.
struct RunGroup<'a> {
    run: &'a str,
    curves: Vec<&'a Curve>,
}

impl RunGroup<'_> {
    fn final_losses(&self) -> Vec<f64> {
        self.curves
            .iter()
            .filter_map(|c| c.final_loss())
            .map(f64::from)
            .collect()
    }

    /// Mean final validation loss over the seeds that have at least one point.
    fn mean_final_loss(&self) -> Option<f64> {
        let losses = self.final_losses();
        (!losses.is_empty()).then(|| losses.iter().sum::<f64>() / losses.len() as f64)
    }
}

/// Groups curves by run id, in order of first appearance.
fn group_runs(curves: &[Curve]) -> Vec<RunGroup<'_>> {
    let mut groups: Vec<RunGroup<'_>> = Vec::new();
    for curve in curves {
        match groups.iter_mut().find(|g| g.run == curve.run) {
            Some(group) => group.curves.push(curve),
            None => groups.push(RunGroup {
                run: &curve.run,
                curves: vec![curve],
            }),
        }
    }
    groups
}

/// A Markdown table, one row per run id (in order of first appearance), its seeds grouped: the mean
/// final validation loss over seeds (with min–max when there are ≥ 2 seeds), exp(mean loss), the
/// signed relative difference (loss − ref)/ref × 100 to each of the two reference runs
/// (`reference_runs`, normally `("A", "B")`; "—" where a reference is absent), the mean delta
/// bytes one node uploaded and the mean wall time.
pub fn summary_table(curves: &[Curve], reference_runs: (&str, &str)) -> String {
    let groups = group_runs(curves);
    let reference = |run: &str| {
        groups
            .iter()
            .find(|g| g.run == run)
            .and_then(RunGroup::mean_final_loss)
    };
    let (ref_a, ref_b) = (reference(reference_runs.0), reference(reference_runs.1));

    let mut out = String::new();
    let _ = writeln!(
        out,
        "| run | what | seeds | final val loss | perplexity | Δ vs {} (%) | Δ vs {} (%) | delta bytes/node | wall s |",
        md_cell(reference_runs.0),
        md_cell(reference_runs.1)
    );
    out.push_str("|---|---|---:|---:|---:|---:|---:|---:|---:|\n");
    for group in &groups {
        let seeds: BTreeSet<u64> = group.curves.iter().map(|c| c.seed).collect();
        let losses = group.final_losses();
        let mean = group.mean_final_loss();
        let loss_cell = match mean {
            None => "—".to_string(),
            Some(mean) if seeds.len() >= 2 && losses.len() >= 2 => {
                let min = losses.iter().copied().fold(f64::INFINITY, f64::min);
                let max = losses.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                format!("{mean:.4} ({min:.4}–{max:.4})")
            }
            Some(mean) => format!("{mean:.4}"),
        };
        let perplexity_cell = mean.map_or("—".to_string(), |m| format!("{:.2}", m.exp()));
        let n = group.curves.len() as f64;
        let bytes = group
            .curves
            .iter()
            .map(|c| c.bytes_sent as f64)
            .sum::<f64>()
            / n;
        let seconds = group.curves.iter().map(|c| c.seconds).sum::<f64>() / n;
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} | {:.0} | {:.1} |",
            md_cell(group.run),
            md_cell(&group.curves[0].label),
            seeds.len(),
            loss_cell,
            perplexity_cell,
            relative_cell(mean, ref_a),
            relative_cell(mean, ref_b),
            bytes,
            seconds,
        );
    }
    out
}

/// (loss − ref)/ref × 100 with sign and 2 decimals, or "—".
fn relative_cell(loss: Option<f64>, reference: Option<f64>) -> String {
    match (loss, reference) {
        (Some(loss), Some(reference)) if reference != 0.0 => {
            let pct = (loss - reference) / reference * 100.0;
            // No "-0.00" for a difference that rounds to zero.
            let pct = if (pct * 100.0).round() == 0.0 {
                0.0
            } else {
                pct
            };
            format!("{pct:+.2}")
        }
        _ => "—".to_string(),
    }
}

/// Escapes what would break a Markdown table cell.
fn md_cell(text: &str) -> String {
    text.replace('|', "\\|").replace(['\n', '\r'], " ")
}

/// Writes an SVG line plot of validation loss over tokens: one line per (run, seed), one color and
/// one legend entry ("run id: label") per run id.
pub fn plot_svg(path: &Path, curves: &[Curve], title: &str) -> Result<(), String> {
    let finite = || {
        curves
            .iter()
            .flat_map(|c| &c.points)
            .filter(|p| p.val_loss.is_finite())
    };
    if finite().next().is_none() {
        return Err(format!(
            "cannot plot {}: no finite validation loss in any curve",
            path.display()
        ));
    }
    let max_tokens = finite().map(|p| p.tokens).max().unwrap_or(0).max(1);
    let (lo, hi) = finite().fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), p| {
        (lo.min(p.val_loss), hi.max(p.val_loss))
    });
    // The top is the loss before training: a run that diverges above it (the plain mean under
    // attack) is cut at the top edge instead of squashing every other curve into a line.
    let start = finite()
        .filter(|p| p.tokens == 0)
        .map(|p| p.val_loss)
        .fold(f32::NEG_INFINITY, f32::max);
    let hi = if start.is_finite() { hi.min(start) } else { hi };
    let clipped = finite().any(|p| p.val_loss > hi);
    let title = if clipped {
        format!("{title} (cut at the initial loss)")
    } else {
        title.to_string()
    };
    let pad = ((hi - lo) * 0.05).max(0.01);
    let (y_lo, y_hi) = (f64::from(lo - pad), f64::from(hi + pad));

    let err = |e: &dyn std::fmt::Display| format!("cannot plot {}: {e}", path.display());
    let root = SVGBackend::new(path, (1024, 640)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(&title, ("sans-serif", 24))
        .margin(16)
        .x_label_area_size(48)
        .y_label_area_size(64)
        .build_cartesian_2d(0f64..max_tokens as f64, y_lo..y_hi)
        .map_err(|e| err(&e))?;
    chart
        .configure_mesh()
        .x_desc("tokens")
        .y_desc("validation loss")
        .x_label_formatter(&|x| format_tokens(*x))
        .y_label_formatter(&|y| format!("{y:.2}"))
        .draw()
        .map_err(|e| err(&e))?;

    for (index, group) in group_runs(curves).iter().enumerate() {
        let color = run_color(index);
        let style = color.stroke_width(2);
        let mut first = true;
        for curve in &group.curves {
            let points: Vec<(f64, f64)> = curve
                .points
                .iter()
                .filter(|p| p.val_loss.is_finite())
                .map(|p| (p.tokens as f64, f64::from(p.val_loss).min(y_hi)))
                .collect();
            let series = chart
                .draw_series(LineSeries::new(points, style))
                .map_err(|e| err(&e))?;
            // One legend entry per run id, however many seeds it has.
            if std::mem::take(&mut first) {
                series
                    .label(format!("{}: {}", group.run, group.curves[0].label))
                    .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], style));
            }
        }
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(|e| err(&e))?;
    root.present().map_err(|e| err(&e))
}

/// Tableau's 10 categorical colors (all readable on white), then plotters' 99-color palette.
fn run_color(index: usize) -> RGBAColor {
    const COLORS: [(u8, u8, u8); 10] = [
        (31, 119, 180),
        (255, 127, 14),
        (44, 160, 44),
        (214, 39, 40),
        (148, 103, 189),
        (140, 86, 75),
        (227, 119, 194),
        (127, 127, 127),
        (188, 189, 34),
        (23, 190, 207),
    ];
    match COLORS.get(index) {
        Some(&(r, g, b)) => RGBColor(r, g, b).to_rgba(),
        None => Palette99::pick(index).to_rgba(),
    }
}

/// Axis labels for token counts: 950, 12k, 3.5M, 1.2G.
fn format_tokens(tokens: f64) -> String {
    let abs = tokens.abs();
    if abs >= 1e9 {
        format!("{:.1}G", tokens / 1e9)
    } else if abs >= 1e6 {
        format!("{:.1}M", tokens / 1e6)
    } else if abs >= 1e3 {
        format!("{:.0}k", tokens / 1e3)
    } else {
        format!("{tokens:.0}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn curve(run: &str, label: &str, seed: u64, losses: &[f32]) -> Curve {
        Curve {
            run: run.into(),
            label: label.into(),
            seed,
            command: format!("neuroshard experiment --run {run} --seed {seed}"),
            bytes_sent: 1000 * seed,
            seconds: 10.0 * seed as f64,
            points: losses
                .iter()
                .enumerate()
                .map(|(i, &val_loss)| Point {
                    round: i as u64 + 1,
                    step: 10 * (i as u64 + 1),
                    tokens: 4096 * (i as u64 + 1),
                    val_loss,
                })
                .collect(),
        }
    }

    #[test]
    fn csv_quotes_fields_and_writes_one_row_per_point() {
        let mut c = curve("C", "DiLoCo, 4 nodes, \"fp32\"", 7, &[5.0, 4.0, 3.0]);
        c.command = "neuroshard experiment --label 'a,b'\n--next".into();
        let a = curve("A", "one worker", 1, &[6.0, 5.5]);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("runs.csv");
        write_csv(&path, &[a, c]).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();

        let mut lines = text.lines();
        assert_eq!(lines.next(), Some(CSV_HEADER));
        // 2 + 3 points, but the C rows' command spans two physical lines.
        assert_eq!(text.lines().count(), 1 + 2 + 3 * 2);
        assert_eq!(text.matches("\nA,").count(), 2);
        assert_eq!(text.matches("\nC,").count(), 3);
        assert!(text.contains(&format!(
            "\nA,one worker,1,1,10,4096,6,{},1000,10.000,neuroshard experiment --run A --seed 1\n",
            6f64.exp()
        )));
        assert!(text.contains(
            "\nC,\"DiLoCo, 4 nodes, \"\"fp32\"\"\",7,3,30,12288,3,20.085536923187668,7000,70.000,\
             \"neuroshard experiment --label 'a,b'\n--next\"\n"
        ));
        assert_eq!(csv_field("plain"), "plain");
        assert_eq!(csv_field("a\"b"), "\"a\"\"b\"");
        assert_eq!(csv_field("cr\r"), "\"cr\r\"");
    }

    #[test]
    fn summary_groups_seeds_and_compares_with_the_references() {
        let curves = vec![
            curve("A", "one worker", 1, &[5.0, 4.0]),
            curve("A", "one worker", 2, &[5.0, 4.2]),
            curve("B", "data-parallel, 4x batch", 1, &[4.0, 3.0]),
            curve("C", "DiLoCo | 4 nodes", 1, &[4.5, 3.3]),
            curve("C", "DiLoCo | 4 nodes", 2, &[4.5, 3.5]),
        ];
        let table = summary_table(&curves, ("A", "B"));
        let rows: Vec<&str> = table.lines().collect();
        assert_eq!(rows.len(), 2 + 3, "{table}");
        assert_eq!(
            rows[0],
            "| run | what | seeds | final val loss | perplexity | Δ vs A (%) | Δ vs B (%) | delta bytes/node | wall s |"
        );
        // A: mean 4.1 over 2 seeds, range 4.0–4.2; exp(4.1) = 60.34; B = 3.0 → (4.1 − 3)/3 = +36.67 %.
        assert_eq!(
            rows[2],
            "| A | one worker | 2 | 4.1000 (4.0000–4.2000) | 60.34 | +0.00 | +36.67 | 1500 | 15.0 |"
        );
        // B: one seed, no range; (3 − 4.1)/4.1 = −26.83 %.
        assert_eq!(
            rows[3],
            "| B | data-parallel, 4x batch | 1 | 3.0000 | 20.09 | -26.83 | +0.00 | 1000 | 10.0 |"
        );
        // C: mean 3.4; (3.4 − 4.1)/4.1 = −17.07 %, (3.4 − 3)/3 = +13.33 %; the pipe is escaped.
        assert_eq!(
            rows[4],
            "| C | DiLoCo \\| 4 nodes | 2 | 3.4000 (3.3000–3.5000) | 29.96 | -17.07 | +13.33 | 1500 | 15.0 |"
        );

        // An absent reference shows "—".
        let without_b = summary_table(&curves[..2], ("A", "B"));
        assert!(
            without_b.lines().nth(2).unwrap().contains("| +0.00 | — |"),
            "{without_b}"
        );
    }

    #[test]
    fn plot_writes_an_svg_naming_every_run() {
        let curves = vec![
            curve("A", "one worker", 1, &[5.0, 4.0, 3.5]),
            curve("A", "one worker", 2, &[5.1, 4.1, 3.6]),
            curve("C", "DiLoCo, 4 nodes", 1, &[5.0, 3.8, 3.2]),
            curve(
                "D-krum",
                "C + Byzantine node, krum",
                1,
                &[5.0, 3.9, f32::NAN],
            ),
            curve("E-int8", "C, int8 deltas <&>", 1, &[5.0, 3.85, 3.25]),
        ];
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("loss.svg");
        plot_svg(&path, &curves, "validation loss").unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        assert!(svg.starts_with("<svg"), "{}", &svg[..svg.len().min(200)]);
        // The contents of the <text> elements.
        let texts: Vec<&str> = svg
            .split("<text")
            .skip(1)
            .filter_map(|t| t.split_once('>')?.1.split_once("</text>"))
            .map(|(text, _)| text.trim())
            .collect();
        for run in ["A", "C", "D-krum", "E-int8"] {
            let entries = texts.iter().filter(|t| t.starts_with(&format!("{run}: ")));
            assert_eq!(entries.count(), 1, "one legend entry for {run}: {texts:?}");
        }
        assert!(texts.contains(&"A: one worker"), "{texts:?}");
        assert!(
            texts.contains(&"E-int8: C, int8 deltas &lt;&amp;&gt;"),
            "{texts:?}"
        );
        assert!(texts.contains(&"tokens") && texts.contains(&"validation loss"));
        // 5 curves + 4 legend samples, one color per run id.
        let strokes: Vec<&str> = svg
            .lines()
            .filter(|l| l.starts_with("<polyline") && l.contains("stroke-width=\"2\""))
            .filter_map(|l| l.split("stroke=\"").nth(1)?.split('"').next())
            .collect();
        assert_eq!(strokes.len(), 5 + 4, "{strokes:?}");
        assert_eq!(
            strokes.iter().collect::<BTreeSet<_>>().len(),
            4,
            "{strokes:?}"
        );

        let err = plot_svg(&path, &[curve("A", "x", 1, &[])], "t").unwrap_err();
        assert!(err.contains("no finite"), "{err}");
    }
}
