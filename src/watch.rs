//! Discovery: which files exist, and when each is complete enough to read.
//!
//! File events alone are not trustworthy, so discovery has three layers:
//!
//! 1. notify events. A file is a candidate on close-after-write or when it
//!    is renamed into a watched folder; creation and data events mean the
//!    file is still being written and are ignored. A new folder is walked at
//!    once, because files written into it before its watch lands make no
//!    event.
//! 2. The settle window. A candidate is recorded only once its size and
//!    modification time have not changed for `settle_ms`.
//! 3. Reconciliation scans, at start-up, every `rescan_interval_secs` and
//!    after an event-queue overflow, compare the folders with the catalogue:
//!    new and changed files become candidates, vanished ones are marked gone.
//!
//! Discovery hands settled files to the catalogue as `pending` rows; the
//! pipeline takes it from there.

use std::collections::{HashMap, HashSet};
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use notify::event::{AccessKind, AccessMode, CreateKind, ModifyKind, RenameMode};
use notify::{EventKind, RecursiveMode, Watcher as _};
use tokio::sync::mpsc;

use crate::store::{FileFacts, Problem};

/// What the file system told us, reduced to what discovery acts on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FsSignal {
    /// A file was closed after writing, or renamed into place.
    File(PathBuf),
    /// A folder appeared (created or moved in): walk it.
    Folder(PathBuf),
    /// Something was removed or renamed away: check what is left under it.
    Removed(PathBuf),
    /// Events were lost (queue overflow or watcher error): rescan everything.
    Rescan,
}

/// Keeps the notify watcher alive; dropping it stops the events.
pub struct FolderWatcher {
    _watcher: notify::RecommendedWatcher,
}

/// Starts watching `folders` and sends what happens to `signals`.
pub fn watch(
    folders: &[PathBuf],
    recursive: bool,
    signals: mpsc::Sender<FsSignal>,
) -> anyhow::Result<FolderWatcher> {
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        for signal in signals_of(event) {
            // Blocking here slows the watcher thread down when the pipeline
            // is behind; if the kernel queue overflows meanwhile, notify
            // reports it and a rescan follows.
            if signals.blocking_send(signal).is_err() {
                return;
            }
        }
    })
    .context("cannot start the file watcher")?;

    let mode = if recursive { RecursiveMode::Recursive } else { RecursiveMode::NonRecursive };
    for folder in folders {
        watcher
            .watch(folder, mode)
            .with_context(|| format!("cannot watch folder {}", folder.display()))?;
    }
    Ok(FolderWatcher { _watcher: watcher })
}

fn signals_of(event: notify::Result<notify::Event>) -> Vec<FsSignal> {
    let event = match event {
        Ok(event) => event,
        Err(error) => {
            tracing::warn!(%error, "file watcher error; a full rescan follows");
            return vec![FsSignal::Rescan];
        }
    };
    if event.need_rescan() {
        return vec![FsSignal::Rescan];
    }

    match event.kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => {
            event.paths.into_iter().map(FsSignal::File).collect()
        }
        EventKind::Create(CreateKind::Folder) => {
            event.paths.into_iter().map(FsSignal::Folder).collect()
        }
        EventKind::Modify(ModifyKind::Name(RenameMode::To)) => {
            event.paths.into_iter().map(arrived).collect()
        }
        EventKind::Modify(ModifyKind::Name(RenameMode::Both)) => {
            let mut paths = event.paths.into_iter();
            let from = paths.next();
            let to = paths.next();
            from.map(FsSignal::Removed).into_iter().chain(to.map(arrived)).collect()
        }
        EventKind::Modify(ModifyKind::Name(RenameMode::From)) | EventKind::Remove(_) => {
            event.paths.into_iter().map(FsSignal::Removed).collect()
        }
        _ => Vec::new(),
    }
}

/// A path that was renamed into place: a folder to walk or a complete file.
fn arrived(path: PathBuf) -> FsSignal {
    if path.is_dir() { FsSignal::Folder(path) } else { FsSignal::File(path) }
}

/// Which file names discovery considers.
#[derive(Debug, Clone)]
pub struct NameFilter {
    extensions: HashSet<String>,
}

/// Suffixes of files still being written by browsers, editors and copy tools.
const TEMPORARY_SUFFIXES: &[&str] =
    &[".part", ".partial", ".tmp", ".temp", ".crdownload", ".download", ".swp", "~"];

impl NameFilter {
    pub fn new(extensions: &[String]) -> NameFilter {
        NameFilter { extensions: extensions.iter().map(|ext| ext.to_ascii_lowercase()).collect() }
    }

