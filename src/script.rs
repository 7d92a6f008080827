//! The Script Execution Engine: Rhai, sandboxed. A script sees its
//! arguments as `ARGS` (an array of strings) and a small host API:
//!
//! - `log(text)`: a line in the job's captured log;
//! - `progress(percent)`: how far it is (0..=100), shown with the job;
//! - `sleep_ms(n)`: waits, and is cut short by a cancel or the timeout;
//! - `kv_get(key)` / `kv_set(key, value)`: the cluster's settings, read with
//!   the default read rule (never stale) and written through the
//!   coordinator (committed before `kv_set` returns); `kv_get` of a missing
//!   key is `()`.
//!
//! Its return value (as text) is the job's result; an error, with the
//! line it happened on, fails the job. Limits: operations, call depth,
//! expression depth, string, array and map sizes, and wall time; a cancel
//! stops it at its next operation. Nothing here touches the cluster or the
//! disk: the host functions only call the `Host` they are given.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rhai::{Dynamic, Engine, EvalAltResult, Position, Scope, AST};

/// Operations one run may take (a busy loop of a few seconds).
pub const OPERATIONS_MAX: u64 = 200_000_000;
/// Nested function calls.
pub const CALL_LEVELS_MAX: usize = 64;
/// Nesting of expressions.
pub const EXPR_DEPTH_MAX: usize = 128;
/// Largest string a script may build.
pub const STRING_BYTES_MAX: usize = 4 * 1024 * 1024;
/// Largest array and map.
pub const ARRAY_LEN_MAX: usize = 1_000_000;
pub const MAP_LEN_MAX: usize = 1_000_000;
/// Operations between two looks at the clock and the cancel flag.
const CHECK_EVERY_OPS: u64 = 1024;
/// Step of `sleep_ms` between looks at the clock and the cancel flag.
const SLEEP_STEP_MS: u64 = 10;

/// What a running script reports to its job.
pub trait Host: Send + Sync {
    fn log(&self, line: &str);
    fn progress(&self, percent: u8);
    /// A cluster setting's value as text (`None`: no such key).
    fn kv_get(&self, key: &str) -> Result<Option<String>, String>;
    /// Sets a cluster setting; returns once it is committed.
    fn kv_set(&self, key: &str, value: &str) -> Result<(), String>;
}

/// How a run ends when it fails: the message says where.
#[derive(Debug, Clone, PartialEq, Eq)]
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
    e.set_max_string_size(STRING_BYTES_MAX);
    e.set_max_array_size(ARRAY_LEN_MAX);
    e.set_max_map_size(MAP_LEN_MAX);
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

/// Runs `code` with `args` until it returns, fails, takes longer than
/// `timeout_ms`, or `cancel` is set. Returns its value as text.
pub fn run(
    code: &str,
    args: &[String],
    timeout_ms: u64,
    cancel: Arc<AtomicBool>,
    host: Arc<dyn Host>,
) -> Result<String, Failure> {
    let ast = check(code)?;
    let started = Instant::now();
    let deadline = started + Duration::from_millis(timeout_ms);
    let mut e = engine();
    let stop = Arc::new(Mutex::new(None::<Failure>));
    on_progress(&mut e, deadline, timeout_ms, cancel.clone(), stop.clone());
    register_host(&mut e, host, (deadline, timeout_ms), cancel, stop.clone());
    let mut scope = Scope::new();
    let list: rhai::Array = args.iter().map(|a| Dynamic::from(a.clone())).collect();
    scope.push_constant("ARGS", list);
    match e.eval_ast_with_scope::<Dynamic>(&mut scope, &ast) {
        Ok(v) => Ok(value_text(&v)),
        Err(err) => Err(stop
            .lock()
            .expect("stop lock")
            .take()
            .unwrap_or_else(|| runtime(&err))),
    }
}

