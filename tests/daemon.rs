//! End-to-end tests of `tagd run`: the real binary on a temporary folder,
//! checked through the catalogue with plain SQL.

mod common;

use std::time::Duration;

use common::*;

const TIMEOUT: Duration = Duration::from_secs(60);

fn fixture_bytes(name: &str) -> Vec<u8> {
    std::fs::read(fixture(&format!("photos/{name}"))).unwrap()
}

#[tokio::test]
async fn dropped_photos_are_tagged_with_a_calibrated_confidence() {
    let sandbox = Sandbox::new();
    dropped_photos(&sandbox, TestDb::sqlite(sandbox.path())).await;
}

#[tokio::test]
async fn dropped_photos_are_tagged_with_a_calibrated_confidence_on_postgres() {
    let Some(db) = TestDb::postgres().await else {
        return;
    };
    dropped_photos(&Sandbox::new(), db).await;
}

async fn dropped_photos(sandbox: &Sandbox, db: TestDb) {
    let _daemon = Daemon::start(sandbox, db.url());
    for name in ["shoes.jpg", "t-shirt.jpg", "pants.jpg", "dress.jpg"] {
        copy_in(&sandbox.inbox, name, &fixture_bytes(name));
    }

    let pool = open_when_ready(sandbox, &db).await;
    let images = wait_settled(sandbox, &pool, 4, TIMEOUT).await;
    assert!(images.iter().all(|image| image.status == "tagged"), "{images:?}");

    for (path, label, confidence) in pool.catalogue().await {
        let label = label.expect("a label");
        assert!(LABELS.contains(&label.as_str()), "{path}: {label}");
        let confidence = confidence.expect("a confidence");
        assert!((0.1..=1.0).contains(&confidence), "{path}: {confidence}");
    }

    // Every prediction names the model's hash and the preprocessing, and its
    // probabilities sum to one.
    let manifest = std::fs::read_to_string(model_dir().join("model.toml")).unwrap();
    let value = |key: &str| {
        let prefix = format!("{key} = ");
        manifest
            .lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .unwrap()
            .trim_matches('"')
            .to_string()
    };
    let (sha, preprocessing) = (value("sha256"), value("preprocessing"));
    let matching = pool
        .count(&format!(
            "SELECT count(*) FROM predictions p JOIN models m ON m.id = p.model_id \
             WHERE m.sha256 = '{sha}' AND p.preprocessing = '{preprocessing}'"
        ))
        .await;
    assert_eq!(matching, 4);
    for text in pool.strings("SELECT CAST(probabilities AS TEXT) FROM predictions").await {
        let probabilities: Vec<f64> = serde_json::from_str(&text).unwrap();
        assert_eq!(probabilities.len(), 10);
        assert!((probabilities.iter().sum::<f64>() - 1.0).abs() < 1e-4, "{text}");
    }

    // Phone photos on floors and beds are judged by the model's scene rule.
    let scene = pool.count("SELECT count(*) FROM predictions WHERE review_rule = 'scene'").await;
    assert_eq!(scene, 4);
}

#[tokio::test]
async fn a_file_written_slowly_is_tagged_once_and_complete() {
    let sandbox = Sandbox::new();
    let db = TestDb::sqlite(sandbox.path());
    let _daemon = Daemon::start_with(&sandbox, db.url(), &[("TAGD__WATCH__SETTLE_MS", "400")]);
    let bytes = fixture_bytes("shoes.jpg");

    // One open handle, four chunks, pauses shorter than the settle window.
    {
        use std::io::Write;
        let mut file = std::fs::File::create(sandbox.inbox.join("slow.jpg")).unwrap();
        for chunk in bytes.chunks(bytes.len() / 4 + 1) {
            file.write_all(chunk).unwrap();
            file.flush().unwrap();
            std::thread::sleep(Duration::from_millis(150));
        }
    }

    tokio::time::sleep(Duration::from_millis(300)).await;
    let pool = open_when_ready(&sandbox, &db).await;
    let images = wait_settled(&sandbox, &pool, 1, TIMEOUT).await;
    assert_eq!(images[0].status, "tagged", "{images:?}");
    assert_eq!(pool.count("SELECT count(*) FROM predictions").await, 1, "tagged exactly once");
    assert_eq!(
        pool.count("SELECT size_bytes FROM images").await,
        bytes.len() as i64,
        "tagged when complete"
    );
}

