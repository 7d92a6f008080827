//! Hotfolder templates, placeholder values, patterns and free names from
//! one text, and the address parser.
#![no_main]

use claro::work::hotfolder::{
    expand, free_name, shell_danger, split_template, FileValues, Patterns,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    let _ = claro::config::Host::parse(text, 7900);
    let values = FileValues::new(text, "/out");
    if let Ok(argv) = split_template(text) {
        let _ = shell_danger(&argv);
        assert_eq!(expand(&argv, &values).len(), argv.len());
    }
    if let Ok(p) = Patterns::new(&[text.to_string()], &[]) {
        let _ = p.takes(text);
    }
    let _ = free_name(text, &mut |n| n == text);
});
