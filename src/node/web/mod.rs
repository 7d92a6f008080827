//! The web of one instance, HTTP on every instance: the JSON API under
//! `/api/v1/`, the dashboard at `/`, Prometheus metrics at `/metrics` and
//! server-sent events. Every request becomes the same `Request` the CLI
//! sends over QUIC and is answered by the cluster's `respond`, so each
//! instance gives the CLI's answers, as the same JSON objects as its
//! `--json`. Built by the composition root (`node::serve`) on the cluster's
//! handle, reached only through `Web::cluster`; it imports nothing of the
//! work.
//!
//! Children: `api` (reads and operator writes), `admin` (admin writes),
//! `events` (the hub and its streams), `stats` (the sampler behind charts),
//! `metrics` (`/metrics`), `dashboard` (the built-in files).
//!
//! hyper 1 serves HTTP/1.1 on async-std through smol-hyper's futures-io
//! adapter; no tokio runtime runs. Limits: `CONNECTIONS_MAX` connections,
//! `EVENT_STREAMS_MAX` event streams, `HEADER_READ_MS` to send the headers
//! (a client sending one byte per second is cut off), `BODY_BYTES_MAX` of
//! body (413 beyond).
//!
//! Access: requests from a loopback client to a loopback address need no
//! login unless `http_login = true`; otherwise a token (`Authorization:
//! Bearer`) or a dashboard session cookie, with its CSRF token on every
//! state-changing request. Plain HTTP is served only on a loopback
//! address: elsewhere the API stays off until HTTPS is built (logged).

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{combinators::UnsyncBoxBody, BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::{Method, StatusCode};
use serde_json::{json, Value};

use crate::clock::now_ms;
use crate::node::cluster::Shared;
use crate::proto::Request;
use crate::web::access::{self, Role};

mod admin;
mod api;
mod dashboard;
mod events;
mod metrics;
mod stats;

pub use admin::{
    hotfolder_definition, script_addition, setting_write, token_request, transfer_target,
};
pub use api::{job_query, submission, JOBS_PAGE_MAX};

pub const CONNECTIONS_MAX: usize = 1024;
pub const EVENT_STREAMS_MAX: usize = 256;
pub const HEADER_READ_MS: u64 = 10_000;
/// A request body's limit once its sender is known (and only an operator
/// or an admin may send one): a setting's value at `VALUE_BYTES_MAX` fits
/// as a JSON string however it is escaped (`\\u00XX` is 6 bytes for one),
/// and so do batches, scripts and hotfolder definitions.
pub const BODY_BYTES_MAX: usize = 6 * crate::state::VALUE_BYTES_MAX + 64 * 1024;
/// The login's body, read before anyone is known: a token in JSON.
pub const LOGIN_BODY_BYTES_MAX: usize = 4 * 1024;
/// A body must arrive within this once the headers did (408 beyond), before
/// and after login: a client trickling a body cannot hold a connection.
pub const BODY_READ_MS: u64 = 10_000;
/// Connections one client address may hold at once (beyond: closed at
/// accept), so that one client cannot take all of `CONNECTIONS_MAX`.
pub const CONNECTIONS_PER_ADDRESS_MAX: usize = 128;
/// A TLS handshake must end within this.
pub const TLS_HANDSHAKE_MS: u64 = 10_000;

type Body = UnsyncBoxBody<Bytes, Infallible>;
type Reply = hyper::Response<Body>;

/// What the HTTP side keeps per instance, beside the cluster it serves.
pub(crate) struct Web {
    /// The cluster's handle: requests are answered by its `respond`.
    cluster: Arc<Shared>,
    /// The names a `Host` header may give (`access::host_allowed`).
    hosts: Vec<String>,
    connections: AtomicUsize,
    /// Open connections by client address (`CONNECTIONS_PER_ADDRESS_MAX`).
    by_address: Mutex<std::collections::HashMap<IpAddr, usize>>,
    streams: AtomicUsize,
    sessions: Mutex<access::Sessions>,
    logins: Mutex<access::LoginLimiter>,
    /// Requests answered, by status class, for /metrics.
    answered: [AtomicUsize; 5],
    hub: events::Hub,
    stats: Mutex<stats::Stats>,
    /// Coordinator changes seen since this instance started.
    coordinator_changes: std::sync::atomic::AtomicU64,
    /// Served over TLS: session cookies are `Secure`.
    https: std::sync::atomic::AtomicBool,
}

impl Web {
    pub fn new(cluster: Arc<Shared>) -> Web {
        Web {
            hosts: host_names(&cluster.cfg, &cluster.me),
            cluster,
            connections: Default::default(),
            by_address: Default::default(),
            streams: Default::default(),
            sessions: Default::default(),
            logins: Default::default(),
            answered: Default::default(),
            hub: Default::default(),
            stats: Default::default(),
            coordinator_changes: Default::default(),
            https: Default::default(),
        }
    }

    /// Something was applied: the event hub looks now (`events::Hub`).
    pub fn applied(&self) {
        self.hub.applied();
    }

    /// Counts a connection from `from`; false when that address holds
    /// `CONNECTIONS_PER_ADDRESS_MAX` already (nothing counted then).
    fn admit(&self, from: IpAddr) -> bool {
        let mut by = self.by_address.lock().expect("addresses lock");
        let n = by.entry(from).or_insert(0);
        if *n >= CONNECTIONS_PER_ADDRESS_MAX {
            return false;
        }
        *n += 1;
        true
    }

    fn release(&self, from: IpAddr) {
        let mut by = self.by_address.lock().expect("addresses lock");
        if let Some(n) = by.get_mut(&from) {
            *n -= 1;
            if *n == 0 {
                by.remove(&from);
            }
        }
    }
}

/// The names this instance answers to over HTTP: its host as configured,
/// its address, its server name, `localhost` on a loopback address, and
/// `http_hosts`.
fn host_names(cfg: &crate::config::Config, me: &crate::config::ServerConf) -> Vec<String> {
    let ip = me.address.ip();
    let mut names = vec![
        me.host.to_string(),
        ip.to_string(),
        me.name.to_ascii_lowercase(),
    ];
    if ip.is_loopback() {
        names.push("localhost".into());
    }
    names.extend(cfg.http_hosts.iter().cloned());
    names.sort();
    names.dedup();
    names
}

/// The HTTP listener of this instance, bound before anything else starts so
/// that a taken port stops `serve` at once, naming it (exit 2), rather than
/// leaving an instance without its API while another answers on the port.
/// `None`: `http_port = 0`.
pub async fn listen(
    cfg: &crate::config::Config,
    me: &crate::config::ServerConf,
) -> Result<Option<Listener>, String> {
    if cfg.http_port == 0 {
        return Ok(None);
    }
    let ip = me.address.ip();
    let https = cfg.https.unwrap_or(!ip.is_loopback());
    if !https && !ip.is_loopback() {
        return Err(format!(
            "{}: https = false, but plain HTTP is allowed only on a loopback address, and {ip} is none",
            cfg.path.display()
        ));
    }
    let addr = SocketAddr::new(ip, cfg.http_port);
    let tcp = async_std::net::TcpListener::bind(addr).await.map_err(|e| {
        format!(
            "cannot listen on {addr} for the HTTP API (http_port = {} in {}): {e}",
            cfg.http_port,
            cfg.path.display()
        )
    })?;
    Ok(Some(Listener { tcp, https }))
}

/// A bound HTTP listener (`listen`) and whether it serves TLS.
pub struct Listener {
    tcp: async_std::net::TcpListener,
    https: bool,
}

/// Serves HTTP (or HTTPS) on this server's address and `http_port` until
/// the process ends, with the event hub and the stats sampler beside it.
pub async fn serve(web: Arc<Web>, listener: Listener) {
    let Listener {
        tcp: listener,
        https,
    } = listener;
    let tls = match https.then(|| https_acceptor(&web)).transpose() {
        Ok(tls) => tls,
        Err(e) => return tracing::error!("the HTTP API is not served: {e}"),
    };
    let addr = SocketAddr::new(web.cluster.me.address.ip(), web.cluster.cfg.http_port);
    web.https.store(https, Ordering::Relaxed);
    async_std::task::spawn(events::hub_loop(web.clone()));
    async_std::task::spawn(stats::sample_loop(web.clone()));
    let scheme = if https { "https" } else { "http" };
    tracing::info!("HTTP API and dashboard on {scheme}://{addr}/");
    if !web.cluster.cfg.http_login && addr.ip().is_loopback() {
        // Said at every start: on a machine others log into, the open
        // loopback API makes each of them an admin (and so, through jobs,
        // the service's user).
        tracing::warn!("{OPEN_LOOPBACK_NOTE}");
    }
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                // Out of descriptors, most likely: wait rather than spin.
                crate::throttled_warn!("http-accept", "", "HTTP accept failed: {e}");
                async_std::task::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let http = &*web;
        if http.connections.fetch_add(1, Ordering::SeqCst) >= CONNECTIONS_MAX {
            http.connections.fetch_sub(1, Ordering::SeqCst);
            continue; // dropped: the client sees the connection closed
        }
        if !http.admit(peer.ip()) {
            http.connections.fetch_sub(1, Ordering::SeqCst);
            crate::throttled_warn!(
                "http-per-address",
                &peer.ip().to_string(),
                "HTTP: {} holds {CONNECTIONS_PER_ADDRESS_MAX} connections (CONNECTIONS_PER_ADDRESS_MAX); closing its new one",
                peer.ip()
            );
            continue;
        }
        let _ = stream.set_nodelay(true);
        async_std::task::spawn(accepted(web.clone(), stream, peer, tls.clone()));
    }
}

