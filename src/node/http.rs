//! HTTP on every instance: the JSON API under `/api/v1/`, the dashboard
//! at `/`, Prometheus metrics at `/metrics` and server-sent events. Every
//! request becomes the same `Request` the CLI sends over QUIC and is
//! answered by `handlers::respond`, so each instance gives the CLI's
//! answers, as the same JSON objects as its `--json`.
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
use http_body_util::{combinators::UnsyncBoxBody, BodyExt, Full, Limited, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::{Method, StatusCode};
use serde_json::{json, Value};

use super::{now_ms, Shared};
use crate::access::{self, Role};
use crate::jobs::{JobKind, JobSpec, JobState};
use crate::output::JobJson;
use crate::proto::{Request, Response};
use crate::state::jobs::JobFilter;
use crate::state::Command;

pub const CONNECTIONS_MAX: usize = 1024;
pub const EVENT_STREAMS_MAX: usize = 256;
pub const HEADER_READ_MS: u64 = 10_000;
pub const BODY_BYTES_MAX: usize = 1024 * 1024;
/// How often an event stream looks for changes, and sends a keep-alive.
const EVENTS_POLL_MS: u64 = 200;
const EVENTS_KEEPALIVE_MS: u64 = 15_000;
/// Jobs one list page returns at most.
const JOBS_PAGE_MAX: u32 = 500;

pub(super) type Body = UnsyncBoxBody<Bytes, Infallible>;
type Reply = hyper::Response<Body>;

/// What the HTTP side keeps per instance.
#[derive(Default)]
pub struct HttpState {
    connections: AtomicUsize,
    streams: AtomicUsize,
    sessions: Mutex<access::Sessions>,
    logins: Mutex<access::LoginLimiter>,
    /// Requests answered, by status class, for /metrics.
    pub answered: [AtomicUsize; 5],
}

/// Serves HTTP on this server's address and `http_port` until the process ends.
pub async fn serve(shared: Arc<Shared>) {
    let port = shared.cfg.http_port;
    if port == 0 {
        return;
    }
    let ip = shared.me.address.ip();
    if !ip.is_loopback() {
        tracing::warn!("the HTTP API is served only on a loopback address for now (HTTPS is not built yet); {ip} has none");
        return;
    }
    let addr = SocketAddr::new(ip, port);
    let listener = match async_std::net::TcpListener::bind(addr).await {
        Ok(l) => l,
        Err(e) => return tracing::error!("HTTP API: cannot listen on {addr}: {e}"),
    };
    tracing::info!("HTTP API and dashboard on http://{addr}/");
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
        let http = &shared.http;
        if http.connections.fetch_add(1, Ordering::SeqCst) >= CONNECTIONS_MAX {
            http.connections.fetch_sub(1, Ordering::SeqCst);
            continue; // dropped: the client sees the connection closed
        }
        let _ = stream.set_nodelay(true);
        async_std::task::spawn(connection(shared.clone(), stream, peer));
    }
}

async fn connection(shared: Arc<Shared>, stream: async_std::net::TcpStream, peer: SocketAddr) {
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(AsyncIoTimer)
        .header_read_timeout(Duration::from_millis(HEADER_READ_MS))
        .keep_alive(true);
    let service = hyper::service::service_fn(|req| {
        let shared = shared.clone();
        async move { Ok::<_, Infallible>(route(&shared, req, peer.ip()).await) }
    });
    let io = smol_hyper::rt::FuturesIo::new(stream);
    if let Err(e) = builder.serve_connection(io, service).await {
        tracing::debug!("HTTP connection from {peer}: {e}");
    }
    shared.http.connections.fetch_sub(1, Ordering::SeqCst);
}

// ---------------------------------------------------------------------------
// Routing and access

/// Who is asking: a role, and whether the request passed the CSRF check
/// (a bearer token or the loopback exemption need none).
struct Caller {
    role: Role,
    csrf_ok: bool,
}

async fn route(shared: &Arc<Shared>, req: hyper::Request<Incoming>, from: IpAddr) -> Reply {
    let reply = match dispatch(shared, req, from).await {
        Ok(r) => r,
        Err((status, message)) => error(status, &message),
    };
    let class = (reply.status().as_u16() / 100).clamp(1, 5) as usize - 1;
    shared.http.answered[class].fetch_add(1, Ordering::Relaxed);
    reply
}

type Fail = (StatusCode, String);

