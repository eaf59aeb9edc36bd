//! Prometheus metrics (`GET /metrics`), through `prometheus-client`: what an operator graphs.
//! No series carries a post's slug: a blog can have 10,000 posts, and a label per post would be
//! a series each.

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Why a request was refused: the [`crate::refusal::Refusal`] variant.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Refusal {
    pub reason: &'static str,
}

/// Every series; cheap to share (each metric is an `Arc` inside).
pub struct Metrics {
    registry: Registry,
    /// Set from the stream limits when scraped.
    pub streams_open: Gauge,
    /// Moved by the posts as readers come and go.
    pub readers_live: Gauge,
    /// Set from the registry when scraped.
    pub posts_awake: Gauge,
    pub views_counted: Counter,
    pub views_deduplicated: Counter,
    pub views_rate_limited: Counter,
    pub views_from_bots: Counter,
    pub refusals: Family<Refusal, Counter>,
    flushes: Counter,
    flush_errors: Counter,
    flush_seconds: Histogram,
    /// Cluster mode only (registered by [`Metrics::clustered`]); set when scraped.
    pub redis_up: Gauge,
    pub cluster_nodes: Gauge,
    pub outbox_pending: Gauge,
}

impl Metrics {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::standalone())
    }

    /// The series of a node in cluster mode: those of [`Metrics::new`] and Redis's.
    pub fn clustered() -> Arc<Self> {
        let mut m = Self::standalone();
        let r = &mut m.registry;
        r.register(
            "redis_up",
            "1 while Redis answers within --redis-timeout",
            m.redis_up.clone(),
        );
        r.register(
            "cluster_nodes",
            "Live nodes seen, this one included",
            m.cluster_nodes.clone(),
        );
        r.register(
            "outbox_pending",
            "Views counted here that Redis does not have yet",
            m.outbox_pending.clone(),
        );
        Arc::new(m)
    }

    fn standalone() -> Self {
        let mut m = Self {
            streams_open: Gauge::default(),
            readers_live: Gauge::default(),
            posts_awake: Gauge::default(),
            views_counted: Counter::default(),
            views_deduplicated: Counter::default(),
            views_rate_limited: Counter::default(),
            views_from_bots: Counter::default(),
            refusals: Family::default(),
            flushes: Counter::default(),
            flush_errors: Counter::default(),
            // 1 ms to about 16 s: an fsync on a quiet disk to one on a struggling one.
            flush_seconds: Histogram::new(exponential_buckets(0.001, 2.0, 15)),
            registry: Registry::with_prefix("viewcounter"),
            redis_up: Gauge::default(),
            cluster_nodes: Gauge::default(),
            outbox_pending: Gauge::default(),
        };
        let r = &mut m.registry;
        r.register("streams_open", "Open event streams", m.streams_open.clone());
        r.register(
            "readers_live",
            "Readers counted live, all posts",
            m.readers_live.clone(),
        );
        r.register("posts_awake", "Post actors awake", m.posts_awake.clone());
        r.register("views_counted", "Views counted", m.views_counted.clone());
        r.register(
            "views_deduplicated",
            "Streams not counted: reader id counted within the dedupe window",
            m.views_deduplicated.clone(),
        );
        r.register(
            "views_rate_limited",
            "Streams not counted: over --ip-view-rate",
            m.views_rate_limited.clone(),
        );
        r.register(
            "views_from_bots",
            "Streams not counted: a bot User-Agent",
            m.views_from_bots.clone(),
        );
        r.register(
            "refusals",
            "Requests refused, by reason",
            m.refusals.clone(),
        );
        r.register(
            "flushes",
            "Write transactions of counted views",
            m.flushes.clone(),
        );
        r.register(
            "flush_errors",
            "Write transactions that failed (retried)",
            m.flush_errors.clone(),
        );
        r.register(
            "flush_seconds",
            "Time to write one flush",
            m.flush_seconds.clone(),
        );
        m
    }

    /// One flush, written or failed, and how long it took.
    pub fn flushed(&self, took: Duration, ok: bool) {
        self.flush_seconds.observe(took.as_secs_f64());
        if ok {
            self.flushes.inc();
        } else {
            self.flush_errors.inc();
        }
    }

    /// The text exposition format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}
