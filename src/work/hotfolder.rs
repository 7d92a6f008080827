//! Hotfolders, the deciding parts: a definition and its checks, which file
//! names are taken (include and ignore patterns), when a file is stable
//! (size and modification time unchanged for the stability time), the
//! action's argv from its template, and free output names. Pure: no I/O,
//! no clock (times are passed in).
//!
//! Layout of a hotfolder NAME under `shared_root`: `NAME/in/` (drop files
//! here, subfolders too), `NAME/out/` (published outputs, same relative
//! folder), `NAME/done/` (originals after success), `NAME/error/`
//! (originals after the last failed attempt, with `<file>.error.txt`), and
//! `NAME/.claro/` (claimed originals and staged outputs, per job).

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

/// Hotfolders of one cluster.
pub const HOTFOLDERS_MAX: usize = 256;
/// Longest hotfolder name.
pub const NAME_BYTES_MAX: usize = 64;
/// Patterns of one hotfolder (include and ignore together).
pub const PATTERNS_MAX: usize = 64;
pub const PATTERN_BYTES_MAX: usize = 256;
/// Longest action template.
pub const TEMPLATE_BYTES_MAX: usize = 8 * 1024;
/// Stability time: at least one poll apart, at most an hour.
pub const STABLE_MS_MIN: u64 = 100;
pub const STABLE_MS_MAX: u64 = 3_600_000;
pub const STABLE_MS_DEFAULT: u64 = 2_000;
/// Tries of a failed action after the first, unless the hotfolder says
/// otherwise (`--retries`): an action that fails on a file's content fails
/// again on it, so the file goes to `error/` at once. An attempt lost with
/// its instance is not a failure: it runs again whatever this says.
pub const RETRIES_DEFAULT: u32 = 0;
/// Files one scan of one hotfolder looks at; more wait for later scans.
pub const SCAN_FILES_MAX: usize = 200_000;
/// Outputs published for one file at most.
pub const OUTPUTS_MAX: usize = 10_000;
/// Suffixes tried for a free output name (`name (1).ext` ...).
pub const FREE_NAME_TRIES_MAX: u32 = 10_000;
/// Ignored unless the definition says otherwise: hidden files, temporary
/// and partial downloads, Office lock files and desktop litter, and result
/// tickets (a hotfolder fed by another's `out/` takes its outputs, not the
/// tickets beside them).
pub const IGNORE_DEFAULT: [&str; 8] = [
    ".*",
    "*.tmp",
    "*.part",
    "~*",
    "Thumbs.db",
    ".DS_Store",
    "._*",
    "*.result.json",
];
/// Working area inside each hotfolder.
pub const WORK_DIR: &str = ".claro";
/// Names in a job's working folder that are claro's own start with this
/// (`node::work::work_area`), so a file so named is never taken from `in/`.
pub const RESERVED_PREFIX: &str = ".claro-";

/// What happens to a file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// An argv template (split like a shell would, never run by one), with
    /// `{input}`, `{output_dir}`, `{name}`, `{stem}`, `{ext}` substituted
    /// per argument.
    Command { argv: Vec<String> },
    /// A script of the Script Execution Engine (its text), which sees
    /// `FILE` (`#{input, output_dir, name, stem, ext, relative}`).
    Script { code: String },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnSuccess {
    Move,
    Delete,
}

impl OnSuccess {
    pub fn parse(s: &str) -> Option<OnSuccess> {
        match s {
            "move" => Some(OnSuccess::Move),
            "delete" => Some(OnSuccess::Delete),
            _ => None,
        }
    }
}

/// A hotfolder's definition, a cluster setting.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hotfolder {
    pub name: String,
    pub action: Action,
    /// Names taken (empty: all that are not ignored).
    pub include: Vec<String>,
    pub ignore: Vec<String>,
    pub stable_ms: u64,
    pub priority: i32,
    pub max_attempts: u32,
    pub timeout_ms: u64,
    pub on_success: OnSuccess,
    pub paused: bool,
    /// Accepts a shell template with a placeholder in its command string
    /// (`sh -c 'echo {name}'`), which runs parts of file names as code:
    /// the admin said so knowingly. Absent in older definitions: false.
    #[serde(default)]
    pub allow_shell: bool,
    /// When a stable file is taken (absent in older definitions: when
    /// stable, as before).
    #[serde(default)]
    pub trigger: Trigger,
    /// Each folder dropped directly into `in/` is one job (a job folder),
    /// taken once everything in it is stable; files directly in `in/` are
    /// still jobs of their own.
    #[serde(default)]
    pub folders: bool,
}

/// When a hotfolder takes a file (or job folder) that is stable.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Trigger {
    /// As soon as it is stable; a ticket beside it (`NAME.json` or
    /// `NAME.xml`) goes with it when there is one.
    #[default]
    Stable,
    /// Only once its ticket is there and stable too: `NAME.json` or
    /// `NAME.xml` beside it, or `ticket.json`/`ticket.xml` inside a job
    /// folder. Files named `*.json` and `*.xml` are then tickets only.
    Ticket,
    /// Only once `NAME.ready` is there (the writer's "I am done"); the
    /// marker is removed when the file is taken. Files named `*.ready` are
    /// then markers only.
    Marker,
}

impl Trigger {
    pub fn parse(s: &str) -> Option<Trigger> {
        match s {
            "stable" => Some(Trigger::Stable),
            "ticket" => Some(Trigger::Ticket),
            "marker" => Some(Trigger::Marker),
            _ => None,
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Trigger::Stable => "stable",
            Trigger::Ticket => "ticket",
            Trigger::Marker => "marker",
        }
    }
}

impl Hotfolder {
    pub fn new(name: &str, action: Action) -> Hotfolder {
        Hotfolder {
            name: name.into(),
            action,
            include: Vec::new(),
            ignore: IGNORE_DEFAULT.iter().map(|s| s.to_string()).collect(),
            stable_ms: STABLE_MS_DEFAULT,
            priority: 0,
            max_attempts: RETRIES_DEFAULT + 1,
            timeout_ms: crate::work::jobs::TIMEOUT_MS_DEFAULT,
            on_success: OnSuccess::Move,
            paused: false,
            allow_shell: false,
            trigger: Trigger::Stable,
            folders: false,
        }
    }

