//! A TAXII 2.1 server on its own port, over HTTPS with the node's
//! mutual-TLS identities (the same acceptor and client verification as
//! gRPC). One API root (`/api/`) with one collection, the indicators we
//! hold: a partner node reads exactly its policy view — every object passes
//! the one egress gate, and what it is given is on the ledger before it is
//! answered, as for its Subscribe stream; our own admins and publishers
//! read everything; our publishers may POST objects, published through the
//! normal publish path. Pages are cut by sequence number (`next`), so a
//! page costs the same however far into the collection it is.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use axum::extract::{DefaultBodyLimit, Extension, Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Router, body::Bytes};
use serde::Serialize;
use serde_json::{Value, json};
use tokio::net::TcpListener;

use crate::context::NodeContext;
use crate::exchange::{Release, decoded, publish_draft, publish_key, release};
use crate::identity::{Role, SpiffeId};
use crate::interop::stix;
use crate::model::OrgId;
use crate::net::PeerInfo;
use crate::proto::v1::{Envelope, Indicator};
use crate::store::{StoredIndicator, Versions};

pub mod client;

/// The TAXII media type, version 2.1.
pub const TAXII_TYPE: &str = "application/taxii+json;version=2.1";
/// The STIX media type of the objects served.
pub const STIX_TYPE: &str = "application/stix+json;version=2.1";
/// Status resources of POSTs kept for their callers to read back.
const STATUSES_KEPT: usize = 1000;

/// The shared state of the TAXII routes.
pub struct Taxii {
    ctx: Arc<NodeContext>,
    /// Recent status resources: (id, owner, resource).
    statuses: Mutex<VecDeque<(String, String, Value)>>,
}

/// The collection id: a name-based UUID of our org, stable across restarts.
pub fn collection_id(own: &OrgId) -> String {
    let ns = uuid::Uuid::new_v5(
        &uuid::Uuid::NAMESPACE_URL,
        b"https://threatmesh/taxii/collection",
    );
    uuid::Uuid::new_v5(&ns, own.as_str().as_bytes()).to_string()
}

/// Who is asking.
#[derive(Debug, Clone)]
enum Reader {
    /// One of our admins or publishers: everything we hold.
    Own { id: SpiffeId, publisher: bool },
    /// A partner node: its policy view.
    Partner(OrgId),
}

/// A TAXII error message resource with its HTTP status.
#[derive(Debug)]
pub struct TaxiiError {
    status: StatusCode,
    title: String,
    description: String,
}

fn error(status: StatusCode, title: &str, description: impl Into<String>) -> TaxiiError {
    TaxiiError {
        status,
        title: title.into(),
        description: description.into(),
    }
}

impl IntoResponse for TaxiiError {
    fn into_response(self) -> Response {
        let body = json!({
            "title": self.title,
            "description": self.description,
            "http_status": self.status.as_u16().to_string(),
        });
        taxii_json(self.status, &body, HeaderMap::new())
    }
}

impl From<crate::store::StoreError> for TaxiiError {
    fn from(e: crate::store::StoreError) -> Self {
        tracing::error!(error = %e, "storage failure while serving TAXII");
        error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "Storage failure",
            "storage failure on the serving node; see its log",
        )
    }
}

fn taxii_json(status: StatusCode, body: &impl Serialize, mut headers: HeaderMap) -> Response {
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(TAXII_TYPE));
    match serde_json::to_vec(body) {
        Ok(bytes) => (status, headers, bytes).into_response(),
        Err(e) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "Rendering failed",
            format!("the answer could not be rendered as JSON: {e}"),
        )
        .into_response(),
    }
}

type Answer = Result<Response, TaxiiError>;