async fn dispatch(
    shared: &Arc<Shared>,
    req: hyper::Request<Incoming>,
    from: IpAddr,
) -> Result<Reply, Fail> {
    let path = req.uri().path().to_string();
    let method = req.method().clone();
    if !path.starts_with("/api/") && path != "/metrics" {
        return super::dashboard::asset(&method, &path).ok_or_else(not_found);
    }
    if path == "/api/v1/login" && method == Method::POST {
        return login(shared, req, from).await;
    }
    let caller = caller(shared, &req, from)?;
    let need = if method == Method::GET {
        Role::Viewer
    } else {
        Role::Operator
    };
    if !caller.role.may(need) {
        return Err((
            StatusCode::FORBIDDEN,
            format!("a {} may not do this", caller.role.as_str()),
        ));
    }
    if method != Method::GET && !caller.csrf_ok {
        return Err((
            StatusCode::FORBIDDEN,
            "missing or wrong X-CSRF-Token".into(),
        ));
    }
    if path == "/metrics" {
        return Ok(text(
            super::metrics::render(shared).await,
            "text/plain; version=0.0.4",
        ));
    }
    let query = req.uri().query().unwrap_or("").to_string();
    let idem = header(&req, "idempotency-key");
    let body = read_body(req).await?;
    let parts: Vec<&str> = path.trim_start_matches("/api/v1/").split('/').collect();
    match (method, parts.as_slice()) {
        (Method::GET, ["status"]) => ask(shared, Request::Status).await,
        (Method::GET, ["jobs"]) => jobs(shared, &query).await,
        (Method::POST, ["jobs"]) => submit(shared, &body, idem).await,
        (Method::GET, ["jobs", id]) => job(shared, id).await,
        (Method::POST, ["jobs", id, verb]) => cancel_or_retry(shared, id, verb).await,
        (Method::GET, ["hotfolders"]) => hotfolders(shared).await,
        (Method::POST, ["hotfolders", name, verb]) => pause(shared, name, verb).await,
        (Method::GET, ["scripts"]) => ask(shared, Request::Scripts { stale: false }).await,
        (Method::GET, ["events"]) => events(shared.clone()),
        (Method::POST, ["logout"]) => Ok(logout()),
        _ => Err(not_found()),
    }
}

fn not_found() -> Fail {
    (StatusCode::NOT_FOUND, "no such resource".into())
}

