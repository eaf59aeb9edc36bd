//! The server's settings, typed and checked once. The command line's [`ServeArgs`] becomes a
//! [`Config`] through `TryFrom`; tests and embedders build one directly ([`Config::new`] has
//! the command line's defaults, the same constants clap reads, without reading any
//! `VIEWCOUNTER_*` variable), and [`crate::Application::build`] takes it and checks it, the
//! one place a config is checked however it was made.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use jiff::tz::TimeZone;

use crate::alerts::AlertSettings;
use crate::cli::{
    self, DEFAULT_DEDUPE_WINDOW, DEFAULT_FLUSH_AFTER, DEFAULT_FLUSH_MAX_WAIT, DEFAULT_HEARTBEAT,
    DEFAULT_IP_STREAM_LIMIT, DEFAULT_IP_VIEW_RATE, DEFAULT_IPV6_PREFIX, DEFAULT_LISTEN,
    DEFAULT_TIMEZONE, ServeArgs,
};
use crate::cluster;
use crate::edge::client_ip::TrustedProxies;
use crate::edge::origin::{OriginError, OriginPolicy};
use crate::http::scheduling::Scheduling;
use crate::import::session;
use crate::secret::{RedisUrl, Secret};
use crate::storage::calendar::Clock;
use crate::storage::writer::FlushPolicy;

/// Which posts exist.
#[derive(Debug, Clone)]
pub enum Posts {
    /// The slugs listed in this file (re-read on SIGHUP and when it changes).
    Listed { file: PathBuf },
    /// Any well-formed slug: at most `max` posts, each client creating at most
    /// `new_per_hour` of them (0: no limit).
    Any { max: u64, new_per_hour: u32 },
}

/// What one client, and all of them, may hold and count.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Open readers (streams and shared-stream members) per client; 0: no limit.
    pub ip_streams: u32,
    /// IPv6 clients share one budget per prefix of this many bits (32–128).
    pub ipv6_prefix: u8,
    /// Counted views per minute per client and post; 0: no limit.
    pub ip_views_per_minute: u32,
    /// All open streams; `None`: what the open-files limit leaves room for.
    pub max_streams: Option<usize>,
}

/// Everything [`crate::Application::build`] needs.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where to listen; port 0 picks one.
    pub listen: SocketAddr,
    /// The redb file (created if missing).
    pub db: PathBuf,
    pub posts: Posts,
    /// Which pages may count views, and get CORS headers.
    pub origins: OriginPolicy,
    /// The bearer token of the admin endpoints, at least [`MIN_ADMIN_TOKEN_CHARS`] long;
    /// `None`: the machine itself only (a direct loopback connection to a loopback `Host`).
    pub admin_token: Option<Secret>,
    /// When counted views are written, and how long reader ids are remembered.
    pub flush: FlushPolicy,
    /// Interval of the comment lines that keep idle streams open through proxies.
    pub heartbeat: Duration,
    pub limits: Limits,
    /// Peers whose forwarding header (`--client-ip-header`) names the client.
    pub trusted_proxies: TrustedProxies,
    /// Count User-Agents on the bot list as views and live readers.
    pub count_bots: bool,
    /// The calendar days views are counted on.
    pub timezone: TimeZone,
    /// Threads serving connections.
    pub workers: usize,
    pub scheduling: Scheduling,
    /// The time the server goes by.
    pub clock: Clock,
    /// Cluster mode (`--redis`); `None`: one node on its own file.
    pub cluster: Option<cluster::Settings>,
    /// An import sent in pieces is dropped, unapplied, after this long without a piece.
    pub import_idle: Duration,
    /// `--alert-url` with `--alert-live`; `None`: no alerts.
    pub alerts: Option<AlertSettings>,
}

/// The shortest `--admin-token` accepted: a token is guessed against every admin route, and a
/// short one falls to a patient guesser despite the limit on failures.
pub const MIN_ADMIN_TOKEN_CHARS: usize = 16;

