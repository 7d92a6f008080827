//! A server cut off from the others, for real: three `claro serve` processes,
//! each in a network namespace of its own (10.77.N.1-3), joined by veth pairs
//! to a bridge in a fourth; cutting a server's link is `ip link set ... down`.
//! Needs root and iproute2: where the namespaces cannot be made the test
//! prints why and returns (it cannot check anything then).

mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use claro::proto::StatusView;
use common::BIN;

const SETTLE_S: u64 = 40;
const STATUS_BOUND_MS: u128 = 1_000;
/// A cut-off server refuses a read or a write within this (a CLI process).
const REFUSAL_BOUND_MS: u128 = 2_000;

/// `https_get`'s client: prints the status and milliseconds, then the body.
const HTTPS_GET_PY: &str = r#"
import ssl, sys, time, urllib.request, urllib.error
url, ca, token = sys.argv[1:4]
ctx = ssl.create_default_context(cafile=ca)
req = urllib.request.Request(url, headers={"Authorization": "Bearer " + token})
t = time.monotonic()
try:
    r = urllib.request.urlopen(req, context=ctx, timeout=10)
    code, body = r.status, r.read()
except urllib.error.HTTPError as e:
    code, body = e.code, e.read()
print(code, int((time.monotonic() - t) * 1000))
sys.stdout.write(body.decode("utf-8", "replace"))
"#;

/// Namespaces and links made by one test, removed when it ends.
struct Net {
    tag: String,
    subnet: u8,
    count: usize,
}

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("cannot run ip: {e}"))?;
    match out.status.success() {
        true => Ok(()),
        false => Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )),
    }
}

impl Net {
    fn make(subnet: u8, count: usize) -> Result<Net, String> {
        let net = Net {
            tag: format!("c{}", std::process::id() % 100_000),
            subnet,
            count,
        };
        let hub = net.hub();
        ip(&["netns", "add", &hub])?;
        ip(&["-n", &hub, "link", "add", "br0", "type", "bridge"])?;
        ip(&["-n", &hub, "link", "set", "br0", "up"])?;
        for i in 1..=count {
            net.add_node(i)?;
        }
        Ok(net)
    }

    fn hub(&self) -> String {
        format!("{}hub", self.tag)
    }
    fn ns(&self, i: usize) -> String {
        format!("{}n{i}", self.tag)
    }
    fn hub_link(&self, i: usize) -> String {
        format!("h{i}")
    }
    fn addr(&self, i: usize) -> String {
        format!("10.77.{}.{i}", self.subnet)
    }

    fn add_node(&self, i: usize) -> Result<(), String> {
        let (ns, hub, link) = (self.ns(i), self.hub(), self.hub_link(i));
        ip(&["netns", "add", &ns])?;
        ip(&["-n", &ns, "link", "set", "lo", "up"])?;
        ip(&[
            "-n", &ns, "link", "add", "eth0", "type", "veth", "peer", "name", &link, "netns", &hub,
        ])?;
        ip(&["-n", &hub, "link", "set", &link, "master", "br0"])?;
        ip(&["-n", &hub, "link", "set", &link, "up"])?;
        let cidr = format!("{}/24", self.addr(i));
        ip(&["-n", &ns, "addr", "add", &cidr, "dev", "eth0"])?;
        ip(&["-n", &ns, "link", "set", "eth0", "up"])
    }

    /// Cuts (or heals) server `i`'s only link.
    fn link(&self, i: usize, up: bool) {
        let state = if up { "up" } else { "down" };
        ip(&["-n", &self.hub(), "link", "set", &self.hub_link(i), state]).expect("set link");
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for i in 1..=self.count {
            let _ = ip(&["netns", "del", &self.ns(i)]);
        }
        let _ = ip(&["netns", "del", &self.hub()]);
    }
}

struct Servers {
    net: Net,
    dir: tempfile::TempDir,
    procs: Vec<Option<Child>>,
}

impl Servers {
    fn conf(&self) -> std::path::PathBuf {
        self.dir.path().join("conf/ClaroServers.conf")
    }

    fn start(&mut self, i: usize) {
        let log = std::fs::File::create(self.dir.path().join(format!("srv{i}.log"))).unwrap();
        let child = Command::new("ip")
            .args(["netns", "exec", &self.net.ns(i), BIN, "--config"])
            .arg(self.conf())
            .args(["serve", "--name", &format!("srv{i}")])
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn claro serve");
        self.procs[i - 1] = Some(child);
    }

    /// The CLI run inside server `i`'s namespace, asking that server.
    fn cli(&self, i: usize, args: &[&str]) -> std::process::Output {
        Command::new("ip")
            .args(["netns", "exec", &self.net.ns(i), BIN, "--config"])
            .arg(self.conf())
            .args(args)
            .args(["--server", &format!("srv{i}")])
            .output()
            .expect("run claro")
    }

