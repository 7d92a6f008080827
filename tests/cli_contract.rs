//! The CLI's output contract (docs/CLI.md), checked on the exact bytes the
//! `claro` binary writes, against real `claro serve` processes on
//! 127.0.80.x-127.0.84.x.

mod common;

use std::io::Write;
use std::process::{Command, Output, Stdio};
use std::time::Instant;

use claro::cli::output::base64;
use common::{Cluster, BIN};

const SETTLE_S: u64 = 30;
const MIB: usize = 1024 * 1024;

/// `claro --config CONF ARGS`, with `stdin` fed when given.
fn claro(c: &Cluster, args: &[&str], stdin: Option<&[u8]>) -> Output {
    let mut child = Command::new(BIN)
        .arg("--config")
        .arg(&c.conf)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run claro");
    if let Some(bytes) = stdin {
        let mut pipe = child.stdin.take().unwrap();
        // The CLI stops reading one byte past the limit: a refused write is fine.
        let _ = pipe.write_all(bytes);
    }
    child.wait_with_output().expect("claro output")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Asserts the exit status, stdout and stderr of one run, exactly.
#[track_caller]
fn expect(out: &Output, status: i32, stdout: &str, stderr: &str) {
    assert_eq!(
        (
            out.status.code(),
            text(&out.stdout).as_str(),
            text(&out.stderr).as_str()
        ),
        (Some(status), stdout, stderr)
    );
}

/// Asserts a failure: the status, nothing on stdout, one `claro: ` line on
/// stderr containing every one of `needles`.
#[track_caller]
fn expect_failure(out: &Output, status: i32, needles: &[&str]) {
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(status), "stderr: {err}");
    assert_eq!(text(&out.stdout), "", "stdout of a failure");
    assert!(err.starts_with("claro: ") && err.ends_with('\n'), "{err}");
    for n in needles {
        assert!(err.contains(n), "`{n}` not in: {err}");
    }
}

/// The tests' timings without digest checkpoints during a test: the
/// applied indexes printed here are exact.
const CONTRACT_TIMING: &str =
    "election_ms = 1000\ndiscovery_ms = 1000\ncheckpoint_ms = 600000\ndrain_ms = 1000\n";

fn one_server(net: u8) -> Cluster {
    let mut c = Cluster::with_timing(net, &[("srv1", "server")], CONTRACT_TIMING);
    c.start_alone("srv1");
    wait_quiet(&c, "srv1");
    c
}

/// Waits until `name`'s applied index has not moved for a second: the
/// entries a new cluster commits by itself (its incarnation record) are in,
/// so that the indexes the test prints follow its own writes only.
fn wait_quiet(c: &Cluster, name: &str) {
    let mut last = None;
    let mut still = 0;
    c.wait(30, "a quiet cluster", || {
        let now = c.digest(name).map(|(i, _)| i);
        still = if now.is_some() && now == last {
            still + 1
        } else {
            0
        };
        last = now;
        still >= 10
    });
}

fn applied_index(c: &Cluster, via: &str) -> u64 {
    c.digest(via).expect("digest").0
}

#[test]
fn settings_get_and_set_in_text_and_json() {
    let c = one_server(80);
    let out = claro(&c, &["settings", "set", "colour", "RED", "--json"], None);
    let n = applied_index(&c, "srv1");
    expect(
        &out,
        0,
        &format!("{{\"key\":\"colour\",\"applied_index\":{n}}}\n"),
        "",
    );
    let out = claro(&c, &["settings", "set", "shape", "circle"], None);
    expect(&out, 0, &format!("applied at index {}\n", n + 1), "");

    let out = claro(&c, &["settings", "get", "colour"], None);
    expect(&out, 0, "RED\n", "");
    let out = claro(&c, &["settings", "get", "colour", "--json"], None);
    expect(&out, 0, "{\"key\":\"colour\",\"value\":\"RED\"}\n", "");

    // A missing key fails in both modes, saying so on stderr only.
    for json in [false, true] {
        let mut args = vec!["settings", "get", "nope"];
        args.extend(json.then_some("--json"));
        expect(&claro(&c, &args, None), 1, "", "claro: no setting `nope`\n");
    }

    // Control characters are escaped in text, plain JSON strings in JSON.
    let out = claro(
        &c,
        &["settings", "set", "line\nbreak", "esc\u{1b}[31m\\"],
        None,
    );
    expect(&out, 0, &format!("applied at index {}\n", n + 2), "");
    let out = claro(&c, &["settings", "get", "line\nbreak"], None);
    expect(&out, 0, "esc\\u{1b}[31m\\\\\n", "");
    let out = claro(&c, &["settings", "get", "line\nbreak", "--json"], None);
    expect(
        &out,
        0,
        "{\"key\":\"line\\nbreak\",\"value\":\"esc\\u001b[31m\\\\\"}\n",
        "",
    );
    let out = claro(&c, &["settings", "get", "no\u{1b}pe"], None);
    expect(&out, 1, "", "claro: no setting `no\\u{1b}pe`\n");
}

#[test]
fn settings_set_from_a_file_or_stdin_up_to_the_value_limit() {
    let c = one_server(81);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("value.bin");
    let path = file.to_str().unwrap();

    // A value that is not UTF-8 comes back as base64 in JSON, \xHH in text.
    std::fs::write(&file, b"\xff\xfe\x00A\n").unwrap();
    let out = claro(&c, &["settings", "set", "bin", "--file", path], None);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let out = claro(&c, &["settings", "get", "bin", "--json"], None);
    expect(
        &out,
        0,
        "{\"key\":\"bin\",\"value_base64\":\"//4AQQo=\"}\n",
        "",
    );
    let out = claro(&c, &["settings", "get", "bin"], None);
    expect(&out, 0, "\\xff\\xfe\\0A\\n\n", "");

    let out = claro(&c, &["settings", "set", "piped", "-"], Some(b"from stdin"));
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(c.get("srv1", "piped").unwrap(), b"from stdin");

    // Exactly the limit is taken, through a file and through stdin; also
    // of bytes over 127 (once: "frame of 2097254 bytes exceeds the limit").
    let high = vec![0xffu8; MIB];
    std::fs::write(&file, &high).unwrap();
    let out = claro(&c, &["settings", "set", "high", "--file", path], None);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(c.get("srv1", "high").unwrap(), high);
    let limit: Vec<u8> = (0..MIB).map(|i| (i % 251) as u8).collect();
    std::fs::write(&file, &limit).unwrap();
    let out = claro(&c, &["settings", "set", "big", "--file", path], None);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(c.get("srv1", "big").unwrap(), limit);
    let out = claro(&c, &["settings", "set", "big2", "-"], Some(&limit));
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(c.get("srv1", "big2").unwrap(), limit);

    // One byte more is bad input: exit 2 naming the limit, nothing sent.
    let over = vec![b'x'; MIB + 1];
    std::fs::write(&file, &over).unwrap();
    let before = applied_index(&c, "srv1");
    let out = claro(&c, &["settings", "set", "over", "--file", path], None);
    expect_failure(
        &out,
        2,
        &[path, "1048576 bytes", "VALUE_BYTES_MAX", "nothing was sent"],
    );
    let out = claro(&c, &["settings", "set", "over", "-"], Some(&over));
    expect_failure(&out, 2, &["stdin", "1048576 bytes", "VALUE_BYTES_MAX"]);
    assert_eq!(
        applied_index(&c, "srv1"),
        before,
        "a refused value changed nothing"
    );
    assert_eq!(c.get("srv1", "over"), None);

    // Exactly one of VALUE, --file, -.
    let out = claro(&c, &["settings", "set", "k", "v", "--file", path], None);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    let out = claro(&c, &["settings", "set", "k"], None);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    let missing = dir.path().join("missing");
    let out = claro(
        &c,
        &["settings", "set", "k", "--file", missing.to_str().unwrap()],
        None,
    );
    expect_failure(&out, 2, &["cannot read the value from", "missing"]);
    assert_eq!(applied_index(&c, "srv1"), before);
}

