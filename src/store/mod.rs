//! The catalogue: where every image, prediction and review decision lives.
//!
//! The catalogue is also the work queue. A file becomes a `pending` row in
//! `images` before any work is done on it, so a crash or a restart loses
//! nothing: pending rows are picked up again when tagd starts. Every image
//! ends in exactly one final state (`tagged`, `failed` or `skipped`).
//!
//! Two backends sit behind the [`Catalogue`] trait: SQLite (the embedded
//! default) and Postgres (for shared or large catalogues). Both have the same
//! tables and views, created by `migrations/sqlite` and
//! `migrations/postgres`, so the SQL a person writes works on either.

mod postgres;
mod shared;
mod sql;
mod sqlite;

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use serde::Serialize;

pub use postgres::PostgresCatalogue;
pub use sqlite::SqliteCatalogue;

/// The database row id of an image.
pub type ImageId = i64;

/// The database row id of a model in the `models` table.
pub type ModelId = i64;

/// Where an image stands. Stored as lower-case text in `images.status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Discovered, not yet processed.
    Pending,
    /// A prediction is stored for the image's current bytes.
    Tagged,
    /// The image could not be tagged; `error_code` says why.
    Failed,
    /// The file was deliberately not tagged (for example a name that is not
    /// valid UTF-8); `error_code` says why.
    Skipped,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pending => "pending",
            Status::Tagged => "tagged",
            Status::Failed => "failed",
            Status::Skipped => "skipped",
        }
    }

    pub fn parse(text: &str) -> Option<Status> {
        match text {
            "pending" => Some(Status::Pending),
            "tagged" => Some(Status::Tagged),
            "failed" => Some(Status::Failed),
            "skipped" => Some(Status::Skipped),
            _ => None,
        }
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What discovery knows about a file before reading it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileFacts {
    /// The file's path as text. Bytes that are not UTF-8 are escaped as
    /// `\xNN`, so every file gets a distinct, printable path.
    pub path: String,
    pub size_bytes: i64,
    /// Modification time in nanoseconds since the Unix epoch.
    pub mtime_ns: i64,
    /// Set when discovery already knows the file cannot be tagged (a name
    /// that is not valid UTF-8): the row is written straight as `skipped`.
    pub skip: Option<Problem>,
}

/// A stable error code and a readable message, stored with a failed or
/// skipped image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Problem {
    /// Stable, snake_case: `empty_file`, `truncated_image`, `too_many_pixels`...
    pub code: String,
    pub message: String,
}

/// A row of `images` as the catalogue knows it, for reconciliation scans.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KnownFile {
    pub path: String,
    pub size_bytes: i64,
    pub mtime_ns: i64,
    pub gone: bool,
}

/// A pending image handed to the pipeline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingImage {
    pub id: ImageId,
    pub path: String,
    /// The hash of the bytes last tagged under this path, if any; lets the
    /// pipeline notice a touched but unchanged file.
    pub content_hash: Option<String>,
}

/// A model as recorded in the `models` table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelRecord {
    pub name: String,
    pub version: String,
    /// SHA-256 of the ONNX file, hex.
    pub sha256: String,
    pub preprocessing: String,
    pub labels: Vec<String>,
}

/// The model's verdict on one image.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Prediction {
    pub label_index: i32,
    pub label: String,
    /// Calibrated probability of the top label.
    pub confidence: f32,
    /// Top-1 minus top-2 calibrated probability.
    pub margin: f32,
    /// Calibrated probabilities, in the model's label order.
    pub probabilities: Vec<f32>,
    pub needs_review: bool,
    /// Comma-separated reason codes (`low_confidence,small_margin`), or none.
    pub review_reason: Option<String>,
    /// Which of the model's review rules judged the photo.
    pub review_rule: ReviewRule,
}

