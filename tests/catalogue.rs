//! The catalogue's behaviour, written once and run on both backends.
//!
//! Each scenario runs on SQLite (a file in a temporary folder) and on
//! Postgres (a fresh database per test, dropped afterwards), through
//! `Arc<dyn Catalogue>`, and checks the tables and views with plain SQL, the
//! way a person would. The Postgres server is `TAGD_TEST_POSTGRES_URL`
//! (default `postgres://postgres@127.0.0.1:5432/postgres`); when it cannot be
//! reached the Postgres tests say so and pass, except with `CI=true`, where
//! they fail.

mod common;

use std::collections::hash_map::RandomState;
use std::future::Future;
use std::hash::BuildHasher;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::postgres::{PgConnection, PgPool, PgRow};
use sqlx::sqlite::{SqliteConnectOptions, SqliteConnection, SqlitePool, SqliteRow};
use sqlx::types::Json;
use sqlx::{Connection, Executor, FromRow};
use tagd::store::{
    self, Catalogue, Decision, FileFacts, ImageFacts, ImageId, KnownFile, ModelId, ModelRecord,
    Outcome, Prediction, Problem, ReviewItem, ReviewRule, StatusCounts, StoreError, StoreResult,
};
use tempfile::TempDir;

use common::LABELS;

const DEFAULT_POSTGRES_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

// ---------------------------------------------------------------------------
// The harness: a catalogue, its model, and a plain pool on the same database.

#[derive(Clone)]
struct Harness {
    catalogue: Arc<dyn Catalogue>,
    model: ModelId,
    db: Db,
}

#[derive(Clone)]
enum Db {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

impl Db {
    /// Runs `sql` with `params` as `$1, $2...` and decodes every row.
    async fn rows<T>(&self, sql: &str, params: &[&str]) -> Vec<T>
    where
        T: for<'r> FromRow<'r, SqliteRow> + for<'r> FromRow<'r, PgRow> + Send + Unpin,
    {
        let result = match self {
            Db::Sqlite(pool) => {
                let query = params.iter().fold(sqlx::query_as(sql), |q, p| q.bind(*p));
                query.fetch_all(pool).await
            }
            Db::Postgres(pool) => {
                let query = params.iter().fold(sqlx::query_as(sql), |q, p| q.bind(*p));
                query.fetch_all(pool).await
            }
        };
        result.unwrap_or_else(|error| panic!("{sql}: {error}"))
    }
}

#[derive(Debug, PartialEq, FromRow)]
struct ImageRow {
    status: String,
    content_hash: Option<String>,
    width: Option<i64>,
    height: Option<i64>,
    error_code: Option<String>,
    error_message: Option<String>,
    attempts: i32,
    prediction_id: Option<i64>,
    tagged: bool,
    gone: bool,
}

impl ImageRow {
    fn state(&self) -> (&str, Option<&str>, i32) {
        (&self.status, self.error_code.as_deref(), self.attempts)
    }
}

#[derive(Debug, PartialEq, FromRow)]
struct PredictionRow {
    id: i64,
    image_id: i64,
    model_id: i64,
    content_hash: String,
    label_index: i32,
    label: String,
    confidence: f32,
    margin: f32,
    probabilities: Json<Vec<f32>>,
    needs_review: bool,
    review_reason: Option<String>,
    review_rule: String,
    preprocessing: String,
    elapsed_ms: f64,
    reused_from: Option<i64>,
}

#[derive(Debug, PartialEq, FromRow)]
struct CatalogueRow {
    image_id: i64,
    path: String,
    status: String,
    label: Option<String>,
    model_label: Option<String>,
    confidence: Option<f32>,
    needs_review: bool,
    review_reason: Option<String>,
    decision: Option<String>,
    error_code: Option<String>,
    error_message: Option<String>,
    tagged_at: Option<DateTime<Utc>>,
    model: Option<String>,
    content_hash: Option<String>,
}

impl CatalogueRow {
    /// Final label, the model's label, the decision, and the review flag.
    fn verdict(&self) -> (Option<&str>, Option<&str>, Option<&str>, bool) {
        let label = self.label.as_deref();
        (label, self.model_label.as_deref(), self.decision.as_deref(), self.needs_review)
    }
}

#[derive(Debug, PartialEq, FromRow)]
struct QueueRow {
    image_id: i64,
    path: String,
    label: String,
    confidence: f32,
    margin: f32,
    review_reason: Option<String>,
    tagged_at: DateTime<Utc>,
}

const IMAGE_SQL: &str = "
    SELECT status, content_hash, width, height, error_code, error_message, attempts,
           prediction_id, tagged_at IS NOT NULL AS tagged, gone_at IS NOT NULL AS gone
    FROM images WHERE path = $1";
const PREDICTIONS_SQL: &str = "
    SELECT p.id, p.image_id, p.model_id, p.content_hash, p.label_index, p.label, p.confidence,
           p.margin, p.probabilities, p.needs_review, p.review_reason, p.review_rule,
           p.preprocessing,
           p.elapsed_ms, p.reused_from
    FROM predictions AS p JOIN images AS i ON i.id = p.image_id
    WHERE i.path = $1 ORDER BY p.id";
const REVIEWS_SQL: &str =
    "SELECT image_id, content_hash, decision, label, reviewer FROM reviews ORDER BY id";

impl Harness {
    async fn image(&self, path: &str) -> ImageRow {
        let mut rows = self.db.rows(IMAGE_SQL, &[path]).await;
        assert_eq!(rows.len(), 1, "no image {path}");
        rows.remove(0)
    }

