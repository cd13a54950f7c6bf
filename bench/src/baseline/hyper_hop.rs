//! foo's inner hop in `rpc-hyper`: `POST /function/bar` over hyper-util's
//! pooled client — keep-alive connections reused across calls, as many as
//! calls in flight, `TCP_NODELAY` — the standard way to call another
//! HTTP service from tokio.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::{Method, Request, StatusCode, Uri};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use super::{retry_until_ready, BarCallError, MAX_BODY};

/// A pooled HTTP/1.1 client for bar; clones share the pool.
#[derive(Clone)]
pub struct HyperBar {
    client: Client<HttpConnector, Full<Bytes>>,
    call: Uri,
    health: Uri,
}

impl HyperBar {
    /// A client for bar at `addr` (no connection yet).
    pub fn new(addr: SocketAddr) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(Duration::from_secs(90))
            .pool_max_idle_per_host(usize::MAX)
            .build(connector);
        let uri = |path: &str| {
            format!("http://{addr}{path}")
                .parse::<Uri>()
                .expect("a socket address and a fixed path make a valid URI")
        };
        Self {
            client,
            call: uri("/function/bar"),
            health: uri("/healthz"),
        }
    }

    /// A client for bar at `addr`, once bar answers `GET /healthz` (which
    /// also leaves a warm connection in the pool); gives up after `wait`.
    pub async fn connect(addr: SocketAddr, wait: Duration) -> Result<Self, BarCallError> {
        let bar = Self::new(addr);
        retry_until_ready(addr, wait, || async {
            let request = Request::get(bar.health.clone())
                .body(Full::new(Bytes::new()))
                .expect("a GET with a valid URI builds");
            match bar.client.request(request).await {
                Ok(response) if response.status() == StatusCode::OK => {
                    // Drain it so the connection goes back to the pool.
                    let _ = response.into_body().collect().await;
                    Ok(())
                }
                Ok(response) => Err(format!("GET /healthz answered {}", response.status())),
                Err(e) => Err(e.to_string()),
            }
        })
        .await?;
        Ok(bar)
    }

    /// `POST /function/bar` with `input`; bar's answer body.
    pub async fn call(&self, input: Bytes) -> Result<Bytes, BarCallError> {
        let request = Request::builder()
            .method(Method::POST)
            .uri(self.call.clone())
            .body(Full::new(input))
            .expect("a POST with a valid URI builds");
        let response = self.client.request(request).await?;
        let status = response.status();
        let body = Limited::new(response.into_body(), MAX_BODY)
            .collect()
            .await
            .map_err(|e| BarCallError::Body(e.to_string()))?
            .to_bytes();
        if status != StatusCode::OK {
            return Err(BarCallError::Status(status.as_u16()));
        }
        Ok(body)
    }
}