fn https_acceptor(web: &Web) -> Result<futures_rustls::TlsAcceptor, String> {
    let id = crate::tls::load_identity(&web.cluster.cfg.tls_dir, &web.cluster.me.name)
        .map_err(|e| e.to_string())?;
    let config = crate::tls::https_config(&id).map_err(|e| e.to_string())?;
    Ok(futures_rustls::TlsAcceptor::from(Arc::new(config)))
}

/// One accepted connection: its TLS handshake (time-limited) when HTTPS,
/// then HTTP on it.
async fn accepted(
    web: Arc<Web>,
    stream: async_std::net::TcpStream,
    peer: SocketAddr,
    tls: Option<futures_rustls::TlsAcceptor>,
) {
    match tls {
        None => connection(&web, stream, peer).await,
        Some(acceptor) => {
            let handshake = async_std::future::timeout(
                Duration::from_millis(TLS_HANDSHAKE_MS),
                acceptor.accept(stream),
            );
            match handshake.await {
                Ok(Ok(tls)) => connection(&web, tls, peer).await,
                Ok(Err(e)) => tracing::debug!("HTTPS handshake from {peer}: {e}"),
                Err(_) => {
                    tracing::debug!("HTTPS handshake from {peer}: over {TLS_HANDSHAKE_MS} ms")
                }
            }
        }
    }
    web.release(peer.ip());
    web.connections.fetch_sub(1, Ordering::SeqCst);
}