    /// Every limit: a bad definition changes nothing.
    pub fn validate(&self) -> Result<(), String> {
        check_name(&self.name)?;
        match &self.action {
            Action::Command { argv } => {
                if argv.is_empty() {
                    return Err("the command template is empty".into());
                }
                let bytes: usize = argv.iter().map(String::len).sum();
                if bytes > TEMPLATE_BYTES_MAX || argv.len() > crate::work::jobs::ARGS_COUNT_MAX {
                    return Err(format!(
                        "the command template is over {TEMPLATE_BYTES_MAX} bytes or {} arguments",
                        crate::work::jobs::ARGS_COUNT_MAX
                    ));
                }
                for a in argv {
                    check_placeholders(a)?;
                }
                if !self.allow_shell {
                    if let Some(danger) = shell_danger(argv) {
                        return Err(format!(
                            "{danger}; or, knowing the risk, allow it (--allow-shell, \
                             `allow_shell`)"
                        ));
                    }
                }
            }
            Action::Script { code } => {
                if code.len() > crate::work::jobs::SCRIPT_BYTES_MAX {
                    return Err(format!(
                        "the script is over {} bytes",
                        crate::work::jobs::SCRIPT_BYTES_MAX
                    ));
                }
                crate::work::script::check(code).map_err(|e| e.to_string())?;
            }
        }
        if self.include.len() + self.ignore.len() > PATTERNS_MAX {
            return Err(format!("more than {PATTERNS_MAX} patterns"));
        }
        Patterns::new(&self.include, &self.ignore)?;
        if !(STABLE_MS_MIN..=STABLE_MS_MAX).contains(&self.stable_ms) {
            return Err(format!(
                "the stability time must be {STABLE_MS_MIN}..={STABLE_MS_MAX} ms, not {}",
                self.stable_ms
            ));
        }
        let mut spec = crate::work::jobs::JobSpec::script("1");
        spec.priority = self.priority;
        spec.max_attempts = self.max_attempts;
        spec.timeout_ms = self.timeout_ms;
        spec.validate()
    }
}

/// Hotfolder names are folder names on every system: letters, digits, `-`
/// and `_`.
pub fn check_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= NAME_BYTES_MAX
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "`{name}` is not a hotfolder name: 1 to {NAME_BYTES_MAX} letters, digits, `-` or `_`"
        ))
    }
}

const PLACEHOLDERS: [&str; 5] = ["input", "output_dir", "name", "stem", "ext"];

fn check_placeholders(arg: &str) -> Result<(), String> {
    let mut rest = arg;
    while let Some(open) = rest.find('{') {
        let Some(close) = rest[open..].find('}') else {
            return Err(format!("`{arg}`: a `{{` without `}}`"));
        };
        let name = &rest[open + 1..open + close];
        if let Some(key) = name.strip_prefix("ticket.") {
            crate::work::ticket::check_key(key).map_err(|e| format!("`{arg}`: {e}"))?;
        } else if !PLACEHOLDERS.contains(&name) {
            return Err(format!(
                "`{arg}`: unknown placeholder `{{{name}}}` (known: {}, {{ticket.KEY}})",
                PLACEHOLDERS.map(|p| format!("{{{p}}}")).join(", ")
            ));
        }
        rest = &rest[open + close + 1..];
    }
    Ok(())
}

/// Programs that run their `-c` argument as shell code (matched on the
/// last path component: `/bin/sh`, `/usr/bin/bash` ...).
const SHELLS: [&str; 11] = [
    "sh", "bash", "dash", "zsh", "ksh", "ash", "mksh", "yash", "csh", "tcsh", "fish",
];

/// The environment variables every action process gets, one per
/// placeholder: the safe way for a shell to see them.
pub const ENV_VARS: [(&str, &str); 5] = [
    ("CLARO_INPUT", "input"),
    ("CLARO_OUTPUT_DIR", "output_dir"),
    ("CLARO_NAME", "name"),
    ("CLARO_STEM", "stem"),
    ("CLARO_EXT", "ext"),
];

/// A command template as it would be typed again: argv quoted as a shell
/// reads it (`sh -c 'echo "$1"' sh {input}`), so what `hotfolder list`
/// shows can be given back to `hotfolder add`.
pub fn template_text(argv: &[String]) -> String {
    shlex::try_join(argv.iter().map(String::as_str)).unwrap_or_else(|_| argv.join(" "))
}

/// Why a template would run file names as code, if it would: a shell
/// given `-c` (alone or among other flags: `-ec`, `-lc`) whose command
/// string holds a placeholder. The shell may come after a wrapper (`env
/// sh`, `busybox sh`, `nice bash`): every argument that names a shell is
/// looked at. Placeholders after the command string are the shell's `$0`,
/// `$1` ...: data, never code.
pub fn shell_danger(argv: &[String]) -> Option<String> {
    for (i, word) in argv.iter().enumerate() {
        let program = word.rsplit('/').next().unwrap_or(word);
        if !SHELLS.contains(&program) {
            continue;
        }
        let Some(code) = command_string(&argv[i + 1..]) else {
            continue;
        };
        // The placeholders in the command string, in their order there.
        let mut found: Vec<(usize, &str)> = PLACEHOLDERS
            .iter()
            .filter_map(|p| code.find(&format!("{{{p}}}")).map(|at| (at, *p)))
            .collect();
        // A ticket's values are the sender's text, as much as a file name.
        found.extend(
            crate::work::ticket::placeholders(code)
                .into_iter()
                .map(|key| {
                    (
                        code.find(&format!("{{ticket.{key}}}")).unwrap_or(0),
                        "ticket.KEY",
                    )
                }),
        );
        found.sort();
        let Some(&(_, first)) = found.first() else {
            continue;
        };
        let named: Vec<String> = found.iter().map(|(_, p)| format!("`{{{p}}}`")).collect();
        let template = template_text(argv);
        return Some(format!(
            "`{template}`: the shell would run {} as code (in its -c command string, a \
             file named `$(touch x).pdf` runs `touch`). Give the values as separate \
             arguments (`sh -c 'echo \"$1\"' sh {{{first}}}`) or read them from the \
             environment (`sh -c 'echo \"$CLARO_NAME\"'`; {})",
            named.join(", "),
            ENV_VARS.map(|(var, _)| var).join(", ")
        ));
    }
    None
}

