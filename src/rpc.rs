//! Where domain errors become gRPC statuses — the one mapping — and where a
//! request's caller is established from its verified certificate.

use tonic::codegen::http;
use tonic::{Code, Request, Status};

use crate::identity::{IdentityError, Role, SpiffeId};
use crate::model::{OrgId, ValidationError};
use crate::net::PeerInfo;
use crate::refusal::RefusalKind;
use crate::store::StoreError;

/// Message of the `Unavailable` status a stream ends with when its node
/// shuts down, so partners can tell an orderly stop from a failure.
pub const SHUTTING_DOWN: &str = "node is shutting down";

/// Errors a service returns; converted to [`Status`] only here.
#[derive(Debug, thiserror::Error)]
pub enum RpcError {
    /// No verified identity on the connection.
    #[error("no verified client certificate on this connection")]
    Unauthenticated,
    /// The connection's client certificate is refused (revoked, its
    /// partner suspended, a stale CRL, ...); says why.
    #[error("client certificate refused: {0}")]
    CertificateRefused(IdentityError),
    /// The calling partner may not receive anything now; says why.
    #[error("{0}")]
    PartnerRefused(String),
    /// The caller's role or org may not call this RPC.
    #[error("{caller} may not call {rpc}: {needed}")]
    Forbidden {
        /// Who called.
        caller: SpiffeId,
        /// Which RPC.
        rpc: &'static str,
        /// Who may.
        needed: String,
    },
    /// A request field is invalid.
    #[error("{0}")]
    Invalid(#[from] ValidationError),
    /// A required part of the request is missing.
    #[error("{0}: is required")]
    Missing(&'static str),
    /// A request field is invalid (names the field).
    #[error("{0}")]
    BadRequest(String),
    /// The referenced thing does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The node cannot do this in its present set-up or state (says why).
    #[error("{0}")]
    Precondition(String),
    /// A cursor or position outside what this node holds.
    #[error("{0}")]
    OutOfRange(String),
    /// The caller is over one of its limits (the setting is named).
    #[error("{detail} ({setting}); retry later")]
    OverLimit {
        /// The setting that bounds it.
        setting: &'static str,
        /// What was exceeded.
        detail: String,
    },
    /// The caller's deadline passed before the work was done.
    #[error("{0}")]
    DeadlineExceeded(String),
    /// The node is shutting down.
    #[error("{SHUTTING_DOWN}")]
    ShuttingDown,
    /// Storage failed; details go to the node log, not to the caller.
    #[error("{0}")]
    Store(#[from] StoreError),
}

impl From<RpcError> for Status {
    fn from(e: RpcError) -> Status {
        match &e {
            RpcError::Unauthenticated | RpcError::CertificateRefused(_) => {
                Status::unauthenticated(e.to_string())
            }
            RpcError::Forbidden { .. } | RpcError::PartnerRefused(_) => {
                Status::permission_denied(e.to_string())
            }
            RpcError::Invalid(_)
            | RpcError::Missing(_)
            | RpcError::BadRequest(_)
            | RpcError::Store(StoreError::KeyReused { .. }) => {
                Status::invalid_argument(e.to_string())
            }
            RpcError::NotFound(_) | RpcError::Store(StoreError::NotFound(_)) => {
                Status::not_found(e.to_string())
            }
            RpcError::Precondition(_) | RpcError::Store(StoreError::Conflict(_)) => {
                Status::failed_precondition(e.to_string())
            }
            RpcError::OutOfRange(_) => Status::out_of_range(e.to_string()),
            RpcError::OverLimit { .. } => Status::resource_exhausted(e.to_string()),
            RpcError::ShuttingDown => Status::unavailable(e.to_string()),
            RpcError::DeadlineExceeded(_) => Status::deadline_exceeded(e.to_string()),
            // A version number taken between reading the latest version and
            // writing the next: another update won the race.
            RpcError::Store(StoreError::Duplicate { .. }) => {
                Status::aborted(format!("{e} (updated concurrently); retry"))
            }
            RpcError::Store(StoreError::DiskFull(_)) => {
                tracing::error!(error = %e, "the store's disk is full");
                Status::resource_exhausted(
                    "the serving node's disk is full; nothing was stored, retry later",
                )
            }
            RpcError::Store(StoreError::WriterStopped) => Status::unavailable(SHUTTING_DOWN),
            RpcError::Store(inner) => {
                tracing::error!(error = %inner, "storage failure while serving a request");
                Status::internal("storage failure on the serving node; see its log")
            }
        }
    }
}

/// The gRPC code a refusal of a partner's envelope maps to: authenticity
/// failures are `Unauthenticated`, a key we do not know yet, a rollback or a
/// version too far ahead are `FailedPrecondition` (fixable by the origin or
/// by registering its card), malformed content is `InvalidArgument`, an
/// ingress rule is `PermissionDenied`.
pub fn refusal_code(kind: RefusalKind) -> Code {
    match kind {
        RefusalKind::Unauthentic => Code::Unauthenticated,
        RefusalKind::UnknownKey
        | RefusalKind::Rollback
        | RefusalKind::TooFarAhead
        | RefusalKind::ConflictingVersion
        | RefusalKind::AheadOfClock => Code::FailedPrecondition,
        RefusalKind::Malformed => Code::InvalidArgument,
        RefusalKind::DeniedByRule => Code::PermissionDenied,
        RefusalKind::LimitReached => Code::ResourceExhausted,
    }
}

/// Who may call an RPC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Allowed {
    /// A publisher certificate of our own org.
    OwnPublisher,
    /// An admin certificate of our own org.
    OwnAdmin,
    /// The node certificate of a registered partner org (its certificate
    /// chained to that partner's CA, or the handshake would have failed).
    PartnerNode,
    /// Any verified caller.
    Anyone,
}

/// Returns the verified caller if it may call `rpc`.
pub fn authorize<T>(
    req: &Request<T>,
    own: &OrgId,
    allowed: Allowed,
    rpc: &'static str,
) -> Result<SpiffeId, RpcError> {
    let id = match req.extensions().get::<PeerInfo>().map(|p| &p.identity) {
        Some(Ok(id)) => id.clone(),
        _ => return Err(RpcError::Unauthenticated),
    };
    let own_org = &id.org == own;
    let ok = match allowed {
        Allowed::OwnPublisher => own_org && matches!(id.role, Role::Publisher(_)),
        Allowed::OwnAdmin => own_org && matches!(id.role, Role::Admin(_)),
        Allowed::PartnerNode => !own_org && id.role == Role::Node,
        Allowed::Anyone => true,
    };
    if !ok {
        let needed = match allowed {
            Allowed::OwnPublisher => format!("only spiffe://{own}/publisher/<name> certificates"),
            Allowed::OwnAdmin => format!("only spiffe://{own}/admin/<name> certificates"),
            Allowed::PartnerNode => {
                "only partner node certificates (spiffe://<partner>/node)".into()
            }
            Allowed::Anyone => String::new(),
        };
        return Err(RpcError::Forbidden {
            caller: id,
            rpc,
            needed,
        });
    }
    Ok(id)
}

/// Answers a request larger than `limits.max_message_bytes` with
/// `RESOURCE_EXHAUSTED`, the code gRPC gives a message over the receiver's
/// limit (tonic's decoder answers `OUT_OF_RANGE`), naming the setting.
#[derive(Debug, Clone, Copy)]
pub struct OversizeLayer {
    /// The node's `limits.max_message_bytes`.
    pub limit: usize,
}

impl<S> tower::Layer<S> for OversizeLayer {
    type Service = Oversize<S>;

    fn layer(&self, inner: S) -> Oversize<S> {
        Oversize {
            inner,
            limit: self.limit,
        }
    }
}

/// See [`OversizeLayer`].
#[derive(Debug, Clone)]
pub struct Oversize<S> {
    inner: S,
    limit: usize,
}

type BoxFuture<T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send>>;

impl<S, B, R> tower::Service<http::Request<B>> for Oversize<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<R>>,
    S::Future: Send + 'static,
{
    type Response = http::Response<R>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let limit = self.limit;
        let answer = self.inner.call(req);
        Box::pin(async move {
            let mut resp = answer.await?;
            let headers = resp.headers_mut();
            let too_large = headers.get("grpc-status").map(|v| v.as_bytes()) == Some(b"11")
                && headers.get("grpc-message").is_some_and(|m| {
                    String::from_utf8_lossy(m.as_bytes())
                        .replace("%20", " ")
                        .contains("message length too large")
                });
            if too_large {
                let message = format!(
                    "the request is larger than this node accepts (limits.max_message_bytes = {limit} bytes)"
                );
                if let Ok(value) = http::HeaderValue::from_str(&message) {
                    headers.insert("grpc-status", http::HeaderValue::from_static("8"));
                    headers.insert("grpc-message", value);
                }
            }
            Ok(resp)
        })
    }
}

/// When the caller stops waiting: its `grpc-timeout`, from when the request
/// arrived. Put in each request's extensions by [`DeadlineLayer`].
#[derive(Debug, Clone, Copy)]
pub struct Deadline(pub tokio::time::Instant);

impl Deadline {
    /// The deadline of a request, if its caller set one.
    pub fn of<T>(req: &Request<T>) -> Option<Self> {
        req.extensions().get::<Deadline>().copied()
    }

