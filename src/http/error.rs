//! How a [`Refusal`] is answered: JSON `{"error": "..."}` with its status and headers, the same
//! through actix-web ([`ResponseError`]) and written on the socket by the direct layer
//! ([`http1_answer`]).

use std::fmt::Write as _;

use bytes::{Bytes, BytesMut};

use actix_web::http::{StatusCode, header};
use actix_web::{HttpResponse, ResponseError};

use crate::refusal::Refusal;

impl ResponseError for Refusal {
    fn status_code(&self) -> StatusCode {
        StatusCode::from_u16(self.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }

    fn error_response(&self) -> HttpResponse {
        if let Self::Internal(cause) = self {
            tracing::error!(%cause, "request failed");
        }
        let mut res = HttpResponse::build(self.status_code());
        if let Some(after) = self.retry_after() {
            res.insert_header((header::RETRY_AFTER, after.as_secs().max(1).to_string()));
        }
        if self.asks_for_credentials() {
            res.insert_header((header::WWW_AUTHENTICATE, "Bearer"));
        }
        res.insert_header((header::CACHE_CONTROL, "no-store"))
            .json(serde_json::json!({ "error": self.to_string() }))
    }
}

/// The whole HTTP/1.1 answer, for the direct layer ([`crate::http::direct`]), which writes it on
/// the socket and closes: the status, headers and JSON body actix-web sends for the same
/// refusal (with the CORS headers of a listed `origin`).
pub(crate) fn http1_answer(refusal: &Refusal, origin: Option<&[u8]>) -> Bytes {
    if let Refusal::Internal(cause) = refusal {
        tracing::error!(%cause, "request failed");
    }
    let status = refusal.status_code();
    let body = serde_json::json!({ "error": refusal.to_string() }).to_string();
    let mut out = BytesMut::with_capacity(320 + body.len());
    let reason = status.canonical_reason().unwrap_or("");
    let _ = write!(
        out,
        "HTTP/1.1 {} {reason}\r\ncontent-length: {}\r\nconnection: close\r\n",
        status.as_u16(),
        body.len()
    );
    if let Some(after) = refusal.retry_after() {
        let _ = write!(out, "retry-after: {}\r\n", after.as_secs().max(1));
    }
    if refusal.asks_for_credentials() {
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
            Refusal::UnknownPost,
            Refusal::BadRequest("why".into()),
            Refusal::Unauthorized,
            Refusal::TooManyAuthFailures { retry_after: after },
            Refusal::OriginNotAllowed,
            Refusal::StorageUnavailable,
            Refusal::TooManyStreams { retry_after: after },
            Refusal::TooManyNewPosts { retry_after: after },
            Refusal::AtCapacity { retry_after: after },
            Refusal::ShuttingDown,
            Refusal::NotAFetch("Sec-Fetch-Dest is not empty"),
            Refusal::BodyTimeout(after),
            Refusal::ImportBusy { retry_after: after },
            Refusal::NoImportSession,
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
            let answer = http1_answer(&e, None);
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
