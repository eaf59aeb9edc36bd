//! `--client-ip-header`: a trusted proxy names the client in the one header it is set to, and
//! the other forwarding header, which such a proxy passes on as the client wrote it, names
//! nobody. Through real proxies: `tests/cluster/deploy.rs` (HAProxy, both headers) and the e2e
//! tests (nginx, Caddy).

use std::net::IpAddr;

use testkit::*;

#[actix_web::test]
async fn with_client_ip_header_forwarded_only_the_forwarded_header_of_a_trusted_proxy_names_the_client()
 {
    let dir = tempfile::tempdir().unwrap();
    write_slugs(&dir.path().join("slugs.txt"), DEFAULT_SLUGS);
    // From the environment, as a unit file gives it; the proxy on 127.0.0.1 only.
    let server = BinServer::start_with_env(
        dir,
        &["serve"],
        &["--ip-stream-limit", "1", "--trusted-proxy", "127.0.0.1/32"],
        &[("VIEWCOUNTER_CLIENT_IP_HEADER", "forwarded")],
    )
    .await;
    let through_proxy = |forwarded: &str, xff: &str| {
        Req::connect("alpha", &token())
            .header("Forwarded", forwarded)
            .header("X-Forwarded-For", xff)
    };

    let first = join(
        server.addr,
        "alpha",
        through_proxy("for=198.51.100.7;proto=https", "203.0.113.1"),
    )
    .await;
    assert_eq!(first.first, counts(1, 1));
    // The same client, naming another address in the header the proxy does not set.
    let again = SseClient::open(
        server.addr,
        through_proxy("for=198.51.100.7", "203.0.113.2"),
    )
    .await;
    assert_eq!(again.status, 429, "{:?}", again.headers);
    // Only X-Forwarded-For: the proxy named nobody, so the client is the proxy itself, and
    // not 203.0.113.3.
    let proxy_itself = SseClient::open(
        server.addr,
        Req::connect("alpha", &token()).header("X-Forwarded-For", "203.0.113.3"),
    )
    .await;
    assert_eq!(proxy_itself.status, 200, "{:?}", proxy_itself.headers);
    let twice = SseClient::open(
        server.addr,
        Req::connect("alpha", &token()).header("X-Forwarded-For", "203.0.113.4"),
    )
    .await;
    assert_eq!(
        twice.status, 429,
        "the proxy's own budget: {:?}",
        twice.headers
    );
    // A peer that is no trusted proxy is itself, whatever its Forwarded says.
    let stranger: IpAddr = "127.0.0.2".parse().unwrap();
    let mut own = SseClient::open_from(
        stranger,
        server.addr,
        Req::connect("alpha", &token()).header("Forwarded", "for=198.51.100.7"),
    )
    .await;
    assert_eq!(own.status, 200, "{:?}", own.headers);
    assert_eq!(own.next_event().await.counts(), Some(counts(3, 3)));
}