    /// Hidden and temporary names are never tagged; other names are tagged
    /// when their extension is listed.
    pub fn accepts(&self, path: &Path) -> bool {
        let Some(name) = path.file_name() else {
            return false;
        };
        let bytes = name.as_bytes();
        if bytes.starts_with(b".") {
            return false;
        }
        let lower = bytes.to_ascii_lowercase();
        if TEMPORARY_SUFFIXES.iter().any(|suffix| lower.ends_with(suffix.as_bytes())) {
            return false;
        }
        path.extension()
            .and_then(OsStr::to_str)
            .is_some_and(|ext| self.extensions.contains(&ext.to_ascii_lowercase()))
    }
}

/// A path as catalogue text. Bytes that are not UTF-8 are escaped as `\xNN`
/// so the row stays distinct and printable; such files are skipped.
pub fn path_text(path: &Path) -> (String, bool) {
    match path.to_str() {
        Some(text) => (text.to_string(), true),
        None => (escape_bytes(path.as_os_str().as_bytes()), false),
    }
}

fn escape_bytes(bytes: &[u8]) -> String {
    let mut text = String::new();
    for chunk in bytes.utf8_chunks() {
        text.push_str(chunk.valid());
        for byte in chunk.invalid() {
            text.push_str(&format!("\\x{byte:02X}"));
        }
    }
    text
}

/// What a stat says about a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stat {
    pub size: u64,
    pub mtime: SystemTime,
}

impl Stat {
    pub fn of(path: &Path) -> Option<Stat> {
        let metadata = std::fs::metadata(path).ok()?;
        metadata.is_file().then(|| Stat {
            size: metadata.len(),
            mtime: metadata.modified().unwrap_or(UNIX_EPOCH),
        })
    }

    pub fn mtime_ns(&self) -> i64 {
        self.mtime
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
    }

    /// True when the file has not been modified for `window`.
    fn quiet_for(&self, window: Duration) -> bool {
        SystemTime::now().duration_since(self.mtime).is_ok_and(|age| age >= window)
    }
}

/// The facts the catalogue records for a settled file.
pub fn facts(path: &Path, stat: Stat) -> FileFacts {
    let (text, is_utf8) = path_text(path);
    let skip = (!is_utf8).then(|| Problem {
        code: "path_not_utf8".to_string(),
        message: "the file name is not valid UTF-8; rename the file to tag it".to_string(),
    });
    FileFacts {
        path: text,
        size_bytes: i64::try_from(stat.size).unwrap_or(i64::MAX),
        mtime_ns: stat.mtime_ns(),
        skip,
    }
}

/// Holds candidates until their size and mtime stop changing.
#[derive(Debug)]
pub struct Settler {
    window: Duration,
    waiting: HashMap<PathBuf, (Stat, Instant)>,
}

impl Settler {
    pub fn new(window: Duration) -> Settler {
        Settler { window, waiting: HashMap::new() }
    }

    /// Notes a candidate. Returns its facts at once when the file has been
    /// quiet for the whole window already (a scan finding old files).
    ///
    /// FIXME: a writer that pauses for longer than the window in the middle
    /// of a file is taken for finished; the partial file is tagged (or fails
    /// as truncated) and is tagged again when its next close event arrives.
    /// Linux has no cheap way to ask whether another process still holds a
    /// file open for writing; a scan of /proc would cost more than it saves.
    pub fn observe(&mut self, path: PathBuf, stat: Stat) -> Option<FileFacts> {
        if stat.quiet_for(self.window) {
            self.waiting.remove(&path);
            return Some(facts(&path, stat));
        }
        match self.waiting.get_mut(&path) {
            Some((seen, since)) if *seen != stat => {
                *seen = stat;
                *since = Instant::now();
            }
            Some(_) => {}
            None => {
                self.waiting.insert(path, (stat, Instant::now()));
            }
        }
        None
    }

    /// Re-checks the waiting files and returns those that settled. Files
    /// that disappeared are dropped (a reconciliation marks them gone).
    pub fn poll(&mut self) -> Vec<FileFacts> {
        let mut settled = Vec::new();
        let window = self.window;
        self.waiting.retain(|path, (seen, since)| {
            let Some(now) = Stat::of(path) else {
                return false;
            };
            if now != *seen {
                *seen = now;
                *since = Instant::now();
                return true;
            }
            if since.elapsed() >= window || now.quiet_for(window) {
                settled.push(facts(path, now));
                return false;
            }
            true
        });
        settled
    }

    pub fn is_empty(&self) -> bool {
        self.waiting.is_empty()
    }

    pub fn len(&self) -> usize {
        self.waiting.len()
    }
}

