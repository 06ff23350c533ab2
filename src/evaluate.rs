//! Measuring the model on labelled real photos, with the daemon's own
//! preprocessing and review rules.
//!
//! Labels come from `labels.csv` (columns `file` and `fmnist_labels`, where
//! a cell may list several acceptable classes joined by `|`) or, when there
//! is no CSV, from subfolders named after classes. A prediction is right
//! when it is any of the acceptable classes; per-class figures and the
//! confusion table use the first one listed.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail, ensure};
use serde::Serialize;

use crate::infer::{Classifier, PhotoSigns, ReviewPolicy, decide};
use crate::preprocess::{self, Converted, Limits, Recipe};

/// Footwear classes in Fashion-MNIST: Sandal, Sneaker, Ankle boot.
const FOOTWEAR: [usize; 3] = [5, 7, 9];
/// Bag.
const BAG: usize = 8;

/// A photo and the classes that count as right for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabelledPhoto {
    pub path: PathBuf,
    /// Class indices, first listed first.
    pub accepted: Vec<usize>,
}

/// Reads the labels of a folder: `labels.csv` if present, else subfolders
/// named after classes.
pub fn read_labels(dir: &Path, labels: &[String]) -> anyhow::Result<Vec<LabelledPhoto>> {
    ensure!(dir.is_dir(), "{} is not a folder", dir.display());
    let csv = dir.join("labels.csv");
    let photos =
        if csv.exists() { read_csv(dir, &csv, labels)? } else { read_subfolders(dir, labels)? };
    ensure!(!photos.is_empty(), "{} holds no labelled photos", dir.display());
    Ok(photos)
}

fn read_csv(dir: &Path, csv: &Path, labels: &[String]) -> anyhow::Result<Vec<LabelledPhoto>> {
    let text =
        std::fs::read_to_string(csv).with_context(|| format!("cannot read {}", csv.display()))?;
    let mut lines = text.lines().enumerate();
    let (_, header) = lines.next().with_context(|| format!("{} is empty", csv.display()))?;
    let columns: Vec<&str> = header.trim_end_matches('\r').split(',').map(str::trim).collect();
    let column = |name: &str| {
        columns.iter().position(|c| *c == name).with_context(|| {
            format!(
                "{}: the header has no `{name}` column (it has: {})",
                csv.display(),
                columns.join(", ")
            )
        })
    };
    let (file_column, label_column) = (column("file")?, column("fmnist_labels")?);

    let mut photos = Vec::new();
    for (index, line) in lines {
        let line = line.trim_end_matches('\r');
        if line.trim().is_empty() {
            continue;
        }
        let row = index + 1;
        let cells: Vec<&str> = line.split(',').map(str::trim).collect();
        let cell = |at: usize| {
            cells.get(at).copied().filter(|c| !c.is_empty()).with_context(|| {
                format!(
                    "{} line {row}: expected {} columns, found {}",
                    csv.display(),
                    columns.len(),
                    cells.len()
                )
            })
        };
        let file = cell(file_column)?;
        let accepted = parse_label_cell(cell(label_column)?, labels)
            .with_context(|| format!("{} line {row} ({file})", csv.display()))?;
        let path = dir.join(file);
        ensure!(path.is_file(), "{} line {row} names {file}, which does not exist", csv.display());
        photos.push(LabelledPhoto { path, accepted });
    }
    Ok(photos)
}

/// `5|7|9` → `[5, 7, 9]`; each part is a class index or a label name.
pub fn parse_label_cell(cell: &str, labels: &[String]) -> anyhow::Result<Vec<usize>> {
    let mut accepted = Vec::new();
    for part in cell.split('|').map(str::trim) {
        let index = match part.parse::<usize>() {
            Ok(index) if index < labels.len() => index,
            Ok(index) => {
                bail!("class {index} is out of range (the model has {} classes)", labels.len())
            }
            Err(_) => class_by_name(part, labels)
                .with_context(|| format!("{part:?} is neither a class index nor a label"))?,
        };
        if !accepted.contains(&index) {
            accepted.push(index);
        }
    }
    Ok(accepted)
}

/// Matches `Ankle boot`, `ankle-boot`, `ankle_boot`, `T-shirt/top`, `t-shirt-top`.
fn class_by_name(name: &str, labels: &[String]) -> Option<usize> {
    let simplify = |text: &str| -> String {
        text.chars().filter(char::is_ascii_alphanumeric).collect::<String>().to_ascii_lowercase()
    };
    let wanted = simplify(name);
    labels.iter().position(|label| simplify(label) == wanted)
}

