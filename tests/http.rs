//! The HTTP API over real HTTP against three real instances on 127.0.119.x
//! (port 7901): the same answers from every instance, access by token and
//! role, idempotent submission across instances, the event stream, metrics,
//! the dashboard's headers, and bad input (malformed and unknown JSON,
//! oversized bodies, unknown ids, paths with `..`, slow headers and bodies,
//! repeated wrong tokens, foreign `Host` and `Origin` headers, too many
//! connections from one address).

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::{addr, Cluster, TEST_TIMING};

/// One HTTP/1.1 exchange on a fresh connection: (status, headers, body).
fn http(
    host: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, String, String) {
    let mut s = TcpStream::connect((host, 7901)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    exchange(&mut s, host, method, path, headers, body)
}

fn exchange(
    s: &mut dyn ReadWrite,
    host: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, String, String) {
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req += &format!("{k}: {v}\r\n");
    }
    req += "\r\n";
    if s.write_all(req.as_bytes()).is_err() || s.write_all(body).is_err() {
        return (0, String::new(), String::new());
    }
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (status, head.to_lowercase(), body.to_string())
}

trait ReadWrite: Read + Write {}
impl<T: Read + Write> ReadWrite for T {}

/// Opens the event stream on `s` with `auth`; returns what arrived up to
/// the first `change` event (the headers included).
fn subscribe(s: &mut dyn ReadWrite, host: &str, auth: &str) -> String {
    let req =
        format!("GET /api/v1/events HTTP/1.1\r\nHost: {host}\r\nAuthorization: {auth}\r\n\r\n");
    s.write_all(req.as_bytes()).unwrap();
    let mut seen = String::new();
    let mut buf = [0u8; 4096];
    while !seen.contains("event: change") {
        let n = s.read(&mut buf).unwrap();
        assert!(n > 0, "the event stream closed: {seen}");
        seen += &String::from_utf8_lossy(&buf[..n]);
    }
    seen
}

fn json(body: &str) -> serde_json::Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"))
}

/// Logs in through `host` with `token`: the session cookie (`name=value`)
/// and its CSRF token.
fn log_in(host: &str, token: &str) -> (String, String) {
    let login = format!("{{\"token\": \"{token}\"}}");
    let (status, head, body) = http(host, "POST", "/api/v1/login", &[], login.as_bytes());
    assert_eq!(status, 200, "{body}");
    assert!(
        head.contains("httponly") && head.contains("samesite=strict"),
        "{head}"
    );
    let session = head
        .lines()
        .find_map(|l| l.strip_prefix("set-cookie: "))
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_string();
    let body = json(&body);
    check_answer(&body, "post", "/login", "200");
    (session, body["csrf"].as_str().unwrap().to_string())
}

