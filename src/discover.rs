//! The discovery loop: file events, the settle window and reconciliation
//! scans, feeding settled files into the catalogue as pending rows.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;

use crate::pipeline::Backoff;
use crate::store::{Catalogue, FileFacts};
use crate::watch::{self, FsSignal, NameFilter, Settler, Stat, path_text};

/// Where and how to look for photos.
#[derive(Debug, Clone)]
pub struct DiscoverySettings {
    pub folders: Vec<PathBuf>,
    pub recursive: bool,
    pub filter: NameFilter,
    pub settle: Duration,
    /// `None`: no periodic rescans.
    pub rescan_interval: Option<Duration>,
    pub max_retry_backoff: Duration,
}

/// Rows are recorded in transactions of at most this many.
const RECORD_CHUNK: usize = 500;

/// Finds photos and records them as pending.
pub struct Discovery {
    catalogue: Arc<dyn Catalogue>,
    settings: DiscoverySettings,
    settler: Settler,
    /// Settled files the catalogue could not take yet (database down),
    /// retried with backoff so none waits for the next scan.
    backlog: Vec<FileFacts>,
    backlog_backoff: Backoff,
    /// Rung after new pending rows are committed.
    wake: Arc<Notify>,
}

/// What one reconciliation pass found.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ScanReport {
    pub files_seen: usize,
    pub became_pending: u64,
    pub marked_gone: u64,
    /// Files still being written, left to the settle window.
    pub still_settling: usize,
}

impl Discovery {
    pub fn new(
        catalogue: Arc<dyn Catalogue>,
        settings: DiscoverySettings,
        wake: Arc<Notify>,
    ) -> Discovery {
        let settler = Settler::new(settings.settle);
        let backlog_backoff = Backoff::new(settings.max_retry_backoff);
        Discovery { catalogue, settings, settler, backlog: Vec::new(), backlog_backoff, wake }
    }