    async fn id(&self, path: &str) -> ImageId {
        let sql = "SELECT id FROM images WHERE path = $1";
        let rows: Vec<(ImageId,)> = self.db.rows(sql, &[path]).await;
        rows[0].0
    }

    async fn predictions(&self, path: &str) -> Vec<PredictionRow> {
        self.db.rows(PREDICTIONS_SQL, &[path]).await
    }

    async fn catalogue_view(&self) -> Vec<CatalogueRow> {
        self.db.rows("SELECT * FROM catalogue ORDER BY path", &[]).await
    }

    async fn review_queue_view(&self) -> Vec<QueueRow> {
        self.db.rows("SELECT * FROM review_queue ORDER BY confidence", &[]).await
    }

    async fn reviews(&self) -> Vec<(i64, String, String, String, String)> {
        self.db.rows(REVIEWS_SQL, &[]).await
    }

    async fn discover(&self, files: &[FileFacts]) -> u64 {
        self.catalogue.record_discovered(files).await.unwrap()
    }

    /// Discovers `paths` (100 bytes, mtime 1) and returns their ids.
    async fn discover_paths(&self, paths: &[&str]) -> Vec<ImageId> {
        let files: Vec<FileFacts> = paths.iter().map(|path| file(path, 100, 1)).collect();
        self.discover(&files).await;
        let mut ids = Vec::new();
        for path in paths {
            ids.push(self.id(path).await);
        }
        ids
    }

    async fn record(&self, outcomes: &[Outcome]) {
        self.catalogue.record_outcomes(self.model, outcomes).await.unwrap();
    }

    async fn pending(&self, limit: i64, exclude: &[ImageId]) -> Vec<String> {
        let pending = self.catalogue.pending(limit, exclude).await.unwrap();
        pending.into_iter().map(|image| image.path).collect()
    }

    async fn register(&self, sha256: &str) -> ModelId {
        let model = model_record(sha256);
        self.catalogue.register_model(&model).await.unwrap()
    }

    async fn mark_gone(&self, paths: &[&str]) -> u64 {
        let paths: Vec<String> = paths.iter().map(|path| path.to_string()).collect();
        self.catalogue.mark_gone(&paths).await.unwrap()
    }

    async fn counts(&self) -> StatusCounts {
        self.catalogue.status_counts().await.unwrap()
    }

