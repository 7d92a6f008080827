//! The Script Execution Engine: Rhai, sandboxed. A script sees its
//! arguments as `ARGS` (an array of strings) and a small host API:
//!
//! - `log(text)`: a line in the job's captured log; `progress(percent)`;
//! - `ticket_set(key, value)`: a field of a hotfolder job's result ticket
//!   (`fields`); a hotfolder script also sees `FILE` and its ticket's fields
//!   as `TICKET`;
//! - `sleep_ms(n)`: waits, and is cut short by a cancel or the timeout;
//! - `kv_get(key)` / `kv_set(key, value)`: the cluster's settings, read with
//!   the default read rule (never stale) and written through the
//!   coordinator (committed before `kv_set` returns); `kv_get` of a missing
//!   key is `()`;
//! - `sql(query)` / `sql(query, params)`: a read-only query on this
//!   instance's replica, as an array of maps (column -> value);
//! - `file_read`, `file_write`, `file_append`, `file_list`, `file_exists`,
//!   `file_remove`: files under `shared_root`, by relative path;
//! - `run(argv)` / `run(argv, timeout_ms)`: an external command, without a
//!   shell, in `shared_root`; returns `#{status, output}`;
//! - `submit(#{script | stored | command, args, priority, max_attempts,
//!   timeout_ms})`: a child job; returns its id; `submit([#{...}, ...])`:
//!   many in one entry, all or none; returns their ids;
//! - `call_script(NAME, FN, args...)`: runs function FN of stored script NAME as a
//!   child job where the coordinator places it, waits for it and returns
//!   its value; its error is an error here. (Rhai keeps the name `call`
//!   for its own function pointers, so the remote call is `call_script`.)
//!
//! Its return value (as text) is the job's result; an error, with the
//! script's name and the line it happened on, fails the job. Limits:
//! operations, call depth, expression depth, string, array and map sizes,
//! and wall time; a cancel stops it at its next operation. Every host
//! function is timed into the job's profile. Nothing here touches the
//! cluster or the disk: the host functions only call the `Host`.

use std::any::TypeId;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rhai::{Dynamic, Engine, EvalAltResult, ImmutableString, Position, Scope, AST};

use crate::work::jobs::{ProfileRow, PROFILE_NAME_BYTES_MAX, PROFILE_ROWS_MAX};

/// Operations one run may take (a busy loop of a few seconds).
pub const OPERATIONS_MAX: u64 = 200_000_000;
/// Nested function calls.
pub const CALL_LEVELS_MAX: usize = 64;
/// Nesting of expressions.
pub const EXPR_DEPTH_MAX: usize = 128;
/// Largest file `file_read` returns as one string.
pub const STRING_BYTES_MAX: usize = 4 * 1024 * 1024;
/// Arguments of a remote call.
pub const CALL_ARGS_MAX: usize = 8;
/// Operations between two looks at the clock and the cancel flag.
const CHECK_EVERY_OPS: u64 = 1024;
/// Step of `sleep_ms` between looks at the clock and the cancel flag.
const SLEEP_STEP_MS: u64 = 10;
/// Default limit of `run` when the script gives none.
pub const RUN_TIMEOUT_MS_DEFAULT: u64 = 60_000;

/// Where a call that waits on the cluster spent its time.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Split {
    pub prepare_us: u64,
    pub wait_us: u64,
    pub receive_us: u64,
}

/// A remote call's answer: the function's value as JSON (or its error), and
/// where the time went.
pub struct Called {
    pub value: Result<serde_json::Value, String>,
    pub split: Split,
}

/// What a running script reaches. Calls come from the script's (blocking)
/// thread; `deadline` and `cancel` bound every wait.
pub trait Host: Send + Sync {
    fn log(&self, line: &str);
    fn progress(&self, percent: u8);
    /// Sets a field of the hotfolder job's result ticket.
    fn ticket_set(&self, _key: &str, _value: &str) -> Result<(), String> {
        Err("ticket_set is for hotfolder scripts: only they have a result ticket".into())
    }
    /// A cluster setting's value as text (`None`: no such key).
    fn kv_get(&self, key: &str) -> Result<Option<String>, String>;
    /// Sets a cluster setting; returns once it is committed.
    fn kv_set(&self, key: &str, value: &str) -> Result<(), String>;
    /// A read-only query on the local replica: one JSON object per row.
    fn sql(
        &self,
        query: &str,
        params: &[serde_json::Value],
    ) -> Result<Vec<serde_json::Value>, String>;
    fn file(&self, op: FileOp) -> Result<serde_json::Value, String>;
    /// Runs `argv`; `#{status, output}` as JSON.
    fn run(
        &self,
        argv: &[String],
        timeout_ms: u64,
        cancel: &AtomicBool,
    ) -> Result<serde_json::Value, String>;
    /// Submits a child job (`spec` as the script gave it); its id.
    fn submit(&self, spec: serde_json::Value) -> Result<String, String>;
    /// Submits child jobs in one entry, all or none; their ids in order.
    fn submit_many(&self, _specs: Vec<serde_json::Value>) -> Result<Vec<String>, String> {
        Err("this host submits one job at a time".into())
    }
    /// Runs `function` of stored script `script` on the cluster and waits.
    fn call(
        &self,
        target: CallTarget,
        deadline: Instant,
        cancel: &AtomicBool,
    ) -> Result<Called, String>;
}

