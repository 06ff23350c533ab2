//! Shared harness for the end-to-end tests: a sandbox folder, the real
//! `tagd` binary, a catalogue on SQLite or on a fresh Postgres database,
//! and generated images.

#![allow(dead_code)] // each test binary uses its own part of the harness

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use sqlx::postgres::PgPool;
use sqlx::sqlite::{SqliteConnectOptions, SqlitePool};
use sqlx::{Connection, Executor, Row};

pub const LABELS: [&str; 10] = [
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
];

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The bundled model, or the folder named by `TAGD_TEST_MODEL_DIR` (to run
/// the suite against a candidate model).
pub fn model_dir() -> PathBuf {
    match std::env::var_os("TAGD_TEST_MODEL_DIR") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => repo().join("models/fashion-mnist"),
    }
}

pub fn fixture(name: &str) -> PathBuf {
    repo().join("tests/fixtures").join(name)
}

/// The ONNX Runtime library: `ORT_DYLIB_PATH`, else the one `make
/// onnxruntime` unpacks into the repo.
pub fn onnxruntime() -> PathBuf {
    match std::env::var_os("ORT_DYLIB_PATH") {
        Some(path) if !path.is_empty() => PathBuf::from(path),
        _ => repo().join(".ort/libonnxruntime.so.1.31.1"),
    }
}

// ---------------------------------------------------------------------------
// Databases

/// A catalogue database for one test: a SQLite file in the sandbox, or a
/// fresh Postgres database dropped at the end.
pub enum TestDb {
    Sqlite { url: String },
    Postgres { url: String, admin_url: String, name: String },
}

const DEFAULT_POSTGRES_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

impl TestDb {
    pub fn sqlite(dir: &Path) -> TestDb {
        TestDb::Sqlite { url: format!("sqlite://{}", dir.join("catalogue.db").display()) }
    }

    /// A new, empty Postgres database. Returns `None` (after saying why)
    /// when no server answers, except under `CI=true`, where that fails.
    pub async fn postgres() -> Option<TestDb> {
        let admin_url = std::env::var("TAGD_TEST_POSTGRES_URL")
            .unwrap_or_else(|_| DEFAULT_POSTGRES_URL.to_string());
        let mut admin = match sqlx::PgConnection::connect(&admin_url).await {
            Ok(connection) => connection,
            Err(error) => {
                if std::env::var("CI").is_ok_and(|v| v == "true") {
                    panic!("Postgres at {admin_url} is unreachable under CI=true: {error}");
                }
                eprintln!(
                    "SKIPPED: Postgres at {admin_url} is unreachable ({error}); set TAGD_TEST_POSTGRES_URL"
                );
                return None;
            }
        };
        let name = format!("tagd_e2e_{}_{}", std::process::id(), unique());
        admin
            .execute(format!("CREATE DATABASE {name}").as_str())
            .await
            .expect("create test database");
        let url = match admin_url.rfind('/') {
            Some(slash) => format!("{}/{name}", &admin_url[..slash]),
            None => panic!("TAGD_TEST_POSTGRES_URL must name a database: {admin_url}"),
        };
        Some(TestDb::Postgres { url, admin_url, name })
    }

    pub fn url(&self) -> &str {
        match self {
            TestDb::Sqlite { url } | TestDb::Postgres { url, .. } => url,
        }
    }

    /// A plain connection pool, as a person querying the catalogue would use.
    pub async fn pool(&self) -> Pool {
        match self {
            TestDb::Sqlite { url } => {
                let options: SqliteConnectOptions = url.parse().expect("sqlite url");
                Pool::Sqlite(
                    SqlitePool::connect_with(options.read_only(true)).await.expect("open sqlite"),
                )
            }
            TestDb::Postgres { url, .. } => {
                Pool::Postgres(PgPool::connect(url).await.expect("open postgres"))
            }
        }
    }

    /// Makes a Postgres database refuse connections (closing those open),
    /// or accept them again: a database outage, as tagd sees it.
    pub async fn set_available(&self, available: bool) {
        let TestDb::Postgres { admin_url, name, .. } = self else {
            panic!("outages are simulated on Postgres");
        };
        let mut admin = sqlx::PgConnection::connect(admin_url).await.expect("admin connection");
        admin
            .execute(format!("ALTER DATABASE {name} ALLOW_CONNECTIONS {available}").as_str())
            .await
            .expect("alter database");
        if !available {
            let terminate = format!(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}' AND pid <> pg_backend_pid()"
            );
            admin.execute(terminate.as_str()).await.expect("terminate connections");
        }
    }

    pub async fn drop_database(self) {
        if let TestDb::Postgres { admin_url, name, .. } = self
            && let Ok(mut admin) = sqlx::PgConnection::connect(&admin_url).await
        {
            let _ = admin
                .execute(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)").as_str())
                .await;
        }
    }
}