async fn connection<S>(web: &Arc<Web>, stream: S, peer: SocketAddr)
where
    S: futures_lite::AsyncRead + futures_lite::AsyncWrite + Unpin + Send + 'static,
{
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(AsyncIoTimer)
        .header_read_timeout(Duration::from_millis(HEADER_READ_MS))
        .keep_alive(true);
    let service = hyper::service::service_fn(|req| {
        let web = web.clone();
        async move { Ok::<_, Infallible>(route(&web, req, peer.ip()).await) }
    });
    let io = smol_hyper::rt::FuturesIo::new(stream);
    if let Err(e) = builder.serve_connection(io, service).await {
        tracing::debug!("HTTP connection from {peer}: {e}");
    }
}

// ---------------------------------------------------------------------------
// Routing and access

/// Who is asking: a role, and whether the request passed the CSRF check
/// (a bearer token or the loopback exemption need none).
struct Caller {
    role: Role,
    csrf_ok: bool,
    /// The session's CSRF token ("" without a session).
    csrf: String,
}

async fn route(web: &Arc<Web>, req: hyper::Request<Incoming>, from: IpAddr) -> Reply {
    let reply = match dispatch(web, req, from).await {
        Ok(r) => r,
        Err((status, message)) => error(status, &message),
    };
    let class = (reply.status().as_u16() / 100).clamp(1, 5) as usize - 1;
    web.answered[class].fetch_add(1, Ordering::Relaxed);
    reply
}