fn header(req: &hyper::Request<Incoming>, name: &str) -> Option<String> {
    req.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

fn caller(shared: &Shared, req: &hyper::Request<Incoming>, from: IpAddr) -> Result<Caller, Fail> {
    if let Some(auth) = header(req, "authorization") {
        let token = auth.strip_prefix("Bearer ").unwrap_or("");
        let role = token_role(shared, token, from)?;
        return Ok(Caller {
            role,
            csrf_ok: true,
        });
    }
    if let Some(id) = cookie(req, "claro_session") {
        let sessions = shared.http.sessions.lock().expect("sessions lock");
        if let Some(s) = sessions.get(&id, now_ms()) {
            let sent = header(req, "x-csrf-token").unwrap_or_default();
            let csrf_ok = access::same_secret(&sent, &s.csrf);
            return Ok(Caller {
                role: s.role,
                csrf_ok,
            });
        }
    }
    let open = !shared.cfg.http_login && from.is_loopback();
    if open {
        // The quickstart: a loopback client on a loopback address. A
        // browser's cross-site POST still needs the dashboard's header.
        let csrf_ok = header(req, "x-claro").is_some() || header(req, "origin").is_none();
        return Ok(Caller {
            role: Role::Admin,
            csrf_ok,
        });
    }
    Err((
        StatusCode::UNAUTHORIZED,
        "log in: send Authorization: Bearer TOKEN (claro token add)".into(),
    ))
}

/// The role of `token`; failed attempts count against `from`.
fn token_role(shared: &Shared, token: &str, from: IpAddr) -> Result<Role, Fail> {
    let mut logins = shared.http.logins.lock().expect("logins lock");
    if !logins.allows(from, now_ms()) {
        return Err((
            StatusCode::TOO_MANY_REQUESTS,
            format!(
                "more than {} failed logins from {from} in a minute; wait",
                access::FAILED_LOGINS_PER_MINUTE_MAX
            ),
        ));
    }
    let found = access::check_token_form(token).ok().and_then(|()| {
        let guard = shared.core();
        let core = guard.as_ref()?;
        crate::state::tokens::by_hash(core.state().conn(), &access::token_hash(token)).ok()?
    });
    match found {
        Some((_, role)) => Ok(role),
        None => {
            logins.failed(from, now_ms());
            Err((StatusCode::UNAUTHORIZED, "unknown or revoked token".into()))
        }
    }
}

fn cookie(req: &hyper::Request<Incoming>, name: &str) -> Option<String> {
    let all = header(req, "cookie")?;
    all.split(';')
        .filter_map(|c| c.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_string())
}

async fn login(
    shared: &Shared,
    req: hyper::Request<Incoming>,
    from: IpAddr,
) -> Result<Reply, Fail> {
    let body = read_body(req).await?;
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Login {
        token: String,
    }
    let login: Login = parse_json(&body)?;
    let role = token_role(shared, &login.token, from)?;
    let (id, csrf) = {
        let mut sessions = shared.http.sessions.lock().expect("sessions lock");
        let id = sessions.open("dashboard", role, rand::random(), now_ms());
        let csrf = sessions
            .get(&id, now_ms())
            .expect("just opened")
            .csrf
            .clone();
        (id, csrf)
    };
    let mut reply = json_reply(StatusCode::OK, &json!({"role": role, "csrf": csrf}));
    let cookie = format!("claro_session={id}; HttpOnly; SameSite=Strict; Path=/");
    reply
        .headers_mut()
        .insert("set-cookie", HeaderValue::from_str(&cookie).expect("ascii"));
    Ok(reply)
}

fn logout() -> Reply {
    let mut reply = json_reply(StatusCode::OK, &json!({"ok": true}));
    let cookie = "claro_session=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0";
    reply
        .headers_mut()
        .insert("set-cookie", HeaderValue::from_static(cookie));
    reply
}

// ---------------------------------------------------------------------------
// The API

async fn ask(shared: &Arc<Shared>, req: Request) -> Result<Reply, Fail> {
    let resp = super::handlers::respond(shared, None, req).await;
    let value = match resp {
        Response::Status(v) => json!(v),
        Response::Scripts { scripts } => json!(scripts
            .iter()
            .map(|s| json!({"name": s.name, "version": s.version, "added_at": crate::output::rfc3339(s.added_ms)}))
            .collect::<Vec<_>>()),
        other => return Err(failure(other)),
    };
    Ok(json_reply(StatusCode::OK, &value))
}

/// An error answer of an instance, with the HTTP status that fits.
fn failure(resp: Response) -> Fail {
    match resp {
        Response::Error { message } => {
            let lower = message.to_lowercase();
            let status = if lower.contains("no coordinator")
                || lower.contains("not answer")
                || lower.contains("try again")
            {
                StatusCode::SERVICE_UNAVAILABLE
            } else {
                StatusCode::BAD_REQUEST
            };
            (status, message)
        }
        other => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("unexpected answer: {other:?}"),
        ),
    }
}

async fn jobs(shared: &Arc<Shared>, query: &str) -> Result<Reply, Fail> {
    let mut filter = JobFilter::default();
    let mut limit = 50;
    for (k, v) in query
        .split('&')
        .filter(|p| !p.is_empty())
        .filter_map(|p| p.split_once('='))
    {
        let v = percent_decode(v);
        let bad = |what: &str| (StatusCode::BAD_REQUEST, format!("{k}={v}: {what}"));
        match k {
            "state" => {
                filter.state = Some(JobState::parse(&v).ok_or_else(|| bad("not a job state"))?)
            }
            "kind" => filter.kind = Some(JobKind::parse(&v).ok_or_else(|| bad("not a job kind"))?),
            "instance" => filter.instance = Some(v),
            "hotfolder" => filter.hotfolder = Some(v),
            "before" => filter.before = Some(v),
            "limit" => {
                limit = v
                    .parse()
                    .ok()
                    .filter(|n| (1..=JOBS_PAGE_MAX).contains(n))
                    .ok_or_else(|| bad(&format!("a number 1..={JOBS_PAGE_MAX}")))?
            }
            _ => return Err((StatusCode::BAD_REQUEST, format!("unknown parameter `{k}`"))),
        }
    }
    let req = Request::Jobs {
        filter,
        limit,
        stale: false,
    };
    match super::handlers::respond(shared, None, req).await {
        Response::Jobs { jobs, .. } => {
            let list: Vec<JobJson> = jobs.iter().map(|j| JobJson::new(j, false)).collect();
            let next = (jobs.len() == limit as usize)
                .then(|| jobs.last().map(|j| j.id.clone()))
                .flatten();
            Ok(json_reply(
                StatusCode::OK,
                &json!({"jobs": list, "next_before": next}),
            ))
        }
        other => Err(failure(other)),
    }
}

