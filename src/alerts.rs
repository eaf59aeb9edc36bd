//! Alerts when a post takes off (`--alert-url URL`, repeatable, with `--alert-live N`): when a
//! post first reaches N readers at once, one `POST` of `application/json`
//! `{"text":M,"content":M,"slug":S,"live":L,"total":T}` to each URL. `text` is what Slack's
//! incoming webhooks show and `content` what Discord's show; ntfy shows the whole body.
//!
//! Never on the counting path: a post hands the alert to a bounded queue ([`Alerter`]; a full
//! queue drops it and logs) and one task here does the rest: at most one alert per post per
//! [`ALERT_EVERY`], claimed in Redis in cluster mode so that one node of the cluster sends it,
//! and each URL's delivery retried with backoff ([`RETRY_AFTER`]) until a 2xx, each attempt
//! given [`ATTEMPT_TIMEOUT`].

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use crate::cluster::Cluster;
use crate::edge::slug::Slug;
use crate::posts::alert_port::Alerts;
use crate::posts::post::Counts;
use crate::shutdown::Shutdown;

/// One alert per post at most this often.
pub const ALERT_EVERY: Duration = Duration::from_secs(3600);
/// Each attempt to deliver gives up after this long (a receiver that hangs).
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(5);
/// Waits before each retry of a failed delivery; after the last, the alert is given up (and
/// logged). The first retry comes within 30 s of the first failure.
pub const RETRY_AFTER: [Duration; 5] = [
    Duration::from_secs(2),
    Duration::from_secs(10),
    Duration::from_secs(30),
    Duration::from_secs(120),
    Duration::from_secs(600),
];
/// Alerts waiting for the task; more are dropped (and logged), never waited for.
pub const ALERT_QUEUE: usize = 256;

/// `--alert-url` and `--alert-live`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AlertSettings {
    /// Where each alert is posted: `http://` or `https://` URLs.
    pub urls: Vec<String>,
    /// Live readers at which a post alerts.
    pub live: u64,
}

/// One post that took off.
#[derive(Debug)]
struct Alert {
    slug: Slug,
    counts: Counts,
}

/// The posts' side: a number to check and a queue to drop the alert into.
pub(crate) struct Alerter {
    threshold: u64,
    queue: mpsc::Sender<Alert>,
}

impl Alerts for Alerter {
    fn threshold(&self) -> u64 {
        self.threshold
    }

    fn reached(&self, slug: &Slug, counts: Counts) {
        let alert = Alert {
            slug: slug.clone(),
            counts,
        };
        if let Err(mpsc::error::TrySendError::Full(alert)) = self.queue.try_send(alert) {
            tracing::warn!(slug = %alert.slug, "alert dropped: {ALERT_QUEUE} alerts already waiting");
        }
    }
}

/// The task's side: the queue's other end and where alerts go.
pub(crate) struct Deliveries {
    urls: Arc<[String]>,
    queue: mpsc::Receiver<Alert>,
}

/// The two ends of the alerts' queue.
pub(crate) fn alerts(settings: &AlertSettings) -> (Arc<Alerter>, Deliveries) {
    let (tx, rx) = mpsc::channel(ALERT_QUEUE);
    let alerter = Alerter {
        threshold: settings.live,
        queue: tx,
    };
    let deliveries = Deliveries {
        urls: settings.urls.clone().into(),
        queue: rx,
    };
    (Arc::new(alerter), deliveries)
}

#[derive(serde::Serialize)]
struct Message<'a> {
    text: &'a str,
    content: &'a str,
    slug: &'a str,
    live: u64,
    total: u64,
}

