//! End-to-end tests of the one-shot commands: `check`, `classify`, `scan`,
//! `review`, and of the shipped config file and systemd unit.

mod common;

use std::process::Output;

use common::*;

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn fixture_photo(name: &str) -> String {
    fixture(&format!("photos/{name}")).display().to_string()
}

#[test]
fn check_passes_on_a_working_setup() {
    let sandbox = Sandbox::new();
    let db = TestDb::sqlite(sandbox.path());
    let inbox = sandbox.inbox.display().to_string();
    let output = tagd(db.url()).env("TAGD__WATCH__FOLDERS", &inbox).arg("check").output().unwrap();
    assert!(output.status.success(), "{}{}", stdout(&output), stderr(&output));
    for part in
        ["ok    config", "ok    onnxruntime", "ok    model", "ok    inference", "ok    database"]
    {
        assert!(stdout(&output).contains(part), "{part} missing in:\n{}", stdout(&output));
    }
}

#[test]
fn check_fails_precisely_on_a_missing_runtime_library_and_folder() {
    let sandbox = Sandbox::new();
    let db = TestDb::sqlite(sandbox.path());
    let output = tagd_with_runtime(db.url(), "/nonexistent/libonnxruntime.so.1.31.1")
        .env("TAGD__WATCH__FOLDERS", "/nonexistent/inbox")
        .arg("check")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let text = stdout(&output);
    assert!(text.contains("FAIL  onnxruntime"), "{text}");
    assert!(text.contains("make onnxruntime"), "says how to install it: {text}");
    assert!(text.contains("FAIL  watch folders: watch folder /nonexistent/inbox"), "{text}");
    assert!(text.contains("ok    database"), "{text}");
}

#[test]
fn run_refuses_to_start_without_the_runtime_library() {
    let sandbox = Sandbox::new();
    let db = TestDb::sqlite(sandbox.path());
    let output = tagd_with_runtime(db.url(), "/nonexistent/libonnxruntime.so.1.31.1")
        .args(["run", "--watch"])
        .arg(&sandbox.inbox)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    assert!(stderr(&output).contains("does not exist"), "{}", stderr(&output));
    assert!(!stderr(&output).contains("panicked"));
}

#[test]
fn an_unknown_config_key_is_an_error_naming_it() {
    let sandbox = Sandbox::new();
    let config = sandbox.path().join("tagd.toml");
    std::fs::write(&config, "[watch]\nsettle_msec = 100\n").unwrap();
    let output =
        tagd("sqlite://unused.db").arg("--config").arg(&config).arg("check").output().unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(stderr(&output).contains("settle_msec"), "{}", stderr(&output));
}

#[test]
fn classify_prints_label_confidence_and_top_three_and_explains() {
    let sandbox = Sandbox::new();
    let explain = sandbox.path().join("explain");
    let product = sandbox.path().join("product.jpg");
    std::fs::write(&product, photo_jpeg(600, 800, 3)).unwrap();
    let output = tagd("sqlite://unused.db")
        .arg("classify")
        .arg(&product)
        .arg(fixture_photo("dress.jpg"))
        .arg("--explain")
        .arg(&explain)
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", stderr(&output));
    let text = stdout(&output);
    assert_eq!(text.matches("top 3: ").count(), 2, "{text}");

    // A dark garment on a light studio background becomes a bright shape on
    // black, filling the long edge.
    let seen = image::open(explain.join("product.28x28.png")).unwrap().to_luma8();
    assert_eq!(seen.dimensions(), (28, 28));
    assert!(seen.get_pixel(0, 0)[0] < 30, "black background");
    assert!(seen.get_pixel(14, 14)[0] > 180, "bright object");
    assert!((0..28).any(|x| seen.get_pixel(x, 0)[0] > 150), "the object reaches the top edge");
    assert!(explain.join("dress.28x28.png").exists());
    assert!(!std::path::Path::new("unused.db").exists(), "classify needs no database");
}

