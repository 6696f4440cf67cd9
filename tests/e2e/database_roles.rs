//! The PostgreSQL init script the compose file ships
//! (deploy/postgres/init/01-databases.sh), run as the postgres image runs
//! it, against the test server: each service's role reaches its own
//! database and no other, and can migrate it.

use std::{path::Path, process::Command};

use sqlx::Connection as _;

/// The roles and databases the script creates (from deploy/services.tsv):
/// (service, role, database) for every service of the stack.
fn roles() -> Vec<(&'static str, String, &'static str)> {
    shop_testkit::stack::SERVICES
        .iter()
        .map(|s| (s.name, s.name.replace('-', "_"), s.database))
        .collect()
}

fn url(server: &url_parts::Server, role: &str, password: &str, database: &str) -> String {
    format!(
        "postgres://{role}:{password}@{}:{}/{database}",
        server.host, server.port
    )
}

mod url_parts {
    /// Host, port and superuser of the test server's URL.
    pub(super) struct Server {
        pub(super) host: String,
        pub(super) port: String,
        pub(super) user: String,
        pub(super) password: String,
    }

    /// `postgres://user[:password]@host:port/db`, as scripts/test.sh sets it.
    pub(super) fn parse(url: &str) -> Server {
        let rest = url.split_once("://").expect("a URL").1;
        let (credentials, rest) = rest.rsplit_once('@').expect("user@host");
        let (user, password) = credentials.split_once(':').unwrap_or((credentials, ""));
        let host_port = rest.split('/').next().unwrap();
        let (host, port) = host_port.rsplit_once(':').unwrap_or((host_port, "5432"));
        Server {
            host: host.into(),
            port: port.into(),
            user: user.into(),
            password: password.into(),
        }
    }
}

#[tokio::test]
async fn postgres_init_gives_each_service_a_role_for_its_own_database_only() {
    let admin_url = shop_testkit::postgres::postgres_url();
    let server = url_parts::parse(&admin_url);
    // The script is for a fresh volume; make this server one for it.
    let mut admin = sqlx::PgConnection::connect(&admin_url).await.unwrap();
    let roles = roles();
    for (_, role, database) in &roles {
        for statement in [
            format!("DROP DATABASE IF EXISTS {database} WITH (FORCE)"),
            format!("DROP ROLE IF EXISTS {role}"),
        ] {
            sqlx::query(sqlx::AssertSqlSafe(statement))
                .execute(&mut admin)
                .await
                .unwrap();
        }
    }

    let script =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/postgres/init/01-databases.sh");
    let passwords: Vec<String> = roles
        .iter()
        .map(|_| uuid::Uuid::new_v4().simple().to_string())
        .collect();
    let mut run = Command::new("sh");
    run.arg(&script)
        .env("POSTGRES_USER", &server.user)
        .env("PGHOST", &server.host)
        .env("PGPORT", &server.port)
        .env("PGPASSWORD", &server.password);
    for ((service, _, _), password) in roles.iter().zip(&passwords) {
        let variable = format!("{}_DB_PASSWORD", service.to_uppercase().replace('-', "_"));
        run.env(variable, password);
    }
    let output = run.output().expect("sh runs the init script");
    assert!(
        output.status.success(),
        "the init script failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );

    for ((_, role, own), password) in roles.iter().zip(&passwords) {
        // Its own database: connects, and can create what migrations create.
        let mut conn = sqlx::PgConnection::connect(&url(&server, role, password, own))
            .await
            .unwrap_or_else(|e| panic!("{role} cannot reach {own}: {e}"));
        sqlx::query("CREATE TABLE migrated (id BIGINT PRIMARY KEY)")
            .execute(&mut conn)
            .await
            .unwrap_or_else(|e| panic!("{role} cannot create a table in {own}: {e}"));
        // Every other service's database: refused at connection.
        for (_, _, other) in roles.iter().filter(|(_, _, db)| db != own) {
            let refused = sqlx::PgConnection::connect(&url(&server, role, password, other))
                .await
                .err()
                .unwrap_or_else(|| panic!("{role} reached {other}"));
            assert!(
                refused.to_string().contains("permission denied"),
                "{role} on {other}: {refused}"
            );
        }
    }
}
