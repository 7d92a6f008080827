//! `claro init`: writes a config skeleton and the cluster's TLS material.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;

use crate::config::Config;
use crate::exit::Failure;

pub fn run(
    dir: &Path,
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
    let mut ips: Vec<(String, IpAddr)> = Vec::new();
    for (name, addr) in servers {
        let ip = addr
            .parse::<IpAddr>()
            .or_else(|_| addr.parse::<SocketAddr>().map(|a| a.ip()))
            .map_err(|_| {
                Failure::usage(format!(
                    "--server {name}={addr}: not an IP address or IP:PORT"
                ))
            })?;
        ips.push((name.clone(), ip));
    }
    let text = crate::config::render(cluster, port, shared_root, data_dir, servers);
    let root = dir.join(shared_root);
    let created_root = !root.exists();
    std::fs::create_dir_all(&root)
        .map_err(|e| Failure::failed(format!("{}: {e}", root.display())))?;
    // Validate exactly what will be written before writing anything else.
    if let Err(e) = Config::parse(&text, &path) {
        if created_root {
            let _ = std::fs::remove_dir(&root);
        }
        return Err(Failure::usage(e.to_string()));
    }
    let written = crate::tls::generate(&dir.join("tls"), cluster, &ips, force)
        .map_err(|e| Failure::usage(e.to_string()))?;
    std::fs::write(&path, text).map_err(|e| Failure::failed(format!("{}: {e}", path.display())))?;
    println!("wrote {}", path.display());
    for f in written {
        println!("wrote {}", f.display());
    }
    println!(
        "copy {} (with tls/) to every server, then run `claro serve` on each",
        dir.display()
    );
    Ok(())
}