#[tokio::test]
async fn files_added_while_stopped_are_tagged_at_start() {
    let sandbox = Sandbox::new();
    let db = TestDb::sqlite(sandbox.path());
    std::fs::create_dir(sandbox.inbox.join("spring")).unwrap();
    copy_in(&sandbox.inbox, "a.jpg", &photo_jpeg(300, 400, 1));
    copy_in(&sandbox.inbox.join("spring"), "b.jpg", &photo_jpeg(300, 400, 2));

    let _daemon = Daemon::start(&sandbox, db.url());
    let pool = open_when_ready(&sandbox, &db).await;
    let images = wait_settled(&sandbox, &pool, 2, TIMEOUT).await;
    assert!(images.iter().all(|image| image.status == "tagged"), "{images:?}");
    assert!(images[1].path.ends_with("spring/b.jpg"));
}

#[tokio::test]
async fn a_new_subfolder_and_a_moved_in_file_are_seen() {
    let sandbox = Sandbox::new();
    let db = TestDb::sqlite(sandbox.path());
    let _daemon = Daemon::start(&sandbox, db.url());
    let pool = open_when_ready(&sandbox, &db).await;

    // A whole folder moved in makes one event for the folder and none for
    // the files already inside it.
    let outside = sandbox.path().join("outside");
    std::fs::create_dir_all(outside.join("deep")).unwrap();
    copy_in(&outside.join("deep"), "c.jpg", &photo_jpeg(200, 300, 3));
    copy_in(
        &outside,
        "d.png",
        &encode_png(&image::DynamicImage::ImageRgb8(image::RgbImage::from_pixel(
            64,
            64,
            image::Rgb([200, 10, 10]),
        ))),
    );
    std::fs::rename(&outside, sandbox.inbox.join("moved")).unwrap();
    drop_file(&sandbox.inbox, "e.jpg", &photo_jpeg(200, 300, 4));

    let images = wait_settled(&sandbox, &pool, 3, TIMEOUT).await;
    assert!(images.iter().all(|image| image.status == "tagged"), "{images:?}");
}

/// Each bad input ends as a failed or skipped row with a stable code, and
/// the daemon goes on tagging.
#[tokio::test]
async fn bad_input_is_recorded_and_the_daemon_keeps_going() {
    let sandbox = Sandbox::new();
    bad_input(&sandbox, TestDb::sqlite(sandbox.path())).await;
}

#[tokio::test]
async fn bad_input_is_recorded_and_the_daemon_keeps_going_on_postgres() {
    let Some(db) = TestDb::postgres().await else {
        return;
    };
    bad_input(&Sandbox::new(), db).await;
}

async fn bad_input(sandbox: &Sandbox, db: TestDb) {
    let mut daemon = Daemon::start(sandbox, db.url());
    let pool = open_when_ready(sandbox, &db).await;

    let truncated = photo_jpeg(640, 480, 5);
    let cases: Vec<(&str, Vec<u8>, &str, Option<&str>)> = vec![
        ("empty.jpg", Vec::new(), "failed", Some("empty_file")),
        (
            "truncated.jpg",
            truncated[..truncated.len() / 2].to_vec(),
            "failed",
            Some("truncated_image"),
        ),
        ("random.jpg", pseudo_random_bytes(5000), "failed", Some("not_an_image")),
        (
            "notes.jpg",
            b"this is a text file, not a photo\n".to_vec(),
            "failed",
            Some("not_an_image"),
        ),
        ("huge.png", huge_png_header(), "failed", Some("too_many_pixels")),
        ("dot.png", one_pixel_png(), "failed", Some("image_too_small")),
        ("cmyk.jpg", cmyk_jpeg(), "tagged", None),
        ("sixteen.png", sixteen_bit_png(), "tagged", None),
        ("palette.png", palette_png_with_transparency(), "tagged", None),
    ];
    for (name, bytes, _, _) in &cases {
        copy_in(&sandbox.inbox, name, bytes);
    }
    let non_utf8 = <std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(b"caf\xe9.jpg");
    std::fs::write(sandbox.inbox.join(non_utf8), photo_jpeg(100, 100, 6)).unwrap();

    let images = wait_settled(sandbox, &pool, cases.len() as i64 + 1, TIMEOUT).await;
    for (name, _, status, code) in &cases {
        let row = images.iter().find(|image| image.path.ends_with(name)).unwrap();
        assert_eq!((row.status.as_str(), row.error_code.as_deref()), (*status, *code), "{name}");
    }
    let odd = images.iter().find(|image| image.path.contains("caf\\xE9")).expect("escaped name");
    assert_eq!(
        (odd.status.as_str(), odd.error_code.as_deref()),
        ("skipped", Some("path_not_utf8"))
    );

    let messages = pool
        .count("SELECT count(*) FROM images WHERE status = 'failed' AND length(error_message) > 10")
        .await;
    assert_eq!(messages, 6, "every failure carries a readable message");

    // Still running, still tagging.
    assert!(daemon.is_running());
    copy_in(&sandbox.inbox, "after.jpg", &fixture_bytes("dress.jpg"));
    let images = wait_settled(sandbox, &pool, cases.len() as i64 + 2, TIMEOUT).await;
    assert_eq!(images.iter().find(|i| i.path.ends_with("after.jpg")).unwrap().status, "tagged");
}