/// The command string of a shell's arguments when they hold `-c`: the
/// first operand after the options (`sh -c [options] STRING [$0 [$1 ...]]`).
fn command_string(args: &[String]) -> Option<&str> {
    let mut with_c = false;
    let mut rest = args.iter();
    while let Some(a) = rest.next() {
        if a == "--" || a == "-" {
            return rest.next().filter(|_| with_c).map(String::as_str);
        }
        if let Some(long) = a.strip_prefix("--") {
            // bash's long options; two of them take a value.
            if matches!(long, "rcfile" | "init-file") {
                rest.next();
            }
            continue;
        }
        let Some(flags) = a.strip_prefix('-').or_else(|| a.strip_prefix('+')) else {
            return with_c.then_some(a.as_str());
        };
        with_c |= a.starts_with('-') && flags.contains('c');
        // `-o OPTION`, `+o OPTION`, bash's `-O SHOPT`: a value follows.
        if flags.contains('o') || flags.contains('O') {
            rest.next();
        }
    }
    None
}

/// A command template split into argv as a shell would split it (quotes,
/// backslashes), without running a shell.
pub fn split_template(template: &str) -> Result<Vec<String>, String> {
    let argv = shlex::split(template).ok_or_else(|| format!("`{template}`: unbalanced quotes"))?;
    if argv.is_empty() {
        return Err("the command template is empty".into());
    }
    Ok(argv)
}

/// The values of the placeholders for one file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileValues {
    pub input: String,
    pub output_dir: String,
    pub name: String,
    pub stem: String,
    pub ext: String,
}

impl FileValues {
    /// `input` and `output_dir` as given; name, stem and extension (without
    /// its dot) from the input's last component.
    pub fn new(input: &str, output_dir: &str) -> FileValues {
        let name = input.rsplit('/').next().unwrap_or(input).to_string();
        let (stem, ext) = match name.rfind('.') {
            Some(i) if i > 0 => (name[..i].to_string(), name[i + 1..].to_string()),
            _ => (name.clone(), String::new()),
        };
        FileValues {
            input: input.into(),
            output_dir: output_dir.into(),
            name,
            stem,
            ext,
        }
    }

    /// `CLARO_INPUT`, `CLARO_OUTPUT_DIR`, `CLARO_NAME`, `CLARO_STEM` and
    /// `CLARO_EXT`, for the action's environment.
    pub fn env(&self) -> Vec<(String, String)> {
        ENV_VARS
            .iter()
            .map(|&(var, placeholder)| {
                let value = match placeholder {
                    "input" => &self.input,
                    "output_dir" => &self.output_dir,
                    "name" => &self.name,
                    "stem" => &self.stem,
                    _ => &self.ext,
                };
                (var.to_string(), value.clone())
            })
            .collect()
    }
}

/// Substitutes the placeholders in each argument; a value is one argument
/// whatever it holds (spaces, quotes, a leading dash).
pub fn expand(argv: &[String], v: &FileValues) -> Vec<String> {
    argv.iter()
        .map(|a| {
            a.replace("{input}", &v.input)
                .replace("{output_dir}", &v.output_dir)
                .replace("{name}", &v.name)
                .replace("{stem}", &v.stem)
                .replace("{ext}", &v.ext)
        })
        .collect()
}

/// Which names a hotfolder takes.
#[derive(Debug)]
pub struct Patterns {
    include: Option<globset::GlobSet>,
    ignore: globset::GlobSet,
}

impl Patterns {
    pub fn new(include: &[String], ignore: &[String]) -> Result<Patterns, String> {
        let set = |list: &[String]| -> Result<globset::GlobSet, String> {
            let mut b = globset::GlobSetBuilder::new();
            for p in list {
                if p.len() > PATTERN_BYTES_MAX {
                    return Err(format!("a pattern over {PATTERN_BYTES_MAX} bytes"));
                }
                let glob = globset::GlobBuilder::new(p)
                    .literal_separator(true)
                    .build()
                    .map_err(|e| format!("pattern `{p}`: {e}"))?;
                b.add(glob);
            }
            b.build().map_err(|e| e.to_string())
        };
        let include = if include.is_empty() {
            None
        } else {
            Some(set(include)?)
        };
        Ok(Patterns {
            include,
            ignore: set(ignore)?,
        })
    }

    /// Whether the file `name` (its last component) is taken. A name that
    /// starts with `RESERVED_PREFIX` never is, whatever the patterns say.
    pub fn takes(&self, name: &str) -> bool {
        !name.starts_with(RESERVED_PREFIX)
            && !self.ignore.is_match(name)
            && self.include.as_ref().is_none_or(|s| s.is_match(name))
    }

    /// Whether the folder `name` is looked into (ignored folders, hidden
    /// ones and the working area by default, are not).
    pub fn enters(&self, name: &str) -> bool {
        name != WORK_DIR && !name.starts_with(RESERVED_PREFIX) && !self.ignore.is_match(name)
    }
}

/// One file as a scan saw it (path relative to `in/`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Seen {
    pub path: String,
    pub bytes: u64,
    pub modified_ms: u64,
    /// The file's identity (inode): a file replaced under the same name
    /// with the same size and time is still a new file. For a job folder,
    /// a fingerprint of its listing (see `folder_print`).
    pub inode: u64,
    /// A job folder: `bytes` is the sum of its files, `modified_ms` the
    /// latest change below it.
    pub folder: bool,
}

