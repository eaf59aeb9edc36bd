//! The command line: `viewcounter serve`, `export` and `import`. Every flag also reads
//! `VIEWCOUNTER_<FLAG>` from the environment.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::builder::PossibleValue;
use clap::{Args, Parser, Subcommand, ValueEnum};
use ipnet::IpNet;

use crate::edge::client_ip::{ClientIpHeader, LOOPBACK_PROXIES};
use crate::http::scheduling::Scheduling;
use crate::import::file::ImportFormat;
use crate::secret::{RedisUrl, Secret};
use crate::storage::writer::ImportMode;

pub mod export;
pub mod import;
pub mod retire;

// The defaults of `serve`, each stated once: clap shows and parses these, and
// `crate::config::Config::new` reads the same constants (a test checks that the two agree).
// Duration flags are `humantime::Duration`, so clap prints a default as it would parse it
// ("5s", "30m"). The time zone is the name a user would type, parsed by the flag's parser.
// Defaults that are a type's `Default` (scheduling, client IP header) are stated on the type.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
pub const DEFAULT_DB: &str = "data/viewcounter.redb";
pub const DEFAULT_SLUGS: &str = "data/slugs.txt";
pub const DEFAULT_MAX_SLUGS: u64 = 10_000;
pub const DEFAULT_FLUSH_AFTER: Duration = Duration::from_secs(5);
pub const DEFAULT_FLUSH_MAX_WAIT: Duration = Duration::from_secs(30);
pub const DEFAULT_DEDUPE_WINDOW: Duration = Duration::from_secs(30 * 60);
pub const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(15);
pub const DEFAULT_IP_STREAM_LIMIT: u32 = 64;
pub const DEFAULT_IPV6_PREFIX: u8 = 64;
pub const DEFAULT_IP_NEW_POST_RATE: u32 = 10;
pub const DEFAULT_IP_VIEW_RATE: u32 = 30;
pub const DEFAULT_TIMEZONE: &str = "UTC";

#[derive(Debug, Parser)]
#[command(
    name = "viewcounter",
    version,
    about = "A live view counter for blog posts"
)]
#[command(args_conflicts_with_subcommands = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,

    /// With no subcommand, `serve` with these flags.
    #[command(flatten)]
    pub serve: ServeArgs,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve the counter (the default when no subcommand is given).
    Serve(Box<ServeArgs>),
    /// Print all-time views per post (or per day), from the db file or the running server.
    Export(ExportArgs),
    /// Bring views in from a file: export's CSV or JSON, or GoatCounter's CSV export.
    Import(ImportArgs),
    /// Cluster mode: hand a stopped node's record (its --db file) to a running node, for good.
    Retire(RetireArgs),
}

#[derive(Debug, Clone, Args)]
pub struct RetireArgs {
    /// The stopped node's redb file: marked retired once the running node took its record.
    #[arg(long, env = "VIEWCOUNTER_DB", default_value = DEFAULT_DB)]
    pub db: PathBuf,

    /// A running node of the cluster, which takes the record (`http://HOST:PORT`).
    #[arg(long, env = "VIEWCOUNTER_URL")]
    pub url: String,

    /// Bearer token for that node's admin endpoints.
    #[arg(long, env = "VIEWCOUNTER_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<Secret>,
}

