//! unrm: makes `rm` undoable for every file some process still holds.
//!
//! The data path, one module per step:
//! `probe` (eBPF in the kernel) → `ingest` (ring buffer to events) →
//! `holders` (the kernel's truth about who holds what) → `pins` (unrm's own
//! reference, within the descriptor `budget`) → `daemon` (decisions) →
//! `copy`/`store` (captured content) → `index` (SQLite) → `access` (who may
//! see what) → `api` (the socket) → `cli` (what the user types).

mod access;
mod anchors;
mod api;
mod budget;
mod cgroups;
mod cli;
mod clock;
mod copy;
mod daemon;
mod events;
mod handle;
mod holders;
mod index;
mod ingest;
mod metrics;
mod mounts;
mod notify;
mod pins;
mod policy;
mod probe;
mod protect;
mod record;
mod store;
mod xattrs;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let args = match cli::Cli::try_parse() {
        Ok(args) => args,
        Err(err) if err.use_stderr() => {
            // One line: clap's first paragraph (a list of what is missing
            // follows its first line), without its "error: " prefix.
            let text = err.to_string();
            let first: Vec<&str> = text.lines().take_while(|l| !l.trim().is_empty()).map(str::trim).collect();
            let first = if first.is_empty() { "bad arguments".to_owned() } else { first.join(" ") };
            eprintln!("unrm: {}", first.trim_start_matches("error: "));
            return ExitCode::from(2);
        }
        Err(err) => {
            let _ = err.print();
            return ExitCode::SUCCESS;
        }
    };
    daemon::logs::init();
    match cli::run(args) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("unrm: {}", one_line(&err));
            ExitCode::FAILURE
        }
    }
}

/// An error and its causes on one line, with no control characters (a
/// path in it may carry any).
fn one_line(err: &anyhow::Error) -> String {
    cli::clean(&format!("{err:#}").replace('\n', " ")).into_owned()
}