type Fail = (StatusCode, String);

async fn dispatch(
    web: &Arc<Web>,
    req: hyper::Request<Incoming>,
    from: IpAddr,
) -> Result<Reply, Fail> {
    let path = req.uri().path().to_string();
    let method = req.method().clone();
    let host = header(&req, "host");
    access::host_allowed(host.as_deref(), &web.hosts, web.cluster.cfg.http_port)
        .map_err(|e| (StatusCode::MISDIRECTED_REQUEST, e))?;
    if method != Method::GET {
        if let Some(origin) = header(&req, "origin") {
            if !access::origin_allowed(&origin, &web.hosts, web.cluster.cfg.http_port) {
                return Err((
                    StatusCode::FORBIDDEN,
                    format!("a request from the page of {origin:?}, another site, is refused"),
                ));
            }
        }
    }
    if !path.starts_with("/api/") && path != "/metrics" {
        return dashboard::asset(&method, &path).ok_or_else(not_found);
    }
    if path == "/api/v1/login" && method == Method::POST {
        return login(web, req, from).await;
    }
    if path == "/api/v1/logout" && method == Method::POST {
        // Any role may end its own session (the SameSite=Strict cookie is
        // never sent by another site's page).
        return Ok(logout(web, &req));
    }
    if path == "/metrics" && method == Method::GET && from.is_loopback() {
        // Prometheus on the same machine needs no token; elsewhere it
        // sends a viewer's (`authorization: credentials` in its config).
        return Ok(metrics(web).await);
    }
    let caller = caller(web, &req, from).await?;
    let parts: Vec<String> = path
        .trim_start_matches("/api/v1/")
        .split('/')
        .map(str::to_string)
        .collect();
    let parts: Vec<&str> = parts.iter().map(String::as_str).collect();
    let need = access::route_role(method.as_str(), &parts);
    if !caller.role.may(need) {
        return Err((
            StatusCode::FORBIDDEN,
            format!(
                "a {} may not do this (it takes an {})",
                caller.role.as_str(),
                need.as_str()
            ),
        ));
    }
    if method != Method::GET && !caller.csrf_ok {
        return Err((
            StatusCode::FORBIDDEN,
            "missing or wrong X-CSRF-Token".into(),
        ));
    }
    if path == "/metrics" {
        return Ok(metrics(web).await);
    }
    if method == Method::GET && parts == ["session"] {
        return Ok(session(web, &caller));
    }
    let query = req.uri().query().unwrap_or("").to_string();
    let idem = header(&req, "idempotency-key");
    let body = read_body(req, BODY_BYTES_MAX).await?;
    route_api(web, &caller, &method, &parts, &query, &body, idem).await
}

