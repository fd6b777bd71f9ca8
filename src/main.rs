//! The `sqlite-tde` command: see `sqlite_tde::cli`.

fn main() -> std::process::ExitCode {
    sqlite_tde::cli::main()
}
