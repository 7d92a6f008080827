//! `GET /api/v1/events`: server-sent events of what changed, so that no
//! client polls. One hub per instance watches the replica as soon as
//! something is applied (at least every `HUB_POLL_MS`) and publishes into a ring of `EVENTS_KEPT` events; each
//! stream follows the ring from where it joined and is woken at once.
//!
//! Events (each `data:` is a JSON object):
//! - `change` `{applied_index}`: new entries were applied here;
//! - `job` `{id, state, instance}`: a job was made or changed state or
//!   instance (every such change applied here, in order);
//! - `coordinator` `{name, term}`: the coordinator or the term changed;
//! - `server` `{name, state, connected}`: a server's state as seen here;
//! - `resync` `{}`: this stream missed events (it fell behind the ring, or
//!   the replica was replaced): reload what is shown.
//!
//! The deciding part, `Watcher`, is pure: it turns what the hub read into
//! events.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::StatusCode;
use serde_json::{json, Value};

use super::Web;
use super::{Fail, Reply};
use crate::state::job_events::{self, JobEvent};

pub const EVENTS_KEPT: usize = 4096;
const HUB_POLL_MS: u64 = 50;
/// The least time between two passes of the hub.
const HUB_GAP_MS: u64 = 5;
/// Server states are compared this often even when nothing was applied.
const SERVERS_POLL_MS: u64 = 1_000;
const JOB_EVENTS_PER_POLL_MAX: u32 = 1_000;
const EVENTS_KEEPALIVE_MS: u64 = 15_000;

/// What the hub read in one look.
#[derive(Debug, Default, Clone)]
pub struct Observation {
    pub applied_index: u64,
    pub job_events: Vec<JobEvent>,
    /// The feed's last sequence (lower than before: it restarted).
    pub job_last: u64,
    /// `None` when not read this time.
    pub coordinator: Option<(Option<String>, u64)>,
    pub servers: Option<Vec<(String, String, bool)>>,
}

/// Turns observations into events; remembers what it reported.
#[derive(Debug, Default)]
pub struct Watcher {
    applied_index: u64,
    pub job_seq: u64,
    coordinator: Option<(Option<String>, u64)>,
    last_known: Option<String>,
    servers: BTreeMap<String, (String, bool)>,
    pub coordinator_changes: u64,
}

impl Watcher {
    pub fn observe(&mut self, obs: Observation) -> Vec<(&'static str, Value)> {
        let mut out = Vec::new();
        if obs.job_last < self.job_seq {
            // A new connection to a replaced database: its feed restarted.
            self.job_seq = 0;
            out.push(("resync", json!({})));
        }
        for e in &obs.job_events {
            if e.seq > self.job_seq {
                self.job_seq = e.seq;
                out.push((
                    "job",
                    json!({"id": e.id, "state": e.state, "instance": e.instance}),
                ));
            }
        }
        if obs.applied_index != self.applied_index {
            self.applied_index = obs.applied_index;
            out.push(("change", json!({"applied_index": obs.applied_index})));
        }
        if let Some(c) = obs.coordinator {
            if self.coordinator.as_ref() != Some(&c) {
                // A change is a coordinator other than the last one known;
                // none known in between (an election under way) is none.
                if let Some(name) = &c.0 {
                    if self.last_known.as_ref().is_some_and(|k| k != name) {
                        self.coordinator_changes += 1;
                    }
                    self.last_known = Some(name.clone());
                }
                out.push(("coordinator", json!({"name": c.0, "term": c.1})));
                self.coordinator = Some(c);
            }
        }
        for (name, state, connected) in obs.servers.into_iter().flatten() {
            let now = (state, connected);
            if self.servers.get(&name) != Some(&now) {
                out.push((
                    "server",
                    json!({"name": name, "state": now.0, "connected": now.1}),
                ));
                self.servers.insert(name, now);
            }
        }
        out
    }
}

#[derive(Default)]
struct Ring {
    /// Sequence of the next event published.
    next: u64,
    events: VecDeque<(u64, Bytes)>,
}

/// The events published on this instance, for every stream.
#[derive(Default)]
pub struct Hub {
    ring: Mutex<Ring>,
    wake: event_listener::Event,
    /// Notified when entries were applied here (`Hub::applied`).
    applied: event_listener::Event,
    pub watcher: Mutex<Watcher>,
}