/// The routes, over `ctx`.
pub fn router(ctx: Arc<NodeContext>) -> Router {
    let limit = usize::try_from(ctx.settings.taxii.max_content_length).unwrap_or(usize::MAX);
    let state = Arc::new(Taxii {
        ctx,
        statuses: Mutex::new(VecDeque::new()),
    });
    Router::new()
        .route("/taxii2/", get(discovery))
        .route("/api/", get(api_root))
        .route("/api/collections/", get(collections))
        .route("/api/collections/{cid}/", get(collection))
        .route(
            "/api/collections/{cid}/objects/",
            get(objects).post(add_objects),
        )
        .route("/api/collections/{cid}/objects/{oid}/", get(object))
        .route(
            "/api/collections/{cid}/objects/{oid}/versions/",
            get(versions),
        )
        .route("/api/collections/{cid}/manifest/", get(manifest))
        .route("/api/status/{sid}/", get(status))
        .fallback(|| async {
            error(
                StatusCode::NOT_FOUND,
                "Not found",
                "no such TAXII resource (discovery is /taxii2/, the API root /api/)",
            )
        })
        .layer(DefaultBodyLimit::max(limit))
        .with_state(state)
}

/// Serves TAXII on `listener` until the node shuts down.
pub async fn serve(ctx: Arc<NodeContext>, listener: TcpListener) {
    use hyper_util::rt::{TokioExecutor, TokioIo};
    use hyper_util::server::conn::auto::Builder;
    use hyper_util::service::TowerToHyperService;
    use tonic::transport::server::Connected;
    let addr = listener
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    let mut incoming = crate::net::accept_mtls(
        listener,
        crate::net::ServerTls::https(ctx.tls.server.clone()),
        ctx.trust(),
        ctx.conns.clone(),
        ctx.clock,
        crate::net::ConnLimits::from_settings(&ctx.settings),
    );
    let routes = router(ctx.clone());
    tracing::info!(org = %ctx.own, %addr, "TAXII 2.1 serving");
    loop {
        let conn = tokio::select! {
            c = incoming.recv() => match c {
                Some(Ok(c)) => c,
                Some(Err(_)) => continue,
                None => return,
            },
            _ = ctx.shutdown.cancelled() => return,
        };
        let info = conn.connect_info();
        let service = TowerToHyperService::new(routes.clone().layer(Extension(info)));
        let stop = ctx.shutdown.clone();
        ctx.tasks.spawn(async move {
            let builder = Builder::new(TokioExecutor::new());
            let served = builder.serve_connection(TokioIo::new(conn), service);
            tokio::select! {
                r = served => if let Err(e) = r {
                    tracing::debug!(error = %e, "TAXII connection ended");
                },
                _ = stop.cancelled() => {}
            }
        });
    }
}

/// The caller, from its verified certificate (checked again for
/// revocation, as every gRPC request is), and its request counted against
/// a partner's rate.
fn reader(t: &Taxii, peer: &PeerInfo) -> Result<Reader, TaxiiError> {
    let ctx = &t.ctx;
    if let Some(why) = &peer.over_limit {
        return Err(error(
            StatusCode::TOO_MANY_REQUESTS,
            "Over limit",
            why.clone(),
        ));
    }
    let id = match &peer.identity {
        Ok(id) => id.clone(),
        Err(e) => {
            return Err(error(
                StatusCode::UNAUTHORIZED,
                "Unauthenticated",
                e.to_string(),
            ));
        }
    };
    ctx.trust()
        .current()
        .check_revocation(&id, &peer.serial, ctx.clock.now_ms())
        .map_err(|e| {
            error(
                StatusCode::UNAUTHORIZED,
                "Certificate refused",
                e.to_string(),
            )
        })?;
    if id.org == ctx.own {
        return match id.role {
            Role::Admin(_) => Ok(Reader::Own {
                id,
                publisher: false,
            }),
            Role::Publisher(_) => Ok(Reader::Own {
                id,
                publisher: true,
            }),
            Role::Node => Err(error(
                StatusCode::FORBIDDEN,
                "Forbidden",
                format!("{id}: our own node certificate reads nothing over TAXII"),
            )),
        };
    }
    if id.role != Role::Node {
        return Err(error(
            StatusCode::FORBIDDEN,
            "Forbidden",
            format!("{id}: partners read with their node certificate (spiffe://<partner>/node)"),
        ));
    }
    if let Some(why) = ctx.partner_refused(&id.org) {
        return Err(error(StatusCode::FORBIDDEN, "Forbidden", why));
    }
    if let Err(hit) = ctx.quota.request(&id.org, ctx.clock.now_ms()) {
        return Err(error(
            StatusCode::TOO_MANY_REQUESTS,
            "Over limit",
            format!("{} ({}); retry later", hit.detail, hit.setting),
        ));
    }
    Ok(Reader::Partner(id.org))
}

