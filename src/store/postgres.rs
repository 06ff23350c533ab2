//! The Postgres backend, for shared or large catalogues.
//!
//! Postgres needs none of SQLite's care: row locks and MVCC let several
//! connections read and write at once, and schema migrations take an
//! advisory lock, so two tagd instances can start against one database.

use std::str::FromStr;
use std::time::Duration;

use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::{Postgres, Transaction};

use super::shared::impl_catalogue;
use super::{StoreError, StoreResult};

static MIGRATOR: Migrator = sqlx::migrate!("migrations/postgres");

const MAX_CONNECTIONS: u32 = 4;

/// How long to wait for a free connection (or for the server to accept a
/// new one) before reporting the database unavailable.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(5);

/// A catalogue in a Postgres database.
pub struct PostgresCatalogue {
    pool: PgPool,
}

impl PostgresCatalogue {
    /// Connects to a `postgres://` or `postgresql://` URL and brings the
    /// schema up to date. Any failure to connect is
    /// [`StoreError::Unavailable`], so a caller can retry with backoff.
    pub async fn connect(url: &str) -> StoreResult<PostgresCatalogue> {
        // The URL may carry a password: the error names only the problem.
        let options = PgConnectOptions::from_str(url)
            .map_err(|error| StoreError::BadUrl(format!("Postgres URL: {error}")))?
            .application_name("tagd");
        let pool = PgPoolOptions::new()
            .max_connections(MAX_CONNECTIONS)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect_with(options)
            .await
            .map_err(StoreError::Unavailable)?;
        MIGRATOR.run(&pool).await?;
        Ok(PostgresCatalogue { pool })
    }

    fn reader(&self) -> &PgPool {
        &self.pool
    }

    async fn begin_write(&self) -> sqlx::Result<Transaction<'static, Postgres>> {
        self.pool.begin().await
    }

    async fn close_pools(&self) {
        self.pool.close().await;
    }
}

impl_catalogue!(PostgresCatalogue, Postgres);
