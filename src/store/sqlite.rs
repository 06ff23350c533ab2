//! The SQLite backend, the embedded default.
//!
//! SQLite lets one connection write at a time, so tagd keeps exactly one
//! write connection and a small pool of readers. The database is in WAL
//! mode: readers, including a person running the `sqlite3` shell, see the
//! last committed state and never block the writer, and the writer never
//! blocks them.
//!
//! Every write transaction starts with `BEGIN IMMEDIATE`. A plain (deferred)
//! transaction that reads and then writes asks for the write lock half way
//! through; if another process (`tagd review`, a person's `UPDATE`) holds it,
//! SQLite fails the transaction at once with `SQLITE_BUSY` instead of waiting,
//! because waiting could deadlock. An immediate transaction asks for the
//! lock before reading anything, so it waits on the busy timeout instead.

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use sqlx::migrate::Migrator;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{Sqlite, Transaction};

use super::shared::impl_catalogue;
use super::{StoreError, StoreResult};

static MIGRATOR: Migrator = sqlx::migrate!("migrations/sqlite");

/// How long a statement waits for another process's lock before giving up
/// with `SQLITE_BUSY` (reported as [`StoreError::Unavailable`]).
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// Readers only serve short queries (the queue, counts, reuse look-ups).
const READERS: u32 = 4;

/// A catalogue in one SQLite file.
pub struct SqliteCatalogue {
    /// Exactly one connection: all writes queue here instead of contending
    /// for SQLite's lock.
    writer: SqlitePool,
    reader: SqlitePool,
}

impl SqliteCatalogue {
    /// Opens (creating it if missing) the database named by a `sqlite://PATH`
    /// or `sqlite:PATH` URL, and brings its schema up to date. A relative
    /// path is relative to the working directory.
    pub async fn connect(url: &str) -> StoreResult<SqliteCatalogue> {
        let options = SqliteConnectOptions::from_str(url)
            .map_err(|error| StoreError::BadUrl(format!("{url}: {error}")))?
            .create_if_missing(true)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(BUSY_TIMEOUT)
            .foreign_keys(true);
        let in_memory = url.contains(":memory:") || url.contains("mode=memory");
        if !in_memory {
            check_folder(options.get_filename())?;
        }

        // WAL is a property of the file, kept across connections: set it on
        // the writer, which creates the file. The pool keeps its one
        // connection open, so this runs once per process; readers inherit
        // the mode (switching modes from them would need an exclusive lock).
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .min_connections(1)
            .idle_timeout(None)
            .max_lifetime(None)
            .connect_with(options.clone().journal_mode(SqliteJournalMode::Wal))
            .await?;
        MIGRATOR.run(&writer).await?;

        // An in-memory database lives in one connection; there is nothing
        // for separate readers to open.
        let reader = if in_memory {
            writer.clone()
        } else {
            SqlitePoolOptions::new()
                .max_connections(READERS)
                .connect_with(options.create_if_missing(false))
                .await?
        };
        Ok(SqliteCatalogue { writer, reader })
    }

    fn reader(&self) -> &SqlitePool {
        &self.reader
    }

    async fn begin_write(&self) -> sqlx::Result<Transaction<'static, Sqlite>> {
        self.writer.begin_with("BEGIN IMMEDIATE").await
    }

    /// Closing the last connection checkpoints the WAL into the main file.
    async fn close_pools(&self) {
        self.reader.close().await;
        self.writer.close().await;
    }
}

impl_catalogue!(SqliteCatalogue, Sqlite);

/// SQLite creates the file but not its folder; say so plainly instead of
/// "unable to open database file".
fn check_folder(file: &Path) -> StoreResult<()> {
    match file.parent() {
        Some(folder) if !folder.as_os_str().is_empty() && !folder.is_dir() => {
            Err(StoreError::BadUrl(format!(
                "the folder {} for the SQLite catalogue does not exist",
                folder.display()
            )))
        }
        _ => Ok(()),
    }
}
