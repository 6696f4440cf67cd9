//! A fresh PostgreSQL database per test, on the server `scripts/test.sh`
//! starts (`SHOP_TEST_POSTGRES_URL`).
//!
//! A test that needs PostgreSQL has `postgres` in its name (the repository
//! suite's `postgres::` module counts). Without a server, `scripts/test.sh`
//! leaves those tests out with `--skip postgres`, so they show as filtered
//! out, never as passed, and it says so last. A PostgreSQL test that runs
//! anyway without a server fails: it never passes without doing its work.

/// The PostgreSQL server URL for tests.
///
/// # Panics
/// When `SHOP_TEST_POSTGRES_URL` is not set.
pub fn postgres_url() -> String {
    match std::env::var("SHOP_TEST_POSTGRES_URL") {
        Ok(url) if !url.is_empty() => url,
        _ => panic!(
            "this test needs PostgreSQL (SHOP_TEST_POSTGRES_URL): run scripts/test.sh, \
             which starts one, or leave the PostgreSQL tests out with `-- --skip postgres`"
        ),
    }
}

/// A fresh, empty database on the test server; returns its URL.
pub async fn fresh_postgres_database(prefix: &str) -> String {
    use sqlx::Connection as _;
    let server_url = postgres_url();
    let name = format!("{prefix}_{}", uuid::Uuid::new_v4().simple());
    let mut conn = sqlx::PgConnection::connect(&server_url)
        .await
        .expect("connect to the test PostgreSQL server");
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut conn)
        .await
        .expect("create a test database");
    let (base, _) = server_url
        .rsplit_once('/')
        .expect("URL ends with /<database>");
    format!("{base}/{name}")
}

/// Which database engine a test runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// A SQLite file in the test's directory.
    Sqlite,
    /// A fresh database on the test PostgreSQL server.
    Postgres,
}

impl Backend {
    /// A fresh database named after `name` on this backend: a SQLite file
    /// in `dir`, or a new PostgreSQL database.
    pub async fn database_url(self, name: &str, dir: &std::path::Path) -> String {
        match self {
            Backend::Sqlite => format!("sqlite://{}", dir.join(format!("{name}.db")).display()),
            Backend::Postgres => fresh_postgres_database(name).await,
        }
    }
}