fn read_subfolders(dir: &Path, labels: &[String]) -> anyhow::Result<Vec<LabelledPhoto>> {
    let mut photos = Vec::new();
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .with_context(|| format!("cannot list {}", dir.display()))?
        .collect::<Result<_, _>>()?;
    entries.sort_by_key(|entry| entry.file_name());
    for entry in entries {
        if !entry.file_type()?.is_dir() {
            continue;
        }
        let name = entry.file_name().to_string_lossy().into_owned();
        let accepted = parse_label_cell(&name, labels).with_context(|| {
            format!("subfolder {name:?} of {} is not named after a class", dir.display())
        })?;
        let mut files: Vec<PathBuf> = std::fs::read_dir(entry.path())?
            .filter_map(Result::ok)
            .map(|file| file.path())
            .filter(|path| path.is_file() && !is_hidden(path))
            .collect();
        files.sort();
        photos.extend(
            files.into_iter().map(|path| LabelledPhoto { path, accepted: accepted.clone() }),
        );
    }
    Ok(photos)
}

fn is_hidden(path: &Path) -> bool {
    path.file_name().is_some_and(|name| name.to_string_lossy().starts_with('.'))
}

/// What happened to one photo.
#[derive(Debug, Clone, Serialize)]
pub struct PhotoResult {
    pub file: String,
    pub accepted: Vec<usize>,
    pub predicted: Option<usize>,
    pub confidence: Option<f32>,
    /// Calibrated, one per label: what a review rule is chosen from.
    pub probabilities: Option<Vec<f32>>,
    /// Cut out of a scene rather than shot on a plain backdrop: which
    /// review rule applied.
    pub scene: Option<bool>,
    pub needs_review: bool,
    pub review_reason: Option<String>,
    pub error: Option<String>,
    #[serde(skip)]
    pub input: Option<Converted>,
}

impl PhotoResult {
    pub fn is_correct(&self) -> bool {
        self.predicted.is_some_and(|p| self.accepted.contains(&p))
    }
}

/// Classifies every photo, in batches, with `workers` threads converting.
pub fn classify_all(
    photos: &[LabelledPhoto],
    classifier: &Classifier,
    policy: &ReviewPolicy,
    limits: &Limits,
    recipe: &Recipe,
    workers: usize,
    mut progress: impl FnMut(usize),
) -> anyhow::Result<Vec<PhotoResult>> {
    let manifest = &classifier.model().manifest;
    let mut results = Vec::with_capacity(photos.len());
    for chunk in photos.chunks(64) {
        let prepared = prepare_parallel(chunk, limits, recipe, workers);
        let ready: Vec<usize> = (0..chunk.len()).filter(|&i| prepared[i].is_ok()).collect();
        let tensor: Vec<f32> = ready
            .iter()
            .flat_map(|&i| {
                prepared[i]
                    .as_ref()
                    .unwrap()
                    .converted
                    .to_tensor(manifest.input.mean, manifest.input.std)
            })
            .collect();
        let logits = if tensor.is_empty() { Vec::new() } else { classifier.logits(&tensor)? };
        let mut logits =
            ready.iter().copied().zip(logits).collect::<std::collections::HashMap<_, _>>();

        for (i, (photo, outcome)) in chunk.iter().zip(prepared).enumerate() {
            let file = photo
                .path
                .file_name()
                .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
            let result = match outcome {
                Ok(prepared) => {
                    let signs = PhotoSigns::of(&prepared);
                    let prediction = decide(
                        &logits.remove(&i).expect("logits for each ready photo"),
                        classifier.model(),
                        policy,
                        signs,
                    );
                    PhotoResult {
                        file,
                        accepted: photo.accepted.clone(),
                        predicted: Some(prediction.label_index as usize),
                        confidence: Some(prediction.confidence),
                        probabilities: Some(prediction.probabilities),
                        scene: Some(signs.scene),
                        needs_review: prediction.needs_review,
                        review_reason: prediction.review_reason,
                        error: None,
                        input: Some(prepared.converted),
                    }
                }
                Err(error) => PhotoResult {
                    file,
                    accepted: photo.accepted.clone(),
                    predicted: None,
                    confidence: None,
                    probabilities: None,
                    scene: None,
                    needs_review: true,
                    review_reason: None,
                    error: Some(format!("{}: {error}", error.code())),
                    input: None,
                },
            };
            results.push(result);
        }
        progress(results.len());
    }
    Ok(results)
}