/// A file operation, paths relative to `shared_root`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum FileOp {
    Read(String),
    Write {
        path: String,
        text: String,
        append: bool,
    },
    List(String),
    Exists(String),
    Remove(String),
}

/// What `call` asks for: arguments as JSON values.
#[derive(Debug, Clone, PartialEq)]
pub struct CallTarget {
    pub script: String,
    pub function: String,
    pub args: Vec<serde_json::Value>,
}

/// How a run ends when it fails: the message says where.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Failure {
    /// It does not compile (message with line and column).
    Compile(String),
    /// It raised an error or broke a limit (with the line).
    Runtime(String),
    TimedOut {
        after_ms: u64,
    },
    Cancelled,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Compile(m) => write!(f, "the script does not compile: {m}"),
            Failure::Runtime(m) => write!(f, "{m}"),
            Failure::TimedOut { after_ms } => write!(f, "timed out after {after_ms} ms"),
            Failure::Cancelled => write!(f, "cancelled"),
        }
    }
}

/// Times every host function of one run: the job's profile.
#[derive(Default)]
pub struct Profiler {
    rows: Mutex<BTreeMap<String, ProfileRow>>,
}

impl Profiler {
    /// Adds one call of `name`. Past `PROFILE_ROWS_MAX` names, further ones
    /// share one row, so that a script calling many targets stays bounded.
    pub fn record(&self, name: &str, split: Split) {
        self.merge(&[ProfileRow {
            name: name.to_string(),
            calls: 1,
            total_us: split.prepare_us + split.wait_us + split.receive_us,
            prepare_us: split.prepare_us,
            wait_us: split.wait_us,
            receive_us: split.receive_us,
        }]);
    }

    /// Adds rows (one call's, or those a script worker process kept): same
    /// names add up; past `PROFILE_ROWS_MAX` names, further ones share one
    /// row, so that a script calling many targets stays bounded.
    pub fn merge(&self, rows: &[ProfileRow]) {
        let mut kept = self.rows.lock().expect("profile lock");
        for r in rows {
            let name = if kept.contains_key(&r.name) || kept.len() < PROFILE_ROWS_MAX - 1 {
                crate::work::jobs::bounded_text(&r.name, PROFILE_NAME_BYTES_MAX - 32)
            } else {
                "(other)".to_string()
            };
            let row = kept.entry(name.clone()).or_insert_with(|| ProfileRow {
                name,
                ..ProfileRow::default()
            });
            row.calls += r.calls;
            row.prepare_us += r.prepare_us;
            row.wait_us += r.wait_us;
            row.receive_us += r.receive_us;
            row.total_us += r.total_us;
        }
    }

    /// The rows, slowest first.
    pub fn rows(&self) -> Vec<ProfileRow> {
        let mut rows: Vec<ProfileRow> = self
            .rows
            .lock()
            .expect("profile lock")
            .values()
            .cloned()
            .collect();
        rows.sort_by(|a, b| b.total_us.cmp(&a.total_us).then(a.name.cmp(&b.name)));
        assert!(rows.len() <= PROFILE_ROWS_MAX);
        rows
    }
}

/// A script to run: its text, its name for messages (`script` for an
/// inline one), and either its arguments (`ARGS`, the top level runs) or a
/// function to call with JSON arguments (a remote call's child).
pub struct Program<'a> {
    pub name: &'a str,
    pub code: &'a str,
    pub args: &'a [String],
    pub call: Option<&'a str>,
    /// A hotfolder file (`FILE` in the script): `#{input, output_dir, name,
    /// stem, ext, relative}`.
    pub file: Option<serde_json::Value>,
}

