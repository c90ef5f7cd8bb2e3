//! `/metrics` over plain HTTP/1.1 (hyper, already in the tree through
//! tonic): GET or HEAD `/metrics` gets the text format, anything else a
//! 404 or 405.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{ALLOW, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;

use super::Metrics;

/// A client gets this long to send its request headers.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// Binds `address`; a failure names the config key.
pub async fn bind(address: SocketAddr) -> anyhow::Result<TcpListener> {
    TcpListener::bind(address)
        .await
        .with_context(|| format!("metrics.address {address}: cannot listen"))
}

/// Answers scrapes on `listener` until the runtime stops.
pub async fn serve(listener: TcpListener, metrics: Arc<Metrics>) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of fds, say: let the condition pass.
                tracing::warn!("metrics: accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let metrics = Arc::clone(&metrics);
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request| respond(request, Arc::clone(&metrics)));
            let served = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service)
                .await;
            if let Err(e) = served {
                tracing::debug!(%peer, "metrics: connection: {e}");
            }
        });
    }
}

async fn respond(request: Request<Incoming>, metrics: Arc<Metrics>) -> Result<Response<Full<Bytes>>, Infallible> {
    if request.uri().path() != "/metrics" {
        return Ok(plain(StatusCode::NOT_FOUND, "strata serves its metrics at /metrics\n"));
    }
    if !matches!(*request.method(), Method::GET | Method::HEAD) {
        let mut response = plain(StatusCode::METHOD_NOT_ALLOWED, "GET or HEAD\n");
        response
            .headers_mut()
            .insert(ALLOW, "GET, HEAD".parse().expect("a valid header"));
        return Ok(response);
    }
    // Encoding may measure the store: off the async threads.
    let encoded = match tokio::task::spawn_blocking(move || metrics.encode()).await {
        Ok(encoded) => encoded.map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    };
    Ok(match encoded {
        Ok(text) => {
            let mut response = Response::new(Full::new(Bytes::from(text)));
            response.headers_mut().insert(
                CONTENT_TYPE,
                prometheus_client::encoding::prometheus_text::CONTENT_TYPE
                    .parse()
                    .expect("a valid header"),
            );
            response
        }
        Err(e) => {
            tracing::error!("metrics: encoding: {e}");
            plain(StatusCode::INTERNAL_SERVER_ERROR, "encoding the metrics failed\n")
        }
    })
}

fn plain(status: StatusCode, text: &'static str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from_static(text.as_bytes())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        CONTENT_TYPE,
        "text/plain; charset=utf-8".parse().expect("a valid header"),
    );
    response
}
