//! Watching posts: their numbers, live, without a view or a live reader (index pages showing
//! "3 reading now" beside each title). Two ways in:
//!
//! - `GET /api/v1/watch?slug=A&slug=B…` (1 to 100 posts): a stream of its own, admitted by
//!   [`crate::http::streams`] like the other streams and under the same rules (origin, fetch,
//!   `--ip-stream-limit`, `--max-streams`, heartbeat): `{"slug","live","total"}` once per post
//!   at once, then whenever its numbers change.
//! - `POST /api/v1/shared/{sid}/watch` (this module's handler): the posts a shared stream watches from now on, so the
//!   script's one stream per browser carries its tabs' watched posts beside their readers.
//!   Body (text/plain): the request's number, then the slugs, one per line. Numbers rise with
//!   each request of a stream; one arriving after a higher-numbered one changes nothing.
//!
//! Either way, a post that does not exist (not listed; with `--allow-any-slug`, no views yet)
//! is left out and nothing is made for it. A watched post stays awake (at 0 live, possibly)
//! until nobody watches it, then sleeps as an idle post does.

use std::collections::HashSet;

use actix_web::{HttpRequest, HttpResponse, web};

use crate::edge::slug::{MAX_SLUG_LEN, Slug};
use crate::http::params::{read_beacon, request_client, shared_handle};
use crate::http::state::AppState;
use crate::refusal::Refusal;

/// Posts one shared stream may watch: the tabs of a browser together, two index pages' worth.
pub(crate) const MAX_WATCHED_PER_SHARED: usize = 200;
/// A shared watch body holding that many slugs of the longest kind, and its number.
pub(crate) const MAX_WATCH_BODY: usize = MAX_WATCHED_PER_SHARED * (MAX_SLUG_LEN + 1) + 32;

pub(crate) fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/shared/{sid}/watch", web::post().to(shared_watch));
}

/// `POST /shared/{sid}/watch`: replaces the posts the shared stream watches.
async fn shared_watch(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, Refusal> {
    state.origins.check(req.headers())?;
    state.origins.check_fetch(req.headers())?;
    let body = read_beacon(&req, payload, MAX_WATCH_BODY).await?;
    let (seq, slugs) = watch_body(&body)?;
    let shared = shared_handle(&req, &state)?;
    let client = request_client(&req, &state);
    shared
        .watch(seq, slugs, |new| state.follow(new, client))
        .await?;
    Ok(HttpResponse::NoContent().finish())
}

/// A shared watch body: its number (1 or more), then up to `MAX_WATCHED_PER_SHARED` slugs,
/// one per line (blank lines and repeats ignored). Anything else: 400.
fn watch_body(body: &[u8]) -> Result<(u64, Vec<Slug>), Refusal> {
    let text = std::str::from_utf8(body).map_err(|_| Refusal::BadBody)?;
    let mut lines = text.lines().map(str::trim_ascii);
    let seq = lines
        .next()
        .and_then(|first| first.parse::<u64>().ok())
        .filter(|&seq| seq > 0)
        .ok_or_else(|| {
            Refusal::BadRequest("a watch body starts with its number (1 or more)".into())
        })?;
    let mut seen = HashSet::new();
    let mut slugs = Vec::new();
    for line in lines.filter(|line| !line.is_empty()) {
        let slug = Slug::parse_watched(line)?;
        if seen.insert(slug.clone()) {
            slugs.push(slug);
        }
    }
    if slugs.len() > MAX_WATCHED_PER_SHARED {
        return Err(Refusal::BadRequest(format!(
            "a shared stream watches at most {MAX_WATCHED_PER_SHARED} posts"
        )));
    }
    Ok((seq, slugs))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slugs(body: &str) -> Result<(u64, Vec<String>), Refusal> {
        let (seq, slugs) = watch_body(body.as_bytes())?;
        Ok((seq, slugs.iter().map(|s| s.as_str().to_owned()).collect()))
    }

    #[test]
    fn a_watch_body_is_its_number_then_its_slugs() {
        assert_eq!(
            slugs("3\nalpha\nblog/beta\n\nalpha\r\n").unwrap(),
            (3, vec!["alpha".into(), "blog/beta".into()])
        );
        assert_eq!(slugs("7").unwrap(), (7, vec![]), "watch nothing");
        assert_eq!(slugs("7\n").unwrap(), (7, vec![]));
    }

    #[test]
    fn a_watch_body_without_a_number_or_with_a_bad_slug_is_refused() {
        for bad in [
            "",
            "alpha\nbeta",
            "0\nalpha",
            "-1\nalpha",
            "2\n../x",
            "2\na b",
        ] {
            assert!(slugs(bad).is_err(), "{bad:?}");
        }
        assert!(watch_body(b"1\n\xff").is_err(), "not UTF-8");
        let many: String = (0..=MAX_WATCHED_PER_SHARED)
            .map(|i| format!("\npost-{i}"))
            .collect();
        assert!(slugs(&format!("1{many}")).is_err(), "too many");
        assert!(slugs(&format!("1{}", &many[..many.rfind('\n').unwrap()])).is_ok());
    }
}