/// The bytes of the `i`th large setting of the paging test.
fn large_value(i: usize) -> Vec<u8> {
    (0..MIB)
        .map(|j| ((j * 31 + i * 7) % 256) as u8 ^ 0x80)
        .collect()
}

#[test]
fn settings_list_pages_through_more_than_a_frame_of_settings() {
    let c = one_server(82);
    // 3 MiB of settings: more than one frame (2 MiB) holds.
    for i in 0..3 {
        c.set("srv1", &format!("blob{i}"), large_value(i)).unwrap();
    }
    for k in ["k1", "k2", "k3\n"] {
        c.set("srv1", k, k.as_bytes().to_vec()).unwrap();
    }
    // JSON: follow next_after until null.
    let mut after: Option<String> = None;
    let mut pages = Vec::new();
    loop {
        let mut args = vec!["settings", "list", "--json"];
        if let Some(a) = &after {
            args.extend(["--after", a.as_str()]);
        }
        let out = claro(&c, &args, None);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
        let page: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        pages.push(text(&out.stdout));
        after = page["next_after"].as_str().map(str::to_string);
        if after.is_none() {
            break;
        }
        assert!(pages.len() < 10, "paging does not end");
    }
    let item = |i: usize| {
        format!(
            "{{\"key\":\"blob{i}\",\"value_base64\":\"{}\"}}",
            base64(&large_value(i))
        )
    };
    assert_eq!(
        pages,
        [
            format!("{{\"items\":[{}],\"next_after\":\"blob0\"}}\n", item(0)),
            format!("{{\"items\":[{}],\"next_after\":\"blob1\"}}\n", item(1)),
            format!(
                "{{\"items\":[{},{{\"key\":\"k1\",\"value\":\"k1\"}},{{\"key\":\"k2\",\"value\":\"k2\"}},{{\"key\":\"k3\\n\",\"value\":\"k3\\n\"}}],\"next_after\":null}}\n",
                item(2)
            ),
        ]
    );

    // Text, bounded by --limit: the next page's command is on stderr.
    let out = claro(
        &c,
        &["settings", "list", "--after", "blob2", "--limit", "2"],
        None,
    );
    expect(
        &out,
        0,
        "k1 = k1\nk2 = k2\n",
        "more settings follow; next page: claro settings list --limit 2 --after k2\n",
    );
    let out = claro(
        &c,
        &["settings", "list", "--after", "k2", "--limit", "2"],
        None,
    );
    expect(&out, 0, "k3\\n = k3\\n\n", "");
    let out = claro(
        &c,
        &[
            "settings", "list", "--after", "k1", "--limit", "1", "--json",
        ],
        None,
    );
    expect(
        &out,
        0,
        "{\"items\":[{\"key\":\"k2\",\"value\":\"k2\"}],\"next_after\":\"k2\"}\n",
        "",
    );
    for bad in ["0", "10001"] {
        let out = claro(&c, &["settings", "list", "--limit", bad], None);
        expect_failure(&out, 2, &["--limit must be 1..=10000"]);
    }

    // A closed stdout ends the command quietly, whatever it was writing:
    // a 1.4 MB page through `head -c 10`, and outputs whose reader is gone
    // before they are written.
    let dir = tempfile::tempdir().unwrap();
    let (status, err) = (dir.path().join("status"), dir.path().join("stderr"));
    let shell = format!(
        "{{ '{BIN}' --config '{}' settings list --json 2>'{}'; echo $? >'{}'; }} | head -c 10",
        c.conf.display(),
        err.display(),
        status.display()
    );
    let out = Command::new("sh").args(["-c", &shell]).output().unwrap();
    assert_eq!(text(&out.stdout), "{\"items\":[");
    assert_eq!(
        std::fs::read_to_string(&err).unwrap(),
        "",
        "no panic, no message"
    );
    assert_eq!(std::fs::read_to_string(&status).unwrap(), "0\n");
    for args in [
        &["settings", "get", "blob0", "--json"][..],
        &["settings", "get", "k1"],
        &["settings", "list"],
        &["status", "--json"],
        &["status"],
    ] {
        let out = closed_stdout(&c, args);
        expect(&out, 0, "", "");
    }
}

/// Runs claro with a stdout whose reading end is closed before it writes.
fn closed_stdout(c: &Cluster, args: &[&str]) -> Output {
    let mut child = Command::new(BIN)
        .arg("--config")
        .arg(&c.conf)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    child.wait_with_output().unwrap()
}

/// Whether process `pid` has exited (gone, or a zombie not yet reaped).
fn exited(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        // The state follows the parenthesised command name.
        Ok(stat) => stat
            .rsplit(')')
            .next()
            .unwrap()
            .trim_start()
            .starts_with('Z'),
    }
}

/// `claro stop` returned: the process is gone, its port free, its stop recorded.
#[track_caller]
fn assert_gone(c: &mut Cluster, name: &str, i: usize) -> claro::proto::StopRecord {
    let pid = c.pid(name).expect("started by the test");
    assert!(exited(pid), "{name} still runs after `claro stop` returned");
    let addr = format!("{}:7900", common::addr(c.net, i));
    std::net::UdpSocket::bind(&addr).unwrap_or_else(|e| panic!("{addr} still bound: {e}"));
    c.kill9(name); // reaps the exited process
    claro::data_dir::read_record(&c.data_dir(name)).expect("stopped.json")
}

/// `start-order --json`'s entry for `name`.
fn start_order_entry(c: &Cluster, name: &str) -> serde_json::Value {
    let out = claro(c, &["start-order", "--json"], None);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v["order"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == name)
        .unwrap()
        .clone()
}

