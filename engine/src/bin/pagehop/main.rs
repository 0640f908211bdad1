//! The `pagehop` command line.
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
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Track(args) => track_cmd::run(args),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!(
                "pagehop: error: {}",
                pagehop::track::error_chain(err.as_ref())
            );
            std::process::ExitCode::FAILURE
        }
    }
}
