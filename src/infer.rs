//! Inference: ONNX Runtime, calibration and the review decision.
//!
//! ONNX Runtime is loaded at run time from a shared library (never
//! downloaded at build time), so the library can be installed and upgraded
//! apart from tagd. A missing or wrong library is an error at start-up that
//! says how to install one, never a panic in a worker.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use anyhow::{Context, anyhow, bail, ensure};
use ort::environment::Environment;
use ort::session::Session;
use ort::session::builder::GraphOptimizationLevel;
use ort::value::TensorRef;

use crate::config::ReviewSettings;
use crate::model::{ModelFolder, ReviewPair};
use crate::preprocess::{INPUT_EDGE, INPUT_PIXELS, Prepared, Recipe};
use crate::store::{Prediction, ReviewRule};

/// The ONNX Runtime release this build is made for.
pub const ONNXRUNTIME_VERSION: &str = "1.31.1";

/// How to get the library, appended to every load error.
const INSTALL_HINT: &str = "install ONNX Runtime 1.31: `make onnxruntime` in the tagd source tree \
     unpacks libonnxruntime.so.1.31.1 from the official onnxruntime Python wheel into .ort/; then \
     set model.onnxruntime_library (or ORT_DYLIB_PATH) to that file";

/// ONNX Runtime allows one environment per process.
static ENVIRONMENT: OnceLock<Environment> = OnceLock::new();

/// Resolves the library path from the setting, then `ORT_DYLIB_PATH`,
/// then the loader's default name.
pub fn library_path(configured: &Path) -> PathBuf {
    if !configured.as_os_str().is_empty() {
        return configured.to_path_buf();
    }
    match std::env::var_os("ORT_DYLIB_PATH") {
        Some(path) if !path.is_empty() => PathBuf::from(path),
        _ => PathBuf::from("libonnxruntime.so"),
    }
}

/// Loads ONNX Runtime once per process and returns its version.
pub fn load_runtime(library: &Path) -> anyhow::Result<&'static Environment> {
    if let Some(environment) = ENVIRONMENT.get() {
        return Ok(environment);
    }

    // dlopen's own message is lost by the loader; say plainly what is missing.
    let is_bare_name = library.components().count() == 1;
    if !is_bare_name && !library.exists() {
        bail!("ONNX Runtime library {} does not exist; {INSTALL_HINT}", library.display());
    }
    let builder = ort::init_from(library).map_err(|error| {
        anyhow!("cannot load ONNX Runtime from {}: {error}; {INSTALL_HINT}", library.display())
    })?;
    let environment = builder.with_name("tagd").with_telemetry(false).build().map_err(|error| {
        anyhow!("cannot start ONNX Runtime from {}: {error}", library.display())
    })?;
    Ok(ENVIRONMENT.get_or_init(|| environment))
}

/// A model ready to classify batches of 28x28 inputs.
pub struct Classifier {
    session: Mutex<Session>,
    model: ModelFolder,
    input_name: String,
    output_name: String,
}

impl Classifier {
    /// Opens an ONNX session for the model, checking that the graph has the
    /// input and output the manifest names.
    pub fn new(
        environment: &Environment,
        model: ModelFolder,
        intra_threads: usize,
    ) -> anyhow::Result<Classifier> {
        let session = open_session(environment, &model.onnx_path, intra_threads)
            .map_err(|error| anyhow!("cannot open model {}: {error}", model.onnx_path.display()))?;

        let manifest = &model.manifest;
        let inputs: Vec<&str> = session.inputs().iter().map(|outlet| outlet.name()).collect();
        let outputs: Vec<&str> = session.outputs().iter().map(|outlet| outlet.name()).collect();
        ensure!(
            inputs.contains(&manifest.input.name.as_str()),
            "model {} has inputs {inputs:?}, but its manifest names {:?}",
            model.onnx_path.display(),
            manifest.input.name
        );
        ensure!(
            outputs.contains(&manifest.output.name.as_str()),
            "model {} has outputs {outputs:?}, but its manifest names {:?}",
            model.onnx_path.display(),
            manifest.output.name
        );

        let classifier = Classifier {
            input_name: manifest.input.name.clone(),
            output_name: manifest.output.name.clone(),
            session: Mutex::new(session),
            model,
        };
        classifier.check_output_width()?;
        Ok(classifier)
    }