#[test]
fn stop_waits_for_the_exit_and_start_order_agrees_with_stopped_json() {
    let mut c = Cluster::three_running_with_timing(83, CONTRACT_TIMING);
    c.set("srv1", "v", b"1".to_vec()).unwrap();

    // A follower, stopped through another server.
    let out = claro(&c, &["stop", "srv3", "--server", "srv1", "--json"], None);
    expect(&out, 0, "{\"name\":\"srv3\",\"stopped\":true}\n", "");
    let rec3 = assert_gone(&mut c, "srv3", 2);
    assert!(rec3.left);
    let entry = start_order_entry(&c, "srv3");
    assert_eq!(entry["applied_index"], rec3.applied_index, "{entry}");
    assert_eq!(entry["last_stop"]["applied_index"], rec3.applied_index);

    // The coordinator: it hands its role over first, then leaves.
    c.set("srv1", "v", b"2".to_vec()).unwrap();
    let t = Instant::now();
    let out = claro(&c, &["stop", "srv1", "--server", "srv1"], None);
    expect(&out, 0, "srv1 stopped\n", "");
    let rec1 = assert_gone(&mut c, "srv1", 0);
    println!(
        "stop of the coordinator took {} ms",
        t.elapsed().as_millis()
    );
    assert_eq!(
        start_order_entry(&c, "srv1")["applied_index"],
        rec1.applied_index
    );

    // srv2, alone, keeps its membership; start-order --json in full.
    c.wait(SETTLE_S, "srv2 to coordinate alone", || {
        c.settled("srv2", "srv2", &["srv2"])
    });
    let out = claro(&c, &["stop", "--no-wait", "srv2", "--server", "srv2"], None);
    expect(&out, 0, "srv2 is stopping\n", "");
    let pid = c.pid("srv2").unwrap();
    c.wait(SETTLE_S, "srv2 to exit", || exited(pid));
    let rec2 = assert_gone(&mut c, "srv2", 1);
    assert!(!rec2.left);
    let record = |r: &claro::proto::StopRecord| serde_json::to_string(r).unwrap();
    let out = claro(&c, &["start-order", "--json"], None);
    expect(
        &out,
        0,
        &format!(
            "{{\"order\":[{{\"name\":\"srv2\",\"applied_index\":{},\"source\":\"local data\",\"last_stop\":{}}},{{\"name\":\"srv1\",\"applied_index\":{},\"source\":\"local data\",\"last_stop\":{}}},{{\"name\":\"srv3\",\"applied_index\":{},\"source\":\"local data\",\"last_stop\":{}}}]}}\n",
            rec2.applied_index,
            record(&rec2),
            rec1.applied_index,
            record(&rec1),
            rec3.applied_index,
            record(&rec3),
        ),
        "",
    );
    let out = claro(&c, &["start-order"], None);
    expect(
        &out,
        0,
        &format!(
            "1. srv2  applied index {}  [local data] stopped as a member\n\
             2. srv1  applied index {}  [local data] left the cluster (remaining: {})\n\
             3. srv3  applied index {}  [local data] left the cluster (remaining: {})\n",
            rec2.applied_index,
            rec1.applied_index,
            rec1.remaining.join(", "),
            rec3.applied_index,
            rec3.remaining.join(", "),
        ),
        "",
    );
    // Nothing answers now: stopping is a failure, not a wait.
    let out = claro(&c, &["stop", "srv2", "--server", "srv2"], None);
    expect_failure(&out, 1, &["no instance reachable"]);
}

#[test]
fn status_and_coordinator_transfer_are_plain_objects() {
    let mut c = Cluster::with_timing(
        84,
        &[("srv1", "server"), ("srv2", "server")],
        CONTRACT_TIMING,
    );
    c.start_alone("srv1");
    c.start("srv2");
    c.wait(SETTLE_S, "srv2 to join", || {
        c.settled("srv1", "srv1", &["srv1", "srv2"])
    });
    wait_quiet(&c, "srv1");
    let out = claro(
        &c,
        &[
            "coordinator",
            "transfer",
            "srv2",
            "--json",
            "--server",
            "srv1",
        ],
        None,
    );
    expect(&out, 0, "{\"coordinator\":\"srv2\"}\n", "");
    c.wait(SETTLE_S, "srv1 to follow srv2", || {
        c.settled("srv1", "srv2", &["srv1", "srv2"])
    });
    let out = claro(
        &c,
        &["coordinator", "transfer", "srv1", "--server", "srv1"],
        None,
    );
    expect(&out, 0, "srv1 is now the coordinator\n", "");
    let out = claro(
        &c,
        &["coordinator", "transfer", "srv1", "--server", "srv2"],
        None,
    );
    expect(&out, 0, "srv1 is already the coordinator\n", "");
    let out = claro(&c, &["coordinator", "transfer", "srv9"], None);
    expect_failure(&out, 2, &["no server named `srv9`"]);

    // status --json: StatusView's fields, in its order, on one line.
    c.wait(SETTLE_S, "srv2 to follow srv1", || {
        c.settled("srv2", "srv1", &["srv1", "srv2"])
    });
    let out = claro(&c, &["status", "--json", "--server", "srv2"], None);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let note = serde_json::to_string(&common::setup_note()).unwrap();
    let line = |i: usize, state: &str| {
        let s = &v["servers"][i];
        format!(
            "{{\"name\":\"srv{n}\",\"address\":\"127.0.84.{n}:7900\",\"role\":\"server\",\"state\":\"{state}\",\"connected\":true,\"synchronized\":true,\"applied_index\":{},\"note\":{note},\"heard_ago_ms\":{},\"protocol_version\":{},\"disk_free_percent\":{}}}",
            s["applied_index"],
            s["heard_ago_ms"],
            claro::version::PROTOCOL_VERSION,
            s["disk_free_percent"],
            n = i + 1
        )
    };
    assert_eq!(
        text(&out.stdout),
        format!(
            "{{\"cluster_id\":{},\"coordinator\":\"srv1\",\"term\":{},\"commit_index\":{},\"servers\":[{},{}],\"answered_by\":\"srv1\",\"from_coordinator\":true,\"protocol_level\":{},\"alerts\":{}}}\n",
            v["cluster_id"],
            v["term"],
            v["commit_index"],
            line(0, "coordinator"),
            line(1, "follower"),
            v["protocol_level"],
            // In the struct's field order (a Value sorts its keys).
            serde_json::to_string(
                &serde_json::from_value::<Vec<claro::proto::Alert>>(v["alerts"].clone()).unwrap()
            )
            .unwrap(),
        )
    );
    // A cluster whose voters all speak this protocol rises to its level
    // (8 for a database made before levels, raised within seconds).
    assert!(v["protocol_level"].as_u64() >= Some(8));
    assert!(v["cluster_id"].is_string() && v["term"].as_u64() > Some(0));
    assert_eq!(text(&out.stderr), "");
}