#[test]
fn classify_as_json_reports_bad_files_and_exits_non_zero() {
    let sandbox = Sandbox::new();
    let text_file = sandbox.path().join("notes.jpg");
    std::fs::write(&text_file, "not a photo").unwrap();
    let output = tagd("sqlite://unused.db")
        .arg("classify")
        .arg("--json")
        .arg(fixture_photo("pants.jpg"))
        .arg(&text_file)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let lines: Vec<serde_json::Value> =
        stdout(&output).lines().map(|line| serde_json::from_str(line).unwrap()).collect();
    assert_eq!(lines.len(), 2);
    assert!(LABELS.contains(&lines[0]["label"].as_str().unwrap()));
    assert_eq!(lines[0]["top3"].as_array().unwrap().len(), 3);
    let probabilities: f64 =
        lines[0]["probabilities"].as_array().unwrap().iter().map(|p| p.as_f64().unwrap()).sum();
    assert!((probabilities - 1.0).abs() < 1e-4);
    assert_eq!(lines[1]["error_code"], "not_an_image");
}

#[tokio::test]
async fn scan_tags_a_folder_once_and_prints_a_summary() {
    let sandbox = Sandbox::new();
    let db = TestDb::sqlite(sandbox.path());
    for name in ["shoes.jpg", "t-shirt.jpg", "pants.jpg"] {
        std::fs::copy(fixture_photo(name), sandbox.inbox.join(name)).unwrap();
    }
    std::fs::write(sandbox.inbox.join("broken.jpg"), b"\xff\xd8\xff\xe0 not really").unwrap();
    let inbox = sandbox.inbox.display().to_string();

    let output = run_tagd(db.url(), &["scan", &inbox]);
    assert!(output.status.success(), "{}", stderr(&output));
    let summary = stdout(&output);
    assert!(summary.contains("scanned 4 files"), "{summary}");
    assert!(summary.contains("3 tagged"), "{summary}");
    assert!(summary.contains("1 failed"), "{summary}");
    assert!(summary.contains("0 still pending"), "{summary}");

    // A second pass finds nothing new to do.
    let again = stdout(&run_tagd(db.url(), &["scan", &inbox]));
    assert!(again.contains("0 tagged"), "{again}");
    let pool = db.pool().await;
    assert_eq!(pool.count("SELECT count(*) FROM predictions").await, 3);
}

/// A person's decision wins in the catalogue view and survives tagd tagging
/// the image again.
#[tokio::test]
async fn review_decisions_survive_a_retag() {
    let sandbox = Sandbox::new();
    let db = TestDb::sqlite(sandbox.path());
    let photo = sandbox.inbox.join("dress.jpg");
    std::fs::copy(fixture_photo("dress.jpg"), &photo).unwrap();
    let inbox = sandbox.inbox.display().to_string();
    let path = std::fs::canonicalize(&photo).unwrap().display().to_string();
    assert!(run_tagd(db.url(), &["scan", &inbox]).status.success());

    let relabel = run_tagd(db.url(), &["review", "relabel", &path, "Coat", "--reviewer", "ana"]);
    assert!(relabel.status.success(), "{}", stderr(&relabel));
    let bad = run_tagd(db.url(), &["review", "relabel", &path, "Hat"]);
    assert_eq!(bad.status.code(), Some(1));
    assert!(stderr(&bad).contains("Hat"), "{}", stderr(&bad));

    // Touch the file: tagd looks at it again, and the decision stands.
    let file = std::fs::File::options().append(true).open(&photo).unwrap();
    file.set_modified(std::time::SystemTime::now() - std::time::Duration::from_secs(5)).unwrap();
    drop(file);
    let rescan = stdout(&run_tagd(db.url(), &["scan", &inbox]));
    assert!(rescan.contains("1 reused"), "{rescan}");

    let pool = db.pool().await;
    assert_eq!(pool.catalogue().await[0].1.as_deref(), Some("Coat"));
    assert_eq!(pool.count("SELECT count(*) FROM reviews WHERE reviewer = 'ana'").await, 1);
    assert_eq!(pool.count("SELECT count(*) FROM review_queue").await, 0);
}