/// An engine with every limit set and no access to anything outside.
fn engine() -> Engine {
    // The standard package (strings, arrays, maps, maths), built once and
    // shared: building it is most of an engine's cost. Rhai has no file or
    // process access of its own. `print` and `debug` go to the job's log
    // (`register_host`), never to the server's stdout.
    static STANDARD: std::sync::OnceLock<rhai::Shared<rhai::Module>> = std::sync::OnceLock::new();
    let standard = STANDARD.get_or_init(|| {
        use rhai::packages::Package;
        rhai::packages::StandardPackage::new().as_shared_module()
    });
    let mut e = Engine::new_raw();
    e.register_global_module(standard.clone());
    e.on_print(|_| {});
    e.on_debug(|_, _, _| {});
    e.set_max_operations(OPERATIONS_MAX);
    e.set_max_call_levels(CALL_LEVELS_MAX);
    e.set_max_expr_depths(EXPR_DEPTH_MAX, EXPR_DEPTH_MAX);
    // No engine limits on strings, arrays and maps: the engine measures a
    // whole value after every change to it (so `a.push(x)` in a loop costs
    // time in the square of the array's length and never reached a length
    // limit of a million within an hour), and measures only the new item,
    // not the map, on `m[key] = value`. Limits that were neither kept nor
    // cheap are replaced by the worker's address space (`script_memory_mb`,
    // sandbox.rs), which every way of growing data meets in linear time,
    // and by `OPERATIONS_MAX`.
    e
}

/// Compiles `code`: a syntax error, or two functions of one name and arity,
/// is refused with its line.
pub fn check(code: &str) -> Result<AST, Failure> {
    let ast = engine()
        .compile(code)
        .map_err(|e| Failure::Compile(e.to_string()))?;
    let mut seen = std::collections::HashSet::new();
    for f in ast.iter_functions() {
        if !seen.insert((f.name.to_string(), f.params.len())) {
            return Err(Failure::Compile(format!(
                "function `{}` with {} parameters is defined twice",
                f.name,
                f.params.len()
            )));
        }
    }
    Ok(ast)
}

/// The limits and stops of one run.
#[derive(Clone)]
struct Stops {
    deadline: Instant,
    timeout_ms: u64,
    cancel: Arc<AtomicBool>,
    why: Arc<Mutex<Option<Failure>>>,
}

impl Stops {
    /// Whether the run must stop now; records why.
    fn due(&self) -> bool {
        let why = if self.cancel.load(Ordering::Relaxed) {
            Failure::Cancelled
        } else if Instant::now() >= self.deadline {
            Failure::TimedOut {
                after_ms: self.timeout_ms,
            }
        } else {
            return false;
        };
        *self.why.lock().expect("stop lock") = Some(why);
        true
    }
}

/// Runs `program` until it returns, fails, takes longer than `timeout_ms`,
/// or `cancel` is set. Returns its value as text (as JSON for a call).
pub fn run(
    program: &Program<'_>,
    timeout_ms: u64,
    cancel: Arc<AtomicBool>,
    host: Arc<dyn Host>,
    profiler: Arc<Profiler>,
) -> Result<String, Failure> {
    let ast = check(program.code)?;
    let stops = Stops {
        deadline: Instant::now() + Duration::from_millis(timeout_ms),
        timeout_ms,
        cancel,
        why: Arc::new(Mutex::new(None)),
    };
    let mut e = engine();
    let s = stops.clone();
    e.on_progress(move |ops| (ops % CHECK_EVERY_OPS == 0 && s.due()).then_some(Dynamic::UNIT));
    register_host(&mut e, &host, &profiler, &stops);
    let mut scope = Scope::new();
    let list: rhai::Array = program
        .args
        .iter()
        .map(|a| Dynamic::from(a.clone()))
        .collect();
    let answer = match program.call {
        None => {
            scope.push_constant("ARGS", list);
            if let Some(file) = &program.file {
                // A hotfolder's ticket comes inside FILE and is a constant
                // of its own: `TICKET["customer.name"]`.
                let mut file = file.clone();
                let ticket = file
                    .as_object_mut()
                    .and_then(|f| f.remove("TICKET"))
                    .unwrap_or_else(|| serde_json::json!({}));
                let to =
                    |v| rhai::serde::to_dynamic(v).map_err(|e| Failure::Runtime(e.to_string()));
                scope.push_constant("FILE", to(&file)?);
                scope.push_constant("TICKET", to(&ticket)?);
            }
            e.eval_ast_with_scope::<Dynamic>(&mut scope, &ast)
                .map(|v| value_text(&v))
        }
        Some(function) => call_function(&e, &mut scope, &ast, function, program.args),
    };
    answer.map_err(|err| {
        let stopped = stops.why.lock().expect("stop lock").take();
        stopped.unwrap_or_else(|| runtime(program.name, &err))
    })
}