async fn job(shared: &Arc<Shared>, id: &str) -> Result<Reply, Fail> {
    crate::jobs::check_job_id(id).map_err(|e| (StatusCode::NOT_FOUND, e))?;
    let req = Request::Job {
        id: id.to_string(),
        stale: false,
    };
    match super::handlers::respond(shared, None, req).await {
        Response::Job { job: Some(job), .. } => {
            let mut value = json!(JobJson::new(&job, true));
            value["profile"] = json!(job.profile);
            Ok(json_reply(StatusCode::OK, &value))
        }
        Response::Job { job: None, .. } => Err((StatusCode::NOT_FOUND, format!("no job {id}"))),
        other => Err(failure(other)),
    }
}

/// What `POST /api/v1/jobs` takes: a script's code or a stored script's
/// name, with the options of `claro submit`.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Submission {
    script: Option<String>,
    stored: Option<String>,
    #[serde(default)]
    args: Vec<String>,
    priority: Option<i32>,
    max_attempts: Option<u32>,
    timeout_s: Option<u64>,
}

async fn submit(shared: &Arc<Shared>, body: &[u8], idem: Option<String>) -> Result<Reply, Fail> {
    let s: Submission = parse_json(body)?;
    let bad = |m: String| (StatusCode::BAD_REQUEST, m);
    let mut spec = match (s.script, s.stored) {
        (Some(code), None) => {
            crate::script::check(&code).map_err(|e| bad(format!("script: {e}")))?;
            JobSpec::script(&code)
        }
        (None, Some(name)) => {
            let mut spec = JobSpec::script("");
            spec.stored = Some(name);
            spec
        }
        _ => {
            return Err(bad(
                "give one of `script` (code) or `stored` (a stored script's name)".into(),
            ))
        }
    };
    spec.args = s.args;
    spec.priority = s.priority.unwrap_or(spec.priority);
    spec.max_attempts = s.max_attempts.unwrap_or(spec.max_attempts);
    spec.timeout_ms = s
        .timeout_s
        .map_or(spec.timeout_ms, |t| t.saturating_mul(1000));
    spec.validate().map_err(bad)?;
    let id = crate::jobs::new_job_id(now_ms(), rand::random());
    let request_id = match &idem {
        Some(key) if key.is_empty() || key.len() > 64 => {
            return Err(bad("Idempotency-Key: 1 to 64 characters".into()))
        }
        Some(key) => format!("http:{key}"),
        None => id.clone(),
    };
    let command = Command::JobSubmit {
        id: id.clone(),
        spec,
        at_ms: now_ms(),
    };
    command.validate().map_err(bad)?;
    let req = Request::propose(command, Some(request_id.clone()));
    match super::handlers::respond(shared, None, req).await {
        Response::Proposed { .. } => {}
        other => return Err(failure(other)),
    }
    // A retried keyed POST made no new job: answer with the first one's.
    let made = super::handlers::read(shared, false, |core, _| {
        match core.state().request_job(&request_id) {
            Ok(Some(job)) => Response::Value {
                value: Some(serde_bytes::ByteBuf::from(job.into_bytes())),
                stale: None,
            },
            _ => Response::Value {
                value: None,
                stale: None,
            },
        }
    })
    .await;
    let id = match made {
        Response::Value { value: Some(v), .. } => String::from_utf8_lossy(&v).into_owned(),
        _ => id,
    };
    let mut reply = job(shared, &id).await?;
    *reply.status_mut() = StatusCode::CREATED;
    Ok(reply)
}

async fn cancel_or_retry(shared: &Arc<Shared>, id: &str, verb: &str) -> Result<Reply, Fail> {
    crate::jobs::check_job_id(id).map_err(|e| (StatusCode::NOT_FOUND, e))?;
    job(shared, id).await?; // 404 for an unknown id
    let (id, at_ms) = (id.to_string(), now_ms());
    let command = match verb {
        "cancel" => Command::JobCancel {
            id: id.clone(),
            at_ms,
        },
        "retry" => Command::JobRetry {
            id: id.clone(),
            at_ms,
        },
        _ => return Err(not_found()),
    };
    write(shared, command).await?;
    job(shared, &id).await
}

