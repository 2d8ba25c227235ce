//! The controller's HTTP endpoints on hyper 1 + hyper-util (four routes do not need a
//! framework): `/metrics`, `/healthz` (the process serves), `/readyz` (caches synced and
//! the first revision read) and `POST /hook` (a git webhook: it only wakes the poller).
use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::{Notify, watch};

use crate::metrics::Metrics;
use crate::webhook::{Verdict, verify};

pub struct Shared {
    pub metrics: Metrics,
    /// Set once every watch has listed (its first InitDone) and the first revision was read.
    pub ready: AtomicBool,
    /// The file holding the webhook secret (a mounted Secret), read at each delivery so a
    /// rotated Secret applies without a restart; `None`: `/hook` answers 404.
    pub webhook_secret: Option<std::path::PathBuf>,
    /// Wakes the git poller; `notify_one` coalesces many hooks into one fetch.
    pub fetch_now: std::sync::Arc<Notify>,
}

const MAX_HOOK_BODY: usize = 5 << 20; // GitHub caps payloads at 25 MB; pushes are small

type Body = Full<Bytes>;

fn text(status: StatusCode, content_type: &'static str, body: impl Into<Bytes>) -> Response<Body> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, content_type)
        .body(Full::new(body.into()))
        .expect("static response")
}

async fn handle(shared: Arc<Shared>, req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    const PLAIN: &str = "text/plain; charset=utf-8";
    let resp = match (req.method(), req.uri().path()) {
        (&Method::GET, "/healthz") => text(StatusCode::OK, PLAIN, "ok"),
        (&Method::GET, "/readyz") if shared.ready.load(Ordering::Acquire) => {
            text(StatusCode::OK, PLAIN, "ok")
        }
        (&Method::GET, "/readyz") => {
            text(StatusCode::SERVICE_UNAVAILABLE, PLAIN, "caches not synced")
        }
        (&Method::GET, "/metrics") => text(
            StatusCode::OK,
            cloud4iot_kube::metrics::CONTENT_TYPE,
            shared.metrics.encode(),
        ),
        (&Method::POST, "/hook") => {
            let Some(path) = shared.webhook_secret.as_deref() else {
                return Ok(text(
                    StatusCode::NOT_FOUND,
                    PLAIN,
                    "no webhook secret configured",
                ));
            };
            let secret = match read_secret(path).await {
                Ok(s) => s,
                Err(why) => {
                    tracing::warn!("webhook refused: {why}");
                    return Ok(text(StatusCode::SERVICE_UNAVAILABLE, PLAIN, why));
                }
            };
            let (parts, body) = req.into_parts();
            let body = match Limited::new(body, MAX_HOOK_BODY).collect().await {
                Ok(b) => b.to_bytes(),
                Err(_) => return Ok(text(StatusCode::PAYLOAD_TOO_LARGE, PLAIN, "too large")),
            };
            match verify(&secret, &parts.headers, &body) {
                Verdict::Fetch => {
                    shared.fetch_now.notify_one();
                    text(StatusCode::ACCEPTED, PLAIN, "fetch scheduled")
                }
                Verdict::Ignore => text(StatusCode::OK, PLAIN, "ignored"),
                Verdict::Unauthorized => text(StatusCode::UNAUTHORIZED, PLAIN, "bad signature"),
            }
        }
        _ => text(StatusCode::NOT_FOUND, PLAIN, "not found"),
    };
    Ok(resp)
}

/// The webhook secret in `path`, surrounding whitespace trimmed; why not, if it cannot be
/// used (missing, for instance an optional Secret not created yet, or empty).
pub async fn read_secret(path: &std::path::Path) -> Result<Vec<u8>, String> {
    match tokio::fs::read(path).await {
        Ok(text) if !text.trim_ascii().is_empty() => Ok(text.trim_ascii().to_vec()),
        Ok(_) => Err(format!(
            "the webhook secret file {} is empty",
            path.display()
        )),
        Err(e) => Err(format!("the webhook secret file {}: {e}", path.display())),
    }
}

/// Serves on `listener` until `shutdown` turns true; in-flight connections finish gracefully
/// (for at most 5 s).
pub async fn serve(
    listener: TcpListener,
    shared: Arc<Shared>,
    mut shutdown: watch::Receiver<bool>,
) {
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, _) = match accepted { Ok(s) => s, Err(e) => { tracing::warn!(%e, "accept"); continue } };
                let shared = shared.clone();
                let conn = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service_fn(move |req| handle(shared.clone(), req)));
                let conn = graceful.watch(conn);
                tokio::spawn(async move {
                    if let Err(e) = conn.await { tracing::debug!(%e, "connection"); }
                });
            }
            _ = shutdown.changed() => break,
        }
    }
    tokio::select! {
        _ = graceful.shutdown() => {}
        _ = tokio::time::sleep(std::time::Duration::from_secs(5)) => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The status of a GitLab push delivery with `token` to the server at `addr` (a plain
    /// blocking client on the blocking pool, so the server's runtime keeps serving).
    async fn deliver(addr: std::net::SocketAddr, token: &str) -> u16 {
        use std::io::{Read, Write};
        let request = format!(
            "POST /hook HTTP/1.1\r\nHost: x\r\nX-Gitlab-Event: Push Hook\r\n\
             X-Gitlab-Token: {token}\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{{}}"
        );
        let response = tokio::task::spawn_blocking(move || {
            let mut stream = std::net::TcpStream::connect(addr).unwrap();
            stream.write_all(request.as_bytes()).unwrap();
            let mut response = String::new();
            stream.read_to_string(&mut response).unwrap();
            response
        })
        .await
        .unwrap();
        response
            .split_whitespace()
            .nth(1)
            .and_then(|code| code.parse().ok())
            .unwrap_or_else(|| panic!("not an HTTP response: {response:?}"))
    }

    /// The secret is read at each delivery: `/hook` answers 503 while the file is missing
    /// (an optional Secret not created yet) or empty, accepts the secret once it exists,
    /// and a rotated secret applies at the next delivery, with no restart.
    #[tokio::test]
    async fn the_hook_answers_503_until_the_secret_exists_and_follows_its_rotation() {
        let dir = std::env::temp_dir().join(format!("cloud4iot-hook-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let secret = dir.join("secret");
        let _ = std::fs::remove_file(&secret);
        let shared = Arc::new(Shared {
            metrics: Metrics::default(),
            ready: AtomicBool::new(true),
            webhook_secret: Some(secret.clone()),
            fetch_now: Arc::new(Notify::new()),
        });
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = watch::channel(false);
        let server = tokio::spawn(serve(listener, shared.clone(), stopped));

        assert_eq!(deliver(addr, "first").await, 503, "no secret file yet");
        std::fs::write(&secret, "\n").unwrap();
        assert_eq!(deliver(addr, "first").await, 503, "an empty secret");
        std::fs::write(&secret, "first\n").unwrap();
        let woken = shared.fetch_now.notified();
        assert_eq!(deliver(addr, "first").await, 202, "the secret now exists");
        woken.await;
        assert_eq!(deliver(addr, "second").await, 401, "not yet rotated");
        std::fs::write(&secret, "second").unwrap();
        assert_eq!(deliver(addr, "second").await, 202, "rotated, no restart");
        assert_eq!(
            deliver(addr, "first").await,
            401,
            "the old secret no longer"
        );

        stop.send(true).unwrap();
        server.await.unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