async fn route_api(
    web: &Arc<Web>,
    caller: &Caller,
    method: &Method,
    parts: &[&str],
    query: &str,
    body: &[u8],
    idem: Option<String>,
) -> Result<Reply, Fail> {
    use Method as M;
    match (method.clone(), parts) {
        (M::GET, ["status"]) => api::ask(web, Request::Status).await,
        (M::GET, ["servers"]) => api::servers(web).await,
        (M::POST, ["servers", name, verb]) => admin::server_mode(web, name, verb).await,
        (M::POST, ["coordinator", "transfer"]) => admin::transfer(web, body).await,
        (M::GET, ["jobs"]) => api::jobs(web, query).await,
        (M::POST, ["jobs"]) => api::submit(web, caller.role, body, idem).await,
        (M::GET, ["jobs", id]) => api::job(web, id).await,
        (M::POST, ["jobs", id, verb]) => api::cancel_or_retry(web, id, verb).await,
        (M::GET, ["hotfolders"]) => api::hotfolders(web).await,
        (M::POST, ["hotfolders"]) => admin::hotfolder_add(web, body).await,
        (M::GET, ["hotfolders", name]) => api::hotfolder(web, name).await,
        (M::DELETE, ["hotfolders", name]) => admin::hotfolder_remove(web, name).await,
        (M::PUT, ["hotfolders", name]) => admin::hotfolder_replace(web, name, body).await,
        (M::POST, ["hotfolders", name, verb]) => api::pause(web, name, verb).await,
        (M::GET, ["scripts"]) => api::ask(web, Request::Scripts { stale: false }).await,
        (M::POST, ["scripts"]) => admin::script_add(web, body).await,
        (M::GET, ["scripts", name]) => api::script(web, name, query).await,
        (M::DELETE, ["scripts", name]) => admin::script_remove(web, name).await,
        (M::GET, ["settings"]) => api::settings(web, query).await,
        (M::GET, ["settings", key]) => api::setting(web, key).await,
        (M::PUT, ["settings", key]) => admin::setting_put(web, key, body).await,
        (M::DELETE, ["settings", key]) => admin::setting_delete(web, key).await,
        (M::GET, ["tokens"]) => admin::tokens(web).await,
        (M::POST, ["tokens"]) => admin::token_add(web, body).await,
        (M::DELETE, ["tokens", name]) => admin::token_remove(web, name).await,
        (M::GET, ["stats"]) => Ok(stats_reply(web)),
        (M::GET, ["events"]) => events::stream(web.clone()),
        (M::GET, ["openapi.json"]) => Ok(text(OPENAPI.to_string(), "application/json")),
        _ => Err(not_found()),
    }
}

/// The API's description, kept beside the routes above.
const OPENAPI: &str = include_str!("openapi.json");

/// The warning of an HTTP API open on loopback (`http_login = false`).
pub const OPEN_LOOPBACK_NOTE: &str = "the HTTP API on loopback asks no login: every local user of this machine may act as an admin there, and run code as this service's user; set http_login = true where others log in (docs/SECURITY.md)";

async fn metrics(web: &Arc<Web>) -> Reply {
    text(metrics::render(web).await, "text/plain; version=0.0.4")
}

fn stats_reply(web: &Web) -> Reply {
    let jobs = jobs_by_state(web);
    let stats = web.stats.lock().expect("stats lock");
    let samples: Vec<&stats::Sample> = stats.samples.iter().collect();
    json_reply(
        StatusCode::OK,
        &json!({"interval_s": stats::STATS_INTERVAL_MS / 1000, "samples": samples, "jobs": jobs}),
    )
}

/// The jobs kept, by state (all kinds), as this replica counts them (the
/// kept counts of `state::job_counts`: no scan of the jobs).
fn jobs_by_state(web: &Web) -> serde_json::Map<String, serde_json::Value> {
    let guard = web.cluster.core();
    let counts = guard
        .as_ref()
        .map(|core| crate::state::jobs::counts(core.state().conn()).unwrap_or_default())
        .unwrap_or_default();
    let mut by_state = serde_json::Map::new();
    for (state, _kind, n) in counts {
        let sum = by_state.get(&state).and_then(|v| v.as_u64()).unwrap_or(0) + n;
        by_state.insert(state, json!(sum));
    }
    by_state
}

