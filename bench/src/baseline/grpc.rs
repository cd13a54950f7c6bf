//! `rpc-grpc`'s inner hop: bar as a tonic gRPC service, called by foo over
//! one multiplexed HTTP/2 channel. The messages and the service are
//! written by hand — exactly what `tonic-build` would generate from the
//! file below — so building needs no `protoc`:
//!
//! ```proto
//! syntax = "proto3";
//! package nocturne.bench;
//! service Bar { rpc Call(CallRequest) returns (CallReply); }
//! message CallRequest { bytes input = 1; }
//! message CallReply { bytes output = 1; }
//! ```
//!
//! bar answers `output = "From function Bar: " + input`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use tonic::codegen::{http, Body, BoxFuture, Context, Poll, Service, StdError};
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Channel, Endpoint};

use super::{retry_until_ready, BarCallError, BAR_PREFIX, MAX_BODY};

/// The gRPC service name.
pub const SERVICE_NAME: &str = "nocturne.bench.Bar";
/// The path of `Bar/Call`.
pub const CALL_PATH: &str = "/nocturne.bench.Bar/Call";
/// Largest message either side decodes or encodes (bar's answer is the
/// input plus its prefix).
const MAX_MESSAGE: usize = MAX_BODY + 1024;

/// `CallRequest { bytes input = 1; }`
#[derive(Clone, PartialEq, prost::Message)]
pub struct CallRequest {
    /// foo's input.
    #[prost(bytes = "bytes", tag = "1")]
    pub input: Bytes,
}

/// `CallReply { bytes output = 1; }`
#[derive(Clone, PartialEq, prost::Message)]
pub struct CallReply {
    /// bar's answer.
    #[prost(bytes = "bytes", tag = "1")]
    pub output: Bytes,
}

/// bar's answer to `input`.
pub fn bar_answer(input: &[u8]) -> Bytes {
    let mut out = Vec::with_capacity(BAR_PREFIX.len() + input.len());
    out.extend_from_slice(BAR_PREFIX);
    out.extend_from_slice(input);
    Bytes::from(out)
}

/// foo's side: a client of `Bar` over a tonic channel (clones share the
/// channel's one HTTP/2 connection, as generated clients do).
#[derive(Clone)]
pub struct BarClient {
    inner: tonic::client::Grpc<Channel>,
}

impl BarClient {
    /// Connects to bar at `addr` (`TCP_NODELAY`), retrying until it
    /// accepts or `wait` has passed.
    pub async fn connect(addr: SocketAddr, wait: Duration) -> Result<Self, BarCallError> {
        let endpoint = Endpoint::from_shared(format!("http://{addr}"))
            .expect("a socket address makes a valid URI")
            .tcp_nodelay(true)
            .connect_timeout(wait);
        retry_until_ready(addr, wait, || async {
            let channel = endpoint.connect().await.map_err(|e| e.to_string())?;
            Ok(Self::new(channel))
        })
        .await
    }

    /// A client over an existing channel.
    pub fn new(channel: Channel) -> Self {
        Self {
            inner: tonic::client::Grpc::new(channel)
                .max_decoding_message_size(MAX_MESSAGE)
                .max_encoding_message_size(MAX_MESSAGE),
        }
    }

    /// `Bar/Call` with `input`; bar's `output`.
    pub async fn call(&mut self, input: Bytes) -> Result<Bytes, tonic::Status> {
        self.inner
            .ready()
            .await
            .map_err(|e| tonic::Status::unavailable(format!("bar's channel is not ready: {e}")))?;
        let codec = tonic_prost::ProstCodec::<CallRequest, CallReply>::default();
        let path = http::uri::PathAndQuery::from_static(CALL_PATH);
        let reply = self
            .inner
            .unary(tonic::Request::new(CallRequest { input }), path, codec)
            .await?;
        Ok(reply.into_inner().output)
    }
}

/// bar's side: the `Bar` service as a tower service, as `tonic-build`
/// generates it (unknown methods answer gRPC status `UNIMPLEMENTED`).
#[derive(Clone, Copy, Debug, Default)]
pub struct BarServer;

/// The `Bar/Call` handler.
struct CallHandler;

