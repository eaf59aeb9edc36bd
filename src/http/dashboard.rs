//! `/admin`: the owner's dashboard page, its login and logout, and its script and style,
//! compiled into the binary (`web/admin/`).
//!
//! Who sees what, by the admin rule of `/api/v1/totals`:
//! - with `--admin-token`: a valid session cookie (or the bearer token) sees the dashboard;
//!   anyone else gets the login form, which posts the token once and gets the cookie;
//! - without one: direct loopback connections to a loopback `Host` see the dashboard with no
//!   login; anyone else (a remote peer, a request through a proxy, a page on a rebinding name)
//!   gets a page saying how to set a token.
//!
//! Login and logout come only from the dashboard's own pages (`403` otherwise, nothing set or
//! cleared), and wrong tokens draw on the client's share of failed authentications, with the
//! bearer tokens and cookies of the admin API (`429` beyond it).
//!
//! The pages are HTML, not JSON: a browser shows them. Their messages are ours, never input.

use std::time::Duration;

use actix_web::http::{StatusCode, header};
use actix_web::{HttpRequest, HttpResponse, HttpResponseBuilder, web};

use crate::edge::origin::same_origin_only;
use crate::http::admin::{
    attempt, authorize_admin_read, has_session, is_loopback_owner, is_the_token,
};
use crate::http::params::{BODY_DEADLINE, read_body, request_client};
use crate::http::session;
use crate::http::state::AppState;
use crate::refusal::Refusal;

/// Every page's `<head>` and `<body>` around one of the bodies below.
const SHELL: &str = include_str!("../../web/admin/shell.html");
const PAGE: &str = include_str!("../../web/admin/index.html");
const LOGIN: &str = include_str!("../../web/admin/login.html");
const REFUSAL: &str = include_str!("../../web/admin/refusal.html");
const CROSS_SITE: &str = include_str!("../../web/admin/cross-site.html");
const SCRIPT: &str = include_str!("../../web/admin/dashboard.js");
const STYLE: &str = include_str!("../../web/admin/dashboard.css");
/// Where a page's message goes in `login.html`, and the logout form in `index.html` (which
/// is only answered at `/admin`).
const MESSAGE_SLOT: &str = "<!--message-->";
const LOGOUT_SLOT: &str = "<!--logout-->";
const LOGOUT_FORM: &str =
    r#"<form method="post" action="admin/logout"><button type="submit">Log out</button></form>"#;
/// A login form's body: `token=…`; admin tokens are far shorter.
const MAX_LOGIN_BYTES: usize = 4096;
/// Paths are relative so the dashboard also works under a proxy's path prefix.
const TO_DASHBOARD: &str = "../admin";
/// In the pages, what leads from the page's URL to the server's root: the login and refusal
/// pages are answered at `/admin` and at `/admin/login`.
const ROOT_SLOT: &str = "{{root}}";
const DASHBOARD_HEAD: &str = r#"<script src="{{root}}admin/dashboard.js" defer></script>"#;

/// Where a page is answered, as the way back to the root its relative links need.
#[derive(Clone, Copy)]
enum At {
    /// `/admin`
    Dashboard,
    /// `/admin/login`
    Login,
}

impl At {
    fn root(self) -> &'static str {
        match self {
            Self::Dashboard => "",
            Self::Login => "../",
        }
    }
}

pub(crate) fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/admin", web::get().to(page))
        .route("/admin/", web::get().to(to_dashboard))
        .route("/admin/login", web::get().to(to_dashboard))
        .route("/admin/login", web::post().to(login))
        .route("/admin/logout", web::post().to(logout))
        .route("/admin/dashboard.js", web::get().to(script))
        .route("/admin/dashboard.css", web::get().to(style));
}

