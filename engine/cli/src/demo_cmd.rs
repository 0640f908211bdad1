//! `pagehop demo`: see `pagehop_bench::demo`.
use clap::Args;
use pagehop_bench::demo::{self, DemoOptions};
use pagehop_bench::run::Binaries;

#[derive(Args)]
pub struct DemoArgs {
    /// Workload arena size.
    #[arg(long, default_value_t = 512)]
    size_mib: u64,
    /// Workload write rate (MB/s of distinct pages).
    #[arg(long, default_value_t = 50.0)]
    write_mbps: f64,
    /// Migrate an unmodified redis-server (Debian's) holding --size-mib
    /// with CRIU (`send --criu`) instead, with a client reading through it.
    #[arg(long)]
    redis: bool,
    /// With --redis: pagehop's mode.
    #[arg(long, default_value = "hybrid", requires = "redis")]
    mode: String,
}

pub fn run(args: DemoArgs) -> anyhow::Result<()> {
    let pagehop = std::env::current_exe()?;
    let workload = pagehop.with_file_name("pagehop-workload");
    if args.redis {
        pagehop_bench::demo_redis::run(&pagehop_bench::demo_redis::RedisDemoOptions {
            size_mib: args.size_mib,
            mode: args.mode,
            binaries: Binaries { pagehop, workload },
        })?;
        return Ok(());
    }
    demo::run(&DemoOptions {
        size_mib: args.size_mib,
        write_mbps: args.write_mbps,
        binaries: Binaries { pagehop, workload },
    })?;
    Ok(())
}