/// Runs `function` of `ast` (not its top level) with JSON arguments; its
/// value as JSON text.
fn call_function(
    e: &Engine,
    scope: &mut Scope<'_>,
    ast: &AST,
    function: &str,
    args: &[String],
) -> Result<String, Box<EvalAltResult>> {
    let mut values = Vec::with_capacity(args.len());
    for a in args {
        let json: serde_json::Value =
            serde_json::from_str(a).map_err(|err| format!("a call argument is not JSON: {err}"))?;
        values.push(rhai::serde::to_dynamic(json)?);
    }
    let options = rhai::CallFnOptions::new().eval_ast(false);
    let value: Dynamic = e.call_fn_with_options(options, scope, ast, function, values)?;
    let json: serde_json::Value = rhai::serde::from_dynamic(&value)?;
    Ok(json.to_string())
}

/// Times `f` as one call of `name`, all of it waiting.
fn timed<T>(profiler: &Profiler, name: &str, f: impl FnOnce() -> T) -> T {
    let started = Instant::now();
    let value = f();
    let wait_us = started.elapsed().as_micros() as u64;
    profiler.record(
        name,
        Split {
            wait_us,
            ..Split::default()
        },
    );
    value
}

fn host_error(call: String, e: String) -> Box<EvalAltResult> {
    format!("{call}: {e}").into()
}

fn register_host(e: &mut Engine, host: &Arc<dyn Host>, profiler: &Arc<Profiler>, stops: &Stops) {
    let h = host.clone();
    e.on_print(move |text| h.log(text));
    let h = host.clone();
    e.on_debug(move |text, _, _| h.log(text));
    // Every host function a script calls by name is timed, so that a
    // profile never says "no host function" of a script that logged.
    let (h, p) = (host.clone(), profiler.clone());
    e.register_fn("log", move |text: &str| timed(&p, "log", || h.log(text)));
    let (h, p) = (host.clone(), profiler.clone());
    e.register_fn("log", move |value: Dynamic| {
        timed(&p, "log", || h.log(&value_text(&value)))
    });
    let (h, p) = (host.clone(), profiler.clone());
    e.register_fn("progress", move |pc: i64| {
        timed(&p, "progress", || h.progress(pc.clamp(0, 100) as u8))
    });
    let (h, p) = (host.clone(), profiler.clone());
    e.register_fn(
        "ticket_set",
        move |key: &str, value: Dynamic| -> Result<(), Box<EvalAltResult>> {
            timed(&p, "ticket_set", || h.ticket_set(key, &value_text(&value)))
                .map_err(|e| host_error(format!("ticket_set(\"{key}\")"), e))
        },
    );
    register_kv(e, host, profiler);
    register_sql(e, host, profiler);
    register_files(e, host, profiler);
    register_run(e, host, profiler, stops);
    register_jobs(e, host, profiler, stops);
    let (p, s) = (profiler.clone(), stops.clone());
    e.register_fn(
        "sleep_ms",
        move |ms: i64| -> Result<(), Box<EvalAltResult>> {
            timed(&p, "sleep_ms", || sleep(&s, ms))
        },
    );
}

fn sleep(stops: &Stops, ms: i64) -> Result<(), Box<EvalAltResult>> {
    let until = Instant::now() + Duration::from_millis(ms.max(0) as u64);
    loop {
        if stops.due() {
            return Err("stopped".into());
        }
        let now = Instant::now();
        if now >= until {
            return Ok(());
        }
        std::thread::sleep((until - now).min(Duration::from_millis(SLEEP_STEP_MS)));
    }
}

fn register_kv(e: &mut Engine, host: &Arc<dyn Host>, profiler: &Arc<Profiler>) {
    let (h, p) = (host.clone(), profiler.clone());
    e.register_fn(
        "kv_get",
        move |key: &str| -> Result<Dynamic, Box<EvalAltResult>> {
            match timed(&p, "kv_get", || h.kv_get(key)) {
                Ok(Some(v)) => Ok(Dynamic::from(v)),
                Ok(None) => Ok(Dynamic::UNIT),
                Err(e) => Err(host_error(format!("kv_get(\"{key}\")"), e)),
            }
        },
    );
    let (h, p) = (host.clone(), profiler.clone());
    e.register_fn(
        "kv_set",
        move |key: &str, value: &str| -> Result<(), Box<EvalAltResult>> {
            timed(&p, "kv_set", || h.kv_set(key, value))
                .map_err(|e| host_error(format!("kv_set(\"{key}\")"), e))
        },
    );
}

