//! Which pages may count views: same-origin pages, Origin-less requests, and the origins given
//! with `--allow-origin`. A refused origin is answered before anything is counted.

use std::collections::HashSet;

use actix_web::HttpRequest;
use actix_web::http::header;

use crate::error::ApiError;

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