/// Stops the run at the deadline or on a cancel, saying which.
fn on_progress(
    e: &mut Engine,
    deadline: Instant,
    timeout_ms: u64,
    cancel: Arc<AtomicBool>,
    stop: Arc<Mutex<Option<Failure>>>,
) {
    e.on_progress(move |ops| {
        if ops % CHECK_EVERY_OPS != 0 {
            return None;
        }
        let why = if cancel.load(Ordering::Relaxed) {
            Failure::Cancelled
        } else if Instant::now() >= deadline {
            Failure::TimedOut {
                after_ms: timeout_ms,
            }
        } else {
            return None;
        };
        *stop.lock().expect("stop lock") = Some(why);
        Some(Dynamic::UNIT)
    });
}

fn register_host(
    e: &mut Engine,
    host: Arc<dyn Host>,
    (deadline, timeout_ms): (Instant, u64),
    cancel: Arc<AtomicBool>,
    stop: Arc<Mutex<Option<Failure>>>,
) {
    let h = host.clone();
    e.on_print(move |text| h.log(text));
    let h = host.clone();
    e.on_debug(move |text, _, _| h.log(text));
    let h = host.clone();
    e.register_fn("log", move |text: &str| h.log(text));
    let h = host.clone();
    e.register_fn("log", move |value: Dynamic| h.log(&value_text(&value)));
    let h = host.clone();
    e.register_fn("progress", move |p: i64| h.progress(p.clamp(0, 100) as u8));
    let h = host.clone();
    e.register_fn(
        "kv_get",
        move |key: &str| -> Result<Dynamic, Box<EvalAltResult>> {
            match h.kv_get(key) {
                Ok(Some(v)) => Ok(Dynamic::from(v)),
                Ok(None) => Ok(Dynamic::UNIT),
                Err(e) => Err(format!("kv_get(\"{key}\"): {e}").into()),
            }
        },
    );
    let h = host;
    e.register_fn(
        "kv_set",
        move |key: &str, value: &str| -> Result<(), Box<EvalAltResult>> {
            h.kv_set(key, value)
                .map_err(|e| format!("kv_set(\"{key}\"): {e}").into())
        },
    );
    e.register_fn(
        "sleep_ms",
        move |ms: i64| -> Result<(), Box<EvalAltResult>> {
            let until = Instant::now() + Duration::from_millis(ms.max(0) as u64);
            loop {
                let now = Instant::now();
                let why = if cancel.load(Ordering::Relaxed) {
                    Some(Failure::Cancelled)
                } else if now >= deadline {
                    Some(Failure::TimedOut {
                        after_ms: timeout_ms,
                    })
                } else {
                    None
                };
                if let Some(why) = why {
                    *stop.lock().expect("stop lock") = Some(why);
                    return Err("stopped".into());
                }
                if now >= until {
                    return Ok(());
                }
                let step = (until - now).min(Duration::from_millis(SLEEP_STEP_MS));
                std::thread::sleep(step);
            }
        },
    );
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

fn runtime(err: &EvalAltResult) -> Failure {
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
    // Rhai's own text already names the position; keep it once.
    let text = text.split(" (line ").next().unwrap_or(&text).to_string();
    Failure::Runtime(format!("{text}{at}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Lines(Mutex<Vec<String>>, Mutex<u8>);

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
        (run(code, &args, timeout_ms, cancel, host.clone()), host)
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

    #[test]
    fn a_huge_allocation_is_refused() {
        let (r, _) = go("let s = \"x\"; loop { s += s; }", 10_000);
        let Err(Failure::Runtime(m)) = r else {
            panic!("{r:?}")
        };
        assert!(m.to_lowercase().contains("length"), "{m}");
        let (r, _) = go("let a = []; a.pad(100000000, 0); a.len()", 10_000);
        assert!(matches!(r, Err(Failure::Runtime(_))), "{r:?}");
    }

    #[test]
    fn a_cancel_stops_a_running_script() {
        let host = Arc::new(Lines::default());
        let cancel = Arc::new(AtomicBool::new(false));
        let c = cancel.clone();
        let t = std::thread::spawn(move || run("loop { sleep_ms(5); }", &[], 60_000, c, host));
        std::thread::sleep(Duration::from_millis(50));
        cancel.store(true, Ordering::Relaxed);
        assert_eq!(t.join().unwrap(), Err(Failure::Cancelled));
    }
}
