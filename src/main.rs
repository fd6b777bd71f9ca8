//! The `sqlite-tde` command (feature `cli`): the shell, key and database management, the KMS
//! daemon and the benchmark report, all over the library's public API.
#![deny(unsafe_code)]

mod cli;

fn main() -> std::process::ExitCode {
    cli::main()
}
