//! `ClaroServers.conf` and the address parser.

use std::path::{Path, PathBuf};

use claro::config::{Config, Host};
use rand::Rng as _;

use crate::harness::{mutate, random_bytes, run, text, Rng};

/// A valid config over `root` (its shared root and data directory), with
/// every table a config may hold.
fn valid_config(root: &Path) -> String {
    format!(
        r#"cluster = "fuzz"
port = 7900
http_port = 7901
shared_root = "{root}/shared"
data_dir = "{root}/data"

[timing]
tick_ms = 20
heartbeat_ms = 100
election_ms = 500
node_timeout_ms = 3000
discovery_ms = 1000

[jobs]
script_memory_mb = 512

[[server]]
name = "srv1"
address = "127.0.0.1"
slots = 4
role = "server"

[[server]]
name = "srv2"
address = "[::1]:7902"
role = "witness"

[hotfolder.pdfs]
command = "cp {{input}} {{output_dir}}/{{stem}}.copy.{{ext}}"
include = ["*.pdf"]
stable_ms = 1000
"#,
        root = root.display()
    )
}

/// Values a key may be given instead of its own.
const VALUES: [&str; 16] = [
    "-1",
    "0",
    "18446744073709551616",
    "9223372036854775807",
    "1e400",
    "nan",
    "\"\"",
    "\"..\"",
    "\"/\"",
    "\"\\u0000\"",
    "[]",
    "{}",
    "[[[[[[[[]]]]]]]]",
    "true",
    "\"localhost:0\"",
    "\"256.0.0.1\"",
];

/// A config text: the valid one with one value replaced, bytes mutated, a
/// line repeated, or random text.
fn config_text(rng: &mut Rng, valid: &str) -> String {
    match rng.gen_range(0..4) {
        0 => {
            let lines: Vec<&str> = valid.lines().collect();
            let at = rng.gen_range(0..lines.len());
            let mut out: Vec<String> = lines.iter().map(|l| l.to_string()).collect();
            if let Some((key, _)) = lines[at].split_once(" = ") {
                let value = if rng.gen() {
                    VALUES[rng.gen_range(0..VALUES.len())].to_string()
                } else {
                    format!("{:?}", text(rng))
                };
                out[at] = format!("{key} = {value}");
            }
            out.join("\n")
        }
        1 => String::from_utf8_lossy(&mutate(rng, valid.as_bytes())).into_owned(),
        2 => {
            let line = valid.lines().nth(rng.gen_range(0..10)).unwrap_or("");
            format!(
                "{valid}\n{}",
                format!("{line}\n").repeat(rng.gen_range(1..300))
            )
        }
        _ => String::from_utf8_lossy(&random_bytes(rng, 200)).into_owned(),
    }
}

/// Whether a server address in `text` is a name other than `localhost`:
/// such a config would ask the resolver, which is slow and differs between
/// machines, so it is left to the address parser's own target.
fn needs_resolver(text: &str) -> bool {
    let Ok(table) = toml::from_str::<toml::Table>(text) else {
        return false;
    };
    let servers = table.get("server").and_then(|s| s.as_array());
    servers.into_iter().flatten().any(|s| {
        let address = s.get("address").and_then(|a| a.as_str()).unwrap_or("");
        matches!(Host::parse(address, 7900), Ok((Host::Name(n), _)) if n != "localhost")
    })
}

fn fuzz_root() -> PathBuf {
    let root = std::env::temp_dir().join(format!("claro-fuzz-config-{}", std::process::id()));
    std::fs::create_dir_all(root.join("shared")).unwrap();
    root
}

#[test]
fn config_texts() {
    let root = fuzz_root();
    let valid = valid_config(&root);
    let path = root.join("conf").join("ClaroServers.conf");
    Config::parse(&valid, &path).expect("the fuzzed config's base is valid");
    run(
        "config_texts",
        5_000,
        |rng| config_text(rng, &valid),
        |text| {
            if needs_resolver(text) {
                return;
            }
            if let Err(e) = Config::parse(text, &path) {
                assert!(!e.to_string().is_empty());
            }
        },
    );
    let _ = std::fs::remove_dir_all(&root);
}

/// The canonical text of an address: what it parses to, written again,
/// parses to the same.
#[test]
fn addresses() {
    run(
        "addresses",
        30_000,
        |rng| match rng.gen_range(0..4) {
            0 => text(rng),
            1 => format!(
                "{}.{}.{}.{}:{}",
                rng.gen::<u8>(),
                rng.gen::<u8>(),
                rng.gen::<u8>(),
                rng.gen::<u8>(),
                rng.gen::<u16>()
            ),
            2 => format!(
                "[{:x}::{:x}%{}]:{}",
                rng.gen::<u16>(),
                rng.gen::<u16>(),
                text(rng),
                text(rng)
            ),
            _ => String::from_utf8_lossy(&mutate(rng, b"srv-1.example.com:7900")).into_owned(),
        },
        |text| {
            let Ok((host, port)) = Host::parse(text, 7900) else {
                return;
            };
            let canonical = match &host {
                Host::Ip(ip) if ip.is_ipv6() => format!("[{ip}]:{port}"),
                other => format!("{other}:{port}"),
            };
            assert_eq!(Host::parse(&canonical, 1), Ok((host, port)), "{canonical}");
        },
    );
}
