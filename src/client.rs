//! The client side of the CLI: connects to an instance over QUIC with the
//! cluster's client certificate and sends one request. Without `--server` it
//! tries the servers of the config in turn, so any one being down does not
//! matter.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use crate::config::Config;
use crate::exit::Failure;
use crate::membership::{self, ServerFacts};
use crate::proto::{Request, Response, StatusView, REQUEST_BYTES_MAX};
use crate::transport::{exchange, Endpoint};

/// Time to reach one instance.
const CONNECT_MS: u64 = 1_500;
/// Time one request may take (a proposal waits until applied).
const REQUEST_MS: u64 = 20_000;

#[derive(clap::Args, Debug, Clone, Default)]
pub struct ClientArgs {
    /// The instance to ask: a server name, or an IP or host name with or
    /// without :PORT (default: each server of the config in turn until one
    /// answers).
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
fn targets(config: &Config, args: &ClientArgs) -> Result<Vec<(String, SocketAddr)>, Failure> {
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
/// exchange with that instance fails (it died), the request goes to the next
/// one that connected: requests are safe to repeat (writes carry a request id).
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

async fn first_answer(
    ep: &Endpoint,
    targets: &[(String, SocketAddr)],
    local: Option<String>,
    req: &Request,
) -> Result<(String, Response), String> {
    let (tx, rx) = async_std::channel::bounded(targets.len());
    for (name, addr) in targets {
        let delay_ms = match &local {
            Some(l) if l != name && targets.len() > 1 => LOCAL_HEAD_START_MS,
            _ => 0,
        };
        let (ep, name, addr, tx) = (ep.clone(), name.clone(), *addr, tx.clone());
        async_std::task::spawn(async move {
            async_std::task::sleep(Duration::from_millis(delay_ms)).await;
            let conn = ep.connect(addr, &name, CONNECT_MS).await;
            let _ = tx.send((name, addr, conn)).await;
        });
    }
    let mut errors = Vec::new();
    for _ in 0..targets.len() {
        let Ok((name, addr, conn)) = rx.recv().await else {
            break;
        };
        let answer = match conn {
            Ok(conn) => request(&conn, req, REQUEST_MS).await,
            Err(e) => Err(e.to_string()),
        };
        match answer {
            Ok(r) => return Ok((name, r)),
            Err(e) => errors.push(format!("{name} ({addr}): {e}")),
        }
    }
    Err(errors.join("; "))
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

pub fn simple(config: &Config, args: &ClientArgs, req: Request) -> Result<(), Failure> {
    let (_, resp) = call(config, args, &req)?;
    print_response(resp, args.json)
}

pub fn status(config: &Config, args: &ClientArgs) -> Result<(), Failure> {
    let (_, resp) = call(config, args, &Request::Status)?;
    let view = match resp {
        Response::Status(v) => v,
        other => return print_response(other, args.json),
    };
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&view).expect("status encodes")
        );
    } else {
        print!("{}", render_status(&view));
    }
    Ok(())
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
                return (facts, "running");
            }
            let id = crate::node::raft_id(&s.name);
            let dirs = std::iter::once(config.server_dir(&s.name))
                .chain(data_dirs.iter().map(|d| d.join(&s.name)));
            // The newest copy found, if several folders hold one.
            let (local, dir) = dirs
                .map(|d| (crate::node::read_facts(&d, id), d))
                .max_by_key(|(f, _)| (f.initialized, f.applied_index))
                .expect("at least the config's data_dir");
            let facts = ServerFacts {
                name: s.name.clone(),
                applied_index: local.initialized.then_some(local.applied_index),
                last_stop: crate::node::read_record(&dir),
                running_member: false,
            };
            (
                facts,
                if local.initialized {
                    "local data"
                } else {
                    "unknown"
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
    let order = membership::start_order(&plain);
    if args.json {
        println!("{}", serde_json::to_string(&order).expect("order encodes"));
        return Ok(());
    }
    for (i, name) in order.iter().enumerate() {
        let (f, source) = facts
            .iter()
            .find(|(f, _)| &f.name == name)
            .expect("ordered from facts");
        let applied = f.applied_index.map_or("-".to_string(), |a| a.to_string());
        let stop = match &f.last_stop {
            Some(r) if r.left => {
                format!("left the cluster (remaining: {})", r.remaining.join(", "))
            }
            Some(_) => "stopped as a member".to_string(),
            None => String::new(),
        };
        println!(
            "{}. {name}  applied index {applied}  [{source}] {stop}",
            i + 1
        );
    }
    Ok(())
}

/// Resolves `--server` (a name, an IP or host name, with or without a
/// port) to the config's server; see [`Config::server_by_arg`].
pub fn resolve_server(config: &Config, arg: &str) -> Result<(String, SocketAddr), Failure> {
    config
        .server_by_arg(arg)
        .map(|s| (s.name.clone(), s.address))
        .map_err(|e| Failure::usage(format!("--server {e}")))
}

/// Prints a response for the simple commands; errors become failures.
pub fn print_response(resp: Response, json: bool) -> Result<(), Failure> {
    match resp {
        Response::Error { message } | Response::Refused { reason: message } => {
            Err(Failure::failed(message))
        }
        Response::NotLeader { leader } => Err(Failure::failed(format!(
            "not the coordinator (coordinator: {leader:?})"
        ))),
        other if json => {
            println!(
                "{}",
                serde_json::to_string(&other).expect("response encodes")
            );
            Ok(())
        }
        Response::Ok { message } => {
            println!("{message}");
            Ok(())
        }
        Response::Proposed { index } => {
            println!("applied at index {index}");
            Ok(())
        }
        Response::Value { value, stale } => {
            print_staleness(stale.as_ref());
            match value {
                Some(v) => {
                    println!("{}", String::from_utf8_lossy(&v));
                    Ok(())
                }
                None => Err(Failure::failed("no such setting")),
            }
        }
        Response::List { items, stale } => {
            print_staleness(stale.as_ref());
            for (k, v) in items {
                println!("{k} = {}", String::from_utf8_lossy(&v));
            }
            Ok(())
        }
        other => {
            println!("{other:?}");
            Ok(())
        }
    }
}

/// A stale read's age, on stderr (stdout carries the data).
fn print_staleness(stale: Option<&crate::proto::Staleness>) {
    let Some(s) = stale else { return };
    let contact = match s.coordinator_heard_ago_ms {
        Some(0) => "it is the coordinator".to_string(),
        Some(ms) => format!("coordinator last heard {:.1} s ago", ms as f64 / 1000.0),
        None => "it knows no coordinator".to_string(),
    };
    eprintln!(
        "stale read: {}'s replica at applied index {} ({contact})",
        s.answered_by, s.applied_index
    );
}
