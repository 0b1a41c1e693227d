//! PostgreSQL access: a bounded pool whose every wait has a timeout, and migrations that are safe
//! to run from several processes at once.

use std::time::Duration;

use anyhow::Context as _;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use tokio_postgres::NoTls;

use crate::config::DatabaseArgs;

mod embedded {
    refinery::embed_migrations!("../migrations");
}

/// Key of the session-level advisory lock that serialises migrations across processes.
const MIGRATION_LOCK_KEY: i64 = 0x5357_4954_4348_5944; // "SWITCHYD"

/// Builds the pool. It never connects here: the first `get()` does, within `db_timeout`, so a
/// process can start while Postgres is down and report itself unready instead of crashing.
pub fn pool(args: &DatabaseArgs) -> anyhow::Result<Pool> {
    let mut pg: tokio_postgres::Config = args
        .database_url
        .parse()
        .context("SWITCHYARD_DATABASE_URL is not a valid PostgreSQL URL")?;
    pg.connect_timeout(args.db_timeout);
    // A peer that vanishes without closing the connection is noticed in seconds, not after the
    // kernel's retransmission timeout: a silent connection must not pin a batch for minutes.
    pg.keepalives(true)
        .keepalives_idle(Duration::from_secs(5))
        .keepalives_interval(Duration::from_secs(2))
        .keepalives_retries(3)
        .tcp_user_timeout(Duration::from_secs(10));
    pg.options(format!(
        "-c statement_timeout={} -c lock_timeout={}",
        args.db_statement_timeout.as_millis(),
        args.db_statement_timeout.as_millis()
    ));
    pg.application_name("switchyard");
    let manager = Manager::from_config(
        pg,
        NoTls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    Pool::builder(manager)
        .max_size(args.db_pool_size.max(1))
        .wait_timeout(Some(args.db_timeout))
        .create_timeout(Some(args.db_timeout))
        .recycle_timeout(Some(args.db_timeout))
        .runtime(Runtime::Tokio1)
        .build()
        .context("building the PostgreSQL pool")
}

/// Applies every pending migration in `migrations/`.
///
/// Safe to call from many processes at once: a session advisory lock lets one migrate while the
/// others wait, then find nothing left to do. Uses its own connection, without the pool's
/// statement timeout, because waiting for the lock may take a while.
pub async fn migrate(database_url: &str) -> anyhow::Result<usize> {
    let (mut client, connection) = tokio_postgres::connect(database_url, NoTls)
        .await
        .context("connecting to PostgreSQL to migrate")?;
    let driver = tokio::spawn(connection);
    client
        .execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK_KEY])
        .await
        .context("taking the migration lock")?;
    let outcome = embedded::migrations::runner().run_async(&mut client).await;
    // Unlocking is best effort: closing the session releases the lock anyway.
    let _ = client
        .execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK_KEY])
        .await;
    drop(client);
    driver.abort();
    let report = outcome.context("applying migrations")?;
    Ok(report.applied_migrations().len())
}

/// True when a connection can be had and answers `SELECT 1` within `timeout`.
pub async fn ping(pool: &Pool, timeout: Duration) -> bool {
    let probe = async {
        let client = pool.get().await.ok()?;
        client.simple_query("SELECT 1").await.ok()
    };
    matches!(tokio::time::timeout(timeout, probe).await, Ok(Some(_)))
}

/// Whether an error means "the database is unavailable" (a pool timeout, a refused or broken
/// connection) rather than a bug or a constraint violation. Callers map it to 503.
pub fn is_unavailable(err: &deadpool_postgres::PoolError) -> bool {
    match err {
        deadpool_postgres::PoolError::Timeout(_) => true,
        deadpool_postgres::PoolError::Backend(e) => pg_unavailable(e),
        _ => true,
    }
}

/// Whether a query error is a lost or refused connection, or a cancelled statement.
pub fn pg_unavailable(err: &tokio_postgres::Error) -> bool {
    if err.is_closed() {
        return true;
    }
    match err.code() {
        // statement_timeout, admin shutdown, crash shutdown, cannot connect now.
        Some(code) => matches!(code.code(), "57014" | "57P01" | "57P02" | "57P03" | "55P03"),
        // No SQLSTATE: a connection-level failure if an I/O error lies beneath, else a bug
        // (a type mismatch, say) that must not hide behind a 503.
        None => {
            let mut source = std::error::Error::source(err);
            while let Some(e) = source {
                if e.is::<std::io::Error>() {
                    return true;
                }
                source = e.source();
            }
            false
        }
    }
}
