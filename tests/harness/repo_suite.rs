//! The repository suite of every service, instantiated once per backend.

/// Runs each check of a repository suite against SQLite and PostgreSQL.
///
/// Every `$check` is an `async fn(&S)` in the calling module, where `S` is
/// the store type `$store` hands out: `$store` is an
/// `async fn(Backend) -> (Arc<S>, TempDir)` in the calling module that opens
/// and migrates a fresh database. Each check becomes `sqlite::<check>` and
/// `postgres::<check>`; the PostgreSQL ones are left out, by name, when no
/// server is available (see [`crate::postgres_url`]).
///
/// ```text
/// shop_testkit::repo_suite!(store; creates_and_finds, lists_in_order);
/// ```
#[macro_export]
macro_rules! repo_suite {
    ($store:ident; $($check:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test]
                async fn $check() {
                    let (store, _dir) = super::$store($crate::Backend::Sqlite).await;
                    super::$check(store.as_ref()).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test]
                async fn $check() {
                    let (store, _dir) = super::$store($crate::Backend::Postgres).await;
                    super::$check(store.as_ref()).await;
                }
            )*
        }
    };
}
