//! `viewcounter export`: from the file when no server holds it, from the running server when
//! one does, and a clear message (never a panic) when neither works.

use testkit::*;

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
    // No --url: the file, else the server at the --listen address.
    let listen = format!("127.0.0.1:{}", closed_port());
    let url = format!("http://{listen}");

    let out = export(
        dir.path(),
        &["--db", &missing.display().to_string()],
        &[("VIEWCOUNTER_LISTEN", &listen)],
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
    let listen = format!("127.0.0.1:{}", closed_port());
    let url = format!("http://{listen}");

    let out = export(
        app.dir.path(),
        &["--db", &db],
        &[("VIEWCOUNTER_LISTEN", &listen)],
    )
    .await;

    assert_clean_failure(&out);
    assert!(
        out.stderr.contains("running server") && out.stderr.contains(&url),
        "says the file is held and the server did not answer: {}",
        out.stderr
    );
    // The server is untouched and still counts.
    assert_eq!(app.join("alpha").await.first, counts(2, 2));
}

// ---------------------------------------------------------------------------------------------
// `--url` means that server: no local file is read, created or written. Without it, the output
// says which of the two was used.

/// `viewcounter import ARGS…` with `dir` as its working directory; 30 s to finish.
async fn import_in(dir: &std::path::Path, args: &[&str]) -> RunOutput {
    let args: Vec<&str> = std::iter::once("import")
        .chain(args.iter().copied())
        .collect();
    run(dir, &args).quiet().await
}

/// What `dir` holds, for messages.
fn listing(dir: &std::path::Path) -> Vec<String> {
    let entries = std::fs::read_dir(dir).expect("read the directory");
    entries
        .filter_map(|e| Some(e.ok()?.file_name().to_string_lossy().into_owned()))
        .collect()
}

async fn totals_of(server: &BinServer) -> Vec<(String, u64)> {
    let res = server.send(Req::get("/api/v1/totals")).await;
    assert_eq!(res.status, 200, "{res:?}");
    parse_rows(&res.text())
}

#[actix_web::test]
async fn import_with_url_goes_to_that_server_and_creates_no_file_where_it_runs() {
    // A server on its own --db elsewhere; the import run from a fresh directory.
    let server = BinServer::start(NEVER).await;
    let url = format!("http://{}", server.addr);
    let cwd = tempfile::tempdir().unwrap();
    std::fs::write(cwd.path().join("imp.csv"), "slug,total\nalpha,7\n").unwrap();

    let out = import_in(cwd.path(), &["--url", &url, "imp.csv"]).await;

    assert!(out.status.success(), "{}", out.stderr);
    assert_eq!(totals_of(&server).await, rows(&[("alpha", 7)]));
    assert_eq!(listing(cwd.path()), ["imp.csv"], "no db file created");
    assert_eq!(
        out.stdout,
        format!(
            "import into the server at {url}: 1 posts changed (+7 views), 0 unchanged, \
             0 rows skipped, 0 views added to days\n"
        )
    );
}

#[actix_web::test]
async fn export_with_url_prints_that_servers_totals_not_a_local_files() {
    let server = BinServer::start(NEVER).await;
    let _reader = server.join("alpha").await;
    let url = format!("http://{}", server.addr);
    // Another file at the default --db path where the command runs, with other numbers.
    let cwd = tempfile::tempdir().unwrap();
    std::fs::write(
        cwd.path().join("local.csv"),
        "slug,total\nalpha,5\nbeta,9\n",
    )
    .unwrap();
    let local = import_in(cwd.path(), &["local.csv"]).await;
    assert!(local.status.success(), "{}", local.stderr);
    let default_db = viewcounter::cli::DEFAULT_DB;
    assert!(cwd.path().join(default_db).exists(), "{}", local.stdout);

    let by_flag = export(cwd.path(), &["--url", &url], &[]).await;
    let by_env = export(cwd.path(), &[], &[("VIEWCOUNTER_URL", &url)]).await;

    for out in [&by_flag, &by_env] {
        assert!(out.status.success(), "{}", out.stderr);
        assert_eq!(out.stdout, "slug,total\nalpha,1\n", "the server's totals");
        assert!(
            out.stderr
                .contains(&format!("export: from the server at {url}\n")),
            "says where from: {}",
            out.stderr
        );
    }
}

#[actix_web::test]
async fn import_and_export_with_url_to_a_closed_port_fail_naming_it_and_touch_no_file() {
    let cwd = tempfile::tempdir().unwrap();
    std::fs::write(cwd.path().join("imp.csv"), "slug,total\nalpha,7\n").unwrap();
    let url = format!("http://127.0.0.1:{}", closed_port());

    let import = import_in(cwd.path(), &["--url", &url, "imp.csv"]).await;
    let export = export(cwd.path(), &["--url", &url], &[]).await;

    for out in [&import, &export] {
        assert_clean_failure(out);
        assert!(
            out.stderr.contains(&url),
            "names the server: {}",
            out.stderr
        );
        assert!(
            !out.stderr.contains("viewcounter.redb"),
            "looked at a local file: {}",
            out.stderr
        );
    }
    assert_eq!(listing(cwd.path()), ["imp.csv"], "no db file created");
}

#[actix_web::test]
async fn without_url_export_and_import_say_whether_they_used_the_file_or_its_server() {
    let stopped = stopped_db().await;
    let db = db_arg(stopped.path());
    let from_file = export(stopped.path(), &["--db", &db], &[]).await;
    assert!(from_file.status.success(), "{}", from_file.stderr);
    assert!(
        from_file
            .stderr
            .contains(&format!("export: from the file {db}\n")),
        "{}",
        from_file.stderr
    );

    let app = spawn_app_configured(never_flush).await;
    let _reader = app.join("alpha").await;
    let held = app.db().display().to_string();
    let listen = app.addr.to_string();
    let env = [("VIEWCOUNTER_LISTEN", listen.as_str())];
    let from_server = export(app.dir.path(), &["--db", &held], &env).await;
    assert!(from_server.status.success(), "{}", from_server.stderr);
    let through = format!("the server at http://{listen}, which holds {held}");
    assert!(
        from_server
            .stderr
            .contains(&format!("export: from {through}\n")),
        "{}",
        from_server.stderr
    );

    std::fs::write(app.dir.path().join("imp.csv"), "slug,total\nbeta,4\n").unwrap();
    let import = import_in(
        app.dir.path(),
        &["--db", &held, "--listen", &listen, "imp.csv"],
    )
    .await;
    assert!(import.status.success(), "{}", import.stderr);
    assert!(
        import
            .stdout
            .starts_with(&format!("import into {through}: 1 posts changed")),
        "{}",
        import.stdout
    );
}