/// A setting that cannot work, named by its flag.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("--flush-max-wait ({max_wait:?}) must be at least --flush-after ({after:?})")]
    FlushOrder { after: Duration, max_wait: Duration },
    #[error("{0} must be above zero")]
    Zero(&'static str),
    #[error(
        "--admin-token must be at least {MIN_ADMIN_TOKEN_CHARS} characters, this one has {0}: \
         make one with `openssl rand -hex 16`"
    )]
    ShortToken(usize),
    #[error("--ipv6-prefix must be 32 to 128, not {0}")]
    Ipv6Prefix(u8),
    #[error(transparent)]
    Origin(#[from] OriginError),
    /// `url` prints without its password (see [`RedisUrl`]).
    #[error(
        "--redis \"{url}\" is not a Redis URL (redis://[USER][:PASSWORD@]HOST[:PORT][/DB]; \
         write a `#`, `/`, `?` or `@` in the password as %23, %2F, %3F, %40): {reason}"
    )]
    RedisUrl { url: RedisUrl, reason: String },
    /// `--redis-ca` unreadable, without a certificate, or beside a URL without TLS.
    #[error("{0}")]
    RedisCa(String),
    #[error("--node-id must be 1 to 64 of A-Z a-z 0-9 . _ : - , not {0:?}")]
    NodeId(String),
    #[error("--alert-url \"{url}\": {reason}")]
    AlertUrl { url: String, reason: String },
}

impl Config {
    /// The command line's defaults (the constants in [`crate::cli`]), on `db` with the
    /// allow-list `slugs`.
    pub fn new(db: PathBuf, slugs: PathBuf) -> Self {
        Self {
            listen: DEFAULT_LISTEN
                .parse()
                .expect("the default address is an address"),
            db,
            posts: Posts::Listed { file: slugs },
            origins: OriginPolicy::default(),
            admin_token: None,
            flush: FlushPolicy {
                after: DEFAULT_FLUSH_AFTER,
                max_wait: DEFAULT_FLUSH_MAX_WAIT,
                dedupe_window: DEFAULT_DEDUPE_WINDOW,
            },
            heartbeat: DEFAULT_HEARTBEAT,
            limits: Limits {
                ip_streams: DEFAULT_IP_STREAM_LIMIT,
                ipv6_prefix: DEFAULT_IPV6_PREFIX,
                ip_views_per_minute: DEFAULT_IP_VIEW_RATE,
                max_streams: None,
            },
            trusted_proxies: TrustedProxies::loopback(),
            count_bots: false,
            timezone: cli::time_zone(DEFAULT_TIMEZONE)
                .expect("the default time zone is in the bundled database"),
            workers: default_workers(),
            scheduling: Scheduling::default(),
            clock: Clock::default(),
            cluster: None,
            import_idle: session::DEFAULT_IDLE,
            alerts: None,
        }
    }

    /// What the types cannot say. Checked once, by [`crate::Application::build`] (or
    /// `build_with_listener`), whichever way the config was made.
    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        let flush = &self.flush;
        if flush.max_wait < flush.after {
            return Err(ConfigError::FlushOrder {
                after: flush.after,
                max_wait: flush.max_wait,
            });
        }
        if self.heartbeat.is_zero() {
            return Err(ConfigError::Zero("--heartbeat"));
        }
        if flush.after.is_zero() {
            return Err(ConfigError::Zero("--flush-after"));
        }
        if self.workers == 0 {
            return Err(ConfigError::Zero("--workers"));
        }
        if let Some(token) = &self.admin_token {
            let chars = token.chars().count();
            if chars < MIN_ADMIN_TOKEN_CHARS {
                return Err(ConfigError::ShortToken(chars));
            }
        }
        if !(32..=128).contains(&self.limits.ipv6_prefix) {
            return Err(ConfigError::Ipv6Prefix(self.limits.ipv6_prefix));
        }
        if let Some(cluster) = &self.cluster {
            validate_cluster(cluster)?;
        }
        if let Some(alerts) = &self.alerts {
            validate_alerts(alerts)?;
        }
        Ok(())
    }
}

