//! The Debian package as an operator meets it (127.0.186.x). It is built by
//! cargo-deb from the package definition in Cargo.toml, as
//! `packaging/deb/build.sh` builds the release one, but from this build's
//! binary (the dev profile, unstripped, fast compression: the dist build
//! takes minutes). Then:
//!
//! - `packaging/deb/try.sh` unpacks it into a clean folder, checks its
//!   files and maintainer scripts, and runs its binary as a one-server
//!   cluster that takes a job;
//! - as root, on a machine where claro is not installed,
//!   `packaging/deb/try-install.sh` installs it for real (dpkg -i), runs a
//!   three-server cluster as the package's `claro` user in the layout
//!   docs/OPERATIONS.md describes, takes a job and a backup, stops the
//!   servers, removes the package (the data stays) and purges what it made.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const TEST: &str = "the_package_unpacks_installs_and_runs_a_cluster";

fn found(program: &str, arg: &str) -> bool {
    Command::new(program)
        .arg(arg)
        .output()
        .is_ok_and(|o| o.status.success())
}

fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().expect("start");
    assert!(
        out.status.success(),
        "{cmd:?}: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Man pages and completions made by this build's binary, where the
/// package definition takes them from.
fn extras(manifest: &Path, bin: &Path) {
    let extra = manifest.join("target/deb-extra");
    let _ = std::fs::remove_dir_all(&extra);
    std::fs::create_dir_all(extra.join("completions")).unwrap();
    std::fs::create_dir_all(extra.join("man")).unwrap();
    run(Command::new(bin).arg("man-pages").arg(extra.join("man")));
    let pages: Vec<PathBuf> = std::fs::read_dir(extra.join("man"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    run(Command::new("gzip").arg("-9n").args(&pages));
    for (shell, name) in [("bash", "claro"), ("zsh", "_claro"), ("fish", "claro.fish")] {
        let out = run(Command::new(bin).args(["completions", shell]));
        std::fs::write(extra.join("completions").join(name), out.stdout).unwrap();
    }
}

#[test]
fn the_package_unpacks_installs_and_runs_a_cluster() {
    if !found("cargo-deb", "--version") {
        return common::skip(
            TEST,
            "cargo-deb",
            "cargo-deb is not installed (cargo install cargo-deb)",
        );
    }
    if !found("dpkg-deb", "--version") {
        return common::skip(TEST, "dpkg", "dpkg-deb is not installed");
    }
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    let bin = Path::new(env!("CARGO_BIN_EXE_claro"));
    // target/debug/claro: the package takes the binary of the same target.
    let target = bin.parent().unwrap().parent().unwrap();
    extras(manifest, bin);
    let dir = tempfile::tempdir().unwrap();
    let deb = dir.path().join("claro.deb");
    run(Command::new("cargo-deb")
        .args([
            "--no-build",
            "--profile",
            "dev",
            "--no-strip",
            "--fast",
            "-o",
        ])
        .arg(&deb)
        .current_dir(manifest)
        .env("CARGO_TARGET_DIR", target));
    let out = run(Command::new("bash")
        .arg(manifest.join("packaging/deb/try.sh"))
        .arg(&deb));
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        said.contains("ok: unpacked, checked, served a job (42)"),
        "{said}"
    );

    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return common::skip(TEST, "root", "installing the package for real needs root");
    }
    if Path::new("/etc/claro").exists() || found("claro", "--version") {
        // Never on a machine where claro is installed or configured.
        return common::skip(
            TEST,
            "clean-machine",
            "claro is installed or /etc/claro exists here",
        );
    }
    let out = run(Command::new("bash")
        .arg(manifest.join("packaging/deb/try-install.sh"))
        .arg(&deb));
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        said.contains("ok: installed, three servers as user claro took a job (42)"),
        "{said}"
    );
    assert!(!Path::new("/etc/claro").exists() && !Path::new("/usr/bin/claro").exists());
}
