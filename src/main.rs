fn main() {
    std::process::exit(keel::cli::main());
}