/// A plain stable file's outputs are published no sooner than this many
/// stability times after its last write: a writer that opens the file anew
/// for each piece (`>>`) and paused longer than `stable_ms`, but not this
/// long, makes its next piece before then, and the part taken then fails
/// naming it instead of becoming a success of a part.
pub const PUBLISH_HOLD_STABLE_TIMES: u64 = 2;
/// Longest hold after the claim, whatever the share's clock says.
pub const PUBLISH_HOLD_MS_MAX: u64 = 60_000;

/// Until when (ms since the epoch) a job's attempt holds its outputs back
/// after its action ended: see `PUBLISH_HOLD_STABLE_TIMES`. Nothing is held
/// for a file its writer declared complete (a marker or a ticket) or a job
/// folder (its listing is checked unchanged instead). The hold ends at
/// most `stable_ms` after the claim (the claim itself came at least
/// `stable_ms` after the last write), so a file time in the future holds
/// no longer than that.
pub fn publish_hold_until_ms(
    input: &crate::work::jobs::FileInput,
    stable_ms: u64,
    claimed_ms: u64,
) -> u64 {
    if input.folder || input.marker.is_some() || input.ticket.is_some() {
        return 0;
    }
    let by_write = input
        .modified_ms
        .saturating_add(stable_ms.saturating_mul(PUBLISH_HOLD_STABLE_TIMES));
    let cap = claimed_ms.saturating_add(stable_ms.min(PUBLISH_HOLD_MS_MAX));
    by_write.min(cap)
}

/// Decides when files are stable: a file is ready once a scan has seen the
/// same size, modification time and inode for `stable_ms`. Any change starts the
/// wait again; a file that disappears is forgotten. Time is the
/// coordinator's own clock, never the file's time (a share's clock may
/// differ).
#[derive(Debug, Default)]
pub struct Stability {
    /// path -> (size, mtime, inode, first seen with those, in ms)
    since: HashMap<String, (u64, u64, u64, u64)>,
}

impl Stability {
    /// Feeds one complete scan at `now_ms`; returns the files stable for
    /// `stable_ms`, in path order. A ready file stays known (and is
    /// returned again by later scans) until it disappears: the caller skips
    /// what it already submitted.
    pub fn observe(&mut self, now_ms: u64, stable_ms: u64, scan: &[Seen]) -> Vec<Seen> {
        let mut next = HashMap::with_capacity(scan.len());
        let mut ready = Vec::new();
        for s in scan {
            let first = match self.since.get(&s.path) {
                Some(&(bytes, mtime, inode, at))
                    if (bytes, mtime, inode) == (s.bytes, s.modified_ms, s.inode) =>
                {
                    at
                }
                _ => now_ms,
            };
            if now_ms.saturating_sub(first) >= stable_ms {
                ready.push(s.clone());
            }
            next.insert(s.path.clone(), (s.bytes, s.modified_ms, s.inode, first));
        }
        self.since = next;
        ready.sort();
        ready
    }

    pub fn tracked(&self) -> usize {
        self.since.len()
    }

    /// Starts the wait of `paths` again at `now_ms`: a file found stable
    /// but still open for writing is taken only `stable_ms` after that.
    pub fn restart(&mut self, paths: &[String], now_ms: u64) {
        for p in paths {
            if let Some(entry) = self.since.get_mut(p) {
                entry.3 = now_ms;
            }
        }
    }

    /// When the next waiting file becomes stable, if any is waiting at
    /// `now_ms`: the scanner looks again then rather than at the next poll,
    /// so a file is taken within one poll interval of being stable.
    pub fn due_ms(&self, now_ms: u64, stable_ms: u64) -> Option<u64> {
        self.since
            .values()
            .map(|&(_, _, _, at)| at.saturating_add(stable_ms))
            .filter(|&due| due > now_ms)
            .min()
    }
}

/// Shortest time between the end of one scan and the start of the next.
pub const SCAN_GAP_MS_MIN: u64 = 50;

/// When the coordinator scans next, after a scan that ended at `now_ms`
/// and took `took_ms`: at the next poll, or sooner when a waiting file
/// becomes stable (`due_ms`). Never sooner than the scan took, so scanning
/// a large `in/` costs at most about half of one thread.
pub fn next_scan_ms(now_ms: u64, poll_ms: u64, due_ms: Option<u64>, took_ms: u64) -> u64 {
    let polled = now_ms.saturating_add(poll_ms);
    let wanted = due_ms.map_or(polled, |d| d.min(polled));
    wanted.max(now_ms.saturating_add(took_ms.max(SCAN_GAP_MS_MIN)))
}

/// One job's worth of a scan: a file or job folder, with the ticket and
/// marker that go with it (paths relative to `in/`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unit {
    pub main: Seen,
    pub ticket: Option<String>,
    pub marker: Option<String>,
}

impl Unit {
    /// A file or folder alone, without ticket or marker.
    pub fn of(main: Seen) -> Unit {
        Unit {
            main,
            ticket: None,
            marker: None,
        }
    }
}

/// What an entry of a scan is to the trigger.
enum Role<'a> {
    Main,
    /// A ticket or marker of the entry named.
    Companion(&'a str),
}

fn role<'a>(
    trigger: Trigger,
    s: &'a Seen,
    folder: &dyn Fn(&str) -> bool,
    known: &dyn Fn(&str) -> bool,
) -> Role<'a> {
    if let Some((top, _)) = s.path.split_once('/') {
        if folder(top) {
            return Role::Companion(top); // a job folder's own ticket
        }
    }
    if s.folder {
        return Role::Main;
    }
    for suffix in crate::work::ticket::SIDECAR_SUFFIXES {
        if let Some(of) = s.path.strip_suffix(suffix).filter(|of| !of.is_empty()) {
            if trigger == Trigger::Ticket || known(of) {
                return Role::Companion(of);
            }
        }
    }
    match s.path.strip_suffix(crate::work::ticket::MARKER_SUFFIX) {
        Some(of) if trigger == Trigger::Marker && !of.is_empty() => Role::Companion(of),
        _ => Role::Main,
    }
}