impl tonic::server::UnaryService<CallRequest> for CallHandler {
    type Response = CallReply;
    type Future = BoxFuture<tonic::Response<CallReply>, tonic::Status>;

    fn call(&mut self, request: tonic::Request<CallRequest>) -> Self::Future {
        let output = bar_answer(&request.get_ref().input);
        Box::pin(async move { Ok(tonic::Response::new(CallReply { output })) })
    }
}

impl<B> Service<http::Request<B>> for BarServer
where
    B: Body + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        if request.uri().path() == CALL_PATH {
            return Box::pin(async move {
                let codec = tonic_prost::ProstCodec::<CallReply, CallRequest>::default();
                let mut grpc = tonic::server::Grpc::new(codec)
                    .apply_max_message_size_config(Some(MAX_MESSAGE), Some(MAX_MESSAGE));
                Ok(grpc.unary(CallHandler, request).await)
            });
        }
        Box::pin(async move {
            Ok(tonic::Status::unimplemented(format!(
                "{SERVICE_NAME} has no method {}",
                request.uri().path()
            ))
            .into_http())
        })
    }
}

impl tonic::server::NamedService for BarServer {
    const NAME: &'static str = SERVICE_NAME;
}

/// Serves [`BarServer`] on `listener` (every accepted socket `TCP_NODELAY`)
/// until the process ends.
pub async fn serve_bar(listener: tokio::net::TcpListener) -> anyhow::Result<()> {
    let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
    tonic::transport::Server::builder()
        .serve_with_incoming(BarServer, incoming)
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message as _;

    #[test]
    fn messages_use_the_proto_wire_format() {
        // Field 1, wire type 2 (length-delimited), length 5, "hello".
        let wire = [0x0a, 5, b'h', b'e', b'l', b'l', b'o'];
        let request = CallRequest::decode(&wire[..]).unwrap();
        assert_eq!(request.input, Bytes::from_static(b"hello"));
        assert_eq!(request.encode_to_vec(), wire);
        // The empty message is zero bytes; truncated input is an error.
        assert_eq!(CallReply::default().encode_to_vec(), Vec::<u8>::new());
        assert!(CallRequest::decode(&wire[..4]).is_err());
        assert_eq!(&bar_answer(b"X")[..], b"From function Bar: X");
    }

    #[test]
    fn bar_answers_over_grpc_and_refuses_unknown_methods() {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let listener = super::super::bind_listener("127.0.0.1:0".parse().unwrap()).unwrap();
            let addr = listener.local_addr().unwrap();
            tokio::spawn(serve_bar(listener));
            let mut client = BarClient::connect(addr, Duration::from_secs(20))
                .await
                .unwrap();
            let out = client.call(Bytes::from_static(b"X")).await.unwrap();
            assert_eq!(&out[..], b"From function Bar: X");
            // Oversize input fails that call (tonic resets the stream),
            // and only that call: the channel carries on.
            let err = client
                .call(Bytes::from(vec![0u8; MAX_MESSAGE + 1]))
                .await
                .unwrap_err();
            assert_ne!(err.code(), tonic::Code::Ok, "{err}");
            let out = client.call(Bytes::from_static(b"again")).await.unwrap();
            assert_eq!(&out[..], b"From function Bar: again");

            let mut raw = tonic::client::Grpc::new(
                Endpoint::from_shared(format!("http://{addr}"))
                    .unwrap()
                    .connect()
                    .await
                    .unwrap(),
            );
            raw.ready().await.unwrap();
            let err = raw
                .unary::<CallRequest, CallReply, _>(
                    tonic::Request::new(CallRequest::default()),
                    http::uri::PathAndQuery::from_static("/nocturne.bench.Bar/Nope"),
                    tonic_prost::ProstCodec::default(),
                )
                .await
                .unwrap_err();
            assert_eq!(err.code(), tonic::Code::Unimplemented, "{err}");
        });
    }

    #[test]
    fn connecting_to_nothing_gives_up() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let err = rt
            .block_on(BarClient::connect(addr, Duration::from_millis(200)))
            .err()
            .unwrap();
        assert!(matches!(err, BarCallError::NotReady { .. }), "{err}");
    }
}
