//! The `pagehop` command line.
mod bench_cmd;
mod choices;
mod demo_cmd;
mod logger;
mod migrate_cmd;
mod resolve_cmd;
mod track_cmd;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "pagehop",
    version,
    about = "Live migration of the memory of running Linux processes"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Watch a running process's writes and address space: dirty rate, hot pages, events.
    Track(track_cmd::TrackArgs),
    /// Live-migrate a running process's memory to a `pagehop recv` (pre-copy).
    Send(migrate_cmd::SendArgs),
    /// Receive a migration and start the destination process (or write an image).
    Recv(migrate_cmd::RecvArgs),
    /// End a switchover left in doubt: let this host's held copy run, or kill it.
    Resolve(resolve_cmd::ResolveArgs),
    /// Live-migrate the built-in workload between two network namespaces here.
    Demo(demo_cmd::DemoArgs),
    /// Run migration experiments (scenario files or the built-in set) with their baselines; write results, CSV, plots.
    Bench(bench_cmd::BenchArgs),
}

/// The exit status of a switchover left in doubt (see `pagehop resolve`).
const IN_DOUBT: u8 = 3;

/// Writes `value` as one line of JSON (the `--json` output of every command).
fn write_json_line(
    out: &mut impl std::io::Write,
    value: &impl serde::Serialize,
) -> anyhow::Result<()> {
    serde_json::to_writer(&mut *out, value)?;
    writeln!(out)?;
    Ok(())
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    logger::init(match &cli.command {
        Command::Track(_) => "track",
        Command::Send(_) => "send",
        Command::Recv(_) => "recv",
        Command::Resolve(_) => "resolve",
        Command::Demo(_) => "demo",
        Command::Bench(_) => "bench",
    });
    let result = match cli.command {
        Command::Track(args) => track_cmd::run(args),
        Command::Send(args) => migrate_cmd::run_send(args),
        Command::Recv(args) => migrate_cmd::run_recv(args),
        Command::Resolve(args) => resolve_cmd::run(args),
        Command::Demo(args) => demo_cmd::run(args),
        Command::Bench(args) => bench_cmd::run(args),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!(
                "pagehop: error: {}",
                pagehop::mem::error_chain(err.as_ref())
            );
            if migrate_cmd::in_doubt(&err) {
                std::process::ExitCode::from(IN_DOUBT)
            } else {
                std::process::ExitCode::FAILURE
            }
        }
    }
}