/// The review rule a photo is judged by, stored as `predictions.review_rule`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ReviewRule {
    /// Studio shots on a plain backdrop, and anything not cut out of a scene.
    Studio,
    /// Photos cut out of a scene (a floor, a bed): the `[review.scene]` pair.
    Scene,
}

impl ReviewRule {
    pub fn as_str(self) -> &'static str {
        match self {
            ReviewRule::Studio => "studio",
            ReviewRule::Scene => "scene",
        }
    }
}

/// Facts about the decoded image, stored with a tagged image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImageFacts {
    pub width: i64,
    pub height: i64,
}

/// How the pipeline finished with one pending image.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// A fresh prediction from the model.
    Tagged {
        image: ImageId,
        content_hash: String,
        facts: ImageFacts,
        prediction: Prediction,
        elapsed_ms: f64,
    },
    /// Identical bytes were already tagged by the same model (under another
    /// path, or this one before a `touch`): the earlier prediction is copied,
    /// with no inference.
    Reused { image: ImageId, content_hash: String, from_image: ImageId },
    /// The file could not be tagged (bad input, unreadable file).
    Failed { image: ImageId, content_hash: Option<String>, problem: Problem },
    /// The file was deliberately not tagged.
    Skipped { image: ImageId, problem: Problem },
    /// The file disappeared before it could be read: the row is marked gone.
    Vanished { image: ImageId },
}

impl Outcome {
    pub fn image(&self) -> ImageId {
        match self {
            Outcome::Tagged { image, .. }
            | Outcome::Reused { image, .. }
            | Outcome::Failed { image, .. }
            | Outcome::Skipped { image, .. }
            | Outcome::Vanished { image } => *image,
        }
    }
}

/// An image waiting for a person's decision, least confident first.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ReviewItem {
    pub image_id: ImageId,
    pub path: String,
    pub label: String,
    pub confidence: f32,
    pub review_reason: Option<String>,
}

/// A person's decision about an image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// The model's label is right.
    Accept,
    /// The right label is this one (a label name of the model).
    Relabel(String),
}

/// Counts of images per status, for summaries and `tagd scan`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct StatusCounts {
    pub pending: i64,
    pub tagged: i64,
    pub failed: i64,
    pub skipped: i64,
    pub gone: i64,
    pub needs_review: i64,
}

/// Errors from the catalogue. `Unavailable` is transient (retry with
/// backoff); the others are not.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database unavailable: {0}")]
    Unavailable(#[source] sqlx::Error),
    #[error("database error: {0}")]
    Database(#[source] sqlx::Error),
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// The catalogue URL cannot be used: unknown scheme, malformed, or a
    /// SQLite file in a folder that does not exist.
    #[error("bad catalogue URL: {0}")]
    BadUrl(String),
    #[error("no image with path {0}")]
    UnknownImage(String),
    #[error("unknown label {label:?}; the model knows: {known}")]
    UnknownLabel { label: String, known: String },
    #[error("image {0} has no prediction to accept")]
    NothingToAccept(String),
}

impl StoreError {
    /// True when retrying later may succeed (connection refused, pool timed
    /// out, database locked).
    pub fn is_transient(&self) -> bool {
        matches!(self, StoreError::Unavailable(_))
    }
}

impl From<sqlx::Error> for StoreError {
    fn from(error: sqlx::Error) -> Self {
        if is_transient(&error) {
            StoreError::Unavailable(error)
        } else {
            StoreError::Database(error)
        }
    }
}

fn is_transient(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed => true,
        sqlx::Error::Database(db) => {
            // SQLITE_BUSY (5) and SQLITE_LOCKED (6); Postgres admin shutdown
            // and connection failure classes (57P, 08), too many connections
            // (53300), and 55000, which is what a database refusing
            // connections (ALLOW_CONNECTIONS false) answers.
            let code = db.code().unwrap_or_default();
            matches!(code.as_ref(), "5" | "6" | "517" | "262" | "53300" | "55000")
                || code.starts_with("57P")
                || code.starts_with("08")
        }
        _ => false,
    }
}