    async fn review(&self, path: &str, decision: Decision) -> StoreResult<()> {
        self.catalogue.record_review(path, &decision, "ana").await
    }
}

fn model_record(sha256: &str) -> ModelRecord {
    ModelRecord {
        name: "fashion-mnist".into(),
        version: "1.0.0".into(),
        sha256: sha256.into(),
        preprocessing: "fmnist-v1".into(),
        labels: LABELS.map(String::from).to_vec(),
    }
}

fn file(path: &str, size_bytes: i64, mtime_ns: i64) -> FileFacts {
    let path = path.into();
    FileFacts { path, size_bytes, mtime_ns, skip: None }
}

fn problem(code: &str, message: &str) -> Problem {
    Problem { code: code.into(), message: message.into() }
}

/// Counts in the order pending, tagged, failed, skipped, gone, needs_review.
fn counts(pending: i64, tagged: i64, failed: i64, skipped: i64, gone: i64) -> StatusCounts {
    StatusCounts { pending, tagged, failed, skipped, gone, needs_review: 0 }
}

/// `LABELS[index]` with `confidence`, the rest of the mass on the next
/// label; flagged when `review_reason` is set.
fn prediction(index: usize, confidence: f32, review_reason: Option<&str>) -> Prediction {
    let mut probabilities = vec![0.0; LABELS.len()];
    probabilities[index] = confidence;
    probabilities[(index + 1) % LABELS.len()] = 1.0 - confidence;
    Prediction {
        label_index: index as i32,
        label: LABELS[index].into(),
        confidence,
        margin: confidence - (1.0 - confidence),
        probabilities,
        needs_review: review_reason.is_some(),
        review_reason: review_reason.map(str::to_owned),
        review_rule: ReviewRule::Studio,
    }
}

fn flagged(index: usize, confidence: f32) -> Prediction {
    prediction(index, confidence, Some("low_confidence"))
}

fn tagged(image: ImageId, hash: &str, prediction: Prediction) -> Outcome {
    let facts = ImageFacts { width: 640, height: 480 };
    let content_hash = hash.into();
    Outcome::Tagged { image, content_hash, facts, prediction, elapsed_ms: 12.5 }
}

fn reused(image: ImageId, hash: &str, from_image: ImageId) -> Outcome {
    let content_hash = hash.into();
    Outcome::Reused { image, content_hash, from_image }
}

fn failed(image: ImageId, hash: Option<&str>, code: &str) -> Outcome {
    let problem = problem(code, &format!("{code} happened"));
    Outcome::Failed { image, content_hash: hash.map(str::to_owned), problem }
}

// ---------------------------------------------------------------------------
// Scenarios, each run on both backends (see `on_both_backends!` below).

async fn discovery_queues_new_files(h: Harness) {
    let mut files = vec![file("/p/a.jpg", 100, 1), file("/p/b.jpg", 200, 2)];
    let skip = Some(problem("invalid_name", "the name is not UTF-8"));
    files.push(FileFacts { skip, ..file("/p/\\xff.jpg", 300, 3) });
    assert_eq!(h.discover(&files).await, 2);

    let pending = h.catalogue.pending(10, &[]).await.unwrap();
    assert_eq!(pending.len(), 2);
    assert!(pending[0].id < pending[1].id);
    assert_eq!(pending[0].content_hash, None);
    let a = pending[0].id;
    assert_eq!(h.pending(10, &[]).await, ["/p/a.jpg", "/p/b.jpg"]);
    assert_eq!(h.pending(10, &[a]).await, ["/p/b.jpg"]);
    assert_eq!(h.pending(1, &[]).await, ["/p/a.jpg"]);
    assert_eq!(h.pending(1, &[a]).await, ["/p/b.jpg"]);

    let skipped = ImageRow {
        status: "skipped".into(),
        content_hash: None,
        width: None,
        height: None,
        error_code: Some("invalid_name".into()),
        error_message: Some("the name is not UTF-8".into()),
        attempts: 0,
        prediction_id: None,
        tagged: false,
        gone: false,
    };
    assert_eq!(h.image("/p/\\xff.jpg").await, skipped);
    assert_eq!(h.counts().await, counts(2, 0, 0, 1, 0));
}

async fn rediscovery_requeues_only_changed_files(h: Harness) {
    let files = [file("/p/a.jpg", 100, 1), file("/p/b.jpg", 200, 2), file("/p/c.jpg", 300, 3)];
    assert_eq!(h.discover(&files).await, 3);
    // A pending file seen again is not queued twice.
    assert_eq!(h.discover(&files).await, 0);
    assert_eq!(h.pending(10, &[]).await.len(), 3);

    let (a, b, c) = (h.id("/p/a.jpg").await, h.id("/p/b.jpg").await, h.id("/p/c.jpg").await);
    let outcomes = [
        tagged(a, "hash-a", prediction(1, 0.9, None)),
        failed(b, Some("hash-b"), "truncated_image"),
        tagged(c, "hash-c", prediction(2, 0.9, None)),
    ];
    h.record(&outcomes).await;

    // Unchanged files are left alone; c grew.
    let seen_again = [file("/p/a.jpg", 100, 1), file("/p/b.jpg", 200, 2), file("/p/c.jpg", 301, 3)];
    assert_eq!(h.discover(&seen_again).await, 1);
    let pending = h.catalogue.pending(10, &[]).await.unwrap();
    assert_eq!((pending.len(), pending[0].path.as_str()), (1, "/p/c.jpg"));
    // The hash of the bytes last tagged lets the pipeline spot a mere touch.
    assert_eq!(pending[0].content_hash.as_deref(), Some("hash-c"));
    assert_eq!(h.image("/p/a.jpg").await.state(), ("tagged", None, 0));
    assert_eq!(h.image("/p/b.jpg").await.state(), ("failed", Some("truncated_image"), 1));

    // A new mtime requeues a failed file with a clean slate.
    assert_eq!(h.discover(&[file("/p/b.jpg", 200, 5)]).await, 1);
    assert_eq!(h.image("/p/b.jpg").await.state(), ("pending", None, 0));
}

async fn outcomes_set_status_and_codes(h: Harness) {
    let ids = h.discover_paths(&["/p/a.jpg", "/p/b.jpg", "/p/c.jpg", "/p/d.jpg"]).await;
    let not_an_image = problem("unsupported_format", "not an image");
    let outcomes = [
        tagged(ids[0], "hash-a", prediction(6, 0.875, None)),
        failed(ids[1], Some("hash-b"), "too_many_pixels"),
        Outcome::Skipped { image: ids[2], problem: not_an_image },
        failed(ids[3], None, "unreadable"),
    ];
    h.record(&outcomes).await;

    let a = h.image("/p/a.jpg").await;
    let prediction_id = a.prediction_id.expect("a tagged image has a current prediction");
    let expected = ImageRow {
        status: "tagged".into(),
        content_hash: Some("hash-a".into()),
        width: Some(640),
        height: Some(480),
        error_code: None,
        error_message: None,
        attempts: 0,
        prediction_id: Some(prediction_id),
        tagged: true,
        gone: false,
    };
    assert_eq!(a, expected);
    let mut probabilities = vec![0.0; 10];
    (probabilities[6], probabilities[7]) = (0.875, 0.125);
    let expected = PredictionRow {
        id: prediction_id,
        image_id: ids[0],
        model_id: h.model,
        content_hash: "hash-a".into(),
        label_index: 6,
        label: "Shirt".into(),
        confidence: 0.875,
        margin: 0.75,
        probabilities: Json(probabilities),
        needs_review: false,
        review_reason: None,
        review_rule: "studio".into(),
        preprocessing: "fmnist-v1".into(),
        elapsed_ms: 12.5,
        reused_from: None,
    };
    assert_eq!(h.predictions("/p/a.jpg").await, [expected]);

    let b = h.image("/p/b.jpg").await;
    assert_eq!(b.state(), ("failed", Some("too_many_pixels"), 1));
    assert_eq!(b.error_message.as_deref(), Some("too_many_pixels happened"));
    assert_eq!(
        (b.content_hash.as_deref(), b.prediction_id, b.tagged),
        (Some("hash-b"), None, false)
    );
    let c = h.image("/p/c.jpg").await;
    assert_eq!(c.state(), ("skipped", Some("unsupported_format"), 0));
    assert_eq!(c.error_message.as_deref(), Some("not an image"));
    let d = h.image("/p/d.jpg").await;
    assert_eq!((d.state(), d.content_hash.as_deref()), (("failed", Some("unreadable"), 1), None));

    // Failing again counts the attempt.
    h.record(&[failed(ids[1], Some("hash-b"), "too_many_pixels")]).await;
    assert_eq!(h.image("/p/b.jpg").await.attempts, 2);
    // A tagged image that now fails loses its current prediction, not its history.
    h.record(&[failed(ids[0], Some("hash-a2"), "truncated_image")]).await;
    let a = h.image("/p/a.jpg").await;
    assert_eq!(
        (a.state(), a.prediction_id, a.tagged),
        (("failed", Some("truncated_image"), 1), None, false)
    );
    assert_eq!(h.predictions("/p/a.jpg").await.len(), 1);
    assert_eq!(h.counts().await, counts(0, 0, 3, 1, 0));
}

async fn vanished_files_are_kept_and_reach_a_final_state(h: Harness) {
    let ids = h.discover_paths(&["/p/a.jpg", "/p/b.jpg"]).await;
    h.record(&[tagged(ids[1], "hash-b", prediction(0, 0.9, None))]).await;
    h.record(&[Outcome::Vanished { image: ids[0] }, Outcome::Vanished { image: ids[1] }]).await;

    let a = h.image("/p/a.jpg").await;
    assert_eq!((a.state(), a.gone), (("failed", Some("file_vanished"), 0), true));
    let b = h.image("/p/b.jpg").await;
    assert_eq!((b.state(), b.gone), (("tagged", None, 0), true));
    assert!(b.prediction_id.is_some());
    assert!(h.pending(10, &[]).await.is_empty());
    assert_eq!(h.counts().await, counts(0, 0, 0, 0, 2));
    assert!(h.catalogue_view().await.is_empty());
}

async fn reuse_copies_the_prediction(h: Harness) {
    let other_model = h.register("sha-2").await;
    let ids = h.discover_paths(&["/p/a.jpg", "/p/b.jpg", "/p/c.jpg", "/p/d.jpg"]).await;
    // A phone photo, judged by the scene rule: the copy says so too.
    let scene = Prediction { review_rule: ReviewRule::Scene, ..flagged(3, 0.5625) };
    h.record(&[tagged(ids[0], "hash-a", scene)]).await;

    let find = |hash: &'static str, model| h.catalogue.find_tagged_by_hash(hash, model);
    assert_eq!(find("hash-a", h.model).await.unwrap(), Some(ids[0]));
    assert_eq!(find("hash-x", h.model).await.unwrap(), None);
    assert_eq!(find("hash-a", other_model).await.unwrap(), None);

    h.record(&[reused(ids[1], "hash-a", ids[0])]).await;
    let source = h.predictions("/p/a.jpg").await.remove(0);
    assert_eq!(source.review_rule, "scene");
    let b = h.image("/p/b.jpg").await;
    let copy = b.prediction_id.expect("a reused image has a current prediction");
    assert_ne!(copy, source.id);
    assert_eq!((b.state(), b.content_hash.as_deref()), (("tagged", None, 0), Some("hash-a")));
    assert_eq!((b.width, b.height, b.tagged), (Some(640), Some(480), true));
    let reused_from = Some(source.id);
    let expected =
        PredictionRow { id: copy, image_id: ids[1], elapsed_ms: 0.0, reused_from, ..source };
    assert_eq!(h.predictions("/p/b.jpg").await, [expected]);

    // A gone image's prediction is still good for the same bytes.
    h.mark_gone(&["/p/a.jpg"]).await;
    assert_eq!(find("hash-a", h.model).await.unwrap(), Some(ids[0]));

    // A source with nothing to copy (d is pending) fails only its own image.
    h.record(&[reused(ids[2], "hash-c", ids[3])]).await;
    let c = h.image("/p/c.jpg").await;
    assert_eq!(c.state(), ("failed", Some("reuse_source_missing"), 1));
}

async fn views_show_what_a_person_expects(h: Harness) {
    let paths = ["/p/a.jpg", "/p/b.jpg", "/p/c.jpg", "/p/d.jpg", "/p/e.jpg"];
    let ids = h.discover_paths(&paths).await;
    let unsure = prediction(2, 0.53125, Some("low_confidence,small_margin"));
    let outcomes = [
        tagged(ids[0], "hash-a", prediction(1, 0.96875, None)),
        tagged(ids[1], "hash-b", flagged(6, 0.40625)),
        tagged(ids[2], "hash-c", unsure),
        failed(ids[3], Some("hash-d"), "truncated_image"),
    ];
    h.record(&outcomes).await;

    let rows = h.catalogue_view().await;
    let a_minute_ago = Utc::now() - chrono::Duration::minutes(1);
    for row in &rows[..3] {
        let tagged_at = row.tagged_at.expect("a tagged row has tagged_at");
        assert!(tagged_at > a_minute_ago && tagged_at <= Utc::now(), "{tagged_at}");
    }
    let row = |index: usize, status: &str| CatalogueRow {
        image_id: ids[index],
        path: paths[index].into(),
        status: status.into(),
        label: None,
        model_label: None,
        confidence: None,
        needs_review: false,
        review_reason: None,
        decision: None,
        error_code: None,
        error_message: None,
        tagged_at: rows[index].tagged_at,
        model: None,
        content_hash: None,
    };
    let tagged_row = |index: usize, label: &str, confidence: f32, reason: Option<&str>| {
        let hash = format!("hash-{}", ["a", "b", "c"][index]);
        CatalogueRow {
            label: Some(label.into()),
            model_label: Some(label.into()),
            confidence: Some(confidence),
            needs_review: reason.is_some(),
            review_reason: reason.map(str::to_owned),
            model: Some("fashion-mnist".into()),
            content_hash: Some(hash),
            ..row(index, "tagged")
        }
    };
    let failed_row = CatalogueRow {
        error_code: Some("truncated_image".into()),
        error_message: Some("truncated_image happened".into()),
        content_hash: Some("hash-d".into()),
        ..row(3, "failed")
    };
    let expected = [
        tagged_row(0, "Trouser", 0.96875, None),
        tagged_row(1, "Shirt", 0.40625, Some("low_confidence")),
        tagged_row(2, "Pullover", 0.53125, Some("low_confidence,small_margin")),
        failed_row,
        row(4, "pending"),
    ];
    assert_eq!(rows, expected);

    let queue = h.review_queue_view().await;
    let expected = QueueRow {
        image_id: ids[1],
        path: "/p/b.jpg".into(),
        label: "Shirt".into(),
        confidence: 0.40625,
        margin: -0.1875,
        review_reason: Some("low_confidence".into()),
        tagged_at: rows[1].tagged_at.unwrap(),
    };
    assert_eq!(queue.len(), 2);
    assert_eq!(queue[0], expected);
    assert_eq!((queue[1].image_id, queue[1].confidence), (ids[2], 0.53125));

    let first = ReviewItem {
        image_id: ids[1],
        path: "/p/b.jpg".into(),
        label: "Shirt".into(),
        confidence: 0.40625,
        review_reason: Some("low_confidence".into()),
    };
    assert_eq!(h.catalogue.review_queue(1).await.unwrap(), [first]);
    let expected = StatusCounts { needs_review: 2, ..counts(1, 3, 1, 0, 0) };
    assert_eq!(h.counts().await, expected);
}

async fn a_decision_survives_a_retag(h: Harness) {
    let ids = h.discover_paths(&["/p/a.jpg", "/p/b.jpg"]).await;
    let outcomes =
        [tagged(ids[0], "hash-a", flagged(6, 0.40625)), tagged(ids[1], "hash-b", flagged(4, 0.5))];
    h.record(&outcomes).await;
    let relabel = |label: &str| Decision::Relabel(label.into());
    h.review("/p/a.jpg", relabel("Dress")).await.unwrap();
    h.catalogue.record_review("/p/b.jpg", &Decision::Accept, "ben").await.unwrap();

    let rows = h.catalogue_view().await;
    assert_eq!(rows[0].verdict(), (Some("Dress"), Some("Shirt"), Some("relabel"), false));
    assert_eq!(rows[1].verdict(), (Some("Coat"), Some("Coat"), Some("accept"), false));
    assert!(h.review_queue_view().await.is_empty());
    assert_eq!(h.counts().await.needs_review, 0);

    // Touched: pending again, with no stale label while it waits...
    assert_eq!(h.discover(&[file("/p/a.jpg", 100, 9)]).await, 1);
    let rows = h.catalogue_view().await;
    assert_eq!(
        (rows[0].status.as_str(), rows[0].verdict()),
        ("pending", (None, None, None, false))
    );
    // ...and the same bytes tagged again keep the person's decision.
    h.record(&[tagged(ids[0], "hash-a", flagged(6, 0.40625))]).await;
    let rows = h.catalogue_view().await;
    assert_eq!(rows[0].verdict(), (Some("Dress"), Some("Shirt"), Some("relabel"), false));
    assert_eq!(h.predictions("/p/a.jpg").await.len(), 2);

    // The newest decision wins.
    h.review("/p/a.jpg", relabel("Pullover")).await.unwrap();
    assert_eq!(h.catalogue_view().await[0].label.as_deref(), Some("Pullover"));

    // New bytes: the decisions were about other bytes; the flag is back.
    assert_eq!(h.discover(&[file("/p/a.jpg", 120, 9)]).await, 1);
    h.record(&[tagged(ids[0], "hash-a2", flagged(6, 0.40625))]).await;
    let rows = h.catalogue_view().await;
    assert_eq!(rows[0].verdict(), (Some("Shirt"), Some("Shirt"), None, true));
    assert_eq!(h.review_queue_view().await.len(), 1);

    let review = |image: ImageId, hash: &str, decision: &str, label: &str, reviewer: &str| {
        let text = |value: &str| value.to_owned();
        (image, text(hash), text(decision), text(label), text(reviewer))
    };
    let expected = [
        review(ids[0], "hash-a", "relabel", "Dress", "ana"),
        review(ids[1], "hash-b", "accept", "Coat", "ben"),
        review(ids[0], "hash-a", "relabel", "Pullover", "ana"),
    ];
    assert_eq!(h.reviews().await, expected);
}

async fn review_mistakes_are_refused(h: Harness) {
    let ids = h.discover_paths(&["/p/a.jpg", "/p/b.jpg", "/p/c.jpg"]).await;
    let outcomes =
        [tagged(ids[0], "hash-a", flagged(6, 0.40625)), failed(ids[1], None, "truncated_image")];
    h.record(&outcomes).await;

    match h.review("/p/nope.jpg", Decision::Accept).await {
        Err(StoreError::UnknownImage(path)) => assert_eq!(path, "/p/nope.jpg"),
        other => panic!("expected UnknownImage, got {other:?}"),
    }
    match h.review("/p/a.jpg", Decision::Relabel("Jumper".into())).await {
        Err(StoreError::UnknownLabel { label, known }) => {
            assert_eq!(label, "Jumper");
            assert_eq!(known, LABELS.join(", "));
        }
        other => panic!("expected UnknownLabel, got {other:?}"),
    }
    // b failed, c is still pending: neither has a prediction to decide on.
    for path in ["/p/b.jpg", "/p/c.jpg"] {
        match h.review(path, Decision::Relabel("Dress".into())).await {
            Err(StoreError::NothingToAccept(refused)) => assert_eq!(refused, path),
            other => panic!("expected NothingToAccept for {path}, got {other:?}"),
        }
    }
    h.mark_gone(&["/p/a.jpg"]).await;
    let gone = h.review("/p/a.jpg", Decision::Accept).await;
    assert!(matches!(gone, Err(StoreError::UnknownImage(_))), "{gone:?}");
    assert!(h.reviews().await.is_empty());
}

async fn gone_files_are_marked_not_deleted(h: Harness) {
    let ids = h.discover_paths(&["/p/a.jpg", "/p/b.jpg", "/p/c.jpg"]).await;
    h.record(&[tagged(ids[0], "hash-a", prediction(8, 0.9, None))]).await;

    let gone = ["/p/a.jpg", "/p/b.jpg", "/p/never-seen.jpg"];
    assert_eq!(h.mark_gone(&gone).await, 2);
    assert_eq!(h.mark_gone(&gone).await, 0);

    let known =
        |path: &str, gone| KnownFile { path: path.into(), size_bytes: 100, mtime_ns: 1, gone };
    let expected = [known("/p/a.jpg", true), known("/p/b.jpg", true), known("/p/c.jpg", false)];
    assert_eq!(h.catalogue.known_files("/p/").await.unwrap(), expected);
    let a = h.image("/p/a.jpg").await;
    assert_eq!((a.state(), a.gone, a.prediction_id.is_some()), (("tagged", None, 0), true, true));
    let b = h.image("/p/b.jpg").await;
    assert_eq!((b.state(), b.gone), (("failed", Some("file_vanished"), 0), true));

    let view = h.catalogue_view().await;
    assert_eq!(view.iter().map(|row| row.path.as_str()).collect::<Vec<_>>(), ["/p/c.jpg"]);
    assert_eq!(h.counts().await, counts(1, 0, 0, 0, 2));

    // The file comes back unchanged: it is tagged again all the same.
    assert_eq!(h.discover(&[file("/p/a.jpg", 100, 1)]).await, 1);
    let a = h.image("/p/a.jpg").await;
    assert_eq!((a.state(), a.gone), (("pending", None, 0), false));
}

async fn known_files_match_the_prefix_literally(h: Harness) {
    let all = ["/photos/a/1.jpg", "/photos/a_b/2.jpg", "/photos/ab/3.jpg", "/Photos/a/4.jpg"];
    h.discover_paths(&all).await;
    let catalogue = &h.catalogue;
    let under = |prefix: &'static str| async move {
        let files = catalogue.known_files(prefix).await.unwrap();
        files.into_iter().map(|file| file.path).collect::<Vec<_>>()
    };
    assert_eq!(under("/photos/a/").await, ["/photos/a/1.jpg"]);
    assert_eq!(under("/photos/a_").await, ["/photos/a_b/2.jpg"]);
    assert_eq!(under("/photos/").await, all[..3]);
    assert_eq!(under("").await, all);
}