/// Refuses a request whose Accept header leaves out TAXII 2.1.
fn accepts_taxii(headers: &HeaderMap) -> Result<(), TaxiiError> {
    let Some(accept) = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()) else {
        return Ok(());
    };
    let ok = accept.split(',').any(|a| {
        let a = a.trim().to_ascii_lowercase().replace(' ', "");
        a.starts_with("*/*")
            || a.starts_with("application/*")
            || a.starts_with("application/taxii+json;version=2.1")
            || a == "application/taxii+json"
            || a.starts_with("application/taxii+json;q=")
    });
    if ok {
        Ok(())
    } else {
        Err(error(
            StatusCode::NOT_ACCEPTABLE,
            "Not acceptable",
            format!("this server answers {TAXII_TYPE}, not {accept}"),
        ))
    }
}

fn base_url(headers: &HeaderMap) -> String {
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("localhost");
    format!("https://{host}")
}

async fn discovery(
    State(t): State<Arc<Taxii>>,
    Extension(peer): Extension<PeerInfo>,
    headers: HeaderMap,
) -> Answer {
    accepts_taxii(&headers)?;
    reader(&t, &peer)?;
    let root = format!("{}/api/", base_url(&headers));
    Ok(taxii_json(
        StatusCode::OK,
        &json!({
            "title": format!("ThreatMesh node of {}", t.ctx.own),
            "description": "Indicators signed by their origin; each partner reads its policy view.",
            "default": root,
            "api_roots": [root],
        }),
        HeaderMap::new(),
    ))
}

async fn api_root(
    State(t): State<Arc<Taxii>>,
    Extension(peer): Extension<PeerInfo>,
    headers: HeaderMap,
) -> Answer {
    accepts_taxii(&headers)?;
    reader(&t, &peer)?;
    Ok(taxii_json(
        StatusCode::OK,
        &json!({
            "title": format!("{} indicators", t.ctx.own),
            "versions": [TAXII_TYPE],
            "max_content_length": t.ctx.settings.taxii.max_content_length,
        }),
        HeaderMap::new(),
    ))
}

fn collection_resource(t: &Taxii, r: &Reader) -> Value {
    json!({
        "id": collection_id(&t.ctx.own),
        "title": format!("Indicators held by {}", t.ctx.own),
        "description": match r {
            Reader::Partner(p) => format!("What {}'s sharing policy releases to {p}", t.ctx.own),
            Reader::Own { .. } => "Every indicator this node holds".to_string(),
        },
        "can_read": true,
        "can_write": matches!(r, Reader::Own { publisher: true, .. }),
        "media_types": [STIX_TYPE],
    })
}

async fn collections(
    State(t): State<Arc<Taxii>>,
    Extension(peer): Extension<PeerInfo>,
    headers: HeaderMap,
) -> Answer {
    accepts_taxii(&headers)?;
    let r = reader(&t, &peer)?;
    Ok(taxii_json(
        StatusCode::OK,
        &json!({"collections": [collection_resource(&t, &r)]}),
        HeaderMap::new(),
    ))
}

