fn main() {
    std::process::exit(claro::cli::main());
}
