//! Scripts run out of the server process: a pool of worker processes per
//! instance (the `claro` binary started with `WORKER_ARG`), each under OS
//! limits (address space `script_memory_mb`, CPU time `script_cpu_s`, open
//! files `script_files_max`), reused across jobs. A worker runs the engine
//! (`work::script`) and reaches its instance only through the host API over
//! its stdin and stdout: every host function is a request that the instance
//! answers with a real `ScriptHost`. So a hostile or broken script can at
//! worst end its own worker: the job fails naming the limit, the instance
//! and its other jobs go on, and the worker's memory goes back to the
//! system. A worker that grew past `REUSE_RSS_BYTES_MAX` is ended after its
//! job rather than reused, for the same reason.
//!
//! Frames both ways: a 4-byte big-endian length, then CBOR; at most
//! `FRAME_BYTES_MAX`. The worker speaks only when asked to run a script.

use std::io::{BufReader, BufWriter, Read, Write};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, ChildStdin, ChildStdout, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::account::Account;
use crate::config::JobsConf;
use crate::work::jobs::ProfileRow;
use crate::work::script::{CallTarget, Called, Failure, FileOp, Host, Profiler, Program, Split};

/// The first argument that makes `claro` a script worker, not a command.
pub const WORKER_ARG: &str = "__claro-script-worker";
/// This process's own binary, as the kernel keeps it open.
const SELF_EXE: &str = "/proc/self/exe";
/// The worker's limits, passed at its start: `MEMORY_BYTES,CPU_S,FILES`.
const LIMITS_ENV: &str = "CLARO_SCRIPT_LIMITS";
/// Largest frame either way: a 4 MiB string (`file_read`) as JSON, and more.
pub const FRAME_BYTES_MAX: usize = 16 * 1024 * 1024;
/// A worker whose resident memory is above this after a job is ended rather
/// than reused, so that what a big script took goes back to the system.
pub const REUSE_RSS_BYTES_MAX: u64 = 64 * 1024 * 1024;
/// Time past a script's own timeout before its worker is killed (the
/// engine in the worker normally stops the script itself at the timeout).
const KILL_GRACE_MS: u64 = 2_000;
/// Step of the watchdog's looks at the cancel flag and the deadline.
const WATCH_MS: u64 = 10;
/// Step of a worker's look at whether its instance is still there.
const PARENT_CHECK_MS: u64 = 100;
/// What a worker wrote to stderr, kept for the message if it dies.
const STDERR_BYTES_MAX: usize = 4096;

// ---------------------------------------------------------------------------
// The messages

/// A script to run, as `Program` says it, with its limits.
#[derive(Serialize, Deserialize)]
struct Order {
    name: String,
    code: String,
    args: Vec<String>,
    call: Option<String>,
    /// `FILE` as JSON text.
    file: Option<String>,
    timeout_ms: u64,
    cpu_s: u64,
}

#[derive(Serialize, Deserialize)]
enum ToWorker {
    Run(Order),
    /// A host function's value as JSON text, or its error.
    Answer(Result<String, String>),
    /// A remote call's value (JSON text, or the callee's error) and split.
    Called(Result<(Result<String, String>, [u64; 3]), String>),
}

#[derive(Serialize, Deserialize)]
enum FromWorker {
    Log(String),
    Progress(u8),
    Host(HostCall),
    Done {
        result: Result<String, Failure>,
        profile: Vec<ProfileRow>,
    },
}

/// A host function the script called; JSON values travel as text.
#[derive(Serialize, Deserialize)]
enum HostCall {
    TicketSet(String, String),
    KvGet(String),
    KvSet(String, String),
    Sql(String, String),
    File(FileOp),
    Run {
        argv: Vec<String>,
        timeout_ms: u64,
    },
    Submit(String),
    SubmitMany(String),
    Call {
        script: String,
        function: String,
        args: String,
        left_ms: u64,
    },
}

fn write_frame<T: Serialize>(w: &mut impl Write, msg: &T) -> std::io::Result<()> {
    let mut buf = Vec::new();
    ciborium::into_writer(msg, &mut buf).map_err(std::io::Error::other)?;
    if buf.len() > FRAME_BYTES_MAX {
        return Err(std::io::Error::other(format!(
            "a frame of {} bytes is over FRAME_BYTES_MAX ({FRAME_BYTES_MAX})",
            buf.len()
        )));
    }
    w.write_all(&(buf.len() as u32).to_be_bytes())?;
    w.write_all(&buf)?;
    w.flush()
}