    pub fn model(&self) -> &ModelFolder {
        &self.model
    }

    /// The conversion the model was trained for, from its manifest.
    pub fn recipe(&self) -> Recipe {
        Recipe::for_id(&self.model.manifest.preprocessing)
            .expect("the manifest's preprocessing was checked when the model was opened")
    }

    /// One warm-up run on a blank image, which also proves the graph's
    /// output width matches the manifest's labels.
    fn check_output_width(&self) -> anyhow::Result<()> {
        let logits = self.logits(&vec![0.0; INPUT_PIXELS])?;
        let width = logits.first().map_or(0, Vec::len);
        ensure!(
            width == self.model.manifest.labels.len(),
            "model {} gives {} outputs per image, but its manifest lists {} labels",
            self.model.onnx_path.display(),
            width,
            self.model.manifest.labels.len()
        );
        Ok(())
    }

    /// Runs the model on a batch of normalised inputs laid end to end
    /// (`INPUT_PIXELS` values each) and returns the raw logits, one row per
    /// image.
    pub fn logits(&self, batch: &[f32]) -> anyhow::Result<Vec<Vec<f32>>> {
        ensure!(
            !batch.is_empty() && batch.len().is_multiple_of(INPUT_PIXELS),
            "a batch holds whole 28x28 images"
        );
        let count = batch.len() / INPUT_PIXELS;
        let edge = INPUT_EDGE as usize;
        let input = TensorRef::from_array_view(([count, 1, edge, edge], batch))
            .context("cannot wrap the batch as a tensor")?;

        // A poisoned lock only means another batch panicked; the session
        // itself holds no state between runs.
        let mut session = self.session.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let outputs = session
            .run(ort::inputs![self.input_name.as_str() => input])
            .context("inference failed")?;
        let (shape, values) = outputs[self.output_name.as_str()]
            .try_extract_tensor::<f32>()
            .context("the model's output is not a float tensor")?;
        ensure!(
            shape.len() == 2 && shape[0] as usize == count,
            "the model returned shape {shape:?} for {count} images"
        );
        let width = shape[1] as usize;
        Ok(values.chunks(width).map(<[f32]>::to_vec).collect())
    }
}

fn open_session(
    environment: &Environment,
    path: &Path,
    intra_threads: usize,
) -> ort::Result<Session> {
    // Spinning threads would burn CPU while the daemon waits for photos.
    Session::builder(environment)?
        .with_optimization_level(GraphOptimizationLevel::Level3)?
        .with_intra_threads(intra_threads)?
        .with_inter_threads(1)?
        .with_intra_op_spinning(false)?
        .with_inter_op_spinning(false)?
        .commit_from_file(path)
}

/// Calibrated probabilities: softmax of the logits divided by the
/// temperature fitted on the model's validation split.
pub fn calibrated_probabilities(logits: &[f32], temperature: f32) -> Vec<f32> {
    let scaled: Vec<f32> = logits.iter().map(|&l| l / temperature).collect();
    let max = scaled.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let exps: Vec<f32> = scaled.iter().map(|&s| (s - max).exp()).collect();
    let sum: f32 = exps.iter().sum();
    exps.iter().map(|&e| e / sum).collect()
}

/// Review thresholds resolved from the config over the manifest.
#[derive(Debug, Clone)]
pub struct ReviewPolicy {
    pub min_confidence: f32,
    pub min_margin: f32,
    /// Per label index.
    pub min_confidence_per_class: Vec<f32>,
    /// For photos cut out of a scene; the studio rule's global pair when
    /// neither the manifest nor the config sets one.
    pub scene: ReviewPair,
    pub tiny_image_edge_px: u32,
    pub min_object_contrast: f32,
}

