//! Integration tests against the real server on port 0 over real sockets: the library's
//! `Application` inside the test's actix System, or the `viewcounter` binary where process
//! behaviour matters (signals, kill -9, export). One module per area of the contract in
//! `design.md`.

mod alerts;
mod assets;
mod cli;
mod client_ip;
mod cluster;
mod coalescing;
mod connect;
mod cors;
mod count;
mod dashboard;
mod exactness;
mod export;
mod faults;
mod heads;
mod leave;
mod numbers;
mod owner;
mod owner_only;
mod persistence;
mod presence;
mod pulse;
mod secrets;
mod shared;
mod slugs;
mod totals;
mod watch;
mod wire;