    /// Whether it has passed.
    pub fn passed(&self) -> bool {
        tokio::time::Instant::now() >= self.0
    }
}

/// The `grpc-timeout` header's duration: up to 8 digits and a unit (H, M,
/// S, m, u, n), as the gRPC HTTP/2 protocol defines it.
pub fn parse_grpc_timeout(value: &str) -> Option<std::time::Duration> {
    use std::time::Duration;
    let (digits, unit) = value.split_at(value.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.saturating_mul(3600)),
        "M" => Duration::from_secs(n.saturating_mul(60)),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// Honours the caller's deadline (`grpc-timeout`): the handler sees it as
/// a [`Deadline`] (to stop before committing what nobody waits for), and a
/// call still running when it passes is answered `DEADLINE_EXCEEDED`, the
/// code gRPC defines for it (tonic's own timer would say `CANCELLED`, as if
/// the caller had cancelled; ours is armed first, so it answers first).
/// Each call answered that way is counted in `passed`, each one whose
/// caller went away (cancelled, disconnected) before it was answered in
/// `abandoned` — both only once the call is dropped, so whatever it waited
/// for (a publish queued for the store) has been given up by then.
#[derive(Debug, Clone, Default)]
pub struct DeadlineLayer {
    /// Calls whose deadline passed before they were answered.
    pub passed: prometheus_client::metrics::counter::Counter,
    /// Calls whose caller went away before they were answered.
    pub abandoned: prometheus_client::metrics::counter::Counter,
}

impl<S> tower::Layer<S> for DeadlineLayer {
    type Service = Deadlines<S>;

    fn layer(&self, inner: S) -> Deadlines<S> {
        Deadlines {
            inner,
            passed: self.passed.clone(),
            abandoned: self.abandoned.clone(),
        }
    }
}

/// See [`DeadlineLayer`].
#[derive(Debug, Clone)]
pub struct Deadlines<S> {
    inner: S,
    passed: prometheus_client::metrics::counter::Counter,
    abandoned: prometheus_client::metrics::counter::Counter,
}

/// A call in progress that counts in `abandoned` if it is dropped
/// unfinished, after the call itself is dropped.
struct Watched<F> {
    call: Option<std::pin::Pin<Box<F>>>,
    abandoned: Option<prometheus_client::metrics::counter::Counter>,
}

impl<F: std::future::Future> std::future::Future for Watched<F> {
    type Output = F::Output;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<F::Output> {
        let Some(call) = self.call.as_mut() else {
            return std::task::Poll::Pending;
        };
        let out = call.as_mut().poll(cx);
        if out.is_ready() {
            self.call = None;
        }
        out
    }
}

impl<F> Drop for Watched<F> {
    fn drop(&mut self) {
        if self.call.take().is_some()
            && let Some(c) = self.abandoned.take()
        {
            c.inc();
        }
    }
}

impl<S, B, R> tower::Service<http::Request<B>> for Deadlines<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<R>>,
    S::Future: Send + 'static,
    R: tonic::codegen::Body<Data = tonic::codegen::Bytes> + Send + 'static,
    R::Error: Into<tonic::codegen::StdError>,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        let timeout = req
            .headers()
            .get("grpc-timeout")
            .and_then(|v| v.to_str().ok())
            .and_then(parse_grpc_timeout);
        let deadline = timeout.map(|t| tokio::time::Instant::now() + t);
        if let Some(d) = deadline {
            req.extensions_mut().insert(Deadline(d));
        }
        let mut answer = Watched {
            call: Some(Box::pin(self.inner.call(req))),
            abandoned: Some(self.abandoned.clone()),
        };
        let passed = self.passed.clone();
        let (Some(deadline), Some(timeout)) = (deadline, timeout) else {
            return Box::pin(async move { Ok(answer.await?.map(tonic::body::Body::new)) });
        };
        Box::pin(async move {
            match tokio::time::timeout_at(deadline, &mut answer).await {
                Ok(resp) => Ok(resp?.map(tonic::body::Body::new)),
                Err(_) => {
                    // The handler (and whatever it waited for) is dropped
                    // here: a publish waiting for the store is not stored.
                    answer.abandoned = None;
                    drop(answer);
                    passed.inc();
                    Ok(Status::deadline_exceeded(format!(
                        "the caller's deadline ({} ms, grpc-timeout) passed before this node answered",
                        timeout.as_millis()
                    ))
                    .into_http())
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tower::{Layer, Service, ServiceExt};

    #[test]
    fn grpc_timeouts_parse_as_the_protocol_defines_them() {
        use std::time::Duration;
        assert_eq!(parse_grpc_timeout("300m"), Some(Duration::from_millis(300)));
        assert_eq!(parse_grpc_timeout("2S"), Some(Duration::from_secs(2)));
        assert_eq!(parse_grpc_timeout("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(
            parse_grpc_timeout("99999999n"),
            Some(Duration::from_nanos(99_999_999))
        );
        for bad in ["", "m", "123456789m", "10x", "-1S", "1.5S"] {
            assert_eq!(parse_grpc_timeout(bad), None, "{bad}");
        }
    }

    /// A call still running at the caller's deadline is answered
    /// DEADLINE_EXCEEDED on the wire, and the handler saw the deadline; a
    /// call without one runs to its end.
    #[tokio::test(start_paused = true)]
    async fn a_call_past_its_grpc_timeout_is_answered_deadline_exceeded() {
        let seen = std::sync::Arc::new(std::sync::Mutex::new(None));
        let saw = seen.clone();
        let slow = tower::service_fn(move |req: http::Request<()>| {
            *saw.lock().unwrap() = req.extensions().get::<Deadline>().copied();
            async move {
                tokio::time::sleep(std::time::Duration::from_secs(60)).await;
                Ok::<_, std::convert::Infallible>(http::Response::new(tonic::body::Body::empty()))
            }
        });
        let layer = DeadlineLayer::default();
        let mut svc = layer.layer(slow);
        let req = http::Request::builder()
            .header("grpc-timeout", "250m")
            .body(())
            .unwrap();
        let start = tokio::time::Instant::now();
        let resp = svc.ready().await.unwrap().call(req).await.unwrap();
        assert_eq!(resp.headers()["grpc-status"], "4");
        assert_eq!(start.elapsed(), std::time::Duration::from_millis(250));
        let deadline = seen.lock().unwrap().expect("the handler saw the deadline");
        assert_eq!(deadline.0, start + std::time::Duration::from_millis(250));
        assert_eq!(layer.passed.get(), 1);

        let plain = http::Request::builder().body(()).unwrap();
        let resp = svc.ready().await.unwrap().call(plain).await.unwrap();
        assert!(resp.headers().get("grpc-status").is_none());
        assert!(seen.lock().unwrap().is_none());
    }
}
