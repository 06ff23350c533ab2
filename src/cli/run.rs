//! `tagd run`: the daemon.

use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::Context;
use sd_notify::NotifyState;
use tokio_util::sync::CancellationToken;

use crate::app;
use crate::config::Loaded;
use crate::discover::Discovery;
use crate::pipeline::{self, Engine};

/// Runs until SIGTERM or SIGINT, then finishes the images in flight,
/// commits, tells systemd and returns.
pub async fn run(loaded: &Loaded) -> anyhow::Result<ExitCode> {
    let settings = &loaded.settings;
    let (classifier, policy) = app::load_classifier(settings)?;
    let catalogue = app::open_catalogue(settings, Duration::from_secs(60)).await?;
    let engine = app::engine(settings, catalogue.clone(), classifier, policy).await?;
    let discovery_settings = app::discovery(settings, &settings.watch.folders)?;
    log_start(loaded, &engine);

    let shutdown = CancellationToken::new();
    tokio::spawn(stop_on_signal(shutdown.clone()));

    let processing = tokio::spawn(pipeline::process(engine.clone(), shutdown.clone()));
    let discovery = Discovery::new(catalogue.clone(), discovery_settings, engine.wake.clone());
    let mut discovering = tokio::spawn(discovery.run(shutdown.clone()));

    notify_systemd(&[NotifyState::Ready, NotifyState::Status("tagging")]);
    tokio::spawn(watchdog(shutdown.clone()));
    tokio::spawn(summaries(engine.clone(), settings.log.summary_interval_secs, shutdown.clone()));

    let discovery_result = tokio::select! {
        _ = shutdown.cancelled() => None,
        result = &mut discovering => Some(result),
    };
    shutdown.cancel();
    notify_systemd(&[NotifyState::Stopping, NotifyState::Status("finishing images in flight")]);
    tracing::info!(in_flight = engine.inflight_count(), "stopping: finishing images in flight");

    let discovery_result = match discovery_result {
        Some(result) => result,
        None => discovering.await,
    };
    let _ = processing.await;
    catalogue.close().await;
    log_totals(&engine);

    discovery_result.context("discovery task failed")?.context("cannot watch the folders")?;
    Ok(ExitCode::SUCCESS)
}

fn log_start(loaded: &Loaded, engine: &Engine) {
    let settings = &loaded.settings;
    let model = engine.classifier.model();
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        config = %loaded.file.as_ref().map_or("(defaults)".to_string(), |f| f.display().to_string()),
        database = %app::redact(&settings.database.url),
        "tagd starting"
    );
    tracing::info!(
        model = %model.manifest.name,
        model_version = %model.manifest.version,
        sha256 = %model.manifest.sha256,
        preprocessing = %model.manifest.preprocessing,
        path = %model.onnx_path.display(),
        workers = settings.workers(),
        batch_size = settings.pipeline.batch_size,
        "model loaded"
    );
}

async fn stop_on_signal(shutdown: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut terminate), Ok(mut interrupt)) =
        (signal(SignalKind::terminate()), signal(SignalKind::interrupt()))
    else {
        tracing::error!("cannot listen for SIGTERM and SIGINT; stop tagd with SIGKILL");
        return;
    };
    tokio::select! {
        _ = terminate.recv() => tracing::info!(signal = "SIGTERM", "shutdown requested"),
        _ = interrupt.recv() => tracing::info!(signal = "SIGINT", "shutdown requested"),
    }
    shutdown.cancel();
}

fn notify_systemd(states: &[NotifyState]) {
    if let Err(error) = sd_notify::notify(false, states) {
        tracing::warn!(%error, "cannot notify systemd");
    }
}

/// Pings systemd's watchdog at half its interval while the runtime is
/// responsive; a wedged runtime stops the pings and systemd restarts tagd.
async fn watchdog(shutdown: CancellationToken) {
    let mut usec = 0;
    if !sd_notify::watchdog_enabled(false, &mut usec) || usec == 0 {
        return;
    }
    let mut tick = tokio::time::interval(Duration::from_micros(usec / 2));
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => notify_systemd(&[NotifyState::Watchdog]),
        }
    }
}

async fn summaries(engine: Arc<Engine>, interval_secs: u64, shutdown: CancellationToken) {
    if interval_secs == 0 {
        return;
    }
    let period = Duration::from_secs(interval_secs);
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    let mut last = 0;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let finished = engine.counters.finished();
        if finished != last {
            log_totals(&engine);
            last = finished;
        }
    }
}

fn log_totals(engine: &Engine) {
    let counters = &engine.counters;
    let tagged = counters.tagged.load(Ordering::Relaxed);
    let busy = counters.busy_micros.load(Ordering::Relaxed);
    let mean_ms = if tagged > 0 { busy as f64 / tagged as f64 / 1000.0 } else { 0.0 };
    tracing::info!(
        tagged,
        reused = counters.reused.load(Ordering::Relaxed),
        failed = counters.failed.load(Ordering::Relaxed),
        skipped = counters.skipped.load(Ordering::Relaxed),
        gone = counters.vanished.load(Ordering::Relaxed),
        flagged = counters.flagged.load(Ordering::Relaxed),
        mean_ms = format!("{mean_ms:.1}"),
        "summary"
    );
}
