//! Why a request is refused: the one refusal type every layer returns (edge checks, posts,
//! storage, handlers). It knows its status, reason label and `Retry-After`, and nothing of
//! HTTP frameworks: `http::error` renders it, as actix-web and as the direct layer answer it.
//! A leaf: it names no other module of the crate, so any layer may return it.

use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    #[error("malformed slug: {0}")]
    BadSlug(String),
    #[error("malformed reader id: {0}")]
    BadReaderId(String),
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
    /// An import session's piece or commit after it ended (committed, refused, dropped idle).
    #[error(
        "no such import session (it expired, was refused, or is done); nothing of it was applied"
    )]
    NoImportSession,
    /// Another import session is open: one at a time.
    #[error("another import is under way; try again when it is done or has gone idle")]
    ImportBusy { retry_after: Duration },
    #[error("server is shutting down")]
    ShuttingDown,
    /// The db file cannot be read right now; the writer logs the cause, throttled.
    #[error("storage unavailable, try again shortly")]
    StorageUnavailable,
    /// Internal failures: the cause is logged, the client sees a generic message.
    #[error("internal error")]
    Internal(String),
}

impl Refusal {
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
            Self::NoImportSession => "no_import_session",
            Self::ImportBusy { .. } => "import_busy",
            Self::ShuttingDown => "shutting_down",
            Self::StorageUnavailable => "storage_unavailable",
            Self::Internal(_) => "internal",
        }
    }

    /// How long a client is asked to wait before trying again (`Retry-After`).
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::TooManyStreams { retry_after }
            | Self::TooManyNewPosts { retry_after }
            | Self::TooManyAuthFailures { retry_after }
            | Self::AtCapacity { retry_after }
            | Self::ImportBusy { retry_after } => Some(*retry_after),
            Self::ShuttingDown => Some(Duration::from_secs(2)),
            Self::StorageUnavailable => Some(Duration::from_secs(5)),
            _ => None,
        }
    }

    /// The HTTP status it is answered with.
    pub fn status(&self) -> u16 {
        match self {
            Self::BadSlug(_) | Self::BadReaderId(_) | Self::BadBody | Self::BadRequest(_) => 400,
            Self::BodyTooLarge(_) => 413,
            Self::BodyTimeout(_) => 408,
            Self::UnknownPost
            | Self::SlugCapReached
            | Self::NoSharedStream
            | Self::NoImportSession => 404,
            Self::ImportBusy { .. } => 409,
            Self::OriginNotAllowed | Self::NotAFetch(_) | Self::CrossSite(_) => 403,
            Self::Unauthorized => 401,
            Self::TooManyStreams { .. }
            | Self::TooManyNewPosts { .. }
            | Self::TooManyAuthFailures { .. } => 429,
            Self::AtCapacity { .. } | Self::ShuttingDown | Self::StorageUnavailable => 503,
            Self::Internal(_) => 500,
        }
    }

    /// Whether the answer says how to authenticate (`WWW-Authenticate: Bearer`).
    pub fn asks_for_credentials(&self) -> bool {
        matches!(self, Self::Unauthorized)
    }
}