fn register_sql(e: &mut Engine, host: &Arc<dyn Host>, profiler: &Arc<Profiler>) {
    let (h, p) = (host.clone(), profiler.clone());
    let sql = move |query: &str, params: rhai::Array| -> Result<rhai::Array, Box<EvalAltResult>> {
        let params: Vec<serde_json::Value> = params
            .iter()
            .map(rhai::serde::from_dynamic)
            .collect::<Result<_, _>>()?;
        let rows =
            timed(&p, "sql", || h.sql(query, &params)).map_err(|e| host_error("sql".into(), e))?;
        rows.into_iter().map(rhai::serde::to_dynamic).collect()
    };
    let plain = sql.clone();
    e.register_fn("sql", move |query: &str| plain(query, rhai::Array::new()));
    e.register_fn("sql", sql);
}

fn register_files(e: &mut Engine, host: &Arc<dyn Host>, profiler: &Arc<Profiler>) {
    let op = {
        let (h, p) = (host.clone(), profiler.clone());
        move |name: &str, op: FileOp| -> Result<Dynamic, Box<EvalAltResult>> {
            let what = format!("{name}({:?})", file_path(&op));
            let value = timed(&p, name, || h.file(op)).map_err(|e| host_error(what, e))?;
            rhai::serde::to_dynamic(value)
        }
    };
    let f = op.clone();
    e.register_fn("file_read", move |path: &str| {
        f("file_read", FileOp::Read(path.into()))
    });
    let f = op.clone();
    e.register_fn("file_list", move |path: &str| {
        f("file_list", FileOp::List(path.into()))
    });
    let f = op.clone();
    e.register_fn("file_exists", move |path: &str| {
        f("file_exists", FileOp::Exists(path.into()))
    });
    let f = op.clone();
    e.register_fn("file_remove", move |path: &str| {
        f("file_remove", FileOp::Remove(path.into()))
    });
    for (name, append) in [("file_write", false), ("file_append", true)] {
        let f = op.clone();
        e.register_fn(name, move |path: &str, text: &str| {
            let (path, text) = (path.to_string(), text.to_string());
            f(name, FileOp::Write { path, text, append })
        });
    }
}

fn file_path(op: &FileOp) -> &str {
    match op {
        FileOp::Read(p) | FileOp::List(p) | FileOp::Exists(p) | FileOp::Remove(p) => p,
        FileOp::Write { path, .. } => path,
    }
}

fn register_run(e: &mut Engine, host: &Arc<dyn Host>, profiler: &Arc<Profiler>, stops: &Stops) {
    let (h, p, s) = (host.clone(), profiler.clone(), stops.clone());
    let run = move |argv: rhai::Array, timeout_ms: i64| -> Result<Dynamic, Box<EvalAltResult>> {
        let argv: Vec<String> = argv.iter().map(value_text).collect();
        let first = argv.first().cloned().unwrap_or_default();
        let left_ms = s
            .deadline
            .saturating_duration_since(Instant::now())
            .as_millis() as u64;
        let timeout_ms = (timeout_ms.max(1) as u64).min(left_ms.max(1));
        let value = timed(&p, "run", || h.run(&argv, timeout_ms, &s.cancel))
            .map_err(|e| host_error(format!("run(\"{first}\")"), e))?;
        rhai::serde::to_dynamic(value)
    };
    let plain = run.clone();
    e.register_fn("run", move |argv: rhai::Array| {
        plain(argv, RUN_TIMEOUT_MS_DEFAULT as i64)
    });
    e.register_fn("run", run);
}

fn register_jobs(e: &mut Engine, host: &Arc<dyn Host>, profiler: &Arc<Profiler>, stops: &Stops) {
    let (h, p) = (host.clone(), profiler.clone());
    e.register_fn(
        "submit",
        move |spec: rhai::Map| -> Result<ImmutableString, Box<EvalAltResult>> {
            let spec: serde_json::Value = rhai::serde::from_dynamic(&Dynamic::from_map(spec))?;
            let id = timed(&p, "submit", || h.submit(spec))
                .map_err(|e| host_error("submit".into(), e))?;
            Ok(id.into())
        },
    );
    // `submit([#{...}, #{...}])`: many jobs in one entry, all or none.
    let (h, p) = (host.clone(), profiler.clone());
    e.register_fn(
        "submit",
        move |specs: rhai::Array| -> Result<rhai::Array, Box<EvalAltResult>> {
            let specs: Vec<serde_json::Value> = specs
                .into_iter()
                .map(|s| rhai::serde::from_dynamic(&s))
                .collect::<Result<_, _>>()?;
            let ids = timed(&p, "submit", || h.submit_many(specs))
                .map_err(|e| host_error("submit".into(), e))?;
            Ok(ids.into_iter().map(Dynamic::from).collect())
        },
    );
    // `call_script(NAME, FN, args...)`: Rhai has no variadic functions, so one is
    // registered per number of arguments.
    for count in 0..=CALL_ARGS_MAX {
        let mut types = vec![TypeId::of::<ImmutableString>(); 2];
        types.extend(std::iter::repeat_n(TypeId::of::<Dynamic>(), count));
        let (h, p, s) = (host.clone(), profiler.clone(), stops.clone());
        e.register_raw_fn("call_script", types, move |_, args: &mut [&mut Dynamic]| {
            remote_call(&*h, &p, &s, args)
        });
    }
}

