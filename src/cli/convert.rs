//! `tagd convert`: the 28x28 images tagd would feed a model, written as
//! PNG files, with no model or runtime needed. Training uses it to see real
//! photos exactly as the daemon will.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;

use crate::app;
use crate::config::Settings;
use crate::preprocess::{self, KNOWN_PREPROCESSING, Recipe};
use crate::watch::NameFilter;

pub fn convert(
    settings: &Settings,
    inputs: &[PathBuf],
    out: &Path,
    preprocessing: &str,
) -> anyhow::Result<ExitCode> {
    let recipe = Recipe::for_id(preprocessing).with_context(|| {
        format!(
            "unknown preprocessing {preprocessing:?}; known: {}",
            KNOWN_PREPROCESSING.join(", ")
        )
    })?;
    let files = photo_files(inputs, &NameFilter::new(&settings.extensions()))?;
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    let limits = app::limits(settings);

    let mut failed = 0;
    for file in &files {
        let result = preprocess::read_file(file, &limits)
            .and_then(|bytes| preprocess::prepare(&bytes, &limits, &recipe));
        match result {
            Ok(prepared) => {
                let stem = file.file_stem().map_or("photo".into(), |s| s.to_string_lossy());
                let target = out.join(format!("{stem}.png"));
                prepared
                    .converted
                    .to_image()
                    .save(&target)
                    .with_context(|| format!("cannot write {}", target.display()))?;
            }
            Err(error) => {
                failed += 1;
                eprintln!("{}: {} ({})", file.display(), error, error.code());
            }
        }
    }
    println!(
        "converted {} of {} photos with {preprocessing} into {}",
        files.len() - failed,
        files.len(),
        out.display()
    );
    Ok(if failed == 0 { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

/// The files named, and the photos directly inside the folders named.
fn photo_files(inputs: &[PathBuf], filter: &NameFilter) -> anyhow::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for input in inputs {
        if input.is_dir() {
            let mut inside: Vec<PathBuf> = std::fs::read_dir(input)
                .with_context(|| format!("cannot list {}", input.display()))?
                .filter_map(Result::ok)
                .map(|entry| entry.path())
                .filter(|path| path.is_file() && filter.accepts(path))
                .collect();
            inside.sort();
            files.extend(inside);
        } else {
            files.push(input.clone());
        }
    }
    Ok(files)
}
