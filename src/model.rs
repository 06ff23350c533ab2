//! The model folder and its manifest (`model.toml`).
//!
//! A model carries its contract: labels, input shape and normalisation, the
//! preprocessing it was trained for, a calibration temperature and review
//! thresholds, plus the SHA-256 of its ONNX file. tagd refuses a model whose
//! contract it cannot honour rather than tagging with quietly wrong input.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail, ensure};
use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::preprocess::KNOWN_PREPROCESSING;

/// The manifest's file name inside a model folder.
pub const MANIFEST_FILE: &str = "model.toml";

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub name: String,
    pub version: String,
    pub onnx_file: String,
    pub sha256: String,
    pub preprocessing: String,
    pub labels: Vec<String>,
    pub input: InputContract,
    pub output: OutputContract,
    pub calibration: Calibration,
    pub review: ReviewDefaults,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InputContract {
    pub name: String,
    /// Per image, without the batch dimension: channels, height, width.
    pub shape: [usize; 3],
    pub mean: f32,
    pub std: f32,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutputContract {
    pub name: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Calibration {
    /// Logits are divided by this before the softmax.
    pub temperature: f32,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReviewDefaults {
    pub min_confidence: f32,
    pub min_margin: f32,
    #[serde(default)]
    pub min_confidence_per_class: BTreeMap<String, f32>,
    /// The rule for photos cut out of a scene (not on a plain backdrop),
    /// chosen on such photos; without it they get the rule above.
    #[serde(default)]
    pub scene: Option<ReviewPair>,
}

/// A `min_confidence` and `min_margin` pair.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReviewPair {
    pub min_confidence: f32,
    pub min_margin: f32,
}

/// A model folder whose manifest was read and whose ONNX file matched its
/// recorded SHA-256.
#[derive(Debug, Clone)]
pub struct ModelFolder {
    pub dir: PathBuf,
    pub manifest: Manifest,
    pub onnx_path: PathBuf,
}

impl ModelFolder {
    /// Reads `dir/model.toml`, checks the contract against what this build of
    /// tagd can do, and checks the ONNX file's SHA-256.
    pub fn open(dir: &Path) -> anyhow::Result<ModelFolder> {
        let manifest_path = dir.join(MANIFEST_FILE);
        let text = std::fs::read_to_string(&manifest_path)
            .with_context(|| format!("cannot read model manifest {}", manifest_path.display()))?;
        let manifest: Manifest = toml::from_str(&text)
            .with_context(|| format!("invalid model manifest {}", manifest_path.display()))?;
        manifest.check_contract().with_context(|| {
            format!("model manifest {} cannot be honoured", manifest_path.display())
        })?;

        let onnx_path = dir.join(&manifest.onnx_file);
        let actual = sha256_file(&onnx_path)?;
        ensure!(
            actual.eq_ignore_ascii_case(&manifest.sha256),
            "model file {} has SHA-256 {actual}, but {} says {}: the file was changed or \
             belongs to another model",
            onnx_path.display(),
            manifest_path.display(),
            manifest.sha256
        );

        Ok(ModelFolder { dir: dir.to_path_buf(), manifest, onnx_path })
    }
}

impl Manifest {
    fn check_contract(&self) -> anyhow::Result<()> {
        ensure!(!self.labels.is_empty(), "labels: the list is empty");
        if !KNOWN_PREPROCESSING.contains(&self.preprocessing.as_str()) {
            bail!(
                "preprocessing {:?} is not one this build of tagd implements ({})",
                self.preprocessing,
                KNOWN_PREPROCESSING.join(", ")
            );
        }
        ensure!(
            self.input.shape == [1, 28, 28],
            "input.shape {:?}: this build feeds 1x28x28 grayscale images",
            self.input.shape
        );
        ensure!(self.input.std > 0.0, "input.std must be positive");
        ensure!(
            self.calibration.temperature > 0.0 && self.calibration.temperature.is_finite(),
            "calibration.temperature must be a positive number"
        );
        for (label, threshold) in &self.review.min_confidence_per_class {
            ensure!(
                self.labels.contains(label),
                "review.min_confidence_per_class names {label:?}, which is not one of the labels"
            );
            ensure!(
                (0.0..=1.0).contains(threshold),
                "review threshold for {label:?} is not a probability"
            );
        }
        if let Some(scene) = self.review.scene {
            ensure!(
                (0.0..=1.0).contains(&scene.min_confidence)
                    && (0.0..=1.0).contains(&scene.min_margin),
                "review.scene: min_confidence and min_margin must be probabilities"
            );
        }
        Ok(())
    }

    /// The index of a label name, as given by a person (case-insensitive).
    pub fn label_index(&self, name: &str) -> Option<usize> {
        self.labels.iter().position(|label| label.eq_ignore_ascii_case(name))
    }
}

/// The hex SHA-256 of a file.
pub fn sha256_file(path: &Path) -> anyhow::Result<String> {
    let mut file = std::fs::File::open(path)
        .with_context(|| format!("cannot open model file {}", path.display()))?;
    let mut hasher = Sha256::new();
    std::io::copy(&mut file, &mut hasher)
        .with_context(|| format!("cannot read model file {}", path.display()))?;
    Ok(format!("{:x}", hasher.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest_text(sha: &str, preprocessing: &str) -> String {
        format!(
            r#"
name = "test"
version = "1"
onnx_file = "model.onnx"
sha256 = "{sha}"
preprocessing = "{preprocessing}"
labels = ["a", "b"]
[input]
name = "image"
shape = [1, 28, 28]
mean = 0.5
std = 0.5
[output]
name = "logits"
[calibration]
temperature = 1.5
[review]
min_confidence = 0.5
min_margin = 0.1
"#
        )
    }

    fn folder_with(onnx: &[u8], manifest: &str) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("model.onnx"), onnx).unwrap();
        std::fs::write(dir.path().join(MANIFEST_FILE), manifest).unwrap();
        dir
    }

    #[test]
    fn a_matching_hash_opens() {
        let sha = format!("{:x}", Sha256::digest(b"onnx bytes"));
        let dir = folder_with(b"onnx bytes", &manifest_text(&sha, "fmnist-v1"));
        let model = ModelFolder::open(dir.path()).unwrap();
        assert_eq!(model.manifest.labels, ["a", "b"]);
        assert_eq!(model.manifest.label_index("B"), Some(1));
    }

    #[test]
    fn a_changed_onnx_file_is_refused() {
        let sha = format!("{:x}", Sha256::digest(b"original"));
        let dir = folder_with(b"tampered", &manifest_text(&sha, "fmnist-v1"));
        let error = ModelFolder::open(dir.path()).unwrap_err();
        assert!(format!("{error:#}").contains("SHA-256"), "{error:#}");
    }

    #[test]
    fn an_unknown_preprocessing_is_refused() {
        let sha = format!("{:x}", Sha256::digest(b"x"));
        let dir = folder_with(b"x", &manifest_text(&sha, "imagenet-224"));
        let error = ModelFolder::open(dir.path()).unwrap_err();
        assert!(format!("{error:#}").contains("imagenet-224"), "{error:#}");
    }

    #[test]
    fn an_unknown_manifest_key_is_refused() {
        let sha = format!("{:x}", Sha256::digest(b"x"));
        let text = manifest_text(&sha, "fmnist-v1") + "colour = true\n";
        let dir = folder_with(b"x", &text);
        let error = ModelFolder::open(dir.path()).unwrap_err();
        assert!(format!("{error:#}").contains("colour"), "{error:#}");
    }
}
