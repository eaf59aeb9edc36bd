//! `viewcounter export`: from the file when no server holds it, from the running server when
//! one does, and a clear message (never a panic) when neither works.

use crate::helpers::*;

const NEVER: &[&str] = &["--flush-after", "1h", "--flush-max-wait", "1h"];

/// A stopped server's db with alpha 2, beta 1 and a nested slug 1.
async fn stopped_db() -> tempfile::TempDir {
    let app = spawn_app().await;
    let mut open = Vec::new();
    for slug in ["beta", "alpha", "2024/05/my_post.html", "alpha"] {
        open.push(app.join(slug).await);
    }
    drop(open);
    app.stop_and_keep_dir().await
}

fn db_arg(dir: &std::path::Path) -> String {
    dir.join("viewcounter.redb").display().to_string()
}

#[actix_web::test]
async fn export_reads_the_file_when_no_server_holds_it_as_sorted_csv_with_a_header() {
    let dir = stopped_db().await;
    let db = db_arg(dir.path());

    let csv = export(dir.path(), &["--db", &db], &[]).await;
    let explicit = export(dir.path(), &["--db", &db, "--format", "csv"], &[]).await;

    assert!(csv.status.success(), "{}", csv.stderr);
    assert_eq!(
        csv.stdout,
        "slug,total\n2024/05/my_post.html,1\nalpha,2\nbeta,1\n"
    );
    assert_eq!(explicit.stdout, csv.stdout);
}

#[actix_web::test]
async fn export_reads_the_file_as_the_json_totals_array() {
    let dir = stopped_db().await;
    let db = db_arg(dir.path());

    let json = export(dir.path(), &["--db", &db, "--format", "json"], &[]).await;

    assert!(json.status.success(), "{}", json.stderr);
    assert_eq!(
        parse_rows(&json.stdout),
        rows(&[("2024/05/my_post.html", 1), ("alpha", 2), ("beta", 1)])
    );
}

#[actix_web::test]
async fn export_of_a_database_without_views_is_the_header_or_an_empty_array() {
    let app = spawn_app().await;
    let dir = app.stop_and_keep_dir().await;
    let db = db_arg(dir.path());

    let csv = export(dir.path(), &["--db", &db], &[]).await;
    let json = export(dir.path(), &["--db", &db, "--format", "json"], &[]).await;

    assert!(csv.status.success(), "{}", csv.stderr);
    assert_eq!(csv.stdout, "slug,total\n");
    assert!(json.status.success(), "{}", json.stderr);
    assert_eq!(parse_rows(&json.stdout), rows(&[]));
}

#[actix_web::test]
async fn export_asks_the_running_server_when_it_holds_the_file_including_unwritten_views() {
    let app = spawn_app_configured(never_flush).await;
    let mut open = Vec::new();
    for slug in ["beta", "alpha", "alpha"] {
        open.push(app.join(slug).await);
    }
    let db = app.db().display().to_string();
    let url = format!("http://{}", app.addr);

    let csv = export(app.dir.path(), &["--db", &db, "--url", &url], &[]).await;
    let json = export(
        app.dir.path(),
        &["--db", &db, "--url", &url, "--format", "json"],
        &[],
    )
    .await;
    // Without --url: the server's --listen address, here from the environment.
    let listen = app.addr.to_string();
    let by_listen = export(
        app.dir.path(),
        &["--db", &db],
        &[("VIEWCOUNTER_LISTEN", &listen)],
    )
    .await;

    assert!(csv.status.success(), "{}", csv.stderr);
    assert_eq!(csv.stdout, "slug,total\nalpha,2\nbeta,1\n");
    assert!(json.status.success(), "{}", json.stderr);
    assert_eq!(parse_rows(&json.stdout), rows(&[("alpha", 2), ("beta", 1)]));
    assert!(by_listen.status.success(), "{}", by_listen.stderr);
    assert_eq!(by_listen.stdout, csv.stdout);
}

#[actix_web::test]
async fn export_from_a_running_binary_server_includes_unwritten_views() {
    let server = BinServer::start(NEVER).await;
    let _a = server.join("gamma").await;
    let _b = server.join("alpha").await;
    let db = server.db().display().to_string();
    let url = format!("http://{}", server.addr);

    let out = export(server.dir.path(), &["--db", &db, "--url", &url], &[]).await;

    assert!(out.status.success(), "{}", out.stderr);
    assert_eq!(out.stdout, "slug,total\nalpha,1\ngamma,1\n");
}

#[actix_web::test]
async fn export_passes_the_admin_token_to_a_running_server_and_says_when_it_is_missing() {
    let app = spawn_app_configured(|c| {
        never_flush(c);
        c.admin_token = Some("t0ken-for-export".into());
    })
    .await;
    let _r = app.join("alpha").await;
    let db = app.db().display().to_string();
    let url = format!("http://{}", app.addr);

    let with_flag = export(
        app.dir.path(),
        &[
            "--db",
            &db,
            "--url",
            &url,
            "--admin-token",
            "t0ken-for-export",
        ],
        &[],
    )
    .await;
    let with_env = export(
        app.dir.path(),
        &["--db", &db, "--url", &url],
        &[("VIEWCOUNTER_ADMIN_TOKEN", "t0ken-for-export")],
    )
    .await;
    let without = export(app.dir.path(), &["--db", &db, "--url", &url], &[]).await;

    assert!(with_flag.status.success(), "{}", with_flag.stderr);
    assert_eq!(with_flag.stdout, "slug,total\nalpha,1\n");
    assert!(with_env.status.success(), "{}", with_env.stderr);
    assert_eq!(with_env.stdout, with_flag.stdout);
    assert_clean_failure(&without);
    assert!(
        without.stderr.contains("401") || without.stderr.contains("token"),
        "says why: {}",
        without.stderr
    );
}

#[actix_web::test]
async fn export_with_neither_a_file_nor_a_server_fails_with_a_clear_message() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nothing-here.redb");
    let url = format!("http://127.0.0.1:{}", closed_port());

    let out = export(
        dir.path(),
        &["--db", &missing.display().to_string(), "--url", &url],
        &[],
    )
    .await;

    assert_clean_failure(&out);
    assert!(
        out.stderr.contains("nothing-here.redb"),
        "names the file: {}",
        out.stderr
    );
    assert!(
        out.stderr.contains(&url),
        "names the server: {}",
        out.stderr
    );
    assert!(!missing.exists(), "export created {}", missing.display());
}

#[actix_web::test]
async fn export_of_a_held_file_whose_server_does_not_answer_says_so() {
    let app = spawn_app_configured(never_flush).await;
    let _r = app.join("alpha").await;
    let db = app.db().display().to_string();
    let url = format!("http://127.0.0.1:{}", closed_port());

    let out = export(app.dir.path(), &["--db", &db, "--url", &url], &[]).await;

    assert_clean_failure(&out);
    assert!(
        out.stderr.contains("running server") && out.stderr.contains(&url),
        "says the file is held and the server did not answer: {}",
        out.stderr
    );
    // The server is untouched and still counts.
    assert_eq!(app.join("alpha").await.first, counts(2, 2));
}