async fn write(shared: &Arc<Shared>, command: Command) -> Result<(), Fail> {
    let req = Request::propose(command, Some(crate::proto::new_request_id()));
    match super::handlers::respond(shared, None, req).await {
        Response::Proposed { .. } => Ok(()),
        other => Err(failure(other)),
    }
}

async fn hotfolders(shared: &Arc<Shared>) -> Result<Reply, Fail> {
    match super::handlers::respond(shared, None, Request::Hotfolders { stale: false }).await {
        Response::Hotfolders { hotfolders, .. } => {
            let list: Vec<Value> = hotfolders
                .iter()
                .map(|(d, c)| {
                    json!({
                        "name": d.name, "paused": d.paused, "waiting": c.waiting,
                        "in_progress": c.in_progress, "done_last_hour": c.done_last_hour,
                        "failed_last_hour": c.failed_last_hour,
                    })
                })
                .collect();
            Ok(json_reply(StatusCode::OK, &json!(list)))
        }
        other => Err(failure(other)),
    }
}

async fn pause(shared: &Arc<Shared>, name: &str, verb: &str) -> Result<Reply, Fail> {
    let paused = match verb {
        "pause" => true,
        "resume" => false,
        _ => return Err(not_found()),
    };
    crate::hotfolder::check_name(name).map_err(|e| (StatusCode::NOT_FOUND, e))?;
    // The state machine ignores a pause of an unknown hotfolder: say so here.
    match super::handlers::respond(shared, None, Request::Hotfolders { stale: false }).await {
        Response::Hotfolders { hotfolders, .. }
            if hotfolders.iter().any(|(d, _)| d.name == name) => {}
        Response::Hotfolders { .. } => {
            return Err((StatusCode::NOT_FOUND, format!("no hotfolder `{name}`")))
        }
        other => return Err(failure(other)),
    }
    write(
        shared,
        Command::HotfolderPause {
            name: name.to_string(),
            paused,
        },
    )
    .await?;
    hotfolders(shared).await
}

/// `GET /api/v1/events`: a `change` event with the applied index whenever
/// this instance applied new entries, and a comment as keep-alive.
fn events(shared: Arc<Shared>) -> Result<Reply, Fail> {
    let http = &shared.http;
    if http.streams.fetch_add(1, Ordering::SeqCst) >= EVENT_STREAMS_MAX {
        http.streams.fetch_sub(1, Ordering::SeqCst);
        return Err((
            StatusCode::TOO_MANY_REQUESTS,
            format!("more than {EVENT_STREAMS_MAX} event streams"),
        ));
    }
    let guard = StreamGuard(shared.clone());
    let state = (guard, 0u64, Instant::now());
    let stream = futures_lite::stream::unfold(state, |(guard, last, mut beat)| async move {
        loop {
            let applied = guard.0.core().as_ref().map_or(0, |c| c.applied_index());
            if applied != last {
                let ev = format!("event: change\ndata: {{\"applied_index\":{applied}}}\n\n");
                return Some((Ok(Frame::data(Bytes::from(ev))), (guard, applied, beat)));
            }
            if beat.elapsed() >= Duration::from_millis(EVENTS_KEEPALIVE_MS) {
                beat = Instant::now();
                return Some((
                    Ok(Frame::data(Bytes::from_static(b": keep-alive\n\n"))),
                    (guard, last, beat),
                ));
            }
            async_std::task::sleep(Duration::from_millis(EVENTS_POLL_MS)).await;
        }
    });
    let mut reply = hyper::Response::new(StreamBody::new(stream).boxed_unsync());
    let h = reply.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    h.insert("cache-control", HeaderValue::from_static("no-cache"));
    Ok(reply)
}

/// Counts an open event stream; dropped with it.
struct StreamGuard(Arc<Shared>);

impl Drop for StreamGuard {
    fn drop(&mut self) {
        self.0.http.streams.fetch_sub(1, Ordering::SeqCst);
    }
}

// ---------------------------------------------------------------------------
// Bodies and answers

async fn read_body(req: hyper::Request<Incoming>) -> Result<Bytes, Fail> {
    match Limited::new(req.into_body(), BODY_BYTES_MAX)
        .collect()
        .await
    {
        Ok(b) => Ok(b.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err((
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the body is over {BODY_BYTES_MAX} bytes (BODY_BYTES_MAX)"),
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

pub(super) fn text(body: String, content_type: &'static str) -> Reply {
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
