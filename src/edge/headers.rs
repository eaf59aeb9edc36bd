//! Request headers as the handlers read them, whichever layer parsed the head: actix-web for
//! most requests, or [`crate::http::direct`] for event streams served straight on the socket.

use actix_web::http::header::HeaderMap;

pub trait Headers {
    /// Every value of the header `name` (given in lowercase), in the order received.
    fn values<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a [u8]> + 'a;

    fn value<'a>(&'a self, name: &'a str) -> Option<&'a [u8]> {
        self.values(name).next()
    }

    /// The first value, if it is visible ASCII (as `HeaderValue::to_str` would have it).
    fn text<'a>(&'a self, name: &'a str) -> Option<&'a str> {
        let value = self.value(name)?;
        let visible = value.iter().all(|&b| b == b'\t' || (32..127).contains(&b));
        visible.then(|| std::str::from_utf8(value).ok()).flatten()
    }
}

impl Headers for HeaderMap {
    fn values<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a [u8]> + 'a {
        self.get_all(name).map(|v| v.as_bytes())
    }
}

impl Headers for [httparse::Header<'_>] {
    fn values<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a [u8]> + 'a {
        self.iter()
            .filter(move |h| h.name.eq_ignore_ascii_case(name))
            .map(|h| h.value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_header_names_match_whatever_their_case() {
        let raw = [
            httparse::Header {
                name: "X-Forwarded-For",
                value: b"1.2.3.4",
            },
            httparse::Header {
                name: "user-agent",
                value: b"ua",
            },
            httparse::Header {
                name: "x-forwarded-for",
                value: b"5.6.7.8",
            },
        ];
        let all: Vec<&[u8]> = raw[..].values("x-forwarded-for").collect();
        assert_eq!(all, [&b"1.2.3.4"[..], b"5.6.7.8"]);
        assert_eq!(raw[..].text("user-agent"), Some("ua"));
        assert_eq!(raw[..].value("origin"), None);
        let odd = [httparse::Header {
            name: "User-Agent",
            value: "caf\u{e9}".as_bytes(),
        }];
        assert_eq!(odd[..].text("user-agent"), None, "not visible ASCII");
    }
}
