//! The worker threads. Each is an actix arbiter (so post actors can live on it) that accepts
//! connections on the shared listener itself and serves them through [`direct::serve`].
//!
//! Why not actix-server: its single accept thread hands every connection to a worker through
//! a channel and a wake-up, and the worker then asks the kernel for the peer address again.
//! With short-lived connections that thread and those wake-ups were a fifth of the server's
//! time; accepting on the worker that will serve the connection costs neither.

use std::io;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use crate::shutdown::Shutdown;
use actix_rt::{Arbiter, ArbiterHandle};
use actix_service::{Service, ServiceFactory};
use actix_web::web;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::task::TaskTracker;

use crate::http::direct::{self, Handed};
use crate::http::scheduling::Scheduling;
use crate::http::state::AppState;

/// After accepting failed for want of descriptors or memory, accepting pauses this long: the
/// kernel queue holds new connections meanwhile, and streams closing give descriptors back.
const ACCEPT_PAUSE: Duration = Duration::from_millis(100);
/// ...and says so in the log at most this often.
const WARNING_INTERVAL: Duration = Duration::from_secs(10);

/// Running workers; [`Server::stop`] drains and ends them.
pub(crate) struct Server {
    workers: Vec<Arbiter>,
    connections: TaskTracker,
}

/// Settings of the connections every worker serves.
#[derive(Clone)]
pub(crate) struct Settings {
    pub workers: usize,
    pub scheduling: Scheduling,
    pub head_timeout: Duration,
}

impl Server {
    /// Starts `settings.workers` threads accepting on `listener`. `fallback` builds, on each
    /// worker, the actix-web service for everything that is not a stream.
    /// Workers stop accepting when `shutdown` fires.
    pub(crate) fn start<F: ServiceFactory<Handed, Config = (), InitError = ()> + 'static>(
        listener: std::net::TcpListener,
        state: web::Data<AppState>,
        settings: Settings,
        shutdown: Shutdown,
        fallback: impl Fn() -> F + Send + Clone + 'static,
    ) -> io::Result<Self> {
        listener.set_nonblocking(true)?;
        let connections = TaskTracker::new();
        let warned = Arc::new(Mutex::new(None));
        let mut workers = Vec::with_capacity(settings.workers);
        for _ in 0..settings.workers {
            let worker = Arbiter::try_new()?;
            let listener = listener.try_clone()?;
            let job = Job {
                state: state.clone(),
                head_timeout: settings.head_timeout,
                shutdown: shutdown.clone(),
                connections: connections.clone(),
                warned: Arc::clone(&warned),
            };
            let fallback = fallback.clone();
            let scheduling = settings.scheduling;
            worker.spawn_fn(move || {
                scheduling.apply_to_this_thread();
                job.state.warm_up_this_thread();
                actix_rt::spawn(job.run(listener, fallback()));
            });
            workers.push(worker);
        }
        Ok(Self {
            workers,
            connections,
        })
    }

    /// The worker threads, to run work on each of them.
    pub(crate) fn threads(&self) -> Vec<ArbiterHandle> {
        self.workers.iter().map(Arbiter::handle).collect()
    }

    /// Once the shutdown signal fired: gives open connections `grace` to finish, then ends
    /// the workers and whatever they still serve.
    pub(crate) async fn stop(self, grace: Duration) {
        self.connections.close();
        if tokio::time::timeout(grace, self.connections.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                open = self.connections.len(),
                "connections still open after the grace period are dropped"
            );
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        for worker in &self.workers {
            worker.stop();
        }
    }
}

/// One worker's accept loop and what it hands each connection.
struct Job {
    state: web::Data<AppState>,
    head_timeout: Duration,
    /// Accepting stops when it fires.
    shutdown: Shutdown,
    connections: TaskTracker,
    /// When a failure to accept was last logged, by any worker.
    warned: Arc<Mutex<Option<Instant>>>,
}

impl Job {
    async fn run<F: ServiceFactory<Handed, Config = (), InitError = ()> + 'static>(
        mut self,
        listener: std::net::TcpListener,
        fallback: F,
    ) {
        let (listener, fallback) = match prepare(listener, fallback).await {
            Ok(ready) => ready,
            Err(e) => {
                tracing::error!("a worker could not start: {e}");
                return;
            }
        };
        loop {
            let accepted = tokio::select! {
                biased;
                () = self.shutdown.started() => return,
                accepted = listener.accept() => accepted,
            };
            match accepted {
                Ok((io, peer)) => self.serve(io, peer, &fallback),
                // The peer gave up before we got to it.
                Err(e) if is_transient(&e) => {}
                // Out of descriptors or memory: retrying at once would spin.
                Err(e) => {
                    self.warn_at_most_every(WARNING_INTERVAL, &e);
                    tokio::time::sleep(ACCEPT_PAUSE).await;
                }
            }
        }
    }

    fn warn_at_most_every(&self, interval: Duration, e: &io::Error) {
        let mut warned = self.warned.lock().unwrap_or_else(PoisonError::into_inner);
        if warned.is_none_or(|at| at.elapsed() >= interval) {
            tracing::warn!("cannot accept connections: {e}; pausing");
            *warned = Some(Instant::now());
        }
    }

    fn serve<S>(&self, io: TcpStream, peer: SocketAddr, fallback: &Rc<S>)
    where
        S: Service<Handed> + 'static,
    {
        let state = self.state.clone();
        let fallback = Rc::clone(fallback);
        let head_timeout = self.head_timeout;
        actix_rt::spawn(self.connections.track_future(async move {
            direct::serve(io, peer, &state, head_timeout, &*fallback).await;
        }));
    }
}

/// The worker's side of the listener, and its actix-web service.
async fn prepare<F: ServiceFactory<Handed, Config = (), InitError = ()> + 'static>(
    listener: std::net::TcpListener,
    fallback: F,
) -> io::Result<(TcpListener, Rc<F::Service>)> {
    let listener = TcpListener::from_std(listener)?;
    let service = fallback
        .new_service(())
        .await
        .map_err(|()| io::Error::other("the HTTP service did not start"))?;
    Ok((listener, Rc::new(service)))
}

/// Errors that concern one connection only, not the listener.
fn is_transient(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::ECONNABORTED | libc::ECONNRESET | libc::EPROTO | libc::EINTR | libc::EPERM)
    )
}