    /// A GET to server `i`'s HTTPS API from inside its namespace, as a
    /// user's client makes it (Python's urllib, trusting only the cluster
    /// CA, a 10 s timeout): the status, the milliseconds it took and the
    /// body. `None` where python3 cannot be run.
    fn https_get(&self, i: usize, path: &str, token: &str) -> Option<(u16, u128, String)> {
        let url = format!("https://{}:7901{path}", self.net.addr(i));
        let ca = self.dir.path().join("conf/tls/ca.crt");
        let out = Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.net.ns(i),
                "python3",
                "-c",
                HTTPS_GET_PY,
                &url,
            ])
            .arg(ca)
            .arg(token)
            .output()
            .ok()?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let parsed = text.split_once('\n').and_then(|(head, body)| {
            let (code, ms) = head.split_once(' ')?;
            Some((code.parse().ok()?, ms.parse().ok()?, body.to_string()))
        });
        let missing = String::from_utf8_lossy(&out.stderr).contains("No such file");
        assert!(
            parsed.is_some() || missing,
            "GET {path}: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        parsed
    }

    fn status(&self, i: usize) -> Option<StatusView> {
        let out = self.cli(i, &["status", "--json"]);
        out.status
            .success()
            .then(|| serde_json::from_slice(&out.stdout).ok())
            .flatten()
    }

    fn logs(&self) -> String {
        (1..=self.procs.len())
            .map(|i| {
                let log = std::fs::read_to_string(self.dir.path().join(format!("srv{i}.log")))
                    .unwrap_or_default();
                format!("--- srv{i} ---\n{log}")
            })
            .collect()
    }

    fn wait(&self, what: &str, mut cond: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(SETTLE_S);
        while Instant::now() < deadline {
            if cond() {
                return;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        panic!("timed out waiting for {what}\n{}", self.logs());
    }
}

impl Drop for Servers {
    fn drop(&mut self) {
        for c in self.procs.iter_mut().flatten() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn set_up(subnet: u8) -> Option<Servers> {
    let net = match Net::make(subnet, 3) {
        Ok(n) => n,
        Err(e) => {
            common::skip(
                "a partition test",
                "netns",
                &format!("network namespaces cannot be made here: {e}"),
            );
            return None;
        }
    };
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("shared")).unwrap();
    let mut init = Command::new(BIN);
    init.args(["init", "--dir"]).arg(dir.path().join("conf"));
    for i in 1..=3 {
        init.arg("--server").arg(format!("srv{i}={}", net.addr(i)));
    }
    assert!(init.output().unwrap().status.success());
    let mut text = "cluster = \"netns\"\nport = 7900\nshared_root = \"../shared\"\ndata_dir = \"../data\"\n\n[timing]\ndiscovery_ms = 1000\n".to_string();
    for i in 1..=3 {
        text += &format!(
            "\n[[server]]\nname = \"srv{i}\"\naddress = \"{}\"\nslots = 4\nrole = \"server\"\n",
            net.addr(i)
        );
    }
    std::fs::write(dir.path().join("conf/ClaroServers.conf"), text).unwrap();
    Some(Servers {
        net,
        dir,
        procs: vec![None, None, None],
    })
}

/// A viewer's API token, made through srv2 and applied on srv1 (which
/// checks tokens in its own replica); `None` where python3 is missing.
fn viewer_token_known_to_srv1(s: &Servers) -> Option<String> {
    let out = s.cli(2, &["token", "add", "probe", "--role", "viewer", "--json"]);
    assert!(out.status.success(), "{out:?}");
    let made: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let token = made["token"].as_str().unwrap().to_string();
    if s.https_get(1, "/api/v1/status", &token).is_none() {
        common::skip(
            "a partition test's HTTP part",
            "netns-python",
            "python3 cannot be run in the namespace",
        );
        return None;
    }
    s.wait("srv1 to know the token", || {
        s.https_get(1, "/api/v1/status", &token)
            .is_some_and(|(code, _, _)| code == 200)
    });
    Some(token)
}

/// The HTTP API of a cut-off server answers at once and truthfully: the
/// status with its `no quorum` note, and 503 for a read it cannot vouch for.
fn api_on_the_cut_off_server(s: &Servers, token: Option<&str>) {
    let Some(token) = token else { return };
    let (code, ms, body) = s.https_get(1, "/api/v1/status", token).unwrap();
    println!("HTTP status on the cut-off server: {code} in {ms} ms");
    assert_eq!(code, 200, "{body}");
    assert!(ms < STATUS_BOUND_MS, "{ms} ms");
    assert!(
        body.contains("no quorum: reaches 0 of 2 other voters"),
        "{body}"
    );
    for path in [
        "/api/v1/jobs?limit=50",
        "/api/v1/hotfolders",
        "/api/v1/settings",
    ] {
        let (code, ms, body) = s.https_get(1, path, token).unwrap();
        println!("HTTP {path} on the cut-off server: {code} in {ms} ms: {body}");
        assert_eq!(code, 503, "{path}: {body}");
        assert!(ms < STATUS_BOUND_MS, "{path}: {ms} ms");
        assert!(body.contains("no quorum"), "{path}: {body}");
        assert!(!body.contains("--stale"), "the CLI's option: {body}");
    }
}

fn own_line(v: &StatusView, name: &str) -> claro::proto::ServerStatus {
    v.servers.iter().find(|s| s.name == name).unwrap().clone()
}

#[test]
fn a_cut_off_coordinator_reports_electing_and_the_majority_goes_on() {
    let Some(mut s) = set_up(1) else { return };
    s.start(1);
    s.wait("srv1 to coordinate", || {
        s.status(1).and_then(|v| v.coordinator).as_deref() == Some("srv1")
    });
    s.start(2);
    s.start(3);
    s.wait("all synchronized", || {
        s.status(1)
            .is_some_and(|v| v.servers.iter().all(|l| l.synchronized))
    });
    let out = s.cli(2, &["settings", "set", "colour", "before-cut"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    s.wait("srv1 to apply the write", || {
        s.cli(1, &["settings", "get", "colour", "--stale"])
            .stdout
            .starts_with(b"before-cut")
    });
    let token = viewer_token_known_to_srv1(&s);
    s.net.link(1, false);
    s.wait("srv1 to know it has no coordinator", || {
        s.status(1).is_some_and(|v| {
            let me = own_line(&v, "srv1");
            v.coordinator.is_none()
                && me.state == "electing"
                && me.note.is_some_and(|n| n.starts_with("no quorum"))
        })
    });
    let mut times = Vec::new();
    let mut last = None;
    for _ in 0..20 {
        let t = Instant::now();
        last = s.status(1);
        times.push(t.elapsed().as_millis());
    }
    println!("status on the cut-off server: {times:?} ms");
    assert!(times.iter().all(|t| *t < STATUS_BOUND_MS), "{times:?}");
    let v = last.expect("the cut-off server answers");
    let me = own_line(&v, "srv1");
    assert_eq!(me.state, "electing");
    assert_eq!(
        me.note.as_deref(),
        Some("no quorum: reaches 0 of 2 other voters"),
        "{v:?}"
    );
    let out = s.cli(1, &["status"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("no quorum: reaches 0 of 2 other voters"),
        "{text}"
    );

    // Reads on the cut-off server: a default read refuses (it cannot know
    // what it misses) and says how to read anyway; a stale read answers and
    // says how old its replica is.
    // Both refuse at once, naming why, rather than after the 10 s a write
    // or read may wait for an election it could win.
    let t = Instant::now();
    let out = s.cli(1, &["settings", "get", "colour"]);
    let read_ms = t.elapsed().as_millis();
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(
        text.contains("--stale") && text.contains("no quorum"),
        "{text}"
    );
    let t = Instant::now();
    let out = s.cli(1, &["settings", "set", "colour", "cut-off"]);
    let write_ms = t.elapsed().as_millis();
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(
        text.contains("not applied: no coordinator (no quorum"),
        "{text}"
    );
    println!("on the cut-off server: a read refused in {read_ms} ms, a write in {write_ms} ms");
    assert!(read_ms < REFUSAL_BOUND_MS && write_ms < REFUSAL_BOUND_MS);
    let out = s.cli(1, &["settings", "get", "colour", "--stale"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "before-cut");
    let note = String::from_utf8_lossy(&out.stderr);
    assert!(note.contains("it knows no coordinator"), "{note}");

    api_on_the_cut_off_server(&s, token.as_deref());

    // The majority elects a coordinator and takes writes.
    s.wait("srv2 and srv3 to elect a coordinator", || {
        s.status(2)
            .and_then(|v| v.coordinator)
            .is_some_and(|c| c != "srv1")
    });
    let out = s.cli(2, &["settings", "set", "during-cut", "yes"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Healed: srv1 follows again and holds the write.
    s.net.link(1, true);
    s.wait("srv1 to rejoin as a synchronized follower", || {
        s.status(1).is_some_and(|v| {
            let me = own_line(&v, "srv1");
            me.state == "follower" && me.synchronized
        })
    });
    let out = s.cli(1, &["settings", "get", "during-cut"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "yes");
}
