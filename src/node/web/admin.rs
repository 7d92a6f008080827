//! The API's admin endpoints: server modes, coordinator transfer, stored
//! scripts, settings, tokens and hotfolder definitions. The router lets
//! only an admin here (`http::need`); each write is the CLI's command,
//! checked the same way before it is proposed, so a refused one changes
//! nothing.

use std::sync::Arc;

use hyper::StatusCode;
use serde_json::json;

use super::api::{failure, write};
use super::Web;
use super::{json_reply, parse_json, percent_decode, Fail, Reply};
use crate::clock::now_ms;
use crate::proto::{Request, Response};
use crate::state::Command;
use crate::web::access::{self, Role};

fn bad(message: impl Into<String>) -> Fail {
    (StatusCode::BAD_REQUEST, message.into())
}

/// `POST servers/NAME/maintenance|activate|drain`. A drain is maintenance
/// (no new jobs) whose answer says how many jobs still run there.
pub(super) async fn server_mode(web: &Arc<Web>, name: &str, verb: &str) -> Result<Reply, Fail> {
    let mode = match verb {
        "maintenance" | "drain" => "maintenance",
        "activate" => "active",
        _ => return Err(super::not_found()),
    };
    if !web.cluster.cfg.servers.iter().any(|s| s.name == name) {
        return Err((
            StatusCode::NOT_FOUND,
            format!("no server named `{name}` in the config"),
        ));
    }
    let command = Command::NodeMode {
        name: name.to_string(),
        mode: mode.to_string(),
    };
    write(web, command).await?;
    let running = super::stats::load(web).get(name).map_or(0, |l| l.running);
    Ok(json_reply(
        StatusCode::OK,
        &json!({"name": name, "mode": mode, "running": running}),
    ))
}

/// The server a `POST coordinator/transfer {"name": SERVER}` body names.
pub fn transfer_target(body: &[u8]) -> Result<String, Fail> {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct To {
        name: String,
    }
    parse_json::<To>(body).map(|to| to.name)
}

/// `POST coordinator/transfer {"name": SERVER}`.
pub(super) async fn transfer(web: &Arc<Web>, body: &[u8]) -> Result<Reply, Fail> {
    let name = transfer_target(body)?;
    if !web.cluster.cfg.servers.iter().any(|s| s.name == name) {
        return Err((
            StatusCode::NOT_FOUND,
            format!("no server named `{name}` in the config"),
        ));
    }
    let req = Request::Transfer { name };
    match crate::node::cluster::respond(&web.cluster, None, req).await {
        Response::Ok { message } => Ok(json_reply(StatusCode::OK, &json!({"message": message}))),
        Response::Error { message }
            if message.contains("witness") || message.contains("not a voting") =>
        {
            Err((StatusCode::CONFLICT, message))
        }
        other => Err(failure(other)),
    }
}

/// The script a `POST scripts {"name", "code"}` body stores, at `at_ms`,
/// after the same syntax check as `claro script add`: its name and the command.
pub fn script_addition(body: &[u8], at_ms: u64) -> Result<(String, Command), Fail> {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Add {
        name: String,
        code: String,
    }
    let add: Add = parse_json(body)?;
    crate::work::jobs::check_script_name(&add.name).map_err(bad)?;
    crate::work::script::check(&add.code).map_err(|e| bad(format!("{}: {e}", add.name)))?;
    let command = Command::ScriptAdd {
        name: add.name.clone(),
        code: add.code,
        at_ms,
    };
    command.validate().map_err(bad)?;
    Ok((add.name, command))
}

/// `POST scripts {"name", "code"}`: stores a new version.
pub(super) async fn script_add(web: &Arc<Web>, body: &[u8]) -> Result<Reply, Fail> {
    let (name, command) = script_addition(body, now_ms())?;
    write(web, command).await?;
    let mut reply = super::api::script(web, &name, "").await?;
    *reply.status_mut() = StatusCode::CREATED;
    Ok(reply)
}

/// `DELETE scripts/NAME`: every version.
pub(super) async fn script_remove(web: &Arc<Web>, name: &str) -> Result<Reply, Fail> {
    let name = percent_decode(name);
    super::api::script(web, &name, "").await?; // 404 for an unknown one
    write(web, Command::ScriptRemove { name: name.clone() }).await?;
    Ok(json_reply(StatusCode::OK, &json!({"removed": name})))
}

/// The write a `PUT settings/KEY {"value": TEXT}` asks for (`key` as the
/// path has it, percent-encoded), checked.
pub fn setting_write(key: &str, body: &[u8]) -> Result<Command, Fail> {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Put {
        value: String,
    }
    let put: Put = parse_json(body)?;
    let command = Command::Put {
        key: percent_decode(key),
        value: put.value.into_bytes(),
    };
    command.validate().map_err(bad)?;
    Ok(command)
}

/// `PUT settings/KEY {"value": TEXT}`.
pub(super) async fn setting_put(web: &Arc<Web>, key: &str, body: &[u8]) -> Result<Reply, Fail> {
    let command = setting_write(key, body)?;
    let key = percent_decode(key);
    write(web, command).await?;
    Ok(json_reply(StatusCode::OK, &json!({"key": key})))
}

/// `DELETE settings/KEY`.
pub(super) async fn setting_delete(web: &Arc<Web>, key: &str) -> Result<Reply, Fail> {
    let key = percent_decode(key);
    let command = Command::Delete { key: key.clone() };
    command.validate().map_err(bad)?;
    write(web, command).await?;
    Ok(json_reply(StatusCode::OK, &json!({"removed": key})))
}