/// Groups a scan into units and says which are ready under `trigger`,
/// given the paths found stable: a unit is ready when it is stable, and
/// so is its ticket if it has one (a ticket still being written waits),
/// with the ticket the `ticket` trigger needs and the marker the `marker`
/// trigger needs. Tickets and markers are never units of their own (with
/// the `stable` trigger, `NAME.json` is a ticket only while `NAME` is
/// there). Units in path order.
pub fn units(
    trigger: Trigger,
    scan: &[Seen],
    stable: &std::collections::HashSet<&str>,
) -> Vec<(Unit, bool)> {
    let by_path: HashMap<&str, &Seen> = scan.iter().map(|s| (s.path.as_str(), s)).collect();
    let folder = |p: &str| by_path.get(p).is_some_and(|s| s.folder);
    let known = |p: &str| by_path.contains_key(p);
    let mut companions: HashMap<&str, Vec<&str>> = HashMap::new();
    let mut mains = Vec::new();
    for s in scan {
        match role(trigger, s, &folder, &known) {
            Role::Main => mains.push(s),
            Role::Companion(of) => companions.entry(of).or_default().push(&s.path),
        }
    }
    mains.sort();
    mains
        .into_iter()
        .map(|m| {
            let mut ticket = None;
            let mut marker = None;
            let mut theirs = companions.remove(m.path.as_str()).unwrap_or_default();
            // Inside a job folder first, then `.json` before `.xml`.
            theirs.sort_by_key(|c| (!c.contains('/'), *c));
            for c in theirs {
                if c.ends_with(crate::work::ticket::MARKER_SUFFIX) && !c.contains('/') {
                    marker.get_or_insert(c.to_string());
                } else {
                    ticket.get_or_insert(c.to_string());
                }
            }
            let is_stable = |p: &Option<String>| p.as_deref().is_none_or(|p| stable.contains(p));
            let ready = stable.contains(m.path.as_str())
                && is_stable(&ticket)
                && is_stable(&marker)
                && (trigger != Trigger::Ticket || ticket.is_some())
                && (trigger != Trigger::Marker || marker.is_some());
            (
                Unit {
                    main: m.clone(),
                    ticket,
                    marker,
                },
                ready,
            )
        })
        .collect()
}

/// Entries of one job folder, at most: a bigger one is not taken (its
/// listing alone would be a large entry); the scan says so.
pub const FOLDER_ENTRIES_MAX: usize = 10_000;
/// Folder levels inside a job folder, at most.
pub const FOLDER_DEPTH_MAX: usize = 16;

/// A job folder's identity, from its listing (each entry's path below the
/// folder, size and modification time, in any order): any file added,
/// removed, renamed, grown or touched changes it, whatever the folder's
/// own times say (a rename of the folder may change those). FNV-1a, so
/// that every instance computes the same from the same listing.
pub fn folder_print(entries: &mut [(String, u64, u64)]) -> u64 {
    entries.sort();
    let mut hash = crate::fingerprint::Fnv::default();
    for (path, bytes, modified_ms) in entries.iter() {
        hash.eat(path.as_bytes());
        hash.eat(&[0]);
        hash.eat(&bytes.to_le_bytes());
        hash.eat(&modified_ms.to_le_bytes());
    }
    hash.finish()
}

/// The first name `name`, `stem (1).ext`, `stem (2).ext`, ... for which
/// `taken` is false: an output never overwrites another.
pub fn free_name(name: &str, taken: &mut dyn FnMut(&str) -> bool) -> Option<String> {
    if !taken(name) {
        return Some(name.to_string());
    }
    (1..FREE_NAME_TRIES_MAX)
        .map(|n| numbered(name, n))
        .find(|candidate| !taken(candidate))
}

