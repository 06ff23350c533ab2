//! `tagd eval` on small labelled folders built from the fixture photos and
//! generated images.

mod common;

use std::path::Path;

use common::*;

/// A labelled folder: four CC0 photos and two generated ones, with one
/// multi-class cell.
fn labelled_folder(dir: &Path) {
    for name in ["shoes.jpg", "t-shirt.jpg", "pants.jpg", "dress.jpg"] {
        std::fs::copy(fixture(&format!("photos/{name}")), dir.join(name)).unwrap();
    }
    std::fs::write(dir.join("generated-a.jpg"), photo_jpeg(300, 400, 1)).unwrap();
    std::fs::write(dir.join("generated-b.jpg"), photo_jpeg(300, 400, 2)).unwrap();
    // CRLF line ends and an extra column, as spreadsheets write them.
    let csv = "file,fmnist_labels,source_label\r\n\
               shoes.jpg,5|7|9,Shoes\r\n\
               t-shirt.jpg,0,T-Shirt\r\n\
               pants.jpg,1,Pants\r\n\
               dress.jpg,3,Dress\r\n\
               generated-a.jpg,Bag,generated\r\n\
               generated-b.jpg,0|1|2|3|4|5|6|7|8|9,anything goes\r\n";
    std::fs::write(dir.join("labels.csv"), csv).unwrap();
}

fn eval_json(dir: &Path) -> serde_json::Value {
    let output = tagd("sqlite://unused.db").arg("eval").arg(dir).arg("--json").output().unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    serde_json::from_slice(&output.stdout).unwrap()
}

#[test]
fn eval_counts_by_the_set_rule() {
    let sandbox = Sandbox::new();
    labelled_folder(&sandbox.inbox);
    let document = eval_json(&sandbox.inbox);
    let report = &document["report"];
    let photos = document["photos"].as_array().unwrap();

    assert_eq!(report["photos"], 6);
    assert_eq!(report["failed"], 0);
    assert_eq!(report["footwear_photos"], 1);
    assert_eq!(report["per_class"][5]["photos"], 1, "shoes count under their first label");
    assert_eq!(report["per_class"][8]["photos"], 1, "a label given by name");

    // The photo whose cell lists every class is right whatever the model says.
    let anything = photos.iter().find(|p| p["file"] == "generated-b.jpg").unwrap();
    assert_eq!(anything["accepted"].as_array().unwrap().len(), 10);

    // `correct` is exactly the photos whose prediction is an accepted class.
    let correct = photos
        .iter()
        .filter(|p| p["accepted"].as_array().unwrap().contains(&p["predicted"]))
        .count();
    assert!(correct >= 1);
    assert_eq!(report["correct"], correct);
    let flagged = photos.iter().filter(|p| p["needs_review"] == true).count();
    assert_eq!(report["flagged"], flagged);
    let confusion_total: u64 = report["confusion"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|row| row.as_array().unwrap())
        .map(|n| n.as_u64().unwrap())
        .sum();
    assert_eq!(confusion_total, 6);
}

#[test]
fn eval_reads_class_subfolders_and_draws_a_sheet_of_the_mistakes() {
    let sandbox = Sandbox::new();
    // The same photo under two classes: at least one of them is a mistake.
    for (folder, photo) in
        [("trouser", "pants.jpg"), ("ankle-boot", "pants.jpg"), ("Dress", "dress.jpg")]
    {
        let dir = sandbox.inbox.join(folder);
        std::fs::create_dir(&dir).unwrap();
        std::fs::copy(fixture(&format!("photos/{photo}")), dir.join(format!("{folder}-{photo}")))
            .unwrap();
    }
    let sheet = sandbox.path().join("mistakes.png");
    let explain = sandbox.path().join("explain");
    let output = tagd("sqlite://unused.db")
        .arg("eval")
        .arg(&sandbox.inbox)
        .arg("--json")
        .arg("--sheet")
        .arg(&sheet)
        .arg("--explain")
        .arg(&explain)
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let document: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(document["report"]["photos"], 3);
    assert_eq!(document["report"]["per_class"][9]["photos"], 1, "ankle-boot names Ankle boot");

    // One picture per mistake, and a sheet holding them.
    let mut mistakes: Vec<String> = document["photos"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| !p["accepted"].as_array().unwrap().contains(&p["predicted"]))
        .map(|p| p["file"].as_str().unwrap().replace(".jpg", ".png"))
        .collect();
    mistakes.sort();
    let mut pictures: Vec<String> = std::fs::read_dir(&explain)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    pictures.sort();
    assert!(!mistakes.is_empty());
    assert_eq!(pictures, mistakes);
    let picture = image::open(&sheet).unwrap();
    assert!(picture.width() >= 240 && picture.height() >= 150);
}