/// Lists the files under `root` that the filter accepts, with their stat.
/// Hidden folders are not entered. Unreadable entries are logged and
/// skipped: one bad folder must not stop a scan.
pub fn walk(root: &Path, recursive: bool, filter: &NameFilter) -> Vec<(PathBuf, Stat)> {
    let max_depth = if recursive { usize::MAX } else { 1 };
    let walker =
        walkdir::WalkDir::new(root).max_depth(max_depth).into_iter().filter_entry(|entry| {
            entry.depth() == 0 || !entry.file_name().as_bytes().starts_with(b".")
        });

    let mut found = Vec::new();
    for entry in walker {
        let entry = match entry {
            Ok(entry) => entry,
            Err(error) => {
                tracing::warn!(root = %root.display(), %error, "cannot read part of a watched folder");
                continue;
            }
        };
        if !entry.file_type().is_file() || !filter.accepts(entry.path()) {
            continue;
        }
        if let Some(stat) = Stat::of(entry.path()) {
            found.push((entry.into_path(), stat));
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::ffi::OsStringExt;

    fn filter() -> NameFilter {
        NameFilter::new(&["jpg".into(), "png".into()])
    }

    #[test]
    fn listed_extensions_are_accepted_in_any_case() {
        assert!(filter().accepts(Path::new("/in/shoe.jpg")));
        assert!(filter().accepts(Path::new("/in/SHOE.JPG")));
        assert!(!filter().accepts(Path::new("/in/shoe.gif")));
        assert!(!filter().accepts(Path::new("/in/shoe")));
    }

    #[test]
    fn hidden_and_temporary_names_are_ignored() {
        for name in
            [".shoe.jpg", "shoe.jpg.part", "shoe.jpg~", "shoe.jpg.tmp", "shoe.jpg.crdownload"]
        {
            assert!(!filter().accepts(&Path::new("/in").join(name)), "{name}");
        }
    }

    #[test]
    fn non_utf8_names_are_escaped_and_skipped() {
        let path = PathBuf::from(std::ffi::OsString::from_vec(b"/in/caf\xe9.jpg".to_vec()));
        assert!(filter().accepts(&path));
        let stat = Stat { size: 3, mtime: UNIX_EPOCH };
        let facts = facts(&path, stat);
        assert_eq!(facts.path, "/in/caf\\xE9.jpg");
        assert_eq!(facts.skip.unwrap().code, "path_not_utf8");
    }

    #[test]
    fn old_files_settle_at_once_and_fresh_ones_wait() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.jpg");
        std::fs::write(&path, b"abc").unwrap();
        let mut settler = Settler::new(Duration::from_millis(200));

        let old = Stat { size: 3, mtime: UNIX_EPOCH };
        assert!(settler.observe(path.clone(), old).is_some());

        let fresh = Stat::of(&path).unwrap();
        assert!(settler.observe(path.clone(), fresh).is_none());
        assert!(settler.poll().is_empty(), "not quiet for the window yet");
        std::thread::sleep(Duration::from_millis(250));
        let settled = settler.poll();
        assert_eq!(settled.len(), 1);
        assert_eq!(settled[0].size_bytes, 3);
        assert!(settler.is_empty());
    }

    #[test]
    fn a_growing_file_restarts_the_window() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.jpg");
        std::fs::write(&path, b"abc").unwrap();
        let mut settler = Settler::new(Duration::from_millis(300));
        settler.observe(path.clone(), Stat::of(&path).unwrap());

        std::thread::sleep(Duration::from_millis(200));
        std::fs::write(&path, b"abcdef").unwrap();
        assert!(settler.poll().is_empty());
        std::thread::sleep(Duration::from_millis(200));
        assert!(settler.poll().is_empty(), "the window restarted when the file grew");
        std::thread::sleep(Duration::from_millis(150));
        assert_eq!(settler.poll()[0].size_bytes, 6);
    }

    #[test]
    fn walking_skips_hidden_folders_and_other_files() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("sub/.cache")).unwrap();
        std::fs::write(dir.path().join("a.jpg"), b"x").unwrap();
        std::fs::write(dir.path().join("sub/b.png"), b"x").unwrap();
        std::fs::write(dir.path().join("sub/.cache/c.jpg"), b"x").unwrap();
        std::fs::write(dir.path().join("notes.txt"), b"x").unwrap();

        let mut names: Vec<_> = walk(dir.path(), true, &filter())
            .into_iter()
            .map(|(path, _)| path.strip_prefix(dir.path()).unwrap().to_path_buf())
            .collect();
        names.sort();
        assert_eq!(names, [PathBuf::from("a.jpg"), PathBuf::from("sub/b.png")]);

        assert_eq!(walk(dir.path(), false, &filter()).len(), 1);
    }
}