/// Once reproductions, command by command: `--json` was ignored by the
/// commands that change a server's mode, a token or a hotfolder; `cancel
/// --json` and `retry --json` on a finished job exited 0 where text mode
/// exits 1; `jobs --limit 0` and `--limit 5000` exited 1 (bad values are
/// 2); `settings get` with a key over the limit exited 1 "no setting"
/// where `settings set` exits 2 naming the limit. Also every command
/// where it does what it says, in both modes: cancel and retry of a
/// running job, backup and restore (127.0.170.x).
#[test]
fn every_command_keeps_the_json_and_exit_status_contract() {
    let mut c = one_server(170);
    let json_of = |out: &Output| -> serde_json::Value {
        assert_eq!(out.status.code(), Some(0), "{out:?}");
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {out:?}"))
    };
    let out = claro(&c, &["node", "maintenance", "srv1"], None);
    expect(&out, 0, "srv1: maintenance\n", "");
    let out = claro(&c, &["node", "maintenance", "srv1", "--json"], None);
    expect(
        &out,
        0,
        "{\"mode\":\"maintenance\",\"name\":\"srv1\"}\n",
        "",
    );
    let out = claro(&c, &["node", "activate", "srv1", "--json"], None);
    expect(&out, 0, "{\"mode\":\"active\",\"name\":\"srv1\"}\n", "");
    expect_failure(
        &claro(&c, &["node", "maintenance", "srv9", "--json"], None),
        2,
        &["no server named `srv9`"],
    );
    claro(&c, &["token", "add", "t2", "--role", "viewer"], None);
    let out = claro(&c, &["token", "rm", "t2", "--json"], None);
    expect(&out, 0, "{\"removed\":\"t2\"}\n", "");
    let add = ["hotfolder", "add", "hf", "--command", "true", "--json"];
    let inbox = c.dir.path().join("shared").canonicalize().unwrap();
    let inbox = serde_json::to_string(&inbox.join("hf").join("in")).unwrap();
    let out = claro(&c, &add, None);
    let added = format!("{{\"added\":\"hf\",\"in\":{inbox},\"made\":true}}\n");
    expect(&out, 0, &added, "");
    let out = claro(&c, &["hotfolder", "pause", "hf", "--json"], None);
    expect(&out, 0, "{\"name\":\"hf\",\"paused\":true}\n", "");
    let out = claro(&c, &["hotfolder", "resume", "hf", "--json"], None);
    expect(&out, 0, "{\"name\":\"hf\",\"paused\":false}\n", "");
    let out = claro(&c, &["hotfolder", "rm", "hf", "--json"], None);
    expect(&out, 0, "{\"removed\":\"hf\"}\n", "");

    let out = claro(&c, &["submit", "--inline", "1", "--wait"], None);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let id = text(&claro(&c, &["jobs", "--limit", "1", "--json"], None).stdout);
    let id: serde_json::Value = serde_json::from_str(&id).unwrap();
    let id = id[0]["id"].as_str().unwrap().to_string();
    for verb in ["cancel", "retry"] {
        for json in [false, true] {
            let mut args = vec![verb, id.as_str()];
            args.extend(json.then_some("--json"));
            let out = claro(&c, &args, None);
            assert_eq!(out.status.code(), Some(1), "{args:?}: {out:?}");
            assert!(text(&out.stderr).contains("is succeeded"), "{out:?}");
            assert!(out.stdout.is_empty(), "a failure prints no JSON: {out:?}");
        }
    }
    for limit in ["0", "5000"] {
        let out = claro(&c, &["jobs", "--limit", limit], None);
        expect_failure(&out, 2, &["--limit must be 1..=1000"]);
    }
    let long = "k".repeat(2000);
    let out = claro(&c, &["settings", "get", &long], None);
    expect_failure(&out, 2, &["1..=1024 bytes"]);

    // cancel and retry where they apply: a job that sleeps, cancelled while
    // it runs, retried, cancelled and retried again, in both modes.
    let submit = ["submit", "--timeout", "120s", "--inline", "sleep_ms(60000)"];
    let id = text(&claro(&c, &submit, None).stdout)
        .trim_end()
        .to_string();
    let job = |c: &Cluster| json_of(&claro(c, &["job", &id, "--json"], None));
    let running = |c: &Cluster, attempt: u64| {
        c.wait(SETTLE_S, "the job to run", || {
            let v = job(c);
            v["state"] == "running" && v["attempt"] == attempt
        })
    };
    let summary = |v: &serde_json::Value| {
        let outcomes: Vec<&str> = v["attempts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a["outcome"].as_str().unwrap())
            .collect();
        (
            v["id"].as_str().map(str::to_string),
            v["state"].as_str().map(str::to_string),
            v["attempt"].as_u64(),
            outcomes.join(","),
        )
    };
    let cancelled = |attempt: u64, outcomes: &str| {
        (
            Some(id.clone()),
            Some("cancelled".to_string()),
            Some(attempt),
            outcomes.to_string(),
        )
    };
    running(&c, 1);
    let out = claro(&c, &["cancel", &id], None);
    expect(&out, 0, &format!("{id} cancelled\n"), "");
    assert_eq!(summary(&job(&c)), cancelled(1, "cancelled"));
    let out = claro(&c, &["retry", &id], None);
    expect(&out, 0, &format!("{id} retried\n"), "");
    let v = job(&c);
    assert!(
        ["queued", "assigned", "running"].contains(&v["state"].as_str().unwrap()),
        "{v}"
    );
    assert_eq!(v["attempt"], 2, "{v}");
    assert_eq!((&v["finished_at"], &v["result"]), (&NULL, &NULL), "{v}");
    running(&c, 2);
    // JSON: the job as it is now, as `claro job` shows it afterwards.
    let out = claro(&c, &["cancel", &id, "--json"], None);
    let shown = text(&claro(&c, &["job", &id, "--json"], None).stdout);
    expect(&out, 0, &shown, "");
    let v = json_of(&out);
    assert_eq!(summary(&v), cancelled(2, "cancelled,cancelled"));
    assert!(v["finished_at"].is_string(), "{v}");
    let out = claro(&c, &["retry", &id, "--json"], None);
    let v = json_of(&out);
    assert!(
        text(&out.stdout).lines().count() == 1 && out.stderr.is_empty(),
        "{out:?}"
    );
    let mut want: Vec<String> = JOB_KEYS.iter().map(|k| k.to_string()).collect();
    want.push("attempts".into());
    want.sort();
    assert_eq!(keys(&v), want, "{v}");
    assert_eq!(
        (v["id"].as_str(), v["attempt"].as_u64(), &v["finished_at"]),
        (Some(id.as_str()), Some(3), &NULL),
        "{v}"
    );
    assert!(
        ["queued", "assigned", "running"].contains(&v["state"].as_str().unwrap()),
        "{v}"
    );
    assert!(
        summary(&v).3.starts_with("cancelled,cancelled"),
        "the ended attempts stay: {v}"
    );
    running(&c, 3);
    let out = claro(&c, &["cancel", &id], None);
    expect(&out, 0, &format!("{id} cancelled\n"), "");
    assert_eq!(
        summary(&job(&c)),
        cancelled(3, "cancelled,cancelled,cancelled")
    );

    // backup: what the file's own header says, in both modes.
    let cluster_id = json_of(&claro(&c, &["status", "--json"], None))["cluster_id"].clone();
    let index = applied_index(&c, "srv1");
    let file = c.dir.path().join("a.claro-backup");
    let f = file.to_str().unwrap();
    let out = claro(&c, &["backup", f, "--json"], None);
    let header = claro::backup::extract(&file, None).unwrap();
    let created = claro::contract::rfc3339(header.created_ms);
    assert_eq!(
        (Some(header.cluster_id.as_str()), header.applied_index),
        (cluster_id.as_str(), index)
    );
    let backup_json = format!(
        "{{\"applied_index\":{index},\"cluster_id\":{cluster_id},\"created\":\"{created}\",\"file\":\"{f}\",\"server\":\"srv1\",\"sha256\":\"{}\",\"size_bytes\":{}}}\n",
        header.sha256, header.size_bytes
    );
    expect(&out, 0, &backup_json, "");
    let text_file = c.dir.path().join("b.claro-backup");
    let t = text_file.to_str().unwrap();
    let out = claro(&c, &["backup", t], None);
    let h = claro::backup::extract(&text_file, None).unwrap();
    let line = format!(
        "backup of cluster {} at index {} from srv1: {t} ({} bytes of database)\n",
        h.cluster_id, h.applied_index, h.size_bytes
    );
    expect(&out, 0, &line, "");
    expect_failure(
        &claro(&c, &["backup", t, "--json"], None),
        2,
        &["exists; `--force` replaces it"],
    );

    // restore: onto the stopped server's directory, emptied (text), then
    // with --force over it (JSON: the old one is moved aside).
    c.kill9("srv1");
    let restore = ["restore", f, "--name", "srv1"];
    let dir = c.conf.parent().unwrap().join("../data").join("srv1");
    expect_failure(
        &claro(&c, &restore, None),
        1,
        &["holds data already; `--force` moves it aside"],
    );
    std::fs::rename(c.data_dir("srv1"), c.dir.path().join("srv1.old")).unwrap();
    let out = claro(&c, &restore, None);
    let shown = text(&out.stdout);
    let new_id = shown
        .lines()
        .next()
        .and_then(|l| l.rsplit(' ').next())
        .unwrap_or_default()
        .to_string();
    assert!(
        new_id.len() == 32 && new_id.bytes().all(|b| b.is_ascii_hexdigit()),
        "{shown}"
    );
    assert_ne!(Some(new_id.as_str()), cluster_id.as_str());
    expect(
        &out,
        0,
        &format!(
            "srv1: {} now holds the backup of cluster {} at index {index} (made {created} by srv1), as the new cluster {new_id}\n\
             next: `claro serve --name srv1`, then start the other servers with empty data directories (docs/OPERATIONS.md)\n",
            dir.display(),
            header.cluster_id,
        ),
        "",
    );
    let out = claro(&c, &[&restore[..], &["--force", "--json"]].concat(), None);
    let v = json_of(&out);
    let aside = v["moved_aside"].as_str().unwrap_or_default();
    let prefix = format!("{}.before-restore-", dir.display());
    assert!(aside.starts_with(&prefix), "{v}");
    assert!(
        std::path::Path::new(aside).join("state.db").is_file(),
        "{v}"
    );
    assert_ne!(v["cluster_id"].as_str(), Some(new_id.as_str()));
    let want = serde_json::json!({
        "server": "srv1",
        "data_dir": dir.display().to_string(),
        "cluster_id": v["cluster_id"],
        "from_cluster_id": header.cluster_id,
        "applied_index": index,
        "moved_aside": aside,
    });
    expect(
        &out,
        0,
        &format!("{}\n", serde_json::to_string(&want).unwrap()),
        "",
    );
}

const NULL: serde_json::Value = serde_json::Value::Null;

/// `claro submit --many`: JSON lines in, one id a line out, in order, all
/// in one entry; a bad line is exit 2 naming it, and nothing is submitted.
/// A script's `submit([...])` does the same from inside a job
/// (127.0.171.x).
#[test]
fn submit_many_submits_all_or_none() {
    let c = one_server(171);
    let lines = b"{\"script\": \"40 + 2\"}\n\n{\"command\": [\"true\"]}\n{\"script\": \"ARGS[0]\", \"args\": [\"third\"], \"priority\": 3}\n";
    let out = claro(&c, &["submit", "--many", "-"], Some(lines));
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let ids: Vec<String> = text(&out.stdout).lines().map(str::to_string).collect();
    assert_eq!(ids.len(), 3, "{ids:?}");
    assert!(ids.iter().all(|id| id.len() == 20), "{ids:?}");
    for (id, result) in ids.iter().zip(["42", "exit status 0", "third"]) {
        let out = claro(&c, &["wait", id], None);
        expect(&out, 0, &format!("{result}\n"), "");
    }
    let count = |c: &Cluster| {
        let out = claro(c, &["jobs", "--json"], None);
        serde_json::from_slice::<serde_json::Value>(&out.stdout)
            .unwrap()
            .as_array()
            .unwrap()
            .len()
    };
    assert_eq!(count(&c), 3);
    // A bad line: nothing submitted, the line named.
    let bad = b"{\"script\": \"1\"}\n{\"script\": \"let x = ;\"}\n";
    let out = claro(&c, &["submit", "--many", "-"], Some(bad));
    expect_failure(&out, 2, &["-: line 2: script:"]);
    let out = claro(
        &c,
        &["submit", "--many", "-"],
        Some(b"{\"script\": \"1\", \"colour\": 1}\n"),
    );
    expect_failure(&out, 2, &["line 1: unknown field `colour`"]);
    let out = claro(&c, &["submit", "--many", "/no/such/file"], None);
    expect_failure(&out, 2, &["cannot read /no/such/file"]);
    assert_eq!(count(&c), 3, "a refused batch submits nothing");
    // JSON: the ids as an array.
    let out = claro(
        &c,
        &["submit", "--many", "-", "--json"],
        Some(b"{\"script\": \"1\"}\n{\"script\": \"2\"}\n"),
    );
    let ids: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(ids.as_array().map(Vec::len), Some(2), "{ids}");
    // From a script: a list submits many at once, all or none.
    let code =
        "let ids = submit([#{script: \"1\"}, #{script: \"2\"}, #{stored: \"x\"}]); ids.len()";
    let out = claro(&c, &["submit", "--inline", code, "--wait"], None);
    expect(&out, 0, "3\n", "");
    let code = "submit([#{script: \"1\"}, #{script: \"2\", max_attempts: 0}])";
    let out = claro(&c, &["submit", "--inline", code, "--wait"], None);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("job 1"), "{}", text(&out.stderr));
    assert_eq!(
        count(&c),
        5 + 1 + 3 + 1,
        "the refused list submitted nothing"
    );
}