pub type StoreResult<T> = Result<T, StoreError>;

/// Opens the catalogue named by `url` and brings its schema up to date.
///
/// `sqlite://PATH` or `sqlite:PATH` opens (and creates) a SQLite file; a
/// relative path is relative to the working directory. `postgres://...` or
/// `postgresql://...` connects to Postgres; failing to reach the server is
/// [`StoreError::Unavailable`], so the caller can retry with backoff.
pub async fn open(url: &str) -> StoreResult<Arc<dyn Catalogue>> {
    let Some((scheme, _)) = url.split_once(':') else {
        return Err(StoreError::BadUrl(format!(
            "{url:?} has no scheme; use sqlite://PATH or postgres://USER@HOST/DATABASE"
        )));
    };
    match scheme {
        "sqlite" => Ok(Arc::new(SqliteCatalogue::connect(url).await?)),
        "postgres" | "postgresql" => Ok(Arc::new(PostgresCatalogue::connect(url).await?)),
        // Only the scheme: the rest of the URL may hold a password.
        _ => Err(StoreError::BadUrl(format!(
            "unsupported scheme {scheme:?}; use sqlite://PATH or postgres://USER@HOST/DATABASE"
        ))),
    }
}

/// The catalogue operations tagd needs. Implemented by [`SqliteCatalogue`]
/// and [`PostgresCatalogue`].
#[async_trait]
pub trait Catalogue: Send + Sync {
    /// Records the model (idempotent by SHA-256) and returns its id.
    async fn register_model(&self, model: &ModelRecord) -> StoreResult<ModelId>;

    /// Records discovered files in one transaction. A new path becomes
    /// `pending` (or `skipped` when `skip` is set); a known path whose size
    /// or mtime changed, or that was marked gone, becomes `pending` again; an
    /// unchanged one is left alone. Returns how many rows became pending.
    async fn record_discovered(&self, files: &[FileFacts]) -> StoreResult<u64>;

    /// Every image whose path starts with `prefix`, for reconciliation.
    async fn known_files(&self, prefix: &str) -> StoreResult<Vec<KnownFile>>;

    /// Marks these paths as gone (kept, never deleted). Returns rows changed.
    /// A pending row also becomes `failed` with `file_vanished`, so it still
    /// reaches a final state.
    async fn mark_gone(&self, paths: &[String]) -> StoreResult<u64>;

    /// Up to `limit` pending images, oldest first, skipping the ids listed
    /// in `exclude` (images already in flight).
    async fn pending(&self, limit: i64, exclude: &[ImageId]) -> StoreResult<Vec<PendingImage>>;

    /// An image already tagged by `model` whose bytes hash to `content_hash`.
    /// It may be gone, or pending again after a `touch`: what counts is that
    /// its current prediction is by `model` and about these bytes.
    async fn find_tagged_by_hash(
        &self,
        content_hash: &str,
        model: ModelId,
    ) -> StoreResult<Option<ImageId>>;

    /// Writes a batch of outcomes in one transaction.
    async fn record_outcomes(&self, model: ModelId, outcomes: &[Outcome]) -> StoreResult<()>;

    /// Flagged images without a decision, least confident first.
    async fn review_queue(&self, limit: i64) -> StoreResult<Vec<ReviewItem>>;

    /// Records a person's decision about the image at `path`, for its
    /// current bytes. Fails with `UnknownImage` when no current image has
    /// that path, `NothingToAccept` when it is not tagged, and `UnknownLabel`
    /// when a relabel names a label the predicting model does not know.
    async fn record_review(
        &self,
        path: &str,
        decision: &Decision,
        reviewer: &str,
    ) -> StoreResult<()>;

    /// Counts of images per status.
    async fn status_counts(&self) -> StoreResult<StatusCounts>;

    /// Closes the pool; for SQLite this checkpoints the WAL.
    async fn close(&self);
}
