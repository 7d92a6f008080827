//! Hotfolder file names and templates: the placeholder values, expansion,
//! patterns and free names.

use claro::work::hotfolder::{
    expand, free_name, shell_danger, split_template, Action, FileValues, Hotfolder, Patterns,
};

use crate::harness::{run, text};

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