fn prepare_parallel(
    chunk: &[LabelledPhoto],
    limits: &Limits,
    recipe: &Recipe,
    workers: usize,
) -> Vec<Result<preprocess::Prepared, preprocess::ImageError>> {
    let per_thread = chunk.len().div_ceil(workers.max(1)).max(1);
    std::thread::scope(|scope| {
        let handles: Vec<_> = chunk
            .chunks(per_thread)
            .map(|part| {
                scope.spawn(move || {
                    part.iter()
                        .map(|photo| {
                            let bytes = preprocess::read_file(&photo.path, limits)?;
                            preprocess::prepare(&bytes, limits, recipe)
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|handle| handle.join().expect("a conversion thread panicked"))
            .collect()
    })
}

/// Accuracy of one class, by the first listed label.
#[derive(Debug, Clone, Serialize)]
pub struct ClassRow {
    pub label: String,
    pub photos: usize,
    pub correct: usize,
    pub accuracy: Option<f64>,
}

/// The figures `tagd eval` prints.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub photos: usize,
    pub correct: usize,
    pub accuracy: f64,
    pub failed: usize,
    pub per_class: Vec<ClassRow>,
    /// `confusion[true][predicted]`, by the first listed label; failed
    /// photos are left out.
    pub confusion: Vec<Vec<usize>>,
    pub footwear_photos: usize,
    pub footwear_called_bag: usize,
    pub footwear_called_bag_rate: Option<f64>,
    pub flagged: usize,
    pub flagged_share: f64,
    pub unflagged_correct: usize,
    pub unflagged_accuracy: Option<f64>,
}

fn ratio(part: usize, whole: usize) -> Option<f64> {
    (whole > 0).then(|| part as f64 / whole as f64)
}

pub fn report(results: &[PhotoResult], labels: &[String]) -> Report {
    let classes = labels.len();
    let mut per_class: Vec<ClassRow> = labels
        .iter()
        .map(|label| ClassRow { label: label.clone(), photos: 0, correct: 0, accuracy: None })
        .collect();
    let mut confusion = vec![vec![0; classes]; classes];
    let footwear: HashSet<usize> = FOOTWEAR.into_iter().collect();
    let (mut footwear_photos, mut footwear_called_bag) = (0, 0);

    for result in results {
        let first = result.accepted[0];
        per_class[first].photos += 1;
        if result.is_correct() {
            per_class[first].correct += 1;
        }
        if let Some(predicted) = result.predicted {
            confusion[first][predicted] += 1;
        }
        if result.accepted.iter().all(|class| footwear.contains(class)) {
            footwear_photos += 1;
            if result.predicted == Some(BAG) {
                footwear_called_bag += 1;
            }
        }
    }
    for row in &mut per_class {
        row.accuracy = ratio(row.correct, row.photos);
    }

    let correct = results.iter().filter(|r| r.is_correct()).count();
    let flagged = results.iter().filter(|r| r.needs_review).count();
    let unflagged: Vec<_> = results.iter().filter(|r| !r.needs_review).collect();
    let unflagged_correct = unflagged.iter().filter(|r| r.is_correct()).count();
    Report {
        photos: results.len(),
        correct,
        accuracy: ratio(correct, results.len()).unwrap_or(0.0),
        failed: results.iter().filter(|r| r.error.is_some()).count(),
        per_class,
        confusion,
        footwear_photos,
        footwear_called_bag,
        footwear_called_bag_rate: ratio(footwear_called_bag, footwear_photos),
        flagged,
        flagged_share: ratio(flagged, results.len()).unwrap_or(0.0),
        unflagged_correct,
        unflagged_accuracy: ratio(unflagged_correct, unflagged.len()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels() -> Vec<String> {
        [
            "T-shirt/top",
            "Trouser",
            "Pullover",
            "Dress",
            "Coat",
            "Sandal",
            "Shirt",
            "Sneaker",
            "Bag",
            "Ankle boot",
        ]
        .map(String::from)
        .to_vec()
    }

    #[test]
    fn a_cell_may_list_several_classes_by_index_or_name() {
        assert_eq!(parse_label_cell("5|7|9", &labels()).unwrap(), [5, 7, 9]);
        assert_eq!(parse_label_cell("ankle-boot", &labels()).unwrap(), [9]);
        assert_eq!(parse_label_cell("t-shirt-top|Shirt", &labels()).unwrap(), [0, 6]);
        assert!(
            parse_label_cell("12", &labels()).unwrap_err().to_string().contains("out of range")
        );
        assert!(parse_label_cell("Hat", &labels()).is_err());
    }

    fn result(accepted: &[usize], predicted: usize, needs_review: bool) -> PhotoResult {
        PhotoResult {
            file: "x.jpg".into(),
            accepted: accepted.to_vec(),
            predicted: Some(predicted),
            confidence: Some(0.5),
            probabilities: None,
            scene: None,
            needs_review,
            review_reason: None,
            error: None,
            input: None,
        }
    }

    #[test]
    fn the_report_counts_by_the_set_rule() {
        let results = [
            result(&[5, 7, 9], 7, false), // footwear, right
            result(&[5, 7, 9], 8, true),  // footwear called Bag
            result(&[0, 2], 2, false),    // second listed class is right too
            result(&[1], 3, true),        // wrong
        ];
        let report = report(&results, &labels());
        assert_eq!((report.photos, report.correct), (4, 2));
        assert_eq!((report.footwear_photos, report.footwear_called_bag), (2, 1));
        assert_eq!(report.flagged, 2);
        assert_eq!(report.unflagged_accuracy, Some(1.0));
        assert_eq!(report.per_class[5].photos, 2);
        assert_eq!(report.per_class[0].accuracy, Some(1.0));
        assert_eq!(report.confusion[1][3], 1);
    }
}
