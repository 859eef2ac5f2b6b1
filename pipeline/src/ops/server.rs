//! The read-only HTTP endpoint of `meterflow run` (address `[ops] listen`):
//!
//! * `GET /metrics`: Prometheus / OpenMetrics text;
//! * `GET /`: the operations page (HTML, self-contained);
//! * `GET /api/status`: the page's facts as JSON.
//!
//! Deliberately small: HTTP/1.1 GET only, one request per connection, request heads up to 8 KiB
//! read within 5 s; anything else gets a clear 4xx. It never writes anything.

use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::Ops;

const MAX_HEAD: usize = 8 * 1024;

/// The response to one request path: (status line, content type, body).
pub fn respond(ops: &Ops, method: &str, path: &str) -> (&'static str, &'static str, Vec<u8>) {
    if method != "GET" && method != "HEAD" {
        return ("405 Method Not Allowed", "text/plain; charset=utf-8", b"read-only endpoint: use GET\n".to_vec());
    }
    match path.split('?').next().unwrap_or_default() {
        "/metrics" => {
            ("200 OK", "application/openmetrics-text; version=1.0.0; charset=utf-8", ops.metrics.encode().into_bytes())
        }
        "/" | "/index.html" => {
            ("200 OK", "text/html; charset=utf-8", super::page::render(&ops.view(), ops.refresh_s).into_bytes())
        }
        "/api/status" => match serde_json::to_vec_pretty(&ops.view()) {
            Ok(body) => ("200 OK", "application/json", body),
            Err(e) => ("500 Internal Server Error", "text/plain; charset=utf-8", format!("{e}\n").into_bytes()),
        },
        _ => ("404 Not Found", "text/plain; charset=utf-8", b"not found: try /, /metrics or /api/status\n".to_vec()),
    }
}

async fn handle(ops: &Ops, mut stream: TcpStream) -> std::io::Result<()> {
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0u8; 1024];
    let read = tokio::time::timeout(Duration::from_secs(5), async {
        while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < MAX_HEAD {
            let n = stream.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            head.extend_from_slice(&buf[..n]);
        }
        std::io::Result::Ok(())
    })
    .await;
    let (status, kind, body, is_head) = match read {
        Ok(Ok(())) => {
            let text = String::from_utf8_lossy(&head);
            let mut parts = text.lines().next().unwrap_or_default().split_whitespace();
            let (method, path) = (parts.next().unwrap_or_default(), parts.next().unwrap_or_default());
            if head.len() >= MAX_HEAD && !head.windows(4).any(|w| w == b"\r\n\r\n") {
                (
                    "431 Request Header Fields Too Large",
                    "text/plain; charset=utf-8",
                    b"request head too large\n".to_vec(),
                    false,
                )
            } else {
                let (s, k, b) = respond(ops, method, path);
                (s, k, b, method == "HEAD")
            }
        }
        _ => {
            ("408 Request Timeout", "text/plain; charset=utf-8", b"request head not received in time\n".to_vec(), false)
        }
    };
    let header = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nCache-Control: \
            no-store\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(header.as_bytes()).await?;
    if !is_head {
        stream.write_all(&body).await?;
    }
    stream.shutdown().await
}

/// Serves until the process ends.
pub async fn serve(listener: TcpListener, ops: Arc<Ops>) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let ops = ops.clone();
                tokio::spawn(async move {
                    if let Err(e) = handle(&ops, stream).await {
                        tracing::debug!(error = %e, "ops request failed");
                    }
                });
            }
            Err(e) => {
                tracing::warn!(error = %e, "ops endpoint: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::live::Live;
    use crate::ops::metrics::Metrics;

    /// Starts the endpoint on a free local port; returns its address.
    async fn endpoint() -> std::net::SocketAddr {
        let ops = Arc::new(Ops {
            metrics: Arc::new(Metrics::new()),
            live: Arc::new(Live::new(10)),
            reasons: vec!["invalid_json".into()],
            meters: vec!["api_calls".into()],
            refresh_s: 1,
            billing_cache: tokio::sync::Mutex::new(None),
        });
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(serve(listener, ops));
        addr
    }

    /// Sends `request` as is and returns everything the endpoint answers before it closes.
    async fn exchange(addr: std::net::SocketAddr, request: &[u8]) -> String {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream.write_all(request).await.unwrap();
        let mut answer = Vec::new();
        stream.read_to_end(&mut answer).await.unwrap();
        String::from_utf8(answer).unwrap()
    }

    #[tokio::test]
    async fn anything_but_get_or_head_is_refused_with_405() {
        let addr = endpoint().await;
        let answer = exchange(addr, b"POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n").await;
        assert!(answer.starts_with("HTTP/1.1 405 Method Not Allowed\r\n"), "{answer}");
        assert!(answer.ends_with("read-only endpoint: use GET\n"), "{answer}");
    }

    #[tokio::test]
    async fn a_head_request_gets_the_headers_and_no_body() {
        let addr = endpoint().await;
        let answer = exchange(addr, b"HEAD /metrics HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
        let length: usize = answer
            .lines()
            .find_map(|l| l.strip_prefix("Content-Length: "))
            .and_then(|n| n.trim().parse().ok())
            .unwrap();
        assert!(length > 0, "the length of the body a GET would get");
        assert!(answer.ends_with("\r\n\r\n"), "no body after the head: {answer}");
    }

    #[tokio::test]
    async fn a_request_head_over_8_kib_is_refused_with_431() {
        let addr = endpoint().await;
        let mut request = b"GET / HTTP/1.1\r\nX-Padding: ".to_vec();
        // Exactly the limit and no end of head: nothing is left unread when the endpoint
        // closes (unread bytes would turn its close into a reset).
        request.resize(MAX_HEAD, b'a');
        let answer = exchange(addr, &request).await;
        assert!(answer.starts_with("HTTP/1.1 431 Request Header Fields Too Large\r\n"), "{answer}");
    }

    #[tokio::test]
    async fn a_request_head_not_finished_within_5_s_gets_408() {
        let addr = endpoint().await;
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n").await.unwrap();
        let mut answer = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(30), stream.read_to_end(&mut answer)).await;
        assert!(read.is_ok(), "the endpoint kept the unfinished request open");
        let answer = String::from_utf8(answer).unwrap();
        assert!(answer.starts_with("HTTP/1.1 408 Request Timeout\r\n"), "{answer}");
    }
}
