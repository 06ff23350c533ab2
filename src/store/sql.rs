//! The SQL both backends run, written once.
//!
//! Both migrations create the same tables, columns and views, and SQLite
//! accepts Postgres-style `$N` placeholders, so every statement here runs
//! unchanged on either backend. `shared.rs` runs them.

use chrono::{DateTime, DurationRound, TimeDelta, Utc};
use sqlx::encode::IsNull;
use sqlx::error::BoxDynError;
use sqlx::postgres::{PgArgumentBuffer, PgTypeInfo};
use sqlx::sqlite::{SqliteArgumentValue, SqliteTypeInfo};
use sqlx::{Encode, Postgres, Sqlite, Type};

pub(super) const UPSERT_MODEL: &str = "
    INSERT INTO models (name, version, sha256, preprocessing, labels, first_used_at)
    VALUES ($1, $2, $3, $4, $5, $6)
    ON CONFLICT (sha256) DO UPDATE SET sha256 = excluded.sha256
    RETURNING id";

/// Inserts a new file, or requeues a known one whose size or mtime changed or
/// that had been marked gone. Returns no row when nothing changed.
pub(super) const UPSERT_DISCOVERED: &str = "
    INSERT INTO images
        (path, size_bytes, mtime_ns, status, error_code, error_message, discovered_at, updated_at)
    VALUES ($1, $2, $3, $4, $5, $6, $7, $7)
    ON CONFLICT (path) DO UPDATE SET
        size_bytes = excluded.size_bytes,
        mtime_ns = excluded.mtime_ns,
        status = excluded.status,
        error_code = excluded.error_code,
        error_message = excluded.error_message,
        attempts = 0,
        gone_at = NULL,
        updated_at = excluded.updated_at
    WHERE images.size_bytes <> excluded.size_bytes
       OR images.mtime_ns <> excluded.mtime_ns
       OR images.gone_at IS NOT NULL
    RETURNING id";

// `substr` rather than `LIKE`: paths may contain `%` and `_`, and SQLite's
// LIKE ignores ASCII case.
pub(super) const KNOWN_FILES: &str = "
    SELECT path, size_bytes, mtime_ns, gone_at IS NOT NULL
    FROM images
    WHERE substr(path, 1, length($1)) = $1
    ORDER BY id";

/// Marks a row gone. A pending row must still reach a final state, and its
/// file is no longer there to read, so it fails with `file_vanished`. Rows
/// that are gone are never pending (discovery clears `gone_at`), so the
/// `gone_at IS NULL` guard also makes a second call a no-op.
macro_rules! mark_gone_where {
    ($condition:literal) => {
        concat!(
            "UPDATE images SET
                gone_at = $2,
                updated_at = $2,
                status = CASE WHEN status = 'pending' THEN 'failed' ELSE status END,
                error_code = CASE WHEN status = 'pending' THEN 'file_vanished' ELSE error_code END,
                error_message = CASE WHEN status = 'pending'
                    THEN 'the file disappeared before it could be read' ELSE error_message END,
                prediction_id = CASE WHEN status = 'pending' THEN NULL ELSE prediction_id END
            WHERE gone_at IS NULL AND ",
            $condition
        )
    };
}

pub(super) const MARK_GONE_BY_PATH: &str = mark_gone_where!("path = $1");
pub(super) const MARK_GONE_BY_ID: &str = mark_gone_where!("id = $1");

pub(super) const PENDING: &str = "
    SELECT id, path, content_hash
    FROM images
    WHERE status = 'pending' AND gone_at IS NULL
    ORDER BY id
    LIMIT $1";

// A row with a current prediction is tagged, or pending again after a touch;
// either way the prediction is about `p.content_hash`, so it can be reused.
pub(super) const FIND_TAGGED_BY_HASH: &str = "
    SELECT i.id
    FROM images AS i
    JOIN predictions AS p ON p.id = i.prediction_id
    WHERE i.content_hash = $1 AND p.content_hash = $1 AND p.model_id = $2
    ORDER BY i.id
    LIMIT 1";

pub(super) const INSERT_PREDICTION: &str = "
    INSERT INTO predictions
        (image_id, model_id, content_hash, label_index, label, confidence, margin,
         probabilities, needs_review, review_reason, review_rule, preprocessing, elapsed_ms,
         created_at)
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11,
            (SELECT preprocessing FROM models WHERE id = $2), $12, $13)
    RETURNING id";

/// Copies the source image's current prediction, if it is still by this
/// model and about these bytes. Returns no row otherwise.
pub(super) const COPY_PREDICTION: &str = "
    INSERT INTO predictions
        (image_id, model_id, content_hash, label_index, label, confidence, margin,
         probabilities, needs_review, review_reason, review_rule, preprocessing, elapsed_ms,
         reused_from, created_at)
    SELECT $1, p.model_id, p.content_hash, p.label_index, p.label, p.confidence, p.margin,
           p.probabilities, p.needs_review, p.review_reason, p.review_rule, p.preprocessing, 0.0,
           p.id, $5
    FROM images AS source
    JOIN predictions AS p ON p.id = source.prediction_id
    WHERE source.id = $2 AND p.model_id = $3 AND p.content_hash = $4
    RETURNING id";

