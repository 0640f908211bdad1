//! `pagehop resolve`: ends a switchover left in doubt. When the link
//! failed between the source's `Commit` and the destination's `Done`,
//! neither side knows what the other saw, so both hold their copy stopped
//! and say so; the operator looks at both reports and runs this on each
//! host: `--run` where the copy is to live, `--kill` where it is not.
use clap::Args;
use pagehop::sys::process::Process;

#[derive(Args)]
pub struct ResolveArgs {
    /// The held process (the root of a held tree), as a report named it.
    #[arg(long)]
    pid: i32,
    /// Let this host's copy run: SIGCONT to the process and every process
    /// below it.
    #[arg(long, conflicts_with = "kill", required_unless_present = "kill")]
    run: bool,
    /// End this host's copy: SIGKILL to the process and every process below it.
    #[arg(long)]
    kill: bool,
}

pub fn run(args: ResolveArgs) -> anyhow::Result<()> {
    let root = Process::open(args.pid)
        .map_err(|e| anyhow::anyhow!("no process with pid {}: {e}", args.pid))?;
    // Only a held copy is resolved: a running process under that pid is
    // not one a report named.
    let state = root.state()?;
    if state != 'T' {
        anyhow::bail!(
            "process {} is not held stopped (state {state}): nothing to resolve",
            args.pid
        );
    }
    let (sig, verb) = if args.run {
        (libc::SIGCONT, "continued")
    } else {
        (libc::SIGKILL, "killed")
    };
    let reached = pagehop::dest::tree::signal_tree(&root, sig).len();
    eprintln!(
        "pagehop: process {} and {} below it {verb}",
        args.pid,
        reached.saturating_sub(1)
    );
    Ok(())
}