async fn models_are_registered_once(h: Harness) {
    let again = h.register("sha-1").await;
    assert_eq!(again, h.model);
    let other = h.register("sha-2").await;
    assert_ne!(other, h.model);

    let sql = "SELECT name, version, sha256, preprocessing, labels FROM models ORDER BY id";
    type ModelRow = (String, String, String, String, Json<Vec<String>>);
    let rows: Vec<ModelRow> = h.db.rows(sql, &[]).await;
    let row = |sha: &str| {
        let text = |value: &str| value.to_owned();
        let labels = Json(LABELS.map(String::from).to_vec());
        (text("fashion-mnist"), text("1.0.0"), text(sha), text("fmnist-v1"), labels)
    };
    assert_eq!(rows, [row("sha-1"), row("sha-2")]);
}

// ---------------------------------------------------------------------------
// Running a scenario on each backend.

async fn on_sqlite<F, Fut>(scenario: F)
where
    F: FnOnce(Harness) -> Fut,
    Fut: Future<Output = ()>,
{
    let (harness, _folder) = sqlite_harness().await;
    scenario(harness.clone()).await;
    harness.catalogue.close().await;
}

async fn sqlite_harness() -> (Harness, TempDir) {
    let folder = tempfile::tempdir().unwrap();
    let path = folder.path().join("catalogue.db");
    let catalogue = store::open(&format!("sqlite://{}", path.display())).await.unwrap();
    let model = catalogue.register_model(&model_record("sha-1")).await.unwrap();
    let options = SqliteConnectOptions::new().filename(&path);
    let db = Db::Sqlite(SqlitePool::connect_with(options).await.unwrap());
    (Harness { catalogue, model, db }, folder)
}

