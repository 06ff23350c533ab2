//! The `tagd` binary: everything lives in the library; see `tagd::cli`.

fn main() -> std::process::ExitCode {
    tagd::cli::main()
}
