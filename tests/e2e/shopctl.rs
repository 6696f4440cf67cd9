//! shopctl against the real service binaries: the commands a user runs,
//! their output in both formats, and exit codes that name the status.

use std::{path::Path, process::Stdio, time::Duration};

use serde_json::Value;
use shop_testkit::{ADMIN_EMAIL, ADMIN_PASSWORD, Backend, Stack, binary};
use tokio::{io::AsyncWriteExt as _, process::Command};

use crate::{INVENTORY, ORDERS, USERS};

/// `shopctl` with the stack's addresses and its own config directory.
fn shopctl(stack: &Stack, config: &Path) -> Command {
    let mut command = Command::new(binary("shopctl"));
    command
        .env_clear()
        .env(
            "SHOPCTL_USER_ADDR",
            format!("http://{}", stack.service(USERS).addr),
        )
        .env(
            "SHOPCTL_ORDER_ADDR",
            format!("http://{}", stack.service(ORDERS).addr),
        )
        .env(
            "SHOPCTL_INVENTORY_ADDR",
            format!("http://{}", stack.service(INVENTORY).addr),
        )
        .env("SHOPCTL_CONFIG_DIR", config)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    command
}

struct Outcome {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Outcome {
    fn json_lines(&self) -> Vec<Value> {
        self.stdout
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?}: {e}")))
            .collect()
    }
}

async fn run(mut command: Command, args: &[&str], stdin: &str) -> Outcome {
    let mut child = command.args(args).spawn().unwrap();
    let mut input = child.stdin.take().unwrap();
    input.write_all(stdin.as_bytes()).await.unwrap();
    drop(input);
    let output = tokio::time::timeout(Duration::from_secs(20), child.wait_with_output())
        .await
        .expect("shopctl finishes")
        .unwrap();
    Outcome {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8(output.stdout).unwrap(),
        stderr: String::from_utf8(output.stderr).unwrap(),
    }
}