/// Runs `scenario` in a fresh Postgres database, dropped afterwards even
/// when the scenario fails.
async fn on_postgres<F, Fut>(scenario: F)
where
    F: FnOnce(Harness) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let Some((server_url, mut server)) = postgres_server().await else {
        return;
    };
    let name = format!("tagd_test_{:016x}", RandomState::new().hash_one(std::process::id()));
    server.execute(format!("CREATE DATABASE {name}").as_str()).await.unwrap();
    let url = with_database(&server_url, &name);

    let catalogue = store::open(&url).await.unwrap();
    let model = catalogue.register_model(&model_record("sha-1")).await.unwrap();
    let pool = PgPool::connect(&url).await.unwrap();
    let harness = Harness { catalogue, model, db: Db::Postgres(pool.clone()) };
    let result = tokio::spawn(scenario(harness.clone())).await;

    harness.catalogue.close().await;
    pool.close().await;
    let drop = format!("DROP DATABASE {name} WITH (FORCE)");
    server.execute(drop.as_str()).await.unwrap();
    if let Err(failure) = result {
        std::panic::resume_unwind(failure.into_panic());
    }
}

/// A connection to the test server, or `None` (after saying why) when there
/// is none and this is not CI.
async fn postgres_server() -> Option<(String, PgConnection)> {
    let url = std::env::var("TAGD_TEST_POSTGRES_URL").unwrap_or(DEFAULT_POSTGRES_URL.into());
    let attempt = tokio::time::timeout(Duration::from_secs(5), PgConnection::connect(&url)).await;
    let error = match attempt {
        Ok(Ok(connection)) => return Some((url, connection)),
        Ok(Err(error)) => error.to_string(),
        Err(_) => "no answer within 5 s".to_owned(),
    };
    let shown = redact(&url);
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("the Postgres test server at {shown} is unreachable ({error}); CI needs it");
    }
    eprintln!(
        "skipping a Postgres test: no server at {shown} ({error}); set TAGD_TEST_POSTGRES_URL"
    );
    None
}

