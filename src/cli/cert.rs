//! The operator's side of the cluster's certificates: where the CA folder
//! is, `claro cert add NAME` and `claro cert rotate` (run where the CA's key
//! is), and what `claro serve` does when its TLS material is missing.
//!
//! The CA folder (`ca.crt`, `ca.key`) stays on the machine that signs; the
//! tls folder beside the config (`ca.crt`, `<server>.crt` + `.key`,
//! `client.crt` + `.key`) is what is copied to servers. Only the quickstart
//! (one server on a loopback address) has `serve` make material itself: on
//! a real cluster a missing file is an operator's mistake to fix, and a
//! server that signed its own certificate would need the CA's key.

use std::path::{Path, PathBuf};

use crate::cli::exit::Failure;
use crate::config::{Config, Host};
use crate::tls;
use clap::Subcommand;

/// The default CA folder is the config folder's name with this suffix,
/// beside it: `conf/` → `conf-ca/`.
pub const CA_DIR_SUFFIX: &str = "-ca";

/// The CA folder used when `--ca-dir` is not given: beside `config_dir`,
/// named after it (`conf/` → `conf-ca/`), so that two clusters' config
/// folders in one parent never share a CA folder.
pub fn default_ca_dir(config_dir: &Path) -> Result<PathBuf, Failure> {
    // A relative folder stays relative (messages then show what was typed);
    // `.` or `..` have no name of their own: their absolute form does.
    if let Some(name) = config_dir.file_name() {
        let mut name = name.to_os_string();
        name.push(CA_DIR_SUFFIX);
        return Ok(config_dir.with_file_name(name));
    }
    let absolute = std::path::absolute(config_dir)
        .map_err(|e| Failure::usage(format!("{}: {e}", config_dir.display())))?;
    match (absolute.file_name(), absolute.parent()) {
        (Some(name), Some(parent)) => {
            let mut name = name.to_os_string();
            name.push(CA_DIR_SUFFIX);
            Ok(parent.join(name))
        }
        _ => Err(Failure::usage(format!(
            "{}: no folder name to put the CA folder beside; give --ca-dir",
            config_dir.display()
        ))),
    }
}

/// The folder of the config file (where `claro init` wrote it).
pub fn config_dir(config: &Config) -> PathBuf {
    match config.path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// Refuses a CA folder inside a folder that is copied to servers (the
/// config's folder, the tls folder): its key would travel with them.
pub fn check_ca_dir(ca_dir: &Path, copied: &[&Path]) -> Result<(), Failure> {
    let absolute = |p: &Path| std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf());
    match copied
        .iter()
        .find(|c| absolute(ca_dir).starts_with(absolute(c)))
    {
        Some(c) => Err(Failure::usage(format!(
            "--ca-dir {}: the CA folder must not be inside {}, which is copied to servers",
            ca_dir.display(),
            c.display()
        ))),
        None => Ok(()),
    }
}

/// The CA folder for a command on `config`: `--ca-dir` or the default.
fn ca_dir_for(config: &Config, given: Option<&Path>) -> Result<PathBuf, Failure> {
    let dir = config_dir(config);
    let ca = match given {
        Some(p) => p.to_path_buf(),
        None => default_ca_dir(&dir)?,
    };
    check_ca_dir(&ca, &[&dir, &config.tls_dir])?;
    Ok(ca)
}

fn hosts(config: &Config) -> Vec<(String, Host)> {
    config
        .servers
        .iter()
        .map(|s| (s.name.clone(), s.host.clone()))
        .collect()
}

fn tls_failure(e: tls::TlsError) -> Failure {
    Failure::usage(e.to_string())
}

