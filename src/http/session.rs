//! The owner's session: a stateless cookie, `EXPIRY.MAC`, where MAC is HMAC-SHA256 of the
//! expiry keyed by the admin token. Nothing is stored on the server, so a restart keeps every
//! session, and changing `--admin-token` ends them all.

use std::time::Duration;

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::edge::headers::Headers;

/// The cookie's name.
pub(crate) const COOKIE: &str = "viewcounter_admin";
/// How long a login lasts: a week, after which the owner enters the token again.
pub(crate) const SESSION_TTL: Duration = Duration::from_secs(7 * 24 * 3600);
/// Says what the MAC is of, so it can never be mistaken for a MAC of anything else.
const CONTEXT: &[u8] = b"viewcounter admin session v1\n";

type HmacSha256 = Hmac<Sha256>;

fn mac(token: &str, expiry: u64) -> HmacSha256 {
    // HMAC takes keys of any length.
    let mut mac = HmacSha256::new_from_slice(token.as_bytes()).expect("HMAC takes any key");
    mac.update(CONTEXT);
    mac.update(expiry.to_string().as_bytes());
    mac
}

/// A new session's cookie value, valid until `now + SESSION_TTL` (unix seconds).
pub(crate) fn issue(token: &str, now: u64) -> String {
    let expiry = now + SESSION_TTL.as_secs();
    let tag = mac(token, expiry).finalize().into_bytes();
    format!("{expiry}.{}", hex(&tag))
}

/// Whether `value` is a session this token issued that has not expired. The MAC is
/// compared in constant time.
pub(crate) fn is_valid(token: &str, value: &str, now: u64) -> bool {
    let Some((expiry, tag)) = value.split_once('.') else {
        return false;
    };
    let (Ok(expiry), Some(tag)) = (expiry.parse::<u64>(), unhex(tag)) else {
        return false;
    };
    expiry > now && mac(token, expiry).verify_slice(&tag).is_ok()
}

/// The session cookie's value in a `Cookie` header, if any.
pub(crate) fn from_headers(headers: &(impl Headers + ?Sized)) -> Option<&str> {
    headers
        .values("cookie")
        .filter_map(|v| std::str::from_utf8(v).ok())
        .flat_map(|v| v.split(';'))
        .find_map(|pair| {
            let (name, value) = pair.trim().split_once('=')?;
            (name == COOKIE).then_some(value)
        })
}

/// The `Set-Cookie` of a new session: script-proof, never sent by another site's page,
/// `Secure` when the browser spoke HTTPS.
pub(crate) fn set_cookie(value: &str, secure: bool) -> String {
    let secure = if secure { "; Secure" } else { "" };
    format!(
        "{COOKIE}={value}; Path=/; Max-Age={}; HttpOnly; SameSite=Strict{secure}",
        SESSION_TTL.as_secs()
    )
}

/// The `Set-Cookie` that ends the session in this browser.
pub(crate) fn clear_cookie(secure: bool) -> String {
    let secure = if secure { "; Secure" } else { "" };
    format!("{COOKIE}=; Path=/; Max-Age=0; HttpOnly; SameSite=Strict{secure}")
}

// Hex by hand: a dozen lines, not worth a crate.
fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) || !text.is_ascii() {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::http::header::{HeaderMap, HeaderName, HeaderValue};

    #[test]
    fn a_session_is_valid_until_it_expires_and_only_for_its_token() {
        let value = issue("token-one", 1_000);
        assert!(is_valid("token-one", &value, 1_000));
        assert!(is_valid(
            "token-one",
            &value,
            1_000 + SESSION_TTL.as_secs() - 1
        ));
        assert!(!is_valid(
            "token-one",
            &value,
            1_000 + SESSION_TTL.as_secs()
        ));
        assert!(!is_valid("token-two", &value, 1_000), "a new token ends it");
    }

    #[test]
    fn a_forged_or_stretched_session_is_refused() {
        let value = issue("t", 1_000);
        let (expiry, tag) = value.split_once('.').unwrap();
        let later: u64 = expiry.parse::<u64>().unwrap() + 1_000_000;
        for forged in [
            format!("{later}.{tag}"),
            format!("{expiry}.{}", &tag[..tag.len() - 2]),
            format!("{expiry}.{}00", &tag[..tag.len() - 2]),
            format!("{expiry}.zz{}", &tag[2..]),
            format!("{expiry}{tag}"),
            String::new(),
            "é.é".into(),
        ] {
            assert!(!is_valid("t", &forged, 1_000), "{forged}");
        }
    }

    #[test]
    fn the_cookie_is_found_among_others() {
        let mut h = HeaderMap::new();
        h.append(
            HeaderName::from_static("cookie"),
            HeaderValue::from_static("a=1; viewcounter_admin_x=2"),
        );
        assert_eq!(from_headers(&h), None);
        h.append(
            HeaderName::from_static("cookie"),
            HeaderValue::from_static("b=2;viewcounter_admin=123.abc ; c=3"),
        );
        assert_eq!(from_headers(&h), Some("123.abc"));
    }
}