/// `url` with any password hidden, for messages.
fn redact(url: &str) -> String {
    let start = url.find("://").map_or(0, |scheme| scheme + 3);
    match url.rfind('@').filter(|&at| at > start) {
        Some(at) => match url[start..at].split_once(':') {
            Some((user, _)) => format!("{}{user}:***{}", &url[..start], &url[at..]),
            None => url.to_owned(),
        },
        None => url.to_owned(),
    }
}

/// `url` with its database name replaced by `name`.
fn with_database(url: &str, name: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, format!("?{query}")),
        None => (url, String::new()),
    };
    let authority = base.find("://").map_or(0, |scheme| scheme + 3);
    let server = match base[authority..].find('/') {
        Some(slash) => &base[..authority + slash],
        None => base,
    };
    format!("{server}/{name}{query}")
}

/// Declares each scenario as a test on SQLite and a test on Postgres.
macro_rules! on_both_backends {
    ($($scenario:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test]
                async fn $scenario() {
                    super::on_sqlite(super::$scenario).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test]
                async fn $scenario() {
                    super::on_postgres(super::$scenario).await;
                }
            )*
        }
    };
}

on_both_backends!(
    discovery_queues_new_files,
    rediscovery_requeues_only_changed_files,
    outcomes_set_status_and_codes,
    vanished_files_are_kept_and_reach_a_final_state,
    reuse_copies_the_prediction,
    views_show_what_a_person_expects,
    a_decision_survives_a_retag,
    review_mistakes_are_refused,
    gone_files_are_marked_not_deleted,
    known_files_match_the_prefix_literally,
    models_are_registered_once,
);

