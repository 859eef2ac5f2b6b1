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
        "HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n",
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
