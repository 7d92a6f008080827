//! The client side of hotfolders: `claro hotfolder add|set|rm|pause|resume|
//! list`. Definitions are cluster settings: any instance answers, writes go
//! through the coordinator.

use crate::cli::client::{call, failure_of, print_staleness, ClientArgs};
use crate::cli::exit::Failure;
use crate::cli::output;
use crate::config::Config;
use crate::proto::{Request, Response};
use crate::state::hotfolders::Counts;
use crate::state::Command;
use crate::work::hotfolder::{shell_danger, split_template, Action, Hotfolder, OnSuccess, Trigger};
use clap::Subcommand;
use std::path::PathBuf;

/// How long `hotfolder add` waits for the coordinator to make the new
/// hotfolder's folders, where the share is reachable from here, so that
/// the folder it names exists when it says "drop files into".
const FOLDERS_WAIT_MS: u64 = 5_000;

/// True once `dir` exists, looking every 50 ms for at most `wait_ms`.
fn appears(dir: &std::path::Path, wait_ms: u64) -> bool {
    let deadline = std::time::Instant::now() + std::time::Duration::from_millis(wait_ms);
    loop {
        if dir.is_dir() {
            return true;
        }
        if std::time::Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

pub fn command(config: &Config, action: HotfolderAction) -> Result<(), Failure> {
    match action {
        HotfolderAction::Add(d) => {
            crate::work::hotfolder::check_name(&d.name).map_err(Failure::usage)?;
            let action = action_of(&d.options)?.ok_or_else(|| {
                Failure::usage("give the action: --command TEMPLATE or --script FILE")
            })?;
            let def = with_options(Hotfolder::new(&d.name, action), &d.options)?;
            if find(config, &d.client, &d.name)?.is_some() {
                return Err(Failure::usage(format!(
                    "hotfolder `{}` exists; change it with `claro hotfolder set`",
                    d.name
                )));
            }
            put(config, &d.client, def)?;
            let root = config
                .shared_root
                .canonicalize()
                .unwrap_or_else(|_| config.shared_root.clone());
            let inbox = root.join(&d.name).join("in");
            let made = root.is_dir() && appears(&inbox, FOLDERS_WAIT_MS);
            let when = if made || !root.is_dir() {
                ""
            } else {
                " (once the coordinator has made it)"
            };
            let text = format!(
                "{}: added; drop files into {}{when}",
                d.name,
                inbox.display()
            );
            let value = serde_json::json!({"added": d.name, "in": inbox, "made": made});
            output::changed(d.client.json, &text, value)
        }
        HotfolderAction::Set(d) => {
            let mut def = existing(config, &d.client, &d.name)?;
            if let Some(action) = action_of(&d.options)? {
                def.action = action;
                // Allowed for the template it was given with, not a new one.
                def.allow_shell = false;
            }
            put(config, &d.client, with_options(def, &d.options)?)?;
            let value = serde_json::json!({"changed": d.name});
            output::changed(d.client.json, &format!("{}: changed", d.name), value)
        }
        HotfolderAction::Rm { name, client } => {
            existing(config, &client, &name)?;
            let command = Command::HotfolderRemove { name: name.clone() };
            crate::cli::jobs::write(config, &client, command, crate::proto::new_request_id())?;
            let text = format!("{name}: removed (its folders stay)");
            output::changed(client.json, &text, serde_json::json!({"removed": name}))
        }
        HotfolderAction::Pause { name, client } => pause(config, &client, &name, true),
        HotfolderAction::Resume { name, client } => pause(config, &client, &name, false),
        HotfolderAction::List { stale, client } => list(config, &client, stale),
    }
}

fn action_of(o: &HotfolderOptions) -> Result<Option<Action>, Failure> {
    if let Some(template) = &o.command {
        let argv = split_template(template).map_err(Failure::usage)?;
        return Ok(Some(Action::Command { argv }));
    }
    if let Some(file) = &o.script {
        let code = crate::cli::jobs::read_script(file)?;
        crate::work::script::check(&code)
            .map_err(|e| Failure::usage(format!("{}: {e}", file.display())))?;
        return Ok(Some(Action::Script { code }));
    }
    Ok(None)
}

/// `def` with the options given; checked whole (exit 2 names the fault).
fn with_options(mut def: Hotfolder, o: &HotfolderOptions) -> Result<Hotfolder, Failure> {
    if !o.include.is_empty() {
        def.include = o.include.clone();
    }
    if !o.ignore.is_empty() {
        def.ignore = o.ignore.clone();
    }
    if let Some(v) = o.stable_ms {
        def.stable_ms = v;
    }
    if let Some(v) = &o.on_success {
        def.on_success = OnSuccess::parse(v)
            .ok_or_else(|| Failure::usage(format!("--on-success `{v}`: move or delete")))?;
    }
    if let Some(v) = o.max_attempts {
        def.max_attempts = v;
    }
    if let Some(v) = o.retries {
        def.max_attempts = v.saturating_add(1);
    }
    if let Some(v) = o.timeout_s {
        def.timeout_ms = v.saturating_mul(1000);
    }
    if let Some(v) = o.priority {
        def.priority = v;
    }
    if o.allow_shell {
        def.allow_shell = true;
    }
    if let Some(t) = &o.trigger {
        def.trigger = Trigger::parse(t)
            .ok_or_else(|| Failure::usage(format!("--trigger `{t}`: stable, ticket or marker")))?;
    }
    if o.folders {
        def.folders = true;
    }
    if o.no_folders {
        def.folders = false;
    }
    def.validate().map_err(Failure::usage)?;
    if let Action::Command { argv } = &def.action {
        if let Some(danger) = shell_danger(argv).filter(|_| def.allow_shell) {
            output::note(&format!(
                "warning: {danger}. Allowed by --allow-shell: whoever can drop a file \
                 into {}/in/ can run commands as the server's user\n",
                def.name
            ));
        }
    }
    Ok(def)
}

fn put(config: &Config, client: &ClientArgs, def: Hotfolder) -> Result<(), Failure> {
    let command = Command::HotfolderPut { def };
    crate::cli::jobs::write(config, client, command, crate::proto::new_request_id()).map(|_| ())
}

fn pause(config: &Config, client: &ClientArgs, name: &str, paused: bool) -> Result<(), Failure> {
    existing(config, client, name)?;
    let command = Command::HotfolderPause {
        name: name.into(),
        paused,
    };
    crate::cli::jobs::write(config, client, command, crate::proto::new_request_id())?;
    let text = format!("{name}: {}", if paused { "paused" } else { "resumed" });
    output::changed(
        client.json,
        &text,
        serde_json::json!({"name": name, "paused": paused}),
    )
}

fn all(
    config: &Config,
    client: &ClientArgs,
    stale: bool,
) -> Result<Vec<(Hotfolder, Counts)>, Failure> {
    match call(config, client, &Request::Hotfolders { stale })?.1 {
        Response::Hotfolders { hotfolders, stale } => {
            print_staleness(stale.as_ref());
            Ok(hotfolders)
        }
        other => Err(failure_of(other)),
    }
}

fn find(config: &Config, client: &ClientArgs, name: &str) -> Result<Option<Hotfolder>, Failure> {
    crate::work::hotfolder::check_name(name).map_err(Failure::usage)?;
    Ok(all(config, client, false)?
        .into_iter()
        .map(|(d, _)| d)
        .find(|d| d.name == name))
}

fn existing(config: &Config, client: &ClientArgs, name: &str) -> Result<Hotfolder, Failure> {
    find(config, client, name)?.ok_or_else(|| Failure::failed(format!("no hotfolder `{name}`")))
}

/// One hotfolder in `claro hotfolder list --json`.
#[derive(serde::Serialize)]
struct HotfolderJson<'a> {
    name: &'a str,
    paused: bool,
    waiting: u64,
    in_progress: u64,
    done_last_hour: u64,
    failed_last_hour: u64,
    action: String,
    trigger: &'static str,
    folders: bool,
}

/// When a hotfolder takes its input, in one word: `stable`, `ticket` or
/// `marker`, with `+folders` when each folder is a job.
fn takes_text(d: &Hotfolder) -> String {
    let folders = if d.folders { "+folders" } else { "" };
    format!("{}{folders}", d.trigger.as_str())
}

fn action_text(a: &Action) -> String {
    match a {
        Action::Command { argv } => crate::work::hotfolder::template_text(argv),
        Action::Script { code } => format!("script ({} bytes)", code.len()),
    }
}

fn list(config: &Config, client: &ClientArgs, stale: bool) -> Result<(), Failure> {
    let rows = all(config, client, stale)?;
    if client.json {
        let list: Vec<HotfolderJson> = rows
            .iter()
            .map(|(d, c)| HotfolderJson {
                name: &d.name,
                paused: d.paused,
                waiting: c.waiting,
                in_progress: c.in_progress,
                done_last_hour: c.done_last_hour,
                failed_last_hour: c.failed_last_hour,
                action: action_text(&d.action),
                trigger: d.trigger.as_str(),
                folders: d.folders,
            })
            .collect();
        return output::emit(&output::json_line(&list));
    }
    let mut out = format!(
        "{:<20} {:<7} {:>8} {:>11} {:>9} {:>11}  {:<14} ACTION\n",
        "NAME", "STATE", "WAITING", "IN_PROGRESS", "DONE_1H", "FAILED_1H", "TAKES"
    );
    for (d, c) in &rows {
        out.push_str(&format!(
            "{:<20} {:<7} {:>8} {:>11} {:>9} {:>11}  {:<14} {}\n",
            d.name,
            if d.paused { "paused" } else { "active" },
            c.waiting,
            c.in_progress,
            c.done_last_hour,
            c.failed_last_hour,
            takes_text(d),
            output::escape_text(&action_text(&d.action))
        ));
    }
    output::emit(&out)
}

#[derive(Subcommand, Debug)]
pub enum HotfolderAction {
    /// Define NAME (its folders are made under shared_root/NAME/).
    Add(HotfolderDef),
    /// Change NAME: the options given replace those it had.
    Set(HotfolderDef),
    /// Forget NAME (its folders and files stay where they are).
    Rm {
        name: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Stop taking new files from NAME (jobs already made go on).
    Pause {
        name: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    Resume {
        name: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Every hotfolder: files waiting, in progress, done and failed in the
    /// last hour, paused or not.
    List {
        #[arg(long)]
        stale: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
}

/// What `hotfolder add` and `set` take.
#[derive(clap::Args, Debug, Clone)]
pub struct HotfolderOptions {
    /// The action: an argv template split like a shell would (no shell
    /// runs), with {input}, {output_dir}, {name}, {stem}, {ext}; it also
    /// gets CLARO_INPUT, CLARO_OUTPUT_DIR, CLARO_NAME, CLARO_STEM,
    /// CLARO_EXT in its environment.
    #[arg(long, conflicts_with = "script")]
    pub command: Option<String>,
    /// Accept a shell template with a placeholder in its -c string
    /// (`sh -c 'echo {name}'`), which runs parts of file names as code.
    #[arg(long)]
    pub allow_shell: bool,
    /// The action: a script file; it sees FILE (#{input, output_dir, name,
    /// stem, ext, relative}) and may write only in FILE.output_dir.
    #[arg(long)]
    pub script: Option<PathBuf>,
    /// Time a file's size and modification time must stay unchanged.
    #[arg(long)]
    pub stable_ms: Option<u64>,
    /// Names taken (glob; default: all not ignored). Repeat for more.
    #[arg(long)]
    pub include: Vec<String>,
    /// Names ignored (glob), instead of the default list.
    #[arg(long)]
    pub ignore: Vec<String>,
    /// What becomes of the original after success: move (to done/) or delete.
    #[arg(long)]
    pub on_success: Option<String>,
    /// Attempts of the action per file, in all (default 1).
    #[arg(long, conflicts_with = "retries")]
    pub max_attempts: Option<u32>,
    /// Tries of a failed action after the first (default 0: a failed file
    /// goes to error/ at once); an attempt lost with its server always
    /// runs again.
    #[arg(long)]
    pub retries: Option<u32>,
    /// Longest time of one attempt, in seconds.
    #[arg(long)]
    pub timeout_s: Option<u64>,
    #[arg(long, allow_hyphen_values = true)]
    pub priority: Option<i32>,
    /// When a stable file is taken: stable (at once), ticket (once
    /// NAME.json or NAME.xml is beside it; ticket.json or ticket.xml inside
    /// a job folder), marker (once NAME.ready is beside it).
    #[arg(long)]
    pub trigger: Option<String>,
    /// Each folder dropped directly into in/ is one job (a job folder),
    /// taken when everything in it is stable.
    #[arg(long, overrides_with = "no_folders")]
    pub folders: bool,
    /// Folders in in/ are looked into for files again (the default).
    #[arg(long)]
    pub no_folders: bool,
}

/// A hotfolder's name and options (`hotfolder add` and `set`).
#[derive(clap::Args, Debug)]
pub struct HotfolderDef {
    pub name: String,
    #[command(flatten)]
    pub options: HotfolderOptions,
    #[command(flatten)]
    pub client: ClientArgs,
}