/// Alerts need a threshold above zero and URLs the client can post to.
fn validate_alerts(settings: &AlertSettings) -> Result<(), ConfigError> {
    if settings.live == 0 {
        return Err(ConfigError::Zero("--alert-live"));
    }
    for url in &settings.urls {
        let uri: awc::http::Uri =
            url.parse()
                .map_err(|e: awc::http::uri::InvalidUri| ConfigError::AlertUrl {
                    url: url.clone(),
                    reason: e.to_string(),
                })?;
        if !matches!(uri.scheme_str(), Some("http" | "https")) || uri.host().is_none() {
            return Err(ConfigError::AlertUrl {
                url: url.clone(),
                reason: "an http(s)://HOST[:PORT]/PATH URL is needed".into(),
            });
        }
    }
    Ok(())
}

/// What the cluster's settings' types cannot say, named by the flags.
fn validate_cluster(settings: &cluster::Settings) -> Result<(), ConfigError> {
    use redis::IntoConnectionInfo;
    let info = settings
        .redis
        .expose()
        .into_connection_info()
        .map_err(|e| ConfigError::RedisUrl {
            url: settings.redis.clone(),
            reason: e.to_string(),
        })?;
    // Makes no connection: checks the CA file and that it goes with a rediss:// URL.
    cluster::client(info, settings.ca.as_deref()).map_err(ConfigError::RedisCa)?;
    if let Some(id) = &settings.node_id
        && !cluster::is_node_id(id)
    {
        return Err(ConfigError::NodeId(id.clone()));
    }
    if settings.timeout.is_zero() {
        return Err(ConfigError::Zero("--redis-timeout"));
    }
    Ok(())
}

impl TryFrom<ServeArgs> for Config {
    type Error = ConfigError;

    fn try_from(args: ServeArgs) -> Result<Self, ConfigError> {
        let posts = if args.allow_any_slug {
            Posts::Any {
                max: args.max_slugs,
                new_per_hour: args.ip_new_post_rate,
            }
        } else {
            Posts::Listed { file: args.slugs }
        };
        Ok(Self {
            listen: args.listen,
            db: args.db,
            posts,
            origins: OriginPolicy::new(&args.allow_origins)?,
            admin_token: args.admin_token,
            flush: FlushPolicy {
                after: args.flush_after.into(),
                max_wait: args.flush_max_wait.into(),
                dedupe_window: args.dedupe_window.into(),
            },
            heartbeat: args.heartbeat.into(),
            limits: Limits {
                ip_streams: args.ip_stream_limit,
                ipv6_prefix: args.ipv6_prefix,
                ip_views_per_minute: args.ip_view_rate,
                max_streams: args.max_streams,
            },
            trusted_proxies: TrustedProxies::new(args.trusted_proxies)
                .reading(args.client_ip_header),
            count_bots: args.count_bots,
            timezone: args.timezone,
            workers: args.workers.map_or_else(default_workers, usize::from),
            scheduling: args.scheduling,
            clock: args.clock,
            cluster: args.redis.map(|redis| cluster::Settings {
                redis,
                ca: args.redis_ca,
                node_id: args.node_id,
                timeout: args.redis_timeout.into(),
            }),
            import_idle: session::DEFAULT_IDLE,
            alerts: args.alert_live.map(|live| AlertSettings {
                urls: args.alert_urls,
                live,
            }),
        })
    }
}