impl ReviewPolicy {
    /// The config's values where set, else the manifest's.
    pub fn resolve(model: &ModelFolder, settings: &ReviewSettings) -> anyhow::Result<ReviewPolicy> {
        let manifest = &model.manifest;
        let min_confidence = settings.min_confidence.unwrap_or(manifest.review.min_confidence);
        let min_margin = settings.min_margin.unwrap_or(manifest.review.min_margin);

        let mut per_class = vec![min_confidence; manifest.labels.len()];
        let overrides = manifest
            .review
            .min_confidence_per_class
            .iter()
            .chain(&settings.min_confidence_per_class);
        for (label, threshold) in overrides {
            let index = manifest.label_index(label).with_context(|| {
                format!(
                    "review.min_confidence_per_class names {label:?}, which model {} does not know (labels: {})",
                    manifest.name,
                    manifest.labels.join(", ")
                )
            })?;
            per_class[index] = *threshold;
        }

        let scene_defaults =
            manifest.review.scene.unwrap_or(ReviewPair { min_confidence, min_margin });
        let scene = ReviewPair {
            min_confidence: settings.scene.min_confidence.unwrap_or(scene_defaults.min_confidence),
            min_margin: settings.scene.min_margin.unwrap_or(scene_defaults.min_margin),
        };

        Ok(ReviewPolicy {
            min_confidence,
            min_margin,
            min_confidence_per_class: per_class,
            scene,
            tiny_image_edge_px: settings.tiny_image_edge_px,
            min_object_contrast: settings.min_object_contrast,
        })
    }
}

/// What the preprocessing noticed about a photo, for the review decision.
#[derive(Debug, Clone, Copy)]
pub struct PhotoSigns {
    pub width: u32,
    pub height: u32,
    pub object_found: bool,
    pub contrast: f32,
    /// Cut out of a scene rather than shot on a plain backdrop.
    pub scene: bool,
}

impl PhotoSigns {
    pub fn of(prepared: &Prepared) -> PhotoSigns {
        PhotoSigns {
            width: prepared.width,
            height: prepared.height,
            object_found: prepared.converted.object_found,
            contrast: prepared.converted.contrast,
            scene: prepared.converted.scene,
        }
    }
}

/// Turns logits into a stored prediction: calibrated probabilities, top
/// label, margin, and the review flag with every reason that applies.
pub fn decide(
    logits: &[f32],
    model: &ModelFolder,
    policy: &ReviewPolicy,
    signs: PhotoSigns,
) -> Prediction {
    let manifest = &model.manifest;
    let probabilities = calibrated_probabilities(logits, manifest.calibration.temperature);
    let (top, second) = top_two(&probabilities);
    let confidence = probabilities[top];
    let margin = confidence - second.map_or(0.0, |i| probabilities[i]);

    // Photos cut out of a scene and studio shots are different inputs with
    // different error rates; each has its own thresholds.
    let (rule, min_confidence, min_margin) = if signs.scene {
        (ReviewRule::Scene, policy.scene.min_confidence, policy.scene.min_margin)
    } else {
        (ReviewRule::Studio, policy.min_confidence_per_class[top], policy.min_margin)
    };

    let mut reasons = Vec::new();
    if confidence < min_confidence {
        reasons.push("low_confidence");
    }
    if margin < min_margin {
        reasons.push("small_margin");
    }
    if signs.width.min(signs.height) < policy.tiny_image_edge_px {
        reasons.push("tiny_image");
    }
    if !signs.object_found {
        reasons.push("no_object");
    } else if signs.contrast < policy.min_object_contrast {
        reasons.push("low_contrast");
    }

    Prediction {
        label_index: top as i32,
        label: manifest.labels[top].clone(),
        confidence,
        margin,
        probabilities,
        needs_review: !reasons.is_empty(),
        review_reason: (!reasons.is_empty()).then(|| reasons.join(",")),
        review_rule: rule,
    }
}