impl Hub {
    /// Entries were applied on this replica: the hub looks at once.
    pub fn applied(&self) {
        self.applied.notify(1);
    }

    fn publish(&self, events: Vec<(&'static str, Value)>) {
        if events.is_empty() {
            return;
        }
        let mut ring = self.ring.lock().expect("events lock");
        for (name, data) in events {
            let seq = ring.next;
            ring.next += 1;
            let text = format!("id: {seq}\nevent: {name}\ndata: {data}\n\n");
            if ring.events.len() == EVENTS_KEPT {
                ring.events.pop_front();
            }
            ring.events.push_back((seq, Bytes::from(text)));
        }
        drop(ring);
        self.wake.notify(usize::MAX);
    }

    /// The events from `cursor` on, joined, and the next cursor; `None`
    /// when some were dropped from the ring before this stream read them.
    fn read(&self, cursor: u64) -> (Option<Bytes>, u64, bool) {
        let ring = self.ring.lock().expect("events lock");
        let oldest = ring.events.front().map_or(ring.next, |e| e.0);
        let lost = cursor < oldest;
        let mut text = Vec::new();
        for (_, e) in ring.events.iter().filter(|(seq, _)| *seq >= cursor) {
            text.extend_from_slice(e);
        }
        (
            (!text.is_empty()).then(|| Bytes::from(text)),
            ring.next,
            lost,
        )
    }

    fn cursor(&self) -> u64 {
        self.ring.lock().expect("events lock").next
    }
}

/// Watches this instance's replica until the process ends: a pass as soon
/// as something is applied (woken by `Hub::applied`), at most one per
/// `HUB_GAP_MS` so that a busy replica is not read after every entry, and
/// at least one per `HUB_POLL_MS` (server states change without entries).
pub async fn hub_loop(web: Arc<Web>) {
    let mut servers_due = std::time::Instant::now();
    let mut last_applied = u64::MAX;
    loop {
        let applied = web.hub.applied.listen();
        hub_pass(&web, &mut servers_due, &mut last_applied);
        let _ = async_std::future::timeout(Duration::from_millis(HUB_POLL_MS), applied).await;
        async_std::task::sleep(Duration::from_millis(HUB_GAP_MS)).await;
    }
}

fn hub_pass(web: &Web, servers_due: &mut std::time::Instant, last_applied: &mut u64) {
    let with_servers = servers_due.elapsed() >= Duration::from_millis(SERVERS_POLL_MS);
    let Some(mut obs) = read_core(web) else {
        return;
    };
    if obs.applied_index == *last_applied && obs.job_events.is_empty() && !with_servers {
        return;
    }
    *last_applied = obs.applied_index;
    if with_servers || !obs.job_events.is_empty() {
        *servers_due = std::time::Instant::now();
        let view = crate::node::cluster::own_view(&web.cluster);
        obs.coordinator = Some((view.coordinator.clone(), view.term));
        let servers = view.servers.into_iter();
        obs.servers = Some(servers.map(|s| (s.name, s.state, s.connected)).collect());
    }
    let events = {
        let mut w = web.hub.watcher.lock().expect("watcher lock");
        let events = w.observe(obs);
        web.coordinator_changes
            .store(w.coordinator_changes, Ordering::Relaxed);
        events
    };
    web.hub.publish(events);
}

/// The applied index and the job feed after what was reported.
fn read_core(web: &Web) -> Option<Observation> {
    let job_seq = web.hub.watcher.lock().expect("watcher lock").job_seq;
    let guard = web.cluster.core();
    let core = guard.as_ref()?;
    let conn = core.state().conn();
    let job_last = job_events::last(conn).ok()?;
    let from = if job_last < job_seq { 0 } else { job_seq };
    let job_events = job_events::after(conn, from, JOB_EVENTS_PER_POLL_MAX).ok()?;
    Some(Observation {
        applied_index: core.applied_index(),
        job_events,
        job_last,
        ..Observation::default()
    })
}

/// `GET /api/v1/events`: a stream that starts with a `change` (so a client
/// loads what it shows) and then follows the hub.
pub(super) fn stream(web: Arc<Web>) -> Result<Reply, Fail> {
    let http = &*web;
    if http.streams.fetch_add(1, Ordering::SeqCst) >= super::EVENT_STREAMS_MAX {
        http.streams.fetch_sub(1, Ordering::SeqCst);
        return Err((
            StatusCode::TOO_MANY_REQUESTS,
            format!("more than {} event streams", super::EVENT_STREAMS_MAX),
        ));
    }
    let applied = web.cluster.core().as_ref().map_or(0, |c| c.applied_index());
    let first = format!("event: change\ndata: {{\"applied_index\":{applied}}}\n\n");
    let cursor = http.hub.cursor();
    let guard = StreamGuard(web.clone());
    let state = (guard, cursor, Some(Bytes::from(first)));
    let stream = futures_lite::stream::unfold(state, |(guard, cursor, first)| async move {
        if let Some(first) = first {
            return Some((Ok(Frame::data(first)), (guard, cursor, None)));
        }
        let (bytes, next) = next_events(&guard.0, cursor).await;
        Some((Ok(Frame::data(bytes)), (guard, next, None)))
    });
    let mut reply = hyper::Response::new(StreamBody::new(stream).boxed_unsync());
    let h = reply.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    h.insert("cache-control", HeaderValue::from_static("no-cache"));
    Ok(reply)
}

/// Waits for events after `cursor` (or sends a keep-alive comment).
async fn next_events(web: &Web, cursor: u64) -> (Bytes, u64) {
    let hub = &web.hub;
    let keepalive = async_io::Timer::after(Duration::from_millis(EVENTS_KEEPALIVE_MS));
    futures_lite::pin!(keepalive);
    loop {
        let listener = hub.wake.listen();
        let (bytes, next, lost) = hub.read(cursor);
        if lost {
            let text = "event: resync\ndata: {}\n\n";
            return (Bytes::from_static(text.as_bytes()), next);
        }
        if let Some(bytes) = bytes {
            return (bytes, next);
        }
        let woke = futures_lite::future::or(
            async {
                listener.await;
                true
            },
            async {
                (&mut keepalive).await;
                false
            },
        )
        .await;
        if !woke {
            return (Bytes::from_static(b": keep-alive\n\n"), cursor);
        }
    }
}

/// Counts an open event stream; dropped with it.
struct StreamGuard(Arc<Web>);

impl Drop for StreamGuard {
    fn drop(&mut self) {
        self.0.streams.fetch_sub(1, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(seq: u64, state: &str) -> JobEvent {
        JobEvent {
            seq,
            id: "j1".into(),
            state: state.into(),
            instance: None,
        }
    }

    #[test]
    fn each_change_is_reported_once_and_a_restarted_feed_resyncs() {
        let mut w = Watcher::default();
        let obs = |applied, events: Vec<JobEvent>, last| Observation {
            applied_index: applied,
            job_events: events,
            job_last: last,
            ..Observation::default()
        };
        let names = |ev: Vec<(&'static str, Value)>| ev.iter().map(|e| e.0).collect::<Vec<_>>();
        let first = w.observe(obs(5, vec![job(1, "queued"), job(2, "running")], 2));
        assert_eq!(names(first), ["job", "job", "change"]);
        assert!(w.observe(obs(5, vec![job(2, "running")], 2)).is_empty());
        // The replica was replaced: its feed starts again at 1.
        let again = w.observe(obs(9, vec![job(1, "succeeded")], 1));
        assert_eq!(names(again), ["resync", "job", "change"]);
    }

    #[test]
    fn a_new_coordinator_and_a_server_change_are_reported() {
        let mut w = Watcher::default();
        let starting = Observation {
            coordinator: Some((None, 0)),
            ..Observation::default()
        };
        w.observe(starting);
        let with = |coord: &str, term, state: &str| Observation {
            coordinator: Some((Some(coord.to_string()), term)),
            servers: Some(vec![("srv2".into(), state.into(), true)]),
            ..Observation::default()
        };
        assert_eq!(w.observe(with("srv1", 1, "follower")).len(), 2);
        assert!(w.observe(with("srv1", 1, "follower")).is_empty());
        let moved = w.observe(with("srv2", 2, "coordinator"));
        assert_eq!(moved.len(), 2);
        assert_eq!(moved[0].1["name"], "srv2");
        assert_eq!(w.coordinator_changes, 1);
        // An election (no coordinator), then the same one again: no change.
        let mut none = with("srv2", 3, "coordinator");
        none.coordinator = Some((None, 3));
        assert_eq!(w.observe(none).len(), 1);
        w.observe(with("srv2", 3, "coordinator"));
        assert_eq!(w.coordinator_changes, 1);
    }
}