impl Deliveries {
    /// Takes alerts until `stop`: each post at most once per [`ALERT_EVERY`] (once per
    /// cluster), each URL delivered on its own so that a hanging one delays no other.
    pub(crate) async fn run(mut self, cluster: Option<Arc<Cluster>>, mut stop: Shutdown) {
        let client = client();
        let mut sent: HashMap<Slug, Instant> = HashMap::new();
        while let Some(Some(alert)) = stop.unless_started(self.queue.recv()).await {
            sent.retain(|_, at| at.elapsed() < ALERT_EVERY);
            if sent.contains_key(&alert.slug) {
                continue;
            }
            if let Some(cluster) = &cluster {
                match cluster.claim_alert(&alert.slug, ALERT_EVERY).await {
                    Ok(true) => {}
                    Ok(false) => {
                        // Another node sent it (or this one, before a restart).
                        sent.insert(alert.slug, Instant::now());
                        continue;
                    }
                    // Better twice than never: without Redis each node decides alone.
                    Err(e) => {
                        tracing::warn!(error = %e, slug = %alert.slug, "cannot claim the alert in Redis; sending it")
                    }
                }
            }
            sent.insert(alert.slug.clone(), Instant::now());
            let text = format!(
                "{} is taking off: {} reading now ({} views)",
                alert.slug, alert.counts.live, alert.counts.total
            );
            let body = serde_json::to_vec(&Message {
                text: &text,
                content: &text,
                slug: alert.slug.as_str(),
                live: alert.counts.live,
                total: alert.counts.total,
            })
            .unwrap_or_default();
            let body = bytes::Bytes::from(body);
            for url in self.urls.iter() {
                actix_rt::spawn(deliver(client.clone(), url.clone(), body.clone()));
            }
        }
    }
}

/// The HTTP client of alerts: `http://`, and `https://` with rustls (ring, as the Redis link
/// has it) trusting the system's roots. A system without roots (no `ca-certificates`) still
/// sends to `http://` URLs; `https://` ones then fail, logged, like a receiver down.
fn client() -> awc::Client {
    let found = rustls_native_certs::load_native_certs();
    if let Some(e) = found.errors.first() {
        tracing::warn!(error = %e, "some of the system's root certificates could not be read");
    }
    let mut roots = rustls::RootCertStore::empty();
    let (added, _) = roots.add_parsable_certificates(found.certs);
    if added == 0 {
        tracing::warn!("no root certificate on this system: https alert URLs will fail");
    }
    #[allow(deprecated)]
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let connector = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map(|config| {
            let mut config = config.with_root_certificates(roots).with_no_client_auth();
            // awc speaks HTTP/1.1 here: a webhook is one small request.
            config.alpn_protocols = vec![b"http/1.1".to_vec()];
            awc::Connector::new().rustls_0_23(Arc::new(config))
        });
    let builder = awc::Client::builder().timeout(ATTEMPT_TIMEOUT);
    match connector {
        Ok(connector) => builder.connector(connector).finish(),
        Err(e) => {
            tracing::warn!(error = %e, "no TLS for alerts: https alert URLs will fail");
            builder.finish()
        }
    }
}

/// Posts `body` to `url` until a 2xx, retrying after each of [`RETRY_AFTER`].
async fn deliver(client: awc::Client, url: String, body: bytes::Bytes) {
    let mut waits = RETRY_AFTER.iter();
    loop {
        let attempt = client
            .post(&url)
            .insert_header(("Content-Type", "application/json"))
            .send_body(body.clone());
        let failure = match tokio::time::timeout(ATTEMPT_TIMEOUT, attempt).await {
            Ok(Ok(res)) if res.status().is_success() => return,
            Ok(Ok(res)) => format!("answered {}", res.status()),
            Ok(Err(e)) => e.to_string(),
            Err(_) => format!("no answer within {ATTEMPT_TIMEOUT:?}"),
        };
        let Some(wait) = waits.next() else {
            tracing::error!(%url, error = %failure, "alert not delivered; giving up");
            return;
        };
        tracing::warn!(%url, error = %failure, "alert not delivered; retrying in {wait:?}");
        tokio::time::sleep(*wait).await;
    }
}