/// Headers every page carries: not cached, not framed (clickjacking), scripts and styles
/// from this server only.
fn html(status: StatusCode) -> HttpResponseBuilder {
    let mut res = HttpResponse::build(status);
    res.content_type("text/html; charset=utf-8")
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .insert_header((
            header::CONTENT_SECURITY_POLICY,
            "default-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
        ))
        .insert_header((header::X_FRAME_OPTIONS, "DENY"))
        .insert_header((header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
        .insert_header((header::REFERRER_POLICY, "same-origin"));
    res
}

/// One page: `body` in the shell, with its title, body class and extra `<head>` lines.
fn render(at: At, title: &str, class: &str, head: &str, body: &str) -> String {
    SHELL
        .replace("{{title}}", title)
        .replace("{{class}}", class)
        .replace("{{head}}", head)
        .replace("{{body}}", body)
        .replace(ROOT_SLOT, at.root())
}

fn login_page(status: StatusCode, at: At, message: Option<&str>) -> HttpResponse {
    let message =
        message.map(|m| format!(r#"<p class="message" id="message" role="alert">{m}</p>"#));
    let body = LOGIN.replace(MESSAGE_SLOT, message.as_deref().unwrap_or_default());
    html(status).body(render(at, "log in", "narrow-page", "", &body))
}

fn refusal_page(at: At) -> HttpResponse {
    let page = render(at, "dashboard closed", "narrow-page", "", REFUSAL);
    html(StatusCode::FORBIDDEN).body(page)
}

/// A login or logout form another site's page sent: `403`, nothing set or cleared.
fn cross_site_page(at: At) -> HttpResponse {
    let page = render(at, "refused", "narrow-page", "", CROSS_SITE);
    html(StatusCode::FORBIDDEN).body(page)
}

fn see_other(cookie: Option<String>) -> HttpResponse {
    let mut res = HttpResponse::SeeOther();
    res.insert_header((header::LOCATION, TO_DASHBOARD))
        .insert_header((header::CACHE_CONTROL, "no-store"));
    if let Some(cookie) = cookie {
        res.insert_header((header::SET_COOKIE, cookie));
    }
    res.finish()
}

/// `GET /admin`: the dashboard, the login form, or the refusal; `429` while the client has
/// used its share of failed authentications.
async fn page(req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    match authorize_admin_read(&req, &state) {
        Ok(()) => {
            let logout = if has_session(&req, &state) {
                LOGOUT_FORM
            } else {
                ""
            };
            let body = PAGE.replace(LOGOUT_SLOT, logout);
            let page = render(At::Dashboard, "dashboard", "", DASHBOARD_HEAD, &body);
            html(StatusCode::OK).body(page)
        }
        Err(Refusal::TooManyAuthFailures { retry_after }) => {
            too_many_attempts(At::Dashboard, retry_after)
        }
        Err(_) => match state.admin_token {
            Some(_) => login_page(StatusCode::OK, At::Dashboard, None),
            None => refusal_page(At::Dashboard),
        },
    }
}

async fn to_dashboard() -> HttpResponse {
    see_other(None)
}

/// Whether the browser spoke HTTPS: a trusted proxy says so, or the form's page was an
/// `https:` one (browsers send `Origin` with every form POST). Then the cookie is `Secure`.
fn came_over_https(req: &HttpRequest, state: &AppState) -> bool {
    let peer = req.peer_addr().map(|a| a.ip());
    let proxied = peer.is_some_and(|p| state.proxies.forwarded_https(p, req.headers()));
    let origin = req
        .headers()
        .get(header::ORIGIN)
        .is_some_and(|o| o.as_bytes().starts_with(b"https://"));
    proxied || origin
}

/// `POST /admin/login`, form `token=…`: the session cookie and back to the dashboard, or the
/// form again with why not. A token takes a try from the client's share of failed
/// authentications, given back when it is right.
async fn login(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> HttpResponse {
    if same_origin_only(req.headers()).is_err() {
        return cross_site_page(At::Login);
    }
    let Some(token) = &state.admin_token else {
        return if is_loopback_owner(&req) {
            see_other(None)
        } else {
            refusal_page(At::Login)
        };
    };
    let body = match tokio::time::timeout(BODY_DEADLINE, read_body(payload, MAX_LOGIN_BYTES)).await
    {
        Ok(Ok(body)) => body,
        _ => {
            let message = "The form did not arrive whole; please try again.";
            return login_page(StatusCode::BAD_REQUEST, At::Login, Some(message));
        }
    };
    let given = form_urlencoded::parse(&body)
        .find(|(name, _)| name == "token")
        .map(|(_, value)| value.trim().to_owned())
        .unwrap_or_default();
    if given.is_empty() {
        let message = Some("Enter the admin token.");
        return login_page(StatusCode::BAD_REQUEST, At::Login, message);
    }
    // Taken only now, with the token in hand and nothing awaited before it is compared.
    let client = request_client(&req, &state);
    match attempt(&state, client, || is_the_token(token, &given)) {
        Err(retry_after) => return too_many_attempts(At::Login, retry_after),
        Ok(false) => {
            let message = "Wrong token. It is the value given to <code>--admin-token</code> \
                           (or <code>VIEWCOUNTER_ADMIN_TOKEN</code>).";
            return login_page(StatusCode::UNAUTHORIZED, At::Login, Some(message));
        }
        Ok(true) => {}
    }
    let value = session::issue(token, state.calendar.clock().now_unix());
    let secure = came_over_https(&req, &state);
    see_other(Some(session::set_cookie(&value, secure)))
}

fn too_many_attempts(at: At, retry_after: Duration) -> HttpResponse {
    let secs = retry_after.as_secs().max(1);
    let message =
        format!("Too many attempts from your address. Wait {secs} seconds, then try again.");
    let mut res = login_page(StatusCode::TOO_MANY_REQUESTS, at, Some(&message));
    if let Ok(value) = header::HeaderValue::from_str(&secs.to_string()) {
        res.headers_mut().insert(header::RETRY_AFTER, value);
    }
    res
}

/// `POST /admin/logout`: the cookie is cleared in this browser and the login form follows;
/// only from the dashboard's own page, and (without a token) only for the owner.
async fn logout(req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    if same_origin_only(req.headers()).is_err() {
        return cross_site_page(At::Login);
    }
    if state.admin_token.is_none() && !is_loopback_owner(&req) {
        return refusal_page(At::Login);
    }
    see_other(Some(session::clear_cookie(came_over_https(&req, &state))))
}

fn asset(content_type: &str, body: &'static str) -> HttpResponse {
    HttpResponse::Ok()
        .content_type(content_type)
        // Revalidated on every load: an upgraded binary's dashboard is seen at once.
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        .insert_header((header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
        .body(body)
}

async fn script() -> HttpResponse {
    asset("text/javascript; charset=utf-8", SCRIPT)
}

async fn style() -> HttpResponse {
    asset("text/css; charset=utf-8", STYLE)
}