fn read_frame<T: DeserializeOwned>(r: &mut impl Read) -> std::io::Result<T> {
    let mut len = [0u8; 4];
    r.read_exact(&mut len)?;
    let n = u32::from_be_bytes(len) as usize;
    if n > FRAME_BYTES_MAX {
        return Err(std::io::Error::other(format!(
            "a frame of {n} bytes is over FRAME_BYTES_MAX ({FRAME_BYTES_MAX})"
        )));
    }
    let mut buf = vec![0u8; n];
    r.read_exact(&mut buf)?;
    ciborium::from_reader(&buf[..]).map_err(std::io::Error::other)
}

/// Reads one frame from `bytes` as the instance reads its worker's stdout:
/// a frame a broken worker wrote is an error, never a panic nor a large
/// allocation from its length alone. Public for tests/fuzz.rs.
pub fn read_worker_frame(mut bytes: &[u8]) -> std::io::Result<()> {
    read_frame::<FromWorker>(&mut bytes).map(drop)
}

/// Reads one frame from `bytes` as a worker reads its stdin (see
/// [`read_worker_frame`]).
pub fn read_order_frame(mut bytes: &[u8]) -> std::io::Result<()> {
    read_frame::<ToWorker>(&mut bytes).map(drop)
}

// ---------------------------------------------------------------------------
// The instance's side

/// The OS limits of every worker of an instance.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub memory_bytes: u64,
    pub cpu_s: u64,
    pub files: u64,
}

impl Limits {
    pub fn of(jobs: &JobsConf) -> Limits {
        Limits {
            memory_bytes: jobs.script_memory_mb * 1024 * 1024,
            cpu_s: jobs.script_cpu_s,
            files: jobs.script_files_max,
        }
    }
}

/// One worker process and its pipes.
struct Worker {
    child: Child,
    to: BufWriter<ChildStdin>,
    from: BufReader<ChildStdout>,
    stderr: Arc<Mutex<Vec<u8>>>,
    /// Signalled when the worker's stderr reached its end (it exited).
    stderr_closed: std::sync::mpsc::Receiver<()>,
}

/// Longest wait, after a worker died, for the last of its stderr (where
/// the reason is: "memory allocation of N bytes failed").
const STDERR_DRAIN_MS: u64 = 2_000;