/// Once a reproduction: `claro serve 2>&1 | head -5` ignored SIGTERM once
/// `head` had gone, until kill -9: the log's writer, failing on the broken
/// pipe, reported that on stderr too, which panicked the thread that took
/// the signal. A server whose stderr reader is gone stops gracefully, in
/// about the time it takes otherwise (127.0.172.x).
#[test]
fn a_server_whose_log_reader_is_gone_still_stops_on_sigterm() {
    let c = Cluster::with_timing(172, &[("srv1", "server")], CONTRACT_TIMING);
    let child = Command::new(BIN)
        .arg("--config")
        .arg(&c.conf)
        .args(["serve", "--name", "srv1"])
        .env("RUST_LOG", "info,raft=info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn claro serve");
    // Killed if the test fails before it exits.
    let mut child = KillOnDrop(child);
    drop(child.0.stderr.take()); // the reader goes, as `head` does
    c.wait(SETTLE_S, "the server up", || c.status("srv1").is_some());
    let started = Instant::now();
    unsafe { libc::kill(child.0.id() as i32, libc::SIGTERM) };
    let mut exited = None;
    while exited.is_none() && started.elapsed() < std::time::Duration::from_secs(30) {
        exited = child.0.try_wait().unwrap();
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let status = exited.expect("no exit 30 s after SIGTERM with its log reader gone");
    assert!(status.success(), "{status:?}");
}

/// A child process killed and reaped when dropped.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Once a reproduction: SIGTERM to all three servers at once took 10 s,
/// two times out of three: the last member, handed the coordinator role
/// by a server stopping too, waited the whole leave time for a coordinator
/// other than itself ("could not leave the membership (no coordinator)"),
/// and its stopped.json named as remaining servers that had already left.
/// Now each stops within an election and the drain, exactly one keeps its
/// membership (it holds the newest database), and the servers a record
/// names as remaining are those that did not leave (127.0.173.x).
#[test]
fn stopping_every_server_at_once_is_prompt_and_its_records_agree() {
    for round in 0..3 {
        let mut c = Cluster::three_running_with_timing(173, CONTRACT_TIMING);
        let names = ["srv1", "srv2", "srv3"];
        let started = Instant::now();
        for name in names {
            let pid = c.pid(name).expect("running");
            unsafe { libc::kill(pid as i32, libc::SIGTERM) };
        }
        let deadline = Instant::now() + std::time::Duration::from_secs(SETTLE_S);
        while names.iter().any(|n| c.running(n)) {
            assert!(
                Instant::now() < deadline,
                "round {round}: a server did not stop"
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        let took = started.elapsed();
        let records: Vec<_> = names
            .iter()
            .map(|n| claro::data_dir::read_record(&c.data_dir(n)).expect("stopped.json"))
            .collect();
        let logs = c.all_logs();
        // The bug: waiting for a coordinator other than itself. (A server
        // whose coordinator removed it and exited before answering may
        // still stop as a member, promptly, finding nobody left to ask.)
        assert!(
            !logs.contains("could not leave the membership (no coordinator)"),
            "round {round}: {logs}"
        );
        let kept: Vec<&str> = names
            .iter()
            .zip(&records)
            .filter(|(_, r)| !r.left)
            .map(|(n, _)| *n)
            .collect();
        assert!(
            !kept.is_empty(),
            "round {round}: one keeps its membership: {records:?}"
        );
        // A record names as remaining only servers that were still members
        // when it was written: none that had left before it.
        for (name, r) in names.iter().zip(&records) {
            for other in &r.remaining {
                let i = names.iter().position(|n| n == other).expect("a server");
                let later = !records[i].left || records[i].stopped_at_ms >= r.stopped_at_ms;
                assert!(
                    later,
                    "round {round}: {name} names {other}, which had left: {records:?}"
                );
            }
        }
        assert!(
            took < std::time::Duration::from_secs(9),
            "round {round}: {took:?} to stop all three"
        );
        drop(c);
    }
}

/// Stored scripts and a drain, in both modes: the exact text, the JSON
/// objects, and the exit statuses of docs/CLI.md (127.0.181.x).
#[test]
fn stored_scripts_and_drain_in_text_and_json() {
    let c = one_server(181);
    let file = c.dir.path().join("lib.rhai");
    std::fs::write(&file, "fn twice(x) { x * 2 }").unwrap();
    let f = file.to_str().unwrap();
    expect(
        &claro(&c, &["script", "add", "lib", f], None),
        0,
        "lib version 1\n",
        "",
    );
    let out = claro(
        &c,
        &["script", "add", "a-much-longer-name", f, "--json"],
        None,
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (v["name"].as_str(), v["version"].as_u64()),
        (Some("a-much-longer-name"), Some(1))
    );
    assert!(v["added_at"].as_str().unwrap().ends_with('Z'), "{v}");
    assert!(v.get("code").is_none(), "{v}");
    // list: aligned columns; JSON: name, version, added_at.
    let out = claro(&c, &["script", "list"], None);
    let listed = text(&out.stdout);
    let lines: Vec<&str> = listed.lines().collect();
    assert_eq!(lines.len(), 3, "{listed}");
    let col = |word: &str| lines[0].find(word).unwrap();
    for row in &lines[1..] {
        assert!(row[col("VERSION")..].starts_with("1 "), "{listed}");
        assert!(row[col("SIZE")..].starts_with("21 bytes"), "{listed}");
        assert!(row[col("ADDED")..].starts_with("20"), "{listed}");
    }
    let out = claro(&c, &["script", "list", "--json"], None);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v.as_array().map(Vec::len), Some(2), "{v}");
    // show: the code as stored, a newline added; JSON with `code`.
    expect(
        &claro(&c, &["script", "show", "lib"], None),
        0,
        "fn twice(x) { x * 2 }\n",
        "",
    );
    let out = claro(
        &c,
        &["script", "show", "lib", "--json", "--version", "1"],
        None,
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["code"], "fn twice(x) { x * 2 }");
    expect_failure(
        &claro(&c, &["script", "show", "nosuch"], None),
        1,
        &["no stored script `nosuch`"],
    );
    expect_failure(
        &claro(&c, &["script", "show", "nosuch", "--json"], None),
        1,
        &["nosuch"],
    );
    // rm: text and JSON; a second rm is exit 1 with nothing on stdout.
    expect(
        &claro(&c, &["script", "rm", "lib"], None),
        0,
        "lib: removed\n",
        "",
    );
    let out = claro(&c, &["script", "rm", "a-much-longer-name", "--json"], None);
    expect(&out, 0, "{\"removed\":\"a-much-longer-name\"}\n", "");
    expect_failure(
        &claro(&c, &["script", "rm", "lib", "--json"], None),
        1,
        &["no stored script"],
    );
    // A script that does not compile is bad input.
    std::fs::write(&file, "fn (").unwrap();
    expect_failure(
        &claro(&c, &["script", "add", "bad", f], None),
        2,
        &["lib.rhai: the script does not compile", "(line 1"],
    );
    // drain: maintenance, then nothing runs; both modes.
    let out = claro(&c, &["node", "drain", "srv1"], None);
    expect(&out, 0, "srv1: drained (maintenance, runs nothing)\n", "");
    let out = claro(&c, &["node", "drain", "srv1", "--json"], None);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        v,
        serde_json::json!({"name": "srv1", "mode": "maintenance", "drained": true})
    );
    expect(
        &claro(&c, &["node", "activate", "srv1"], None),
        0,
        "srv1: active\n",
        "",
    );
}

/// The keys of a JSON object, sorted.
fn keys(v: &serde_json::Value) -> Vec<String> {
    let mut k: Vec<String> = v.as_object().expect("an object").keys().cloned().collect();
    k.sort();
    k
}

const JOB_KEYS: [&str; 13] = [
    "attempt",
    "created_at",
    "error",
    "finished_at",
    "id",
    "instance",
    "kind",
    "max_attempts",
    "priority",
    "result",
    "started_at",
    "state",
    "timeout_ms",
];

/// The job commands, tokens, hotfolders, certificates (a revocation of a
/// fingerprint nobody uses), config check and completions in both modes:
/// exact text where it holds no time, the JSON objects' fields, and the
/// exit statuses of docs/CLI.md (127.0.183.x).
#[test]
fn job_token_hotfolder_and_config_commands_in_text_and_json() {
    let c = one_server(183);
    let run = |args: &[&str]| claro(&c, args, None);
    let object = |out: &Output| -> serde_json::Value {
        let text = text(&out.stdout);
        assert!(
            text.ends_with('\n') && text.lines().count() == 1,
            "one line: {text:?}"
        );
        serde_json::from_str(&text).unwrap()
    };
    // submit: the id alone, or the job object.
    let out = run(&["submit", "--inline", "log(\"hi\"); 6 * 7"]);
    let id = text(&out.stdout).trim_end().to_string();
    expect(&out, 0, &format!("{id}\n"), "");
    assert!(
        id.len() == 20 && id.bytes().all(|b| b.is_ascii_hexdigit()),
        "{id}"
    );
    let v = object(&run(&["submit", "--inline", "1", "--json"]));
    // One job's object: the job's fields and its attempts.
    let mut want: Vec<String> = JOB_KEYS.iter().map(|k| k.to_string()).collect();
    want.push("attempts".into());
    want.sort();
    assert_eq!(keys(&v), want, "{v}");
    // wait: the result, or the job with its attempts.
    expect(&run(&["wait", &id]), 0, "42\n", "");
    let v = object(&run(&["wait", &id, "--json"]));
    assert_eq!(
        (v["state"].as_str(), v["result"].as_str()),
        (Some("succeeded"), Some("42"))
    );
    assert_eq!(v["attempts"][0]["outcome"], "succeeded", "{v}");
    // job: field lines in a fixed order; --log adds the log indented.
    let out = run(&["job", &id, "--log"]);
    let shown = text(&out.stdout);
    let fields: Vec<&str> = shown
        .lines()
        .map(|l| l.split(':').next().unwrap())
        .collect();
    assert_eq!(
        fields,
        [
            "id", "kind", "state", "instance", "attempt", "priority", "created", "started",
            "finished", "result", "error", "log", "  hi"
        ],
        "{shown}"
    );
    assert!(
        shown.contains("attempt: 1/3\n") && shown.contains("result: 42\nerror: -\n"),
        "{shown}"
    );
    let v = object(&run(&["job", &id, "--json", "--log"]));
    assert_eq!(v["log"], "hi\n", "{v}");
    expect_failure(
        &run(&["job", "0123456789abcdef0123"]),
        1,
        &["0123456789abcdef0123"],
    );
    expect_failure(&run(&["job", "nonsense"]), 2, &["nonsense"]);
    // jobs: a header, then one line per job; JSON an array of job objects.
    let out = run(&["jobs", "--limit", "1"]);
    let listed = text(&out.stdout);
    let header = "ID                    STATE      KIND       INSTANCE      ATTEMPT  CREATED                   RESULT";
    assert_eq!(listed.lines().next(), Some(header), "{listed}");
    assert_eq!(listed.lines().count(), 2, "{listed}");
    assert!(
        text(&out.stderr).starts_with("more: claro jobs --before "),
        "{out:?}"
    );
    let v = object(&run(&["jobs", "--json"]));
    assert_eq!(v.as_array().map(Vec::len), Some(2), "{v}");
    // run: the log as it comes, then the result; a failed job is exit 1
    // with nothing on stdout in text, and its object with --json.
    let file = c.dir.path().join("s.rhai");
    std::fs::write(&file, "log(\"a\");\n1 + 1\n").unwrap();
    expect(&run(&["run", file.to_str().unwrap()]), 0, "a\n2\n", "");
    // run --json: the job's object with its log, as `job ID --json --log`
    // shows it afterwards; a failed one too, with exit 1.
    let out = run(&["run", file.to_str().unwrap(), "--json"]);
    let v = object(&out);
    let ran = v["id"].as_str().unwrap().to_string();
    let shown = text(&run(&["job", &ran, "--json", "--log"]).stdout);
    expect(&out, 0, &shown, "");
    assert_eq!(
        (v["state"].as_str(), v["result"].as_str(), v["log"].as_str()),
        (Some("succeeded"), Some("2"), Some("a\n")),
        "{v}"
    );
    let mut want: Vec<String> = JOB_KEYS.iter().map(|k| k.to_string()).collect();
    want.extend(["attempts".into(), "log".into()]);
    want.sort();
    assert_eq!(keys(&v), want, "{v}");
    let failing = c.dir.path().join("f.rhai");
    std::fs::write(&failing, "log(\"a\");\nthrow \"bad\"\n").unwrap();
    let failing = failing.to_str().unwrap();
    let out = run(&["run", failing, "--max-attempts", "1", "--json"]);
    let v = object(&out);
    let ran = v["id"].as_str().unwrap().to_string();
    let shown = text(&run(&["job", &ran, "--json", "--log"]).stdout);
    let error = "attempt 1 on srv1: script: bad (line 2, position 1)";
    expect(
        &out,
        1,
        &shown,
        &format!("claro: job {ran} failed: {error}\n"),
    );
    assert_eq!(
        (v["state"].as_str(), v["error"].as_str(), v["log"].as_str()),
        (Some("failed"), Some(error), Some("a\n")),
        "{v}"
    );
    let bad = [
        "submit",
        "--wait",
        "--max-attempts",
        "1",
        "--inline",
        "throw \"bad\"",
    ];
    let out = run(&bad);
    expect_failure(&out, 1, &["failed: attempt 1 on srv1: script: bad"]);
    let out = run(&[&bad[..], &["--json"]].concat());
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert_eq!(object(&out)["state"], "failed");
    // tokens: the token once, then names and roles only.
    let v = object(&run(&["token", "add", "t1", "--role", "viewer", "--json"]));
    assert_eq!(
        (v["name"].as_str(), v["role"].as_str()),
        (Some("t1"), Some("viewer")),
        "{v}"
    );
    assert!(v["token"].as_str().unwrap().starts_with("claro_"), "{v}");
    let out = run(&["token", "list"]);
    let listed = text(&out.stdout);
    let words: Vec<Vec<&str>> = listed
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(words[0], ["NAME", "ROLE", "CREATED"], "{listed}");
    assert_eq!(words[1][..2], ["t1", "viewer"], "{listed}");
    let v = object(&run(&["token", "list", "--json"]));
    assert_eq!(
        (v[0]["name"].as_str(), v[0]["role"].as_str()),
        (Some("t1"), Some("viewer")),
        "{v}"
    );
    assert!(
        v[0].get("token").is_none() && v[0].get("hash").is_none(),
        "{v}"
    );
    expect_failure(
        &run(&["token", "add", "t1", "--role", "viewer"]),
        2,
        &["exists"],
    );
    // Text: the token alone on its first line, then a line naming it.
    let out = run(&["token", "add", "t2", "--role", "operator"]);
    let shown = text(&out.stdout);
    let token = shown.lines().next().unwrap_or_default().to_string();
    assert!(
        token.len() == 70
            && token.starts_with("claro_")
            && token[6..].bytes().all(|b| b.is_ascii_hexdigit()),
        "{shown}"
    );
    expect(
        &out,
        0,
        &format!("{token}\n(token `t2`, role operator: shown only now; send it as `Authorization: Bearer TOKEN`)\n"),
        "",
    );
    expect(&run(&["token", "rm", "t2"]), 0, "t2: removed\n", "");
    let v = object(&run(&["token", "list", "--json"]));
    assert_eq!(v.as_array().map(Vec::len), Some(1), "{v}");
    // A name that does not exist is not found (1), as `script rm`'s; a
    // bad name is bad input (2).
    for json in [false, true] {
        let mut args = vec!["token", "rm", "t2"];
        args.extend(json.then_some("--json"));
        expect(&run(&args), 1, "", "claro: no token named `t2`\n");
    }
    expect_failure(&run(&["token", "rm", "bad name"]), 2, &["token name"]);
    // hotfolders: added (its folders made by the coordinator meanwhile),
    // listed, paused, resumed and removed, in both modes.
    let inbox = c.dir.path().join("shared").canonicalize().unwrap();
    let inbox = inbox.join("hf").join("in");
    let out = run(&["hotfolder", "add", "hf", "--command", "true"]);
    let added = format!("hf: added; drop files into {}\n", inbox.display());
    expect(&out, 0, &added, "");
    let out = run(&["hotfolder", "list"]);
    let listed = text(&out.stdout);
    assert!(
        listed.starts_with("NAME") && listed.lines().nth(1).unwrap().starts_with("hf "),
        "{listed}"
    );
    let v = object(&run(&["hotfolder", "list", "--json"]));
    assert_eq!(v[0]["name"], "hf", "{v}");
    let out = run(&["hotfolder", "set", "hf", "--stable-ms", "500"]);
    expect(&out, 0, "hf: changed\n", "");
    let out = run(&["hotfolder", "set", "hf", "--stable-ms", "600", "--json"]);
    expect(&out, 0, "{\"changed\":\"hf\"}\n", "");
    expect(&run(&["hotfolder", "pause", "hf"]), 0, "hf: paused\n", "");
    assert_eq!(
        object(&run(&["hotfolder", "list", "--json"]))[0]["paused"],
        true
    );
    expect(&run(&["hotfolder", "resume", "hf"]), 0, "hf: resumed\n", "");
    assert_eq!(
        object(&run(&["hotfolder", "list", "--json"]))[0]["paused"],
        false
    );
    let out = run(&["hotfolder", "rm", "hf"]);
    expect(&out, 0, "hf: removed (its folders stay)\n", "");
    assert!(inbox.is_dir(), "its folders stay");
    for json in [false, true] {
        for verb in ["rm", "pause", "resume"] {
            let mut args = vec!["hotfolder", verb, "hf"];
            args.extend(json.then_some("--json"));
            expect(&run(&args), 1, "", "claro: no hotfolder `hf`\n");
        }
    }
    expect(&run(&["hotfolder", "list", "--json"]), 0, "[]\n", "");
    // certificates: the tls folder's, and the cluster's revoked ones.
    let out = run(&["cert", "list"]);
    let listed = text(&out.stdout);
    let names: Vec<&str> = listed
        .lines()
        .map(|l| l.split_whitespace().next().unwrap())
        .collect();
    assert_eq!(names, ["NAME", "ca", "client", "srv1"], "{listed}");
    assert!(
        listed.starts_with("NAME             EXPIRES                    DAYS FINGERPRINT\n"),
        "{listed}"
    );
    let v = object(&run(&["cert", "list", "--json"]));
    assert_eq!(v[2]["name"], "srv1", "{v}");
    assert_eq!(
        v[2]["certificate"]["fingerprint"].as_str().map(str::len),
        Some(64),
        "{v}"
    );
    let out = run(&["cert", "revoked"]);
    assert_eq!(
        text(&out.stdout).split_whitespace().collect::<Vec<_>>(),
        ["FINGERPRINT", "NAME", "REVOKED"]
    );
    expect(&run(&["cert", "revoked", "--json"]), 0, "[]\n", "");
    // revoke: by a fingerprint no certificate of this cluster has (its
    // own client's or srv1's would cut the CLI or the server off), in
    // both modes; once more is `already revoked`, still exit 0.
    let (fp1, fp2) = ("ab".repeat(32), "cd".repeat(32));
    let row = |fp: &str, already: bool| {
        format!("[{{\"already_revoked\":{already},\"fingerprint\":\"{fp}\",\"name\":\"fingerprint\"}}]\n")
    };
    expect(
        &run(&["cert", "revoke", &fp1, "--json"]),
        0,
        &row(&fp1, false),
        "",
    );
    expect(
        &run(&["cert", "revoke", &fp1, "--json"]),
        0,
        &row(&fp1, true),
        "",
    );
    // As `openssl x509 -fingerprint -sha256` prints it: colons, capitals.
    let colons = vec!["CD"; 32].join(":");
    let out = run(&["cert", "revoke", &colons]);
    expect(&out, 0, &format!("fingerprint {fp2}: revoked\n"), "");
    let out = run(&["cert", "revoke", &fp2]);
    expect(
        &out,
        0,
        &format!("fingerprint {fp2}: already revoked\n"),
        "",
    );
    let v = object(&run(&["cert", "revoked", "--json"]));
    let listed: Vec<(&str, &str)> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["fingerprint"].as_str().unwrap(),
                r["name"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        listed,
        [(fp1.as_str(), "fingerprint"), (fp2.as_str(), "fingerprint")],
        "{v}"
    );
    for json in [false, true] {
        let mut args = vec!["cert", "revoke", "client"];
        args.extend(json.then_some("--json"));
        expect_failure(&run(&args), 2, &["lock you out"]);
        let mut args = vec!["cert", "revoke", "srv9"];
        args.extend(json.then_some("--json"));
        expect_failure(&run(&args), 2, &["`srv9` is neither a server"]);
    }
    // status: its first line, and the JSON object's servers.
    let out = run(&["status"]);
    assert!(text(&out.stdout).starts_with("cluster "), "{out:?}");
    assert!(
        text(&out.stdout).contains("coordinator srv1  term "),
        "{out:?}"
    );
    let v = object(&run(&["status", "--json"]));
    assert_eq!(
        (v["coordinator"].as_str(), v["servers"][0]["name"].as_str()),
        (Some("srv1"), Some("srv1"))
    );
    // config check and completions.
    let conf = c.conf.to_str().unwrap().to_string();
    let out = run(&["config", "check"]);
    expect(
        &out,
        0,
        &format!("{conf}: ok (cluster test183, 1 server(s), 0 hotfolder(s))\n"),
        "",
    );
    let out = run(&["config", "check", "--json"]);
    let file = serde_json::to_string(&conf).unwrap();
    let checked = format!(
        "{{\"cluster\":\"test183\",\"file\":{file},\"hotfolders\":[],\"servers\":[\"srv1\"]}}\n"
    );
    expect(&out, 0, &checked, "");
    // Hotfolders by name, whatever the order of their tables.
    let two = c.dir.path().join("conf").join("Two.conf");
    let tables = "\n[hotfolder.zeta]\ncommand = \"true {input}\"\n\n[hotfolder.alpha]\ncommand = \"true {input}\"\n";
    let base = std::fs::read_to_string(&c.conf).unwrap();
    std::fs::write(&two, format!("{base}{tables}")).unwrap();
    let two = two.to_str().unwrap();
    let out = Command::new(BIN)
        .args(["--config", two, "config", "check", "--json"])
        .output()
        .unwrap();
    let checked = format!(
        "{{\"cluster\":\"test183\",\"file\":\"{two}\",\"hotfolders\":[\"alpha\",\"zeta\"],\"servers\":[\"srv1\"]}}\n"
    );
    expect(&out, 0, &checked, "");
    let out = run(&["completions", "bash"]);
    assert!(
        out.status.success() && text(&out.stdout).contains("claro"),
        "{out:?}"
    );
    expect_failure(&run(&["completions", "tcsh"]), 2, &[]);
    // HTTP open on loopback: every start says what it means.
    assert!(
        c.log("srv1").contains(claro::node::OPEN_LOOPBACK_NOTE),
        "{}",
        c.log("srv1")
    );
}

/// `serve --log-format json` writes one JSON object a line; `claro
/// log-level` changes a running instance's filter without a restart, in
/// both modes; a bad filter is exit 2 (127.0.185.x).
#[test]
fn log_lines_in_json_and_a_log_level_changed_at_runtime() {
    let mut c = Cluster::with_timing(185, &[("srv1", "server")], CONTRACT_TIMING);
    c.start_with("srv1", &["--log-format", "json"]);
    c.wait(30, "srv1 to coordinate", || {
        c.settled("srv1", "srv1", &["srv1"])
    });
    let log = c.log("srv1");
    let lines: Vec<&str> = log.lines().filter(|l| !l.is_empty()).collect();
    assert!(!lines.is_empty());
    for l in &lines {
        let v: serde_json::Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"));
        assert!(
            v["level"].is_string() && v["fields"]["message"].is_string(),
            "{l}"
        );
    }
    let changed = |c: &Cluster| c.log("srv1").matches("log filter changed").count();
    // To warn: its own info line is not written.
    expect(
        &claro(&c, &["log-level", "warn"], None),
        0,
        "srv1: warn\n",
        "",
    );
    assert_eq!(changed(&c), 0);
    // Back to info, in JSON: the change is logged, under the new filter.
    let out = claro(&c, &["log-level", "info", "--json"], None);
    expect(&out, 0, "[{\"filter\":\"info\",\"server\":\"srv1\"}]\n", "");
    assert_eq!(changed(&c), 1);
    let out = claro(&c, &["log-level", "info,claro=loud"], None);
    expect_failure(&out, 2, &["`info,claro=loud` is not a log filter"]);
    let out = claro(&c, &["log-level", "debug", "--server", "srv9"], None);
    expect_failure(&out, 2, &["srv9"]);
}