#[test]
fn review_list_shows_flagged_images_least_confident_first() {
    let sandbox = Sandbox::new();
    let db = TestDb::sqlite(sandbox.path());
    for seed in 0..6 {
        std::fs::write(sandbox.inbox.join(format!("{seed}.jpg")), photo_jpeg(300, 400, seed))
            .unwrap();
    }
    let inbox = sandbox.inbox.display().to_string();
    // Every image flagged: a threshold no prediction reaches.
    let scan = tagd(db.url())
        .env("TAGD__REVIEW__MIN_CONFIDENCE", "1.0")
        .args(["scan", &inbox])
        .output()
        .unwrap();
    assert!(scan.status.success());

    let list = stdout(&run_tagd(db.url(), &["review", "list"]));
    let confidences: Vec<f32> =
        list.lines().map(|line| line.split_whitespace().next().unwrap().parse().unwrap()).collect();
    assert_eq!(confidences.len(), 6, "{list}");
    assert!(confidences.windows(2).all(|pair| pair[0] <= pair[1]), "{list}");
    assert!(list.contains("low_confidence"));

    let accepted = run_tagd(db.url(), &["review", "accept", &format!("{inbox}/0.jpg")]);
    assert!(accepted.status.success(), "{}", stderr(&accepted));
    assert_eq!(stdout(&run_tagd(db.url(), &["review", "list"])).lines().count(), 5);
}

#[test]
fn the_systemd_unit_passes_systemd_analyze_verify() {
    let Ok(probe) = std::process::Command::new("systemd-analyze").arg("--version").output() else {
        panic!("systemd-analyze is needed for this test (Debian package systemd)");
    };
    assert!(probe.status.success());
    // verify checks that ExecStart's binary exists: point it at the build.
    let unit = std::fs::read_to_string(repo().join("systemd/tagd.service")).unwrap();
    let unit = unit.replace("/usr/local/bin/tagd", env!("CARGO_BIN_EXE_tagd"));
    assert!(
        unit.contains("Type=notify") && unit.contains("ExecStartPre=") && unit.contains(" check")
    );
    let sandbox = Sandbox::new();
    let path = sandbox.path().join("tagd.service");
    std::fs::write(&path, unit).unwrap();

    let output =
        std::process::Command::new("systemd-analyze").arg("verify").arg(&path).output().unwrap();
    assert!(output.status.success(), "{}{}", stdout(&output), stderr(&output));
    assert!(stderr(&output).trim().is_empty(), "no warnings: {}", stderr(&output));
}

#[test]
fn convert_writes_what_a_model_would_see_without_a_model() {
    let sandbox = Sandbox::new();
    std::fs::write(sandbox.inbox.join("generated.jpg"), photo_jpeg(400, 300, 4)).unwrap();
    std::fs::copy(fixture_photo("pants.jpg"), sandbox.inbox.join("pants.jpg")).unwrap();
    let out = sandbox.path().join("out");
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_tagd"))
        .args(["--model", "/nonexistent", "convert"])
        .arg(&sandbox.inbox)
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(
        stdout(&output).contains("converted 2 of 2 photos with fmnist-v4"),
        "{}",
        stdout(&output)
    );

    let seen = image::open(out.join("generated.png")).unwrap().to_luma8();
    assert_eq!(seen.dimensions(), (28, 28));
    assert_eq!(seen.get_pixel(0, 0)[0], 0, "the background is black");
    assert!(seen.get_pixel(14, 14)[0] > 150, "the garment is bright");
    assert!(out.join("pants.png").exists());
}