/// One remote call: the child job's value, or its error as this script's.
fn remote_call(
    host: &dyn Host,
    profiler: &Profiler,
    stops: &Stops,
    args: &mut [&mut Dynamic],
) -> Result<Dynamic, Box<EvalAltResult>> {
    let started = Instant::now();
    let script = args[0].clone().cast::<ImmutableString>().to_string();
    let function = args[1].clone().cast::<ImmutableString>().to_string();
    let what = format!("call_script(\"{script}\", \"{function}\")");
    let values = args[2..]
        .iter()
        .map(|a| rhai::serde::from_dynamic::<serde_json::Value>(a))
        .collect::<Result<Vec<_>, _>>()?;
    let target = CallTarget {
        script: script.clone(),
        function: function.clone(),
        args: values,
    };
    let row = format!("call {script}.{function}");
    let called = host.call(target, stops.deadline, &stops.cancel);
    let called = match called {
        Ok(c) => c,
        Err(e) => {
            let wait_us = started.elapsed().as_micros() as u64;
            profiler.record(
                &row,
                Split {
                    wait_us,
                    ..Split::default()
                },
            );
            stops.due();
            return Err(host_error(what, e));
        }
    };
    let decode = Instant::now();
    let value = called
        .value
        .map_err(|e| host_error(what, e))
        .and_then(rhai::serde::to_dynamic);
    let mut split = called.split;
    split.receive_us += decode.elapsed().as_micros() as u64;
    profiler.record(&row, split);
    value
}

/// A script's value as the job's result text: strings as they are, the
/// rest as Rhai prints them; `()` is empty.
fn value_text(v: &Dynamic) -> String {
    if v.is_unit() {
        return String::new();
    }
    if let Some(s) = v.clone().try_cast::<rhai::ImmutableString>() {
        return s.to_string();
    }
    v.to_string()
}

