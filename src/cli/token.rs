//! The client side of API tokens: `claro token add|list|rm`. The token is
//! made here and printed once; only its SHA-256 goes to the cluster.

use crate::cli::client::{call, failure_of, ClientArgs};
use crate::cli::exit::Failure;
use crate::cli::output;
use crate::config::Config;
use crate::proto::{new_request_id, Request, Response};
use crate::state::tokens::TokenInfo;
use crate::state::Command;
use crate::web::access::{check_token_name, new_token, token_hash, Role};
use clap::Subcommand;

pub fn command(config: &Config, action: TokenAction) -> Result<(), Failure> {
    match action {
        TokenAction::Add { name, role, client } => add(config, &client, &name, &role),
        TokenAction::List { client } => list(config, &client),
        TokenAction::Rm { name, client } => {
            check_token_name(&name).map_err(Failure::usage)?;
            if !all(config, &client)?.iter().any(|t| t.name == name) {
                return Err(Failure::failed(format!("no token named `{name}`")));
            }
            let command = Command::TokenRemove { name: name.clone() };
            crate::cli::jobs::write(config, &client, command, new_request_id())?;
            let value = serde_json::json!({"removed": name});
            output::changed(client.json, &format!("{name}: removed"), value)
        }
    }
}

fn add(config: &Config, client: &ClientArgs, name: &str, role: &str) -> Result<(), Failure> {
    check_token_name(name).map_err(Failure::usage)?;
    let role = Role::parse(role).ok_or_else(|| {
        Failure::usage(format!("--role {role:?}: one of viewer, operator, admin"))
    })?;
    let tokens = all(config, client)?;
    if tokens.iter().any(|t| t.name == name) {
        return Err(Failure::usage(format!(
            "a token named `{name}` exists; remove it first (`claro token rm {name}`)"
        )));
    }
    if tokens.len() >= crate::web::access::TOKENS_MAX {
        return Err(Failure::usage(format!(
            "the cluster holds {} tokens already, the most it keeps",
            crate::web::access::TOKENS_MAX
        )));
    }
    let token = new_token(rand::random());
    let command = Command::TokenAdd {
        name: name.to_string(),
        role,
        hash: token_hash(&token),
        at_ms: crate::clock::now_ms(),
    };
    crate::cli::jobs::write(config, client, command, new_request_id())?;
    if client.json {
        let value = serde_json::json!({"name": name, "role": role, "token": token});
        return output::emit(&output::json_line(&value));
    }
    output::emit(&format!(
        "{token}\n(token `{name}`, role {}: shown only now; send it as `Authorization: Bearer TOKEN`)\n",
        role.as_str()
    ))
}

fn all(config: &Config, client: &ClientArgs) -> Result<Vec<TokenInfo>, Failure> {
    match call(config, client, &Request::Tokens)?.1 {
        Response::Tokens { tokens } => Ok(tokens),
        other => Err(failure_of(other)),
    }
}

fn list(config: &Config, client: &ClientArgs) -> Result<(), Failure> {
    let tokens = all(config, client)?;
    if client.json {
        return output::emit(&output::json_line(&tokens));
    }
    let mut out = format!("{:<24} {:<9} CREATED\n", "NAME", "ROLE");
    for t in &tokens {
        out.push_str(&format!(
            "{:<24} {:<9} {}\n",
            t.name,
            t.role.as_str(),
            output::rfc3339(t.created_ms)
        ));
    }
    output::emit(&out)
}

#[derive(Subcommand, Debug)]
pub enum TokenAction {
    /// Make a token NAME with a role; it is printed once (only its hash is kept).
    Add {
        name: String,
        /// viewer (reads), operator (also submits, cancels, retries, pauses)
        /// or admin (also servers, scripts, settings, tokens).
        #[arg(long)]
        role: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// The tokens: names, roles, when made.
    List {
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Revoke NAME: requests with it are refused from then on.
    Rm {
        name: String,
        #[command(flatten)]
        client: ClientArgs,
    },
}