/// A logout ends its session on the server (a copied cookie no longer
/// works); revoking a token ends every session made with it.
fn sessions_end_with_a_logout_or_their_token(c: &Cluster, host: &str) {
    let desk = token(c, "desk", "viewer");
    let (first, _) = log_in(host, &desk);
    let (second, _) = log_in(host, &desk);
    let get = |session: &str| {
        let (status, _, body) = http(
            host,
            "GET",
            "/api/v1/hotfolders",
            &[("Cookie", session)],
            b"",
        );
        if status == 200 {
            check_answer(&json(&body), "get", "/hotfolders", "200");
        }
        status
    };
    assert_eq!((get(&first), get(&second)), (200, 200));
    let (status, _, body) = http(host, "POST", "/api/v1/logout", &[("Cookie", &second)], b"");
    assert_eq!(status, 200, "a viewer logs out: {body}");
    check_answer(&json(&body), "post", "/logout", "200");
    assert_eq!((get(&first), get(&second)), (200, 401));
    let out = c.cli(&["token", "rm", "desk"]);
    assert!(out.status.success(), "{out:?}");
    // This instance refuses it once it has applied the removal.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (status, _, body) = http(
            host,
            "GET",
            "/api/v1/hotfolders",
            &[("Cookie", &first)],
            b"",
        );
        if status == 401 {
            assert!(body.contains("revoked"), "{body}");
            break;
        }
        assert_eq!(status, 200, "{body}");
        assert!(
            Instant::now() < deadline,
            "a revoked token's session still works"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn token(c: &Cluster, name: &str, role: &str) -> String {
    let out = c.cli(&["token", "add", name, "--role", role, "--json"]);
    assert!(out.status.success(), "{out:?}");
    json(&String::from_utf8_lossy(&out.stdout))["token"]
        .as_str()
        .unwrap()
        .to_string()
}

#[test]
fn the_api_answers_alike_everywhere_and_checks_access_and_input() {
    let mut c = Cluster::three_running_prepared(119, TEST_TIMING, 4, |c| {
        let text = std::fs::read_to_string(&c.conf).unwrap();
        std::fs::write(&c.conf, format!("http_login = true\n{text}")).unwrap();
    });
    let hosts: Vec<String> = (0..3).map(|i| addr(119, i)).collect();
    let viewer = format!("Bearer {}", token(&c, "viewer", "viewer"));
    let ops = format!("Bearer {}", token(&c, "ops", "operator"));
    let out = c.cli(&["token", "add", "bad name", "--role", "viewer"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let out = c.cli(&["token", "add", "x", "--role", "root"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let listed = c.cli(&["token", "list", "--json"]);
    let listed = json(&String::from_utf8_lossy(&listed.stdout));
    assert_eq!(listed.as_array().unwrap().len(), 2);
    assert!(
        !listed.to_string().contains("claro_"),
        "only hashes are kept"
    );

    // No token: 401. The same status from every instance.
    assert_eq!(http(&hosts[0], "GET", "/api/v1/status", &[], b"").0, 401);
    let mut coordinators = Vec::new();
    for h in &hosts {
        let (status, _, body) = http(
            h,
            "GET",
            "/api/v1/status",
            &[("Authorization", &viewer)],
            b"",
        );
        assert_eq!(status, 200, "{body}");
        let v = json(&body);
        check_answer(&v, "get", "/status", "200");
        assert_eq!(v["servers"].as_array().unwrap().len(), 3);
        coordinators.push(v["coordinator"].clone());
    }
    assert!(coordinators
        .iter()
        .all(|c| *c == coordinators[0] && !c.is_null()));

    // Running code is an admin's: an operator may not send a script, only
    // run a stored one (an admin's code) with arguments.
    let file = c.dir.path().join("answer.rhai");
    std::fs::write(&file, "let x = 6 * 7; x").unwrap();
    let out = c.cli(&["script", "add", "answer", file.to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");
    // Whatever the inline code would do: run a process, submit a command,
    // write a setting the API keeps for admins, in one job or a batch.
    let inline: [&[u8]; 4] = [
        br#"{"script": "run([\"id\"])"}"#,
        br#"{"script": "submit(#{command: [\"id\"]})"}"#,
        br#"{"script": "kv_set(\"k\", \"v\")"}"#,
        br#"[{"stored": "answer"}, {"script": "kv_set(\"k\", \"v\")"}]"#,
    ];
    for body in inline {
        let (status, _, answer) = http(
            &hosts[0],
            "POST",
            "/api/v1/jobs",
            &[("Authorization", &ops)],
            body,
        );
        assert_eq!(status, 403, "{answer}");
        assert!(answer.contains("stored"), "{answer}");
    }
    assert_eq!(c.get("srv1", "k"), None, "an operator's inline kv_set ran");
    // A viewer may not submit; an operator may, once per Idempotency-Key.
    let script = br#"{"stored": "answer"}"#;
    let (status, _, _) = http(
        &hosts[0],
        "POST",
        "/api/v1/jobs",
        &[("Authorization", &viewer)],
        script,
    );
    assert_eq!(status, 403);
    let keyed = [
        ("Authorization", ops.as_str()),
        ("Idempotency-Key", "order-17"),
    ];
    let (status, _, body) = http(&hosts[0], "POST", "/api/v1/jobs", &keyed, script);
    assert_eq!(status, 201, "{body}");
    let id = json(&body)["id"].as_str().unwrap().to_string();
    let (status, _, body) = http(&hosts[1], "POST", "/api/v1/jobs", &keyed, script);
    assert_eq!(status, 201, "{body}");
    assert_eq!(
        json(&body)["id"],
        id.as_str(),
        "a retried POST makes no second job"
    );
    c.wait(20, "the job succeeded, seen through srv3", || {
        let (_, _, body) = http(
            &hosts[2],
            "GET",
            &format!("/api/v1/jobs/{id}"),
            &[("Authorization", &viewer)],
            b"",
        );
        json(&body)["state"] == "succeeded"
    });
    let (_, _, body) = http(
        &hosts[2],
        "GET",
        &format!("/api/v1/jobs/{id}"),
        &[("Authorization", &viewer)],
        b"",
    );
    assert_eq!(json(&body)["result"], "42");
    // What the API answers is what its OpenAPI document says: a job, a
    // page of jobs, a batch's ids.
    let (_, _, doc) = http(
        &hosts[0],
        "GET",
        "/api/v1/openapi.json",
        &[("Authorization", &viewer)],
        b"",
    );
    let doc = json(&doc);
    assert!(doc == *document(), "the served document is the source's");
    let job_schema = answer_schema(&doc, "/jobs/{id}", "get", "200");
    conforms(&json(&body), &job_schema, &doc, "job").unwrap();
    let (_, _, page) = http(
        &hosts[1],
        "GET",
        "/api/v1/jobs?limit=5",
        &[("Authorization", &viewer)],
        b"",
    );
    conforms(
        &json(&page),
        &answer_schema(&doc, "/jobs", "get", "200"),
        &doc,
        "page",
    )
    .unwrap();
    assert!(
        conforms(&serde_json::json!({"id": "x"}), &job_schema, &doc, "bad").is_err(),
        "the check can fail"
    );
    // A batch: an array, one entry, all or none; its key holds for the
    // whole batch; an element's fault names its index.
    let batch = br#"[{"stored": "answer"}, {"stored": "answer", "args": ["b"]}]"#;
    let keyed = [
        ("Authorization", ops.as_str()),
        ("Idempotency-Key", "batch-3"),
    ];
    let (status, _, body) = http(&hosts[0], "POST", "/api/v1/jobs", &keyed, batch);
    assert_eq!(status, 201, "{body}");
    let ids = json(&body);
    assert_eq!(ids.as_array().map(Vec::len), Some(2), "{body}");
    conforms(
        &ids,
        &answer_schema(&doc, "/jobs", "post", "201"),
        &doc,
        "batch",
    )
    .unwrap();
    let (status, _, body) = http(&hosts[2], "POST", "/api/v1/jobs", &keyed, batch);
    assert_eq!(
        (status, json(&body)),
        (201, ids.clone()),
        "a retried batch makes no new jobs"
    );
    for (bad, code, needle) in [
        (
            &br#"[{"stored": "answer"}, {"stored": "answer", "max_attempts": 0}]"#[..],
            400,
            "job 1:",
        ),
        (
            &br#"[{"stored": "answer"}, {"script": "1"}]"#[..],
            403,
            "job 1: an operator may not",
        ),
        (
            &br#"[{"stored": "answer", "command": ["id"]}]"#[..],
            400,
            "job 0: the HTTP API runs scripts",
        ),
        (&b"[]"[..], 400, "1 to 4096 jobs"),
    ] {
        let (status, _, body) = http(
            &hosts[1],
            "POST",
            "/api/v1/jobs",
            &[("Authorization", &ops)],
            bad,
        );
        assert_eq!(status, code, "{body}");
        assert!(body.contains(needle), "{needle}: {body}");
    }
    let (_, _, body) = http(
        &hosts[1],
        "GET",
        "/api/v1/jobs?limit=10",
        &[("Authorization", &viewer)],
        b"",
    );
    let listed: Vec<String> = json(&body)["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["id"].as_str().unwrap().to_string())
        .collect();
    let mut want: Vec<String> = ids
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i.as_str().unwrap().to_string())
        .chain([id.clone()])
        .collect();
    want.sort();
    let mut listed = listed;
    listed.sort();
    assert_eq!(
        listed, want,
        "the single job and the batch's, nothing refused"
    );

    // Bad input.
    let auth = [("Authorization", ops.as_str())];
    for (body, want) in [
        (&b"{not json"[..], "JSON"),
        (br#"{"stored": "answer", "colour": 1}"#, "colour"),
        (br#"{}"#, "script"),
    ] {
        let (status, _, text) = http(&hosts[0], "POST", "/api/v1/jobs", &auth, body);
        assert_eq!(status, 400, "{text}");
        assert!(
            json(&text)["error"].as_str().unwrap().contains(want),
            "{text}"
        );
    }
    let big = vec![b' '; 7 * 1024 * 1024];
    let (status, _, text) = http(&hosts[0], "POST", "/api/v1/jobs", &auth, &big);
    assert_eq!(status, 413, "{text}");
    assert!(text.contains("6356992"), "{text}");
    // The login's body is read before anyone is known: a token's worth.
    let (status, _, text) = http(&hosts[0], "POST", "/api/v1/login", &[], &big[..8192]);
    assert_eq!(status, 413, "{text}");
    assert_eq!(
        http(
            &hosts[0],
            "GET",
            "/api/v1/jobs/00000000000000000000",
            &auth,
            b""
        )
        .0,
        404
    );
    assert_eq!(
        http(&hosts[0], "GET", "/api/v1/jobs?state=lost", &auth, b"").0,
        400
    );
    assert_eq!(http(&hosts[0], "GET", "/../../etc/passwd", &[], b"").0, 404);
    assert_eq!(
        http(&hosts[0], "GET", "/app.js/../../Cargo.toml", &[], b"").0,
        404
    );

    // The dashboard: served without login (the API asks for it), with a CSP
    // that forbids inline script, and no inline script in the page.
    let (status, head, page) = http(&hosts[2], "GET", "/", &[], b"");
    assert_eq!(status, 200);
    assert!(
        head.contains("content-security-policy: default-src 'self'; script-src 'self'"),
        "{head}"
    );
    assert!(page.contains("<script src=\"/app.js\" defer></script>") && !page.contains("<script>"));

    // Dashboard login: a session cookie, and a state change needs its CSRF token.
    let (session, csrf) = log_in(&hosts[1], ops.trim_start_matches("Bearer "));
    let cookie = [("Cookie", session.as_str())];
    let (status, _, body) = http(&hosts[1], "GET", "/api/v1/hotfolders", &cookie, b"");
    assert_eq!(status, 200, "{body}");
    check_answer(&json(&body), "get", "/hotfolders", "200");
    let (status, _, body) = http(&hosts[1], "GET", "/api/v1/session", &cookie, b"");
    assert_eq!(status, 200, "{body}");
    let who = json(&body);
    check_answer(&who, "get", "/session", "200");
    assert_eq!(
        (&who["role"], &who["csrf"], &who["login_required"]),
        (
            &serde_json::json!("operator"),
            &serde_json::json!(csrf),
            &serde_json::json!(true)
        ),
        "{who}"
    );
    let cancel = format!("/api/v1/jobs/{id}/cancel");
    assert_eq!(
        http(&hosts[1], "POST", &cancel, &cookie, b"").0,
        403,
        "no CSRF token"
    );
    let with_csrf = [
        ("Cookie", session.as_str()),
        ("X-CSRF-Token", csrf.as_str()),
    ];
    let (status, _, body) = http(&hosts[1], "POST", &cancel, &with_csrf, b"");
    assert_eq!(status, 200, "{body}");
    check_answer(&json(&body), "post", "/jobs/{id}/{action}", "200");
    sessions_end_with_a_logout_or_their_token(&c, &hosts[1]);

    // Metrics.
    let (status, _, text) = http(
        &hosts[2],
        "GET",
        "/metrics",
        &[("Authorization", &viewer)],
        b"",
    );
    assert_eq!(status, 200);
    assert!(
        text.contains("claro_raft_term ")
            && text.contains("claro_jobs{state=\"succeeded\",kind=\"script\"} 3"),
        "{text}"
    );
    for family in [
        "claro_queue_depth 0\n",
        "claro_peers_connected 2\n",
        "claro_server_slots{server=\"srv1\"} 4\n",
        "claro_server_running_jobs{server=\"srv3\"} ",
        "claro_log_persist_us_bucket{le=\"+Inf\"} ",
        "claro_apply_us_count ",
        "claro_job_duration_ms_bucket{le=\"1000\"} ",
        "claro_coordinator_changes_total 0\n",
        "claro_build_info{version=\"",
        "claro_jobs_finished_total{outcome=\"failed\"} 0\n",
        "process_cpu_seconds_total ",
        "process_open_fds ",
    ] {
        assert!(text.contains(family), "{family} missing: {text}");
    }
    let rss: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("process_resident_memory_bytes "))
        .and_then(|v| v.parse().ok())
        .expect("process_resident_memory_bytes");
    assert!(rss > 1_000_000, "an instance's RSS is megabytes: {rss}");
    // The sampler counts the ends a few seconds late: the three jobs that
    // succeeded are counted once it has seen them.
    c.wait(20, "the finished jobs counted", || {
        let (_, _, text) = http(
            &hosts[2],
            "GET",
            "/metrics",
            &[("Authorization", &viewer)],
            b"",
        );
        text.contains("claro_jobs_finished_total{outcome=\"succeeded\"} 3\n")
    });
    // The same sampler's history, as the document says it.
    let (status, _, body) = http(
        &hosts[2],
        "GET",
        "/api/v1/stats",
        &[("Authorization", &viewer)],
        b"",
    );
    assert_eq!(status, 200, "{body}");
    let stats = json(&body);
    assert!(
        stats["samples"][0]["servers"]["srv1"].is_object(),
        "{stats}"
    );
    check_answer(&stats, "get", "/stats", "200");
    // A loopback Prometheus needs no token, even with logins required.
    assert_eq!(http(&hosts[2], "GET", "/metrics", &[], b"").0, 200);

    events_follow_a_submission_elsewhere(&hosts, &viewer, &ops);
    slow_headers_are_cut_off(&hosts[0]);
    a_page_of_another_site_is_refused(&hosts[0], &ops);
    a_slow_body_is_cut_off(&hosts[0]);
    one_address_holds_a_bounded_number_of_connections(&hosts[0], &viewer);

    idle_event_streams_are_bounded(&hosts[1], &viewer);
    let alive = a_key_holds_across_a_coordinator_kill(&mut c, &hosts, &ops);
    // Wrong tokens: 401, then 429 for that address.
    let wrong = format!("Bearer claro_{}", "0".repeat(64));
    let mut statuses = Vec::new();
    for _ in 0..12 {
        statuses.push(
            http(
                &alive,
                "GET",
                "/api/v1/status",
                &[("Authorization", &wrong)],
                b"",
            )
            .0,
        );
    }
    assert_eq!(statuses[0], 401);
    assert_eq!(*statuses.last().unwrap(), 429, "{statuses:?}");
    // A known token from that address is never refused: one guesser behind
    // a proxy or NAT must not lock everyone out.
    let (status, _, body) = http(
        &alive,
        "GET",
        "/api/v1/status",
        &[("Authorization", &viewer)],
        b"",
    );
    assert_eq!(status, 200, "a valid token after ten bad ones: {body}");
    // Secrets never reach a log: neither the tokens used (good and bad)
    // nor any private key's body.
    let logs = c.all_logs();
    // With http_login = true, no warning of an open API.
    assert!(!logs.contains(claro::node::OPEN_LOOPBACK_NOTE));
    for secret in [&viewer, &ops, &wrong] {
        let bare = secret.trim_start_matches("Bearer ");
        assert!(!logs.contains(bare), "a token is in the logs");
    }
    let tls = c.conf.parent().unwrap().join("tls");
    for key in std::fs::read_dir(&tls).unwrap().flatten() {
        let pem = std::fs::read_to_string(key.path()).unwrap_or_default();
        let Some(body) = pem
            .lines()
            .find(|l| l.len() > 40 && !l.starts_with("-----"))
        else {
            continue;
        };
        if key.path().extension().is_some_and(|e| e == "key") {
            assert!(!logs.contains(body), "{:?} is in the logs", key.path());
        }
    }
    c.assert_nobody_crashed();
}

/// A submission through srv1 shows as a `change` event on srv2's stream.
fn events_follow_a_submission_elsewhere(hosts: &[String], viewer: &str, ops: &str) {
    let mut s = TcpStream::connect((hosts[1].as_str(), 7901)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    // The first event tells the current index; then one after the submission.
    let mut seen = subscribe(&mut s, &hosts[1], viewer);
    let mut buf = [0u8; 4096];
    assert!(
        seen.to_lowercase()
            .contains("content-type: text/event-stream"),
        "{seen}"
    );
    let before = seen.matches("event: change").count();
    let (status, _, _) = http(
        &hosts[0],
        "POST",
        "/api/v1/jobs",
        &[("Authorization", ops)],
        br#"{"stored": "answer"}"#,
    );
    assert_eq!(status, 201);
    let started = Instant::now();
    while seen.matches("event: change").count() == before {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "no event after the submission: {seen}"
        );
        let n = s.read(&mut buf).unwrap();
        seen += &String::from_utf8_lossy(&buf[..n]);
    }
}

/// A client sending its headers one byte at a time is cut off.
fn slow_headers_are_cut_off(host: &str) {
    let mut s = TcpStream::connect((host, 7901)).unwrap();
    let started = Instant::now();
    let mut closed = false;
    for b in b"GET / HTTP/1.1\r\nHost: slow\r\nX-Slow: "
        .iter()
        .chain([b'a'; 100].iter())
    {
        if s.write_all(&[*b]).is_err() {
            closed = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(300));
        if started.elapsed() > Duration::from_secs(25) {
            break;
        }
    }
    let elapsed = started.elapsed();
    if !closed {
        s.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
        let mut buf = [0u8; 64];
        closed = matches!(s.read(&mut buf), Ok(0) | Err(_));
    }
    assert!(closed, "still open after {elapsed:?}");
    assert!(
        elapsed < Duration::from_secs(20),
        "cut off only after {elapsed:?}"
    );
}

/// HTTPS with the server's certificate from the cluster CA, trusted through
/// `conf/tls/ca.crt` and checked against the server's address.
struct Https {
    config: std::sync::Arc<rustls::ClientConfig>,
}

impl Https {
    fn new(c: &Cluster) -> Https {
        use rustls_pki_types::pem::PemObject;
        let ca = c.conf.parent().unwrap().join("tls").join("ca.crt");
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(rustls_pki_types::CertificateDer::from_pem_file(&ca).unwrap())
            .unwrap();
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        Https {
            config: std::sync::Arc::new(config),
        }
    }

    fn connect(&self, host: &str) -> rustls::StreamOwned<rustls::ClientConnection, TcpStream> {
        let name = rustls_pki_types::ServerName::try_from(host.to_string()).unwrap();
        let conn = rustls::ClientConnection::new(self.config.clone(), name).unwrap();
        let tcp = TcpStream::connect((host, 7901)).unwrap();
        tcp.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        rustls::StreamOwned::new(conn, tcp)
    }

    fn call(
        &self,
        host: &str,
        method: &str,
        path: &str,
        auth: &str,
        body: &str,
    ) -> (u16, serde_json::Value) {
        let mut s = self.connect(host);
        let (status, _, text) = exchange(
            &mut s,
            host,
            method,
            path,
            &[
                ("Authorization", auth),
                ("Content-Type", "application/json"),
            ],
            body.as_bytes(),
        );
        let value = serde_json::from_str(&text).unwrap_or(serde_json::Value::Null);
        (status, value)
    }
}

/// The admin API, the job events and HTTPS, against three instances on
/// 127.0.122.x serving HTTPS (`https = true`) with logins required.
#[test]
fn admin_endpoints_job_events_and_https() {
    let mut c = Cluster::three_running_prepared(122, TEST_TIMING, 4, |c| {
        let text = std::fs::read_to_string(&c.conf).unwrap();
        std::fs::write(&c.conf, format!("http_login = true\nhttps = true\n{text}")).unwrap();
    });
    let hosts: Vec<String> = (0..3).map(|i| addr(122, i)).collect();
    let tls = Https::new(&c);
    let admin = format!("Bearer {}", token(&c, "admin", "admin"));
    // Plain HTTP gets no HTTP answer from an HTTPS port.
    assert_eq!(http(&hosts[0], "GET", "/api/v1/status", &[], b"").0, 0);
    // An admin makes an operator's token over the API; it works elsewhere.
    let (status, made) = tls.call(
        &hosts[0],
        "POST",
        "/api/v1/tokens",
        &admin,
        r#"{"name":"ops","role":"operator"}"#,
    );
    assert_eq!(status, 201, "{made}");
    check_answer(&made, "post", "/tokens", "201");
    let ops = format!("Bearer {}", made["token"].as_str().unwrap());
    let (status, _) = tls.call(
        &hosts[0],
        "POST",
        "/api/v1/tokens",
        &admin,
        r#"{"name":"ops","role":"viewer"}"#,
    );
    assert_eq!(status, 409, "a second token named ops");
    assert_eq!(
        tls.call(&hosts[1], "GET", "/api/v1/status", &ops, "").0,
        200
    );
    assert_eq!(
        tls.call(&hosts[1], "GET", "/api/v1/tokens", &ops, "").0,
        403
    );
    let (status, list) = tls.call(&hosts[2], "GET", "/api/v1/tokens", &admin, "");
    assert_eq!(status, 200);
    assert_eq!(list.as_array().unwrap().len(), 2);
    assert!(!list.to_string().contains("claro_"), "{list}");
    check_answer(&list, "get", "/tokens", "200");
    // A token made and revoked.
    let brief = r#"{"name":"brief","role":"viewer"}"#;
    assert_eq!(
        tls.call(&hosts[0], "POST", "/api/v1/tokens", &admin, brief)
            .0,
        201
    );
    let (status, gone) = tls.call(&hosts[1], "DELETE", "/api/v1/tokens/brief", &admin, "");
    assert_eq!(
        (status, &gone["removed"]),
        (200, &serde_json::json!("brief"))
    );
    check_answer(&gone, "delete", "/tokens/{name}", "200");
    admin_changes_servers_scripts_and_settings(&tls, &hosts, &admin, &ops);
    // The CLI too: a value at the limit through a follower, read through
    // the third server.
    let file = c.dir.path().join("mebibyte");
    std::fs::write(&file, vec![0xffu8; 1024 * 1024]).unwrap();
    let set = [
        "settings",
        "set",
        "cli-big",
        "--file",
        file.to_str().unwrap(),
    ];
    let out = c.cli(&[&set[..], &["--server", "srv2"]].concat());
    assert!(out.status.success(), "{out:?}");
    assert_eq!(c.get("srv3", "cli-big"), Some(vec![0xffu8; 1024 * 1024]));
    job_events_follow_a_job_to_its_end(&tls, &hosts, &ops);
    // The session cookie is Secure under HTTPS.
    let admin_token = admin.trim_start_matches("Bearer ");
    let mut s = tls.connect(&hosts[0]);
    let body = format!("{{\"token\":\"{admin_token}\"}}");
    let (status, head, _) = exchange(
        &mut s,
        &hosts[0],
        "POST",
        "/api/v1/login",
        &[],
        body.as_bytes(),
    );
    assert_eq!(status, 200);
    assert!(
        head.contains("secure") && head.contains("httponly"),
        "{head}"
    );
    let (status, doc) = tls.call(&hosts[1], "GET", "/api/v1/openapi.json", &ops, "");
    assert_eq!(status, 200);
    assert!(doc["paths"]["/jobs"]["post"].is_object(), "{doc}");
    let (status, stats) = tls.call(&hosts[1], "GET", "/api/v1/stats", &ops, "");
    assert_eq!((status, stats["interval_s"].as_u64()), (200, Some(10)));
    check_answer(&stats, "get", "/stats", "200");
    // Jobs by state, as this replica counts them: the job followed above
    // succeeded (the replica may apply its end a moment later).
    c.wait(10, "the stats to count the succeeded job", || {
        let (_, stats) = tls.call(&hosts[1], "GET", "/api/v1/stats", &ops, "");
        check_answer(&stats, "get", "/stats", "200");
        stats["jobs"]["succeeded"].as_u64().unwrap_or(0) >= 1
    });
    c.assert_nobody_crashed();
}

fn admin_changes_servers_scripts_and_settings(
    tls: &Https,
    hosts: &[String],
    admin: &str,
    ops: &str,
) {
    let path = "/api/v1/servers/srv2/maintenance";
    assert_eq!(tls.call(&hosts[0], "POST", path, ops, "").0, 403);
    let (status, v) = tls.call(&hosts[0], "POST", path, admin, "");
    assert_eq!(
        (status, v["mode"].as_str()),
        (200, Some("maintenance")),
        "{v}"
    );
    check_answer(&v, "post", "/servers/{name}/{action}", "200");
    let (_, servers) = tls.call(&hosts[2], "GET", "/api/v1/servers", ops, "");
    check_answer(&servers, "get", "/servers", "200");
    let srv2 = servers
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "srv2")
        .unwrap()
        .clone();
    assert_eq!(srv2["mode"], "maintenance", "{servers}");
    assert_eq!(srv2["slots"], 4);
    let (status, v) = tls.call(
        &hosts[0],
        "POST",
        "/api/v1/servers/srv2/activate",
        admin,
        "",
    );
    assert_eq!((status, v["mode"].as_str()), (200, Some("active")), "{v}");
    check_answer(&v, "post", "/servers/{name}/{action}", "200");
    assert_eq!(
        tls.call(
            &hosts[0],
            "POST",
            "/api/v1/servers/nobody/activate",
            admin,
            ""
        )
        .0,
        404
    );
    // A script with a syntax error is refused, naming it; a good one is stored.
    let bad = r#"{"name":"broken","code":"let x = ;"}"#;
    let (status, v) = tls.call(&hosts[1], "POST", "/api/v1/scripts", admin, bad);
    assert_eq!(status, 400, "{v}");
    assert!(v["error"].as_str().unwrap().contains("broken"), "{v}");
    let good = r#"{"name":"answer","code":"40 + 2"}"#;
    assert_eq!(
        tls.call(&hosts[1], "POST", "/api/v1/scripts", ops, good).0,
        403
    );
    let (status, v) = tls.call(&hosts[1], "POST", "/api/v1/scripts", admin, good);
    assert_eq!((status, v["version"].as_u64()), (201, Some(1)), "{v}");
    check_answer(&v, "post", "/scripts", "201");
    let (status, v) = tls.call(&hosts[2], "GET", "/api/v1/scripts/answer", ops, "");
    assert_eq!((status, v["code"].as_str()), (200, Some("40 + 2")));
    check_answer(&v, "get", "/scripts/{name}", "200");
    let (status, v) = tls.call(&hosts[2], "GET", "/api/v1/scripts", ops, "");
    assert_eq!(status, 200, "{v}");
    check_answer(&v, "get", "/scripts", "200");
    assert_eq!(
        tls.call(&hosts[2], "GET", "/api/v1/scripts/nothing", ops, "")
            .0,
        404
    );
    // Settings: set through one instance, read through another.
    let put = r#"{"value":"RED"}"#;
    let (status, v) = tls.call(&hosts[0], "PUT", "/api/v1/settings/colour", admin, put);
    assert_eq!((status, &v["key"]), (200, &serde_json::json!("colour")));
    check_answer(&v, "put", "/settings/{key}", "200");
    let (_, all) = tls.call(&hosts[2], "GET", "/api/v1/settings", ops, "");
    check_answer(&all, "get", "/settings", "200");
    assert!(
        all.as_array()
            .unwrap()
            .iter()
            .any(|s| s["key"] == "colour" && s["value"] == "RED"),
        "{all}"
    );
    assert_eq!(
        tls.call(
            &hosts[0],
            "PUT",
            "/api/v1/settings/colour",
            admin,
            r#"{"value":1}"#
        )
        .0,
        400
    );
    let (status, v) = tls.call(&hosts[0], "DELETE", "/api/v1/settings/colour", admin, "");
    assert_eq!((status, &v["removed"]), (200, &serde_json::json!("colour")));
    check_answer(&v, "delete", "/settings/{key}", "200");
    // A key that is not there is 404, as for the other resources.
    let (status, v) = tls.call(&hosts[0], "DELETE", "/api/v1/settings/colour", admin, "");
    assert_eq!(status, 404, "{v}");
    // A value at the limit (1 MiB) through a follower (srv1 coordinates),
    // read back through the third; one byte more is refused at once,
    // naming the limit.
    let value = "v".repeat(1024 * 1024);
    let put = serde_json::json!({ "value": value }).to_string();
    let started = std::time::Instant::now();
    let (status, v) = tls.call(&hosts[1], "PUT", "/api/v1/settings/big", admin, &put);
    assert_eq!(status, 200, "{v}");
    check_answer(&v, "put", "/settings/{key}", "200");
    let (status, got) = tls.call(&hosts[2], "GET", "/api/v1/settings/big", ops, "");
    assert_eq!(
        (status, got["value"].as_str().map(str::len)),
        (200, Some(1024 * 1024))
    );
    check_answer(&got, "get", "/settings/{key}", "200");
    // The same size of control characters, each escaped as \u0001 (6 MiB
    // of JSON), fits too.
    let escaped = serde_json::json!({ "value": "\u{1}".repeat(1024 * 1024) }).to_string();
    assert!(escaped.len() > 6 * 1024 * 1024);
    let (status, v) = tls.call(
        &hosts[1],
        "PUT",
        "/api/v1/settings/escaped",
        admin,
        &escaped,
    );
    assert_eq!(status, 200, "{v}");
    let over = serde_json::json!({ "value": format!("{value}v") }).to_string();
    let (status, v) = tls.call(&hosts[1], "PUT", "/api/v1/settings/big", admin, &over);
    assert_eq!(status, 400, "{v}");
    assert!(
        v["error"]
            .as_str()
            .unwrap()
            .contains("the limit is 1048576"),
        "{v}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    // Nine values of 1 MiB are more than one answer holds (about 8 MiB):
    // the list stops and names the key to go on after.
    for i in 1..=8 {
        let path = format!("/api/v1/settings/big{i}");
        assert_eq!(tls.call(&hosts[0], "PUT", &path, admin, &put).0, 200);
    }
    let list = |path: &str| {
        let mut s = tls.connect(&hosts[2]);
        let (status, head, body) = exchange(
            &mut s,
            &hosts[2],
            "GET",
            path,
            &[("Authorization", ops)],
            b"",
        );
        assert_eq!(status, 200, "{head}");
        let next = head
            .lines()
            .find_map(|l| l.strip_prefix("x-next-after: "))
            .map(str::to_string);
        let page = json(&body);
        check_answer(&page, "get", "/settings", "200");
        let keys: Vec<String> = page
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["key"].as_str().unwrap().to_string())
            .collect();
        (keys, next)
    };
    let (first, next) = list("/api/v1/settings");
    let next = next.expect("more than one answer's worth");
    assert_eq!(first.last(), Some(&next), "{first:?}");
    let (rest, none) = list(&format!("/api/v1/settings?after={next}"));
    assert_eq!(none, None);
    let all: Vec<String> = first.iter().chain(&rest).cloned().collect();
    let bigs = all.iter().filter(|k| k.starts_with("big")).count();
    assert_eq!(bigs, 9, "each once: {all:?}");
    // Hotfolders: an unknown field is refused, an unknown one is 404.
    let unknown = r#"{"name":"h1","action":{"command":{"argv":["true"]}},"colour":"red"}"#;
    assert_eq!(
        tls.call(&hosts[0], "POST", "/api/v1/hotfolders", admin, unknown)
            .0,
        400
    );
    assert_eq!(
        tls.call(&hosts[0], "GET", "/api/v1/hotfolders/nothing", ops, "")
            .0,
        404
    );
    // Added as the CLI adds one (a template, retries), and edited: by an
    // admin only, never renamed, with the same checks.
    let add = r#"{"name":"h2","template":"cp {input} {output_dir}","retries":1}"#;
    let (code, v) = tls.call(&hosts[0], "POST", "/api/v1/hotfolders", admin, add);
    assert_eq!(code, 201, "{v}");
    check_answer(&v, "post", "/hotfolders", "201");
    assert_eq!(v["definition"]["max_attempts"], 2, "{v}");
    assert_eq!(v["template"], "cp '{input}' '{output_dir}'", "{v}");
    let edit = r#"{"name":"h2","template":"cp {input} {output_dir}","retries":3}"#;
    let path = "/api/v1/hotfolders/h2";
    assert_eq!(tls.call(&hosts[0], "PUT", path, ops, edit).0, 403);
    let (code, v) = tls.call(&hosts[0], "PUT", path, admin, edit);
    assert_eq!(
        (code, &v["definition"]["max_attempts"]),
        (200, &serde_json::json!(4)),
        "{v}"
    );
    check_answer(&v, "put", "/hotfolders/{name}", "200");
    let renamed = r#"{"name":"h3","template":"true"}"#;
    assert_eq!(tls.call(&hosts[0], "PUT", path, admin, renamed).0, 400);
    let shell = r#"{"name":"h2","template":"sh -c 'cat {input}'"}"#;
    let (code, v) = tls.call(&hosts[0], "PUT", path, admin, shell);
    assert!(
        code == 400 && v.to_string().contains("allow_shell"),
        "{code} {v}"
    );
    let both = r#"{"name":"h2","template":"true","script":"1"}"#;
    assert_eq!(tls.call(&hosts[0], "PUT", path, admin, both).0, 400);
    let missing = "/api/v1/hotfolders/nothing";
    assert_eq!(tls.call(&hosts[0], "PUT", missing, admin, renamed).0, 404);
    // Read, paused and resumed; one with a script added and removed.
    let (code, v) = tls.call(&hosts[2], "GET", path, ops, "");
    assert_eq!((code, &v["name"]), (200, &serde_json::json!("h2")), "{v}");
    check_answer(&v, "get", "/hotfolders/{name}", "200");
    for (verb, paused) in [("pause", true), ("resume", false)] {
        let (code, v) = tls.call(&hosts[1], "POST", &format!("{path}/{verb}"), ops, "");
        assert_eq!(code, 200, "{v}");
        check_answer(&v, "post", "/hotfolders/{name}/{action}", "200");
        let h2 = v.as_array().unwrap().iter().find(|h| h["name"] == "h2");
        assert_eq!(h2.unwrap()["paused"], paused, "{v}");
    }
    let (code, v) = tls.call(&hosts[2], "GET", "/api/v1/hotfolders", ops, "");
    assert_eq!(code, 200, "{v}");
    check_answer(&v, "get", "/hotfolders", "200");
    let scripted = r#"{"name":"h5","script":"1","trigger":"marker"}"#;
    let (code, v) = tls.call(&hosts[0], "POST", "/api/v1/hotfolders", admin, scripted);
    assert_eq!(code, 201, "{v}");
    check_answer(&v, "post", "/hotfolders", "201");
    assert_eq!(v["definition"]["action"]["script"]["code"], "1", "{v}");
    let (code, v) = tls.call(&hosts[0], "DELETE", "/api/v1/hotfolders/h5", admin, "");
    assert_eq!(
        (code, &v["removed"]),
        (200, &serde_json::json!("h5")),
        "{v}"
    );
    check_answer(&v, "delete", "/hotfolders/{name}", "200");
    // The coordinator moves where it is sent.
    let (_, status) = tls.call(&hosts[0], "GET", "/api/v1/status", ops, "");
    check_answer(&status, "get", "/status", "200");
    let to = if status["coordinator"] == "srv3" {
        "srv2"
    } else {
        "srv3"
    };
    let body = format!("{{\"name\":\"{to}\"}}");
    let (code, v) = tls.call(
        &hosts[0],
        "POST",
        "/api/v1/coordinator/transfer",
        admin,
        &body,
    );
    assert_eq!(code, 200, "{v}");
    check_answer(&v, "post", "/coordinator/transfer", "200");
    let started = Instant::now();
    while tls.call(&hosts[1], "GET", "/api/v1/status", ops, "").1["coordinator"] != to {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "{to} never took over"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // Each instance counts the changes it saw: at least this one (a busy
    // machine may add an election of its own, which counts too).
    let changes = |host: &str| {
        let mut s = tls.connect(host);
        let (_, _, text) = exchange(
            &mut s,
            host,
            "GET",
            "/metrics",
            &[("Authorization", admin)],
            b"",
        );
        text.lines()
            .find_map(|l| l.strip_prefix("claro_coordinator_changes_total "))
            .and_then(|n| n.parse::<u64>().ok())
            .is_some_and(|n| n >= 1)
    };
    while !changes(&hosts[1]) {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "srv2 counted no coordinator change"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A job submitted through srv1 is followed on srv3's event stream, job
/// event by job event, to `succeeded`.
fn job_events_follow_a_job_to_its_end(tls: &Https, hosts: &[String], ops: &str) {
    let mut s = tls.connect(&hosts[2]);
    let mut seen = subscribe(&mut s, &hosts[2], ops);
    let mut buf = [0u8; 4096];
    let (status, job) = tls.call(
        &hosts[0],
        "POST",
        "/api/v1/jobs",
        ops,
        r#"{"stored": "answer"}"#,
    );
    assert_eq!(status, 201, "{job}");
    let id = job["id"].as_str().unwrap().to_string();
    let started = Instant::now();
    loop {
        let finished = seen.split("\n\n").any(|e| {
            e.contains("event: job") && e.contains(&id) && e.contains("\"state\":\"succeeded\"")
        });
        if finished {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "no succeeded event for {id}: {seen}"
        );
        let n = s.read(&mut buf).unwrap();
        assert!(n > 0, "the stream ended: {seen}");
        seen += &String::from_utf8_lossy(&buf[..n]);
    }
    assert!(
        seen.contains("\"state\":\"queued\""),
        "the submission itself is an event: {seen}"
    );
}

/// A keyed submission through a survivor, the coordinator killed -9, and
/// the same key again through the other survivor: one job, the first. The
/// status answers promptly on a survivor meanwhile. Returns a survivor.
fn a_key_holds_across_a_coordinator_kill(c: &mut Cluster, hosts: &[String], ops: &str) -> String {
    let (_, _, body) = http(
        &hosts[0],
        "GET",
        "/api/v1/status",
        &[("Authorization", ops)],
        b"",
    );
    let coordinator = json(&body)["coordinator"].as_str().unwrap().to_string();
    let at =
        |name: &str| hosts[name.trim_start_matches("srv").parse::<usize>().unwrap() - 1].clone();
    let survivors: Vec<String> = ["srv1", "srv2", "srv3"]
        .iter()
        .filter(|n| **n != coordinator)
        .map(|n| at(n))
        .collect();
    let keyed = [("Authorization", ops), ("Idempotency-Key", "across-a-kill")];
    let (status, _, first) = http(
        &survivors[0],
        "POST",
        "/api/v1/jobs",
        &keyed,
        br#"{"stored": "answer"}"#,
    );
    assert_eq!(status, 201, "{first}");
    let first = json(&first)["id"].clone();
    c.kill9(&coordinator);
    let asked = Instant::now();
    let (status, _, _) = http(
        &survivors[0],
        "GET",
        "/api/v1/status",
        &[("Authorization", ops)],
        b"",
    );
    assert_eq!(status, 200);
    assert!(
        asked.elapsed() < Duration::from_secs(5),
        "status took {:?}",
        asked.elapsed()
    );
    let started = Instant::now();
    loop {
        let (status, _, again) = http(
            &survivors[1],
            "POST",
            "/api/v1/jobs",
            &keyed,
            br#"{"stored": "answer"}"#,
        );
        if status == 201 {
            assert_eq!(json(&again)["id"], first, "the retry made another job");
            break;
        }
        assert_eq!(status, 503, "{again}");
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "no coordinator after 30 s: {again}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    survivors[0].clone()
}

/// More idle event streams than `EVENT_STREAMS_MAX` (256): the ones over
/// are refused with 429, the instance answers meanwhile, and a stream is
/// accepted again once the idle ones are gone.
fn idle_event_streams_are_bounded(host: &str, viewer: &str) {
    const STREAMS: usize = 300;
    let req =
        format!("GET /api/v1/events HTTP/1.1\r\nHost: {host}\r\nAuthorization: {viewer}\r\n\r\n");
    let open = |n: usize| -> (Vec<TcpStream>, Vec<u16>) {
        let mut streams = Vec::new();
        let mut statuses = Vec::new();
        for i in 0..n {
            // From three client addresses: one address may hold only
            // `CONNECTIONS_PER_ADDRESS_MAX` (128) connections.
            let mut s = connect_from(&format!("127.0.250.{}", 11 + i % 3), host);
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            s.write_all(req.as_bytes()).unwrap();
            let mut buf = [0u8; 12];
            s.read_exact(&mut buf).unwrap();
            let head = String::from_utf8_lossy(&buf).into_owned();
            statuses.push(head[9..12].parse().unwrap());
            streams.push(s);
        }
        (streams, statuses)
    };
    let (idle, statuses) = open(STREAMS);
    let accepted = statuses.iter().filter(|s| **s == 200).count();
    let refused = statuses.iter().filter(|s| **s == 429).count();
    assert_eq!((accepted, refused), (256, STREAMS - 256), "{statuses:?}");
    let (status, _, _) = http(
        host,
        "GET",
        "/api/v1/status",
        &[("Authorization", viewer)],
        b"",
    );
    assert_eq!(status, 200, "the instance answers beside its idle streams");
    drop(idle);
    let started = Instant::now();
    while open(1).1 != [200] {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "closed streams are not counted off"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A connection to `host`:7901 from the client address `from`.
fn connect_from(from: &str, host: &str) -> TcpStream {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    let local: std::net::SocketAddr = format!("{from}:0").parse().unwrap();
    socket.bind(&local.into()).unwrap();
    let remote: std::net::SocketAddr = format!("{host}:7901").parse().unwrap();
    socket.connect(&remote.into()).unwrap();
    socket.into()
}

/// A DNS-rebinding page: same origin as far as the browser knows, but its
/// requests name its own host: refused (421) before anything else, even on
/// the open loopback quickstart. A request from another site's page
/// (its `Origin`) is refused too (403), whatever header it adds.
fn a_page_of_another_site_is_refused(host: &str, ops: &str) {
    let mut s = TcpStream::connect((host, 7901)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let (status, _, body) = exchange(
        &mut s,
        "evil.example:7901",
        "POST",
        "/api/v1/tokens",
        &[("X-Claro", "1"), ("Authorization", ops)],
        br#"{"name":"mine","role":"admin"}"#,
    );
    assert_eq!(status, 421, "{body}");
    assert!(
        body.contains("evil.example") && body.contains("http_hosts"),
        "{body}"
    );
    let (status, _, _) = http(host, "GET", "/", &[], b"");
    assert_eq!(status, 200, "the instance's own name is served");
    let (status, _, body) = http(
        host,
        "POST",
        "/api/v1/jobs",
        &[
            ("Authorization", ops),
            ("Origin", "http://evil.example:7901"),
            ("X-Claro", "1"),
        ],
        br#"{"stored": "answer"}"#,
    );
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("another site"), "{body}");
}

/// A body trickled one byte a second is cut off after `BODY_READ_MS`
/// (10 s) with 408, before any login (the login route reads a body too).
fn a_slow_body_is_cut_off(host: &str) {
    let mut s = TcpStream::connect((host, 7901)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let head =
        format!("POST /api/v1/login HTTP/1.1\r\nHost: {host}\r\nContent-Length: 100000\r\n\r\n");
    s.write_all(head.as_bytes()).unwrap();
    let started = Instant::now();
    let writer = {
        let mut w = s.try_clone().unwrap();
        std::thread::spawn(move || {
            for _ in 0..30 {
                if w.write_all(b"{").is_err() {
                    return;
                }
                std::thread::sleep(Duration::from_secs(1));
            }
        })
    };
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    let text = String::from_utf8_lossy(&raw);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "held {:?}",
        started.elapsed()
    );
    drop(s);
    let _ = writer.join();
}

/// One client address holds at most `CONNECTIONS_PER_ADDRESS_MAX` (128)
/// connections: the next ones are closed at once, while other addresses
/// are served.
fn one_address_holds_a_bounded_number_of_connections(host: &str, viewer: &str) {
    let held: Vec<TcpStream> = (0..128)
        .map(|_| connect_from("127.0.250.21", host))
        .collect();
    let mut over = connect_from("127.0.250.21", host);
    over.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let (status, _, _) = exchange(
        &mut over,
        host,
        "GET",
        "/api/v1/status",
        &[("Authorization", viewer)],
        b"",
    );
    assert_eq!(status, 0, "the 129th connection of one address is closed");
    let mut other = connect_from("127.0.250.22", host);
    other
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let (status, _, body) = exchange(
        &mut other,
        host,
        "GET",
        "/api/v1/status",
        &[("Authorization", viewer)],
        b"",
    );
    assert_eq!(status, 200, "another address is served: {body}");
    drop(held);
}

/// A taken HTTP port stops `serve` at start, exit status 2, naming the port
/// and the config, before anything else started (its data directory is not
/// even made); once the port is free, the same command serves, and its data
/// directory and databases are private to the service's user (0700, 0600).
#[test]
fn a_taken_http_port_stops_serve_and_data_is_private() {
    use std::os::unix::fs::PermissionsExt as _;
    let mut c = Cluster::new(123, &[("srv1", "server")]);
    let taken = std::net::TcpListener::bind((addr(123, 0).as_str(), 7901)).unwrap();
    let started = Instant::now();
    let out = std::process::Command::new(common::BIN)
        .arg("--config")
        .arg(&c.conf)
        .args(["serve", "--name", "srv1"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("http_port = 7901") && stderr.contains("ClaroServers.conf"),
        "{stderr}"
    );
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(!c.data_dir("srv1").exists(), "nothing started");
    drop(taken);
    c.start("srv1");
    c.wait(20, "srv1 to serve", || {
        TcpStream::connect((addr(123, 0).as_str(), 7901)).is_ok()
            && http(&addr(123, 0), "GET", "/api/v1/status", &[], b"")
                .2
                .contains("\"coordinator\":\"srv1\"")
    });
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    let dir = c.data_dir("srv1");
    assert_eq!(mode(&dir), 0o700);
    assert_eq!(mode(&dir.join("state.db")), 0o600);
    assert_eq!(mode(&dir.join("raft.db")), 0o600);
    c.assert_nobody_crashed();
}

/// Once a reproduction: the served OpenAPI document failed
/// openapi-spec-validator (`"required": []`). Checked by the validator
/// where it is installed (`.ci/run` installs it), and always for the
/// fault it found and for a role on every operation.
#[test]
fn the_openapi_document_is_valid() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/src/node/web/openapi.json");
    let doc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    fn no_empty_required(v: &serde_json::Value, at: &str) {
        match v {
            serde_json::Value::Object(m) => {
                assert!(
                    m.get("required") != Some(&serde_json::json!([])),
                    "empty `required` at {at}"
                );
                m.iter()
                    .for_each(|(k, v)| no_empty_required(v, &format!("{at}/{k}")));
            }
            serde_json::Value::Array(a) => a.iter().for_each(|v| no_empty_required(v, at)),
            _ => {}
        }
    }
    no_empty_required(&doc, "");
    for (route, ops) in doc["paths"].as_object().unwrap() {
        for (method, op) in ops
            .as_object()
            .unwrap()
            .iter()
            .filter(|(m, _)| *m != "parameters")
        {
            assert!(
                op["x-claro-role"].is_string() || route == "/login" || route == "/openapi.json",
                "{method} {route}: no role"
            );
            // Every JSON answer and body says what it holds.
            let answers = op["responses"].as_object().unwrap().values();
            for content in answers
                .chain([&op["requestBody"]])
                .filter_map(|r| r["content"].as_object())
            {
                if let Some(media) = content.get("application/json") {
                    assert!(
                        media["schema"].is_object(),
                        "{method} {route}: a JSON answer or body without a schema"
                    );
                    // A generated client gets a named type for each.
                    assert!(
                        route == "/openapi.json" || named(&media["schema"]),
                        "{method} {route}: a JSON answer or body whose object is not a component schema: {}",
                        media["schema"]
                    );
                }
            }
        }
    }
    let check =
        format!("import json, openapi_spec_validator as v; v.validate(json.load(open({path:?})))");
    match std::process::Command::new("python3")
        .args(["-c", &check])
        .output()
    {
        Ok(out) if out.status.success() => {}
        Ok(out) if String::from_utf8_lossy(&out.stderr).contains("No module named") => {
            common::skip(
                "the_openapi_document_is_valid (openapi-spec-validator's part; the built-in checks ran)",
                "openapi",
                "python3's openapi_spec_validator is not installed",
            )
        }
        other => panic!("the OpenAPI document is not valid: {other:?}"),
    }
}

/// Whether `value` is what the OpenAPI document's `schema` says (the part
/// of JSON Schema the document uses: `$ref`, `oneOf`, types with
/// `nullable`, `enum`, `required`, `properties` with `additionalProperties`
/// false or a schema, `items`); the error names the path.
fn conforms(
    value: &serde_json::Value,
    schema: &serde_json::Value,
    doc: &serde_json::Value,
    at: &str,
) -> Result<(), String> {
    use serde_json::Value;
    if !schema.is_object() {
        return Err(format!("{at}: no schema ({schema})"));
    }
    if let Some(r) = schema["$ref"].as_str() {
        let name = r.trim_start_matches("#/components/schemas/");
        return conforms(value, &doc["components"]["schemas"][name], doc, at);
    }
    if let Some(options) = schema["oneOf"].as_array() {
        return options
            .iter()
            .find(|o| conforms(value, o, doc, at).is_ok())
            .map(|_| ())
            .ok_or_else(|| format!("{at}: none of oneOf fits {value}"));
    }
    if value.is_null() {
        return if schema["nullable"] == true {
            Ok(())
        } else {
            Err(format!("{at}: null"))
        };
    }
    let kind_ok = match schema["type"].as_str() {
        Some("object") => value.is_object(),
        Some("array") => value.is_array(),
        Some("string") => value.is_string(),
        Some("integer") => value.is_i64() || value.is_u64(),
        Some("number") => value.is_number(),
        Some("boolean") => value.is_boolean(),
        _ => true,
    };
    if !kind_ok {
        return Err(format!("{at}: {value} is not a {}", schema["type"]));
    }
    if let Some(allowed) = schema["enum"].as_array() {
        if !allowed.contains(value) {
            return Err(format!("{at}: {value} is not one of {allowed:?}"));
        }
    }
    if let Some(n) = value.as_f64() {
        let below = schema["minimum"].as_f64().is_some_and(|min| n < min);
        let above = schema["maximum"].as_f64().is_some_and(|max| n > max);
        if below || above {
            return Err(format!("{at}: {value} is outside the schema's range"));
        }
    }
    match value {
        Value::Object(map) => {
            for key in schema["required"].as_array().into_iter().flatten() {
                let key = key.as_str().unwrap();
                if !map.contains_key(key) {
                    return Err(format!("{at}: `{key}` missing"));
                }
            }
            let (props, others) = (&schema["properties"], &schema["additionalProperties"]);
            for (k, v) in map {
                match props.get(k) {
                    Some(p) => conforms(v, p, doc, &format!("{at}.{k}"))?,
                    None if *others == false => {
                        return Err(format!("{at}: `{k}` is not in the schema"))
                    }
                    None if others.is_object() => conforms(v, others, doc, &format!("{at}.{k}"))?,
                    None => {}
                }
            }
            Ok(())
        }
        Value::Array(items) => items
            .iter()
            .enumerate()
            .try_for_each(|(i, v)| conforms(v, &schema["items"], doc, &format!("{at}[{i}]"))),
        _ => Ok(()),
    }
}

/// Whether `schema` names its objects: a component (`$ref`), or an array
/// or a choice of them.
fn named(schema: &serde_json::Value) -> bool {
    if schema["$ref"].is_string() {
        return true;
    }
    if let Some(options) = schema["oneOf"].as_array() {
        return options.iter().all(named);
    }
    schema["type"] == "array" && named(&schema["items"])
}

/// The OpenAPI document as the source holds it (the served one is this
/// file, `include_str!`: `the_api_answers_alike_everywhere_and_checks_access_and_input`
/// checks that they are equal).
fn document() -> &'static serde_json::Value {
    static DOC: std::sync::OnceLock<serde_json::Value> = std::sync::OnceLock::new();
    DOC.get_or_init(|| {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/src/node/web/openapi.json");
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
    })
}

/// Panics unless `value`, the answer `code` to `method path` (the
/// document's path, e.g. `/hotfolders/{name}`), is what the document's
/// schema of that answer says.
fn check_answer(value: &serde_json::Value, method: &str, path: &str, code: &str) {
    let doc = document();
    let schema = answer_schema(doc, path, method, code);
    let at = format!("{} {path} {code}", method.to_uppercase());
    if let Err(e) = conforms(value, &schema, doc, &at) {
        let text: String = value.to_string().chars().take(4096).collect();
        panic!("{e}\n{text}");
    }
}

/// The schema of `method path`'s answer `code` in the served document.
fn answer_schema(
    doc: &serde_json::Value,
    path: &str,
    method: &str,
    code: &str,
) -> serde_json::Value {
    doc["paths"][path][method]["responses"][code]["content"]["application/json"]["schema"].clone()
}
