//! Cluster mode (design.md "Beyond one machine"): real `viewcounter` binaries sharing a real
//! `redis-server` that each test starts on a free loopback port in its own temp dir (no mock).
//! Faults are real too: SIGTERM and kill -9 of a node, kill -9 and restart of Redis, Redis
//! paused with SIGSTOP, a node dying behind the HAProxy recipe of `deploy/cluster/`.
//!
//! Without `redis-server` on the PATH every test here prints that it was skipped and how to run
//! it, and passes; with `CI=true` a missing `redis-server` (or `haproxy`) fails instead.
//!
//! Convergence times are measured and printed (`cargo test --test cluster -- --nocapture`
//! shows them): they are the figures the issue asks for.

mod agreement;
mod channels;
mod deploy;
mod idle_cost;
mod managed;
mod migration;
mod node_loss;
mod presence_tells;
mod reads;
mod reconnect;
mod record;
mod redis_cluster;
mod redis_loss;
mod stats;
mod support;