/// `claro cert add NAME`: signs a key and certificate for NAME (a server of
/// the config, with its configured host), written to the tls folder.
pub fn add(config: &Config, ca_dir: Option<&Path>, name: &str, force: bool) -> Result<(), Failure> {
    let server = config.server(name).ok_or_else(|| {
        Failure::usage(format!(
            "no server named `{name}` in {}; add its [[server]] to the config first (every server reads the same config)",
            config.path.display()
        ))
    })?;
    let ca_dir = ca_dir_for(config, ca_dir)?;
    let ca = tls::load_ca(&ca_dir, &config.cluster).map_err(tls_failure)?;
    let tls_dir = &config.tls_dir;
    if !force {
        let [_, crt, key] = tls::files_of(tls_dir, name);
        if let Some(existing) = [crt, key].into_iter().find(|p| p.exists()) {
            return Err(Failure::usage(format!(
                "{}: already exists; `claro cert rotate` renews every certificate, --force replaces this one",
                existing.display()
            )));
        }
    }
    let mut written: Vec<PathBuf> = tls::install_ca_cert(&ca, tls_dir)
        .map_err(tls_failure)?
        .into_iter()
        .collect();
    written.extend(
        tls::issue(&ca, tls_dir, &config.cluster, name, Some(&server.host)).map_err(tls_failure)?,
    );
    for f in &written {
        println!("wrote {}", f.display());
    }
    let [ca_crt, crt, key] = tls::files_of(tls_dir, name);
    println!(
        "copy {}, {}, {} and {} to {name}; {} stays here",
        config.path.display(),
        ca_crt.display(),
        crt.display(),
        key.display(),
        ca_dir.display()
    );
    Ok(())
}

/// `claro cert rotate`: new keys and certificates for every server of the
/// config and the client, signed by the same CA, so that servers restarted
/// one at a time with their new files keep accepting the others.
pub fn rotate(config: &Config, ca_dir: Option<&Path>) -> Result<(), Failure> {
    let ca_dir = ca_dir_for(config, ca_dir)?;
    let ca = tls::load_ca(&ca_dir, &config.cluster).map_err(tls_failure)?;
    let mut whos: Vec<&str> = config.servers.iter().map(|s| s.name.as_str()).collect();
    whos.push(tls::CLIENT_NAME);
    tls::note_replaced(&config.tls_dir, &whos).map_err(tls_failure)?;
    let written = tls::sign_all(&ca, &config.tls_dir, &config.cluster, &hosts(config))
        .map_err(tls_failure)?;
    for f in &written {
        println!("wrote {}", f.display());
    }
    println!(
        "copy each server's new {}/NAME.crt and NAME.key (and client.crt, client.key where the CLI runs) to it and restart the servers one at a time; then `claro cert revoke --replaced` revokes the old certificates in the whole cluster",
        config.tls_dir.display()
    );
    Ok(())
}

/// `claro cert renew`: the same keys, new certificates valid
/// `LEAF_VALIDITY_DAYS` from now. Nothing is revoked: the keys did not
/// change hands, and servers restarted one at a time keep accepting the
/// others meanwhile.
pub fn renew(config: &Config, ca_dir: Option<&Path>) -> Result<(), Failure> {
    let ca_dir = ca_dir_for(config, ca_dir)?;
    let ca = tls::load_ca(&ca_dir, &config.cluster).map_err(tls_failure)?;
    tls::install_ca_cert(&ca, &config.tls_dir).map_err(tls_failure)?;
    let wanted = config
        .servers
        .iter()
        .map(|s| (s.name.as_str(), Some(&s.host)))
        .chain([(tls::CLIENT_NAME, None)]);
    for (who, host) in wanted {
        let path =
            tls::renew(&ca, &config.tls_dir, &config.cluster, who, host).map_err(tls_failure)?;
        println!("wrote {}", path.display());
    }
    println!(
        "copy each server's new {}/NAME.crt to it and restart the servers one at a time (the keys are unchanged)",
        config.tls_dir.display()
    );
    Ok(())
}

/// `claro cert list`: the CA's, every server's and the client's certificate
/// in the tls folder, with the days each has left.
pub fn list(config: &Config, json: bool) -> Result<(), Failure> {
    let now_s = crate::clock::now_ms() / 1000;
    let mut whos = vec!["ca".to_string(), tls::CLIENT_NAME.to_string()];
    whos.extend(config.servers.iter().map(|s| s.name.clone()));
    let mut rows = Vec::new();
    for who in &whos {
        let path = tls::cert_file(&config.tls_dir, who);
        let facts = path
            .exists()
            .then(|| tls::file_facts(&path))
            .transpose()
            .map_err(tls_failure)?;
        rows.push((who.as_str(), facts));
    }
    if json {
        let values: Vec<serde_json::Value> = rows
            .iter()
            .map(|(who, f)| serde_json::json!({"name": who, "certificate": f}))
            .collect();
        return crate::cli::output::emit(&crate::cli::output::json_line(&values));
    }
    let mut out = format!(
        "{:<16} {:<24} {:>6} FINGERPRINT\n",
        "NAME", "EXPIRES", "DAYS"
    );
    for (who, facts) in &rows {
        let Some(f) = facts else {
            out.push_str(&format!("{who:<16} (missing)\n"));
            continue;
        };
        let expires = crate::contract::rfc3339(f.not_after_s.saturating_mul(1000));
        let days = tls::days_left(f.not_after_s, now_s);
        out.push_str(&format!(
            "{who:<16} {expires:<24} {days:>6} {}\n",
            f.fingerprint
        ));
    }
    crate::cli::output::emit(&out)
}

