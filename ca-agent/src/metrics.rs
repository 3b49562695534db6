//! The optional Prometheus listener: `GET /metrics` renders the status board.

use std::net::SocketAddr;
use std::sync::Arc;

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

use crate::agent::{AgentError, Exit};
use crate::status::{Board, render_metrics};

/// Binds `addr` and serves metrics in the background.
pub async fn spawn(addr: SocketAddr, board: Arc<Board>) -> Result<(), AgentError> {
    let listener = TcpListener::bind(addr).await.map_err(|e| {
        AgentError::new(
            Exit::Usage,
            format!("cannot listen for metrics on {addr}: {e}"),
        )
    })?;
    let bound = listener.local_addr().map_err(|e| {
        AgentError::new(
            Exit::Usage,
            format!("cannot listen for metrics on {addr}: {e}"),
        )
    })?;
    {
        use std::io::Write;
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "metrics on http://{bound}/metrics");
        let _ = out.flush();
    }
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            };
            let board = board.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                    let board = board.clone();
                    async move {
                        let resp = if req.uri().path() == "/metrics" {
                            Response::builder()
                                .header("content-type", "text/plain; version=0.0.4")
                                .body(Full::new(Bytes::from(render_metrics(&board.snapshot()))))
                        } else {
                            Response::builder()
                                .status(404)
                                .body(Full::new(Bytes::from_static(b"not found\n")))
                        };
                        resp.map_err(|e| e.to_string())
                    }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tcp), svc)
                    .await;
            });
        }
    });
    Ok(())
}
