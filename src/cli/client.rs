//! The client side of the CLI: connects to an instance over QUIC with the
//! cluster's client certificate and sends one request. Without `--server` it
//! connects to every server of the config at once and asks the first that
//! connects (this machine's own gets a head start), so any one being down
//! does not matter.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use crate::cli::exit::Failure;
use crate::cli::output;
use crate::cluster::membership::{self, ServerFacts};
use crate::config::Config;
use crate::proto::{Request, Response, StatusView, REQUEST_BYTES_MAX};
use crate::transport::{exchange, Endpoint};

/// Time to reach one instance.
const CONNECT_MS: u64 = 1_500;
/// Time one request may take (a proposal waits until applied).
const REQUEST_MS: u64 = 20_000;

#[derive(clap::Args, Debug, Clone, Default)]
pub struct ClientArgs {
    /// The instance to ask: a server name, or an IP or host name with or
    /// without :PORT (default: every server of the config at once; the
    /// first to answer does).
    #[arg(long)]
    pub server: Option<String>,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// Sends one request on a new stream of `conn` and reads its one response.
pub async fn request(
    conn: &quinn::Connection,
    req: &Request,
    timeout_ms: u64,
) -> Result<Response, String> {
    exchange(conn, req, REQUEST_BYTES_MAX, timeout_ms).await
}

/// A client endpoint with the cluster's client certificate.
pub fn endpoint(config: &Config, family_of: SocketAddr) -> Result<Endpoint, Failure> {
    let id = crate::tls::load_identity(&config.tls_dir, crate::tls::CLIENT_NAME)
        .map_err(|e| Failure::usage(format!("no client certificate: {e}")))?;
    let ip = match family_of.ip() {
        IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
    };
    Endpoint::bind_client(ip, &id).map_err(|e| Failure::failed(e.to_string()))
}

/// The instances to try: `--server`'s one, or every configured server.
pub(crate) fn targets(
    config: &Config,
    args: &ClientArgs,
) -> Result<Vec<(String, SocketAddr)>, Failure> {
    match &args.server {
        Some(s) => Ok(vec![resolve_server(config, s)?]),
        None => Ok(config
            .servers
            .iter()
            .map(|s| (s.name.clone(), s.address))
            .collect()),
    }
}

/// Head start of this machine's own server over the others: it answers
/// without a network hop, so it should win the race when it is up.
const LOCAL_HEAD_START_MS: u64 = 5;

/// Sends `req` to the first instance that completes the handshake; the
/// servers are tried all at once, so one that is down costs nothing. If the
/// exchange with that instance fails (it died), or it answers `Unavailable`
/// (cut off from the coordinator, as a server whose certificate was just
/// revoked is), the request goes to the next one that connected: requests
/// are safe to repeat (writes carry a request id). When every instance is
/// unavailable, the last one's answer is returned, saying why.
/// Returns who answered.
pub fn call(
    config: &Config,
    args: &ClientArgs,
    req: &Request,
) -> Result<(String, Response), Failure> {
    let targets = targets(config, args)?;
    let ep = endpoint(config, targets[0].1)?;
    let local = config.local_server(None).ok().map(|s| s.name.clone());
    let answer = async_std::task::block_on(async {
        let overall = Duration::from_millis(REQUEST_MS);
        async_std::future::timeout(overall, first_answer(&ep, &targets, local, req))
            .await
            .unwrap_or_else(|_| Err(format!("no answer within {REQUEST_MS} ms")))
    });
    ep.quinn.close(0u32.into(), b"done");
    answer.map_err(|e| Failure::failed(format!("no instance reachable: {e}")))
}

/// How long the instance asked may take before the request also goes to
/// the next one that connected (the same request: writes carry their
/// request id, so it is applied once whoever answers). A server frozen or
/// overloaded right after it took the request costs this, not its freeze.
const HEDGE_MS: u64 = 1_000;
// A held job read (`claro wait`) must answer before the hedge.
const _: () = assert!(crate::proto::JOB_WAIT_MS_MAX + 100 < HEDGE_MS);

/// What a request to one instance came to.
type Answer = (String, SocketAddr, Result<Response, String>);

async fn first_answer(
    ep: &Endpoint,
    targets: &[(String, SocketAddr)],
    local: Option<String>,
    req: &Request,
) -> Result<(String, Response), String> {
    let (conn_tx, conns) = async_std::channel::bounded(targets.len());
    for (name, addr) in targets {
        let delay_ms = match &local {
            Some(l) if l != name && targets.len() > 1 => LOCAL_HEAD_START_MS,
            _ => 0,
        };
        let (ep, name, addr, tx) = (ep.clone(), name.clone(), *addr, conn_tx.clone());
        async_std::task::spawn(async move {
            async_std::task::sleep(Duration::from_millis(delay_ms)).await;
            let conn = ep.connect(addr, &name, CONNECT_MS).await;
            let _ = tx.send((name, addr, conn)).await;
        });
    }
    let (answer_tx, answers) = async_std::channel::bounded::<Answer>(targets.len());
    let mut asked = Asked::default();
    let mut connects_left = targets.len();
    loop {
        // Nothing in flight: wait for the next instance to connect.
        if asked.in_flight == 0 {
            if connects_left == 0 {
                break;
            }
            let Ok(next) = conns.recv().await else { break };
            connects_left -= 1;
            asked.send(next, req, &answer_tx);
            continue;
        }
        let hedge = async {
            async_std::task::sleep(Duration::from_millis(HEDGE_MS)).await;
            None
        };
        match futures_lite::future::or(async { answers.recv().await.ok() }, hedge).await {
            Some((name, addr, result)) => {
                asked.in_flight -= 1;
                if let Some(r) = asked.take(name, addr, result) {
                    return Ok(r);
                }
                // An instance that refused while another still works on the
                // same request: the other's answer counts (it may have
                // applied the write); the refusal only if it fails too.
                if asked.in_flight == 0 {
                    if let Some(r) = asked.refused.take() {
                        return Ok(r);
                    }
                }
            }
            // Slow: the next instance that connected is asked too, when
            // the request may be sent twice.
            None => {
                if !req.repeatable() {
                    continue;
                }
                if let Ok(next) = conns.try_recv() {
                    connects_left -= 1;
                    asked.send(next, req, &answer_tx);
                }
            }
        }
    }
    asked
        .refused
        .or(asked.unavailable)
        .ok_or_else(|| asked.errors.join("; "))
}

/// The instances a request went to, and what the ones that answered said.
#[derive(Default)]
struct Asked {
    in_flight: usize,
    errors: Vec<String>,
    unavailable: Option<(String, Response)>,
    /// The first refusal (`Error`), held while another instance still has
    /// the request.
    refused: Option<(String, Response)>,
}

impl Asked {
    /// Sends `req` to a connected instance on a task of its own; a failed
    /// connection is an error at once.
    fn send(
        &mut self,
        (name, addr, conn): (
            String,
            SocketAddr,
            Result<quinn::Connection, crate::transport::WireError>,
        ),
        req: &Request,
        answers: &async_std::channel::Sender<Answer>,
    ) {
        let conn = match conn {
            Ok(c) => c,
            Err(e) => return self.errors.push(format!("{name} ({addr}): {e}")),
        };
        self.in_flight += 1;
        let (req, tx) = (req.clone(), answers.clone());
        async_std::task::spawn(async move {
            let result = request(&conn, &req, REQUEST_MS).await;
            let _ = tx.send((name, addr, result)).await;
        });
    }

