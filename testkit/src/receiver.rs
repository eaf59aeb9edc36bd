//! A webhook receiver on loopback (a tiny actix-web server in the test's process), for
//! `--alert-url`: it records every request and answers as the test scripted it.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};
use tokio::sync::Notify;

/// How the receiver answers one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// `200`.
    Ok,
    /// This status, e.g. `500`.
    Status(u16),
    /// Never: the request hangs until the client gives up.
    Hang,
}

/// One request as received, and how it was answered.
#[derive(Debug, Clone)]
pub struct Received {
    pub content_type: Option<String>,
    pub body: serde_json::Value,
    pub answer: Answer,
    pub at: Instant,
}

#[derive(Default)]
struct Log {
    /// Answers still to give, in order; then `Ok`.
    script: Vec<Answer>,
    got: Vec<Received>,
}

pub struct Receiver {
    /// `http://127.0.0.1:PORT/hook`.
    pub url: String,
    log: Arc<Mutex<Log>>,
    arrived: Arc<Notify>,
    server: actix_web::dev::ServerHandle,
}

impl Receiver {
    /// A receiver answering its requests with `script`, in order, then `200`.
    pub async fn start(script: &[Answer]) -> Self {
        let log = Arc::new(Mutex::new(Log {
            script: script.iter().rev().copied().collect(),
            got: Vec::new(),
        }));
        let arrived = Arc::new(Notify::new());
        let state = (Arc::clone(&log), Arc::clone(&arrived));
        let server = HttpServer::new(move || {
            App::new()
                .app_data(web::Data::new(state.clone()))
                .default_service(web::to(receive))
        })
        .workers(1)
        .disable_signals()
        .bind("127.0.0.1:0")
        .expect("bind the receiver");
        let port = server.addrs()[0].port();
        let server = server.run();
        let handle = server.handle();
        actix_web::rt::spawn(server);
        Self {
            url: format!("http://127.0.0.1:{port}/hook"),
            log,
            arrived,
            server: handle,
        }
    }

    /// Every request so far.
    pub fn received(&self) -> Vec<Received> {
        self.log.lock().unwrap().got.clone()
    }

    /// Waits until `n` requests have arrived (panics at `within`); all of them.
    pub async fn await_requests(&self, n: usize, within: Duration) -> Vec<Received> {
        let deadline = Instant::now() + within;
        loop {
            let arrived = self.arrived.notified();
            let got = self.received();
            if got.len() >= n {
                return got;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if tokio::time::timeout(left, arrived).await.is_err() {
                panic!("{} of {n} requests within {within:?}: {got:?}", got.len());
            }
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        drop(self.server.stop(false));
    }
}

type State = web::Data<(Arc<Mutex<Log>>, Arc<Notify>)>;

async fn receive(req: HttpRequest, body: web::Bytes, state: State) -> HttpResponse {
    let (log, arrived) = &**state;
    let answer = {
        let mut log = log.lock().unwrap();
        let answer = log.script.pop().unwrap_or(Answer::Ok);
        log.got.push(Received {
            content_type: req
                .headers()
                .get("content-type")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned),
            body: serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null),
            answer,
            at: Instant::now(),
        });
        answer
    };
    arrived.notify_waiters();
    match answer {
        Answer::Ok => HttpResponse::Ok().finish(),
        Answer::Status(code) => {
            HttpResponse::build(actix_web::http::StatusCode::from_u16(code).unwrap()).finish()
        }
        Answer::Hang => std::future::pending().await,
    }
}
