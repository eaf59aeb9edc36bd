//! The browser side, compiled into the binary so it runs from anywhere.

use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::OnceLock;

use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse};

pub(crate) const COUNTER_JS: &str = include_str!("../../web/counter.js");
pub(crate) const INDEX_HTML: &str = include_str!("../../web/index.html");

/// Browsers may keep the script this long before they revalidate it with its ETag.
const SCRIPT_MAX_AGE_SECS: u32 = 3600;

fn etag(body: &str) -> &'static str {
    static TAG: OnceLock<String> = OnceLock::new();
    TAG.get_or_init(|| {
        let mut h = DefaultHasher::new();
        body.hash(&mut h);
        format!("\"{:016x}\"", h.finish())
    })
}

pub(crate) async fn counter_js(req: HttpRequest) -> HttpResponse {
    let tag = etag(COUNTER_JS);
    let fresh = req
        .headers()
        .get(header::IF_NONE_MATCH)
        .is_some_and(|v| v.as_bytes() == tag.as_bytes());
    let mut res = if fresh {
        HttpResponse::NotModified()
    } else {
        HttpResponse::Ok()
    };
    res.insert_header((header::ETAG, tag))
        .insert_header((
            header::CACHE_CONTROL,
            format!("public, max-age={SCRIPT_MAX_AGE_SECS}"),
        ))
        // Any site may load the script; what it may count is decided by the API's CORS.
        .insert_header((header::ACCESS_CONTROL_ALLOW_ORIGIN, "*"));
    if fresh {
        return res.finish();
    }
    res.content_type("text/javascript; charset=utf-8")
        .body(COUNTER_JS)
}

pub(crate) async fn index() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        .body(INDEX_HTML)
}