/// `name` with ` (n)` before its extension: `a b (2).pdf`.
pub fn numbered(name: &str, n: u32) -> String {
    let (stem, ext) = match name.rfind('.') {
        Some(i) if i > 0 => (&name[..i], &name[i..]),
        _ => (name, ""),
    };
    format!("{stem} ({n}){ext}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seen(path: &str, bytes: u64, modified_ms: u64) -> Seen {
        Seen {
            path: path.into(),
            bytes,
            modified_ms,
            inode: 1,
            folder: false,
        }
    }

    #[test]
    fn outputs_wait_twice_the_stability_time_after_the_last_write_unless_declared_complete() {
        let mut input = crate::work::jobs::FileInput {
            hotfolder: "hf".into(),
            input: "a.pdf".into(),
            bytes: 1,
            modified_ms: 10_000,
            inode: 1,
            delete_on_success: false,
            folder: false,
            ticket: None,
            marker: None,
        };
        // Claimed as soon as stable: held until two stability times after
        // the last write, i.e. one after the claim.
        assert_eq!(publish_hold_until_ms(&input, 2_000, 12_000), 14_000);
        // Claimed long after: nothing left to hold (the time is past).
        assert_eq!(publish_hold_until_ms(&input, 2_000, 60_000), 14_000);
        // A file time in the future (another clock): one stability time
        // after the claim at most, and never more than the cap.
        input.modified_ms = 1_000_000;
        assert_eq!(publish_hold_until_ms(&input, 2_000, 12_000), 14_000);
        let long = STABLE_MS_MAX;
        assert_eq!(
            publish_hold_until_ms(&input, long, 12_000),
            12_000 + PUBLISH_HOLD_MS_MAX
        );
        // Declared complete by its writer, or a job folder: no hold.
        for declared in [
            FileInputCase::Marker,
            FileInputCase::Ticket,
            FileInputCase::Folder,
        ] {
            let mut i = input.clone();
            match declared {
                FileInputCase::Marker => i.marker = Some("a.pdf.ready".into()),
                FileInputCase::Ticket => i.ticket = Some("a.pdf.json".into()),
                FileInputCase::Folder => i.folder = true,
            }
            assert_eq!(publish_hold_until_ms(&i, 2_000, 12_000), 0);
        }
    }

    enum FileInputCase {
        Marker,
        Ticket,
        Folder,
    }

    #[test]
    fn a_file_is_ready_only_after_it_stayed_unchanged_for_the_stability_time() {
        let mut s = Stability::default();
        assert!(s.observe(0, 1000, &[seen("a", 10, 5)]).is_empty());
        // Still growing: the wait starts again.
        assert!(s.observe(600, 1000, &[seen("a", 20, 5)]).is_empty());
        assert!(s.observe(1500, 1000, &[seen("a", 20, 5)]).is_empty());
        assert_eq!(
            s.observe(1600, 1000, &[seen("a", 20, 5)]),
            vec![seen("a", 20, 5)]
        );
        // Touched (same size, new mtime): not ready until stable again.
        assert!(s.observe(1700, 1000, &[seen("a", 20, 6)]).is_empty());
        // Gone: forgotten; back: a new wait.
        assert!(s.observe(1800, 1000, &[]).is_empty());
        assert_eq!(s.tracked(), 0);
        assert!(s.observe(5000, 1000, &[seen("a", 20, 6)]).is_empty());
        // Replaced by another file of the same size and time: a new wait.
        let other = Seen {
            inode: 2,
            ..seen("a", 20, 6)
        };
        assert!(s
            .observe(6000, 1000, std::slice::from_ref(&other))
            .is_empty());
        assert_eq!(
            s.observe(7000, 1000, std::slice::from_ref(&other)),
            vec![other]
        );
    }

    #[test]
    fn the_next_scan_is_at_the_poll_or_when_a_file_becomes_stable() {
        assert_eq!(next_scan_ms(1000, 1000, None, 10), 2000);
        assert_eq!(next_scan_ms(1000, 1000, Some(1300), 10), 1300);
        assert_eq!(next_scan_ms(1000, 1000, Some(5000), 10), 2000);
        // Not sooner than the gap, nor than the last scan took.
        assert_eq!(next_scan_ms(1000, 1000, Some(1001), 10), 1050);
        assert_eq!(next_scan_ms(1000, 1000, Some(1100), 400), 1400);
    }

    #[test]
    fn the_next_look_is_due_when_the_first_waiting_file_becomes_stable() {
        let mut s = Stability::default();
        assert_eq!(s.due_ms(0, 300), None);
        s.observe(0, 300, &[seen("a", 1, 1)]);
        s.observe(100, 300, &[seen("a", 1, 1), seen("b", 1, 1)]);
        assert_eq!(s.due_ms(100, 300), Some(300));
        // `a` is ready at 300 and stays known; only `b` is still waiting.
        assert_eq!(
            s.observe(300, 300, &[seen("a", 1, 1), seen("b", 1, 1)])
                .len(),
            1
        );
        assert_eq!(s.due_ms(300, 300), Some(400));
        s.observe(400, 300, &[seen("a", 1, 1), seen("b", 1, 1)]);
        assert_eq!(s.due_ms(400, 300), None);
    }

    #[test]
    fn patterns_take_and_ignore_by_name() {
        let ignore: Vec<String> = IGNORE_DEFAULT.iter().map(|s| s.to_string()).collect();
        let p = Patterns::new(&[], &ignore).unwrap();
        for taken in [
            "a.pdf",
            "report 2026.txt",
            "-rf",
            "ünïcødé.txt",
            "line\nbreak.txt",
            "a.tmp.pdf",
        ] {
            assert!(p.takes(taken), "{taken}");
        }
        for ignored in [
            ".hidden",
            "x.tmp",
            "movie.mp4.part",
            "~$lock.docx",
            "Thumbs.db",
            ".DS_Store",
            "._a.pdf",
            ".a.pdf.Xy12Ab",
            "a.pdf.result.json",
        ] {
            assert!(!p.takes(ignored), "{ignored}");
        }
        assert!(!p.enters(WORK_DIR) && !p.enters(".git") && p.enters("sub folder"));
        let only_pdf = Patterns::new(&["*.pdf".into(), "*.PDF".into()], &ignore).unwrap();
        assert!(only_pdf.takes("a.pdf") && only_pdf.takes("B.PDF") && !only_pdf.takes("a.txt"));
        // claro's own names in a working folder, whatever the patterns.
        let all = Patterns::new(&["*".into()], &[]).unwrap();
        assert!(all.takes(".hidden") && !all.takes(".claro-out-1"));
        assert!(Patterns::new(&["[".into()], &[])
            .unwrap_err()
            .contains("pattern `[`"));
    }

    #[test]
    fn templates_split_like_a_shell_and_substitute_per_argument() {
        let argv =
            split_template("convert {input} -resize '50%' \"{output_dir}/{stem}.small.{ext}\"")
                .unwrap();
        assert_eq!(
            argv,
            [
                "convert",
                "{input}",
                "-resize",
                "50%",
                "{output_dir}/{stem}.small.{ext}"
            ]
        );
        let v = FileValues::new(
            "/s/hf/.claro/work/1/in/-my file.jpg",
            "/s/hf/.claro/work/1/2/out",
        );
        assert_eq!(
            (v.name.as_str(), v.stem.as_str(), v.ext.as_str()),
            ("-my file.jpg", "-my file", "jpg")
        );
        let out = expand(&argv, &v);
        assert_eq!(out[1], "/s/hf/.claro/work/1/in/-my file.jpg");
        assert_eq!(out[4], "/s/hf/.claro/work/1/2/out/-my file.small.jpg");
        assert!(split_template("a 'b").is_err());
        assert!(split_template("  ").is_err());
        assert_eq!(FileValues::new("x/.profile", "o").stem, ".profile");
        assert_eq!(FileValues::new("x/README", "o").ext, "");
    }

    #[test]
    fn definitions_are_checked() {
        let mut h = Hotfolder::new(
            "prepress",
            Action::Command {
                argv: vec!["cp".into(), "{input}".into(), "{output_dir}".into()],
            },
        );
        assert!(h.validate().is_ok());
        h.action = Action::Command {
            argv: vec!["cp".into(), "{inptu}".into()],
        };
        assert!(h
            .validate()
            .unwrap_err()
            .contains("unknown placeholder `{inptu}`"));
        h.action = Action::Script {
            code: "let = ;".into(),
        };
        assert!(h.validate().unwrap_err().contains("does not compile"));
        h.action = Action::Script { code: "1".into() };
        h.stable_ms = 10;
        assert!(h.validate().unwrap_err().contains("stability time"));
        assert!(
            check_name("../x").is_err()
                && check_name("in box").is_err()
                && check_name("ok-1_a").is_ok()
        );
    }

    #[test]
    fn a_template_is_shown_as_it_would_be_typed_again() {
        for typed in [
            "convert {input} -resize 50% {output_dir}/{name}",
            "sh -c 'cp \"$CLARO_INPUT\" \"$CLARO_OUTPUT_DIR/\"'",
            "tool --title 'two words' {input}",
        ] {
            let argv = split_template(typed).unwrap();
            let shown = template_text(&argv);
            assert_eq!(
                split_template(&shown).unwrap(),
                argv,
                "{typed} shown as {shown}"
            );
        }
        let argv = split_template("tool --title 'two words'").unwrap();
        assert_ne!(template_text(&argv), argv.join(" "), "quoting kept");
    }

    #[test]
    fn shell_templates_that_run_file_names_as_code_are_refused() {
        let def = |template: &str| {
            Hotfolder::new(
                "hf",
                Action::Command {
                    argv: split_template(template).unwrap(),
                },
            )
        };
        for refused in [
            "sh -c 'echo {name}'",
            "bash -c 'convert {input} {output_dir}/x.png'",
            "dash -c 'echo {stem}'",
            "zsh -c 'echo {ext}'",
            "ksh -c 'echo {output_dir}'",
            "/bin/sh -c 'echo {name}'",
            "/usr/local/bin/bash -c 'echo {name}'",
            "sh -ec 'echo {name}'",
            "bash -lc 'echo {name}'",
            "bash -e -o pipefail -c 'echo {name}'",
            "sh -c -- 'echo {name}'",
            "bash --norc -c 'echo {name}'",
            "env sh -c 'echo {name}'",
            "/usr/bin/env LANG=C bash -c 'echo {name}'",
            "busybox sh -c 'echo {name}'",
            "nice -n 5 sh -c 'echo {name}'",
            "sh -c 'cp \"{input}\" out/' sh",
        ] {
            let why = def(refused).validate().unwrap_err();
            assert!(why.contains("as code"), "{refused}: {why}");
            assert!(why.contains("allow-shell"), "{refused}: {why}");
        }
        let why = def("sh -c 'cp {output_dir}/x {name}'")
            .validate()
            .unwrap_err();
        assert!(
            why.contains("run `{output_dir}`, `{name}` as code"),
            "{why}"
        );
        // The error names the template, the placeholder and the safe forms.
        let why = def("sh -c 'echo {name}'").validate().unwrap_err();
        for part in [
            "`sh -c 'echo {name}'`",
            "`{name}`",
            "sh -c 'echo \"$1\"' sh {name}",
            "$CLARO_NAME",
            "CLARO_INPUT, CLARO_OUTPUT_DIR, CLARO_NAME, CLARO_STEM, CLARO_EXT",
        ] {
            assert!(why.contains(part), "no {part} in {why}");
        }
        for accepted in [
            "sh -c 'echo \"$1\"' sh {name}",
            "cp {input} {output_dir}",
            "sh -c 'echo \"$CLARO_NAME\"'",
            "sh -ec 'cp \"$0\" \"$1\"' {input} {output_dir}",
            "sh script.sh {input}",
            "bash -o pipefail -c 'cat \"$1\" | wc -c' bash {input}",
            "grep -c sh {input}",
            "convert {input} -resize 50% {output_dir}/{name}",
        ] {
            assert_eq!(def(accepted).validate(), Ok(()), "{accepted}");
        }
        // Knowingly allowed.
        let mut allowed = def("sh -c 'echo {name}'");
        allowed.allow_shell = true;
        assert_eq!(allowed.validate(), Ok(()));
    }

    #[test]
    fn old_definitions_without_allow_shell_still_read() {
        #[derive(Serialize)]
        struct Old {
            name: String,
            action: Action,
            include: Vec<String>,
            ignore: Vec<String>,
            stable_ms: u64,
            priority: i32,
            max_attempts: u32,
            timeout_ms: u64,
            on_success: OnSuccess,
            paused: bool,
        }
        let now = Hotfolder::new(
            "hf",
            Action::Command {
                argv: vec!["cp".into(), "{input}".into(), "{output_dir}".into()],
            },
        );
        let old = Old {
            name: now.name.clone(),
            action: now.action.clone(),
            include: now.include.clone(),
            ignore: now.ignore.clone(),
            stable_ms: now.stable_ms,
            priority: now.priority,
            max_attempts: now.max_attempts,
            timeout_ms: now.timeout_ms,
            on_success: now.on_success,
            paused: now.paused,
        };
        let mut bytes = Vec::new();
        ciborium::into_writer(&old, &mut bytes).unwrap();
        let read: Hotfolder = ciborium::from_reader(&bytes[..]).unwrap();
        assert_eq!(read, now);
        let read: Hotfolder = serde_json::from_value(serde_json::json!(old)).unwrap();
        assert!(!read.allow_shell);
    }

    #[test]
    fn an_action_sees_the_values_in_its_environment() {
        let v = FileValues::new("/s/hf/in/$(touch x).txt", "/s/out");
        assert_eq!(
            v.env(),
            [
                ("CLARO_INPUT", "/s/hf/in/$(touch x).txt"),
                ("CLARO_OUTPUT_DIR", "/s/out"),
                ("CLARO_NAME", "$(touch x).txt"),
                ("CLARO_STEM", "$(touch x)"),
                ("CLARO_EXT", "txt"),
            ]
            .map(|(k, v)| (k.to_string(), v.to_string()))
        );
    }

    fn ready_of(
        trigger: Trigger,
        scan: &[Seen],
        stable: &[&str],
    ) -> Vec<(String, Option<String>, Option<String>, bool)> {
        let stable: std::collections::HashSet<&str> = stable.iter().copied().collect();
        units(trigger, scan, &stable)
            .into_iter()
            .map(|(u, r)| (u.main.path, u.ticket, u.marker, r))
            .collect()
    }

    fn some(s: &str) -> Option<String> {
        Some(s.to_string())
    }

    /// With the `stable` trigger a ticket beside its file goes with it (and
    /// a ticket still being written holds the file back); a lone `.json`
    /// is a file like any other.
    #[test]
    fn a_ticket_beside_its_file_goes_with_it() {
        let scan = [
            seen("a.pdf", 1, 1),
            seen("a.pdf.json", 1, 1),
            seen("lone.json", 1, 1),
        ];
        let got = ready_of(
            Trigger::Stable,
            &scan,
            &["a.pdf", "a.pdf.json", "lone.json"],
        );
        assert_eq!(
            got,
            vec![
                ("a.pdf".into(), some("a.pdf.json"), None, true),
                ("lone.json".into(), None, None, true),
            ]
        );
        let got = ready_of(Trigger::Stable, &scan, &["a.pdf", "lone.json"]);
        assert!(!got[0].3, "its ticket is still being written");
    }

    /// The `ticket` trigger waits for the ticket; `.json` and `.xml` files
    /// are tickets only, even before their file arrives.
    #[test]
    fn the_ticket_trigger_waits_for_the_ticket() {
        let scan = [
            seen("a.pdf", 1, 1),
            seen("b.pdf", 1, 1),
            seen("b.pdf.xml", 1, 1),
            seen("c.pdf.json", 1, 1),
        ];
        let all = ["a.pdf", "b.pdf", "b.pdf.xml", "c.pdf.json"];
        let got = ready_of(Trigger::Ticket, &scan, &all);
        assert_eq!(
            got,
            vec![
                ("a.pdf".into(), None, None, false),
                ("b.pdf".into(), some("b.pdf.xml"), None, true),
            ]
        );
    }

    /// The `marker` trigger takes a file only once `NAME.ready` is there.
    #[test]
    fn the_marker_trigger_waits_for_the_marker() {
        let scan = [
            seen("a.pdf", 1, 1),
            seen("b.pdf", 1, 1),
            seen("b.pdf.ready", 0, 1),
        ];
        let got = ready_of(Trigger::Marker, &scan, &["a.pdf", "b.pdf", "b.pdf.ready"]);
        assert_eq!(
            got,
            vec![
                ("a.pdf".into(), None, None, false),
                ("b.pdf".into(), None, some("b.pdf.ready"), true),
            ]
        );
        // Under `stable`, a `.ready` file is a file.
        assert_eq!(ready_of(Trigger::Stable, &scan, &[]).len(), 3);
    }

    /// A job folder is one unit; its own `ticket.xml` is its ticket, and
    /// the `ticket` trigger waits for it.
    #[test]
    fn a_job_folder_is_one_unit_with_its_ticket() {
        let folder = |p: &str| Seen {
            folder: true,
            ..seen(p, 10, 1)
        };
        let scan = [
            folder("Job 4711"),
            seen("Job 4711/ticket.xml", 1, 1),
            folder("Job 4712"),
            seen("loose.pdf", 1, 1),
        ];
        let all = ["Job 4711", "Job 4711/ticket.xml", "Job 4712", "loose.pdf"];
        let got = ready_of(Trigger::Ticket, &scan, &all);
        assert_eq!(
            got,
            vec![
                ("Job 4711".into(), some("Job 4711/ticket.xml"), None, true),
                ("Job 4712".into(), None, None, false),
                ("loose.pdf".into(), None, None, false),
            ]
        );
        let got = ready_of(Trigger::Stable, &scan, &all);
        assert!(got.iter().all(|u| u.3), "{got:?}");
    }

    /// Triggers and folders default to today's rule in older definitions.
    #[test]
    fn older_definitions_take_stable_files() {
        let def = Hotfolder::new("hf", Action::Script { code: "1".into() });
        let mut json = serde_json::to_value(&def).unwrap();
        let map = json.as_object_mut().unwrap();
        map.remove("trigger");
        map.remove("folders");
        let back: Hotfolder = serde_json::from_value(json).unwrap();
        assert_eq!(back.trigger, Trigger::Stable);
        assert!(!back.folders);
        assert_eq!(Trigger::parse("ticket"), Some(Trigger::Ticket));
        assert_eq!(Trigger::parse("soon"), None);
    }

    /// `{ticket.KEY}` is a placeholder; inside a shell's command string it
    /// is code, like a file name.
    #[test]
    fn ticket_placeholders_are_checked() {
        let argv = split_template("convert --title {ticket.customer.name} {input}").unwrap();
        let def = Hotfolder::new("hf", Action::Command { argv });
        def.validate().unwrap();
        let argv = split_template("sh -c 'echo {ticket.name}'").unwrap();
        let def = Hotfolder::new("hf", Action::Command { argv });
        let e = def.validate().unwrap_err();
        assert!(e.contains("ticket.KEY"), "{e}");
        let argv = split_template("convert {ticket.} {input}").unwrap();
        let e = Hotfolder::new("hf", Action::Command { argv })
            .validate()
            .unwrap_err();
        assert!(e.contains("not a field name"), "{e}");
    }

    #[test]
    fn output_names_never_overwrite() {
        let existing = ["a.pdf", "a (1).pdf", "README"];
        let mut taken = |n: &str| existing.contains(&n);
        assert_eq!(free_name("b.pdf", &mut taken).unwrap(), "b.pdf");
        assert_eq!(free_name("a.pdf", &mut taken).unwrap(), "a (2).pdf");
        assert_eq!(free_name("README", &mut taken).unwrap(), "README (1)");
    }
}
