//! Which pages may count views: same-origin pages, Origin-less requests, and the origins given
//! with `--allow-origin`; and only through the script's own fetches, never an `<img>`,
//! `<iframe>` or navigation that another site points at the API. A refused request is
//! answered before anything is counted.

use std::collections::HashSet;

use actix_web::HttpRequest;
use actix_web::http::header;

use crate::error::ApiError;
use crate::headers::Headers;

#[derive(Debug, Clone, Default)]
pub struct OriginPolicy {
    allowed: HashSet<String>,
}

impl OriginPolicy {
    /// Normalises and checks each `scheme://host[:port]`.
    pub fn new(origins: &[String]) -> Result<Self, String> {
        let mut allowed = HashSet::new();
        for raw in origins {
            let origin = raw.trim().trim_end_matches('/').to_ascii_lowercase();
            let rest = origin
                .strip_prefix("https://")
                .or_else(|| origin.strip_prefix("http://"))
                .ok_or_else(|| {
                    format!("--allow-origin {raw:?}: must start with http:// or https://")
                })?;
            if rest.is_empty() || rest.contains('/') {
                return Err(format!(
                    "--allow-origin {raw:?}: must be scheme://host[:port], no path"
                ));
            }
            allowed.insert(origin);
        }
        Ok(Self { allowed })
    }

    /// Listed origins: these get CORS headers.
    pub fn is_listed(&self, origin: &[u8]) -> bool {
        std::str::from_utf8(origin).is_ok_and(|o| self.allowed.contains(&o.to_ascii_lowercase()))
    }

    /// For requests that count (streams, shared joins): browsers send `Sec-Fetch-Dest: empty`
    /// for `EventSource`, `fetch` and beacons, and something else for elements and navigations,
    /// which carry no `Origin` and would pass [`OriginPolicy::check`]. A cross-site request is
    /// only for pages of a listed origin. Clients without `Sec-Fetch-*` (older browsers,
    /// scripts) are judged by the origin alone.
    pub fn check_fetch(&self, headers: &(impl Headers + ?Sized)) -> Result<(), ApiError> {
        if headers
            .value("sec-fetch-dest")
            .is_some_and(|dest| !dest.trim_ascii().eq_ignore_ascii_case(b"empty"))
        {
            return Err(ApiError::NotAFetch("Sec-Fetch-Dest is not empty"));
        }
        let site = headers.value("sec-fetch-site").map(<[u8]>::trim_ascii);
        let foreign = site.is_some_and(|site| {
            site.eq_ignore_ascii_case(b"cross-site") || site.eq_ignore_ascii_case(b"same-site")
        });
        if foreign && !headers.value("origin").is_some_and(|o| self.is_listed(o)) {
            return Err(ApiError::NotAFetch(
                "cross-site request from a page not allowed",
            ));
        }
        Ok(())
    }

    pub fn check(&self, req: &HttpRequest) -> Result<(), ApiError> {
        let Some(origin) = req.headers().get(header::ORIGIN) else {
            return Ok(());
        };
        if self.is_listed(origin.as_bytes()) || is_same_origin(req, origin.as_bytes()) {
            Ok(())
        } else {
            Err(ApiError::OriginNotAllowed)
        }
    }
}

/// Browsers send `Origin` on every POST, same-origin beacons included.
fn is_same_origin(req: &HttpRequest, origin: &[u8]) -> bool {
    let info = req.connection_info();
    let own = format!("{}://{}", info.scheme(), info.host());
    own.as_bytes().eq_ignore_ascii_case(origin)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(name: &'static str, value: &'static str) -> httparse::Header<'static> {
        httparse::Header {
            name,
            value: value.as_bytes(),
        }
    }

    #[test]
    fn only_the_scripts_own_fetches_pass() {
        let policy = OriginPolicy::new(&["https://blog.example".into()]).unwrap();
        let pass = |headers: &[httparse::Header<'_>]| policy.check_fetch(headers).is_ok();
        assert!(pass(&[]), "no Sec-Fetch-*: judged by the origin alone");
        assert!(pass(&[
            h("Sec-Fetch-Dest", "empty"),
            h("Sec-Fetch-Site", "same-origin")
        ]));
        for dest in ["image", "iframe", "document", "script", ""] {
            assert!(!pass(&[h("Sec-Fetch-Dest", dest)]), "{dest:?}");
        }
        assert!(!pass(&[h("Sec-Fetch-Site", "cross-site")]));
        assert!(!pass(&[
            h("Sec-Fetch-Site", "same-site"),
            h("Origin", "https://other.example")
        ]));
        assert!(pass(&[
            h("Sec-Fetch-Dest", "empty"),
            h("Sec-Fetch-Site", "cross-site"),
            h("Origin", "https://blog.example")
        ]));
        assert!(pass(&[h("Sec-Fetch-Site", "none")]));
    }
}
