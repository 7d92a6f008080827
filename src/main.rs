fn main() {
    // A script worker is started by its instance (node::work::sandbox),
    // before any argument parsing: it is not a command of the CLI.
    if std::env::args_os().nth(1).as_deref() == Some(claro::node::SCRIPT_WORKER_ARG.as_ref()) {
        std::process::exit(claro::node::script_worker());
    }
    std::process::exit(claro::cli::main());
}