fn check_collection(t: &Taxii, cid: &str) -> Result<(), TaxiiError> {
    if cid == collection_id(&t.ctx.own) {
        Ok(())
    } else {
        Err(error(
            StatusCode::NOT_FOUND,
            "Unknown collection",
            format!("collection {cid} does not exist here (see /api/collections/)"),
        ))
    }
}

async fn collection(
    State(t): State<Arc<Taxii>>,
    Extension(peer): Extension<PeerInfo>,
    Path(cid): Path<String>,
    headers: HeaderMap,
) -> Answer {
    accepts_taxii(&headers)?;
    let r = reader(&t, &peer)?;
    check_collection(&t, &cid)?;
    Ok(taxii_json(
        StatusCode::OK,
        &collection_resource(&t, &r),
        HeaderMap::new(),
    ))
}

/// What `match[version]` asks for.
#[derive(Debug, Clone)]
enum VersionMatch {
    Select(Versions),
    /// Specific `modified` times, Unix ms.
    At(Vec<i64>),
}

/// A request's filters and position.
#[derive(Debug, Clone)]
struct Filter {
    after_seq: u64,
    since_ms: i64,
    limit: u32,
    ids: Option<Vec<String>>,
    types_ok: bool,
    version: VersionMatch,
}

fn bad(description: impl Into<String>) -> TaxiiError {
    error(StatusCode::BAD_REQUEST, "Bad request", description)
}

fn filter(
    t: &Taxii,
    q: &HashMap<String, String>,
    default_version: Versions,
) -> Result<Filter, TaxiiError> {
    let max = t.ctx.settings.taxii.max_page_objects;
    let limit = match q.get("limit") {
        None => max,
        Some(l) => l
            .parse::<u32>()
            .ok()
            .filter(|l| *l > 0)
            .ok_or_else(|| bad(format!("limit: '{l}' is not a positive whole number")))?
            .min(max),
    };
    let after_seq = match q.get("next") {
        None => 0,
        Some(n) => u64::from_str_radix(n, 16)
            .map_err(|_| bad(format!("next: '{n}' is not a token this server gave")))?,
    };
    let since_ms = match q.get("added_after") {
        None => 0,
        Some(a) => stix::parse_timestamp(a)
            .map_err(|e| bad(format!("added_after: {e}")))?
            .saturating_add(1),
    };
    let ids = q.get("match[id]").map(|list| {
        list.split(',')
            .map(|i| {
                i.trim()
                    .strip_prefix("indicator--")
                    .map(str::to_string)
                    .unwrap_or_default()
            })
            .collect()
    });
    let types_ok = q
        .get("match[type]")
        .is_none_or(|ts| ts.split(',').any(|t| t.trim() == "indicator"));
    let version = match q.get("match[version]").map(String::as_str) {
        None => VersionMatch::Select(default_version),
        Some(v) => {
            let mut at = Vec::new();
            let mut select = None;
            for part in v.split(',').map(str::trim) {
                match part {
                    "last" => select = Some(Versions::Latest),
                    "first" => select = Some(Versions::Earliest),
                    "all" => select = Some(Versions::All),
                    ts => at.push(
                        stix::parse_timestamp(ts)
                            .map_err(|e| bad(format!("match[version]: {e}")))?,
                    ),
                }
            }
            match (select, at.is_empty()) {
                (Some(s), true) => VersionMatch::Select(s),
                (None, false) => VersionMatch::At(at),
                _ => {
                    return Err(bad(
                        "match[version]: give last, first, all, or modified times, not both",
                    ));
                }
            }
        }
    };
    Ok(Filter {
        after_seq,
        since_ms,
        limit,
        ids,
        types_ok,
        version,
    })
}

/// One object as served, with what the page needs of its row.
struct Served {
    stored_ms: i64,
    indicator: Arc<Indicator>,
    envelope: Option<Envelope>,
}

/// The egress gate for one request: which rows `r` may read, with the
/// decisions collected and made durable (and the indicators sent noted, so
/// revocations reach the partner) before anything is answered.
struct Gate<'a> {
    t: &'a Taxii,
    r: &'a Reader,
    audit: Vec<crate::audit::AuditEntry>,
    sent: Vec<crate::store::Sent>,
}