#[test]
fn a_missing_file_and_a_bad_label_row_are_clear_errors() {
    let sandbox = Sandbox::new();
    labelled_folder(&sandbox.inbox);
    std::fs::remove_file(sandbox.inbox.join("pants.jpg")).unwrap();
    let output = tagd("sqlite://unused.db").arg("eval").arg(&sandbox.inbox).output().unwrap();
    assert_eq!(output.status.code(), Some(1));
    let error = String::from_utf8_lossy(&output.stderr);
    assert!(error.contains("labels.csv line 4 names pants.jpg, which does not exist"), "{error}");

    labelled_folder(&sandbox.inbox);
    let csv = std::fs::read_to_string(sandbox.inbox.join("labels.csv")).unwrap();
    std::fs::write(sandbox.inbox.join("labels.csv"), csv.replace("dress.jpg,3,", "dress.jpg,Hat,"))
        .unwrap();
    let output = tagd("sqlite://unused.db").arg("eval").arg(&sandbox.inbox).output().unwrap();
    assert_eq!(output.status.code(), Some(1));
    let error = String::from_utf8_lossy(&output.stderr);
    assert!(error.contains("line 5 (dress.jpg)") && error.contains("\"Hat\""), "{error}");
}

#[test]
fn steps_can_be_turned_off_or_on_and_an_unknown_step_is_named() {
    let sandbox = Sandbox::new();
    labelled_folder(&sandbox.inbox);
    let photos_measured = |flag: &str, step: &str| {
        let output = tagd("sqlite://unused.db")
            .args(["eval", "--json", flag, step])
            .arg(&sandbox.inbox)
            .output()
            .unwrap();
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        let document: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
        document["report"]["photos"].as_u64().unwrap()
    };
    assert_eq!(photos_measured("--without", "mask"), 6);
    assert_eq!(photos_measured("--with", "sharpen"), 6);

    let output =
        tagd("sqlite://unused.db").args(["eval", "--with", "glow"]).arg(&sandbox.inbox).output();
    let output = output.unwrap();
    assert_eq!(output.status.code(), Some(1));
    let error = String::from_utf8_lossy(&output.stderr);
    assert!(
        error.contains("no preprocessing step \"glow\"") && error.contains("garment"),
        "{error}"
    );
}

#[test]
fn phone_photos_are_judged_by_the_scene_rule_and_studio_shots_are_not() {
    let sandbox = Sandbox::new();
    std::fs::copy(fixture("photos/shoes.jpg"), sandbox.inbox.join("shoes.jpg")).unwrap();
    // A dark bag-like shape on an even white backdrop: a studio shot.
    let studio = image::RgbImage::from_fn(300, 300, |x, y| {
        let inside = (60..240).contains(&x) && (90..250).contains(&y);
        if inside { image::Rgb([40, 30, 30]) } else { image::Rgb([255, 255, 255]) }
    });
    std::fs::write(sandbox.inbox.join("studio.jpg"), encode_jpeg(&studio)).unwrap();
    std::fs::write(
        sandbox.inbox.join("labels.csv"),
        "file,fmnist_labels\nshoes.jpg,5|7|9\nstudio.jpg,8\n",
    )
    .unwrap();

    let photo = |document: &serde_json::Value, file: &str| {
        document["photos"].as_array().unwrap().iter().find(|p| p["file"] == file).unwrap().clone()
    };
    let document = eval_json(&sandbox.inbox);
    let (shoes, bag) = (photo(&document, "shoes.jpg"), photo(&document, "studio.jpg"));
    assert_eq!(shoes["scene"], true, "a floor is not a plain backdrop");
    assert_eq!(bag["scene"], false);
    let total: f64 =
        shoes["probabilities"].as_array().unwrap().iter().map(|p| p.as_f64().unwrap()).sum();
    assert!((total - 1.0).abs() < 1e-4, "calibrated probabilities sum to 1, not {total}");

    // A scene rule no prediction can meet flags the phone photo, one every
    // prediction meets flags nothing there; the studio shot keeps its rule.
    for (threshold, flagged) in [("1.0", true), ("0.0", false)] {
        let output = tagd("sqlite://unused.db")
            .env("TAGD__REVIEW__SCENE__MIN_CONFIDENCE", threshold)
            .env("TAGD__REVIEW__SCENE__MIN_MARGIN", threshold)
            .arg("eval")
            .arg(&sandbox.inbox)
            .arg("--json")
            .output()
            .unwrap();
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        let document: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
        let shoes = photo(&document, "shoes.jpg");
        assert_eq!(shoes["needs_review"], flagged, "scene rule {threshold}: {shoes}");
        assert_eq!(photo(&document, "studio.jpg")["review_reason"], bag["review_reason"]);
    }
}
