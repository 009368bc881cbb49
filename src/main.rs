fn main() {
    std::process::exit(maxlofs::cli::main());
}
