//! Hotfolder file names and templates: the scan of `in/` over names a
//! file system allows (dots, newlines, very long, not UTF-8), the
//! placeholder values, expansion, patterns and free names.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use claro::node::inputs::scan;
use claro::work::hotfolder::{
    expand, free_name, shell_danger, split_template, Action, FileValues, Hotfolder, Patterns,
};
use claro::work::jobs::check_relative;
use rand::Rng as _;

use crate::harness::{run, text, Bytes, Rng};

/// A file name the file system may allow: any bytes but `/` and NUL, up to
/// 300 of them (over 255 the creation fails, and the case is skipped).
fn file_name(rng: &mut Rng) -> Vec<u8> {
    const PIECES: [&[u8]; 10] = [
        b".", b"..", b"...", b"\n", b" ", b"\xff", b"\xc3", b"{input}", b"-rf", b"a.pdf",
    ];
    let parts = if rng.gen_bool(0.1) {
        120
    } else {
        rng.gen_range(1..8)
    };
    let mut name = Vec::new();
    for _ in 0..parts {
        if rng.gen() {
            name.extend(PIECES[rng.gen_range(0..PIECES.len())]);
        } else {
            name.push(rng.gen_range(1..=255u8));
        }
    }
    name.retain(|&b| b != b'/' && b != 0);
    if name.is_empty() || name == b"." || name == b".." {
        name = b"x".to_vec();
    }
    name
}

fn definition() -> Hotfolder {
    let argv = vec![
        "cp".into(),
        "{input}".into(),
        "{output_dir}/{stem}.{ext}".into(),
    ];
    let mut def = Hotfolder::new("fuzz", Action::Command { argv });
    def.ignore.clear();
    def
}

/// What a scan reports is a relative path under `in/` that names a file
/// there, and the placeholder values made of it stay one argument each.
fn check_scan(root: &Path, def: &Hotfolder) {
    let seen = scan(root, def).expect("the scan lists in/");
    let inbox = root.join(&def.name).join("in");
    for s in seen {
        check_relative(&s.path).expect("a scanned path stays under in/");
        assert!(
            inbox.join(&s.path).is_file(),
            "in/{:?} is not a file there",
            s.path
        );
        let values = FileValues::new(&s.path, "/out");
        assert!(!values.name.contains('/'));
        if let Action::Command { argv } = &def.action {
            assert_eq!(expand(argv, &values).len(), argv.len());
        }
    }
}

#[test]
fn scanned_names() {
    run(
        "scanned_names",
        400,
        |rng| {
            (0..rng.gen_range(1..6))
                .map(|_| Bytes(file_name(rng)))
                .collect::<Vec<_>>()
        },
        |names| {
            let root = tempfile::tempdir().unwrap();
            let def = definition();
            let inbox = root.path().join(&def.name).join("in");
            let sub = inbox.join(OsStr::from_bytes(b"sub\xfe dir"));
            std::fs::create_dir_all(&sub).unwrap();
            for (i, name) in names.iter().enumerate() {
                let dir = if i % 2 == 0 { &inbox } else { &sub };
                // A name the file system refuses (too long) is no input.
                let _ = std::fs::write(dir.join(OsStr::from_bytes(&name.0)), b"x");
            }
            check_scan(root.path(), &def);
        },
    );
}

/// A file whose name is not UTF-8 is not taken: its job would name
/// another file (the name with U+FFFD), never find it, fail, and the file
/// would be taken again after every failed job.
#[test]
fn regression_scan_skips_names_that_are_not_utf8() {
    let root = tempfile::tempdir().unwrap();
    let def = definition();
    let inbox = root.path().join(&def.name).join("in");
    std::fs::create_dir_all(&inbox).unwrap();
    std::fs::write(inbox.join(OsStr::from_bytes(b"bad\xff.pdf")), b"x").unwrap();
    std::fs::write(inbox.join("good.pdf"), b"x").unwrap();
    let seen = scan(root.path(), &def).unwrap();
    let paths: Vec<&str> = seen.iter().map(|s| s.path.as_str()).collect();
    assert_eq!(paths, ["good.pdf"]);
}

/// Templates and names from random text: split, checked, expanded, matched.
#[test]
fn templates_and_names() {
    run(
        "templates_and_names",
        20_000,
        |rng| (text(rng), text(rng), text(rng)),
        |(template, name, pattern)| {
            if let Ok(argv) = split_template(template) {
                let _ = shell_danger(&argv);
                let def = Hotfolder::new(name, Action::Command { argv: argv.clone() });
                let _ = def.validate();
                let values = FileValues::new(name, template);
                assert_eq!(expand(&argv, &values).len(), argv.len());
            }
            let values = FileValues::new(name, "/out");
            if !values.ext.is_empty() {
                assert_eq!(format!("{}.{}", values.stem, values.ext), values.name);
            }
            if let Ok(p) = Patterns::new(std::slice::from_ref(pattern), &[]) {
                let _ = (p.takes(name), p.enters(name));
            }
            let taken = [name.clone(), format!("{name} (1)")];
            let free = free_name(name, &mut |n| taken.iter().any(|t| t == n));
            assert!(free.is_some_and(|f| !taken.contains(&f)));
        },
    );
}