fn unique() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let nanos =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos();
    u64::from(nanos) * 1000 + NEXT.fetch_add(1, Ordering::Relaxed)
}

/// Read access to the catalogue with plain SQL.
pub enum Pool {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

/// One row of `images` as the tests look at it.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageRow {
    pub path: String,
    pub status: String,
    pub error_code: Option<String>,
    pub gone: bool,
}

macro_rules! on_pool {
    ($pool:expr, |$p:ident| $body:expr) => {
        match $pool {
            Pool::Sqlite($p) => $body,
            Pool::Postgres($p) => $body,
        }
    };
}

impl Pool {
    /// A single integer from a query such as `SELECT count(*) FROM images`.
    pub async fn count(&self, sql: &str) -> i64 {
        on_pool!(self, |p| sqlx::query_scalar::<_, i64>(sql).fetch_one(p).await.expect(sql))
    }

    /// Like `count`, but `None` while the query cannot run yet (tables not
    /// created).
    pub async fn try_count(&self, sql: &str) -> Option<i64> {
        on_pool!(self, |p| sqlx::query_scalar::<_, i64>(sql).fetch_one(p).await.ok())
    }

    /// One text column from every row of a query.
    pub async fn strings(&self, sql: &str) -> Vec<String> {
        on_pool!(self, |p| sqlx::query_scalar::<_, String>(sql).fetch_all(p).await.expect(sql))
    }

    pub async fn images(&self) -> Vec<ImageRow> {
        let sql = "SELECT path, status, error_code, gone_at IS NOT NULL AS gone FROM images ORDER BY path";
        on_pool!(self, |p| sqlx::query(sql)
            .fetch_all(p)
            .await
            .expect(sql)
            .into_iter()
            .map(|row| ImageRow {
                path: row.get("path"),
                status: row.get("status"),
                error_code: row.get("error_code"),
                gone: row.get("gone"),
            })
            .collect())
    }

    /// `(path, label, confidence)` from the `catalogue` view.
    pub async fn catalogue(&self) -> Vec<(String, Option<String>, Option<f32>)> {
        let sql = "SELECT path, label, confidence FROM catalogue ORDER BY path";
        on_pool!(self, |p| sqlx::query(sql)
            .fetch_all(p)
            .await
            .expect(sql)
            .into_iter()
            .map(|row| (row.get("path"), row.get("label"), row.get("confidence")))
            .collect())
    }

    pub async fn close(&self) {
        on_pool!(self, |p| p.close().await)
    }
}

// ---------------------------------------------------------------------------
// The daemon

/// A temporary folder with an inbox, holding the daemon's log.
pub struct Sandbox {
    pub dir: tempfile::TempDir,
    pub inbox: PathBuf,
}

impl Sandbox {
    pub fn new() -> Sandbox {
        let dir = tempfile::tempdir().expect("temp dir");
        let inbox = dir.path().join("inbox");
        std::fs::create_dir(&inbox).unwrap();
        Sandbox { dir, inbox }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn log(&self) -> PathBuf {
        self.dir.path().join("tagd.log")
    }

    /// The end of the daemon's log, for failure messages.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(self.log()).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }
}

/// `tagd` with the bundled model, the runtime library and `database`.
pub fn tagd(database: &str) -> Command {
    tagd_with_runtime(database, onnxruntime())
}

/// `tagd` with another ONNX Runtime library.
pub fn tagd_with_runtime(database: &str, runtime: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_tagd"));
    command
        .arg("--model")
        .arg(model_dir())
        .arg("--onnxruntime")
        .arg(runtime)
        .arg("--database")
        .arg(database)
        .env("TAGD__LOG__FORMAT", "text")
        .env("RUST_LOG", "info,tagd=debug,sqlx=warn,ort=warn")
        .env("TAGD__WATCH__SETTLE_MS", "200")
        .env("TAGD__PIPELINE__WORKERS", "2")
        .env_remove("TAGD__DATABASE__URL");
    command
}

/// Runs a one-shot command to completion.
pub fn run_tagd(database: &str, args: &[&str]) -> Output {
    tagd(database).args(args).output().expect("run tagd")
}

/// A running `tagd run`, killed when dropped.
pub struct Daemon {
    child: Child,
}

impl Daemon {
    pub fn start(sandbox: &Sandbox, database: &str) -> Daemon {
        Self::start_with(sandbox, database, &[])
    }

