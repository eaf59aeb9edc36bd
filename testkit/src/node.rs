//! The one way a test makes a cluster node: `redis.node(NAME)`, then in this process
//! ([`NodeOn::spawn`], an `Application` as [`crate::TestApp`]) or as the real binary
//! ([`NodeOn::start`], a [`crate::BinServer`]: for signals, kill -9, a balancer in front).

use viewcounter::cluster::Settings;
use viewcounter::config::Config;

use crate::app::{TestApp, spawn_app_configured};
use crate::bin::BinServer;
use crate::redis::Redis;

/// A node to be, named `name` (`--node-id`) on `redis`.
pub struct NodeOn<'a> {
    /// The Redis it joins.
    pub(crate) redis: &'a Redis,
    /// Its `--node-id`.
    pub(crate) name: &'a str,
}

impl NodeOn<'_> {
    /// The node as an `Application` in the test's actix System: the defaults, this Redis and
    /// name, then `configure`.
    pub async fn spawn(self, configure: impl FnOnce(&mut Config)) -> TestApp {
        let url = self.redis.url();
        let name = self.name.to_owned();
        spawn_app_configured(|c| {
            c.cluster = Some(Settings {
                node_id: Some(name),
                ..Settings::new(url)
            });
            configure(c);
        })
        .await
    }

    /// `viewcounter serve --redis URL --node-id NAME FLAGS…` as its own process, in its own
    /// directory (its own `--db`, which holds its outbox).
    pub async fn start(self, flags: &[&str]) -> BinServer {
        let url = self.redis.url();
        let mut all = vec!["--redis", &url, "--node-id", self.name];
        all.extend(flags);
        BinServer::start(&all).await
    }
}