async fn all_tokens(web: &Arc<Web>) -> Result<Vec<crate::state::tokens::TokenInfo>, Fail> {
    match crate::node::cluster::respond(&web.cluster, None, Request::Tokens).await {
        Response::Tokens { tokens } => Ok(tokens),
        other => Err(failure(other)),
    }
}

/// `GET tokens`: names and roles, never the tokens.
pub(super) async fn tokens(web: &Arc<Web>) -> Result<Reply, Fail> {
    let list: Vec<_> = all_tokens(web)
        .await?
        .iter()
        .map(|t| json!({"name": t.name, "role": t.role, "created_at": crate::contract::rfc3339(t.created_ms)}))
        .collect();
    Ok(json_reply(StatusCode::OK, &json!(list)))
}

/// The name and role a `POST tokens {"name", "role"}` body asks for, checked.
pub fn token_request(body: &[u8]) -> Result<(String, Role), Fail> {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Add {
        name: String,
        role: String,
    }
    let add: Add = parse_json(body)?;
    access::check_token_name(&add.name).map_err(bad)?;
    let role = Role::parse(&add.role).ok_or_else(|| {
        bad(format!(
            "role {:?}: one of viewer, operator, admin",
            add.role
        ))
    })?;
    Ok((add.name, role))
}

/// `POST tokens {"name", "role"}`: the token is in this answer only.
pub(super) async fn token_add(web: &Arc<Web>, body: &[u8]) -> Result<Reply, Fail> {
    let (name, role) = token_request(body)?;
    let tokens = all_tokens(web).await?;
    if tokens.iter().any(|t| t.name == name) {
        return Err((
            StatusCode::CONFLICT,
            format!("a token named `{name}` exists; remove it first"),
        ));
    }
    if tokens.len() >= access::TOKENS_MAX {
        return Err((
            StatusCode::CONFLICT,
            format!(
                "the cluster holds {} tokens already, the most it keeps",
                access::TOKENS_MAX
            ),
        ));
    }
    let token = access::new_token(rand::random());
    let command = Command::TokenAdd {
        name: name.clone(),
        role,
        hash: access::token_hash(&token),
        at_ms: now_ms(),
    };
    write(web, command).await?;
    Ok(json_reply(
        StatusCode::CREATED,
        &json!({"name": name, "role": role, "token": token}),
    ))
}

/// `DELETE tokens/NAME`.
pub(super) async fn token_remove(web: &Arc<Web>, name: &str) -> Result<Reply, Fail> {
    let name = percent_decode(name);
    if !all_tokens(web).await?.iter().any(|t| t.name == name) {
        return Err((StatusCode::NOT_FOUND, format!("no token named `{name}`")));
    }
    write(web, Command::TokenRemove { name: name.clone() }).await?;
    Ok(json_reply(StatusCode::OK, &json!({"removed": name})))
}

/// `POST hotfolders`: a new hotfolder, given as its whole definition (the
/// JSON of `GET hotfolders/NAME`'s `definition`; fields left out take the
/// defaults of `claro hotfolder add`).
pub(super) async fn hotfolder_add(web: &Arc<Web>, body: &[u8]) -> Result<Reply, Fail> {
    let def = hotfolder_definition(body)?;
    if super::api::find_hotfolder(web, &def.name).await.is_ok() {
        return Err((
            StatusCode::CONFLICT,
            format!("hotfolder `{}` exists", def.name),
        ));
    }
    let name = def.name.clone();
    write(web, Command::HotfolderPut { def }).await?;
    let mut reply = super::api::hotfolder(web, &name).await?;
    *reply.status_mut() = StatusCode::CREATED;
    Ok(reply)
}

/// `DELETE hotfolders/NAME`: the definition; its folders stay.
pub(super) async fn hotfolder_remove(web: &Arc<Web>, name: &str) -> Result<Reply, Fail> {
    super::api::find_hotfolder(web, name).await?; // 404 for an unknown one
    let name = name.to_string();
    write(web, Command::HotfolderRemove { name: name.clone() }).await?;
    Ok(json_reply(StatusCode::OK, &json!({"removed": name})))
}

/// The definition a `POST hotfolders` body gives, checked.
pub fn hotfolder_definition(body: &[u8]) -> Result<crate::work::hotfolder::Hotfolder, Fail> {
    let def = hotfolder_of(body)?;
    def.validate().map_err(bad)?;
    Ok(def)
}

/// A definition from a JSON object: `name` and `action` are required, any
/// other field left out keeps `Hotfolder::new`'s default, an unknown one is
/// refused.
fn hotfolder_of(body: &[u8]) -> Result<crate::work::hotfolder::Hotfolder, Fail> {
    use crate::work::hotfolder::{Action, Hotfolder};
    let given: serde_json::Map<String, serde_json::Value> = parse_json(body)?;
    let name = given
        .get("name")
        .and_then(|v| v.as_str())
        .ok_or_else(|| bad("`name` (text) is required"))?;
    let action: Action = serde_json::from_value(given.get("action").cloned().ok_or_else(|| {
        bad("`action` is required: {\"command\": {\"argv\": [..]}} or {\"script\": {\"code\": ..}}")
    })?)
    .map_err(|e| bad(format!("action: {e}")))?;
    let mut merged = json!(Hotfolder::new(name, action));
    let fields = merged.as_object_mut().expect("a definition is an object");
    for (k, v) in given {
        if !fields.contains_key(&k) {
            return Err(bad(format!("unknown field `{k}`")));
        }
        fields.insert(k, v);
    }
    serde_json::from_value(merged).map_err(|e| bad(format!("the definition: {e}")))
}
