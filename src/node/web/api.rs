//! The API's reading and operating endpoints: status, jobs, hotfolders,
//! scripts. Each becomes the `Request` the CLI sends and is answered by
//! `handlers::respond`, so the JSON is the CLI's `--json`.

use std::sync::Arc;

use hyper::StatusCode;
use serde_json::{json, Value};

use super::Web;
use super::{json_reply, not_found, parse_json, percent_decode, Fail, Reply};
use crate::clock::now_ms;
use crate::contract::JobJson;
use crate::proto::{Request, Response};
use crate::state::jobs::JobFilter;
use crate::state::Command;
use crate::web::access::{self, Role};
use crate::work::jobs::{JobKind, JobSpec, JobState};

/// Jobs one list page returns at most.
pub const JOBS_PAGE_MAX: u32 = crate::proto::JOBS_COUNT_MAX;
/// Recent files and errors shown for one hotfolder.
const HOTFOLDER_RECENT_MAX: u32 = 20;

pub(super) async fn ask(web: &Arc<Web>, req: Request) -> Result<Reply, Fail> {
    let resp = crate::node::cluster::respond(&web.cluster, None, req).await;
    let value = match resp {
        Response::Status(v) => json!(v),
        Response::Scripts { scripts } => json!(scripts
            .iter()
            .map(|s| json!({"name": s.name, "version": s.version, "added_at": crate::contract::rfc3339(s.added_ms)}))
            .collect::<Vec<_>>()),
        other => return Err(failure(other)),
    };
    Ok(json_reply(StatusCode::OK, &value))
}