#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// Address to listen on; port 0 picks a free port.
    #[arg(long, env = "VIEWCOUNTER_LISTEN", default_value = DEFAULT_LISTEN)]
    pub listen: SocketAddr,

    /// The redb file holding all-time totals (created if missing).
    #[arg(long, env = "VIEWCOUNTER_DB", default_value = DEFAULT_DB)]
    pub db: PathBuf,

    /// Allow-list of slugs, one per line; re-read on SIGHUP and when it changes.
    /// When the file is missing, only the embedded demo slugs are allowed.
    #[arg(long, env = "VIEWCOUNTER_SLUGS", default_value = DEFAULT_SLUGS)]
    pub slugs: PathBuf,

    /// Count any well-formed slug instead of the allow-list, up to --max-slugs posts.
    #[arg(long, env = "VIEWCOUNTER_ALLOW_ANY_SLUG")]
    pub allow_any_slug: bool,

    /// With --allow-any-slug: how many distinct posts may exist.
    #[arg(long, env = "VIEWCOUNTER_MAX_SLUGS", default_value_t = DEFAULT_MAX_SLUGS)]
    pub max_slugs: u64,

    /// An origin (scheme://host[:port]) whose pages may embed the counter; repeatable.
    #[arg(
        long = "allow-origin",
        env = "VIEWCOUNTER_ALLOW_ORIGIN",
        value_delimiter = ','
    )]
    pub allow_origins: Vec<String>,

    /// Bearer token required by /api/v1/totals; without it only loopback peers are answered.
    #[arg(long, env = "VIEWCOUNTER_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<Secret>,

    /// Write a post's total after this much quiet.
    #[arg(long, env = "VIEWCOUNTER_FLUSH_AFTER", default_value_t = DEFAULT_FLUSH_AFTER.into())]
    pub flush_after: humantime::Duration,

    /// ...but never later than this after its first unwritten view.
    #[arg(long, env = "VIEWCOUNTER_FLUSH_MAX_WAIT", default_value_t = DEFAULT_FLUSH_MAX_WAIT.into())]
    pub flush_max_wait: humantime::Duration,

    /// A reader id counts once per post within this window.
    #[arg(long, env = "VIEWCOUNTER_DEDUPE_WINDOW", default_value_t = DEFAULT_DEDUPE_WINDOW.into())]
    pub dedupe_window: humantime::Duration,

    /// Interval of the comment lines that keep idle streams open through proxies.
    #[arg(long, env = "VIEWCOUNTER_HEARTBEAT", default_value_t = DEFAULT_HEARTBEAT.into())]
    pub heartbeat: humantime::Duration,

    /// Open readers (streams and shared-stream members) per client IP; 0 = no limit.
    #[arg(long, env = "VIEWCOUNTER_IP_STREAM_LIMIT", default_value_t = DEFAULT_IP_STREAM_LIMIT)]
    pub ip_stream_limit: u32,

    /// IPv6 clients share one budget (streams, views, new posts) per prefix of this many bits.
    #[arg(long, env = "VIEWCOUNTER_IPV6_PREFIX", default_value_t = DEFAULT_IPV6_PREFIX, value_parser = clap::value_parser!(u8).range(32..=128))]
    pub ipv6_prefix: u8,

    /// With --allow-any-slug: new posts per client IP per hour; 0 = no limit.
    #[arg(long, env = "VIEWCOUNTER_IP_NEW_POST_RATE", default_value_t = DEFAULT_IP_NEW_POST_RATE)]
    pub ip_new_post_rate: u32,

    /// Counted views per minute per client IP and post; 0 = no limit.
    #[arg(long, env = "VIEWCOUNTER_IP_VIEW_RATE", default_value_t = DEFAULT_IP_VIEW_RATE)]
    pub ip_view_rate: u32,

    /// Threads serving connections, each with its own post actors; default: one per CPU.
    #[arg(long, env = "VIEWCOUNTER_WORKERS", value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub workers: Option<u16>,

    /// How the kernel schedules the workers: `batch` (a worker woken by another does not
    /// preempt it; fewer context switches) or `normal` (the system default).
    #[arg(long, env = "VIEWCOUNTER_SCHEDULING", value_enum, default_value_t = Scheduling::default())]
    pub scheduling: Scheduling,

    /// All open streams; default: what the open-files limit leaves room for.
    #[arg(long, env = "VIEWCOUNTER_MAX_STREAMS")]
    pub max_streams: Option<usize>,

    /// Peers whose forwarding header (--client-ip-header) names the client; repeatable.
    #[arg(
        long = "trusted-proxy",
        env = "VIEWCOUNTER_TRUSTED_PROXY",
        value_delimiter = ',',
        default_values = LOOPBACK_PROXIES
    )]
    pub trusted_proxies: Vec<IpNet>,

    /// The header in which a --trusted-proxy names the client, the one your proxy sets:
    /// `x-forwarded-for` (with X-Forwarded-Proto: nginx, Caddy, HAProxy `option forwardfor`)
    /// or `forwarded` (RFC 7239: HAProxy `option forwarded`). The other is ignored.
    #[arg(long, env = "VIEWCOUNTER_CLIENT_IP_HEADER", value_enum, default_value_t = ClientIpHeader::default())]
    pub client_ip_header: ClientIpHeader,

    /// Count User-Agents that the bot list matches (by default they get numbers, not counted).
    #[arg(long, env = "VIEWCOUNTER_COUNT_BOTS")]
    pub count_bots: bool,

    /// The time zone of the calendar days views are counted on (an IANA name).
    #[arg(long, env = "VIEWCOUNTER_TIMEZONE", default_value = DEFAULT_TIMEZONE, value_parser = time_zone)]
    pub timezone: jiff::tz::TimeZone,

    /// Cluster mode: the Redis (or Valkey) that every node of the cluster shares, e.g.
    /// `redis://127.0.0.1:6379/0`. Without it the node stands alone on its --db file.
    #[arg(long, env = "VIEWCOUNTER_REDIS", hide_env_values = true)]
    pub redis: Option<RedisUrl>,

    /// With a rediss:// --redis: the PEM file of the CA that signed Redis's certificate (a
    /// private CA); without it the system's roots are trusted.
    #[arg(long, env = "VIEWCOUNTER_REDIS_CA", requires = "redis")]
    pub redis_ca: Option<PathBuf>,

    /// With --redis: this node's name in the cluster; default: host, port and a random suffix.
    #[arg(long, env = "VIEWCOUNTER_NODE_ID", requires = "redis")]
    pub node_id: Option<String>,

    /// With --redis: every Redis call gives up after this long (the node carries on without it).
    #[arg(long, env = "VIEWCOUNTER_REDIS_TIMEOUT", default_value_t = crate::cluster::DEFAULT_TIMEOUT.into())]
    pub redis_timeout: humantime::Duration,

    /// Where to POST an alert (JSON for Slack, Discord, ntfy…) when a post reaches
    /// --alert-live readers; repeatable.
    #[arg(
        long = "alert-url",
        env = "VIEWCOUNTER_ALERT_URL",
        value_delimiter = ',',
        requires = "alert_live"
    )]
    pub alert_urls: Vec<String>,

    /// Readers at once at which a post alerts (with --alert-url); no alerts without it.
    #[arg(long, env = "VIEWCOUNTER_ALERT_LIVE", requires = "alert_urls")]
    pub alert_live: Option<u64>,

    /// The time the server goes by: the system's, unless a test moves it.
    #[arg(skip)]
    pub clock: crate::storage::calendar::Clock,
}

