//! Who may read and change the owner's data: the admin rule, the same for actix-web's handlers
//! and the streams the direct layer answers (the dashboard's stream), through [`Caller`].

use std::net::IpAddr;
use std::time::Duration;

use subtle::ConstantTimeEq;

use crate::edge::headers::Headers;
use crate::edge::limits::ClientKey;
use crate::edge::origin::is_loopback_host;
use crate::http::params::{Caller, request_client};
use crate::http::session;
use crate::http::state::AppState;
use crate::refusal::Refusal;

/// The admin rule for changes (`POST /import`): with a token configured,
/// `Authorization: Bearer TOKEN`; without one, the owner at the machine itself
/// ([`is_loopback_owner`]). See [`authenticate`].
pub(crate) fn authorize_admin(req: &impl Caller, state: &AppState) -> Result<(), Refusal> {
    authenticate(req, state, Session::Refused)
}

/// The admin rule for reads (`GET`): [`authorize_admin`], or the session cookie the
/// dashboard's login sets. Never for changes (`POST /import`): a browser sends cookies with
/// requests that other pages make it send, and `SameSite=Strict` stops only cross-site ones,
/// not a page on a sibling subdomain; a bearer header no page can add without the token.
pub(crate) fn authorize_admin_read(req: &impl Caller, state: &AppState) -> Result<(), Refusal> {
    authenticate(req, state, Session::Accepted)
}

/// Whether a route takes the dashboard's session cookie.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Session {
    Accepted,
    Refused,
}

/// With a token configured: the bearer token (or, for reads, a valid session cookie), compared
/// in constant time. Credentials that are presented take a try from the client's share of
/// [`AppState::auth_failures`] before they are compared, given back when they are right: so
/// once a client has used its share, every attempt of it is `429`, the right one included,
/// and concurrent guesses cannot slip past. A request without credentials takes nothing.
///
/// Without a token: [`is_loopback_owner`]; there is nothing to guess.
fn authenticate(req: &impl Caller, state: &AppState, rule: Session) -> Result<(), Refusal> {
    let Some(token) = &state.admin_token else {
        return if is_loopback_owner(req) {
            Ok(())
        } else {
            Err(Refusal::Unauthorized)
        };
    };
    let headers = req.headers();
    let bearer = headers
        .text("authorization")
        .and_then(|v| v.strip_prefix("Bearer "));
    let cookie = match rule {
        Session::Accepted => session::from_headers(headers),
        Session::Refused => None,
    };
    if bearer.is_none() && cookie.is_none() {
        return Err(Refusal::Unauthorized);
    }
    let client = request_client(req, state);
    let right = attempt(state, client, || {
        bearer.is_some_and(|given| is_the_token(token, given))
            || cookie.is_some_and(|value| {
                session::is_valid(token, value, state.calendar.clock().now_unix())
            })
    })
    .map_err(|retry_after| Refusal::TooManyAuthFailures { retry_after })?;
    if right {
        Ok(())
    } else {
        Err(Refusal::Unauthorized)
    }
}

/// One authentication attempt of `client` (any admin route, or the login form): takes a try
/// from its share of [`AppState::auth_failures`] before `right` compares the credentials, and
/// gives it back when they are right. `Err`: the share is used up; how long to wait, in whole
/// seconds rounded up (a client that waits what it is told gets its try).
pub(crate) fn attempt(
    state: &AppState,
    client: ClientKey,
    right: impl FnOnce() -> bool,
) -> Result<bool, Duration> {
    state.auth_failures.try_take(client).map_err(|wait| {
        let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
        Duration::from_secs(secs.max(1))
    })?;
    let right = right();
    if right {
        state.auth_failures.give_back(client);
    }
    Ok(right)
}

/// Whether `given` is the admin token, compared in constant time.
pub(crate) fn is_the_token(token: &str, given: &str) -> bool {
    bool::from(given.as_bytes().ct_eq(token.as_bytes()))
}

/// Whether the request carries a valid session cookie (only with a token configured). Takes
/// nothing from the client's share: for what a page shows, after the rule was applied.
pub(crate) fn has_session(req: &impl Caller, state: &AppState) -> bool {
    let Some(token) = &state.admin_token else {
        return false;
    };
    session::from_headers(req.headers())
        .is_some_and(|value| session::is_valid(token, value, state.calendar.clock().now_unix()))
}

/// Without a token, the owner is whoever is at the machine itself: a direct loopback
/// connection ([`is_direct_loopback`]) to a loopback name (`Host`: `localhost`, `127.0.0.0/8`,
/// `[::1]`). A page on a rebinding name (`rebind.attacker.example` resolving to 127.0.0.1)
/// reaches the loopback socket from the owner's browser, but names itself in `Host`.
pub(crate) fn is_loopback_owner(req: &impl Caller) -> bool {
    is_direct_loopback(req.peer(), req.headers())
        && req.headers().value("host").is_some_and(is_loopback_host)
}

/// A loopback peer with no forwarding headers. A request with them came through a proxy (or
/// claims to), whatever addresses they name: a proxy that passes a client's own
/// `X-Forwarded-For: 127.0.0.1` along must not make it the owner.
fn is_direct_loopback(peer: Option<IpAddr>, headers: &(impl Headers + ?Sized)) -> bool {
    let loopback = peer.is_some_and(|peer| peer.to_canonical().is_loopback());
    let forwarded = ["forwarded", "x-forwarded-for"]
        .iter()
        .any(|name| headers.value(name).is_some());
    loopback && !forwarded
}
