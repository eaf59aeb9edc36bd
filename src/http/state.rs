//! What every handler and stream reads: the server's state, built once before it starts, and
//! the steps on it that more than one of them takes (a post named by a path, a reader counted
//! in, posts followed). A leaf of `http`: it uses nothing of `http` but the streams' types.

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;

use crate::cluster::Cluster;
use crate::edge::client_ip::TrustedProxies;
use crate::edge::headers::Headers;
use crate::edge::limits::{AuthFailureRate, ClientKey, StreamLimits, ViewCharge, ViewRate};
use crate::edge::origin::OriginPolicy;
use crate::edge::reader_id::Showing;
use crate::edge::slug::Slug;
use crate::edge::slug_list::{Admission, SlugPolicy};
use crate::http::streams::lifecycle::Signals;
use crate::http::streams::shared::SharedStreams;
use crate::import::session::Sessions;
use crate::metrics::Metrics;
use crate::posts::post::{Join, Joined, Watched};
use crate::posts::registry::Registry;
use crate::refusal::Refusal;
use crate::storage::calendar::Calendar;

/// Everything the handlers share; built once before the server starts.
pub(crate) struct AppState {
    /// The post actors, and through them the writer.
    pub registry: Arc<Registry>,
    /// Cluster mode: the link to the other nodes, for `/stats`, `/metrics` and the dashboard
    /// (the posts reach it through the registry, as their counting port).
    pub cluster: Option<Arc<Cluster>>,
    /// Which posts exist (`--slugs` or `--allow-any-slug`).
    pub slugs: SlugPolicy,
    /// The pages allowed to read the counter (`--allow-origin`).
    pub origins: OriginPolicy,
    /// Whose forwarding headers name the client (`--trusted-proxy`).
    pub proxies: TrustedProxies,
    /// Places for streams, overall and per client.
    pub limits: Arc<StreamLimits>,
    /// Views counted per client and minute.
    pub view_rate: Arc<ViewRate>,
    /// `None` with `--count-bots`.
    pub bots: Option<isbot::Bots>,
    /// `--admin-token`; without one the admin rule is the owner at the machine itself.
    pub admin_token: Option<String>,
    /// The heartbeat and the shutdown signal every stream listens to.
    pub signals: Signals,
    /// The open shared streams, by id, for the POSTs that join and leave them.
    pub shared: Arc<SharedStreams>,
    /// IPv6 clients share one budget per prefix of this many bits (`--ipv6-prefix`).
    pub ipv6_prefix: u8,
    /// Streams in the limits answered on the socket by [`crate::http::direct`] right now:
    /// shows in `/stats` that streams take the lean path.
    pub direct_streams: AtomicUsize,
    /// The days views are counted on (`--timezone`).
    pub calendar: Calendar,
    /// The Prometheus series `/metrics` answers.
    pub metrics: Arc<Metrics>,
    /// Failed admin authentications per client: bearer tokens, session cookies and the
    /// login form together ([`crate::edge::limits::AUTH_FAILURES_PER_MINUTE`]).
    pub auth_failures: AuthFailureRate,
    /// The import sent in pieces, staged until its commit.
    pub imports: Arc<Sessions>,
}

/// User-Agents of the common browsers and one crawler: what the bot matcher sees most.
const COMMON_USER_AGENTS: [&str; 4] = [
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 18_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/18.1 Mobile/15E148 Safari/604.1",
    "Mozilla/5.0 (X11; Linux x86_64; rv:133.0) Gecko/20100101 Firefox/133.0",
    "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)",
];

impl AppState {
    /// Fills the calling thread's caches of the bot matcher (a lazily built automaton per
    /// thread, ~130 KB) before the first reader, who would otherwise wait for it; a worker's
    /// memory at rest then already holds them.
    pub(crate) fn warm_up_this_thread(&self) {
        if let Some(bots) = &self.bots {
            for ua in COMMON_USER_AGENTS {
                std::hint::black_box(bots.is_bot(ua));
            }
        }
    }

    /// Whose budgets the request draws on: the client's address (through trusted proxies),
    /// IPv6 cut to `--ipv6-prefix`.
    pub(crate) fn client_key(
        &self,
        peer: Option<IpAddr>,
        headers: &(impl Headers + ?Sized),
    ) -> ClientKey {
        let peer = peer.unwrap_or(IpAddr::from([0, 0, 0, 0]));
        ClientKey::new(self.proxies.client_ip(peer, headers), self.ipv6_prefix)
    }

    fn is_bot(&self, headers: &(impl Headers + ?Sized)) -> bool {
        let Some(bots) = &self.bots else { return false };
        match headers.text("user-agent") {
            Some(ua) if !ua.trim().is_empty() => bots.is_bot(ua),
            // Every browser sends a User-Agent; a request without one is a script.
            _ => true,
        }
    }

    /// Counts a refusal for `/metrics`, whichever layer answered it.
    pub(crate) fn count_refusal(&self, e: &Refusal) {
        let reason = crate::metrics::Refusal { reason: e.reason() };
        self.metrics.refusals.get_or_create(&reason).inc();
    }

    /// A post the policy knows of: on the allow-list, or (any slug) one that has views.
    pub(crate) fn is_listed(&self, slug: &Slug) -> bool {
        match &self.slugs {
            SlugPolicy::Listed(list) => list.contains(slug.as_str()),
            SlugPolicy::Any(_) => true,
        }
    }

    /// Parses the slug and checks that the post may exist: 400 malformed, 404 unknown.
    pub(crate) fn post(&self, raw: &str, client: ClientKey) -> Result<(Slug, Admission), Refusal> {
        let slug = Slug::parse(raw)?;
        let admission = self
            .slugs
            .admission(&slug, client)
            .ok_or(Refusal::UnknownPost)?;
        Ok((slug, admission))
    }

    /// Counts a reader in: a view unless deduplicated, rate-limited or a bot; live unless a bot.
    /// The answer carries the guard that undoes it.
    pub(crate) async fn join(
        &self,
        headers: &(impl Headers + ?Sized),
        client: ClientKey,
        slug: &Slug,
        admission: Admission,
        showing: &Showing,
    ) -> Result<Joined, Refusal> {
        let is_reader = !self.is_bot(headers);
        let charge = is_reader.then(|| ViewCharge {
            rate: Arc::clone(&self.view_rate),
            client,
        });
        let join = Join {
            id: showing.id.clone(),
            presence: showing.presence(),
            charge,
            is_reader,
        };
        self.registry.join(slug, admission, join).await
    }

    /// Each of `slugs` that exists, followed without counting (see [`crate::http::watch`]),
    /// in the order given.
    pub(crate) async fn follow(
        &self,
        slugs: Vec<Slug>,
        client: ClientKey,
    ) -> Result<Vec<(Slug, Watched)>, Refusal> {
        let asked = futures_util::future::join_all(slugs.into_iter().map(|slug| async move {
            if slug.is_site() {
                return Ok(Some((slug, self.registry.watch_site().await?)));
            }
            let Some(admission) = self.slugs.admission(&slug, client) else {
                return Ok(None);
            };
            let watched = self.registry.watch(&slug, &admission).await?;
            Ok(watched.map(|watched| (slug, watched)))
        }))
        .await;
        asked.into_iter().filter_map(Result::transpose).collect()
    }
}
