//! The command line's contract: exit statuses and messages on bad input.

mod common;

use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_claro");

fn claro(args: &[&str]) -> std::process::Output {
    Command::new(BIN).args(args).output().expect("run claro")
}

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).to_string()
}

#[test]
fn bad_usage_exits_2() {
    assert_eq!(claro(&["no-such-command"]).status.code(), Some(2));
    assert_eq!(
        claro(&["init", "--dir", "/tmp/x", "--server", "noequals"])
            .status
            .code(),
        Some(2)
    );
}

#[test]
fn bad_config_exits_2_naming_file_line_and_key() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("shared")).unwrap();
    let conf = dir.path().join("ClaroServers.conf");
    std::fs::write(
        &conf,
        "cluster = \"c\"\nshared_root = \"shared\"\ndata_dir = \"data\"\nbogus = 1\n[[server]]\nname = \"srv1\"\naddress = \"127.0.0.1\"\n",
    )
    .unwrap();
    let out = claro(&[
        "--config",
        conf.to_str().unwrap(),
        "serve",
        "--name",
        "srv1",
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let e = stderr(&out);
    assert!(
        e.contains("ClaroServers.conf") && e.contains(":4") && e.contains("bogus"),
        "{e}"
    );
    assert!(
        !dir.path().join("data").exists(),
        "a bad config must change nothing"
    );
    // `config check` says the same without starting anything, and exit 0
    // with a summary for a good one.
    let out = claro(&["--config", conf.to_str().unwrap(), "config", "check"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains(":4") && stderr(&out).contains("bogus"));
    let good = std::fs::read_to_string(&conf)
        .unwrap()
        .replace("bogus = 1\n", "");
    std::fs::write(&conf, good).unwrap();
    let out = claro(&["--config", conf.to_str().unwrap(), "config", "check"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(String::from_utf8_lossy(&out.stdout)
        .contains("ok (cluster c, 1 server(s), 0 hotfolder(s))"));
    assert!(!dir.path().join("data").exists(), "a check changes nothing");
}

#[test]
fn serve_without_a_matching_server_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("shared")).unwrap();
    let conf = dir.path().join("ClaroServers.conf");
    std::fs::write(
        &conf,
        "cluster = \"c\"\nshared_root = \"shared\"\ndata_dir = \"data\"\n[[server]]\nname = \"srv1\"\naddress = \"192.0.2.10\"\n",
    )
    .unwrap();
    let out = claro(&["--config", conf.to_str().unwrap(), "serve"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("--name"), "{}", stderr(&out));
}

#[test]
fn init_writes_material_and_refuses_to_overwrite() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().join("conf");
    let args = [
        "init",
        "--dir",
        d.to_str().unwrap(),
        "--server",
        "srv1=127.0.0.1",
        "--server",
        "srv2=127.0.0.2",
    ];
    let out = claro(&args);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    for f in [
        "ClaroServers.conf",
        "tls/ca.crt",
        "tls/srv1.crt",
        "tls/srv2.key",
        "tls/client.crt",
    ] {
        assert!(d.join(f).exists(), "{f} missing");
    }
    let before = std::fs::read(d.join("tls/ca.crt")).unwrap();
    let again = claro(&args);
    assert_eq!(again.status.code(), Some(2), "{}", stderr(&again));
    assert_eq!(
        std::fs::read(d.join("tls/ca.crt")).unwrap(),
        before,
        "refused init changed the CA"
    );
    let mut forced = args.to_vec();
    forced.push("--force");
    assert_eq!(claro(&forced).status.code(), Some(0));
    assert_ne!(std::fs::read(d.join("tls/ca.crt")).unwrap(), before);
}

#[test]
fn no_reachable_instance_exits_1() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().join("conf");
    let out = claro(&[
        "init",
        "--dir",
        d.to_str().unwrap(),
        "--server",
        "srv1=127.0.99.1",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let out = claro(&[
        "--config",
        d.join("ClaroServers.conf").to_str().unwrap(),
        "status",
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("no instance reachable"),
        "{}",
        stderr(&out)
    );
}

/// `localhost` resolves on every machine; `.invalid` names never do (RFC 6761).
#[test]
fn init_and_server_take_host_names() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().join("conf");
    // A port nobody listens on: the status call below must reach no instance.
    let init = |server: &str| {
        claro(&[
            "init",
            "--dir",
            d.to_str().unwrap(),
            "--port",
            "7979",
            "--server",
            server,
            "--server",
            "srv2=127.0.0.2",
        ])
    };
    let out = init("srv1=nosuch.invalid");
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("cannot resolve host name \"nosuch.invalid\""),
        "{}",
        stderr(&out)
    );
    assert!(!d.join("tls").exists() && !d.join("ClaroServers.conf").exists());

    let out = init("srv1=localhost");
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let conf = d.join("ClaroServers.conf");
    let text = std::fs::read_to_string(&conf).unwrap();
    assert!(text.contains("address = \"localhost\""), "{text}");
    let tls = d.join("tls");
    let srv1 = claro::tls::load_identity(&tls, "srv1").unwrap().chain[0].clone();
    assert!(claro::tls::cert_is_for(&srv1, "srv1"));
    assert!(claro::tls::cert_is_for(&srv1, "localhost"));
    let srv2 = claro::tls::load_identity(&tls, "srv2").unwrap().chain[0].clone();
    assert!(claro::tls::cert_is_for(&srv2, "127.0.0.2"));
    assert!(!claro::tls::cert_is_for(&srv2, "localhost"));

    let status = |server: &str| {
        claro(&[
            "--config",
            conf.to_str().unwrap(),
            "status",
            "--server",
            server,
        ])
    };
    // Accepted: it goes on to try srv1, which is not running (exit 1, not 2).
    for accepted in ["localhost", "localhost:7979", "127.0.0.1"] {
        let out = status(accepted);
        assert_eq!(out.status.code(), Some(1), "{accepted}: {}", stderr(&out));
        assert!(
            stderr(&out).contains("srv1 (127.0.0.1:7979)"),
            "{}",
            stderr(&out)
        );
    }
    let out = status("nosuch.invalid");
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("--server `nosuch.invalid`"),
        "{}",
        stderr(&out)
    );
}

/// `claro completions SHELL` prints a script the shell accepts, naming the
/// commands; an unknown shell is exit 2.
#[test]
fn completions_are_printed_for_each_shell() {
    let out = claro(&["completions", "bash"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let script = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        script.contains("_claro") && script.contains("hotfolder"),
        "{script}"
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("claro.bash");
    std::fs::write(&path, &script).unwrap();
    let parsed = Command::new("bash").arg("-n").arg(&path).status().unwrap();
    assert!(parsed.success(), "bash refuses the script");
    for shell in ["zsh", "fish"] {
        let out = claro(&["completions", shell]);
        assert_eq!(out.status.code(), Some(0), "{shell}: {}", stderr(&out));
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("submit"),
            "{shell}"
        );
    }
    assert_eq!(claro(&["completions", "tcsh"]).status.code(), Some(2));
}

/// `claro man-pages DIR` writes a manual page for claro and each command,
/// in man's format; a DIR that is no folder is exit 2.
#[test]
fn manual_pages_are_written_for_every_command() {
    let dir = tempfile::tempdir().unwrap();
    let out = claro(&["man-pages", dir.path().to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    for page in [
        "claro.1",
        "claro-submit.1",
        "claro-hotfolder-add.1",
        "claro-backup.1",
    ] {
        let text = std::fs::read_to_string(dir.path().join(page)).unwrap_or_default();
        assert!(
            text.starts_with(".ie ") || text.contains(".TH "),
            "{page}: {text}"
        );
    }
    let submit = std::fs::read_to_string(dir.path().join("claro-submit.1")).unwrap();
    assert!(submit.contains("\\-\\-many"), "the options are there");
    let out = claro(&["man-pages", "/no/such/folder"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
}

/// The systemd unit (packaging/claro.service) is one systemd accepts, and
/// keeps the stop bounded and the hardening the docs promise. Where
/// `systemd-analyze` is missing only the keys are checked, and the test
/// says it skipped the rest (under CI it fails: .ci/run installs systemd).
#[test]
fn the_service_unit_is_valid_and_hardened() {
    let unit = include_str!("../packaging/claro.service");
    for key in [
        "User=claro",
        "TimeoutStopSec=",
        "Restart=on-failure",
        "RestartPreventExitStatus=2",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "ReadWritePaths=/var/lib/claro /srv/claro",
        "PrivateTmp=yes",
        "StandardError=journal",
    ] {
        assert!(unit.lines().any(|l| l.starts_with(key)), "{key} missing");
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("claro.service");
    std::fs::write(&path, unit.replace("/usr/bin/claro", BIN)).unwrap();
    match Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
    {
        Ok(out) => assert!(
            out.status.success() && out.stderr.is_empty(),
            "systemd-analyze verify: {}",
            stderr(&out)
        ),
        Err(e) => common::skip(
            "the_service_unit_is_valid_and_hardened",
            "systemd-analyze",
            &format!("not run ({e}); only the unit's keys were checked"),
        ),
    }
}

/// docs/CONFIG.md names every key the config reads: a key added to
/// `src/config.rs` without its line in the reference fails here.
#[test]
fn the_config_reference_names_every_key() {
    let code = include_str!("../src/config.rs");
    let doc = include_str!("../docs/CONFIG.md");
    let mut keys = Vec::new();
    let mut inside = false;
    for line in code.lines() {
        if line.starts_with("struct Raw") {
            inside = true;
            continue;
        }
        if inside && line.starts_with('}') {
            inside = false;
        }
        let field = line.trim().split(':').next().unwrap_or("");
        if inside && !field.is_empty() && field.chars().all(|c| c.is_ascii_lowercase() || c == '_')
        {
            keys.push(field.to_string());
        }
    }
    assert!(keys.len() > 30, "the raw structs were not found: {keys:?}");
    // A key as `key`, a table as [key], [key.NAME] or [[key]].
    let named = |k: &str| {
        [
            format!("`{k}`"),
            format!("[{k}]"),
            format!("[{k}."),
            format!("[[{k}]]"),
        ]
        .iter()
        .any(|form| doc.contains(form.as_str()))
    };
    let missing: Vec<&String> = keys.iter().filter(|k| !named(k)).collect();
    assert!(
        missing.is_empty(),
        "keys missing from docs/CONFIG.md: {missing:?}"
    );
}
