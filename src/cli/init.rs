//! `claro init`: writes a config skeleton and the cluster's TLS material:
//! the CA (certificate and private key) to a CA folder of its own, which
//! stays on this machine, and everything servers and clients read to
//! `tls/` beside the config.

use std::path::Path;

use crate::cli::exit::Failure;
use crate::config::{Config, Host};

#[allow(clippy::too_many_arguments)] // one per `claro init` option
pub fn run(
    dir: &Path,
    ca_dir: Option<&Path>,
    cluster: &str,
    servers: &[(String, String)],
    shared_root: &str,
    data_dir: &str,
    port: u16,
    force: bool,
) -> Result<(), Failure> {
    let path = dir.join("ClaroServers.conf");
    if path.exists() && !force {
        return Err(Failure::usage(format!(
            "{} exists; pass --force to overwrite it",
            path.display()
        )));
    }
    let tls_dir = dir.join(crate::config::TLS_DIR_DEFAULT);
    let ca_dir = match ca_dir {
        Some(p) => p.to_path_buf(),
        None => crate::cli::cert::default_ca_dir(dir)?,
    };
    crate::cli::cert::check_ca_dir(&ca_dir, &[dir, &tls_dir])?;
    for (name, addr) in servers {
        // Form only: whether a name resolves is checked with the whole config.
        Host::parse(addr, port)
            .map_err(|e| Failure::usage(format!("--server {name}={addr}: {e}")))?;
    }
    let text = crate::config::render(cluster, port, shared_root, data_dir, servers);
    let root = dir.join(shared_root);
    let created_root = !root.exists();
    std::fs::create_dir_all(&root)
        .map_err(|e| Failure::failed(format!("{}: {e}", root.display())))?;
    // Validate exactly what will be written before writing anything else
    // (host names are looked up here: one that does not resolve is refused).
    let config = match Config::parse(&text, &path) {
        Ok(config) => config,
        Err(e) => {
            if created_root {
                let _ = std::fs::remove_dir(&root);
            }
            return Err(Failure::usage(format!(
                "{e} (in the config init would write; nothing was written)"
            )));
        }
    };
    let hosts: Vec<(String, Host)> = config
        .servers
        .iter()
        .map(|s| (s.name.clone(), s.host.clone()))
        .collect();
    let written = crate::tls::generate(&tls_dir, &ca_dir, cluster, &hosts, force)
        .map_err(|e| Failure::usage(e.to_string()))?;
    std::fs::write(&path, text).map_err(|e| Failure::failed(format!("{}: {e}", path.display())))?;
    println!("wrote {}", path.display());
    for f in written {
        println!("wrote {}", f.display());
    }
    println!(
        "keep {} on this machine only: it holds the CA's private key (`claro cert add NAME` and `claro cert rotate` run here use it)",
        ca_dir.display()
    );
    println!(
        "copy {} (with tls/) to every server, then run `claro serve` on each; server NAME needs ClaroServers.conf, tls/ca.crt, tls/NAME.crt and tls/NAME.key (tls/client.crt and client.key to use the CLI there)",
        dir.display()
    );
    Ok(())
}