pub(super) const MARK_TAGGED: &str = "
    UPDATE images SET
        status = 'tagged',
        content_hash = $2,
        width = $3,
        height = $4,
        prediction_id = $5,
        error_code = NULL,
        error_message = NULL,
        tagged_at = $6,
        updated_at = $6
    WHERE id = $1";

/// Like [`MARK_TAGGED`], with the dimensions of the image whose prediction
/// was copied: same bytes, same picture.
pub(super) const MARK_REUSED: &str = "
    UPDATE images SET
        status = 'tagged',
        content_hash = $2,
        width = (SELECT source.width FROM images AS source WHERE source.id = $3),
        height = (SELECT source.height FROM images AS source WHERE source.id = $3),
        prediction_id = $4,
        error_code = NULL,
        error_message = NULL,
        tagged_at = $5,
        updated_at = $5
    WHERE id = $1";

pub(super) const MARK_FAILED: &str = "
    UPDATE images SET
        status = 'failed',
        error_code = $2,
        error_message = $3,
        attempts = attempts + 1,
        content_hash = $4,
        prediction_id = NULL,
        tagged_at = NULL,
        updated_at = $5
    WHERE id = $1";

pub(super) const MARK_SKIPPED: &str = "
    UPDATE images SET
        status = 'skipped',
        error_code = $2,
        error_message = $3,
        prediction_id = NULL,
        tagged_at = NULL,
        updated_at = $4
    WHERE id = $1";

pub(super) const REVIEW_QUEUE: &str = "
    SELECT image_id, path, label, confidence, review_reason
    FROM review_queue
    ORDER BY confidence, image_id
    LIMIT $1";

/// The image a person is deciding about, with its current prediction and
/// the labels of the model that made it (all NULL unless it is tagged).
pub(super) const REVIEW_TARGET: &str = "
    SELECT i.id, p.content_hash, p.label, m.labels
    FROM images AS i
    LEFT JOIN predictions AS p ON p.id = i.prediction_id AND i.status = 'tagged'
    LEFT JOIN models AS m ON m.id = p.model_id
    WHERE i.path = $1 AND i.gone_at IS NULL";

pub(super) const INSERT_REVIEW: &str = "
    INSERT INTO reviews (image_id, content_hash, decision, label, reviewer, decided_at)
    VALUES ($1, $2, $3, $4, $5, $6)";

pub(super) const STATUS_COUNTS: &str = "
    SELECT
        COUNT(*) FILTER (WHERE status = 'pending' AND gone_at IS NULL),
        COUNT(*) FILTER (WHERE status = 'tagged' AND gone_at IS NULL),
        COUNT(*) FILTER (WHERE status = 'failed' AND gone_at IS NULL),
        COUNT(*) FILTER (WHERE status = 'skipped' AND gone_at IS NULL),
        COUNT(*) FILTER (WHERE gone_at IS NOT NULL),
        (SELECT COUNT(*) FROM review_queue)
    FROM images";

/// A point in time as each backend stores it best: ISO-8601 UTC text on
/// SQLite, in the same form as the schema's column defaults
/// (`2026-12-03T10:15:42.123Z`), and `TIMESTAMPTZ` on Postgres.
///
/// Truncated to milliseconds so both backends hold the same instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Timestamp(DateTime<Utc>);

impl Timestamp {
    pub(super) fn now() -> Timestamp {
        let now = Utc::now();
        Timestamp(now.duration_trunc(TimeDelta::milliseconds(1)).unwrap_or(now))
    }
}

impl Type<Sqlite> for Timestamp {
    fn type_info() -> SqliteTypeInfo {
        <String as Type<Sqlite>>::type_info()
    }
}

impl<'q> Encode<'q, Sqlite> for Timestamp {
    fn encode_by_ref(&self, buf: &mut Vec<SqliteArgumentValue<'q>>) -> Result<IsNull, BoxDynError> {
        let text = self.0.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string();
        <String as Encode<'q, Sqlite>>::encode(text, buf)
    }
}

impl Type<Postgres> for Timestamp {
    fn type_info() -> PgTypeInfo {
        <DateTime<Utc> as Type<Postgres>>::type_info()
    }
}

impl Encode<'_, Postgres> for Timestamp {
    fn encode_by_ref(&self, buf: &mut PgArgumentBuffer) -> Result<IsNull, BoxDynError> {
        <DateTime<Utc> as Encode<'_, Postgres>>::encode_by_ref(&self.0, buf)
    }
}