#[tokio::test]
async fn a_user_signs_up_orders_and_watches_while_an_admin_processes() {
    let stack = Stack::start(Backend::Sqlite, &[]).await;
    let ada = tempfile::tempdir().unwrap();
    let admin = tempfile::tempdir().unwrap();

    let signup = run(
        shopctl(&stack, ada.path()),
        &[
            "signup",
            "--email",
            "ada@example.com",
            "--username",
            "ada",
            "--first-name",
            "Ada",
            "--last-name",
            "Lovelace",
        ],
        "correct horse battery\n",
    )
    .await;
    assert_eq!(signup.code, 0, "{}", signup.stderr);
    assert!(
        signup.stdout.contains("ada@example.com"),
        "{}",
        signup.stdout
    );

    let login = run(
        shopctl(&stack, ada.path()),
        &["login", "ada"],
        "correct horse battery\n",
    )
    .await;
    assert_eq!(login.code, 0, "{}", login.stderr);
    assert!(ada.path().join("session.json").exists());

    let me = run(
        shopctl(&stack, ada.path()),
        &["users", "get", "-o", "json"],
        "",
    )
    .await;
    assert_eq!(me.code, 0, "{}", me.stderr);
    let me = &me.json_lines()[0];
    assert_eq!(me["username"], "ada");
    assert_eq!(me["roles"][0], "customer");

    let created = run(
        shopctl(&stack, ada.path()),
        &[
            "orders",
            "create",
            "--item",
            "sku-1:2",
            "--item",
            "sku-2:1:1250",
            "--request-id",
            "cli-1",
            "-o",
            "json",
        ],
        "",
    )
    .await;
    assert_eq!(created.code, 0, "{}", created.stderr);
    let order = created.json_lines()[0].clone();
    // 2 x 499 + 1 x 1250, the development catalogue's prices.
    assert_eq!(order["total_cents"], 2248);
    assert_eq!(order["status"], "pending");
    let id = order["id"].as_str().unwrap().to_owned();

    let listed = run(shopctl(&stack, ada.path()), &["orders", "list"], "").await;
    assert_eq!(listed.code, 0);
    assert!(
        listed.stdout.starts_with("ID"),
        "a table with a header:\n{}",
        listed.stdout
    );
    assert!(listed.stdout.contains(&id));

    // Ada watches while an admin moves the order through stdin.
    let mut watch = shopctl(&stack, ada.path())
        .args(["orders", "watch", &id, "-o", "json"])
        .spawn()
        .unwrap();
    // The watch prints the current state first; waited for, so that the
    // changes below cannot overtake it.
    let mut stdout = tokio::io::BufReader::new(watch.stdout.take().unwrap());
    let mut first = String::new();
    tokio::time::timeout(
        Duration::from_secs(10),
        tokio::io::AsyncBufReadExt::read_line(&mut stdout, &mut first),
    )
    .await
    .expect("the current state within 10 s")
    .unwrap();
    let admin_login = run(
        shopctl(&stack, admin.path()),
        &["login", ADMIN_EMAIL],
        &format!("{ADMIN_PASSWORD}\n"),
    )
    .await;
    assert_eq!(admin_login.code, 0, "{}", admin_login.stderr);
    let processed = run(
        shopctl(&stack, admin.path()),
        &["orders", "process"],
        &format!("{id} confirmed\n{id} shipped\n# a comment\n{id} delivered\n"),
    )
    .await;
    assert_eq!(
        processed.code, 0,
        "{}\n{}",
        processed.stdout, processed.stderr
    );
    assert_eq!(processed.stdout.lines().count(), 3);
    assert!(
        processed.stdout.lines().all(|l| l.contains("success=true")),
        "{}",
        processed.stdout
    );

    let watched = tokio::time::timeout(Duration::from_secs(10), async {
        let mut text = first;
        tokio::io::AsyncReadExt::read_to_string(&mut stdout, &mut text)
            .await
            .unwrap();
        (watch.wait().await.unwrap(), text)
    })
    .await
    .expect("watch ends after DELIVERED");
    assert!(watched.0.success());
    let states: Vec<String> = watched
        .1
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["status"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(states.last().map(String::as_str), Some("delivered"));
    assert!(
        states.len() >= 2,
        "the current state, then the changes: {states:?}"
    );
}

#[tokio::test]
async fn an_admin_keeps_the_catalogue_and_stock_while_a_customer_watches_it() {
    let stack = Stack::start(Backend::Sqlite, &[]).await;
    let admin = tempfile::tempdir().unwrap();
    let login = run(
        shopctl(&stack, admin.path()),
        &["login", ADMIN_EMAIL],
        &format!("{ADMIN_PASSWORD}\n"),
    )
    .await;
    assert_eq!(login.code, 0, "{}", login.stderr);
    let json = |args: &[&str]| {
        let mut all = args.to_vec();
        all.extend(["-o", "json"]);
        all.iter().map(|a| (*a).to_owned()).collect::<Vec<_>>()
    };

    let put = json(&[
        "products",
        "put",
        "sku-tea",
        "--name",
        "Green tea",
        "--price",
        "725",
    ]);
    let put = run(shopctl(&stack, admin.path()), &refs(&put), "").await;
    assert_eq!(put.code, 0, "{}", put.stderr);
    assert_eq!(put.json_lines()[0]["available"], 0);

    let mut watch = shopctl(&stack, admin.path())
        .args(["stock", "watch", "sku-tea", "-o", "json"])
        .spawn()
        .unwrap();
    let mut stdout = tokio::io::BufReader::new(watch.stdout.take().unwrap());
    let mut next_available = async || {
        use tokio::io::AsyncBufReadExt as _;
        let mut line = String::new();
        let read = tokio::time::timeout(Duration::from_secs(10), stdout.read_line(&mut line))
            .await
            .expect("a line from the watch within 10 s")
            .unwrap();
        assert_ne!(read, 0, "the watch ended early");
        serde_json::from_str::<Value>(&line).unwrap()["available"]
            .as_i64()
            .unwrap()
    };
    // The watch prints the current value first (waited for, so that the
    // delivery below cannot overtake it), then every change.
    assert_eq!(next_available().await, 0);

    let adjust = json(&["stock", "adjust", "sku-tea", "40", "--reason", "delivery"]);
    let adjusted = run(shopctl(&stack, admin.path()), &refs(&adjust), "").await;
    assert_eq!(adjusted.code, 0, "{}", adjusted.stderr);
    assert_eq!(adjusted.json_lines()[0]["on_hand"], 40);
    let below = json(&["stock", "adjust", "sku-tea", "-41"]);
    let below = run(shopctl(&stack, admin.path()), &refs(&below), "").await;
    assert_eq!(below.code, 10 + 9, "FAILED_PRECONDITION: {}", below.stderr);

    assert_eq!(next_available().await, 40, "the delivery");
    watch.kill().await.unwrap();

    let listed = run(
        shopctl(&stack, admin.path()),
        &["products", "list", "--active-only", "-o", "json"],
        "",
    )
    .await;
    let skus: Vec<_> = listed
        .json_lines()
        .iter()
        .map(|p| p["sku"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(skus, ["sku-1", "sku-2", "sku-3", "sku-tea"]);
}

fn refs(args: &[String]) -> Vec<&str> {
    args.iter().map(String::as_str).collect()
}

#[tokio::test]
async fn exit_codes_say_what_the_status_was() {
    let stack = Stack::start(Backend::Sqlite, &[]).await;
    let config = tempfile::tempdir().unwrap();

    let no_session = run(shopctl(&stack, config.path()), &["orders", "list"], "").await;
    assert_eq!(no_session.code, 1);
    assert!(
        no_session.stderr.contains("shopctl login"),
        "{}",
        no_session.stderr
    );

    let bad_password = run(
        shopctl(&stack, config.path()),
        &["login", ADMIN_EMAIL],
        "wrong password\n",
    )
    .await;
    assert_eq!(bad_password.code, 26, "{}", bad_password.stderr);
    assert!(
        bad_password.stderr.contains("UNAUTHENTICATED"),
        "{}",
        bad_password.stderr
    );

    run(
        shopctl(&stack, config.path()),
        &[
            "signup",
            "--email",
            "bob@example.com",
            "--username",
            "bob",
            "--first-name",
            "Bob",
            "--last-name",
            "B",
            "--password",
            "long enough 1",
        ],
        "",
    )
    .await;
    let login = run(
        shopctl(&stack, config.path()),
        &["login", "bob", "--password", "long enough 1"],
        "",
    )
    .await;
    assert_eq!(login.code, 0, "{}", login.stderr);

    let missing = run(
        shopctl(&stack, config.path()),
        &["orders", "get", &uuid::Uuid::now_v7().to_string()],
        "",
    )
    .await;
    assert_eq!(missing.code, 15, "{}", missing.stderr);
    assert!(missing.stderr.contains("NOT_FOUND"));

    let not_admin = run(shopctl(&stack, config.path()), &["users", "list"], "").await;
    assert_eq!(not_admin.code, 17, "{}", not_admin.stderr);

    let invalid = run(
        shopctl(&stack, config.path()),
        &["orders", "create", "--item", "sku:0:100"],
        "",
    )
    .await;
    assert_eq!(invalid.code, 13, "{}", invalid.stderr);
    assert!(
        invalid.stderr.contains("items[0].quantity"),
        "{}",
        invalid.stderr
    );

    let usage = run(shopctl(&stack, config.path()), &["orders", "create"], "").await;
    assert_eq!(usage.code, 2, "clap's usage error");

    let down = run(
        {
            let mut c = shopctl(&stack, config.path());
            c.env(
                "SHOPCTL_ORDER_ADDR",
                format!("http://{}", shop_testkit::unused_address()),
            );
            c
        },
        &["orders", "list"],
        "",
    )
    .await;
    assert_eq!(down.code, 24, "{}", down.stderr);
}
