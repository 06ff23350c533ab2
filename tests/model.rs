//! The shipped model, loaded through tagd's own code, gives the Fashion-MNIST
//! fixture images the labels and probabilities its model card records.

mod common;

use tagd::config::ReviewSettings;
use tagd::infer::{self, Classifier, PhotoSigns, ReviewPolicy};
use tagd::model::ModelFolder;
use tagd::preprocess::fmnist::normalise;

use common::*;

#[test]
fn the_shipped_model_agrees_with_its_fixtures() {
    let expected: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("fmnist/expected.json")).unwrap())
            .unwrap();
    let model =
        ModelFolder::open(&repo().join("models/fashion-mnist")).expect("the shipped model opens");
    assert_eq!(
        model.manifest.sha256, expected["model_sha256"],
        "the fixtures were written by the model that ships"
    );

    let environment = infer::load_runtime(&onnxruntime()).unwrap();
    let policy = ReviewPolicy::resolve(&model, &ReviewSettings::default()).unwrap();
    let (mean, std) = (model.manifest.input.mean, model.manifest.input.std);
    let classifier = Classifier::new(environment, model, 1).unwrap();

    let images = expected["images"].as_array().unwrap();
    assert!(images.len() >= 10);
    for image in images {
        let file = image["file"].as_str().unwrap();
        let pixels = image::open(fixture(&format!("fmnist/{file}"))).unwrap().to_luma8();
        assert_eq!(pixels.dimensions(), (28, 28));
        let logits = classifier.logits(&normalise(pixels.as_raw(), mean, std)).unwrap();

        // Fashion-MNIST images are already converted: the photo signs are neutral.
        let signs = PhotoSigns {
            width: 28 * 10,
            height: 28 * 10,
            object_found: true,
            contrast: 1.0,
            scene: false,
        };
        let prediction = infer::decide(&logits[0], classifier.model(), &policy, signs);
        assert_eq!(
            i64::from(prediction.label_index),
            image["predicted"].as_i64().unwrap(),
            "{file}"
        );
        assert_eq!(prediction.label, image["predicted_name"].as_str().unwrap(), "{file}");
        for (ours, theirs) in
            prediction.probabilities.iter().zip(image["probabilities"].as_array().unwrap())
        {
            assert!(
                (f64::from(*ours) - theirs.as_f64().unwrap()).abs() < 1e-4,
                "{file}: {ours} vs {theirs}"
            );
        }
    }
}