#[test]
fn a_library_that_is_not_onnx_runtime_is_refused_with_a_reason() {
    let sandbox = Sandbox::new();
    let db = TestDb::sqlite(sandbox.path());
    let libc = [
        "/lib/x86_64-linux-gnu/libc.so.6",
        "/usr/lib/x86_64-linux-gnu/libc.so.6",
        "/lib64/libc.so.6",
    ]
    .into_iter()
    .find(|path| std::path::Path::new(path).exists())
    .expect("a C library to stand in for a wrong runtime");
    let output = tagd_with_runtime(db.url(), libc).arg("check").output().unwrap();
    assert_eq!(output.status.code(), Some(1));
    let text = stdout(&output);
    assert!(text.contains("FAIL  onnxruntime") && text.contains("OrtGetApiBase"), "{text}");
}

#[test]
fn json_logs_are_one_object_per_line() {
    let sandbox = Sandbox::new();
    let db = TestDb::sqlite(sandbox.path());
    std::fs::write(sandbox.inbox.join("broken.jpg"), b"not a photo").unwrap();
    let inbox = sandbox.inbox.display().to_string();
    let output = tagd(db.url())
        .args(["--log-format", "json", "scan", "--no-progress", &inbox])
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    assert!(output.status.success());
    let lines: Vec<serde_json::Value> =
        stderr(&output).lines().map(|line| serde_json::from_str(line).expect(line)).collect();
    let warning =
        lines.iter().find(|line| line["message"] == "cannot tag image").expect("a warning");
    assert_eq!(warning["level"], "WARN");
    assert_eq!(warning["error_code"], "not_an_image");
    assert!(warning["path"].as_str().unwrap().ends_with("broken.jpg"));
}

/// systemd's notify protocol, with a socket of our own standing in for
/// systemd: READY=1 once running, watchdog pings, STOPPING=1 on SIGTERM,
/// exit 0.
#[test]
fn tagd_tells_systemd_when_it_is_ready_and_when_it_stops() {
    use std::os::unix::net::UnixDatagram;

    let sandbox = Sandbox::new();
    let db = TestDb::sqlite(sandbox.path());
    let socket_path = sandbox.path().join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    socket.set_read_timeout(Some(std::time::Duration::from_secs(30))).unwrap();

    // systemd names the watched process in WATCHDOG_PID: the shell's pid
    // is tagd's after exec.
    let tagd = tagd(db.url());
    let mut command = std::process::Command::new("sh");
    command
        .arg("-c")
        .arg("WATCHDOG_PID=$$ exec \"$0\" \"$@\"")
        .arg(tagd.get_program())
        .args(tagd.get_args())
        .args(["run", "--watch"])
        .arg(&sandbox.inbox)
        .envs(tagd.get_envs().filter_map(|(key, value)| value.map(|value| (key, value))))
        .env("NOTIFY_SOCKET", &socket_path)
        .env("WATCHDOG_USEC", "2000000")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    let child = KillOnDrop(command.spawn().unwrap());

    let mut received = Vec::new();
    let mut buffer = [0u8; 4096];
    while !received.iter().any(|m: &String| m.contains("WATCHDOG=1")) {
        let n = socket.recv(&mut buffer).unwrap_or_else(|e| panic!("{e} after {received:?}"));
        received.push(String::from_utf8_lossy(&buffer[..n]).into_owned());
    }
    assert!(received[0].contains("READY=1"), "{received:?}");

    std::process::Command::new("kill").arg("-TERM").arg(child.0.id().to_string()).status().unwrap();
    loop {
        let n = socket.recv(&mut buffer).expect("STOPPING=1 within 30 s");
        if String::from_utf8_lossy(&buffer[..n]).contains("STOPPING=1") {
            break;
        }
    }
    let mut child = child;
    assert!(child.0.wait().unwrap().success());
}

/// Kills a child process when a test fails half-way.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