/// `GET session`: who the dashboard is, and its CSRF token (a cross-site
/// page cannot read this answer: no CORS header is ever sent).
fn session(web: &Web, caller: &Caller) -> Reply {
    let login_required = web.cluster.cfg.http_login || !web.cluster.me.address.ip().is_loopback();
    json_reply(
        StatusCode::OK,
        &json!({"role": caller.role, "csrf": caller.csrf, "login_required": login_required}),
    )
}

pub(super) fn not_found() -> Fail {
    (StatusCode::NOT_FOUND, "no such resource".into())
}

fn header(req: &hyper::Request<Incoming>, name: &str) -> Option<String> {
    req.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

async fn caller(web: &Web, req: &hyper::Request<Incoming>, from: IpAddr) -> Result<Caller, Fail> {
    if let Some(auth) = header(req, "authorization") {
        let token = auth.strip_prefix("Bearer ").unwrap_or("");
        let role = token_role(web, token, from).await?;
        return Ok(Caller {
            role,
            csrf_ok: true,
            csrf: String::new(),
        });
    }
    if let Some(id) = cookie(req, "claro_session") {
        let session = {
            let sessions = web.sessions.lock().expect("sessions lock");
            sessions.get(&id, now_ms()).cloned()
        };
        if let Some(s) = session {
            if !token_exists(web, &s.token_hash) {
                close_session(web, &id);
                return Err((
                    StatusCode::UNAUTHORIZED,
                    "the token of this session was revoked: log in again".into(),
                ));
            }
            let sent = header(req, "x-csrf-token").unwrap_or_default();
            let csrf_ok = access::same_secret(&sent, &s.csrf);
            return Ok(Caller {
                role: s.role,
                csrf_ok,
                csrf: s.csrf,
            });
        }
    }
    let open = !web.cluster.cfg.http_login && from.is_loopback();
    if open {
        // The quickstart: a loopback client on a loopback address, trusted
        // as every local process is (it could read conf/tls/client.key). A
        // web page is not such a client: its requests name another Host
        // (refused, 421) or carry a foreign Origin (refused, 403) before
        // they get here; no header stands in for a login.
        return Ok(Caller {
            role: Role::Admin,
            csrf_ok: true,
            csrf: String::new(),
        });
    }
    Err((
        StatusCode::UNAUTHORIZED,
        "log in: send Authorization: Bearer TOKEN (claro token add)".into(),
    ))
}

/// Whether a token of this hash is still in the cluster. Without a replica
/// to ask (an instance still starting), a session is kept: it cannot be
/// told revoked, and a restarted instance has no sessions anyway.
fn token_exists(web: &Web, hash: &str) -> bool {
    let guard = web.cluster.core();
    let Some(core) = guard.as_ref() else {
        return true;
    };
    !matches!(
        crate::state::tokens::by_hash(core.state().conn(), hash),
        Ok(None)
    )
}

/// The role of `token`; failed attempts count against `from`. A token this
/// replica does not know is looked up again once it holds every write the
/// coordinator acknowledged, so a token works on every instance as soon as
/// `claro token add` returned. The failure is counted before that wait, so
/// that concurrent guesses cannot pass the limit while they wait.
async fn token_role(web: &Web, token: &str, from: IpAddr) -> Result<Role, Fail> {
    let hash = access::check_token_form(token)
        .ok()
        .map(|()| access::token_hash(token));
    // A known token is never refused: the limit slows guessing, and behind a
    // proxy or NAT one guesser's failures must not lock everyone out.
    if let Some(role) = hash.as_deref().and_then(|h| token_by_hash(web, h)) {
        return Ok(role);
    }
    {
        let mut logins = web.logins.lock().expect("logins lock");
        if !logins.allows(from, now_ms()) {
            return Err((
                StatusCode::TOO_MANY_REQUESTS,
                format!(
                    "more than {} failed logins from {from} in a minute; wait",
                    access::FAILED_LOGINS_PER_MINUTE_MAX
                ),
            ));
        }
        logins.failed(from, now_ms());
    }
    let Some(hash) = hash else {
        return Err(unknown_token());
    };
    if crate::node::cluster::confirm_read(&web.cluster)
        .await
        .is_ok()
    {
        if let Some(role) = token_by_hash(web, &hash) {
            web.logins.lock().expect("logins lock").refund(from);
            return Ok(role);
        }
    }
    Err(unknown_token())
}

fn unknown_token() -> Fail {
    (StatusCode::UNAUTHORIZED, "unknown or revoked token".into())
}

fn token_by_hash(web: &Web, hash: &str) -> Option<Role> {
    let guard = web.cluster.core();
    let core = guard.as_ref()?;
    let found = crate::state::tokens::by_hash(core.state().conn(), hash).ok()?;
    found.map(|(_, role)| role)
}

fn cookie(req: &hyper::Request<Incoming>, name: &str) -> Option<String> {
    let all = header(req, "cookie")?;
    all.split(';')
        .filter_map(|c| c.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_string())
}

async fn login(web: &Web, req: hyper::Request<Incoming>, from: IpAddr) -> Result<Reply, Fail> {
    let body = read_body(req, LOGIN_BODY_BYTES_MAX).await?;
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Login {
        token: String,
    }
    let login: Login = parse_json(&body)?;
    let role = token_role(web, &login.token, from).await?;
    let (id, csrf) = {
        let mut sessions = web.sessions.lock().expect("sessions lock");
        let hash = access::token_hash(&login.token);
        let id = sessions.open(&hash, role, rand::random(), now_ms());
        let csrf = sessions
            .get(&id, now_ms())
            .expect("just opened")
            .csrf
            .clone();
        (id, csrf)
    };
    let mut reply = json_reply(StatusCode::OK, &json!({"role": role, "csrf": csrf}));
    let secure = if web.https.load(Ordering::Relaxed) {
        "; Secure"
    } else {
        ""
    };
    let cookie = format!("claro_session={id}; HttpOnly; SameSite=Strict; Path=/{secure}");
    reply
        .headers_mut()
        .insert("set-cookie", HeaderValue::from_str(&cookie).expect("ascii"));
    Ok(reply)
}

fn close_session(web: &Web, id: &str) {
    web.sessions.lock().expect("sessions lock").close(id);
}

/// Ends the session of the cookie sent (on this instance) and clears it.
fn logout(web: &Web, req: &hyper::Request<Incoming>) -> Reply {
    if let Some(id) = cookie(req, "claro_session") {
        close_session(web, &id);
    }
    let mut reply = json_reply(StatusCode::OK, &json!({"ok": true}));
    let cookie = "claro_session=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0";
    reply
        .headers_mut()
        .insert("set-cookie", HeaderValue::from_static(cookie));
    reply
}

// ---------------------------------------------------------------------------
// Bodies and answers

async fn read_body(req: hyper::Request<Incoming>, bytes_max: usize) -> Result<Bytes, Fail> {
    let collect = Limited::new(req.into_body(), bytes_max).collect();
    let Ok(read) = async_std::future::timeout(Duration::from_millis(BODY_READ_MS), collect).await
    else {
        return Err((
            StatusCode::REQUEST_TIMEOUT,
            format!("the body did not arrive within {BODY_READ_MS} ms (BODY_READ_MS)"),
        ));
    };
    match read {
        Ok(b) => Ok(b.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err((
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the body is over {bytes_max} bytes (the limit of this route)"),
        )),
        Err(e) => Err((StatusCode::BAD_REQUEST, format!("reading the body: {e}"))),
    }
}

fn parse_json<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, Fail> {
    serde_json::from_slice(body)
        .map_err(|e| (StatusCode::BAD_REQUEST, format!("the JSON body: {e}")))
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push((h * 16 + l) as u8);
                    i += 3;
                    continue;
                }
                _ => out.push(b'%'),
            },
            b'+' => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn json_reply(status: StatusCode, value: &Value) -> Reply {
    let mut reply = text(value.to_string(), "application/json");
    *reply.status_mut() = status;
    reply
}

fn error(status: StatusCode, message: &str) -> Reply {
    json_reply(
        status,
        &json!({"error": message, "status": status.as_u16()}),
    )
}

fn text(body: String, content_type: &'static str) -> Reply {
    let mut reply = hyper::Response::new(Full::new(Bytes::from(body)).boxed_unsync());
    let h = reply.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    reply
}

// ---------------------------------------------------------------------------
// hyper's timer on async-io (its header read timeout needs one)

#[derive(Clone, Copy)]
struct AsyncIoTimer;

struct AsyncIoSleep(async_io::Timer);

impl std::future::Future for AsyncIoSleep {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        Pin::new(&mut self.0).poll(cx).map(|_| ())
    }
}

