//! `tagd scan DIR...`: one pass over folders, with a progress bar.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use tokio_util::sync::CancellationToken;

use crate::app;
use crate::config::Settings;
use crate::discover::Discovery;
use crate::pipeline;

pub async fn scan(
    settings: &Settings,
    folders: &[PathBuf],
    progress: bool,
) -> anyhow::Result<ExitCode> {
    let started = Instant::now();
    let (classifier, policy) = app::load_classifier(settings)?;
    let catalogue = app::open_catalogue(settings, Duration::from_secs(10)).await?;
    let engine = app::engine(settings, catalogue.clone(), classifier, policy).await?;
    let discovery_settings = app::discovery(settings, folders)?;

    let interrupted = CancellationToken::new();
    let stop_processing = CancellationToken::new();
    tokio::spawn(cancel_on_ctrl_c(interrupted.clone()));
    let processing = tokio::spawn(pipeline::process(engine.clone(), stop_processing.clone()));

    let mut discovery = Discovery::new(catalogue.clone(), discovery_settings, engine.wake.clone());
    let report = discovery.reconcile_all().await;
    discovery.settle_remaining(&interrupted).await;

    let bar = progress_bar(progress && std::io::stderr().is_terminal(), report.files_seen as u64);
    loop {
        let counts = catalogue.status_counts().await?;
        let finished = engine.counters.finished();
        bar.set_length(finished + counts.pending as u64);
        bar.set_position(finished);
        if interrupted.is_cancelled() || (counts.pending == 0 && engine.inflight_count() == 0) {
            break;
        }
        // Woken by each commit; the timeout covers rows another process adds.
        tokio::select! {
            _ = interrupted.cancelled() => {}
            _ = engine.committed.notified() => {}
            _ = tokio::time::sleep(Duration::from_millis(250)) => {}
        }
    }
    bar.finish_and_clear();

    stop_processing.cancel();
    let _ = processing.await;
    let counts = catalogue.status_counts().await?;
    catalogue.close().await;

    print_summary(&engine, report.files_seen, counts.pending, started.elapsed());
    Ok(ExitCode::SUCCESS)
}

async fn cancel_on_ctrl_c(token: CancellationToken) {
    if tokio::signal::ctrl_c().await.is_ok() {
        eprintln!("tagd: interrupted; finishing images in flight (the rest stay pending)");
        token.cancel();
    }
}

fn progress_bar(visible: bool, length: u64) -> ProgressBar {
    if !visible {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(length);
    bar.set_style(
        ProgressStyle::with_template("{spinner} {bar:40} {pos}/{len} images, {per_sec}, eta {eta}")
            .expect("valid template"),
    );
    bar.enable_steady_tick(Duration::from_millis(120));
    bar
}

fn print_summary(
    engine: &pipeline::Engine,
    files_seen: usize,
    still_pending: i64,
    elapsed: Duration,
) {
    let counters = &engine.counters;
    let tagged = counters.tagged.load(Ordering::Relaxed);
    let reused = counters.reused.load(Ordering::Relaxed);
    let failed = counters.failed.load(Ordering::Relaxed);
    let skipped = counters.skipped.load(Ordering::Relaxed);
    let flagged = counters.flagged.load(Ordering::Relaxed);
    let done = counters.finished();
    let rate = done as f64 / elapsed.as_secs_f64().max(1e-9);

    println!(
        "scanned {files_seen} files in {:.1} s: {tagged} tagged ({flagged} flagged for review), \
         {reused} reused, {failed} failed, {skipped} skipped, {still_pending} still pending ({rate:.1} images/s)",
        elapsed.as_secs_f64()
    );
    if failed + skipped > 0 {
        println!(
            "see why: SELECT path, error_code, error_message FROM images WHERE status IN ('failed', 'skipped');"
        );
    }
}
