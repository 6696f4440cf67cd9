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

/// How many rows the plan PostgreSQL keeps for `sql` once it is generic
/// (its plan for every value, used from a prepared statement's sixth run
/// on when no worse than the custom ones) read from `table`, as `EXPLAIN
/// ANALYZE` of `EXECUTE` with `args` (SQL literals) reports the scan of
/// that table: the rows it passed on and those its filter dropped; `types` are the parameters' types. A page of a list should
/// read about a page, whatever the values: a condition that a NULL value
/// switches off (`$1 IS NULL OR id > $1`) cannot bound an index scan in
/// such a plan.
///
/// # Panics
/// When the plan has no scan of `table`.
pub async fn rows_read_by_generic_plan(
    url: &str,
    sql: &str,
    types: &str,
    args: &str,
    table: &str,
) -> u64 {
    use sqlx::Connection as _;
    let mut conn = sqlx::PgConnection::connect(url)
        .await
        .expect("connect to the test database");
    // Test-made text: the statement under test and literal values.
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "SET plan_cache_mode = force_generic_plan; PREPARE page({types}) AS {sql}"
    )))
    .execute(&mut conn)
    .await
    .expect("prepare the statement");
    let plan: Vec<(String,)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF) EXECUTE page({args})"
    )))
    .fetch_all(&mut conn)
    .await
    .expect("explain the statement");
    let on_table = format!(" on {table} ");
    let at = plan
        .iter()
        .position(|(line,)| line.contains(&on_table))
        .unwrap_or_else(|| panic!("no scan of {table} in {plan:#?}"));
    // The rows the scan passed on, and those its filter dropped (on the
    // node's own lines, up to the next node).
    let number_after = |line: &str, label: &str| -> u64 {
        line.split(label).nth(1).map_or(0, |rest| {
            let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
            digits.parse().expect("a row count")
        })
    };
    let passed = number_after(&plan[at].0, "rows=");
    let dropped: u64 = plan[at + 1..]
        .iter()
        .map(|(line,)| line)
        .take_while(|line| !line.contains("->"))
        .map(|line| number_after(line, "Rows Removed by Filter: "))
        .sum();
    passed + dropped
}