/// A runtime error as `NAME: message (line L, position P)`, naming the
/// innermost place Rhai knows.
fn runtime(name: &str, err: &EvalAltResult) -> Failure {
    let pos = err.position();
    let at = if pos == Position::NONE {
        String::new()
    } else {
        format!(
            " (line {}, position {})",
            pos.line().unwrap_or(0),
            pos.position().unwrap_or(0)
        )
    };
    let text = err.to_string();
    // Rhai's own text ends with the position; keep it once.
    let text = match text.rfind(" (line ") {
        Some(i) if text.ends_with(')') && text[i..].contains("position") => text[..i].to_string(),
        _ => text,
    };
    // A thrown value reads as itself, without Rhai's generic prefix.
    let text = text.strip_prefix("Runtime error: ").unwrap_or(&text);
    Failure::Runtime(format!("{name}: {text}{at}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Lines(Mutex<Vec<String>>, Mutex<u8>);

    /// A stored script that remote calls in these tests reach.
    const LIB: &str = "fn twice(x) { x * 2 }\nfn pair(a, b) { #{a: a, b: b} }\nfn boom() {\n  throw \"no paper\";\n}";

    impl Host for Lines {
        fn log(&self, line: &str) {
            self.0.lock().unwrap().push(line.to_string());
        }
        fn progress(&self, percent: u8) {
            *self.1.lock().unwrap() = percent;
        }
        fn kv_get(&self, key: &str) -> Result<Option<String>, String> {
            Ok((key == "colour").then(|| "RED".to_string()))
        }
        fn kv_set(&self, key: &str, _value: &str) -> Result<(), String> {
            Err(format!("read-only in this test ({key})"))
        }
        fn sql(
            &self,
            query: &str,
            params: &[serde_json::Value],
        ) -> Result<Vec<serde_json::Value>, String> {
            Ok(vec![serde_json::json!({"query": query, "params": params})])
        }
        fn file(&self, op: FileOp) -> Result<serde_json::Value, String> {
            match op {
                FileOp::Read(p) if p == "a.txt" => Ok("text of a".into()),
                other => Err(format!("not here: {other:?}")),
            }
        }
        fn run(
            &self,
            argv: &[String],
            timeout_ms: u64,
            _: &AtomicBool,
        ) -> Result<serde_json::Value, String> {
            Ok(
                serde_json::json!({"status": 0, "output": format!("{} {timeout_ms}", argv.join(" "))}),
            )
        }
        fn submit(&self, spec: serde_json::Value) -> Result<String, String> {
            Ok(format!("child of {}", spec["stored"]))
        }
        /// Runs the function of `LIB` in this process, as a child job would.
        fn call(
            &self,
            t: CallTarget,
            deadline: Instant,
            cancel: &AtomicBool,
        ) -> Result<Called, String> {
            if t.script != "lib" {
                return Err(format!("no stored script `{}`", t.script));
            }
            let args: Vec<String> = t.args.iter().map(|a| a.to_string()).collect();
            let program = Program {
                name: "lib",
                code: LIB,
                args: &args,
                call: Some(&t.function),
                file: None,
            };
            let left_ms = deadline
                .saturating_duration_since(Instant::now())
                .as_millis() as u64;
            let cancel = Arc::new(AtomicBool::new(cancel.load(Ordering::Relaxed)));
            let value = run(
                &program,
                left_ms,
                cancel,
                Arc::new(Lines::default()),
                Arc::default(),
            )
            .map(|text| serde_json::from_str(&text).unwrap())
            .map_err(|f| f.to_string());
            let split = Split {
                prepare_us: 1,
                wait_us: 2,
                receive_us: 3,
            };
            Ok(Called { value, split })
        }
    }

    fn go_profiled(code: &str) -> (Result<String, Failure>, Vec<ProfileRow>) {
        let profiler = Arc::new(Profiler::default());
        let program = Program {
            name: "main",
            code,
            args: &[],
            call: None,
            file: None,
        };
        let cancel = Arc::new(AtomicBool::new(false));
        let r = run(
            &program,
            5_000,
            cancel,
            Arc::new(Lines::default()),
            profiler.clone(),
        );
        (r, profiler.rows())
    }

    #[test]
    fn a_script_that_only_logs_has_a_profile() {
        let (r, profile) = go_profiled("log(\"hi\"); log(1); progress(50); 7");
        assert_eq!(r, Ok("7".into()));
        let calls = |name: &str| profile.iter().find(|r| r.name == name).map(|r| r.calls);
        assert_eq!((calls("log"), calls("progress")), (Some(2), Some(1)));
    }

    #[test]
    fn a_remote_call_returns_its_value_and_its_error_names_both_scripts() {
        let (r, profile) = go_profiled("let m = call_script(\"lib\", \"pair\", [1, 2], \"x\"); m.a.len() + call_script(\"lib\", \"twice\", 20)");
        assert_eq!(r, Ok("42".into()));
        let row = profile
            .iter()
            .find(|r| r.name == "call lib.twice")
            .expect("a row per target");
        assert_eq!((row.calls, row.prepare_us, row.wait_us), (1, 1, 2));
        assert!(row.receive_us >= 3 && row.total_us >= 6, "{row:?}");
        let (r, _) = go_profiled("let a = 1;\nlet b = call_script(\"lib\", \"boom\");\nb");
        let Err(Failure::Runtime(m)) = r else {
            panic!("{r:?}")
        };
        assert!(
            m.starts_with("main: ") && m.contains("call_script(\"lib\", \"boom\")"),
            "{m}"
        );
        assert!(m.contains("lib: no paper (line 4, position 3)"), "{m}");
        assert!(m.ends_with("(line 2, position 9)"), "{m}");
        let (r, _) = go_profiled("call_script(\"nowhere\", \"f\")");
        assert!(
            matches!(&r, Err(Failure::Runtime(m)) if m.contains("no stored script `nowhere`")),
            "{r:?}"
        );
    }

    #[test]
    fn host_functions_reach_the_host_and_are_profiled() {
        let (r, profile) = go_profiled(
            "let rows = sql(\"SELECT ?1\", [7]);\nlet t = file_read(\"a.txt\");\nlet out = run([\"echo\", \"hi\"], 500);\nsubmit(#{stored: \"lib\"}) + \"|\" + rows[0].params[0] + \"|\" + t + \"|\" + out.output",
        );
        assert_eq!(r, Ok("child of \"lib\"|7|text of a|echo hi 500".into()));
        let names: Vec<&str> = profile.iter().map(|r| r.name.as_str()).collect();
        for n in ["sql", "file_read", "run", "submit"] {
            assert!(names.contains(&n), "{names:?}");
        }
        let (r, _) = go_profiled("file_read(\"../etc/passwd\")");
        assert!(
            matches!(&r, Err(Failure::Runtime(m)) if m.contains("file_read(\"../etc/passwd\"): not here")),
            "{r:?}"
        );
    }

    #[test]
    fn a_profile_keeps_a_bounded_number_of_rows_slowest_first() {
        let p = Profiler::default();
        for i in 0..200u64 {
            p.record(
                &format!("call lib.f{i}"),
                Split {
                    wait_us: i,
                    ..Split::default()
                },
            );
        }
        let rows = p.rows();
        assert_eq!(rows.len(), PROFILE_ROWS_MAX);
        assert!(rows.windows(2).all(|w| w[0].total_us >= w[1].total_us));
        assert_eq!(rows.iter().map(|r| r.calls).sum::<u64>(), 200);
    }

    #[test]
    fn the_cluster_settings_are_read_and_write_errors_name_the_call() {
        assert_eq!(
            go("kv_get(\"colour\") + \"/\" + kv_get(\"none\")", 1000).0,
            Ok("RED/".into())
        );
        let Err(Failure::Runtime(m)) = go("kv_set(\"a\", \"b\")", 1000).0 else {
            panic!()
        };
        assert!(m.contains("kv_set(\"a\"): read-only"), "{m}");
    }

    fn go(code: &str, timeout_ms: u64) -> (Result<String, Failure>, Arc<Lines>) {
        let host = Arc::new(Lines::default());
        let cancel = Arc::new(AtomicBool::new(false));
        let args = vec!["a".to_string(), "b".to_string()];
        let program = Program {
            name: "script",
            code,
            args: &args,
            call: None,
            file: None,
        };
        (
            run(&program, timeout_ms, cancel, host.clone(), Arc::default()),
            host,
        )
    }

    #[test]
    fn a_script_returns_its_value_and_logs() {
        let (r, host) = go(
            "log(\"hi \" + ARGS[1]); progress(50); 40 + ARGS.len()",
            1000,
        );
        assert_eq!(r, Ok("42".into()));
        assert_eq!(*host.0.lock().unwrap(), ["hi b"]);
        assert_eq!(*host.1.lock().unwrap(), 50);
        assert_eq!(go("\"text\"", 1000).0, Ok("text".into()));
    }

    #[test]
    fn a_syntax_error_names_its_line_and_twin_functions_are_refused() {
        let Err(Failure::Compile(m)) = go("let x = 1;\nlet = ;", 1000).0 else {
            panic!()
        };
        assert!(m.contains("line 2"), "{m}");
        let twice = "fn f(a) { a }\nfn f(b) { b }\nf(1)";
        let Err(Failure::Compile(m)) = check(twice) else {
            panic!()
        };
        assert!(m.contains("already exists") && m.contains("line 2"), "{m}");
    }

    #[test]
    fn a_runtime_error_names_its_line() {
        let Err(Failure::Runtime(m)) = go("let a = 1;\nthrow \"bad input\";", 1000).0 else {
            panic!()
        };
        assert!(m.contains("bad input") && m.contains("line 2"), "{m}");
    }

    #[test]
    fn an_endless_loop_is_stopped_at_the_timeout() {
        let started = Instant::now();
        let (r, _) = go("loop { }", 200);
        assert_eq!(r, Err(Failure::TimedOut { after_ms: 200 }));
        assert!(started.elapsed() < Duration::from_secs(5));
        let (r, _) = go("sleep_ms(100000); 1", 100);
        assert_eq!(r, Err(Failure::TimedOut { after_ms: 100 }));
    }

    /// Growing an array or a map costs time in proportion to its length:
    /// with the engine's size limits set, each `push` measured the whole
    /// array, and these 200,000 pushes did not end within 10 s. (What bounds
    /// a script's data is its worker's memory: tests/jobs.rs.)
    #[test]
    fn growing_an_array_or_a_map_costs_linear_time() {
        let code = "let a = []; for i in 0..200000 { a.push(i); } a.len()";
        assert_eq!(go(code, 10_000).0, Ok("200000".into()));
        let code = "let m = #{}; for i in 0..200000 { m[`k${i}`] = i; } m.len()";
        assert_eq!(go(code, 10_000).0, Ok("200000".into()));
    }

    #[test]
    fn a_cancel_stops_a_running_script() {
        let host = Arc::new(Lines::default());
        let cancel = Arc::new(AtomicBool::new(false));
        let c = cancel.clone();
        let t = std::thread::spawn(move || {
            let program = Program {
                name: "script",
                code: "loop { sleep_ms(5); }",
                args: &[],
                call: None,
                file: None,
            };
            run(&program, 60_000, c, host, Arc::default())
        });
        std::thread::sleep(Duration::from_millis(50));
        cancel.store(true, Ordering::Relaxed);
        assert_eq!(t.join().unwrap(), Err(Failure::Cancelled));
    }
}