#[tokio::test]
async fn a_file_deleted_before_it_is_read_is_not_lost_track_of() {
    let sandbox = Sandbox::new();
    let db = TestDb::sqlite(sandbox.path());
    copy_in(&sandbox.inbox, "kept.jpg", &photo_jpeg(200, 300, 7));
    let daemon = Daemon::start(&sandbox, db.url());
    let pool = open_when_ready(&sandbox, &db).await;
    wait_settled(&sandbox, &pool, 1, TIMEOUT).await;
    daemon.terminate();

    // Recorded while tagd is down, deleted before it can be read: the
    // start-up scan records nothing for it, or marks it gone.
    let doomed = copy_in(&sandbox.inbox, "doomed.jpg", &photo_jpeg(200, 300, 8));
    let _daemon = Daemon::start(&sandbox, db.url());
    std::fs::remove_file(&doomed).unwrap();
    copy_in(&sandbox.inbox, "next.jpg", &photo_jpeg(200, 300, 9));

    wait_for(&sandbox, "next.jpg tagged", TIMEOUT, || async {
        let images = pool.images().await;
        images.iter().any(|i| i.path.ends_with("next.jpg") && i.status == "tagged").then_some(())
    })
    .await;
    let recorded = pool.images().await.iter().any(|i| i.path.ends_with("doomed.jpg"));
    if recorded {
        wait_for(&sandbox, "doomed.jpg final and gone", TIMEOUT, || async {
            let images = pool.images().await;
            let row = images.iter().find(|i| i.path.ends_with("doomed.jpg")).unwrap().clone();
            (row.status != "pending" && row.gone).then_some(())
        })
        .await;
    }
}

#[tokio::test]
async fn changed_bytes_are_retagged_copies_reuse_and_deletions_are_marked() {
    let sandbox = Sandbox::new();
    changes(&sandbox, TestDb::sqlite(sandbox.path())).await;
}

#[tokio::test]
async fn changed_bytes_are_retagged_copies_reuse_and_deletions_are_marked_on_postgres() {
    let Some(db) = TestDb::postgres().await else {
        return;
    };
    changes(&Sandbox::new(), db).await;
}

async fn changes(sandbox: &Sandbox, db: TestDb) {
    let _daemon = Daemon::start(sandbox, db.url());
    let pool = open_when_ready(sandbox, &db).await;

    let first = copy_in(&sandbox.inbox, "item.jpg", &fixture_bytes("shoes.jpg"));
    wait_settled(sandbox, &pool, 1, TIMEOUT).await;

    // Identical bytes under a new path: the earlier result, no inference.
    drop_file(&sandbox.inbox, "copy.jpg", &fixture_bytes("shoes.jpg"));
    wait_settled(sandbox, &pool, 2, TIMEOUT).await;
    assert_eq!(
        pool.count("SELECT count(*) FROM predictions WHERE reused_from IS NOT NULL").await,
        1
    );

    // New bytes under the old path: tagged again.
    std::fs::write(&first, fixture_bytes("dress.jpg")).unwrap();
    wait_for(sandbox, "a second fresh prediction", TIMEOUT, || async {
        let fresh = pool.count("SELECT count(*) FROM predictions WHERE reused_from IS NULL").await;
        (fresh == 2).then_some(())
    })
    .await;

    // Deleted: the row stays, marked gone, and leaves the catalogue view.
    std::fs::remove_file(&first).unwrap();
    wait_for(sandbox, "item.jpg marked gone", TIMEOUT, || async {
        let images = pool.images().await;
        images.iter().any(|i| i.path.ends_with("item.jpg") && i.gone).then_some(())
    })
    .await;
    assert_eq!(pool.count("SELECT count(*) FROM images").await, 2);
    assert_eq!(pool.count("SELECT count(*) FROM catalogue").await, 1);
}

