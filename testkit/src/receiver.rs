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
    /// `http://127.0.0.1:PORT/hook` (`https://localhost:PORT/hook`).
    pub url: String,
    log: Arc<Mutex<Log>>,
    arrived: Arc<Notify>,
    server: actix_web::dev::ServerHandle,
}

impl Receiver {
    /// A receiver answering its requests with `script`, in order, then `200`.
    pub async fn start(script: &[Answer]) -> Self {
        Self::serve(script, None).await
    }

    /// The same over https (`https://localhost:PORT/hook`), its certificate signed by a CA of
    /// its own: `ca.crt` in `dir`, for the client's `SSL_CERT_FILE`.
    pub async fn start_https(script: &[Answer], dir: &std::path::Path) -> Self {
        crate::redis::make_certificates(dir);
        use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
        let certs = CertificateDer::pem_file_iter(dir.join("server.crt"))
            .expect("server.crt")
            .collect::<Result<Vec<_>, _>>()
            .expect("certificates");
        let key = PrivateKeyDer::from_pem_file(dir.join("server.key")).expect("server.key");
        #[allow(deprecated)]
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("TLS versions")
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .expect("the certificate and its key");
        Self::serve(script, Some(config)).await
    }

    async fn serve(script: &[Answer], tls: Option<rustls::ServerConfig>) -> Self {
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
        .disable_signals();
        let scheme = if tls.is_some() { "https" } else { "http" };
        let server = match tls {
            Some(config) => server.bind_rustls_0_23("127.0.0.1:0", config),
            None => server.bind("127.0.0.1:0"),
        }
        .expect("bind the receiver");
        let port = server.addrs()[0].port();
        let server = server.run();
        let handle = server.handle();
        actix_web::rt::spawn(server);
        Self {
            url: match scheme {
                "https" => format!("https://localhost:{port}/hook"),
                _ => format!("http://127.0.0.1:{port}/hook"),
            },
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
