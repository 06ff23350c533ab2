//! `tagd classify FILE...`: the model's verdict on photos, without a
//! database, using the daemon's own preprocessing.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use serde::Serialize;

use crate::app;
use crate::config::Settings;
use crate::infer::{Classifier, PhotoSigns, ReviewPolicy, decide};
use crate::preprocess::{self, Limits, Prepared, Recipe};
use crate::store::Prediction;

#[derive(Debug, Serialize)]
struct Verdict {
    path: String,
    #[serde(flatten)]
    prediction: Option<Prediction>,
    top3: Vec<(String, f32)>,
    error_code: Option<&'static str>,
    error: Option<String>,
}

pub fn classify(
    settings: &Settings,
    files: &[PathBuf],
    explain: Option<&Path>,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let (classifier, policy) = app::load_classifier(settings)?;
    let limits = app::limits(settings);
    if let Some(dir) = explain {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }

    let mut any_failed = false;
    for file in files {
        let verdict = match prepare(file, &limits, &classifier.recipe()) {
            Ok(prepared) => {
                if let Some(dir) = explain {
                    write_explanation(dir, file, &prepared)?;
                }
                judge(&classifier, &policy, file, &prepared)?
            }
            Err(error) => {
                any_failed = true;
                Verdict {
                    path: file.display().to_string(),
                    prediction: None,
                    top3: Vec::new(),
                    error_code: Some(error.code()),
                    error: Some(error.to_string()),
                }
            }
        };
        print(&verdict, json)?;
    }
    Ok(if any_failed { ExitCode::FAILURE } else { ExitCode::SUCCESS })
}

fn prepare(
    file: &Path,
    limits: &Limits,
    recipe: &Recipe,
) -> Result<Prepared, preprocess::ImageError> {
    let bytes = preprocess::read_file(file, limits)?;
    preprocess::prepare(&bytes, limits, recipe)
}

fn judge(
    classifier: &Classifier,
    policy: &ReviewPolicy,
    file: &Path,
    prepared: &Prepared,
) -> anyhow::Result<Verdict> {
    let manifest = &classifier.model().manifest;
    let tensor = prepared.converted.to_tensor(manifest.input.mean, manifest.input.std);
    let logits = classifier.logits(&tensor)?;
    let signs = PhotoSigns::of(prepared);
    let prediction = decide(&logits[0], classifier.model(), policy, signs);

    let mut ranked: Vec<(String, f32)> =
        manifest.labels.iter().cloned().zip(prediction.probabilities.iter().copied()).collect();
    ranked.sort_by(|a, b| b.1.total_cmp(&a.1));
    ranked.truncate(3);

    Ok(Verdict {
        path: file.display().to_string(),
        prediction: Some(prediction),
        top3: ranked,
        error_code: None,
        error: None,
    })
}

/// Writes the 28x28 image the model saw, named after the photo.
fn write_explanation(dir: &Path, file: &Path, prepared: &Prepared) -> anyhow::Result<()> {
    let stem = file.file_stem().map_or("image".into(), |s| s.to_string_lossy());
    let target = dir.join(format!("{stem}.28x28.png"));
    prepared
        .converted
        .to_image()
        .save(&target)
        .with_context(|| format!("cannot write {}", target.display()))
}

fn print(verdict: &Verdict, json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string(verdict)?);
        return Ok(());
    }
    match (&verdict.prediction, &verdict.error) {
        (Some(prediction), _) => {
            let top3: Vec<String> =
                verdict.top3.iter().map(|(label, p)| format!("{label} {p:.3}")).collect();
            let review = prediction
                .review_reason
                .as_deref()
                .map_or(String::new(), |reason| format!("  [review: {reason}]"));
            println!(
                "{}: {} {:.3}{review}\n    top 3: {}",
                verdict.path,
                prediction.label,
                prediction.confidence,
                top3.join(", ")
            );
        }
        (None, Some(error)) => {
            println!(
                "{}: error {}: {error}",
                verdict.path,
                verdict.error_code.unwrap_or("unknown")
            );
        }
        (None, None) => unreachable!("a verdict has a prediction or an error"),
    }
    Ok(())
}
