//! The HTTP API over real HTTP against three real instances on 127.0.119.x
//! (port 7901): the same answers from every instance, access by token and
//! role, idempotent submission across instances, the event stream, metrics,
//! the dashboard's headers, and bad input (malformed and unknown JSON,
//! oversized bodies, unknown ids, paths with `..`, slow headers, repeated
//! wrong tokens).

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
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req += &format!("{k}: {v}\r\n");
    }
    req += "\r\n";
    s.write_all(req.as_bytes()).unwrap();
    s.write_all(body).unwrap();
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

fn json(body: &str) -> serde_json::Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"))
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
        assert_eq!(v["servers"].as_array().unwrap().len(), 3);
        coordinators.push(v["coordinator"].clone());
    }
    assert!(coordinators
        .iter()
        .all(|c| *c == coordinators[0] && !c.is_null()));

    // A viewer may not submit; an operator may, once per Idempotency-Key.
    let script = br#"{"script": "let x = 6 * 7; x"}"#;
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
    assert_eq!(listed, std::slice::from_ref(&id));

    // Bad input.
    let auth = [("Authorization", ops.as_str())];
    for (body, want) in [
        (&b"{not json"[..], "JSON"),
        (br#"{"script": "1", "colour": 1}"#, "colour"),
        (br#"{}"#, "script"),
    ] {
        let (status, _, text) = http(&hosts[0], "POST", "/api/v1/jobs", &auth, body);
        assert_eq!(status, 400, "{text}");
        assert!(
            json(&text)["error"].as_str().unwrap().contains(want),
            "{text}"
        );
    }
    let big = vec![b' '; 2 * 1024 * 1024];
    let (status, _, text) = http(&hosts[0], "POST", "/api/v1/jobs", &auth, &big);
    assert_eq!(status, 413, "{text}");
    assert!(text.contains("1048576"), "{text}");
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
    let login = format!("{{\"token\": \"{}\"}}", ops.trim_start_matches("Bearer "));
    let (status, head, body) = http(&hosts[1], "POST", "/api/v1/login", &[], login.as_bytes());
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
    let csrf = json(&body)["csrf"].as_str().unwrap().to_string();
    let cookie = [("Cookie", session.as_str())];
    assert_eq!(
        http(&hosts[1], "GET", "/api/v1/hotfolders", &cookie, b"").0,
        200
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
    assert_eq!(http(&hosts[1], "POST", &cancel, &with_csrf, b"").0, 200);

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
            && text.contains("claro_jobs{state=\"succeeded\",kind=\"script\"} 1"),
        "{text}"
    );

    events_follow_a_submission_elsewhere(&hosts, &viewer, &ops);
    slow_headers_are_cut_off(&hosts[0]);

    // Wrong tokens: 401, then 429 for that address.
    let wrong = format!("Bearer claro_{}", "0".repeat(64));
    let mut statuses = Vec::new();
    for _ in 0..12 {
        statuses.push(
            http(
                &hosts[0],
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
    c.assert_nobody_crashed();
}

/// A submission through srv1 shows as a `change` event on srv2's stream.
fn events_follow_a_submission_elsewhere(hosts: &[String], viewer: &str, ops: &str) {
    let mut s = TcpStream::connect((hosts[1].as_str(), 7901)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let req = format!("GET /api/v1/events HTTP/1.1\r\nHost: x\r\nAuthorization: {viewer}\r\n\r\n");
    s.write_all(req.as_bytes()).unwrap();
    let mut seen = String::new();
    let mut buf = [0u8; 4096];
    // The first event tells the current index; then one after the submission.
    while !seen.contains("event: change") {
        let n = s.read(&mut buf).unwrap();
        assert!(n > 0);
        seen += &String::from_utf8_lossy(&buf[..n]);
    }
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
        br#"{"script": "1"}"#,
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
