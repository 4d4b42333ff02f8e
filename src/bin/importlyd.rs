//! The daemon and its operator commands; everything lives in the library's `cli` module.

fn main() -> std::process::ExitCode {
    importlyd::cli::main()
}