/// Where the owner's commands find the numbers: the server `--url` names (and nothing else),
/// else the db file when no server holds it, else the running server that does.
#[derive(Debug, Clone, Args)]
pub struct StoreArgs {
    /// The redb file, used directly when no server holds it.
    #[arg(long, env = "VIEWCOUNTER_DB", default_value = DEFAULT_DB)]
    pub db: PathBuf,

    /// The running server to go through, and nothing else: no local file is read or written.
    /// Without it: the --db file, or the server at the --listen address when it holds the file.
    #[arg(long, env = "VIEWCOUNTER_URL", conflicts_with = "redis")]
    pub url: Option<String>,

    /// Address the server listens on, used for the default --url.
    #[arg(long, env = "VIEWCOUNTER_LISTEN", default_value = DEFAULT_LISTEN, hide = true)]
    pub listen: SocketAddr,

    /// Bearer token for the server's admin endpoints (/api/v1/totals, /daily, /import).
    #[arg(long, env = "VIEWCOUNTER_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<Secret>,

    /// Cluster mode: export reads the cluster's Redis directly instead (import refuses it:
    /// an import goes through a node, whose record keeps it).
    #[arg(long, env = "VIEWCOUNTER_REDIS", hide_env_values = true)]
    pub redis: Option<RedisUrl>,

    /// With a rediss:// --redis: the PEM file of the CA that signed Redis's certificate.
    #[arg(long, env = "VIEWCOUNTER_REDIS_CA", requires = "redis")]
    pub redis_ca: Option<PathBuf>,
}

/// How long `export`/`import --redis` wait for each Redis call.
pub const CLI_REDIS_TIMEOUT: Duration = Duration::from_secs(10);

impl StoreArgs {
    /// `--redis` as a store, if given.
    pub fn redis_store(
        &self,
    ) -> Option<Result<crate::cluster::store::RedisStore, crate::storage::store::StoreError>> {
        let url = self.redis.as_ref()?;
        Some(crate::cluster::store::RedisStore::standalone(
            url,
            self.redis_ca.as_deref(),
            CLI_REDIS_TIMEOUT,
        ))
    }
}

impl StoreArgs {
    /// `--url`, or `http://` + the listen address (loopback for an unspecified one): the
    /// server to ask when it holds the file.
    pub fn url(&self) -> String {
        self.url.clone().unwrap_or_else(|| {
            let mut addr = self.listen;
            if addr.ip().is_unspecified() {
                addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
            }
            format!("http://{addr}")
        })
    }
}

#[derive(Debug, Clone, Args)]
pub struct ExportArgs {
    #[command(flatten)]
    pub store: StoreArgs,

    #[arg(long, env = "VIEWCOUNTER_FORMAT", value_enum, default_value_t = Format::Csv)]
    pub format: Format,

    /// Views per post per day (`slug,day,views`) instead of all-time totals.
    #[arg(long, env = "VIEWCOUNTER_DAILY")]
    pub daily: bool,
}

