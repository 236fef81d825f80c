//! latch-load: the load generator for latch. Parses the command line, runs one scenario on
//! its own tokio runtime, prints the table, writes the JSON report and the SVG plot, and
//! sets the exit status (0 worked, 1 every request failed or too many errors, 2 setup failed).

mod baseline;
mod cli;
mod client;
mod cpu;
mod plot;
mod report;
mod runner;
mod scenarios;

use std::process::ExitCode;

use clap::Parser as _;

use cli::{Cli, Command, Common};
use report::Report;
use scenarios::Ctx;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let common = match &cli.command {
        Command::ServeBaseline(args) => return baseline::serve_main(args),
        Command::IntrospectHot(a) => &a.common,
        Command::IntrospectCold(a) => &a.common,
        Command::Issue(a) => &a.common,
        Command::Mixed(a) => &a.common,
        Command::Revoke(a) => &a.common,
        Command::RevokePropagation(a) => &a.common,
        Command::Baseline(a) => &a.common,
    }
    .clone()
    .resolve();
    if let Err(e) = pin(&common) {
        eprintln!("latch-load: {e}");
        return ExitCode::from(2);
    }
    let threads = common.threads.unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    });
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads.max(1))
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("latch-load: cannot start the runtime: {e}");
            return ExitCode::from(2);
        }
    };
    let result = runtime.block_on(async {
        let ctx = Ctx::new(common.clone(), threads)?;
        match &cli.command {
            Command::IntrospectHot(a) => scenarios::introspect::hot(&ctx, a).await,
            Command::IntrospectCold(a) => scenarios::introspect::cold(&ctx, a).await,
            Command::Issue(a) => scenarios::issue::run(&ctx, a).await,
            Command::Mixed(a) => scenarios::mixed::run(&ctx, a).await,
            Command::Revoke(a) => scenarios::revoke::run(&ctx, a).await,
            Command::RevokePropagation(a) => scenarios::propagation::run(&ctx, a).await,
            Command::Baseline(a) => {
                scenarios::baseline_only(&ctx, a.body_bytes, a.baseline_threads).await
            }
            Command::ServeBaseline(_) => unreachable!("handled above"),
        }
    });
    // Pending connection tasks must not keep the process alive.
    runtime.shutdown_background();
    match result {
        Ok(report) => finish(&report, &common),
        Err(e) => {
            eprintln!("latch-load: {e}");
            ExitCode::from(2)
        }
    }
}

/// --load-cpus pins this process before its runtime starts (its threads inherit the mask);
/// --server-cpus with --target-pid pins the server under test.
fn pin(common: &Common) -> Result<(), String> {
    if let (Some(server), Some(load)) = (&common.server_cpus, &common.load_cpus) {
        if cpu::overlap(&server.0, &load.0) {
            return Err(format!(
                "--server-cpus {server} and --load-cpus {load} share a CPU"
            ));
        }
    }
    if let Some(load) = &common.load_cpus {
        cpu::pin_self(&load.0)?;
    }
    if let (Some(server), Some(pid)) = (&common.server_cpus, common.target_pid) {
        cpu::pin_process(pid, &server.0)?;
    }
    Ok(())
}

/// Prints and writes the report; decides the exit status.
fn finish(report: &Report, common: &Common) -> ExitCode {
    print!("{}", report.table());
    let mut status = ExitCode::SUCCESS;
    if let Some(path) = &common.json {
        if let Err(e) = report.write_json(path) {
            eprintln!("latch-load: {e}");
            status = ExitCode::from(2);
        }
    }
    if let Some(path) = &common.plot {
        if let Err(e) = plot::write(report, path) {
            eprintln!("latch-load: {e}");
            status = ExitCode::from(2);
        }
    }
    if report.ok_requests == 0 {
        eprintln!(
            "latch-load: no successful request in the measured window ({} failed)",
            report.failed_requests
        );
        return ExitCode::FAILURE;
    }
    if let Some(max) = common.max_errors {
        if report.failed_requests > max {
            eprintln!(
                "latch-load: {} failed requests, more than --max-errors {max}",
                report.failed_requests
            );
            return ExitCode::FAILURE;
        }
    }
    status
}