#[tokio::test]
async fn sigterm_finishes_the_work_in_flight_and_exits_zero() {
    let sandbox = Sandbox::new();
    let db = TestDb::sqlite(sandbox.path());
    let daemon = Daemon::start(&sandbox, db.url());
    let pool = open_when_ready(&sandbox, &db).await;
    for seed in 0..40 {
        copy_in(&sandbox.inbox, &format!("p{seed:02}.jpg"), &photo_jpeg(800, 600, seed));
    }
    wait_for(&sandbox, "some images tagged", TIMEOUT, || async {
        (pool.count("SELECT count(*) FROM images WHERE status = 'tagged'").await > 0).then_some(())
    })
    .await;

    let status = daemon.terminate();
    assert!(status.success(), "exit status {status:?}\n{}", sandbox.log_tail());
    let log = std::fs::read_to_string(sandbox.log()).unwrap();
    assert!(!log.contains("panicked"), "{log}");

    // What was not finished is still pending and is tagged at the next start.
    let _daemon = Daemon::start(&sandbox, db.url());
    let images = wait_settled(&sandbox, &pool, 40, TIMEOUT).await;
    assert!(images.iter().all(|image| image.status == "tagged"));
}

/// `kill -9` in the middle of a burst of 2,000 files, then a restart: every
/// file ends with exactly one row, in a final state.
#[tokio::test]
async fn kill_9_during_a_burst_loses_nothing() {
    let sandbox = Sandbox::new();
    kill_9(&sandbox, TestDb::sqlite(sandbox.path())).await;
}

#[tokio::test]
async fn kill_9_during_a_burst_loses_nothing_on_postgres() {
    let Some(db) = TestDb::postgres().await else {
        return;
    };
    kill_9(&Sandbox::new(), db).await;
}

async fn kill_9(sandbox: &Sandbox, db: TestDb) {
    let daemon = Daemon::start(sandbox, db.url());
    let pool = open_when_ready(sandbox, &db).await;

    const FILES: u32 = 2000;
    let writer = {
        let inbox = sandbox.inbox.clone();
        std::thread::spawn(move || {
            for n in 0..FILES {
                copy_in(&inbox, &format!("burst-{n:04}.jpg"), &photo_jpeg(64, 80, n));
            }
        })
    };
    wait_for(sandbox, "the burst under way", TIMEOUT, || async {
        (pool.count("SELECT count(*) FROM images WHERE status = 'tagged'").await >= 100)
            .then_some(())
    })
    .await;
    daemon.kill_9();
    writer.join().unwrap();

    let _daemon = Daemon::start(sandbox, db.url());
    let images = wait_settled(sandbox, &pool, i64::from(FILES), Duration::from_secs(240)).await;
    assert!(images.iter().all(|image| image.status == "tagged"), "every file tagged");
    assert_eq!(pool.count("SELECT count(DISTINCT path) FROM images").await, i64::from(FILES));
    assert_eq!(
        pool.count("SELECT count(*) FROM images WHERE prediction_id IS NULL").await,
        0,
        "every image has its prediction"
    );
}

/// Opens the catalogue once the daemon has created and migrated it.
async fn open_when_ready(sandbox: &Sandbox, db: &TestDb) -> Pool {
    wait_for(sandbox, "the catalogue to exist", TIMEOUT, || async {
        let file_missing = db
            .url()
            .strip_prefix("sqlite://")
            .is_some_and(|path| !std::path::Path::new(path).exists());
        if file_missing {
            return None;
        }
        let pool = db.pool().await;
        pool.try_count("SELECT count(*) FROM models")
            .await
            .filter(|&models| models > 0)
            .map(|_| pool)
    })
    .await
}

// ---------------------------------------------------------------------------
// Generated bad and odd inputs

fn pseudo_random_bytes(len: usize) -> Vec<u8> {
    let mut state = 0x2545_f491_4f6c_dd1du64;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 24) as u8
        })
        .collect()
}

/// A structurally valid PNG whose header claims 100000 x 100000 pixels.
fn huge_png_header() -> Vec<u8> {
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = b"IHDR".to_vec();
    ihdr.extend_from_slice(&100_000u32.to_be_bytes());
    ihdr.extend_from_slice(&100_000u32.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
    for chunk in [ihdr, b"IDAT\x78\x9c\x03\x00\x00\x00\x00\x01".to_vec(), b"IEND".to_vec()] {
        png.extend_from_slice(&(chunk.len() as u32 - 4).to_be_bytes());
        png.extend_from_slice(&chunk);
        png.extend_from_slice(&crc32(&chunk).to_be_bytes());
    }
    png
}

fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = 0xffff_ffffu32;
    for byte in bytes {
        crc ^= u32::from(*byte);
        for _ in 0..8 {
            crc = if crc & 1 == 1 { (crc >> 1) ^ 0xedb8_8320 } else { crc >> 1 };
        }
    }
    !crc
}

