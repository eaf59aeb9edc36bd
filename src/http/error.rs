//! The one error type of the HTTP layer: every refusal is JSON `{"error": "..."}` with its status.

use std::fmt::Write as _;
use std::time::Duration;

use bytes::{Bytes, BytesMut};

use actix_web::http::{StatusCode, header};
use actix_web::{HttpResponse, ResponseError};

use crate::edge::reader_id::ReaderIdError;
use crate::edge::slug::SlugError;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("malformed slug: {0}")]
    BadSlug(#[from] SlugError),
    #[error("malformed reader id: {0}")]
    BadReaderId(#[from] ReaderIdError),
    #[error("beacon body larger than {0} bytes")]
    BodyTooLarge(usize),
    #[error("request body not received within {} s of its head", .0.as_secs())]
    BodyTimeout(Duration),
    #[error("unknown post")]
    UnknownPost,
    #[error("unknown post (this server counts no more new posts)")]
    SlugCapReached,
    #[error("unreadable request body")]
    BadBody,
    /// A query parameter out of its range, or an import file that does not read.
    #[error("{0}")]
    BadRequest(String),
    #[error("no such shared stream (open it first)")]
    NoSharedStream,
    #[error("origin not allowed")]
    OriginNotAllowed,
    /// An `<img>`, `<iframe>`, `<script>` or a navigation, or a cross-site fetch from a page
    /// not allowed: only the script's own fetches count.
    #[error("not a counter fetch ({0})")]
    NotAFetch(&'static str),
    #[error("admin token required")]
    Unauthorized,
    /// A state-changing admin request (import, login, logout) that another page may have made
    /// the browser send, or an import without our header: see [`crate::edge::origin`].
    #[error("{0}")]
    CrossSite(&'static str),
    /// More than [`crate::edge::limits::AUTH_FAILURES_PER_MINUTE`] wrong credentials.
    #[error("too many failed admin authentications from this address; try again later")]
    TooManyAuthFailures { retry_after: Duration },
    #[error("too many open streams from this address")]
    TooManyStreams { retry_after: Duration },
    #[error("too many new posts from this address; try again later")]
    TooManyNewPosts { retry_after: Duration },
    #[error("server is at its stream capacity")]
    AtCapacity { retry_after: Duration },
    #[error("server is shutting down")]
    ShuttingDown,
    /// The db file cannot be read right now; the writer logs the cause, throttled.
    #[error("storage unavailable, try again shortly")]
    StorageUnavailable,
    /// Internal failures: the cause is logged, the client sees a generic message.
    #[error("internal error")]
    Internal(String),
}

impl ApiError {
    /// A failure of the writer or its store: 503 while the disk is unreadable, 500 otherwise.
    pub fn storage(e: crate::storage::writer::WriterError) -> Self {
        match e {
            crate::storage::writer::WriterError::Store(
                crate::storage::store::StoreError::Storage(cause),
            ) => {
                tracing::debug!(%cause, "storage unavailable");
                Self::StorageUnavailable
            }
            other => Self::Internal(other.to_string()),
        }
    }

    /// The kind of refusal, as a metrics label.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::BadSlug(_) => "bad_slug",
            Self::BadReaderId(_) => "bad_reader_id",
            Self::BodyTooLarge(_) => "body_too_large",
            Self::BodyTimeout(_) => "body_timeout",
            Self::UnknownPost => "unknown_post",
            Self::SlugCapReached => "slug_cap",
            Self::BadBody => "bad_body",
            Self::BadRequest(_) => "bad_request",
            Self::NoSharedStream => "no_shared_stream",
            Self::OriginNotAllowed => "origin",
            Self::NotAFetch(_) => "not_a_fetch",
            Self::Unauthorized => "unauthorized",
            Self::CrossSite(_) => "cross_site",
            Self::TooManyAuthFailures { .. } => "auth_failures",
            Self::TooManyStreams { .. } => "ip_stream_limit",
            Self::TooManyNewPosts { .. } => "ip_new_post_rate",
            Self::AtCapacity { .. } => "capacity",
            Self::ShuttingDown => "shutting_down",
            Self::StorageUnavailable => "storage_unavailable",
            Self::Internal(_) => "internal",
        }
    }

    fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::TooManyStreams { retry_after }
            | Self::TooManyNewPosts { retry_after }
            | Self::TooManyAuthFailures { retry_after }
            | Self::AtCapacity { retry_after } => Some(*retry_after),
            Self::ShuttingDown => Some(Duration::from_secs(2)),
            Self::StorageUnavailable => Some(Duration::from_secs(5)),
            _ => None,
        }
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match self {
            Self::BadSlug(_) | Self::BadReaderId(_) | Self::BadBody | Self::BadRequest(_) => {
                StatusCode::BAD_REQUEST
            }
            Self::BodyTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::BodyTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            Self::UnknownPost | Self::SlugCapReached | Self::NoSharedStream => {
                StatusCode::NOT_FOUND
            }
            Self::OriginNotAllowed | Self::NotAFetch(_) | Self::CrossSite(_) => {
                StatusCode::FORBIDDEN
            }
            Self::Unauthorized => StatusCode::UNAUTHORIZED,
            Self::TooManyStreams { .. }
            | Self::TooManyNewPosts { .. }
            | Self::TooManyAuthFailures { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::AtCapacity { .. } | Self::ShuttingDown | Self::StorageUnavailable => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn error_response(&self) -> HttpResponse {
        if let Self::Internal(cause) = self {
            tracing::error!(%cause, "request failed");
        }
        let mut res = HttpResponse::build(self.status_code());
        if let Some(after) = self.retry_after() {
            res.insert_header((header::RETRY_AFTER, after.as_secs().max(1).to_string()));
        }
        if matches!(self, Self::Unauthorized) {
            res.insert_header((header::WWW_AUTHENTICATE, "Bearer"));
        }
        res.insert_header((header::CACHE_CONTROL, "no-store"))
            .json(serde_json::json!({ "error": self.to_string() }))
    }
}

impl ApiError {
    /// The whole HTTP/1.1 answer, for the direct layer ([`crate::http::direct`]), which writes it on
    /// the socket and closes: the status, headers and JSON body actix-web sends for the same
    /// refusal (with the CORS headers of a listed `origin`).
    pub fn http1_answer(&self, origin: Option<&[u8]>) -> Bytes {
        if let Self::Internal(cause) = self {
            tracing::error!(%cause, "request failed");
        }
        let status = self.status_code();
        let body = serde_json::json!({ "error": self.to_string() }).to_string();
        let mut out = BytesMut::with_capacity(320 + body.len());
        let reason = status.canonical_reason().unwrap_or("");
        let _ = write!(
            out,
            "HTTP/1.1 {} {reason}\r\ncontent-length: {}\r\nconnection: close\r\n",
            status.as_u16(),
            body.len()
        );
        if let Some(after) = self.retry_after() {
            let _ = write!(out, "retry-after: {}\r\n", after.as_secs().max(1));
        }
        if matches!(self, Self::Unauthorized) {
            out.extend_from_slice(b"www-authenticate: Bearer\r\n");
        }
        out.extend_from_slice(
            b"content-type: application/json\r\ncache-control: no-store\r\n\
              vary: Origin, Access-Control-Request-Method, Access-Control-Request-Headers\r\n",
        );
        if let Some(origin) = origin {
            out.extend_from_slice(b"access-control-allow-origin: ");
            out.extend_from_slice(origin);
            out.extend_from_slice(b"\r\n");
        }
        let _ = write!(
            out,
            "date: {}\r\n\r\n{body}",
            httpdate::fmt_http_date(std::time::SystemTime::now())
        );
        out.freeze()
    }
}

/// JSON errors for what actix-web itself refuses (bad paths, payload limits).
pub(crate) fn json_error(status: StatusCode, message: &str) -> HttpResponse {
    HttpResponse::build(status).json(serde_json::json!({ "error": message }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// The direct layer's answer says what actix-web's does: the same status, the same headers
    /// (those actix-web and its CORS middleware add aside), the same JSON.
    #[actix_web::test]
    async fn both_layers_answer_a_refusal_alike() {
        let after = Duration::from_secs(7);
        let refusals = [
            ApiError::UnknownPost,
            ApiError::BadRequest("why".into()),
            ApiError::Unauthorized,
            ApiError::TooManyStreams { retry_after: after },
            ApiError::TooManyNewPosts { retry_after: after },
            ApiError::AtCapacity { retry_after: after },
            ApiError::ShuttingDown,
            ApiError::NotAFetch("Sec-Fetch-Dest is not empty"),
            ApiError::BodyTimeout(after),
        ];
        for e in refusals {
            let res = e.error_response();
            let status = res.status();
            let wanted: Vec<(String, String)> = res
                .headers()
                .iter()
                .map(|(k, v)| (k.as_str().to_owned(), v.to_str().unwrap().to_owned()))
                .collect();
            let body = actix_web::body::to_bytes(res.into_body()).await.unwrap();
            let answer = e.http1_answer(None);
            let text = std::str::from_utf8(&answer).unwrap();
            let (head, sent) = text.split_once("\r\n\r\n").unwrap();
            assert!(
                head.starts_with(&format!("HTTP/1.1 {}", status.as_u16())),
                "{head}"
            );
            for (name, value) in &wanted {
                assert!(
                    head.contains(&format!("{name}: {value}\r\n"))
                        || head.ends_with(&format!("{name}: {value}")),
                    "{e:?}: {name} missing in {head}"
                );
            }
            assert_eq!(sent.as_bytes(), &body[..], "{e:?}");
        }
    }
}
