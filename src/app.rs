//! Turning settings into running parts: the model, the catalogue and the
//! processing engine. Shared by the commands so each builds them one way.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;

use crate::config::Settings;
use crate::discover::DiscoverySettings;
use crate::infer::{self, Classifier, ReviewPolicy};
use crate::model::ModelFolder;
use crate::pipeline::{Backoff, Engine, Tuning};
use crate::preprocess::Limits;
use crate::store::{self, Catalogue, ModelRecord};
use crate::watch::NameFilter;

/// Loads ONNX Runtime and the model named by the settings.
pub fn load_classifier(settings: &Settings) -> anyhow::Result<(Arc<Classifier>, ReviewPolicy)> {
    let library = infer::library_path(&settings.model.onnxruntime_library);
    let environment = infer::load_runtime(&library)?;
    let model = ModelFolder::open(&settings.model.dir)?;
    let policy = ReviewPolicy::resolve(&model, &settings.review)?;
    let classifier = Classifier::new(environment, model, settings.model.intra_threads)?;
    Ok((Arc::new(classifier), policy))
}

/// Opens the catalogue, retrying while the database is unavailable, up to
/// `patience` in all.
pub async fn open_catalogue(
    settings: &Settings,
    patience: Duration,
) -> anyhow::Result<Arc<dyn Catalogue>> {
    let url = &settings.database.url;
    let started = std::time::Instant::now();
    let mut backoff = Backoff::new(Duration::from_millis(settings.database.max_retry_backoff_ms));
    loop {
        match store::open(url).await {
            Ok(catalogue) => return Ok(catalogue),
            Err(error) if error.is_transient() && started.elapsed() < patience => {
                let wait = backoff.next_wait();
                tracing::warn!(%error, database = %redact(url), retry_in_ms = wait.as_millis() as u64,
                    "database unavailable at start-up; retrying");
                tokio::time::sleep(wait).await;
            }
            Err(error) => {
                return Err(error)
                    .with_context(|| format!("cannot open the catalogue at {}", redact(url)));
            }
        }
    }
}

/// A database URL with any password hidden, for logs and messages.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            let credentials = &url[scheme_end + 3..at];
            match credentials.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..scheme_end + 3], &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

/// Records the model in the catalogue and builds the processing engine.
pub async fn engine(
    settings: &Settings,
    catalogue: Arc<dyn Catalogue>,
    classifier: Arc<Classifier>,
    policy: ReviewPolicy,
) -> anyhow::Result<Arc<Engine>> {
    let manifest = &classifier.model().manifest;
    let record = ModelRecord {
        name: manifest.name.clone(),
        version: manifest.version.clone(),
        sha256: manifest.sha256.to_ascii_lowercase(),
        preprocessing: manifest.preprocessing.clone(),
        labels: manifest.labels.clone(),
    };
    let model_id = catalogue
        .register_model(&record)
        .await
        .context("cannot record the model in the catalogue")?;

    Ok(Arc::new(Engine::new(
        catalogue,
        classifier,
        policy,
        model_id,
        limits(settings),
        tuning(settings),
    )))
}

pub fn limits(settings: &Settings) -> Limits {
    Limits {
        max_image_bytes: settings.limits.max_image_bytes,
        max_pixels: settings.limits.max_pixels,
        min_edge_px: settings.limits.min_edge_px,
    }
}

fn tuning(settings: &Settings) -> Tuning {
    Tuning {
        workers: settings.workers(),
        batch_size: settings.pipeline.batch_size,
        batch_wait: Duration::from_millis(settings.pipeline.batch_wait_ms),
        write_batch_size: settings.pipeline.write_batch_size,
        max_retry_backoff: Duration::from_millis(settings.database.max_retry_backoff_ms),
    }
}

/// Discovery settings for `folders`, which must exist; they are made
/// absolute so catalogue paths do not depend on the working directory.
pub fn discovery(settings: &Settings, folders: &[PathBuf]) -> anyhow::Result<DiscoverySettings> {
    let folders =
        folders.iter().map(|folder| absolute_folder(folder)).collect::<anyhow::Result<Vec<_>>>()?;
    let rescan = settings.watch.rescan_interval_secs;
    Ok(DiscoverySettings {
        folders,
        recursive: settings.watch.recursive,
        filter: NameFilter::new(&settings.extensions()),
        settle: Duration::from_millis(settings.watch.settle_ms),
        rescan_interval: (rescan > 0).then(|| Duration::from_secs(rescan)),
        max_retry_backoff: Duration::from_millis(settings.database.max_retry_backoff_ms),
    })
}

fn absolute_folder(folder: &Path) -> anyhow::Result<PathBuf> {
    let absolute = std::fs::canonicalize(folder).with_context(|| {
        format!("watch folder {} does not exist or cannot be read", folder.display())
    })?;
    anyhow::ensure!(absolute.is_dir(), "watch folder {} is not a folder", folder.display());
    Ok(absolute)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_hidden_in_database_urls() {
        assert_eq!(redact("postgres://tagd:s3cret@db:5432/cat"), "postgres://tagd:***@db:5432/cat");
        assert_eq!(redact("postgres://tagd@db/cat"), "postgres://tagd@db/cat");
        assert_eq!(
            redact("sqlite:///var/lib/tagd/catalogue.db"),
            "sqlite:///var/lib/tagd/catalogue.db"
        );
    }
}