impl hyper::rt::Sleep for AsyncIoSleep {}

impl hyper::rt::Timer for AsyncIoTimer {
    fn sleep(&self, d: Duration) -> Pin<Box<dyn hyper::rt::Sleep>> {
        Box::pin(AsyncIoSleep(async_io::Timer::after(d)))
    }
    fn sleep_until(&self, at: Instant) -> Pin<Box<dyn hyper::rt::Sleep>> {
        Box::pin(AsyncIoSleep(async_io::Timer::at(at)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The served document's range for `GET /jobs?limit` is the code's, so a
    /// generated client never refuses a page size the API takes (it said 500
    /// while the API took 1000).
    #[test]
    fn the_documents_jobs_limit_is_the_apis() {
        let doc: serde_json::Value = serde_json::from_str(OPENAPI).expect("openapi.json");
        let params = doc["paths"]["/jobs"]["get"]["parameters"]
            .as_array()
            .expect("parameters");
        let limit = params.iter().find(|p| p["name"] == "limit").expect("limit");
        assert_eq!(limit["schema"]["minimum"], 1);
        assert_eq!(limit["schema"]["maximum"], JOBS_PAGE_MAX);
        let said = format!("1..={JOBS_PAGE_MAX}");
        assert!(limit["description"].as_str().unwrap().contains(&said));
        assert!(job_query(&format!("limit={JOBS_PAGE_MAX}")).is_ok());
        assert!(job_query(&format!("limit={}", JOBS_PAGE_MAX + 1)).is_err());
        assert!(job_query("limit=0").is_err());
    }

    #[test]
    fn each_route_takes_the_role_its_change_needs() {
        let cases = [
            (Method::GET, "status", Role::Viewer),
            (Method::GET, "servers", Role::Viewer),
            (Method::POST, "servers/srv2/drain", Role::Admin),
            (Method::POST, "coordinator/transfer", Role::Admin),
            (Method::POST, "jobs", Role::Operator),
            (Method::POST, "jobs/J/cancel", Role::Operator),
            (Method::GET, "hotfolders/hf", Role::Viewer),
            (Method::POST, "hotfolders/hf/pause", Role::Operator),
            (Method::POST, "hotfolders", Role::Admin),
            (Method::DELETE, "hotfolders/hf", Role::Admin),
            (Method::PUT, "hotfolders/hf", Role::Admin),
            (Method::GET, "scripts/s", Role::Viewer),
            (Method::POST, "scripts", Role::Admin),
            (Method::GET, "settings", Role::Viewer),
            (Method::PUT, "settings/k", Role::Admin),
            (Method::GET, "tokens", Role::Admin),
            (Method::DELETE, "tokens/t", Role::Admin),
        ];
        for (method, path, role) in cases {
            let parts: Vec<&str> = path.split('/').collect();
            assert_eq!(
                access::route_role(method.as_str(), &parts),
                role,
                "{method} {path}"
            );
        }
    }
}
