//! The `sqlite-tde bench` report as a cargo bench target:
//! `cargo bench --bench report -- [--quick] [--json] [--no-cipher] [--no-sql] [--no-mixed] [--no-open]
//! [--rows N] [--rounds N]` (same measurements as the CLI command; the extra switches narrow a
//! run down for profiling).

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let quick = args.iter().any(|a| a == "--quick");
    let json = args.iter().any(|a| a == "--json");
    let mut opts = if quick { sqlite_tde::bench::Options::quick() } else { sqlite_tde::bench::Options::full() };
    opts.progress = true;
    opts.cipher = !args.iter().any(|a| a == "--no-cipher");
    opts.sql = !args.iter().any(|a| a == "--no-sql");
    opts.mixed = !args.iter().any(|a| a == "--no-mixed");
    opts.open = !args.iter().any(|a| a == "--no-open");
    let value =
        |name: &str| args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).and_then(|v| v.parse().ok());
    opts.rows = value("--rows");
    opts.rounds = value("--rounds");
    match sqlite_tde::bench::run(&opts) {
        Ok(r) if json => println!("{}", serde_json::to_string_pretty(&r.to_json()).unwrap()),
        Ok(r) => print!("{}", r.table()),
        Err(e) => {
            eprintln!("bench failed: {e}");
            std::process::exit(1);
        }
    }
}
