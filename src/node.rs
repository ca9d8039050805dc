//! One running node: opens its [`NodeContext`] (which loads and checks
//! everything before binding), serves Exchange, Admin and gRPC health over
//! mutual TLS on a listener it is given, runs the partner links, and shuts
//! down cleanly when told to.

use std::future::Future;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::codec::CompressionEncoding;
use tonic::transport::Server;

use crate::admin::AdminService;
use crate::clock::Clock;
use crate::config::Settings;
use crate::exchange::ExchangeService;
use crate::proto::v1::admin_server::AdminServer;
use crate::proto::v1::exchange_server::ExchangeServer;

pub use crate::context::{NodeContext, NodeError, load_signing_key, own_card, own_card_with_keys};

/// A node that has loaded its configuration, keys, certificates and store.
pub struct Node {
    ctx: Arc<NodeContext>,
    /// Where the TAXII server listens, when it does.
    taxii: Option<TcpListener>,
    metrics: Option<TcpListener>,
}

impl Node {
    /// Loads and checks everything `serve` needs, on the system clock.
    /// Nothing is bound yet, so a bad setting fails here with the key named.
    pub async fn open(settings: Settings) -> Result<Self, NodeError> {
        Self::open_with_clock(settings, Clock::system()).await
    }

    /// [`Node::open`] with the clock everything in the node reads (tests run
    /// time-driven behaviour on tokio's paused clock through it).
    pub async fn open_with_clock(settings: Settings, clock: Clock) -> Result<Self, NodeError> {
        let ctx = NodeContext::open(settings, clock, CancellationToken::new()).await?;
        Ok(Self {
            ctx,
            taxii: None,
            metrics: None,
        })
    }

    /// Serves metrics and probes on `listener` too (`metrics.listen`).
    pub fn with_metrics(mut self, listener: TcpListener) -> Self {
        self.metrics = Some(listener);
        self
    }

    /// Serves TAXII 2.1 on `listener` too (`taxii.listen`).
    pub fn with_taxii(mut self, listener: TcpListener) -> Self {
        self.taxii = Some(listener);
        self
    }

    /// The node's shared state (store, org, keys), e.g. for tests and the demo.
    pub fn context(&self) -> Arc<NodeContext> {
        self.ctx.clone()
    }

    /// Serves on `listener` until `shutdown` completes, then closes streams
    /// and links and waits for them.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<(), NodeError> {
        let ctx = self.ctx;
        if let Some(l) = self.metrics {
            ctx.tasks.spawn(crate::metrics::http::serve(ctx.clone(), l));
        }
        if let Some(l) = self.taxii {
            ctx.tasks.spawn(crate::taxii::serve(ctx.clone(), l));
        }
        let addr = listener
            .local_addr()
            .map(|a| a.to_string())
            .unwrap_or_default();
        let incoming = ReceiverStream::new(crate::net::accept_mtls(
            listener,
            crate::net::ServerTls::grpc(ctx.tls.server.clone()),
            ctx.trust(),
            ctx.conns.clone(),
            ctx.clock,
            crate::net::ConnLimits::from_settings(&ctx.settings),
        ));
        let (health, health_service) = tonic_health::server::health_reporter();
        health
            .set_serving::<ExchangeServer<ExchangeService>>()
            .await;
        health.set_serving::<AdminServer<AdminService>>().await;
        // Generic clients (grpcurl, Postman, grpcio's reflection client)
        // discover every service and message from the node itself.
        let reflection = || {
            tonic_reflection::server::Builder::configure()
                .register_encoded_file_descriptor_set(crate::proto::FILE_DESCRIPTOR_SET)
                .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        };
        let reflection_v1 = reflection()
            .build_v1()
            .map_err(|e| NodeError::Setup(format!("gRPC reflection: {e}")))?;
        let reflection_v1alpha = reflection()
            .build_v1alpha()
            .map_err(|e| NodeError::Setup(format!("gRPC reflection: {e}")))?;
        for name in [
            "grpc.reflection.v1.ServerReflection",
            "grpc.reflection.v1alpha.ServerReflection",
        ] {
            health
                .set_service_status(name, tonic_health::ServingStatus::Serving)
                .await;
        }
        ctx.tasks.spawn(crate::federation::supervise(ctx.clone()));
        ctx.tasks
            .spawn(crate::statistics::count_in_background(ctx.clone()));
        tracing::info!(org = %ctx.own, %addr, "node serving");
        let stop = ctx.shutdown.clone();
        let signal = async move {
            shutdown.await;
            tracing::info!("shutting down");
            stop.cancel();
        };
        let limits = &ctx.settings.limits;
        let max_message = limits.max_message_bytes;
        let keepalive = crate::net::Keepalive::from_settings(&ctx.settings.node);
        let served = Server::builder()
            // A partner or client that stops answering PINGs is dropped,
            // and its streams and slots with it.
            .http2_keepalive_interval(Some(keepalive.interval))
            .http2_keepalive_timeout(Some(keepalive.timeout))
            .max_concurrent_streams(limits.max_concurrent_streams)
            .http2_max_header_list_size(limits.max_header_list_bytes)
            .http2_max_pending_accept_reset_streams(Some(limits.max_pending_reset_streams))
            // Deny by default: no request reaches any service, health
            // included, without a verified identity.
            .layer(crate::rpc::DeadlineLayer {
                passed: ctx.metrics.deadline_exceeded.clone(),
                abandoned: ctx.metrics.abandoned.clone(),
            })
            .layer(crate::rpc::OversizeLayer { limit: max_message })
            .layer(tonic::service::InterceptorLayer::new(
                crate::net::request_gate(ctx.trust(), ctx.clock),
            ))
            .add_service(health_service)
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha)
            // gzip accepted from any client, and used towards those that
            // ask for it (grpc-accept-encoding).
            .add_service(
                ExchangeServer::new(ExchangeService::new(ctx.clone()))
                    .max_decoding_message_size(max_message)
                    .max_encoding_message_size(max_message)
                    .accept_compressed(CompressionEncoding::Gzip)
                    .send_compressed(CompressionEncoding::Gzip),
            )
            .add_service(
                AdminServer::new(AdminService::new(ctx.clone()))
                    .max_decoding_message_size(max_message)
                    .max_encoding_message_size(max_message)
                    .accept_compressed(CompressionEncoding::Gzip)
                    .send_compressed(CompressionEncoding::Gzip),
            )
            .serve_with_incoming_shutdown(incoming, signal)
            .await;
        // Links, streams and their writers end on the cancelled token; the
        // store closes only after every one of them has finished.
        ctx.shutdown.cancel();
        ctx.tasks.close();
        ctx.tasks.wait().await;
        ctx.store.close().await;
        tracing::info!(org = %ctx.own, "node stopped");
        Ok(served?)
    }
}