    /// An answer: the one to return, or noted (unavailable, an error).
    fn take(
        &mut self,
        name: String,
        addr: SocketAddr,
        result: Result<Response, String>,
    ) -> Option<(String, Response)> {
        match result {
            Ok(r @ Response::Unavailable { .. }) => self.unavailable = Some((name, r)),
            Ok(r @ Response::Error { .. }) if self.in_flight > 0 => {
                self.refused.get_or_insert((name, r));
            }
            Ok(r) => return Some((name, r)),
            Err(e) => self.errors.push(format!("{name} ({addr}): {e}")),
        }
        None
    }
}

async fn call_one(
    ep: &Endpoint,
    name: &str,
    addr: SocketAddr,
    req: &Request,
) -> Result<Response, String> {
    let conn = ep
        .connect(addr, name, CONNECT_MS)
        .await
        .map_err(|e| e.to_string())?;
    let r = request(&conn, req, REQUEST_MS).await;
    conn.close(0u32.into(), b"done");
    r
}

pub fn status(config: &Config, args: &ClientArgs) -> Result<(), Failure> {
    let (_, resp) = call(config, args, &Request::Status)?;
    let view = match resp {
        Response::Status(v) => v,
        other => return Err(failure_of(other)),
    };
    match args.json {
        true => output::emit(&output::json_line(&view)),
        false => output::emit(&render_status(&view)),
    }
}

pub fn render_status(v: &StatusView) -> String {
    let source = match (v.from_coordinator, &v.coordinator) {
        (true, _) => format!("answered by {}, the coordinator", v.answered_by),
        (false, Some(c)) => format!(
            "answered by {} from its own live view: the coordinator {c} did not answer in time",
            v.answered_by
        ),
        (false, None) => format!(
            "answered by {} from its own live view: it knows no coordinator",
            v.answered_by
        ),
    };
    let mut out = format!(
        "cluster {}  coordinator {}  term {}  commit index {}\n({source})\n",
        v.cluster_id.as_deref().unwrap_or("-"),
        v.coordinator.as_deref().unwrap_or("none"),
        v.term,
        v.commit_index,
    );
    out += &format!(
        "{:<16} {:<22} {:<8} {:<12} {:<10} {:<13} {:<10} {}\n",
        "NAME", "ADDRESS", "ROLE", "STATE", "CONNECTED", "SYNCHRONIZED", "APPLIED", "LAST HEARD"
    );
    for s in &v.servers {
        out += &format!(
            "{:<16} {:<22} {:<8} {:<12} {:<10} {:<13} {:<10} {}\n",
            s.name,
            s.address,
            s.role,
            s.state,
            if s.connected { "yes" } else { "no" },
            if s.synchronized { "yes" } else { "no" },
            s.applied_index,
            heard_ago(s.heard_ago_ms),
        );
    }
    for s in &v.servers {
        if let Some(note) = &s.note {
            out += &format!("{}: {note}\n", s.name);
        }
    }
    for a in &v.alerts {
        out += &format!(
            "ALERT {} ({}): {}\n",
            a.name,
            a.severity,
            output::escape_text(&a.message)
        );
    }
    out
}

fn heard_ago(ms: Option<u64>) -> String {
    match ms {
        None => "never".into(),
        Some(0) => "now".into(),
        Some(ms) => format!("{:.1} s ago", ms as f64 / 1000.0),
    }
}

/// What is known of each server: asked live where it answers, else read from
/// its data directory when that is on this machine.
fn server_facts(
    config: &Config,
    data_dirs: &[PathBuf],
    ep: &Endpoint,
) -> Vec<(ServerFacts, &'static str)> {
    // Every server at once: one that is down costs one handshake limit in all.
    let asks: Vec<_> = config
        .servers
        .iter()
        .map(|s| {
            let (ep, name, addr) = (ep.clone(), s.name.clone(), s.address);
            async_std::task::spawn(async move { call_one(&ep, &name, addr, &Request::Info).await })
        })
        .collect();
    let answers: Vec<_> = async_std::task::block_on(async {
        let mut out = Vec::with_capacity(asks.len());
        for a in asks {
            out.push(a.await);
        }
        out
    });
    config
        .servers
        .iter()
        .zip(answers)
        .map(|(s, live)| {
            if let Ok(Response::Info(i)) = live {
                let running_member = i.is_member && i.leader.is_some();
                let facts = ServerFacts {
                    name: s.name.clone(),
                    applied_index: i.initialized.then_some(i.applied_index),
                    last_stop: i.last_stop,
                    running_member,
                };
                return (facts, output::SOURCE_RUNNING);
            }
            let id = crate::consensus::raft_id(&s.name);
            let dirs = std::iter::once(config.server_dir(&s.name))
                .chain(data_dirs.iter().map(|d| d.join(&s.name)));
            // The newest copy found, if several folders hold one.
            let (local, dir) = dirs
                .map(|d| (crate::data_dir::read_facts(&d, id), d))
                .max_by_key(|(f, _)| (f.initialized, f.applied_index))
                .expect("at least the config's data_dir");
            let facts = ServerFacts {
                name: s.name.clone(),
                applied_index: local.initialized.then_some(local.applied_index),
                last_stop: crate::data_dir::read_record(&dir),
                running_member: false,
            };
            (
                facts,
                if local.initialized {
                    output::SOURCE_LOCAL_DATA
                } else {
                    output::SOURCE_UNKNOWN
                },
            )
        })
        .collect()
}

pub fn start_order(
    config: &Config,
    data_dirs: &[PathBuf],
    args: &ClientArgs,
) -> Result<(), Failure> {
    let first = config.servers[0].address;
    let ep = endpoint(config, first)?;
    let facts = server_facts(config, data_dirs, &ep);
    let plain: Vec<ServerFacts> = facts.iter().map(|(f, _)| f.clone()).collect();
    let order: Vec<output::StartOrderEntry> = membership::start_order(&plain)
        .into_iter()
        .map(|name| {
            let (f, source) = facts
                .iter()
                .find(|(f, _)| f.name == name)
                .expect("ordered from facts");
            output::StartOrderEntry {
                name,
                applied_index: f.applied_index,
                source,
                last_stop: f.last_stop.clone(),
            }
        })
        .collect();
    match args.json {
        true => output::emit(&output::json_line(&output::StartOrderJson { order })),
        false => output::emit(&output::start_order_text(&order)),
    }
}

/// Resolves `--server` (a name, an IP or host name, with or without a
/// port) to the config's server; see [`Config::server_by_arg`].
pub fn resolve_server(config: &Config, arg: &str) -> Result<(String, SocketAddr), Failure> {
    config
        .server_by_arg(arg)
        .map(|s| (s.name.clone(), s.address))
        .map_err(|e| Failure::usage(format!("--server {e}")))
}

/// The failure an unexpected or refusing answer means.
pub(crate) fn failure_of(resp: Response) -> Failure {
    match resp {
        Response::Error { message }
        | Response::Unavailable { message }
        | Response::Refused {
            reason: message, ..
        } => Failure::failed(message),
        Response::NotLeader { leader } => Failure::failed(format!(
            "not the coordinator (coordinator: {})",
            leader.as_deref().unwrap_or("none known")
        )),
        other => Failure::failed(format!("unexpected answer: {other:?}")),
    }
}

/// `claro settings get KEY`: a missing key fails (exit 1) in both modes.
pub fn settings_get(
    config: &Config,
    args: &ClientArgs,
    key: &str,
    stale: bool,
) -> Result<(), Failure> {
    let req = Request::Get {
        key: key.into(),
        stale,
    };
    let answer = call(config, args, &req)?.1;
    if let Response::Value { stale: Some(s), .. } = &answer {
        print_staleness(Some(s));
    }
    match answer {
        Response::Value { value: Some(v), .. } if args.json => {
            output::emit(&output::json_line(&output::SettingJson::new(key, &v)))
        }
        Response::Value { value: Some(v), .. } => output::emit(&output::value_text(&v)),
        Response::Value { value: None, .. } => Err(Failure::failed(format!(
            "no setting `{}`",
            output::escape_text(key)
        ))),
        other => Err(failure_of(other)),
    }
}

/// `claro settings set KEY ...`: the value was read and checked by the caller.
pub fn settings_set(
    config: &Config,
    args: &ClientArgs,
    key: String,
    value: Vec<u8>,
) -> Result<(), Failure> {
    let command = crate::state::Command::Put {
        key: key.clone(),
        value,
    };
    command.validate().map_err(Failure::usage)?;
    let req = Request::propose(command, Some(crate::proto::new_request_id()));
    match call(config, args, &req)?.1 {
        Response::Proposed { index } if args.json => {
            output::emit(&output::json_line(&output::SetJson {
                key,
                applied_index: index,
            }))
        }
        Response::Proposed { index } => output::emit(&output::set_text(index)),
        other => Err(failure_of(other)),
    }
}

/// `claro settings list`: one page; the way to the next one is in
/// `next_after` (JSON) or a note on stderr (text).
pub fn settings_list(
    config: &Config,
    args: &ClientArgs,
    after: Option<String>,
    limit: u32,
    stale: bool,
) -> Result<(), Failure> {
    let req = Request::List(crate::proto::ListQuery {
        after,
        limit: Some(limit),
        stale,
    });
    let (items, next_after) = match call(config, args, &req)?.1 {
        Response::List {
            items,
            next_after,
            stale,
        } => {
            print_staleness(stale.as_ref());
            (items, next_after)
        }
        other => return Err(failure_of(other)),
    };
    let items: Vec<(String, Vec<u8>)> = items.into_iter().map(|(k, v)| (k, v.into_vec())).collect();
    if args.json {
        let page = output::ListJson {
            items: items
                .iter()
                .map(|(k, v)| output::SettingJson::new(k, v))
                .collect(),
            next_after,
        };
        return output::emit(&output::json_line(&page));
    }
    output::emit(&output::list_text(&items))?;
    if let Some(next) = next_after {
        let given = (limit != crate::proto::LIST_COUNT_DEFAULT).then_some(limit);
        output::note(&output::next_page_hint(&next, given));
    }
    Ok(())
}

/// `claro coordinator transfer NAME`.
pub fn transfer(config: &Config, args: &ClientArgs, name: &str) -> Result<(), Failure> {
    let req = Request::Transfer { name: name.into() };
    match call(config, args, &req)?.1 {
        Response::Ok { .. } if args.json => {
            output::emit(&output::json_line(&output::TransferJson {
                coordinator: name.into(),
            }))
        }
        Response::Ok { message } => output::emit(&format!("{message}\n")),
        other => Err(failure_of(other)),
    }
}

/// Longest `claro stop` waits for the instance to exit.
const STOP_WAIT_MS: u64 = 30_000;
/// Handshake limit of one look at a stopping instance: one that has exited
/// does not answer at all (a refusal means it is still closing).
const STOP_PROBE_MS: u64 = 500;
/// Pause between two looks.
const STOP_POLL_MS: u64 = 100;

/// `claro stop NAME`: asks NAME (through any instance) to stop gracefully,
/// then, with `wait`, looks at it until it has exited.
pub fn stop(config: &Config, args: &ClientArgs, name: &str, wait: bool) -> Result<(), Failure> {
    let req = Request::Stop { name: name.into() };
    match call(config, args, &req)?.1 {
        Response::Ok { .. } => {}
        other => return Err(failure_of(other)),
    }
    if wait {
        wait_exited(config, name)?;
    }
    match args.json {
        true => output::emit(&output::json_line(&output::StopJson {
            name: name.into(),
            stopped: wait,
        })),
        false => output::emit(&output::stop_text(name, wait)),
    }
}

/// Waits until `name` no longer completes a handshake nor refuses one within
/// `STOP_PROBE_MS`: its process, which closes its endpoint last, is gone.
fn wait_exited(config: &Config, name: &str) -> Result<(), Failure> {
    let server = config
        .server(name)
        .ok_or_else(|| Failure::usage(format!("no server named `{name}` in the config")))?;
    let (addr, sni) = (server.address, server.name.clone());
    let ep = endpoint(config, addr)?;
    let gone = async_std::task::block_on(async {
        let deadline = std::time::Instant::now() + Duration::from_millis(STOP_WAIT_MS);
        while std::time::Instant::now() < deadline {
            let started = std::time::Instant::now();
            match ep.connect(addr, &sni, STOP_PROBE_MS).await {
                Ok(conn) => conn.close(0u32.into(), b"done"),
                // Nothing answered at all: nobody listens there any more.
                Err(_) if started.elapsed() >= Duration::from_millis(STOP_PROBE_MS) => return true,
                Err(_) => {}
            }
            async_std::task::sleep(Duration::from_millis(STOP_POLL_MS)).await;
        }
        false
    });
    ep.quinn.close(0u32.into(), b"done");
    match gone {
        true => Ok(()),
        false => Err(Failure::failed(format!(
            "{name} did not stop within {STOP_WAIT_MS} ms: it still answers"
        ))),
    }
}

/// A stale read's age, on stderr (stdout carries the data).
pub(crate) fn print_staleness(stale: Option<&crate::proto::Staleness>) {
    let Some(s) = stale else { return };
    let contact = match s.coordinator_heard_ago_ms {
        Some(0) => "it is the coordinator".to_string(),
        Some(ms) => format!("coordinator last heard {:.1} s ago", ms as f64 / 1000.0),
        None => "it knows no coordinator".to_string(),
    };
    output::note(&format!(
        "stale read: {}'s replica at applied index {} ({contact})",
        s.answered_by, s.applied_index
    ));
}

/// `claro log-level FILTER`: every server of the config (or `--server`'s)
/// gets the filter; prints `NAME: FILTER` per server. A filter that does
/// not parse is exit 2 before anything is sent; a server that could not
/// be reached or refused makes it exit 1, naming it (the others keep the
/// new filter).
pub fn log_level(config: &Config, args: &ClientArgs, filter: &str) -> Result<(), Failure> {
    crate::logging::parse_filter(filter).map_err(Failure::usage)?;
    let req = Request::LogLevel {
        filter: filter.to_string(),
    };
    // Every server at once: one that is down costs one handshake limit in
    // all, not one each.
    let targets = targets(config, args)?;
    let answers: Vec<_> = std::thread::scope(|s| {
        let asks: Vec<_> = targets
            .iter()
            .map(|(name, _)| {
                let one = ClientArgs {
                    server: Some(name.clone()),
                    json: args.json,
                };
                let req = &req;
                (name.clone(), s.spawn(move || call(config, &one, req)))
            })
            .collect();
        asks.into_iter()
            .map(|(name, ask)| (name, ask.join().expect("a log-level call")))
            .collect()
    });
    let (mut done, mut failed) = (Vec::new(), Vec::new());
    for (name, answer) in answers {
        match answer {
            Ok((_, Response::Ok { message })) => done.push((name, message)),
            Ok((_, other)) => failed.push(format!("{name}: {}", failure_of(other).message)),
            Err(f) => failed.push(format!("{name}: {}", f.message)),
        }
    }
    if !failed.is_empty() {
        let set: Vec<&str> = done.iter().map(|(n, _)| n.as_str()).collect();
        return Err(Failure::failed(format!(
            "the log filter was not set on {} (set on: {})",
            failed.join("; "),
            if set.is_empty() {
                "none".into()
            } else {
                set.join(", ")
            }
        )));
    }
    if args.json {
        let items: Vec<serde_json::Value> = done
            .iter()
            .map(|(n, f)| serde_json::json!({"server": n, "filter": f}))
            .collect();
        return output::emit(&output::json_line(&items));
    }
    let text: String = done.iter().map(|(n, f)| format!("{n}: {f}\n")).collect();
    output::emit(&text)
}