impl<'a> Gate<'a> {
    fn new(t: &'a Taxii, r: &'a Reader) -> Self {
        Self {
            t,
            r,
            audit: Vec::new(),
            sent: Vec::new(),
        }
    }

    /// The rows of `rows` the reader may have, in order, at most `room`
    /// of them; a partner's pass the egress gate, our own readers' all do.
    /// Also the sequence number of the last row decided (rows after it are
    /// neither decided nor recorded).
    async fn admit(
        &mut self,
        rows: &[&StoredIndicator],
        room: usize,
    ) -> Result<(Vec<Served>, Option<u64>), TaxiiError> {
        let ctx = &self.t.ctx;
        let gate = match self.r {
            Reader::Partner(p) => Some((p, gate_inputs(ctx, p, rows).await?)),
            Reader::Own { .. } => None,
        };
        let mut out = Vec::new();
        let mut last = None;
        for row in rows {
            if out.len() == room {
                break;
            }
            last = Some(row.seq);
            let Ok(ind) = decoded(row) else { continue };
            if let Some((p, (policy, before))) = &gate {
                let previously =
                    before.contains(&(row.origin_org.clone(), row.indicator_id.clone()));
                let now = ctx.clock.now_ms();
                match release(&ctx.own, row, p, policy.as_deref(), previously, now) {
                    Release::Send(_, entry) => {
                        self.audit.push(entry);
                        self.sent.push((
                            row.origin_org.clone(),
                            row.indicator_id.clone(),
                            row.version,
                        ));
                    }
                    Release::Withhold(entry) => {
                        self.audit.push(entry);
                        continue;
                    }
                    Release::Skip => continue,
                }
            }
            out.push(Served {
                stored_ms: row.stored_ms,
                indicator: ind,
                envelope: <Envelope as prost::Message>::decode(&row.envelope[..]).ok(),
            });
        }
        Ok((out, last))
    }

    /// Makes the collected decisions durable on the ledger.
    async fn finish(self) -> Result<(), TaxiiError> {
        if let Reader::Partner(p) = self.r
            && !self.audit.is_empty()
        {
            let store = &self.t.ctx.store;
            let audit = crate::audit::coalesce(self.audit);
            self.t.ctx.metrics.count_releases(&audit);
            let durable = store.enqueue_release(audit, p, self.sent).await?;
            durable
                .await
                .map_err(|_| crate::store::StoreError::WriterStopped)??;
        }
        Ok(())
    }
}

/// One page of what `r` may read: objects in sequence order, whether more
/// may follow, and the position to continue from. Every row passes the
/// [`Gate`], durable before the page is answered.
async fn read_page(
    t: &Taxii,
    r: &Reader,
    f: &Filter,
) -> Result<(Vec<Served>, bool, u64), TaxiiError> {
    if !f.types_ok || f.ids.as_ref().is_some_and(Vec::is_empty) {
        return Ok((Vec::new(), false, f.after_seq));
    }
    let which = match &f.version {
        VersionMatch::Select(v) => *v,
        VersionMatch::At(_) => Versions::All,
    };
    let limit = f.limit as usize;
    let mut gate = Gate::new(t, r);
    let mut cursor = f.after_seq;
    let mut out = Vec::new();
    let batch = f.limit.clamp(100, 1000);
    let more = loop {
        let rows = t
            .ctx
            .store
            .versions_after(which, cursor, f.since_ms, batch)
            .await?;
        let full = rows.len() == batch as usize;
        let wanted: Vec<&StoredIndicator> = rows.iter().filter(|r| matches_filter(r, f)).collect();
        let (got, last) = gate.admit(&wanted, limit - out.len()).await?;
        out.extend(got);
        // A full page ends where it was decided; otherwise this batch was
        // read to its end.
        let more = out.len() == limit;
        cursor = match (more, last, rows.last()) {
            (true, Some(l), _) => l,
            (_, _, Some(end)) => end.seq,
            _ => cursor,
        };
        if more || !full {
            break more;
        }
    };
    gate.finish().await?;
    Ok((out, more, cursor))
}