    /// Watches the folders until `shutdown`. The watch starts before the
    /// first scan, so a file arriving during the scan is seen by one or
    /// the other.
    pub async fn run(mut self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let (signals_tx, mut signals) = mpsc::channel(4096);
        let _watcher = watch::watch(&self.settings.folders, self.settings.recursive, signals_tx)?;
        for folder in &self.settings.folders {
            tracing::info!(folder = %folder.display(), recursive = self.settings.recursive, "watching folder");
        }
        let report = self.reconcile_all().await;
        tracing::info!(
            files = report.files_seen,
            pending = report.became_pending,
            gone = report.marked_gone,
            "start-up scan done"
        );

        let poll_every =
            (self.settings.settle / 4).clamp(Duration::from_millis(20), Duration::from_millis(250));
        let mut settle_tick = tokio::time::interval(poll_every);
        settle_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let rescan_every =
            self.settings.rescan_interval.unwrap_or(Duration::from_secs(86_400 * 365));
        let mut rescan_tick =
            tokio::time::interval_at(tokio::time::Instant::now() + rescan_every, rescan_every);

        let mut backlog_retry = tokio::time::Instant::now();

        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                Some(signal) = signals.recv() => self.on_signal(signal).await,
                _ = settle_tick.tick(), if !self.settler.is_empty() => {
                    let settled = self.settler.poll();
                    self.record(settled).await;
                }
                _ = tokio::time::sleep_until(backlog_retry), if !self.backlog.is_empty() => {
                    let backlog = std::mem::take(&mut self.backlog);
                    self.record(backlog).await;
                    if self.backlog.is_empty() {
                        self.backlog_backoff.reset();
                    }
                    backlog_retry = tokio::time::Instant::now() + self.backlog_backoff.next_wait();
                }
                _ = rescan_tick.tick(), if self.settings.rescan_interval.is_some() => {
                    let report = self.reconcile_all().await;
                    log_rescan("scheduled", report);
                }
            }
        }
    }

    async fn on_signal(&mut self, signal: FsSignal) {
        match signal {
            FsSignal::File(path) => {
                if self.settings.filter.accepts(&path)
                    && let Some(stat) = Stat::of(&path)
                    && let Some(facts) = self.settler.observe(path, stat)
                {
                    self.record(vec![facts]).await;
                }
            }
            FsSignal::Folder(path) => {
                let report = self.reconcile(&path).await;
                tracing::debug!(folder = %path.display(), files = report.files_seen, "new folder scanned");
            }
            FsSignal::Removed(path) => {
                let report = self.reconcile(&path).await;
                if report.marked_gone > 0 {
                    tracing::info!(path = %path.display(), gone = report.marked_gone, "files removed");
                }
            }
            FsSignal::Rescan => {
                let report = self.reconcile_all().await;
                log_rescan("events were lost", report);
            }
        }
    }

    /// Reconciles every watched folder once.
    pub async fn reconcile_all(&mut self) -> ScanReport {
        let mut total = ScanReport::default();
        for folder in self.settings.folders.clone() {
            let report = self.reconcile(&folder).await;
            total.files_seen += report.files_seen;
            total.became_pending += report.became_pending;
            total.marked_gone += report.marked_gone;
        }
        total.still_settling = self.settler.len();
        total
    }

    /// Compares the files under `root` (a folder, or a path that is gone)
    /// with the catalogue: new and changed files go to the settle window,
    /// catalogue rows whose files vanished are marked gone.
    pub async fn reconcile(&mut self, root: &Path) -> ScanReport {
        let found = self.walk(root).await;
        let (prefix, _) = path_text(root);
        let known = match self.catalogue.known_files(&prefix).await {
            Ok(known) => {
                known.into_iter().filter(|file| is_under(&file.path, &prefix)).collect::<Vec<_>>()
            }
            Err(error) => {
                tracing::error!(%error, folder = %root.display(), stage = "discover",
                    "cannot read the catalogue for a scan; the next scan retries");
                return ScanReport::default();
            }
        };
        let known: HashMap<String, _> =
            known.into_iter().map(|file| (file.path.clone(), file)).collect();

        let mut report = ScanReport { files_seen: found.len(), ..ScanReport::default() };
        let mut on_disk = HashSet::with_capacity(found.len());
        let mut ready = Vec::new();
        for (path, stat) in found {
            let (text, _) = path_text(&path);
            let unchanged = known.get(&text).is_some_and(|k| {
                !k.gone && k.size_bytes == stat.size as i64 && k.mtime_ns == stat.mtime_ns()
            });
            on_disk.insert(text);
            if !unchanged && let Some(facts) = self.settler.observe(path, stat) {
                ready.push(facts);
            }
        }
        report.became_pending = self.record(ready).await;

        let vanished: Vec<String> = known
            .into_values()
            .filter(|file| {
                !file.gone && !on_disk.contains(&file.path) && !Path::new(&file.path).exists()
            })
            .map(|file| file.path)
            .collect();
        if !vanished.is_empty() {
            report.marked_gone = self.catalogue.mark_gone(&vanished).await.unwrap_or_else(|error| {
                tracing::error!(%error, stage = "discover", "cannot mark vanished files as gone");
                0
            });
        }
        report.still_settling = self.settler.len();
        report
    }

    async fn walk(&self, root: &Path) -> Vec<(PathBuf, Stat)> {
        let root = root.to_path_buf();
        let recursive = self.settings.recursive;
        let filter = self.settings.filter.clone();
        if root.is_file() {
            return if filter.accepts(&root) {
                Stat::of(&root).map(|s| vec![(root, s)]).unwrap_or_default()
            } else {
                Vec::new()
            };
        }
        if !root.is_dir() {
            return Vec::new();
        }
        tokio::task::spawn_blocking(move || watch::walk(&root, recursive, &filter))
            .await
            .unwrap_or_default()
    }

    /// Settles what is left without waiting for events: used by `tagd scan`
    /// before it starts counting. Returns rows that became pending.
    pub async fn settle_remaining(&mut self, shutdown: &CancellationToken) -> u64 {
        let mut pending = 0;
        while !self.settler.is_empty() && !shutdown.is_cancelled() {
            tokio::time::sleep(Duration::from_millis(50)).await;
            let settled = self.settler.poll();
            pending += self.record(settled).await;
        }
        pending
    }

    /// Records settled files as pending. Files the catalogue cannot take
    /// now go to the backlog, which is retried with backoff.
    async fn record(&mut self, files: Vec<FileFacts>) -> u64 {
        let mut pending = 0;
        for chunk in files.chunks(RECORD_CHUNK) {
            match self.catalogue.record_discovered(chunk).await {
                Ok(count) => pending += count,
                Err(error) => {
                    tracing::error!(%error, files = chunk.len(), stage = "discover",
                        "cannot record discovered files; holding them and retrying");
                    self.backlog.extend_from_slice(chunk);
                }
            }
        }
        if pending > 0 {
            self.wake.notify_one();
        }
        pending
    }
}

fn log_rescan(why: &str, report: ScanReport) {
    if report.became_pending > 0 || report.marked_gone > 0 {
        tracing::info!(
            why,
            files = report.files_seen,
            pending = report.became_pending,
            gone = report.marked_gone,
            "rescan found changes events had missed"
        );
    } else {
        tracing::debug!(why, files = report.files_seen, "rescan found nothing new");
    }
}

/// True when `path` is `root` itself or inside it: `/in` holds `/in/a.jpg`
/// but not `/inbox/a.jpg`.
fn is_under(path: &str, root: &str) -> bool {
    let root = root.trim_end_matches('/');
    path == root || path.strip_prefix(root).is_some_and(|rest| rest.starts_with('/'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_folder_holds_its_own_files_only() {
        assert!(is_under("/in/a.jpg", "/in"));
        assert!(is_under("/in/a.jpg", "/in/"));
        assert!(is_under("/in/sub/a.jpg", "/in"));
        assert!(is_under("/in/a.jpg", "/in/a.jpg"));
        assert!(!is_under("/inbox/a.jpg", "/in"));
        assert!(!is_under("/in/a.jpg.bak", "/in/a.jpg"));
    }
}
