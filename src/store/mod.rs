//! Everything SQL. One `sqlx::AnyPool` serves SQLite (the embedded default) and PostgreSQL; where the two
//! dialects differ, the difference is chosen here and nowhere else.
//!
//! Portable column types only (docs/ARCHITECTURE.md): UUID text ids, Unix-millisecond BIGINT times,
//! JSON as text. Functions take `&Store` or a transaction and return domain types, never rows.

/// The condition, as SQL on the `pairs` table (unaliased), for a pair that waits to be served as an
/// ordinary pair: pending, not gold (gold pairs are mixed in by their own rule), not held for review and
/// not excluded. Every count of "pairs ready" and every ordinary claim uses it.
macro_rules! servable_sql {
    () => {
        "status = 'pending' AND gold IS NULL AND held = 0 AND excluded = 0"
    };
}

/// Which completion a judgment row (aliased `j`) preferred, 'a' or 'b', as SQL; NULL for answers
/// that prefer neither.
macro_rules! preferred_side_sql {
    () => {
        "(CASE WHEN j.choice = 'left' THEN (CASE WHEN j.left_is_a = 1 THEN 'a' ELSE 'b' END) \
           WHEN j.choice = 'right' THEN (CASE WHEN j.left_is_a = 1 THEN 'b' ELSE 'a' END) END)"
    };
}

pub mod dashboard;
pub mod export;
pub mod flags;
pub mod items;
pub mod judges;
pub mod leases;
pub mod members;
pub mod projects;
pub mod quality;
pub mod queue;
pub mod sessions;
pub mod stats;
pub mod text;
pub mod training;
pub mod undo;
pub mod users;

use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::{Any, AnyPool, Transaction};

/// What can go wrong below the HTTP layer. The HTTP layer maps each variant to a status.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{0} not found")]
    NotFound(&'static str),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    Invalid(String),
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
}

impl StoreError {
    /// Unique-constraint violations become a `Conflict` with a message a user can act on.
    pub(crate) fn unique_or(err: sqlx::Error, what: &str) -> StoreError {
        match &err {
            sqlx::Error::Database(db) if db.is_unique_violation() => {
                StoreError::Conflict(format!("{what} already exists"))
            }
            _ => StoreError::Database(err),
        }
    }
}

/// A stored name that is no longer one of its enum's values (a choice, say): the row is unreadable.
impl From<crate::domain::UnknownName> for StoreError {
    fn from(e: crate::domain::UnknownName) -> Self {
        StoreError::Invalid(format!("in the database: {e}"))
    }
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    Sqlite,
    Postgres,
}

/// The database: a pool, the dialect it speaks and the clock leases expire by. Cheap to clone; clones
/// share the clock.
#[derive(Debug, Clone)]
pub struct Store {
    pool: AnyPool,
    dialect: Dialect,
    clock: Clock,
    /// SQLite has one write lock, and its busy handler lets waiting writers retry in growing sleeps, so a
    /// writer that commits and begins again (an import's next chunk) can starve the others for seconds.
    /// Write transactions queue here first instead, first come first served.
    writers: Arc<tokio::sync::Mutex<()>>,
}

/// A write transaction: for SQLite it holds the store's writer turn until it commits or is dropped.
/// Derefs to the sqlx transaction.
pub struct WriteTx {
    tx: Transaction<'static, Any>,
    _turn: Option<tokio::sync::OwnedMutexGuard<()>>,
}

impl WriteTx {
    pub async fn commit(self) -> Result<()> {
        self.tx.commit().await?;
        Ok(())
    }

    pub async fn rollback(self) -> Result<()> {
        self.tx.rollback().await?;
        Ok(())
    }
}

/// Connections of a PostgreSQL pool: also the most transactions of this process that can be claiming
/// pairs at once (`leases::lock_budget`).
pub(crate) const POSTGRES_POOL: u32 = 16;

impl std::ops::Deref for WriteTx {
    type Target = Transaction<'static, Any>;
    fn deref(&self) -> &Self::Target {
        &self.tx
    }
}

impl std::ops::DerefMut for WriteTx {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.tx
    }
}

/// The time leases are given, compared and expire by: the system clock plus an offset that is zero
/// unless a test moves it forward, so a test can let a lease run out without waiting for it.
#[derive(Debug, Clone, Default)]
pub struct Clock {
    offset_ms: Arc<AtomicI64>,
}

impl Clock {
    /// Milliseconds since the Unix epoch, as this clock sees it.
    pub fn now_ms(&self) -> i64 {
        now_ms() + self.offset_ms.load(Ordering::Relaxed)
    }

    /// Moves this clock (and every clone of its store) forward by `by`, for tests.
    pub fn advance(&self, by: Duration) {
        let ms = i64::try_from(by.as_millis()).expect("advance by less than 292 million years");
        self.offset_ms.fetch_add(ms, Ordering::Relaxed);
    }
}

static SQLITE_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("migrations/sqlite");
static POSTGRES_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("migrations/postgres");

/// How a store connects.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// How long a SQLite writer waits for the one write lock before "database is locked".
    pub sqlite_busy_timeout: Duration,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            sqlite_busy_timeout: Duration::from_secs(30),
        }
    }
}

impl Store {
    /// Opens (creating when absent) the embedded SQLite database `<dir>/prefloop.db`.
    pub async fn open_data_dir(dir: &Path) -> Result<Store> {
        Store::open_data_dir_with(dir, &StoreOptions::default()).await
    }