fn one_pixel_png() -> Vec<u8> {
    encode_png(&image::DynamicImage::ImageRgb8(image::RgbImage::from_pixel(
        1,
        1,
        image::Rgb([0, 0, 0]),
    )))
}

fn cmyk_jpeg() -> Vec<u8> {
    let (width, height) = (120usize, 160usize);
    let mut pixels = vec![0u8; width * height * 4];
    for (i, pixel) in pixels.chunks_mut(4).enumerate() {
        let (x, y) = (i % width, i / width);
        let inside = (30..90).contains(&x) && (20..140).contains(&y);
        // CMYK as Adobe writes it: inverted, so 255 is no ink.
        pixel.copy_from_slice(if inside { &[60, 60, 40, 30] } else { &[255, 255, 255, 255] });
    }
    let image = turbojpeg::Image {
        pixels: pixels.as_slice(),
        width,
        pitch: width * 4,
        height,
        format: turbojpeg::PixelFormat::CMYK,
    };
    let mut compressor = turbojpeg::Compressor::new().unwrap();
    compressor.set_quality(90).unwrap();
    let jpeg = compressor.compress_to_vec(image).unwrap();
    let header = turbojpeg::read_header(&jpeg).unwrap();
    assert!(matches!(header.colorspace, turbojpeg::Colorspace::CMYK | turbojpeg::Colorspace::YCCK));
    jpeg
}

fn sixteen_bit_png() -> Vec<u8> {
    let image = image::ImageBuffer::<image::Rgb<u16>, _>::from_fn(100, 120, |x, y| {
        if (20..80).contains(&x) && (10..110).contains(&y) {
            image::Rgb([9000, 9000, 12000])
        } else {
            image::Rgb([64000; 3])
        }
    });
    encode_png(&image::DynamicImage::ImageRgb16(image))
}

fn palette_png_with_transparency() -> Vec<u8> {
    let (width, height) = (90u32, 90u32);
    let mut bytes = Vec::new();
    {
        let mut encoder = png::Encoder::new(&mut bytes, width, height);
        encoder.set_color(png::ColorType::Indexed);
        encoder.set_depth(png::BitDepth::Eight);
        encoder.set_palette(vec![0, 0, 0, 30, 30, 60]);
        encoder.set_trns(vec![0u8, 255]);
        let mut writer = encoder.write_header().unwrap();
        let data: Vec<u8> = (0..width * height)
            .map(|i| {
                let (x, y) = (i % width, i / width);
                u8::from((20..70).contains(&x) && (15..80).contains(&y))
            })
            .collect();
        writer.write_image_data(&data).unwrap();
    }
    bytes
}

/// The database refuses connections for a few seconds while photos keep
/// arriving: results are held and retried, and nothing is dropped.
#[tokio::test]
async fn a_briefly_unavailable_database_loses_no_result() {
    let Some(db) = TestDb::postgres().await else {
        return;
    };
    let sandbox = Sandbox::new();
    let _daemon =
        Daemon::start_with(&sandbox, db.url(), &[("TAGD__DATABASE__MAX_RETRY_BACKOFF_MS", "500")]);
    let pool = open_when_ready(&sandbox, &db).await;
    copy_in(&sandbox.inbox, "before.jpg", &photo_jpeg(300, 400, 1));
    wait_settled(&sandbox, &pool, 1, TIMEOUT).await;
    pool.close().await;

    db.set_available(false).await;
    for seed in 2..12 {
        copy_in(&sandbox.inbox, &format!("during-{seed}.jpg"), &photo_jpeg(300, 400, seed));
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    db.set_available(true).await;

    let pool = db.pool().await;
    let images = wait_settled(&sandbox, &pool, 11, TIMEOUT).await;
    assert!(images.iter().all(|image| image.status == "tagged"), "{images:?}");
    let log = std::fs::read_to_string(sandbox.log()).unwrap();
    assert!(
        log.contains("retrying") || log.contains("unavailable"),
        "the outage was noticed:\n{log}"
    );
    pool.close().await;
    db.drop_database().await;
}
