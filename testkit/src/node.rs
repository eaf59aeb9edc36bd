//! The one way a test makes a cluster node: `redis.node(NAME)`, then in this process
//! ([`NodeOn::spawn`], an `Application` as [`crate::TestApp`]) or as the real binary
//! ([`NodeOn::start`], a [`crate::BinServer`]: for signals, kill -9, a balancer in front).

use viewcounter::cluster::Settings;
use viewcounter::config::Config;

use crate::app::{TestApp, spawn_app_configured};
use crate::bin::BinServer;

/// A node to be, named `name` (`--node-id`) on a Redis (a [`crate::Redis`], or a master of a
/// [`crate::RedisCluster`]).
pub struct NodeOn<'a> {
    /// The URL of the Redis it joins.
    pub(crate) url: String,
    /// Its `--node-id`.
    pub(crate) name: &'a str,
}

impl NodeOn<'_> {
    /// The node as an `Application` in the test's actix System: the defaults, this Redis and
    /// name, then `configure`.
    pub async fn spawn(self, configure: impl FnOnce(&mut Config)) -> TestApp {
        let url = self.url;
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
        let all = self.flags(flags);
        BinServer::start(&all.iter().map(String::as_str).collect::<Vec<_>>()).await
    }

    /// As [`NodeOn::start`], on `dir` (the directory, and so the `--db`, of a node that
    /// exited: the same node back).
    pub async fn start_in(self, dir: tempfile::TempDir, flags: &[&str]) -> BinServer {
        let all = self.flags(flags);
        BinServer::start_in(dir, &all.iter().map(String::as_str).collect::<Vec<_>>()).await
    }

    fn flags(&self, flags: &[&str]) -> Vec<String> {
        let mut all = vec![
            "--redis".to_owned(),
            self.url.clone(),
            "--node-id".to_owned(),
            self.name.to_owned(),
        ];
        all.extend(flags.iter().map(|f| (*f).to_owned()));
        all
    }
}