// ---------------------------------------------------------------------------
// SQLite next to a person in the `sqlite3` shell, and opening by URL.

fn sqlite_pool(harness: &Harness) -> &SqlitePool {
    match &harness.db {
        Db::Sqlite(pool) => pool,
        Db::Postgres(_) => unreachable!("a SQLite harness"),
    }
}

/// A connection like the `sqlite3` shell's: none of tagd's settings.
async fn shell(harness: &Harness) -> SqliteConnection {
    let path = sqlite_pool(harness).connect_options().get_filename().to_owned();
    let options = SqliteConnectOptions::new().filename(path);
    SqliteConnection::connect_with(&options).await.unwrap()
}

async fn count_images(connection: &mut SqliteConnection) -> i64 {
    let sql = "SELECT COUNT(*) FROM images";
    sqlx::query_scalar(sql).fetch_one(connection).await.unwrap()
}

#[tokio::test]
async fn sqlite_database_is_in_wal_mode() {
    let (harness, _folder) = sqlite_harness().await;
    let pool = sqlite_pool(&harness);
    let mode: String = sqlx::query_scalar("PRAGMA journal_mode").fetch_one(pool).await.unwrap();
    assert_eq!(mode, "wal");
}

#[tokio::test]
async fn sqlite_reader_in_the_shell_blocks_no_write() {
    let (harness, _folder) = sqlite_harness().await;
    let mut shell = shell(&harness).await;
    shell.execute("BEGIN").await.unwrap();
    assert_eq!(count_images(&mut shell).await, 0);

    // Far below the busy timeout: waiting for the reader at all fails this.
    let quick = Duration::from_secs(2);
    let files = [file("/p/a.jpg", 100, 1), file("/p/b.jpg", 100, 1)];
    let discovered = tokio::time::timeout(quick, harness.catalogue.record_discovered(&files));
    assert_eq!(discovered.await.expect("a write waited for a reader").unwrap(), 2);
    let outcome = tagged(harness.id("/p/a.jpg").await, "hash-a", prediction(0, 0.9, None));
    let recorded = harness.catalogue.record_outcomes(harness.model, std::slice::from_ref(&outcome));
    tokio::time::timeout(quick, recorded).await.expect("a write waited for a reader").unwrap();

    // The shell keeps its snapshot until its transaction ends.
    assert_eq!(count_images(&mut shell).await, 0);
    shell.execute("COMMIT").await.unwrap();
    assert_eq!(count_images(&mut shell).await, 2);
    let sql = "SELECT label FROM catalogue WHERE path = '/p/a.jpg'";
    let label: String = sqlx::query_scalar(sql).fetch_one(&mut shell).await.unwrap();
    assert_eq!(label, "T-shirt/top");

    // Times are ISO-8601 UTC text with milliseconds, as the schema's defaults.
    let sql = "SELECT tagged_at FROM images WHERE path = '/p/a.jpg'";
    let text: String = sqlx::query_scalar(sql).fetch_one(&mut shell).await.unwrap();
    let parsed = chrono::NaiveDateTime::parse_from_str(&text, "%Y-%m-%dT%H:%M:%S%.3fZ");
    assert!(parsed.is_ok() && text.len() == 24, "{text}");
}