/// True for the quickstart: a one-server config on a loopback address,
/// where nobody else can reach the server and generating material on the
/// spot gives nobody a certificate they should not have.
pub fn is_quickstart(config: &Config) -> bool {
    matches!(config.servers.as_slice(), [only] if only.address.ip().is_loopback())
}

/// What `serve` does about its TLS material.
#[derive(Debug, PartialEq, Eq)]
pub enum ServeTls {
    /// Everything this server reads is there.
    Ready,
    /// The quickstart lacks something: make it.
    Provision,
    /// A real cluster lacks this file: refuse to start.
    Refuse(PathBuf),
}

/// Pure: given the first missing file and whether this is the quickstart.
pub fn serve_plan(missing: Option<PathBuf>, quickstart: bool) -> ServeTls {
    match missing {
        None => ServeTls::Ready,
        Some(_) if quickstart => ServeTls::Provision,
        Some(path) => ServeTls::Refuse(path),
    }
}

/// Before `serve` starts anything: checks that server `name` finds its
/// files (the quickstart makes what is missing, CA in the default CA
/// folder); otherwise a usage failure (exit 2) naming the missing file and
/// the command that makes it. Warns about a CA key in the tls folder.
pub fn for_serve(config: &Config, name: &str) -> Result<(), Failure> {
    let tls_dir = &config.tls_dir;
    let plan = serve_plan(tls::first_missing(tls_dir, name), is_quickstart(config));
    match plan {
        ServeTls::Ready => {}
        ServeTls::Provision => {
            let ca_dir = ca_dir_for(config, None)?;
            tls::provision(tls_dir, &ca_dir, &config.cluster, &hosts(config))
                .map_err(tls_failure)?;
            tracing::warn!(
                "generated missing TLS material in {} with the CA in {} (a one-machine set-up; use `claro init` for a real cluster)",
                tls_dir.display(),
                ca_dir.display()
            );
        }
        ServeTls::Refuse(path) => {
            return Err(Failure::usage(format!(
                "{}: missing; server {name} needs {} (make them where the cluster's CA key is, with `claro init`, or `claro cert add {name}` for a server added later, and copy them here; `serve` makes TLS material only for a one-server cluster on a loopback address)",
                path.display(),
                needed(tls_dir, name)
            )))
        }
    }
    let stray = tls::ca_key_path(tls_dir);
    if stray.exists() {
        tracing::warn!(
            "{}: the cluster CA's private key is in the folder copied to servers; anyone who can read it can make certificates for this cluster: move it to the CA folder on the machine that signs (see `claro init --ca-dir`)",
            stray.display()
        );
    }
    Ok(())
}