/// A partner's policy now and which of `rows`' revoked indicators it was
/// sent before (a revocation reaches every past recipient).
async fn gate_inputs(
    ctx: &NodeContext,
    partner: &OrgId,
    rows: &[&StoredIndicator],
) -> Result<
    (
        Option<Arc<crate::policy::PartnerPolicy>>,
        crate::exchange::SentBefore,
    ),
    TaxiiError,
> {
    let view = ctx.view.load_full();
    let policy = view.policies.get(partner).cloned();
    let revoked: Vec<(String, String)> = rows
        .iter()
        .filter(|r| r.revoked)
        .map(|r| (r.origin_org.clone(), r.indicator_id.clone()))
        .collect();
    Ok((policy, ctx.store.sent_before(partner, &revoked).await?))
}

fn matches_filter(row: &StoredIndicator, f: &Filter) -> bool {
    if let Some(ids) = &f.ids
        && !ids.contains(&row.indicator_id)
    {
        return false;
    }
    match &f.version {
        VersionMatch::Select(_) => true,
        VersionMatch::At(times) => decoded(row).is_ok_and(|i| times.contains(&i.modified_unix_ms)),
    }
}

/// The X-TAXII-Date-Added-First/Last headers of a page.
fn date_headers(served: &[Served]) -> HeaderMap {
    let mut h = HeaderMap::new();
    if let (Some(first), Some(last)) = (served.first(), served.last()) {
        for (name, ms) in [
            ("x-taxii-date-added-first", first.stored_ms),
            ("x-taxii-date-added-last", last.stored_ms),
        ] {
            if let Ok(v) = HeaderValue::from_str(&stix::timestamp(ms)) {
                h.insert(name, v);
            }
        }
    }
    h
}

/// A TAXII envelope: one page of objects, and where the next one starts.
#[derive(Serialize)]
struct Page<T> {
    more: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    next: Option<String>,
    objects: Vec<T>,
}

fn envelope_body<'a, T: Serialize>(
    served: &'a [Served],
    more: bool,
    next: u64,
    f: impl Fn(&'a Served) -> T,
) -> Page<T> {
    Page {
        more,
        next: more.then(|| format!("{next:x}")),
        objects: served.iter().map(f).collect(),
    }
}

/// One page of the collection for `objects` or `manifest`: what the
/// caller may read, whether there is more, and where the next page starts.
async fn page(
    t: &Taxii,
    peer: &PeerInfo,
    cid: &str,
    q: &HashMap<String, String>,
    headers: &HeaderMap,
) -> Result<(Vec<Served>, bool, u64), TaxiiError> {
    accepts_taxii(headers)?;
    let r = reader(t, peer)?;
    check_collection(t, cid)?;
    let f = filter(t, q, Versions::Latest)?;
    read_page(t, &r, &f).await
}

