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

/// `DELETE settings/KEY`: 404 for a key that is not there, as for the
/// other resources.
pub(super) async fn setting_delete(web: &Arc<Web>, key: &str) -> Result<Reply, Fail> {
    let command = Command::Delete {
        key: percent_decode(key),
    };
    command.validate().map_err(bad)?;
    super::api::setting(web, key).await?; // 404 for an unknown one
    let key = percent_decode(key);
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

/// `PUT hotfolders/NAME`: a hotfolder's definition replaced (the dashboard's
/// edit), checked as a new one; its files and jobs stay as they are.
pub(super) async fn hotfolder_replace(
    web: &Arc<Web>,
    name: &str,
    body: &[u8],
) -> Result<Reply, Fail> {
    let (old, _) = super::api::find_hotfolder(web, name).await?; // 404 for an unknown one
    let mut def = hotfolder_definition(body)?;
    if def.name != name {
        return Err(bad(format!(
            "the definition names `{}`, the address `{name}`: a hotfolder is not renamed",
            def.name
        )));
    }
    def.paused = old.paused; // pausing is the operator's, not an edit's
    write(web, Command::HotfolderPut { def }).await?;
    super::api::hotfolder(web, name).await
}

/// `DELETE hotfolders/NAME`: the definition; its folders stay.
pub(super) async fn hotfolder_remove(web: &Arc<Web>, name: &str) -> Result<Reply, Fail> {
    super::api::find_hotfolder(web, name).await?; // 404 for an unknown one
    let name = name.to_string();
    write(web, Command::HotfolderRemove { name: name.clone() }).await?;
    Ok(json_reply(StatusCode::OK, &json!({"removed": name})))
}

/// The action of a definition: `action` as the definition's JSON has it,
/// or, as `claro hotfolder add` takes them, `template` (a command template,
/// split as a shell would, no shell run) or `script` (the code); exactly
/// one. Taken out of `given`.
fn action_of(
    given: &mut serde_json::Map<String, serde_json::Value>,
) -> Result<crate::work::hotfolder::Action, Fail> {
    use crate::work::hotfolder::Action;
    let text = |v: serde_json::Value, what: &str| match v {
        serde_json::Value::String(s) => Ok(s),
        _ => Err(bad(format!("`{what}` is text"))),
    };
    let action = given.remove("action");
    let template = given.remove("template");
    let script = given.remove("script");
    match (action, template, script) {
        (Some(a), None, None) => serde_json::from_value(a).map_err(|e| bad(format!("action: {e}"))),
        (None, Some(t), None) => {
            let argv = crate::work::hotfolder::split_template(&text(t, "template")?)
                .map_err(|e| bad(format!("template: {e}")))?;
            Ok(Action::Command { argv })
        }
        (None, None, Some(code)) => {
            let code = text(code, "script")?;
            crate::work::script::check(&code).map_err(|e| bad(format!("script: {e}")))?;
            Ok(Action::Script { code })
        }
        _ => Err(bad(
            "give one of `template` (a command template), `script` (its code) or `action`",
        )),
    }
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
    use crate::work::hotfolder::Hotfolder;
    let mut given: serde_json::Map<String, serde_json::Value> = parse_json(body)?;
    let name = given
        .get("name")
        .and_then(|v| v.as_str())
        .ok_or_else(|| bad("`name` (text) is required"))?
        .to_string();
    let action = action_of(&mut given)?;
    if let Some(retries) = given.remove("retries") {
        let n = retries
            .as_u64()
            .filter(|n| *n < u64::from(crate::work::jobs::ATTEMPTS_MAX))
            .ok_or_else(|| {
                bad(format!(
                    "retries: {retries} is not 0..{}",
                    crate::work::jobs::ATTEMPTS_MAX
                ))
            })?;
        if given.contains_key("max_attempts") {
            return Err(bad("give `retries` or `max_attempts`, not both"));
        }
        given.insert("max_attempts".into(), json!(n + 1));
    }
    let mut merged = json!(Hotfolder::new(&name, action));
    let fields = merged.as_object_mut().expect("a definition is an object");
    for (k, v) in given {
        if !fields.contains_key(&k) {
            return Err(bad(format!("unknown field `{k}`")));
        }
        fields.insert(k, v);
    }
    serde_json::from_value(merged).map_err(|e| bad(format!("the definition: {e}")))
}
