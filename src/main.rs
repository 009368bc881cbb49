#![deny(clippy::undocumented_unsafe_blocks)]

fn main() {
    std::process::exit(maxlofs::cli::main());
}