fn default_workers() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_config_refuses_what_cannot_work_naming_the_flag() {
        let base = Config::new("db".into(), "slugs".into());
        assert!(base.validate().is_ok());
        let mut late = base.clone();
        late.flush.max_wait = Duration::from_secs(1);
        assert!(matches!(
            late.validate(),
            Err(ConfigError::FlushOrder { .. })
        ));
        let mut silent = base.clone();
        silent.heartbeat = Duration::ZERO;
        let err = silent.validate().expect_err("zero heartbeat");
        assert!(err.to_string().contains("--heartbeat"), "{err}");
        for short in ["", "0123456789abcde", "ééééééééééééééé"] {
            let mut weak = base.clone();
            weak.admin_token = Some(Secret::from(short));
            let err = weak.validate().expect_err("a short token");
            assert!(err.to_string().contains("openssl rand -hex 16"), "{err}");
        }
        let mut strong = base.clone();
        strong.admin_token = Some(Secret::from("0123456789abcdef"));
        assert!(strong.validate().is_ok());
        let mut clustered = base.clone();
        clustered.cluster = Some(cluster::Settings::new("redis://127.0.0.1:6379/0"));
        assert!(clustered.validate().is_ok());
        let mut nowhere = base.clone();
        nowhere.cluster = Some(cluster::Settings::new("http://127.0.0.1:6379"));
        let err = nowhere.validate().expect_err("not a Redis URL");
        assert!(err.to_string().contains("--redis"), "{err}");
        let mut spaced = base;
        spaced.cluster = Some(cluster::Settings {
            node_id: Some("node one".into()),
            ..cluster::Settings::new("redis://127.0.0.1")
        });
        assert!(matches!(spaced.validate(), Err(ConfigError::NodeId(_))));
    }

    /// Every field, through `Debug` (the token and the Redis password print masked, the same
    /// for both). A `VIEWCOUNTER_*` variable in the test's environment changes what the empty
    /// command line parses to, and fails this test.
    #[test]
    fn config_new_is_what_an_empty_command_line_parses_to() {
        let parsed = |flags: &[&str]| {
            let args = ServeArgs::from_args(flags).expect("the flags parse");
            Config::try_from(args).expect("a configuration")
        };
        let new = Config::new(cli::DEFAULT_DB.into(), cli::DEFAULT_SLUGS.into());
        assert_eq!(format!("{new:?}"), format!("{:?}", parsed(&[])));

        let redis = "redis://127.0.0.1:6379/0";
        let clustered = Config {
            cluster: Some(cluster::Settings::new(redis)),
            ..new
        };
        assert_eq!(
            format!("{clustered:?}"),
            format!("{:?}", parsed(&["--redis", redis]))
        );
    }

    #[test]
    fn alerts_need_both_flags_a_threshold_above_zero_and_http_or_https_urls() {
        let parsed = |flags: &[&str]| ServeArgs::from_args(flags).map(Config::try_from);
        let hook = "http://127.0.0.1:9000/hook";
        let config = parsed(&[
            "--alert-url",
            hook,
            "--alert-url",
            "http://ntfy.lan/t",
            "--alert-live",
            "50",
        ])
        .expect("the flags parse")
        .expect("a configuration");
        assert_eq!(
            config.alerts,
            Some(AlertSettings {
                urls: vec![hook.into(), "http://ntfy.lan/t".into()],
                live: 50
            })
        );
        assert!(config.validate().is_ok());
        assert!(parsed(&["--alert-url", hook]).is_err(), "no threshold");
        assert!(parsed(&["--alert-live", "5"]).is_err(), "nowhere to send");

        let refused = |urls: &[&str], live: u64| {
            let mut config = Config::new("db".into(), "slugs".into());
            config.alerts = Some(AlertSettings {
                urls: urls.iter().map(|u| u.to_string()).collect(),
                live,
            });
            config.validate().expect_err("refused").to_string()
        };
        assert!(refused(&[hook], 0).contains("--alert-live"));
        let mut slack = Config::new("db".into(), "slugs".into());
        slack.alerts = Some(AlertSettings {
            urls: vec!["https://hooks.slack.com/services/T0/B0/x".into()],
            live: 3,
        });
        assert!(slack.validate().is_ok(), "https");
        for bad in ["not a url", "ftp://host/x", "/hook", "hooks.slack.com/x"] {
            let err = refused(&[hook, bad], 3);
            assert!(err.contains("--alert-url") && err.contains(bad), "{err}");
        }
    }

    #[test]
    fn the_debug_of_a_configuration_shows_neither_the_token_nor_the_redis_password() {
        let args = ServeArgs::from_args([
            "--admin-token",
            "s3cret-admin-token",
            "--redis",
            "redis://app:hunter2@127.0.0.1:6379/0",
        ])
        .expect("flags");
        let config = Config::try_from(args.clone()).expect("a valid configuration");
        for shown in [format!("{args:?}"), format!("{config:?}")] {
            assert!(!shown.contains("s3cret"), "{shown}");
            assert!(!shown.contains("hunter2"), "{shown}");
            assert!(
                shown.contains("redis://app:***@127.0.0.1:6379/0"),
                "{shown}"
            );
        }
    }
}