async fn objects(
    State(t): State<Arc<Taxii>>,
    Extension(peer): Extension<PeerInfo>,
    Path(cid): Path<String>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Answer {
    let (served, more, next) = page(&t, &peer, &cid, &q, &headers).await?;
    let body = envelope_body(&served, more, next, |s| {
        stix::IndicatorObject::new(&s.indicator, s.envelope.as_ref())
    });
    Ok(taxii_json(StatusCode::OK, &body, date_headers(&served)))
}

/// One entry of a manifest.
#[derive(Serialize)]
struct ManifestEntry {
    id: String,
    date_added: String,
    version: String,
    media_type: &'static str,
}

async fn manifest(
    State(t): State<Arc<Taxii>>,
    Extension(peer): Extension<PeerInfo>,
    Path(cid): Path<String>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Answer {
    let (served, more, next) = page(&t, &peer, &cid, &q, &headers).await?;
    let body = envelope_body(&served, more, next, |s| ManifestEntry {
        id: format!("indicator--{}", s.indicator.id),
        date_added: stix::timestamp(s.stored_ms),
        version: stix::timestamp(s.indicator.modified_unix_ms),
        media_type: STIX_TYPE,
    });
    Ok(taxii_json(StatusCode::OK, &body, date_headers(&served)))
}

/// The versions of one object `r` may read (per `f`'s `match[version]`),
/// oldest first: its own rows, through the [`Gate`].
async fn one_object(
    t: &Taxii,
    r: &Reader,
    oid: &str,
    f: &Filter,
) -> Result<Vec<Served>, TaxiiError> {
    let id = oid.strip_prefix("indicator--").ok_or_else(|| {
        error(
            StatusCode::NOT_FOUND,
            "Unknown object",
            format!("{oid}: this collection holds indicator objects only"),
        )
    })?;
    let rows = t.ctx.store.versions_of_id(id).await?;
    let newest = rows.iter().map(|r| r.version).max();
    let oldest = rows.iter().map(|r| r.version).min();
    let chosen = rows.iter().filter(|row| match &f.version {
        VersionMatch::Select(Versions::Latest) => Some(row.version) == newest,
        VersionMatch::Select(Versions::Earliest) => Some(row.version) == oldest,
        VersionMatch::Select(Versions::All) => true,
        VersionMatch::At(_) => matches_filter(row, f),
    });
    let chosen: Vec<&StoredIndicator> = chosen.collect();
    let mut gate = Gate::new(t, r);
    let (served, _) = gate.admit(&chosen, usize::MAX).await?;
    gate.finish().await?;
    Ok(served)
}

/// The versions of object `oid` the caller may read, per the request's
/// `match[version]` (default `default`); 404 when there is none.
async fn visible(
    t: &Taxii,
    peer: &PeerInfo,
    (cid, oid): (&str, &str),
    q: &HashMap<String, String>,
    headers: &HeaderMap,
    default: Versions,
) -> Result<Vec<Served>, TaxiiError> {
    accepts_taxii(headers)?;
    let r = reader(t, peer)?;
    check_collection(t, cid)?;
    let f = filter(t, q, default)?;
    let served = one_object(t, &r, oid, &f).await?;
    if served.is_empty() {
        return Err(error(
            StatusCode::NOT_FOUND,
            "Unknown object",
            format!("{oid} is not in this collection for you"),
        ));
    }
    Ok(served)
}

async fn object(
    State(t): State<Arc<Taxii>>,
    Extension(peer): Extension<PeerInfo>,
    Path((cid, oid)): Path<(String, String)>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Answer {
    let served = visible(&t, &peer, (&cid, &oid), &q, &headers, Versions::Latest).await?;
    let body = envelope_body(&served, false, 0, |s| {
        stix::IndicatorObject::new(&s.indicator, s.envelope.as_ref())
    });
    Ok(taxii_json(StatusCode::OK, &body, date_headers(&served)))
}

async fn versions(
    State(t): State<Arc<Taxii>>,
    Extension(peer): Extension<PeerInfo>,
    Path((cid, oid)): Path<(String, String)>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Answer {
    let served = visible(&t, &peer, (&cid, &oid), &q, &headers, Versions::All).await?;
    let list: Vec<String> = served
        .iter()
        .map(|s| stix::timestamp(s.indicator.modified_unix_ms))
        .collect();
    Ok(taxii_json(
        StatusCode::OK,
        &json!({"more": false, "versions": list}),
        date_headers(&served),
    ))
}

async fn add_objects(
    State(t): State<Arc<Taxii>>,
    Extension(peer): Extension<PeerInfo>,
    Path(cid): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Answer {
    accepts_taxii(&headers)?;
    let r = reader(&t, &peer)?;
    check_collection(&t, &cid)?;
    // Past taxii.max_content_length (413) or unreadable: a TAXII error
    // message like every other refusal, not the framework's plain text.
    let body = body.map_err(|e| {
        let status = e.status();
        let description = if status == StatusCode::PAYLOAD_TOO_LARGE {
            format!(
                "the body is larger than this server takes ({} bytes, taxii.max_content_length)",
                t.ctx.settings.taxii.max_content_length
            )
        } else {
            format!("the body could not be read: {e}")
        };
        error(status, "Request body refused", description)
    })?;
    let Reader::Own {
        id: caller,
        publisher: true,
    } = r
    else {
        return Err(error(
            StatusCode::FORBIDDEN,
            "Forbidden",
            "only this org's publishers may add objects (publisher certificate)",
        ));
    };
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase()
        .replace(' ', "");
    if !content_type.starts_with("application/taxii+json") {
        return Err(error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "Unsupported media type",
            format!("POST a TAXII envelope as {TAXII_TYPE}"),
        ));
    }
    let doc: Value =
        serde_json::from_slice(&body).map_err(|e| bad(format!("the body is not JSON: {e}")))?;
    let objects = doc
        .get("objects")
        .and_then(Value::as_array)
        .ok_or_else(|| bad("objects: a TAXII envelope needs a list of objects"))?;
    let (mut successes, mut failures) = (Vec::new(), Vec::new());
    for (i, obj) in objects.iter().enumerate() {
        let sid = obj
            .get("id")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        let version = obj
            .get("modified")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        let outcome = match stix::draft_from_object(obj) {
            Err(e) => Err(e.to_string()),
            Ok(imp) => match publish_key(&imp.key, &imp.draft) {
                Err(e) => Err(e.to_string()),
                Ok(key) => publish_draft(&t.ctx, &caller, imp.draft, key, None)
                    .await
                    .map_err(|e| tonic::Status::from(e).message().to_string()),
            },
        };
        match outcome {
            Ok(_) => successes.push(json!({"id": sid, "version": version})),
            Err(message) => failures.push(json!({
                "id": if sid.is_empty() { format!("objects[{i}]") } else { sid },
                "version": version,
                "message": message,
            })),
        }
    }
    let status_id = uuid::Uuid::new_v4().to_string();
    let resource = json!({
        "id": status_id,
        "status": "complete",
        "request_timestamp": stix::timestamp(t.ctx.clock.now_ms()),
        "total_count": objects.len(),
        "success_count": successes.len(),
        "successes": successes,
        "failure_count": failures.len(),
        "failures": failures,
        "pending_count": 0,
        "pendings": [],
    });
    {
        let mut kept = t.statuses.lock().expect("not poisoned");
        if kept.len() == STATUSES_KEPT {
            kept.pop_front();
        }
        kept.push_back((status_id, caller.to_string(), resource.clone()));
    }
    Ok(taxii_json(
        StatusCode::ACCEPTED,
        &resource,
        HeaderMap::new(),
    ))
}

async fn status(
    State(t): State<Arc<Taxii>>,
    Extension(peer): Extension<PeerInfo>,
    Path(sid): Path<String>,
    headers: HeaderMap,
) -> Answer {
    accepts_taxii(&headers)?;
    let r = reader(&t, &peer)?;
    let who = match &r {
        Reader::Own { id, .. } => id.to_string(),
        Reader::Partner(p) => p.to_string(),
    };
    let kept = t.statuses.lock().expect("not poisoned");
    kept.iter()
        .find(|(id, owner, _)| *id == sid && *owner == who)
        .map(|(_, _, v)| taxii_json(StatusCode::OK, v, HeaderMap::new()))
        .ok_or_else(|| {
            error(
                StatusCode::NOT_FOUND,
                "Unknown status",
                format!("status {sid} is not known (kept for the last {STATUSES_KEPT} requests)"),
            )
        })
}