/// An error answer of an instance, with the HTTP status that fits.
pub(super) fn failure(resp: Response) -> Fail {
    match resp {
        Response::Unavailable { message } => (
            StatusCode::SERVICE_UNAVAILABLE,
            message.replace("; `--stale` reads it as it is", ""),
        ),
        Response::Error { message } => {
            // The CLI's hint; the API has no stale reads.
            let message = message.replace("; `--stale` reads it as it is", "");
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

/// The filter and page size of `GET jobs?QUERY`, checked.
pub fn job_query(query: &str) -> Result<(JobFilter, u32), Fail> {
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
    Ok((filter, limit))
}

pub(super) async fn jobs(web: &Arc<Web>, query: &str) -> Result<Reply, Fail> {
    let (filter, limit) = job_query(query)?;
    let req = Request::Jobs {
        filter,
        limit,
        stale: false,
    };
    match crate::node::cluster::respond(&web.cluster, None, req).await {
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

pub(super) async fn job(web: &Arc<Web>, id: &str) -> Result<Reply, Fail> {
    crate::work::jobs::check_job_id(id).map_err(|e| (StatusCode::NOT_FOUND, e))?;
    let req = Request::Job {
        id: id.to_string(),
        stale: false,
        wait_ms: 0,
    };
    match crate::node::cluster::respond(&web.cluster, None, req).await {
        Response::Job { job: Some(job), .. } => {
            let mut j = JobJson::new(&job, true);
            // A running job: its log so far and progress, from its instance.
            if !job.state.is_final() {
                let req = Request::Live {
                    id: job.id.clone(),
                    after_bytes: 0,
                    forwarded: false,
                };
                if let Response::Live(Some(live)) =
                    crate::node::cluster::respond(&web.cluster, None, req).await
                {
                    j = j.with_live(&live);
                }
            }
            let mut value = json!(j);
            value["profile"] = json!(job.profile);
            Ok(json_reply(StatusCode::OK, &value))
        }
        Response::Job { job: None, .. } => Err((StatusCode::NOT_FOUND, format!("no job {id}"))),
        other => Err(failure(other)),
    }
}

/// The jobs a `POST jobs` body asks for, checked, from a client of
/// `role`: one job object (`{script | stored, args, priority,
/// max_attempts, timeout_s}`, as `work::submission::JobRequest` without
/// the command's fields, which the HTTP API does not take), or an array of
/// them (a batch: one entry, all or none; an element's fault names its
/// index). `true` with a batch.
pub fn submission(role: Role, body: &[u8]) -> Result<(Vec<JobSpec>, bool), Fail> {
    use crate::work::submission::{JobRequest, BATCH_BYTES_MAX, BATCH_COUNT_MAX};
    let bad = |m: String| (StatusCode::BAD_REQUEST, m);
    let batch = body.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'[');
    let requests: Vec<JobRequest> = if batch {
        if body.len() > BATCH_BYTES_MAX {
            return Err(bad(format!("a batch is at most {BATCH_BYTES_MAX} bytes")));
        }
        parse_json(body)?
    } else {
        vec![parse_json(body)?]
    };
    if requests.is_empty() || requests.len() > BATCH_COUNT_MAX {
        return Err(bad(format!("a batch holds 1 to {BATCH_COUNT_MAX} jobs")));
    }
    let at = |i: usize, m: String| if batch { format!("job {i}: {m}") } else { m };
    let mut specs = Vec::with_capacity(requests.len());
    for (i, r) in requests.into_iter().enumerate() {
        if r.is_command_like() {
            return Err(bad(at(i, "the HTTP API runs scripts: `command`, `cwd` and `env` are the CLI's (`claro submit --command`)".into())));
        }
        let need = access::submit_role(r.runs_code());
        if !role.may(need) {
            return Err((
                StatusCode::FORBIDDEN,
                at(i, format!(
                    "{} {} may not send code to run (an inline script takes an {}); run a stored script: {{\"stored\": NAME}}",
                    if role == Role::Viewer { "a" } else { "an" },
                    role.as_str(),
                    need.as_str()
                )),
            ));
        }
        specs.push(r.spec().map_err(|e| bad(at(i, e)))?);
    }
    Ok((specs, batch))
}

pub(super) async fn submit(
    web: &Arc<Web>,
    role: Role,
    body: &[u8],
    idem: Option<String>,
) -> Result<Reply, Fail> {
    let (specs, batch) = submission(role, body)?;
    let bad = |m: String| (StatusCode::BAD_REQUEST, m);
    let jobs: Vec<(String, JobSpec)> = specs
        .into_iter()
        .map(|spec| {
            (
                crate::work::jobs::new_job_id(now_ms(), rand::random()),
                spec,
            )
        })
        .collect();
    let ids: Vec<String> = jobs.iter().map(|(id, _)| id.clone()).collect();
    let request_id = match &idem {
        Some(key) if key.is_empty() || key.len() > 64 => {
            return Err(bad("Idempotency-Key: 1 to 64 characters".into()))
        }
        Some(key) => format!("http:{key}"),
        None => ids[0].clone(),
    };
    let command = if batch {
        Command::JobsSubmit {
            jobs,
            at_ms: now_ms(),
        }
    } else {
        let (id, spec) = jobs.into_iter().next().expect("one job");
        Command::JobSubmit {
            id,
            spec,
            at_ms: now_ms(),
        }
    };
    command.validate().map_err(bad)?;
    let req = Request::propose(command, Some(request_id.clone()));
    match crate::node::cluster::respond(&web.cluster, None, req).await {
        Response::Proposed { .. } => {}
        other => return Err(failure(other)),
    }
    // A retried keyed POST made no new job: answer with the first one's.
    let ids = made_by(web, &request_id).await.unwrap_or(ids);
    if batch {
        return Ok(json_reply(StatusCode::CREATED, &json!(ids)));
    }
    let mut reply = job(web, &ids[0]).await?;
    *reply.status_mut() = StatusCode::CREATED;
    Ok(reply)
}

/// The jobs the keyed submission `request_id` made, as recorded when it
/// was applied.
async fn made_by(web: &Arc<Web>, request_id: &str) -> Option<Vec<String>> {
    let made = crate::node::cluster::read(&web.cluster, false, |core, _| {
        match core.state().request_job(request_id) {
            Ok(Some(ids)) => Response::Value {
                value: Some(serde_bytes::ByteBuf::from(ids.into_bytes())),
                stale: None,
            },
            _ => Response::Value {
                value: None,
                stale: None,
            },
        }
    })
    .await;
    match made {
        Response::Value { value: Some(v), .. } => Some(
            String::from_utf8_lossy(&v)
                .split(',')
                .map(str::to_string)
                .collect(),
        ),
        _ => None,
    }
}

pub(super) async fn cancel_or_retry(web: &Arc<Web>, id: &str, verb: &str) -> Result<Reply, Fail> {
    crate::work::jobs::check_job_id(id).map_err(|e| (StatusCode::NOT_FOUND, e))?;
    job(web, id).await?; // 404 for an unknown id
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
    write(web, command).await?;
    job(web, &id).await
}

pub(super) async fn write(web: &Arc<Web>, command: Command) -> Result<(), Fail> {
    let req = Request::propose(command, Some(crate::proto::new_request_id()));
    match crate::node::cluster::respond(&web.cluster, None, req).await {
        Response::Proposed { .. } => Ok(()),
        other => Err(failure(other)),
    }
}

pub(super) async fn hotfolders(web: &Arc<Web>) -> Result<Reply, Fail> {
    match crate::node::cluster::respond(&web.cluster, None, Request::Hotfolders { stale: false })
        .await
    {
        Response::Hotfolders { hotfolders, .. } => {
            let list: Vec<Value> = hotfolders
                .iter()
                .map(|(d, c)| hotfolder_json(d, c))
                .collect();
            Ok(json_reply(StatusCode::OK, &json!(list)))
        }
        other => Err(failure(other)),
    }
}

pub(super) async fn pause(web: &Arc<Web>, name: &str, verb: &str) -> Result<Reply, Fail> {
    let paused = match verb {
        "pause" => true,
        "resume" => false,
        _ => return Err(not_found()),
    };
    crate::work::hotfolder::check_name(name).map_err(|e| (StatusCode::NOT_FOUND, e))?;
    // The state machine ignores a pause of an unknown hotfolder: say so here.
    find_hotfolder(web, name).await?;
    write(
        web,
        Command::HotfolderPause {
            name: name.to_string(),
            paused,
        },
    )
    .await?;
    hotfolders(web).await
}

fn hotfolder_json(
    d: &crate::work::hotfolder::Hotfolder,
    c: &crate::state::hotfolders::Counts,
) -> Value {
    json!({
        "name": d.name, "paused": d.paused, "waiting": c.waiting,
        "in_progress": c.in_progress, "done_last_hour": c.done_last_hour,
        "failed_last_hour": c.failed_last_hour,
    })
}

/// The definition and counts of hotfolder `name`; 404 when there is none.
pub(super) async fn find_hotfolder(
    web: &Arc<Web>,
    name: &str,
) -> Result<
    (
        crate::work::hotfolder::Hotfolder,
        crate::state::hotfolders::Counts,
    ),
    Fail,
> {
    crate::work::hotfolder::check_name(name).map_err(|e| (StatusCode::NOT_FOUND, e))?;
    let req = Request::Hotfolders { stale: false };
    match crate::node::cluster::respond(&web.cluster, None, req).await {
        Response::Hotfolders { hotfolders, .. } => hotfolders
            .into_iter()
            .find(|(d, _)| d.name == name)
            .ok_or_else(|| (StatusCode::NOT_FOUND, format!("no hotfolder `{name}`"))),
        other => Err(failure(other)),
    }
}

/// `GET hotfolders/NAME`: the counts, the definition, the newest files'
/// jobs and the newest failures, each with its reason.
pub(super) async fn hotfolder(web: &Arc<Web>, name: &str) -> Result<Reply, Fail> {
    let (def, counts) = find_hotfolder(web, name).await?;
    let page = |state| JobFilter {
        state,
        hotfolder: Some(name.to_string()),
        ..JobFilter::default()
    };
    let recent = job_page(web, page(None), HOTFOLDER_RECENT_MAX).await?;
    let errors = job_page(web, page(Some(JobState::Failed)), HOTFOLDER_RECENT_MAX).await?;
    let mut value = hotfolder_json(&def, &counts);
    // A command's argv as `claro hotfolder add --command` takes it back.
    if let crate::work::hotfolder::Action::Command { argv } = &def.action {
        value["template"] = json!(crate::work::hotfolder::template_text(argv));
    }
    value["definition"] = json!(def);
    value["recent"] = json!(recent);
    value["errors"] = json!(errors);
    Ok(json_reply(StatusCode::OK, &value))
}

async fn job_page(web: &Arc<Web>, filter: JobFilter, limit: u32) -> Result<Vec<JobJson>, Fail> {
    let req = Request::Jobs {
        filter,
        limit,
        stale: false,
    };
    match crate::node::cluster::respond(&web.cluster, None, req).await {
        Response::Jobs { jobs, .. } => Ok(jobs.iter().map(|j| JobJson::new(j, false)).collect()),
        other => Err(failure(other)),
    }
}

/// `GET scripts/NAME[?version=N]`: a stored script with its code.
pub(super) async fn script(web: &Arc<Web>, name: &str, query: &str) -> Result<Reply, Fail> {
    let mut version = None;
    for (k, v) in query_pairs(query) {
        match k.as_str() {
            "version" => {
                version = Some(v.parse::<u32>().map_err(|_| {
                    (
                        StatusCode::BAD_REQUEST,
                        format!("version={v}: not a version number"),
                    )
                })?)
            }
            _ => return Err((StatusCode::BAD_REQUEST, format!("unknown parameter `{k}`"))),
        }
    }
    let req = Request::Script {
        name: percent_decode(name),
        version,
        stale: false,
    };
    match crate::node::cluster::respond(&web.cluster, None, req).await {
        Response::Script { script: Some(s) } => Ok(json_reply(
            StatusCode::OK,
            &json!({"name": s.name, "version": s.version,
                    "added_at": crate::contract::rfc3339(s.added_ms), "code": s.code}),
        )),
        Response::Script { script: None } => Err((
            StatusCode::NOT_FOUND,
            format!("no stored script `{}`", percent_decode(name)),
        )),
        other => Err(failure(other)),
    }
}

/// The query's `key=value` pairs, values percent-decoded.
pub(super) fn query_pairs(query: &str) -> Vec<(String, String)> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

/// Settings one `GET settings` answers with, at most.
const SETTINGS_SHOWN_MAX: usize = 10_000;
/// Bytes of values one `GET settings` answers with, about (the page that
/// crosses it is the last): values reach 1 MiB each.
const SETTINGS_SHOWN_BYTES_MAX: usize = 8 * 1024 * 1024;

/// One setting as JSON: the value as text where it is UTF-8, and in hex.
fn setting_json(key: &str, value: &[u8]) -> Value {
    let text = std::str::from_utf8(value).ok();
    let hex: String = value.iter().map(|b| format!("{b:02x}")).collect();
    json!({"key": key, "value": text, "value_hex": hex})
}

/// Every byte but unreserved ASCII as `%XX`.
fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// `GET settings/KEY`: one setting (read index confirmed), or 404.
pub(super) async fn setting(web: &Arc<Web>, key: &str) -> Result<Reply, Fail> {
    let key = percent_decode(key);
    let req = Request::Get {
        key: key.clone(),
        stale: false,
    };
    match crate::node::cluster::respond(&web.cluster, None, req).await {
        Response::Value { value: Some(v), .. } => {
            Ok(json_reply(StatusCode::OK, &setting_json(&key, &v)))
        }
        Response::Value { value: None, .. } => Err(super::not_found()),
        other => Err(failure(other)),
    }
}

/// `GET settings[?after=KEY]`: the settings in key order from after KEY
/// (pages of `Request::List` followed), at most `SETTINGS_SHOWN_MAX` of
/// them and about `SETTINGS_SHOWN_BYTES_MAX` of values; when more remain,
/// the header `x-next-after` holds the key to ask after.
pub(super) async fn settings(web: &Arc<Web>, query: &str) -> Result<Reply, Fail> {
    let mut out = Vec::new();
    let mut bytes = 0usize;
    let mut after = query_pairs(query)
        .into_iter()
        .find(|(k, _)| k == "after")
        .map(|(_, v)| v);
    let more = loop {
        let req = Request::List(crate::proto::ListQuery {
            after: after.take(),
            limit: None,
            stale: false,
        });
        let (items, next) = match crate::node::cluster::respond(&web.cluster, None, req).await {
            Response::List {
                items, next_after, ..
            } => (items, next_after),
            other => return Err(failure(other)),
        };
        for (key, value) in items {
            bytes += value.len();
            out.push(setting_json(&key, &value));
        }
        match next {
            Some(n) if out.len() < SETTINGS_SHOWN_MAX && bytes < SETTINGS_SHOWN_BYTES_MAX => {
                after = Some(n)
            }
            Some(n) => break Some(n),
            None => break None,
        }
    };
    let mut reply = json_reply(StatusCode::OK, &json!(out));
    // Percent-encoded, as the query's `after` takes it: a key may hold
    // bytes no header may.
    if let Some(key) =
        more.and_then(|k| hyper::header::HeaderValue::from_str(&percent_encode(&k)).ok())
    {
        reply.headers_mut().insert("x-next-after", key);
    }
    Ok(reply)
}

/// `GET servers`: the status view's servers, each with its running jobs,
/// slots and mode from the replicated state.
pub(super) async fn servers(web: &Arc<Web>) -> Result<Reply, Fail> {
    let view = match crate::node::cluster::respond(&web.cluster, None, Request::Status).await {
        Response::Status(v) => v,
        other => return Err(failure(other)),
    };
    let load = super::stats::load(web);
    let list: Vec<Value> = view
        .servers
        .iter()
        .map(|s| {
            let mut v = json!(s);
            if let Some(l) = load.get(&s.name) {
                v["running"] = json!(l.running);
                v["slots"] = json!(l.slots);
                v["mode"] = json!(l.mode);
            }
            v
        })
        .collect();
    Ok(json_reply(StatusCode::OK, &json!(list)))
}
