//! The owner's endpoints are the owner's alone (`design.md`): no page of another site, no page on
//! a rebinding name and no guesser reaches the admin API. Every request here is what a browser
//! (or an attacker's script) sends: a `fetch` in `no-cors` mode, a form post, a page whose name
//! resolves to 127.0.0.1; each is refused and nothing is written.

use testkit::*;

const ADMIN: &str = "owner-only-tests-admin-token";
const EVIL: &str = "http://evil.example";
const BLOG: &str = "https://blog.example";
/// A name the attacker controls, resolving to 127.0.0.1 once the page is loaded.
const REBIND: &str = "rebind.attacker.example:8080";
/// What the attacker's import would write.
const FILE: &str = "slug,total\nalpha,1000000\n";

fn with_token(c: &mut Config) {
    c.admin_token = Some(ADMIN.into());
}

fn bearer(req: Req, token: &str) -> Req {
    req.header("Authorization", format!("Bearer {token}"))
}

/// The two servers every attack is tried on: without a token and with one.
async fn both_servers() -> [(&'static str, TestApp); 2] {
    [
        ("no token", spawn_app().await),
        ("a token", spawn_app_configured(with_token).await),
    ]
}

/// The totals as the owner reads them (loopback; the bearer token where there is one), from a
/// client address of its own so that no guesser's budget is drawn on.
async fn owners_totals(app: &TestApp, token: bool) -> Vec<(String, u64)> {
    let mut req = Req::get("/api/v1/totals");
    if token {
        req = bearer(req, ADMIN).client_ip("198.51.100.200");
    }
    let res = app.send(req).await;
    assert_eq!(res.status, 200, "the owner reads the totals: {res:?}");
    parse_rows(&res.text())
}

/// `fetch(url, {method: "POST", mode: "no-cors", body})` from a page of another site: a
/// simple request, sent without a preflight.
fn no_cors_fetch(target: &str, body: &str) -> Req {
    Req::post(target, body)
        .origin(EVIL)
        .header("Sec-Fetch-Site", "cross-site")
        .header("Sec-Fetch-Mode", "no-cors")
        .header("Sec-Fetch-Dest", "empty")
}

/// A `<form method="post" action="http://127.0.0.1:PORT/…">` of another site, submitted.
fn cross_site_form(target: &str, body: &str) -> Req {
    Req::post(target, body)
        .header("Content-Type", "application/x-www-form-urlencoded")
        .origin(EVIL)
        .header("Sec-Fetch-Site", "cross-site")
        .header("Sec-Fetch-Mode", "navigate")
        .header("Sec-Fetch-Dest", "document")
        .header("Sec-Fetch-User", "?1")
}

fn form_body(token: &str) -> String {
    form_urlencoded::Serializer::new(String::new())
        .append_pair("token", token)
        .finish()
}

// ---------------------------------------------------------------------------------------------
// Other sites' pages.

#[actix_web::test]
async fn a_no_cors_fetch_from_another_site_cannot_import() {
    for (server, app) in both_servers().await {
        let token = server == "a token";
        let _reader = app.join("alpha").await;
        let res = app
            .send(no_cors_fetch("/api/v1/import?mode=add", FILE))
            .await;
        res.assert_json_error(403);
        // Not even a page that read the token somewhere gets in this way.
        let with = bearer(no_cors_fetch("/api/v1/import?mode=add", FILE), ADMIN);
        app.send(with).await.assert_json_error(403);
        // `Origin: null` (a sandboxed frame, a `data:` page) is no better.
        let opaque = Req::post("/api/v1/import?mode=add", FILE).origin("null");
        app.send(opaque).await.assert_json_error(403);
        assert_eq!(
            owners_totals(&app, token).await,
            rows(&[("alpha", 1)]),
            "{server}: nothing written"
        );
    }
}

#[actix_web::test]
async fn a_cross_site_form_cannot_import_log_in_or_log_out() {
    for (server, app) in both_servers().await {
        let token = server == "a token";
        let import = app
            .send(cross_site_form("/api/v1/import?mode=add", FILE))
            .await;
        import.assert_json_error(403);

        // A login the other site makes for the owner's browser, the right token included.
        let login = app
            .send(cross_site_form("/admin/login", &form_body(ADMIN)))
            .await;
        assert_eq!(login.status, 403, "{server}: {login:?}");
        assert!(
            login
                .header("content-type")
                .unwrap_or_default()
                .starts_with("text/html"),
            "{server}: a page a browser shows: {login:?}"
        );
        assert!(
            login.text().contains("not sent from the dashboard"),
            "{login:?}"
        );
        assert_eq!(login.header("set-cookie"), None, "{server}: no cookie set");

        let logout = app.send(cross_site_form("/admin/logout", "")).await;
        assert_eq!(logout.status, 403, "{server}: {logout:?}");
        assert_eq!(
            logout.header("set-cookie"),
            None,
            "{server}: no cookie cleared"
        );

        // A page on a sibling subdomain is the same site, not the same origin: refused too.
        let sibling = cross_site_form("/admin/logout", "")
            .origin("http://blog.127.0.0.1.example")
            .header("Sec-Fetch-Site", "same-site");
        assert_eq!(app.send(sibling).await.status, 403, "{server}");

        assert_eq!(owners_totals(&app, token).await, rows(&[]), "{server}");
        if token {
            the_dashboards_own_forms_still_log_in_and_out(&app).await;
        }
    }
}

/// What the dashboard's own login and logout forms send, directly and through nginx or Caddy.
async fn the_dashboards_own_forms_still_log_in_and_out(app: &TestApp) {
    let own = |target: &str, body: &str| {
        Req::post(target, body)
            .header("Content-Type", "application/x-www-form-urlencoded")
            .origin(&app.origin())
            .header("Sec-Fetch-Site", "same-origin")
            .header("Sec-Fetch-Mode", "navigate")
            .header("Sec-Fetch-Dest", "document")
    };
    let login = app.send(own("/admin/login", &form_body(ADMIN))).await;
    assert_eq!(login.status, 303, "{login:?}");
    assert!(login.header("set-cookie").is_some(), "{login:?}");
    let logout = app.send(own("/admin/logout", "")).await;
    assert_eq!(logout.status, 303, "{logout:?}");
    assert!(
        logout
            .header("set-cookie")
            .is_some_and(|c| c.contains("Max-Age=0"))
    );

    // Through a proxy: the page is https://counter.example, the proxy passes the browser's
    // Host and says the browser spoke HTTPS.
    let proxied = |target: &str, body: &str| {
        Req::post(target, body)
            .header("Content-Type", "application/x-www-form-urlencoded")
            .header("Host", "counter.example")
            .header("X-Forwarded-Proto", "https")
            .client_ip("203.0.113.20")
            .origin("https://counter.example")
            .header("Sec-Fetch-Site", "same-origin")
    };
    let login = app.send(proxied("/admin/login", &form_body(ADMIN))).await;
    assert_eq!(login.status, 303, "{login:?}");
    assert!(
        login
            .header("set-cookie")
            .is_some_and(|c| c.contains("Secure"))
    );
    let logout = app.send(proxied("/admin/logout", "")).await;
    assert_eq!(logout.status, 303, "{logout:?}");
}

#[actix_web::test]
async fn an_import_without_our_header_is_refused_naming_it() {
    for (server, app) in both_servers().await {
        let token = server == "a token";
        // What curl sends: no Origin, no Sec-Fetch-*; the bearer token where there is one.
        let mut plain =
            Req::post("/api/v1/import?mode=add", FILE).header("User-Agent", "curl/8.5.0");
        if token {
            plain = bearer(plain, ADMIN);
        }
        let message = app.send(plain.clone()).await.assert_json_error(403);
        assert!(
            message.contains("X-Viewcounter-Import: 1") && message.contains("viewcounter import"),
            "{server}: {message}"
        );
        let wrong = plain.clone().header("X-Viewcounter-Import", "yes");
        app.send(wrong).await.assert_json_error(403);
        assert_eq!(owners_totals(&app, token).await, rows(&[]), "{server}");

        let ours = plain.header("X-Viewcounter-Import", "1");
        let res = app.send(ours).await;
        assert_eq!(res.status, 200, "{server}: {res:?}");
        assert_eq!(
            owners_totals(&app, token).await,
            rows(&[("alpha", 1_000_000)])
        );
    }
}

#[actix_web::test]
async fn a_preflight_for_an_import_is_never_approved_even_from_an_allowed_origin() {
    let app = spawn_app_configured(|c| c.origins = origins(&[BLOG])).await;
    let preflight = Req::options("/api/v1/import?mode=add")
        .origin(BLOG)
        .header("Access-Control-Request-Method", "POST")
        .header("Access-Control-Request-Headers", "x-viewcounter-import")
        .header("Sec-Fetch-Mode", "cors")
        .header("Sec-Fetch-Site", "cross-site")
        .header("Sec-Fetch-Dest", "empty");
    let res = app.send(preflight).await;
    assert_eq!(res.header("access-control-allow-origin"), None, "{res:?}");
    let allowed = res
        .header("access-control-allow-headers")
        .unwrap_or_default();
    assert!(
        !allowed
            .to_ascii_lowercase()
            .contains("x-viewcounter-import"),
        "{res:?}"
    );

    // Were a browser to send it anyway, an --allow-origin page may count views, never import.
    let sent = Req::import("/api/v1/import?mode=add", FILE)
        .origin(BLOG)
        .header("Sec-Fetch-Site", "cross-site")
        .header("Sec-Fetch-Mode", "cors")
        .header("Sec-Fetch-Dest", "empty");
    app.send(sent.clone()).await.assert_json_error(403);
    // Nor with the fetch metadata of an older browser that sends none.
    let bare = sent
        .without("Sec-Fetch-Site")
        .without("Sec-Fetch-Mode")
        .without("Sec-Fetch-Dest");
    app.send(bare).await.assert_json_error(403);
    assert_eq!(app.totals().await, rows(&[]));
}

// ---------------------------------------------------------------------------------------------
// DNS rebinding: a page on the attacker's name, resolved to 127.0.0.1, in the owner's browser.

#[actix_web::test]
async fn a_page_on_a_rebinding_name_reads_and_writes_nothing() {
    for (server, app) in both_servers().await {
        let token = server == "a token";
        let _reader = app.join("alpha").await;
        let page_origin = format!("http://{REBIND}");
        // To the browser these are same-origin requests of the attacker's page.
        let rebound = |req: Req| {
            req.header("Host", REBIND)
                .header("Sec-Fetch-Site", "same-origin")
                .header("Sec-Fetch-Mode", "cors")
                .header("Sec-Fetch-Dest", "empty")
        };
        for target in [
            "/api/v1/totals",
            "/metrics",
            "/api/v1/stats",
            "/api/v1/daily",
        ] {
            let res = app.send(rebound(Req::get(target))).await;
            res.assert_json_error(401);
            assert!(!res.text().contains("alpha"), "{server} {target}: {res:?}");
        }
        let page = app
            .send(rebound(Req::get("/admin")).header("Sec-Fetch-Dest", "document"))
            .await;
        assert!(
            !page.text().contains(r#"id="rows""#),
            "{server}: no dashboard: {page:?}"
        );
        if token {
            assert!(
                page.text().contains(r#"name="token""#),
                "the login form: {page:?}"
            );
        } else {
            assert_eq!(page.status, 403, "the refusal page: {page:?}");
            assert!(page.text().contains("--admin-token"), "{page:?}");
        }
        // A same-origin fetch may carry any header, ours included: the name still gives it away.
        let import = rebound(Req::import("/api/v1/import?mode=add", FILE)).origin(&page_origin);
        app.send(import).await.assert_json_error(401);
        let login = rebound(Req::post("/admin/login", form_body("guess")))
            .header("Content-Type", "application/x-www-form-urlencoded")
            .origin(&page_origin);
        let login = app.send(login).await;
        assert_eq!(login.header("set-cookie"), None, "{server}: {login:?}");
        // With a token, a wrong one; without, the refusal: never the owner's `303`.
        let refused = if token { 401 } else { 403 };
        assert_eq!(login.status, refused, "{server}: {login:?}");

        assert_eq!(
            owners_totals(&app, token).await,
            rows(&[("alpha", 1)]),
            "{server}: nothing written"
        );
    }
}

#[actix_web::test]
async fn without_a_token_the_owner_is_at_the_machine_under_any_loopback_name() {
    let app = spawn_app().await;
    let port = app.addr.port();
    for host in [
        format!("127.0.0.1:{port}"),
        format!("localhost:{port}"),
        format!("LocalHost:{port}"),
        format!("[::1]:{port}"),
        "127.0.0.2".to_owned(),
        "localhost".to_owned(),
    ] {
        let res = app
            .send(Req::get("/api/v1/totals").header("Host", &host))
            .await;
        assert_eq!(res.status, 200, "{host}: {res:?}");
        let page = app.send(Req::get("/admin").header("Host", &host)).await;
        assert!(page.text().contains(r#"id="rows""#), "{host}: {page:?}");
    }
    for host in [
        "localhost.attacker.example",
        "127.0.0.1.nip.io:8080",
        "0.0.0.0",
        "192.0.2.1:8080",
        "[::2]:8080",
    ] {
        let res = app
            .send(Req::get("/api/v1/totals").header("Host", host))
            .await;
        res.assert_json_error(401);
    }
}

// ---------------------------------------------------------------------------------------------
// Guessing the token.

/// The admin routes a guesser may try, each with a guess of `token`.
fn guesses(token: &str) -> Vec<Req> {
    [
        Req::get("/api/v1/totals"),
        Req::get("/metrics"),
        Req::get("/api/v1/stats"),
        Req::get("/api/v1/history/alpha"),
        Req::get("/api/v1/daily"),
        Req::get("/api/v1/admin/stream").header("Accept", "text/event-stream"),
        Req::import("/api/v1/import?mode=add", FILE),
    ]
    .into_iter()
    .map(|req| bearer(req, token))
    .collect()
}

#[actix_web::test]
async fn the_eleventh_wrong_token_in_a_minute_is_a_429_and_so_is_the_right_one_after_it() {
    let app = spawn_app_configured(with_token).await;
    let guesser = "203.0.113.66";
    // Requests without any credentials are no guesses: they take nothing.
    for _ in 0..20 {
        app.send(Req::get("/api/v1/totals").client_ip(guesser))
            .await
            .assert_json_error(401);
    }
    let wrong = guesses("not-the-admin-token-0");
    for i in 0..10 {
        let req = wrong[i % wrong.len()].clone().client_ip(guesser);
        app.send(req).await.assert_json_error(401);
    }
    let eleventh = app.send(wrong[3].clone().client_ip(guesser)).await;
    eleventh.assert_json_error(429);
    let wait: u64 = eleventh
        .header("retry-after")
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("Retry-After in seconds: {eleventh:?}"));
    assert!((1..=6).contains(&wait), "one try back within 6 s: {wait}");

    // The right token from the same client: 429 too, on every route.
    for right in guesses(ADMIN) {
        let res = app.send(right.client_ip(guesser)).await;
        res.assert_json_error(429);
        assert!(res.header("retry-after").is_some(), "{res:?}");
    }
    // Another client (through the same loopback proxy) has its own share.
    let other = bearer(Req::get("/api/v1/totals"), ADMIN).client_ip("203.0.113.67");
    assert_eq!(app.send(other).await.status, 200);
    // So does another address on this machine, with no proxy in between.
    let direct = bearer(Req::get("/api/v1/totals"), ADMIN);
    assert_eq!(app.send(direct).await.status, 200);
    assert_eq!(
        app.send(Req::import("/api/v1/import", FILE)).await.status,
        401
    );
    assert_eq!(
        owners_totals(&app, true).await,
        rows(&[]),
        "nothing imported"
    );
}

#[actix_web::test]
async fn cookies_and_the_login_form_draw_on_the_same_budget_as_bearer_tokens() {
    let app = spawn_app_configured(with_token).await;
    let guesser = "203.0.113.77";
    // A valid cookie, from the owner's own login elsewhere.
    let owner = Req::post("/admin/login", form_body(ADMIN))
        .header("Content-Type", "application/x-www-form-urlencoded")
        .client_ip("198.51.100.1");
    let res = app.send(owner).await;
    assert_eq!(res.status, 303, "{res:?}");
    let cookie = res
        .header("set-cookie")
        .and_then(|c| c.split(';').next())
        .expect("a session cookie")
        .to_owned();

    let forged = "viewcounter_admin=9999999999.00ff";
    let login = |token: &str| {
        Req::post("/admin/login", form_body(token))
            .header("Content-Type", "application/x-www-form-urlencoded")
            .client_ip(guesser)
    };
    for i in 0..4 {
        let req = bearer(Req::get("/metrics"), "not-the-admin-token-0").client_ip(guesser);
        assert_eq!(app.send(req).await.status, 401, "bearer {i}");
    }
    for path in ["/api/v1/totals", "/api/v1/admin/stream", "/admin"] {
        let req = Req::get(path).header("Cookie", forged).client_ip(guesser);
        let res = app.send(req).await;
        assert!(!res.text().contains(r#"id="rows""#), "{path}: {res:?}");
        assert!(res.status == 401 || res.status == 200, "{path}: {res:?}");
    }
    for i in 0..3 {
        assert_eq!(
            app.send(login("not-the-admin-token-0")).await.status,
            401,
            "login {i}"
        );
    }
    // Ten failures: the next attempt of any kind waits, the right credentials included.
    let res = app.send(login(ADMIN)).await;
    assert_eq!(res.status, 429, "{res:?}");
    assert!(res.header("retry-after").is_some());
    assert!(res.text().contains("Too many attempts"), "{res:?}");
    assert_eq!(res.header("set-cookie"), None);
    let page = app
        .send(
            Req::get("/admin")
                .header("Cookie", &cookie)
                .client_ip(guesser),
        )
        .await;
    assert_eq!(page.status, 429, "{page:?}");
    assert!(page.header("retry-after").is_some());
    let totals = Req::get("/api/v1/totals")
        .header("Cookie", &cookie)
        .client_ip(guesser);
    app.send(totals).await.assert_json_error(429);

    // The owner's cookie works from its own address.
    let own = Req::get("/api/v1/totals")
        .header("Cookie", &cookie)
        .client_ip("198.51.100.1");
    assert_eq!(app.send(own).await.status, 200);
}