    pub fn start_with(sandbox: &Sandbox, database: &str, env: &[(&str, &str)]) -> Daemon {
        let log =
            std::fs::OpenOptions::new().create(true).append(true).open(sandbox.log()).unwrap();
        let mut command = tagd(database);
        command.arg("run").arg("--watch").arg(&sandbox.inbox);
        for (key, value) in env {
            command.env(key, value);
        }
        let child = command.stdout(Stdio::null()).stderr(log).spawn().expect("start tagd");
        Daemon { child }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGTERM, then waits for the exit.
    pub fn terminate(mut self) -> ExitStatus {
        signal(self.child.id(), "TERM");
        wait_exit(&mut self.child, Duration::from_secs(30))
    }

    /// SIGKILL: no chance to finish anything.
    pub fn kill_9(mut self) {
        signal(self.child.id(), "KILL");
        let _ = self.child.wait();
    }

    pub fn is_running(&mut self) -> bool {
        self.child.try_wait().expect("try_wait").is_none()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn signal(pid: u32, name: &str) {
    let status =
        Command::new("kill").arg(format!("-{name}")).arg(pid.to_string()).status().unwrap();
    assert!(status.success(), "kill -{name} {pid}");
}

fn wait_exit(child: &mut Child, timeout: Duration) -> ExitStatus {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(Instant::now() < deadline, "tagd did not exit within {timeout:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Polls `check` until it returns `Some`, or fails with the daemon's log.
pub async fn wait_for<T, F, Fut>(
    sandbox: &Sandbox,
    what: &str,
    timeout: Duration,
    mut check: F,
) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        if Instant::now() > deadline {
            panic!(
                "timed out after {timeout:?} waiting for {what}\n--- tagd log ---\n{}",
                sandbox.log_tail()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until the catalogue has `count` images and none is pending.
pub async fn wait_settled(
    sandbox: &Sandbox,
    pool: &Pool,
    count: i64,
    timeout: Duration,
) -> Vec<ImageRow> {
    wait_for(sandbox, &format!("{count} images in a final state"), timeout, || async {
        let images = pool.images().await;
        let done =
            images.len() as i64 == count && images.iter().all(|image| image.status != "pending");
        done.then_some(images)
    })
    .await
}

// ---------------------------------------------------------------------------
// Files

/// Copies with the same path semantics as a person dropping a file: the
/// bytes are written to a hidden temporary name, then renamed into place.
pub fn drop_file(folder: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let target = folder.join(name);
    let temporary = folder.join(format!(".{name}.part"));
    std::fs::write(&temporary, bytes).unwrap();
    std::fs::rename(&temporary, &target).unwrap();
    target
}

/// Writes bytes the way `cp` does: straight into the final name.
pub fn copy_in(folder: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let target = folder.join(name);
    let mut file = std::fs::File::create(&target).unwrap();
    file.write_all(bytes).unwrap();
    target
}

/// A photo-like JPEG: a dark garment shape on a light, slightly noisy
/// background. `seed` changes the shape and noise, so the bytes differ.
pub fn photo_jpeg(width: u32, height: u32, seed: u32) -> Vec<u8> {
    let image = image::RgbImage::from_fn(width, height, |x, y| {
        let (cx, cy) = (width as f32 * 0.5, height as f32 * (0.45 + (seed % 7) as f32 * 0.01));
        let dx = (x as f32 - cx) / (width as f32 * 0.3);
        let dy = (y as f32 - cy) / (height as f32 * 0.35);
        let noise = ((x.wrapping_mul(2654435761) ^ y.wrapping_mul(40503) ^ seed.wrapping_mul(97))
            % 9) as u8;
        if dx * dx + dy * dy < 1.0 {
            image::Rgb([40 + noise, 50 + noise, 70 + noise])
        } else {
            image::Rgb([235 + noise, 235 + noise, 232 + noise])
        }
    });
    encode_jpeg(&image)
}

pub fn encode_jpeg(image: &image::RgbImage) -> Vec<u8> {
    use image::ImageEncoder;
    let mut bytes = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut bytes, 90)
        .write_image(image.as_raw(), image.width(), image.height(), image::ExtendedColorType::Rgb8)
        .unwrap();
    bytes
}

pub fn encode_png(image: &image::DynamicImage) -> Vec<u8> {
    let mut bytes = Vec::new();
    image.write_to(&mut std::io::Cursor::new(&mut bytes), image::ImageFormat::Png).unwrap();
    bytes
}