    pub async fn open_data_dir_with(dir: &Path, options: &StoreOptions) -> Result<Store> {
        std::fs::create_dir_all(dir).map_err(|e| {
            StoreError::Invalid(format!("cannot create data dir {}: {e}", dir.display()))
        })?;
        let path = dir.join("prefloop.db");
        Store::connect_with(&format!("sqlite://{}?mode=rwc", path.display()), options).await
    }

    /// Connects to `sqlite://…` or `postgres://…` and applies the embedded migrations.
    pub async fn connect(url: &str) -> Result<Store> {
        Store::connect_with(url, &StoreOptions::default()).await
    }

    pub async fn connect_with(url: &str, store_options: &StoreOptions) -> Result<Store> {
        sqlx::any::install_default_drivers();
        let dialect = if url.starts_with("sqlite:") {
            Dialect::Sqlite
        } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            Dialect::Postgres
        } else {
            return Err(StoreError::Invalid(format!(
                "unsupported database url {url:?}: use sqlite://PATH or postgres://…"
            )));
        };
        let options = AnyConnectOptions::from_str(url)?;
        let pool = match dialect {
            Dialect::Sqlite => {
                // WAL lets readers run beside the one writer; the busy timeout makes writers queue
                // instead of failing while another transaction commits. A commit that crosses the
                // auto-checkpoint threshold copies the WAL back into the database before it returns,
                // with every other writer queued behind it: at 250 pages (1 MiB) instead of the default
                // 1,000 each such commit is short, which took the lease path's p99 under load from
                // 11-15 ms to 7-9 ms (docs/BENCHMARKS.md, bench-api). Never checkpointing is far worse:
                // reads slow down as the WAL grows.
                let pragmas = format!(
                    "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; \
                     PRAGMA foreign_keys = ON; PRAGMA busy_timeout = {}; PRAGMA wal_autocheckpoint = 250;",
                    store_options.sqlite_busy_timeout.as_millis()
                );
                AnyPoolOptions::new()
                    .max_connections(8)
                    .after_connect(move |conn, _| {
                        let pragmas = pragmas.clone();
                        Box::pin(async move {
                            sqlx::raw_sql(sqlx::AssertSqlSafe(pragmas))
                                .execute(conn)
                                .await?;
                            Ok(())
                        })
                    })
                    .connect_with(options)
                    .await?
            }
            Dialect::Postgres => {
                AnyPoolOptions::new()
                    .max_connections(POSTGRES_POOL)
                    .acquire_timeout(Duration::from_secs(30))
                    .connect_with(options)
                    .await?
            }
        };
        match dialect {
            Dialect::Sqlite => SQLITE_MIGRATIONS.run(&pool).await?,
            Dialect::Postgres => POSTGRES_MIGRATIONS.run(&pool).await?,
        }
        Ok(Store {
            pool,
            dialect,
            clock: Clock::default(),
            writers: Arc::default(),
        })
    }

    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    pub fn dialect(&self) -> Dialect {
        self.dialect
    }

    /// The clock of lease expiry (`leases`, and the free-pair queries in `queue`).
    pub fn clock(&self) -> &Clock {
        &self.clock
    }

    /// A transaction that will write. SQLite must take the write lock up front (`BEGIN IMMEDIATE`):
    /// a deferred transaction that reads first cannot wait for the lock later and fails instead.
    pub async fn begin_write(&self) -> Result<WriteTx> {
        Ok(match self.dialect {
            Dialect::Sqlite => {
                let turn = self.writers.clone().lock_owned().await;
                WriteTx {
                    tx: self.pool.begin_with("BEGIN IMMEDIATE").await?,
                    _turn: Some(turn),
                }
            }
            Dialect::Postgres => WriteTx {
                tx: self.pool.begin().await?,
                _turn: None,
            },
        })
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }
}

/// Milliseconds since the Unix epoch: the unit of every time column. Lease times go through
/// `Store::clock` instead, which tests can move forward.
pub fn now_ms() -> i64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock before 1970: this is a bug in the host");
    now.as_millis() as i64
}

pub fn new_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// RFC 3339 in UTC with exactly three fraction digits, the form every API answer uses (so that the
/// strings also sort in time order).
pub fn rfc3339(ms: i64) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp_nanos(ms as i128 * 1_000_000)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    let format = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
    );
    t.format(&format).unwrap_or_default()
}

/// An integer column, whichever width the database chose for it (PostgreSQL's COUNT is BIGINT,
/// an expression over literals may be INTEGER).
pub(crate) fn int(row: &sqlx::any::AnyRow, name: &str) -> Result<i64> {
    use sqlx::Row;
    match row.try_get::<i64, _>(name) {
        Ok(v) => Ok(v),
        Err(_) => Ok(row.try_get::<i32, _>(name)? as i64),
    }
}

/// A 0/1 flag column. Flags are BIGINT in both schemas: sqlx's Any driver cannot read SQLite booleans.
pub(crate) fn flag(row: &sqlx::any::AnyRow, name: &str) -> Result<bool> {
    Ok(int(row, name)? != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clones_of_a_clock_move_together() {
        let clock = Clock::default();
        let before = clock.now_ms();
        clock.clone().advance(Duration::from_secs(90));
        assert!(clock.now_ms() >= before + 90_000);
    }
}
