//! The command line's contract: exit statuses and messages on bad input.

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
