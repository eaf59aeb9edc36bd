//! Secrets never reach a log line or an error message (design.md "The owner's endpoints are the
//! owner's alone"): the password in `--redis`, wherever the URL is named. (The admin token is
//! never printed by the binary at all; the configuration's `Debug` masking both is a unit test
//! in `src/config.rs`.)

use std::process::Stdio;
use std::time::Duration;

use testkit::*;

const PASSWORD: &str = "hunter2";

/// URLs an owner could type, each holding the password, none usable: a typo in the port, and
/// a `#` or `/` left unescaped in the password (no parser can say where such a password ends).
const UNUSABLE: [&str; 3] = [
    "redis://:hunter2@127.0.0.1:notaport/0",
    "redis://:hunter2#x@127.0.0.1:6379/0",
    "redis://:hunter2/x@127.0.0.1:6379/0",
];

/// A refusal that names `--redis` and shows the URL with its password masked, never the
/// password itself.
fn assert_refused_without_the_password(out: &RunOutput, url: &str) {
    assert_clean_failure(out);
    assert!(
        !out.stderr.contains(PASSWORD),
        "{url}: the password is in the message: {}",
        out.stderr
    );
    assert!(out.stderr.contains("--redis"), "{url}: {}", out.stderr);
    assert!(out.stderr.contains(":***@"), "{url}: {}", out.stderr);
}

#[actix_web::test]
async fn serve_refuses_an_unusable_redis_url_naming_the_flag_but_not_its_password() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("v.redb").display().to_string();
    for url in UNUSABLE {
        let out = run(
            dir.path(),
            &[
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--db",
                &db,
                "--redis",
                url,
            ],
        )
        .await;
        assert_refused_without_the_password(&out, url);
        assert!(out.stderr.contains("is not a Redis URL"), "{}", out.stderr);
    }
}

#[actix_web::test]
async fn export_and_import_refuse_an_unusable_redis_url_without_its_password() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("imp.csv");
    std::fs::write(&file, "slug,total\nalpha,7\n").unwrap();
    let file = file.display().to_string();
    for url in UNUSABLE {
        let export = run(dir.path(), &["export", "--redis", url]).await;
        assert_refused_without_the_password(&export, url);
        let import = run(dir.path(), &["import", "--redis", url, &file]).await;
        assert_refused_without_the_password(&import, url);
        // And from the environment, as a systemd unit's env file gives it.
        let mut cmd = bin_command(dir.path());
        cmd.args(["export"])
            .env("VIEWCOUNTER_REDIS", url)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let out = cmd.output().await.expect("run export");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{stderr}");
        assert!(!stderr.contains(PASSWORD), "{url}: {stderr}");
    }
}

/// The node's log until `holds` (polled: the log is written as the node runs).
async fn log_until(server: &BinServer, what: &str, holds: impl Fn(&str) -> bool) -> String {
    let mut log = String::new();
    await_value(what, true, Duration::from_secs(10), || {
        log = server.log();
        std::future::ready(holds(&log))
    })
    .await;
    log
}

#[actix_web::test]
async fn a_cluster_node_logs_its_redis_url_with_the_password_masked() {
    // An `@` in the password is valid URL syntax (the last `@` ends the user information):
    // this password really authenticates, so the node must use it and still never print it.
    let password = format!("{PASSWORD}@x");
    let Some(redis) = Redis::start_with_password(&password).await else {
        return;
    };
    let node = redis.node("n1").start(&[]).await;
    await_value(
        "redis state",
        "ok".to_owned(),
        Duration::from_secs(10),
        || async {
            let stats = stats(node.addr).await;
            stats["redis"].as_str().unwrap_or_default().to_owned()
        },
    )
    .await;
    let masked = format!("redis://:***@127.0.0.1:{}/0", redis.port);
    let log = log_until(&node, "the joining line", |log| log.contains("joining")).await;
    assert!(log.contains(&masked), "names the Redis it joins: {log}");
    assert!(!log.contains(PASSWORD), "the password is in the log: {log}");

    // A wrong password: Redis refuses the node, which says so, again without the password.
    let wrong = format!("redis://:wrong-{PASSWORD}@127.0.0.1:{}/0", redis.port);
    let refused = BinServer::start(&["--redis", &wrong, "--node-id", "n2"]).await;
    let log = log_until(&refused, "the Redis warning", |log| {
        log.contains("Redis unavailable")
    })
    .await;
    assert!(!log.contains(PASSWORD), "the password is in the log: {log}");
}
