//! `portcullis` binary: all the work is in the library; see `cli.rs`.
#![forbid(unsafe_code)]

fn main() -> std::process::ExitCode {
    portcullis::cli::main()
}