/// Indices of the largest and second-largest values.
pub fn top_two(values: &[f32]) -> (usize, Option<usize>) {
    let mut order: Vec<usize> = (0..values.len()).collect();
    order.sort_by(|&a, &b| values[b].total_cmp(&values[a]));
    (order[0], order.get(1).copied())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Calibration, InputContract, Manifest, OutputContract, ReviewDefaults};

    #[test]
    fn temperature_softens_the_distribution() {
        let sharp = calibrated_probabilities(&[2.0, 0.0, 0.0], 1.0);
        let soft = calibrated_probabilities(&[2.0, 0.0, 0.0], 2.0);
        assert!((sharp.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        assert!((soft.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        assert!(soft[0] < sharp[0]);
        assert!((sharp[0] - 0.786_986).abs() < 1e-5);
    }

    #[test]
    fn large_logits_do_not_overflow() {
        let probabilities = calibrated_probabilities(&[1000.0, 999.0], 1.0);
        assert!(probabilities.iter().all(|p| p.is_finite()));
        assert!((probabilities[0] - 0.731_058_6).abs() < 1e-5);
    }

    #[test]
    fn top_two_orders_by_value() {
        assert_eq!(top_two(&[0.1, 0.7, 0.2]), (1, Some(2)));
        assert_eq!(top_two(&[1.0]), (0, None));
    }

    /// A model with three labels and a review rule of 0.6 / 0.2, plus the
    /// given per-class `min_confidence` values.
    fn model_with_review(per_class: &[(&str, f32)]) -> ModelFolder {
        let manifest = Manifest {
            name: "test".into(),
            version: "1".into(),
            onnx_file: "model.onnx".into(),
            sha256: "0".into(),
            preprocessing: "fmnist-v2".into(),
            labels: ["Sandal", "Sneaker", "Bag"].map(String::from).to_vec(),
            input: InputContract { name: "image".into(), shape: [1, 28, 28], mean: 0.5, std: 0.5 },
            output: OutputContract { name: "logits".into() },
            calibration: Calibration { temperature: 1.0 },
            review: ReviewDefaults {
                min_confidence: 0.6,
                min_margin: 0.2,
                min_confidence_per_class: per_class.iter().map(|&(k, v)| (k.into(), v)).collect(),
                scene: None,
            },
        };
        ModelFolder { dir: PathBuf::new(), manifest, onnx_path: PathBuf::new() }
    }

    fn photo(width: u32, height: u32) -> PhotoSigns {
        PhotoSigns { width, height, object_found: true, contrast: 0.8, scene: false }
    }

    fn review_of(model: &ModelFolder, logits: &[f32], signs: PhotoSigns) -> Option<String> {
        let policy = ReviewPolicy::resolve(model, &ReviewSettings::default()).unwrap();
        decide(logits, model, &policy, signs).review_reason
    }

    #[test]
    fn a_clear_answer_on_a_normal_photo_is_not_flagged() {
        let model = model_with_review(&[]);
        assert_eq!(review_of(&model, &[0.0, 5.0, 0.0], photo(800, 600)), None);
    }

    #[test]
    fn every_reason_that_applies_is_recorded() {
        let model = model_with_review(&[]);
        // Sneaker 0.49, Bag 0.49: unsure and split between two classes.
        assert_eq!(
            review_of(&model, &[-2.0, 1.0, 1.0], photo(800, 600)).as_deref(),
            Some("low_confidence,small_margin")
        );

        let blank = PhotoSigns { object_found: false, ..photo(800, 600) };
        assert_eq!(review_of(&model, &[0.0, 5.0, 0.0], blank).as_deref(), Some("no_object"));

        let faint = PhotoSigns { contrast: 0.05, ..photo(800, 600) };
        assert_eq!(review_of(&model, &[0.0, 5.0, 0.0], faint).as_deref(), Some("low_contrast"));
    }

    #[test]
    fn a_photo_below_the_configured_edge_is_tiny() {
        let model = model_with_review(&[]);
        let settings = ReviewSettings { tiny_image_edge_px: 50, ..ReviewSettings::default() };
        let policy = ReviewPolicy::resolve(&model, &settings).unwrap();
        let review = |signs| decide(&[0.0, 5.0, 0.0], &model, &policy, signs).review_reason;

        assert_eq!(review(photo(50, 80)), None);
        assert_eq!(review(photo(49, 80)).as_deref(), Some("tiny_image"));
    }

    #[test]
    fn a_shop_thumbnail_is_not_tiny_by_default_but_a_favicon_is() {
        let model = model_with_review(&[]);
        let policy = ReviewPolicy::resolve(&model, &ReviewSettings::default()).unwrap();
        let review = |signs| decide(&[0.0, 5.0, 0.0], &model, &policy, signs).review_reason;

        assert_eq!(review(photo(60, 80)), None);
        assert_eq!(review(photo(16, 16)).as_deref(), Some("tiny_image"));
    }

    #[test]
    fn a_per_class_threshold_replaces_the_global_one_for_that_class() {
        // Sneaker at 0.87: above the global 0.6, below Sneaker's own 0.9.
        let strict = model_with_review(&[("Sneaker", 0.9)]);
        let logits = [0.0, 2.6, 0.0];
        assert_eq!(review_of(&strict, &logits, photo(800, 600)).as_deref(), Some("low_confidence"));
        assert_eq!(review_of(&model_with_review(&[]), &logits, photo(800, 600)), None);
    }

    #[test]
    fn a_photo_cut_out_of_a_scene_gets_the_scene_rule() {
        // Sneaker 0.78, Sandal and Bag 0.11: sure enough for a studio shot
        // (0.6 / 0.2), not for the stricter scene rule (0.8 / 0.2).
        let mut model = model_with_review(&[("Sneaker", 0.5)]);
        model.manifest.review.scene = Some(ReviewPair { min_confidence: 0.8, min_margin: 0.2 });
        let policy = ReviewPolicy::resolve(&model, &ReviewSettings::default()).unwrap();
        let logits = [0.0, 1.95, 0.0];
        let review = |signs| decide(&logits, &model, &policy, signs).review_reason;

        assert_eq!(review(photo(800, 600)), None, "studio shot");
        let judged_by = |signs| decide(&logits, &model, &policy, signs).review_rule;
        assert_eq!(judged_by(photo(800, 600)), ReviewRule::Studio);
        assert_eq!(judged_by(PhotoSigns { scene: true, ..photo(800, 600) }), ReviewRule::Scene);
        let scene = PhotoSigns { scene: true, ..photo(800, 600) };
        assert_eq!(
            review(scene).as_deref(),
            Some("low_confidence"),
            "per-class values are studio-only"
        );

        // The config overrides the manifest's scene rule.
        let mut settings = ReviewSettings::default();
        settings.scene.min_confidence = Some(0.7);
        let relaxed = ReviewPolicy::resolve(&model, &settings).unwrap();
        assert_eq!(decide(&logits, &model, &relaxed, scene).review_reason, None);
    }

    #[test]
    fn without_a_scene_rule_scene_photos_get_the_global_pair() {
        let model = model_with_review(&[]);
        let policy = ReviewPolicy::resolve(&model, &ReviewSettings::default()).unwrap();
        assert_eq!(policy.scene, ReviewPair { min_confidence: 0.6, min_margin: 0.2 });
    }

    #[test]
    fn a_missing_library_says_how_to_install_one() {
        let error = load_runtime(Path::new("/nonexistent/libonnxruntime.so.1.31.1")).unwrap_err();
        let message = format!("{error:#}");
        assert!(message.contains("does not exist"), "{message}");
        assert!(message.contains("make onnxruntime"), "{message}");
    }
}
