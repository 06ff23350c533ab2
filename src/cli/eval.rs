//! `tagd eval DIR`: accuracy on labelled photos, with the daemon's own
//! preprocessing, model and review rules.

use std::io::IsTerminal;
use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};

use crate::app;
use crate::config::Settings;
use crate::evaluate::{self, LabelledPhoto, PhotoResult, Report};
use crate::preprocess::{self, Limits, Recipe};
use crate::sheet::{self, Tile};

/// What to write besides the report.
pub struct Outputs<'a> {
    pub json: bool,
    pub explain: Option<&'a Path>,
    pub sheet: Option<&'a Path>,
    pub progress: bool,
    /// A preprocessing step to turn off, for ablation.
    pub without: Option<&'a str>,
    /// A preprocessing step to turn on that the model's recipe leaves out.
    pub with: Option<&'a str>,
}

fn unknown_step(step: &str) -> String {
    format!("no preprocessing step {step:?}; the steps are {}", Recipe::STEPS.join(", "))
}

pub fn eval(settings: &Settings, dir: &Path, outputs: Outputs) -> anyhow::Result<ExitCode> {
    let (classifier, policy) = app::load_classifier(settings)?;
    let labels = classifier.model().manifest.labels.clone();
    let photos = evaluate::read_labels(dir, &labels)?;
    let limits = app::limits(settings);
    let recipe = match (outputs.without, outputs.with) {
        (Some(step), _) => classifier.recipe().without(step).with_context(|| unknown_step(step))?,
        (None, Some(step)) => classifier.recipe().with(step).with_context(|| unknown_step(step))?,
        (None, None) => classifier.recipe(),
    };

    let bar = progress_bar(outputs.progress && std::io::stderr().is_terminal(), photos.len());
    let results = evaluate::classify_all(
        &photos,
        &classifier,
        &policy,
        &limits,
        &recipe,
        settings.workers(),
        |done| bar.set_position(done as u64),
    )?;
    bar.finish_and_clear();
    let report = evaluate::report(&results, &labels);

    if outputs.json {
        let document = serde_json::json!({ "folder": dir.display().to_string(), "report": report, "photos": results });
        println!("{}", serde_json::to_string_pretty(&document)?);
    } else {
        print_report(&report, &labels, dir);
    }

    let mistakes: Vec<(&LabelledPhoto, &PhotoResult)> =
        photos.iter().zip(&results).filter(|(_, result)| !result.is_correct()).collect();
    if let Some(explain) = outputs.explain {
        write_explanations(explain, &mistakes, &labels, &limits)?;
    }
    if let Some(sheet) = outputs.sheet {
        write_sheet(sheet, dir, &report, &mistakes, &labels, &limits)?;
    }
    Ok(ExitCode::SUCCESS)
}

fn progress_bar(visible: bool, length: usize) -> ProgressBar {
    if !visible {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(length as u64);
    bar.set_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} photos, eta {eta}")
            .expect("valid template"),
    );
    bar
}

fn percent(value: Option<f64>) -> String {
    value.map_or("-".to_string(), |v| format!("{:.1}%", v * 100.0))
}

fn print_report(report: &Report, labels: &[String], dir: &Path) {
    println!("{}: {} photos", dir.display(), report.photos);
    println!(
        "accuracy: {} ({} of {}), {} could not be read",
        percent(Some(report.accuracy)),
        report.correct,
        report.photos,
        report.failed
    );
    println!(
        "footwear called Bag: {} ({} of {})",
        percent(report.footwear_called_bag_rate),
        report.footwear_called_bag,
        report.footwear_photos
    );
    println!(
        "review: {} flagged ({}); accuracy on the rest {} ({} of {})",
        report.flagged,
        percent(Some(report.flagged_share)),
        percent(report.unflagged_accuracy),
        report.unflagged_correct,
        report.photos - report.flagged
    );

    println!("\n{:<12} {:>6} {:>6} {:>9}", "class", "photos", "right", "accuracy");
    for row in report.per_class.iter().filter(|row| row.photos > 0) {
        println!(
            "{:<12} {:>6} {:>6} {:>9}",
            row.label,
            row.photos,
            row.correct,
            percent(row.accuracy)
        );
    }

    println!("\nconfusion (rows: first listed label; columns: prediction)");
    let short: Vec<String> = labels.iter().map(|label| label.chars().take(5).collect()).collect();
    print!("{:<12}", "");
    for name in &short {
        print!("{name:>6}");
    }
    println!();
    for (label, row) in labels.iter().zip(&report.confusion) {
        if row.iter().sum::<usize>() == 0 {
            continue;
        }
        print!("{label:<12}");
        for count in row {
            print!("{count:>6}");
        }
        println!();
    }
}

/// The lines under a tile: file, the model's answer, the right one.
fn tile_lines(photo: &LabelledPhoto, result: &PhotoResult, labels: &[String]) -> [String; 3] {
    let model = match (result.predicted, result.confidence, &result.error) {
        (Some(p), Some(c), _) => {
            let flag = if result.needs_review { " (flagged)" } else { "" };
            format!("model: {} {c:.2}{flag}", labels[p])
        }
        (_, _, Some(error)) => format!("error: {error}"),
        _ => "no prediction".to_string(),
    };
    let right: Vec<&str> = photo.accepted.iter().map(|&i| labels[i].as_str()).collect();
    [result.file.clone(), model, format!("right: {}", right.join("|"))]
}

fn render_tile(
    photo: &LabelledPhoto,
    result: &PhotoResult,
    labels: &[String],
    limits: &Limits,
) -> Option<image::RgbImage> {
    let input = result.input.as_ref()?;
    let bytes = preprocess::read_file(&photo.path, limits).ok()?;
    let decoded = preprocess::decode::decode(&bytes, limits).ok()?;
    Some(sheet::tile(&Tile {
        photo: &decoded.rgb,
        input: &input.to_image(),
        lines: tile_lines(photo, result, labels),
        correct: result.is_correct(),
    }))
}

fn write_explanations(
    dir: &Path,
    mistakes: &[(&LabelledPhoto, &PhotoResult)],
    labels: &[String],
    limits: &Limits,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    for (photo, result) in mistakes {
        let Some(tile) = render_tile(photo, result, labels, limits) else { continue };
        let stem = photo.path.file_stem().map_or("photo".into(), |s| s.to_string_lossy());
        let target = dir.join(format!("{stem}.png"));
        tile.save(&target).with_context(|| format!("cannot write {}", target.display()))?;
    }
    Ok(())
}

/// At most this many mistakes on one sheet, to keep it viewable.
const SHEET_LIMIT: usize = 100;

fn write_sheet(
    target: &Path,
    dir: &Path,
    report: &Report,
    mistakes: &[(&LabelledPhoto, &PhotoResult)],
    labels: &[String],
    limits: &Limits,
) -> anyhow::Result<()> {
    let tiles: Vec<_> = mistakes
        .iter()
        .take(SHEET_LIMIT)
        .filter_map(|(photo, result)| render_tile(photo, result, labels, limits))
        .collect();
    let title = format!(
        "{}: {} of {} right ({:.1}%); {} mistakes{}",
        dir.display(),
        report.correct,
        report.photos,
        report.accuracy * 100.0,
        mistakes.len(),
        if mistakes.len() > SHEET_LIMIT {
            format!(", first {SHEET_LIMIT} shown")
        } else {
            String::new()
        }
    );
    sheet::contact_sheet(&title, &tiles)
        .save(target)
        .with_context(|| format!("cannot write {}", target.display()))
}