fn needed(tls_dir: &Path, name: &str) -> String {
    tls::files_of(tls_dir, name)
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

#[derive(Subcommand, Debug)]
pub enum CertAction {
    /// Sign a key and certificate for NAME, a server of the config (e.g.
    /// one added later), into the config's tls folder.
    Add {
        name: String,
        /// The CA folder (default: beside the config's folder, named
        /// after it with `-ca`, e.g. conf-ca/).
        #[arg(long)]
        ca_dir: Option<PathBuf>,
        /// Replace NAME's existing certificate and key.
        #[arg(long)]
        force: bool,
    },
    /// New keys and certificates for every server and the client, signed
    /// by the same CA; the replaced ones are noted for `cert revoke --replaced`.
    Rotate {
        /// The CA folder (default: as for `cert add`).
        #[arg(long)]
        ca_dir: Option<PathBuf>,
    },
    /// New certificates for the same keys, valid two years from now, for
    /// every server of the config and the client.
    Renew {
        /// The CA folder (default: as for `cert add`).
        #[arg(long)]
        ca_dir: Option<PathBuf>,
    },
    /// The certificates of the tls folder: fingerprint, serial, expiry.
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Revoke a certificate in the whole cluster: every instance refuses it
    /// at its next handshake and closes the connections that use it.
    Revoke {
        /// A server of the config or `client` (its certificate in the tls
        /// folder), or a SHA-256 fingerprint (as `cert list` prints it).
        target: Option<String>,
        /// Revoke the certificates `cert rotate` replaced (once every server
        /// runs its new one).
        #[arg(long)]
        replaced: bool,
        #[command(flatten)]
        client: crate::cli::client::ClientArgs,
    },
    /// The cluster's revoked certificates.
    Revoked {
        #[command(flatten)]
        client: crate::cli::client::ClientArgs,
    },
}

pub fn command(path: &std::path::Path, action: CertAction) -> Result<(), Failure> {
    let config = Config::load(path)?;
    match action {
        CertAction::Add {
            name,
            ca_dir,
            force,
        } => crate::cli::cert::add(&config, ca_dir.as_deref(), &name, force),
        CertAction::Rotate { ca_dir } => crate::cli::cert::rotate(&config, ca_dir.as_deref()),
        CertAction::Renew { ca_dir } => renew(&config, ca_dir.as_deref()),
        CertAction::List { json } => list(&config, json),
        CertAction::Revoke {
            target,
            replaced,
            client,
        } => crate::cli::revocation::revoke(&config, &client, target.as_deref(), replaced),
        CertAction::Revoked { client } => crate::cli::revocation::list(&config, &client),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_ca_folder_is_beside_the_config_folder() {
        let cwd = std::env::current_dir().unwrap();
        assert_eq!(
            default_ca_dir(Path::new("conf")).unwrap(),
            Path::new("conf-ca")
        );
        assert_eq!(
            default_ca_dir(Path::new("a/conf/")).unwrap(),
            Path::new("a/conf-ca")
        );
        assert_eq!(
            default_ca_dir(Path::new("/etc/claro/")).unwrap(),
            Path::new("/etc/claro-ca")
        );
        assert_eq!(
            default_ca_dir(Path::new(".")).unwrap(),
            cwd.parent()
                .unwrap()
                .join(format!("{}-ca", cwd.file_name().unwrap().to_string_lossy()))
        );
        let err = default_ca_dir(Path::new("/")).unwrap_err();
        assert!(err.message.contains("--ca-dir"), "{}", err.message);
    }

    #[test]
    fn a_ca_folder_inside_a_copied_folder_is_refused() {
        let conf = Path::new("/x/conf");
        let tls = Path::new("/y/tls");
        check_ca_dir(Path::new("/x/conf-ca"), &[conf, tls]).unwrap();
        check_ca_dir(Path::new("/x"), &[conf, tls]).unwrap();
        for bad in ["/x/conf", "/x/conf/ca", "/y/tls/ca"] {
            let err = check_ca_dir(Path::new(bad), &[conf, tls]).unwrap_err();
            assert_eq!(err.status, crate::cli::exit::EXIT_USAGE);
            assert!(err.message.contains("copied to servers"), "{}", err.message);
        }
    }

    #[test]
    fn serve_makes_material_only_for_the_quickstart() {
        let missing = || Some(PathBuf::from("tls/srv2.crt"));
        assert_eq!(serve_plan(None, false), ServeTls::Ready);
        assert_eq!(serve_plan(None, true), ServeTls::Ready);
        assert_eq!(serve_plan(missing(), true), ServeTls::Provision);
        assert_eq!(
            serve_plan(missing(), false),
            ServeTls::Refuse(PathBuf::from("tls/srv2.crt"))
        );
    }

    fn config(servers: &[&str]) -> Config {
        let dir = tempfile::tempdir().unwrap();
        let mut text = "cluster = \"c\"\nshared_root = \".\"\ndata_dir = \"d\"\n".to_string();
        for (i, address) in servers.iter().enumerate() {
            text += &format!("[[server]]\nname = \"srv{i}\"\naddress = \"{address}\"\n");
        }
        Config::parse(&text, &dir.path().join("ClaroServers.conf")).unwrap()
    }

    #[test]
    fn the_quickstart_is_one_server_on_a_loopback_address() {
        assert!(is_quickstart(&config(&["127.0.0.1"])));
        assert!(is_quickstart(&config(&["127.0.88.1:7901"])));
        assert!(is_quickstart(&config(&["[::1]:7900"])));
        assert!(is_quickstart(&config(&["localhost"])));
        assert!(!is_quickstart(&config(&["192.0.2.10"])));
        assert!(!is_quickstart(&config(&["127.0.0.1", "127.0.0.2"])));
    }
}