impl Worker {
    fn spawn(limits: Limits, user: Option<&Account>) -> Result<Worker, String> {
        let exe = std::env::current_exe().map_err(|e| format!("this program's path: {e}"))?;
        let mut command = Command::new(&exe);
        if let Some(user) = user {
            // Its own binary through /proc: the `run_as` user need not be
            // able to reach the folder claro is installed in, and the worker
            // is the very program its instance runs, even after an upgrade
            // replaced the file. It needs no working folder: its instance
            // opens every file for it.
            command = Command::new(SELF_EXE);
            command.arg0(&exe);
            user.apply(&mut command, Some(Path::new("/")))
                .map_err(|e| format!("cannot start a script worker as user {}: {e}", user.name))?;
        }
        let mut child = command
            .arg(WORKER_ARG)
            .env(
                LIMITS_ENV,
                format!("{},{},{}", limits.memory_bytes, limits.cpu_s, limits.files),
            )
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| match user {
                Some(u) => format!(
                    "cannot start a script worker ({}) as user {}: {e}",
                    exe.display(),
                    u.name
                ),
                None => format!("cannot start a script worker ({}): {e}", exe.display()),
            })?;
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let (closed_tx, stderr_closed) = std::sync::mpsc::channel();
        if let Some(mut err) = child.stderr.take() {
            let kept = stderr.clone();
            std::thread::spawn(move || {
                let mut buf = [0u8; 1024];
                while let Ok(n) = err.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    let mut k = kept.lock().expect("stderr lock");
                    k.extend_from_slice(&buf[..n]);
                    let over = k.len().saturating_sub(STDERR_BYTES_MAX);
                    k.drain(..over);
                }
                let _ = closed_tx.send(());
            });
        }
        let to = BufWriter::new(child.stdin.take().expect("piped stdin"));
        let from = BufReader::new(child.stdout.take().expect("piped stdout"));
        Ok(Worker {
            child,
            to,
            from,
            stderr,
            stderr_closed,
        })
    }

    fn send(&mut self, msg: &ToWorker) -> std::io::Result<()> {
        write_frame(&mut self.to, msg)
    }

    fn recv(&mut self) -> std::io::Result<FromWorker> {
        read_frame(&mut self.from)
    }

    /// Resident memory, from /proc (0 when it cannot be read).
    fn rss_bytes(&self) -> u64 {
        let statm = std::fs::read_to_string(format!("/proc/{}/statm", self.child.id()));
        let pages: u64 = statm
            .ok()
            .and_then(|s| s.split_whitespace().nth(1).and_then(|p| p.parse().ok()))
            .unwrap_or(0);
        // SAFETY: sysconf has no preconditions.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(4096) as u64;
        pages * page
    }

    fn end(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The workers of one instance: idle ones wait here for the next script.
pub struct Pool {
    idle: Mutex<Vec<Worker>>,
    watchdog: Arc<Watchdog>,
    /// Idle workers kept at most: the instance's slots.
    idle_max: usize,
    limits: Limits,
    /// The user workers run as (`[jobs] run_as`); `None`: the instance's.
    user: Option<Account>,
}

impl Pool {
    pub fn new(limits: Limits, idle_max: usize, user: Option<Account>) -> Pool {
        Pool {
            idle: Mutex::new(Vec::new()),
            watchdog: Arc::default(),
            idle_max,
            limits,
            user,
        }
    }

    fn spawn(&self) -> Result<Worker, String> {
        Worker::spawn(self.limits, self.user.as_ref())
    }

    /// Starts the idle workers ahead of the first scripts (on a blocking
    /// thread: each start is a process start).
    pub fn prestart(&self) {
        for _ in 0..self.idle_max {
            match self.spawn() {
                Ok(w) => self.give_back(w),
                Err(e) => return tracing::error!("{e}"),
            }
        }
    }

    fn take(&self) -> Result<Worker, String> {
        match self.idle.lock().expect("pool lock").pop() {
            Some(w) => Ok(w),
            None => self.spawn(),
        }
    }

    /// Keeps a worker for the next script, unless it holds too much memory
    /// or enough are idle already.
    fn give_back(&self, w: Worker) {
        if w.rss_bytes() > REUSE_RSS_BYTES_MAX {
            return w.end();
        }
        let mut idle = self.idle.lock().expect("pool lock");
        if idle.len() < self.idle_max {
            idle.push(w);
            return;
        }
        drop(idle);
        w.end();
    }
}

/// Runs `program` in a worker of `pool`, as `script::run` would in this
/// process: until it returns, fails, passes `timeout_ms` or `cancel` is
/// set. Its host calls are answered by `host`; its profile goes to
/// `profiler`.
pub fn run(
    pool: &Pool,
    program: &Program<'_>,
    timeout_ms: u64,
    cancel: Arc<AtomicBool>,
    host: Arc<dyn Host>,
    profiler: &Profiler,
) -> Result<String, Failure> {
    let order = Order {
        name: program.name.to_string(),
        code: program.code.to_string(),
        args: program.args.to_vec(),
        call: program.call.map(str::to_string),
        file: program.file.as_ref().map(|f| f.to_string()),
        timeout_ms,
        cpu_s: pool.limits.cpu_s,
    };
    let mut w = start(pool, ToWorker::Run(order)).map_err(Failure::Runtime)?;
    let deadline = Instant::now() + Duration::from_millis(timeout_ms);
    let watch = pool
        .watchdog
        .watch(w.child.id(), deadline, cancel.clone(), timeout_ms);
    let ended = converse(&mut w, &*host, deadline, &cancel, profiler);
    let killed = pool.watchdog.unwatch(watch);
    match ended {
        Ok(result) => {
            pool.give_back(w);
            result
        }
        Err(e) => {
            let status = w.child.wait();
            // The reason it printed may still be on its way from the pipe
            // (once read too early: "ended (signal 6)" without the reason).
            let drain = Duration::from_millis(STDERR_DRAIN_MS);
            let _ = w.stderr_closed.recv_timeout(drain);
            let stderr =
                String::from_utf8_lossy(&w.stderr.lock().expect("stderr lock")).into_owned();
            Err(killed.unwrap_or_else(|| died(status.ok(), &stderr, &e, pool.limits)))
        }
    }
}

/// A worker with the order sent: an idle one, or a new one when the idle
/// one turns out to be gone.
fn start(pool: &Pool, first: ToWorker) -> Result<Worker, String> {
    let mut w = pool.take()?;
    if w.send(&first).is_ok() {
        return Ok(w);
    }
    w.end();
    let mut w = pool.spawn()?;
    w.send(&first)
        .map_err(|e| format!("a new script worker did not take the script: {e}"))?;
    Ok(w)
}

/// Serves the worker until it reports the end (`Ok`), or the pipe fails
/// (`Err`: the worker died or was killed).
fn converse(
    w: &mut Worker,
    host: &dyn Host,
    deadline: Instant,
    cancel: &AtomicBool,
    profiler: &Profiler,
) -> Result<Result<String, Failure>, String> {
    loop {
        match w.recv().map_err(|e| e.to_string())? {
            FromWorker::Log(line) => host.log(&line),
            FromWorker::Progress(p) => host.progress(p.min(100)),
            FromWorker::Host(call) => {
                let answer = serve(host, call, deadline, cancel);
                w.send(&answer).map_err(|e| e.to_string())?;
            }
            FromWorker::Done { result, profile } => {
                profiler.merge(&profile);
                return Ok(result);
            }
        }
    }
}

/// One host call, answered by the instance's host.
fn serve(host: &dyn Host, call: HostCall, deadline: Instant, cancel: &AtomicBool) -> ToWorker {
    let json = |v: serde_json::Value| v.to_string();
    let parse = |t: &str| serde_json::from_str::<serde_json::Value>(t).map_err(|e| e.to_string());
    let answer = match call {
        HostCall::TicketSet(key, value) => host.ticket_set(&key, &value).map(|()| "null".into()),
        HostCall::KvGet(key) => host.kv_get(&key).map(|v| json(serde_json::json!(v))),
        HostCall::KvSet(key, value) => host.kv_set(&key, &value).map(|()| "null".into()),
        HostCall::Sql(query, params) => parse(&params).and_then(|p| {
            let p = p.as_array().cloned().unwrap_or_default();
            host.sql(&query, &p)
                .map(|rows| json(serde_json::Value::Array(rows)))
        }),
        HostCall::File(op) => host.file(op).map(json),
        HostCall::Run { argv, timeout_ms } => host.run(&argv, timeout_ms, cancel).map(json),
        HostCall::Submit(spec) => parse(&spec)
            .and_then(|s| host.submit(s))
            .map(|id| json(id.into())),
        HostCall::SubmitMany(specs) => parse(&specs)
            .and_then(|s| match s {
                serde_json::Value::Array(list) => host.submit_many(list),
                _ => Err("submit takes a list".into()),
            })
            .map(|ids| json(serde_json::json!(ids))),
        HostCall::Call {
            script,
            function,
            args,
            left_ms,
        } => {
            return ToWorker::Called(remote_call(
                host,
                (script, function, &args),
                left_ms,
                deadline,
                cancel,
            ))
        }
    };
    ToWorker::Answer(answer)
}

fn remote_call(
    host: &dyn Host,
    (script, function, args): (String, String, &str),
    left_ms: u64,
    deadline: Instant,
    cancel: &AtomicBool,
) -> Result<(Result<String, String>, [u64; 3]), String> {
    let args = match serde_json::from_str::<serde_json::Value>(args).map_err(|e| e.to_string())? {
        serde_json::Value::Array(a) => a,
        _ => return Err("a call's arguments must be an array".into()),
    };
    let target = CallTarget {
        script,
        function,
        args,
    };
    let until = deadline.min(Instant::now() + Duration::from_millis(left_ms));
    let called = host.call(target, until, cancel)?;
    let s = called.split;
    let value = called.value.map(|v| v.to_string());
    Ok((value, [s.prepare_us, s.wait_us, s.receive_us]))
}

/// One running script's watch: its worker, when it must be killed, and
/// why it was (`None` while it was not).
struct Watch {
    pid: u32,
    hard: Instant,
    timeout_ms: u64,
    cancel: Arc<AtomicBool>,
    killed: Option<Failure>,
}

/// The pool's one watchdog thread: every `WATCH_MS` it kills the workers
/// whose script was cancelled or is `KILL_GRACE_MS` past its deadline. One
/// thread for all, rather than one per script, keeps a short script's cost
/// to a map insert and remove.
#[derive(Default)]
struct Watchdog {
    watches: Mutex<std::collections::HashMap<u64, Watch>>,
    /// Signalled when a watch is added: an idle pool's thread waits on it
    /// rather than looking every `WATCH_MS` at nothing.
    added: std::sync::Condvar,
    next_id: std::sync::atomic::AtomicU64,
    started: std::sync::OnceLock<()>,
}

/// Longest wait of the watchdog's thread while nothing is watched (it then
/// lets go of the pool for a moment, so that a dropped pool ends it).
const IDLE_WAIT_MS: u64 = 1_000;

impl Watchdog {
    fn watch(
        self: &Arc<Self>,
        pid: u32,
        deadline: Instant,
        cancel: Arc<AtomicBool>,
        timeout_ms: u64,
    ) -> u64 {
        self.started.get_or_init(|| {
            // Weak: the thread ends with the pool rather than keeping it.
            let me = Arc::downgrade(self);
            std::thread::spawn(move || loop {
                std::thread::sleep(Duration::from_millis(WATCH_MS));
                match me.upgrade() {
                    Some(dog) => {
                        dog.idle();
                        dog.look();
                    }
                    None => return,
                }
            });
        });
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let w = Watch {
            pid,
            hard: deadline + Duration::from_millis(KILL_GRACE_MS),
            timeout_ms,
            cancel,
            killed: None,
        };
        self.watches.lock().expect("watch lock").insert(id, w);
        self.added.notify_one();
        id
    }

    /// Waits, while nothing is watched, up to `IDLE_WAIT_MS` for a watch.
    fn idle(&self) {
        let watches = self.watches.lock().expect("watch lock");
        if watches.is_empty() {
            let wait = Duration::from_millis(IDLE_WAIT_MS);
            let _ = self.added.wait_timeout(watches, wait).expect("watch lock");
        }
    }

    fn look(&self) {
        let now = Instant::now();
        let mut watches = self.watches.lock().expect("watch lock");
        for w in watches.values_mut().filter(|w| w.killed.is_none()) {
            let why = if w.cancel.load(Ordering::Relaxed) {
                Failure::Cancelled
            } else if now >= w.hard {
                Failure::TimedOut {
                    after_ms: w.timeout_ms,
                }
            } else {
                continue;
            };
            // Under the lock: a watch removed (its script ended) is never
            // killed. SAFETY: kill has no memory preconditions; the pid is
            // a child not yet reaped (its runner waits only after `unwatch`).
            unsafe { libc::kill(w.pid as libc::pid_t, libc::SIGKILL) };
            w.killed = Some(why);
        }
    }

    /// Stops watching `id`; `Some` when its worker was killed first.
    fn unwatch(&self, id: u64) -> Option<Failure> {
        let w = self.watches.lock().expect("watch lock").remove(&id);
        w.and_then(|w| w.killed)
    }
}

/// Why a worker ended before reporting: the limit it hit, said plainly.
fn died(status: Option<ExitStatus>, stderr: &str, pipe: &str, limits: Limits) -> Failure {
    use std::os::unix::process::ExitStatusExt as _;
    let signal = status.and_then(|s| s.signal());
    if stderr.contains("memory allocation") {
        return Failure::Runtime(format!(
            "the script needed more memory than its worker may have (script_memory_mb = {} MiB in [jobs]); the worker was stopped, the instance goes on",
            limits.memory_bytes / (1024 * 1024)
        ));
    }
    if signal == Some(libc::SIGXCPU) {
        return Failure::Runtime(format!(
            "the script used more CPU time than script_cpu_s = {} s ([jobs]) allows; its worker was stopped",
            limits.cpu_s
        ));
    }
    let how = status.map_or("an unknown status".to_string(), |s| s.to_string());
    let said = stderr.trim();
    Failure::Runtime(format!(
        "the script's worker process ended ({how}; {pipe}){}{said}",
        if said.is_empty() { "" } else { ": " }
    ))
}

// ---------------------------------------------------------------------------
// The worker's side

/// The worker process: applies its limits, then runs one script after
/// another as the instance sends them, until its stdin closes (the instance
/// ended it, or is gone). Its exit status: 0, or 70 when it cannot run.
pub fn worker_main() -> i32 {
    let limits = match limits_from_env() {
        Ok(l) => l,
        Err(e) => {
            eprintln!("script worker: {e}");
            return 70;
        }
    };
    if let Err(e) = apply_fixed_limits(limits) {
        eprintln!("script worker: cannot set its limits: {e}");
        return 70;
    }
    exit_with_parent();
    let link = Arc::new(Link {
        from: Mutex::new(BufReader::new(std::io::stdin())),
        to: Mutex::new(BufWriter::new(std::io::stdout())),
    });
    loop {
        let order = match link.recv() {
            Ok(ToWorker::Run(order)) => order,
            Ok(_) => {
                eprintln!("script worker: an answer came without a question");
                return 70;
            }
            Err(_) => return 0,
        };
        let done = run_order(&link, order);
        if link.send(&done).is_err() {
            return 0;
        }
    }
}

fn run_order(link: &Arc<Link>, order: Order) -> FromWorker {
    set_cpu_limit(order.cpu_s);
    let profiler = Arc::new(Profiler::default());
    let file = match order.file.as_deref().map(serde_json::from_str).transpose() {
        Ok(f) => f,
        Err(e) => {
            return FromWorker::Done {
                result: Err(Failure::Runtime(format!("FILE is not JSON: {e}"))),
                profile: Vec::new(),
            }
        }
    };
    let program = Program {
        name: &order.name,
        code: &order.code,
        args: &order.args,
        call: order.call.as_deref(),
        file,
    };
    let host = Arc::new(Proxy { link: link.clone() });
    // The instance cancels by ending this process: nothing sets this flag.
    let cancel = Arc::new(AtomicBool::new(false));
    let result =
        crate::work::script::run(&program, order.timeout_ms, cancel, host, profiler.clone());
    FromWorker::Done {
        result,
        profile: profiler.rows(),
    }
}

/// Ends this worker as soon as its instance is gone (killed -9, say): a
/// script in a loop would otherwise run on for nobody until its timeout.
/// The parent is watched, not signalled: `PR_SET_PDEATHSIG` fires when the
/// *thread* that started the worker ends, which a blocking pool's threads do.
fn exit_with_parent() {
    // SAFETY: getppid has no preconditions.
    let parent = unsafe { libc::getppid() };
    std::thread::spawn(move || loop {
        std::thread::sleep(Duration::from_millis(PARENT_CHECK_MS));
        // SAFETY: as above; _exit ends the process without unwinding.
        if unsafe { libc::getppid() } != parent {
            unsafe { libc::_exit(0) };
        }
    });
}

fn limits_from_env() -> Result<Limits, String> {
    let text = std::env::var(LIMITS_ENV).map_err(|_| format!("{LIMITS_ENV} is not set"))?;
    let n: Vec<u64> = text
        .split(',')
        .map(|p| {
            p.parse::<u64>()
                .map_err(|_| format!("{LIMITS_ENV}={text:?}"))
        })
        .collect::<Result<_, _>>()?;
    match n[..] {
        [memory_bytes, cpu_s, files] => Ok(Limits {
            memory_bytes,
            cpu_s,
            files,
        }),
        _ => Err(format!("{LIMITS_ENV}={text:?}: three numbers")),
    }
}

fn set_limit(resource: libc::__rlimit_resource_t, soft: u64, hard: u64) -> std::io::Result<()> {
    let lim = libc::rlimit {
        rlim_cur: soft as libc::rlim_t,
        rlim_max: hard as libc::rlim_t,
    };
    // SAFETY: setrlimit reads the struct we pass; no other precondition.
    if unsafe { libc::setrlimit(resource, &lim) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Address space and open files, for the worker's whole life (soft and
/// hard: the script cannot raise them, and there is no host call to try).
fn apply_fixed_limits(l: Limits) -> std::io::Result<()> {
    set_limit(libc::RLIMIT_AS, l.memory_bytes, l.memory_bytes)?;
    set_limit(libc::RLIMIT_NOFILE, l.files, l.files)
}

/// CPU time for the next script: what this worker used so far plus
/// `cpu_s` (the soft limit only, so that it can be moved for the next one;
/// the hard one stays as it is, which a worker that is not root, under
/// `run_as`, could not raise).
fn set_cpu_limit(cpu_s: u64) {
    // SAFETY: getrusage and getrlimit fill the structs we pass.
    let (used_s, hard) = unsafe {
        let mut u: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut u);
        let mut lim: libc::rlimit = std::mem::zeroed();
        let hard = match libc::getrlimit(libc::RLIMIT_CPU, &mut lim) {
            0 => lim.rlim_max,
            _ => libc::RLIM_INFINITY,
        };
        ((u.ru_utime.tv_sec + u.ru_stime.tv_sec + 1) as u64, hard)
    };
    let _ = set_limit(libc::RLIMIT_CPU, (used_s + cpu_s).min(hard), hard);
}

/// The worker's pipes to its instance.
struct Link {
    from: Mutex<BufReader<std::io::Stdin>>,
    to: Mutex<BufWriter<std::io::Stdout>>,
}

impl Link {
    fn send(&self, msg: &FromWorker) -> std::io::Result<()> {
        write_frame(&mut *self.to.lock().expect("pipe lock"), msg)
    }

    fn recv(&self) -> std::io::Result<ToWorker> {
        read_frame(&mut *self.from.lock().expect("pipe lock"))
    }

    /// One host call and its answer (the engine is one thread: calls come
    /// one at a time).
    fn ask(&self, call: HostCall) -> Result<ToWorker, String> {
        let lost = |e: std::io::Error| format!("the instance did not answer: {e}");
        self.send(&FromWorker::Host(call)).map_err(lost)?;
        self.recv().map_err(lost)
    }

    fn answer(&self, call: HostCall) -> Result<String, String> {
        match self.ask(call)? {
            ToWorker::Answer(a) => a,
            _ => Err("the instance answered out of turn".into()),
        }
    }

    fn value<T: DeserializeOwned>(&self, call: HostCall) -> Result<T, String> {
        serde_json::from_str(&self.answer(call)?).map_err(|e| e.to_string())
    }
}

/// The host as a script in a worker sees it: every call goes to the
/// instance.
struct Proxy {
    link: Arc<Link>,
}

impl Host for Proxy {
    fn log(&self, line: &str) {
        let _ = self.link.send(&FromWorker::Log(line.to_string()));
    }

    fn progress(&self, percent: u8) {
        let _ = self.link.send(&FromWorker::Progress(percent));
    }

    fn ticket_set(&self, key: &str, value: &str) -> Result<(), String> {
        self.link
            .answer(HostCall::TicketSet(key.to_string(), value.to_string()))
            .map(|_| ())
    }

    fn kv_get(&self, key: &str) -> Result<Option<String>, String> {
        self.link.value(HostCall::KvGet(key.to_string()))
    }

    fn kv_set(&self, key: &str, value: &str) -> Result<(), String> {
        self.link
            .answer(HostCall::KvSet(key.to_string(), value.to_string()))
            .map(|_| ())
    }

    fn sql(
        &self,
        query: &str,
        params: &[serde_json::Value],
    ) -> Result<Vec<serde_json::Value>, String> {
        let params = serde_json::Value::Array(params.to_vec()).to_string();
        self.link.value(HostCall::Sql(query.to_string(), params))
    }

    fn file(&self, op: FileOp) -> Result<serde_json::Value, String> {
        self.link.value(HostCall::File(op))
    }

    fn run(
        &self,
        argv: &[String],
        timeout_ms: u64,
        _cancel: &AtomicBool,
    ) -> Result<serde_json::Value, String> {
        self.link.value(HostCall::Run {
            argv: argv.to_vec(),
            timeout_ms,
        })
    }

    fn submit(&self, spec: serde_json::Value) -> Result<String, String> {
        self.link.value(HostCall::Submit(spec.to_string()))
    }

    fn submit_many(&self, specs: Vec<serde_json::Value>) -> Result<Vec<String>, String> {
        let list = serde_json::Value::Array(specs).to_string();
        self.link.value(HostCall::SubmitMany(list))
    }

    fn call(
        &self,
        target: CallTarget,
        deadline: Instant,
        _cancel: &AtomicBool,
    ) -> Result<Called, String> {
        let left_ms = deadline
            .saturating_duration_since(Instant::now())
            .as_millis() as u64;
        let call = HostCall::Call {
            script: target.script,
            function: target.function,
            args: serde_json::Value::Array(target.args).to_string(),
            left_ms,
        };
        let (value, s) = match self.link.ask(call)? {
            ToWorker::Called(c) => c?,
            _ => return Err("the instance answered out of turn".into()),
        };
        let value = value.and_then(|v| serde_json::from_str(&v).map_err(|e| e.to_string()));
        Ok(Called {
            value,
            split: Split {
                prepare_us: s[0],
                wait_us: s[1],
                receive_us: s[2],
            },
        })
    }
}