/// A review reads the prediction, then writes the decision. Begun as a
/// plain deferred transaction it would fail with SQLITE_BUSY the moment the
/// shell commits its change under it; begun IMMEDIATE it waits its turn.
#[tokio::test]
async fn sqlite_review_waits_for_a_write_in_the_shell() {
    let (harness, _folder) = sqlite_harness().await;
    let ids = harness.discover_paths(&["/p/a.jpg"]).await;
    harness.record(&[tagged(ids[0], "hash-a", flagged(6, 0.40625))]).await;
    let mut shell = shell(&harness).await;
    shell.execute("BEGIN IMMEDIATE").await.unwrap();
    let touch = "UPDATE images SET updated_at = '2026-12-03T10:00:00.000Z'";
    shell.execute(touch).await.unwrap();

    let catalogue = harness.catalogue.clone();
    let review =
        tokio::spawn(
            async move { catalogue.record_review("/p/a.jpg", &Decision::Accept, "ana").await },
        );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!review.is_finished(), "the review should wait for the shell's lock");
    // Reads carry on while the lock is held.
    let counts = tokio::time::timeout(Duration::from_secs(2), harness.catalogue.status_counts());
    let counts = counts.await.expect("a read waited for the lock").unwrap();
    assert_eq!(counts.needs_review, 1);

    shell.execute("COMMIT").await.unwrap();
    let written = tokio::time::timeout(Duration::from_secs(5), review).await;
    written.expect("the review never resumed").unwrap().unwrap();
    assert_eq!(harness.counts().await.needs_review, 0);
}

#[tokio::test]
async fn open_accepts_both_sqlite_url_forms() {
    let folder = tempfile::tempdir().unwrap();
    for (index, prefix) in ["sqlite:", "sqlite://"].iter().enumerate() {
        let path = folder.path().join(format!("{index}.db"));
        let catalogue = store::open(&format!("{prefix}{}", path.display())).await.unwrap();
        assert_eq!(catalogue.status_counts().await.unwrap(), StatusCounts::default());
        catalogue.close().await;
        assert!(path.is_file(), "{prefix} did not create {}", path.display());
    }
}

#[tokio::test]
async fn sqlite_in_memory_catalogue_works() {
    let catalogue = store::open("sqlite::memory:").await.unwrap();
    let files = [file("/p/a.jpg", 100, 1)];
    assert_eq!(catalogue.record_discovered(&files).await.unwrap(), 1);
    assert_eq!(catalogue.pending(10, &[]).await.unwrap().len(), 1);
    catalogue.close().await;
}

#[tokio::test]
async fn open_explains_bad_urls() {
    async fn message(url: &str) -> String {
        match store::open(url).await {
            Err(error @ StoreError::BadUrl(_)) => error.to_string(),
            Err(other) => panic!("expected BadUrl for {url}, got {other:?}"),
            Ok(_) => panic!("{url} opened"),
        }
    }
    let unknown = message("mysql://root:secret@localhost/tags").await;
    assert!(unknown.contains("\"mysql\""), "{unknown}");
    assert!(!unknown.contains("secret"), "{unknown}");
    assert!(message("catalogue.db").await.contains("no scheme"));
    let missing = message("sqlite:///no/such/folder/catalogue.db").await;
    assert!(missing.contains("/no/such/folder"), "{missing}");
}

#[tokio::test]
async fn unreachable_postgres_is_transient() {
    // Nothing listens on port 1; the pool gives up after its acquire timeout.
    match store::open("postgres://postgres@127.0.0.1:1/postgres").await {
        Err(error) => assert!(error.is_transient(), "{error:?}"),
        Ok(_) => panic!("connected to port 1"),
    }
}
