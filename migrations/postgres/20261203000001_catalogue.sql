-- The catalogue, Postgres flavour. migrations/sqlite creates the same tables,
-- columns and views with SQLite types: change both together.

CREATE TABLE models (
    id            BIGSERIAL PRIMARY KEY,
    name          TEXT NOT NULL,
    version       TEXT NOT NULL,
    sha256        TEXT NOT NULL UNIQUE,
    preprocessing TEXT NOT NULL,
    labels        JSONB NOT NULL,  -- array, in the model's output order
    first_used_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- One row per file ever seen. Rows are never deleted: a file that disappears
-- gets gone_at, so its history stays queryable.
CREATE TABLE images (
    id            BIGSERIAL PRIMARY KEY,
    path          TEXT NOT NULL UNIQUE,
    content_hash  TEXT,  -- BLAKE3 of the bytes last read, hex
    size_bytes    BIGINT NOT NULL,
    mtime_ns      BIGINT NOT NULL,
    width         BIGINT,
    height        BIGINT,
    status        TEXT NOT NULL DEFAULT 'pending'
                  CHECK (status IN ('pending', 'tagged', 'failed', 'skipped')),
    error_code    TEXT,
    error_message TEXT,
    attempts      INTEGER NOT NULL DEFAULT 0,  -- failed attempts since the file last changed
    prediction_id BIGINT,  -- the current prediction; foreign key added below
    discovered_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    tagged_at     TIMESTAMPTZ,
    gone_at       TIMESTAMPTZ
);

-- The work queue: pending rows in discovery order.
CREATE INDEX images_pending ON images (id) WHERE status = 'pending';
CREATE INDEX images_content_hash ON images (content_hash);

-- Every prediction ever made. A re-tag adds a row and moves
-- images.prediction_id; older rows stay as history.
CREATE TABLE predictions (
    id            BIGSERIAL PRIMARY KEY,
    image_id      BIGINT NOT NULL REFERENCES images (id),
    model_id      BIGINT NOT NULL REFERENCES models (id),
    content_hash  TEXT NOT NULL,  -- the bytes this prediction is about
    label_index   INTEGER NOT NULL,
    label         TEXT NOT NULL,
    confidence    REAL NOT NULL,
    margin        REAL NOT NULL,
    probabilities JSONB NOT NULL,  -- array, in the model's label order
    needs_review  BOOLEAN NOT NULL,
    review_reason TEXT,
    preprocessing TEXT NOT NULL,
    elapsed_ms    DOUBLE PRECISION NOT NULL,
    reused_from   BIGINT REFERENCES predictions (id),  -- copied, not inferred
    created_at    TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE INDEX predictions_image ON predictions (image_id);

ALTER TABLE images
    ADD CONSTRAINT images_prediction_id_fkey
    FOREIGN KEY (prediction_id) REFERENCES predictions (id);

-- A person's decisions, append-only. The newest decision about an image's
-- current bytes wins; a re-tag never touches this table.
CREATE TABLE reviews (
    id           BIGSERIAL PRIMARY KEY,
    image_id     BIGINT NOT NULL REFERENCES images (id),
    content_hash TEXT NOT NULL,  -- the bytes the decision was made about
    decision     TEXT NOT NULL CHECK (decision IN ('accept', 'relabel')),
    label        TEXT NOT NULL,
    reviewer     TEXT NOT NULL,
    decided_at   TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE INDEX reviews_image ON reviews (image_id, content_hash);

-- One row per current (not gone) image with its final label: the newest
-- decision about its current bytes if there is one, else the model's label.
-- Prediction columns are empty unless the image is tagged, so an image
-- waiting for a re-tag does not show a stale label.
CREATE VIEW catalogue AS
SELECT
    i.id AS image_id,
    i.path,
    i.status,
    COALESCE(r.label, p.label) AS label,
    p.label AS model_label,
    p.confidence,
    COALESCE(p.needs_review AND r.id IS NULL, FALSE) AS needs_review,
    p.review_reason,
    r.decision,
    i.error_code,
    i.error_message,
    i.tagged_at,
    m.name AS model,
    i.content_hash
FROM images AS i
LEFT JOIN predictions AS p ON p.id = i.prediction_id AND i.status = 'tagged'
LEFT JOIN models AS m ON m.id = p.model_id
LEFT JOIN reviews AS r ON r.id = (
    SELECT latest.id
    FROM reviews AS latest
    WHERE latest.image_id = i.id AND latest.content_hash = p.content_hash
    ORDER BY latest.id DESC
    LIMIT 1
)
WHERE i.gone_at IS NULL;

-- Flagged, tagged, current images with no decision about their current bytes.
-- Least confident first; a query that filters or joins this view should say
-- ORDER BY confidence itself, since SQL only guarantees the outermost order.
CREATE VIEW review_queue AS
SELECT
    i.id AS image_id,
    i.path,
    p.label,
    p.confidence,
    p.margin,
    p.review_reason,
    i.tagged_at
FROM images AS i
JOIN predictions AS p ON p.id = i.prediction_id
WHERE i.status = 'tagged'
  AND i.gone_at IS NULL
  AND p.needs_review
  AND NOT EXISTS (
      SELECT 1
      FROM reviews AS r
      WHERE r.image_id = i.id AND r.content_hash = p.content_hash
  )
ORDER BY p.confidence, i.id;