#[derive(Debug, Clone, Args)]
pub struct ImportArgs {
    /// The file to import: `slug,total` or `slug,day,views` CSV, export's JSON, or
    /// GoatCounter's CSV export; `-` reads standard input.
    pub file: PathBuf,

    #[command(flatten)]
    pub store: StoreArgs,

    /// `set`: a post's total (and each day) becomes the file's, never lower than already
    /// counted; `add`: the file's numbers are added.
    #[arg(long, env = "VIEWCOUNTER_IMPORT_MODE", value_enum, default_value_t = ImportMode::Set)]
    pub mode: ImportMode,

    /// Print what would change, write nothing.
    #[arg(long)]
    pub dry_run: bool,

    /// GoatCounter paths: only those under this prefix, which is cut off (`/blog/a` → `a`).
    #[arg(long, env = "VIEWCOUNTER_PATH_PREFIX")]
    pub path_prefix: Option<String>,

    /// The file's format; recognised from its content when not given.
    #[arg(long, value_enum)]
    pub format: Option<ImportFormat>,

    /// The calendar GoatCounter's timestamps are put on days in (as the server's --timezone).
    #[arg(long, env = "VIEWCOUNTER_TIMEZONE", default_value = DEFAULT_TIMEZONE, value_parser = time_zone)]
    pub timezone: jiff::tz::TimeZone,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Csv,
    Json,
}

// The import's own types know no command line: their flag values and help are spelled here.

impl ValueEnum for ImportMode {
    fn value_variants<'a>() -> &'a [Self] {
        &[Self::Set, Self::Add]
    }

    fn to_possible_value(&self) -> Option<PossibleValue> {
        Some(match self {
            Self::Set => PossibleValue::new("set").help(
                "A post's total (and each day) becomes the file's, never lower than already counted",
            ),
            Self::Add => PossibleValue::new("add").help("The file's numbers are added"),
        })
    }
}

impl ValueEnum for ImportFormat {
    fn value_variants<'a>() -> &'a [Self] {
        &[Self::Csv, Self::Json, Self::Goatcounter]
    }

    fn to_possible_value(&self) -> Option<PossibleValue> {
        Some(match self {
            Self::Csv => PossibleValue::new("csv").help(
                "`viewcounter export` as CSV: `slug,total` or, with `--daily`, `slug,day,views`",
            ),
            Self::Json => PossibleValue::new("json")
                .help("`viewcounter export --format json`, all-time or daily"),
            Self::Goatcounter => PossibleValue::new("goatcounter")
                .help("GoatCounter's CSV export of single pageviews (export format version 2)"),
        })
    }
}

impl ValueEnum for ClientIpHeader {
    fn value_variants<'a>() -> &'a [Self] {
        &[Self::XForwardedFor, Self::Forwarded]
    }

    fn to_possible_value(&self) -> Option<PossibleValue> {
        Some(match self {
            Self::XForwardedFor => PossibleValue::new("x-forwarded-for").help(
                "`X-Forwarded-For`, with `X-Forwarded-Proto`: nginx, Caddy, HAProxy `option forwardfor`",
            ),
            Self::Forwarded => PossibleValue::new("forwarded")
                .help("RFC 7239 `Forwarded`, its `for=` and `proto=`: HAProxy `option forwarded`"),
        })
    }
}

impl ValueEnum for Scheduling {
    fn value_variants<'a>() -> &'a [Self] {
        &[Self::Batch, Self::Normal]
    }

    fn to_possible_value(&self) -> Option<PossibleValue> {
        Some(match self {
            Self::Batch => PossibleValue::new("batch")
                .help("`SCHED_BATCH`: a worker woken by another does not preempt it"),
            Self::Normal => PossibleValue::new("normal").help("The system's default policy"),
        })
    }
}

impl ServeArgs {
    /// The defaults plus `args`, as if given after `viewcounter serve`; used by tests and
    /// embedders that build a configuration in code.
    pub fn from_args<I, T>(args: I) -> Result<Self, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        #[derive(Parser)]
        struct Only {
            #[command(flatten)]
            serve: ServeArgs,
        }
        let argv = std::iter::once("serve".into()).chain(args.into_iter().map(Into::into));
        Ok(Only::try_parse_from(argv)?.serve)
    }
}

pub(crate) fn time_zone(raw: &str) -> Result<jiff::tz::TimeZone, String> {
    jiff::tz::TimeZone::get(raw).map_err(|e| {
        format!(
            "{raw:?} is not a time zone this build knows (an IANA name such as Europe/Berlin): {e}"
        )
    })
}
