//! The one implementation of [`Catalogue`](super::Catalogue), shared by
//! both backends.
//!
//! The statements live in `sql.rs`. A backend only says how it connects,
//! which pool serves reads and how a write transaction begins; then
//! `impl_catalogue!(Backend, Database)` writes the trait implementation for
//! it. A macro rather than generic code: each expansion is ordinary sqlx code
//! over one concrete database type, where generic code would need a long list
//! of higher-ranked sqlx bounds on every function.

/// Writes `impl Catalogue for $backend`, where `$db` is its sqlx database.
///
/// `$backend` provides `reader(&self) -> &Pool<$db>` for plain reads,
/// `begin_write(&self) -> sqlx::Result<Transaction<'static, $db>>`, a
/// transaction that already holds the right to write, and
/// `close_pools(&self)`.
macro_rules! impl_catalogue {
    ($backend:ty, $db:ty) => {
        const _: () = {
            use std::collections::HashSet;

            use async_trait::async_trait;
            use sqlx::types::Json;

            use $crate::store::sql::{self, Timestamp};
            use $crate::store::{
                Catalogue, Decision, FileFacts, ImageId, KnownFile, ModelId, ModelRecord, Outcome,
                PendingImage, ReviewItem, StatusCounts, StoreError, StoreResult,
            };

            type Connection = <$db as sqlx::Database>::Connection;

            #[async_trait]
            impl Catalogue for $backend {
                async fn register_model(&self, model: &ModelRecord) -> StoreResult<ModelId> {
                    let mut tx = self.begin_write().await?;
                    let id = sqlx::query_scalar(sql::UPSERT_MODEL)
                        .bind(&model.name)
                        .bind(&model.version)
                        .bind(&model.sha256)
                        .bind(&model.preprocessing)
                        .bind(Json(&model.labels))
                        .bind(Timestamp::now())
                        .fetch_one(&mut *tx)
                        .await?;
                    tx.commit().await?;
                    Ok(id)
                }

                async fn record_discovered(&self, files: &[FileFacts]) -> StoreResult<u64> {
                    if files.is_empty() {
                        return Ok(0);
                    }
                    let now = Timestamp::now();
                    let mut tx = self.begin_write().await?;
                    let mut became_pending = 0;
                    for file in files {
                        let (status, code, message) = match &file.skip {
                            Some(problem) => {
                                ("skipped", Some(&problem.code), Some(&problem.message))
                            }
                            None => ("pending", None, None),
                        };
                        let changed: Option<ImageId> = sqlx::query_scalar(sql::UPSERT_DISCOVERED)
                            .bind(&file.path)
                            .bind(file.size_bytes)
                            .bind(file.mtime_ns)
                            .bind(status)
                            .bind(code)
                            .bind(message)
                            .bind(now)
                            .fetch_optional(&mut *tx)
                            .await?;
                        if changed.is_some() && file.skip.is_none() {
                            became_pending += 1;
                        }
                    }
                    tx.commit().await?;
                    Ok(became_pending)
                }

                async fn known_files(&self, prefix: &str) -> StoreResult<Vec<KnownFile>> {
                    let rows: Vec<(String, i64, i64, bool)> = sqlx::query_as(sql::KNOWN_FILES)
                        .bind(prefix)
                        .fetch_all(self.reader())
                        .await?;
                    Ok(rows
                        .into_iter()
                        .map(|(path, size_bytes, mtime_ns, gone)| KnownFile {
                            path,
                            size_bytes,
                            mtime_ns,
                            gone,
                        })
                        .collect())
                }

                async fn mark_gone(&self, paths: &[String]) -> StoreResult<u64> {
                    if paths.is_empty() {
                        return Ok(0);
                    }
                    let now = Timestamp::now();
                    let mut tx = self.begin_write().await?;
                    let mut changed = 0;
                    for path in paths {
                        changed += sqlx::query(sql::MARK_GONE_BY_PATH)
                            .bind(path)
                            .bind(now)
                            .execute(&mut *tx)
                            .await?
                            .rows_affected();
                    }
                    tx.commit().await?;
                    Ok(changed)
                }

                async fn pending(
                    &self,
                    limit: i64,
                    exclude: &[ImageId],
                ) -> StoreResult<Vec<PendingImage>> {
                    // Over-fetch by the number of excluded ids and filter
                    // here: one query text for both backends, and the
                    // in-flight list is short.
                    let exclude: HashSet<ImageId> = exclude.iter().copied().collect();
                    let fetch = limit.saturating_add(exclude.len() as i64);
                    let rows: Vec<(ImageId, String, Option<String>)> =
                        sqlx::query_as(sql::PENDING).bind(fetch).fetch_all(self.reader()).await?;
                    Ok(rows
                        .into_iter()
                        .filter(|(id, _, _)| !exclude.contains(id))
                        .take(usize::try_from(limit).unwrap_or(0))
                        .map(|(id, path, content_hash)| PendingImage { id, path, content_hash })
                        .collect())
                }

                async fn find_tagged_by_hash(
                    &self,
                    content_hash: &str,
                    model: ModelId,
                ) -> StoreResult<Option<ImageId>> {
                    Ok(sqlx::query_scalar(sql::FIND_TAGGED_BY_HASH)
                        .bind(content_hash)
                        .bind(model)
                        .fetch_optional(self.reader())
                        .await?)
                }

                async fn record_outcomes(
                    &self,
                    model: ModelId,
                    outcomes: &[Outcome],
                ) -> StoreResult<()> {
                    if outcomes.is_empty() {
                        return Ok(());
                    }
                    let now = Timestamp::now();
                    let mut tx = self.begin_write().await?;
                    for outcome in outcomes {
                        record_outcome(&mut *tx, model, outcome, now).await?;
                    }
                    tx.commit().await?;
                    Ok(())
                }

                async fn review_queue(&self, limit: i64) -> StoreResult<Vec<ReviewItem>> {
                    let rows: Vec<(ImageId, String, String, f32, Option<String>)> =
                        sqlx::query_as(sql::REVIEW_QUEUE)
                            .bind(limit)
                            .fetch_all(self.reader())
                            .await?;
                    Ok(rows
                        .into_iter()
                        .map(|(image_id, path, label, confidence, review_reason)| ReviewItem {
                            image_id,
                            path,
                            label,
                            confidence,
                            review_reason,
                        })
                        .collect())
                }

                async fn record_review(
                    &self,
                    path: &str,
                    decision: &Decision,
                    reviewer: &str,
                ) -> StoreResult<()> {
                    // Read then write in one transaction that holds the write
                    // lock, so the prediction checked is the one reviewed.
                    let mut tx = self.begin_write().await?;
                    type Target =
                        (ImageId, Option<String>, Option<String>, Option<Json<Vec<String>>>);
                    let target: Option<Target> = sqlx::query_as(sql::REVIEW_TARGET)
                        .bind(path)
                        .fetch_optional(&mut *tx)
                        .await?;
                    let Some((image, content_hash, model_label, labels)) = target else {
                        return Err(StoreError::UnknownImage(path.to_owned()));
                    };
                    let (Some(content_hash), Some(model_label), Some(Json(labels))) =
                        (content_hash, model_label, labels)
                    else {
                        return Err(StoreError::NothingToAccept(path.to_owned()));
                    };
                    let (kind, label) = match decision {
                        Decision::Accept => ("accept", model_label),
                        Decision::Relabel(label) if labels.contains(label) => {
                            ("relabel", label.clone())
                        }
                        Decision::Relabel(label) => {
                            return Err(StoreError::UnknownLabel {
                                label: label.clone(),
                                known: labels.join(", "),
                            });
                        }
                    };
                    sqlx::query(sql::INSERT_REVIEW)
                        .bind(image)
                        .bind(content_hash)
                        .bind(kind)
                        .bind(label)
                        .bind(reviewer)
                        .bind(Timestamp::now())
                        .execute(&mut *tx)
                        .await?;
                    tx.commit().await?;
                    Ok(())
                }

                async fn status_counts(&self) -> StoreResult<StatusCounts> {
                    let (pending, tagged, failed, skipped, gone, needs_review) =
                        sqlx::query_as(sql::STATUS_COUNTS).fetch_one(self.reader()).await?;
                    Ok(StatusCounts { pending, tagged, failed, skipped, gone, needs_review })
                }

                async fn close(&self) {
                    self.close_pools().await;
                }
            }

            async fn record_outcome(
                tx: &mut Connection,
                model: ModelId,
                outcome: &Outcome,
                now: Timestamp,
            ) -> StoreResult<()> {
                match outcome {
                    Outcome::Tagged { image, content_hash, facts, prediction, elapsed_ms } => {
                        let prediction_id: i64 = sqlx::query_scalar(sql::INSERT_PREDICTION)
                            .bind(image)
                            .bind(model)
                            .bind(content_hash)
                            .bind(prediction.label_index)
                            .bind(&prediction.label)
                            .bind(prediction.confidence)
                            .bind(prediction.margin)
                            .bind(Json(&prediction.probabilities))
                            .bind(prediction.needs_review)
                            .bind(&prediction.review_reason)
                            .bind(prediction.review_rule.as_str())
                            .bind(elapsed_ms)
                            .bind(now)
                            .fetch_one(&mut *tx)
                            .await?;
                        sqlx::query(sql::MARK_TAGGED)
                            .bind(image)
                            .bind(content_hash)
                            .bind(facts.width)
                            .bind(facts.height)
                            .bind(prediction_id)
                            .bind(now)
                            .execute(&mut *tx)
                            .await?;
                    }
                    Outcome::Reused { image, content_hash, from_image } => {
                        let copied: Option<i64> = sqlx::query_scalar(sql::COPY_PREDICTION)
                            .bind(image)
                            .bind(from_image)
                            .bind(model)
                            .bind(content_hash)
                            .bind(now)
                            .fetch_optional(&mut *tx)
                            .await?;
                        let Some(prediction_id) = copied else {
                            // The source lost its prediction since the
                            // pipeline looked it up. Failing only this image
                            // keeps the rest of the batch, and the code says
                            // what happened.
                            let problem = format!(
                                "image {from_image} no longer has a prediction by this model \
                                 for these bytes to reuse"
                            );
                            return mark_failed(
                                tx,
                                *image,
                                Some(content_hash.as_str()),
                                "reuse_source_missing",
                                &problem,
                                now,
                            )
                            .await;
                        };
                        sqlx::query(sql::MARK_REUSED)
                            .bind(image)
                            .bind(content_hash)
                            .bind(from_image)
                            .bind(prediction_id)
                            .bind(now)
                            .execute(&mut *tx)
                            .await?;
                    }
                    Outcome::Failed { image, content_hash, problem } => {
                        let hash = content_hash.as_deref();
                        mark_failed(tx, *image, hash, &problem.code, &problem.message, now).await?;
                    }
                    Outcome::Skipped { image, problem } => {
                        sqlx::query(sql::MARK_SKIPPED)
                            .bind(image)
                            .bind(&problem.code)
                            .bind(&problem.message)
                            .bind(now)
                            .execute(&mut *tx)
                            .await?;
                    }
                    Outcome::Vanished { image } => {
                        sqlx::query(sql::MARK_GONE_BY_ID)
                            .bind(image)
                            .bind(now)
                            .execute(&mut *tx)
                            .await?;
                    }
                }
                Ok(())
            }

            async fn mark_failed(
                tx: &mut Connection,
                image: ImageId,
                content_hash: Option<&str>,
                code: &str,
                message: &str,
                now: Timestamp,
            ) -> StoreResult<()> {
                sqlx::query(sql::MARK_FAILED)
                    .bind(image)
                    .bind(code)
                    .bind(message)
                    .bind(content_hash)
                    .bind(now)
                    .execute(&mut *tx)
                    .await?;
                Ok(())
            }
        };
    };
}

pub(super) use impl_catalogue;
