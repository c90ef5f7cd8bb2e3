//! `strata`: the command-line tool. Each verb lives in `cmd/` as one thin
//! file; the work is done by the library crates.

mod cmd;
mod config;
mod draw;
mod kernel;
mod metrics;
mod store_usage;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Content-addressed container image store with composefs EROFS images.
#[derive(Parser)]
#[command(name = "strata", version, about, propagate_version = true)]
struct Cli {
    /// Store root (default: from the config, else /var/lib/strata).
    #[arg(long, global = true, env = "STRATA_ROOT")]
    root: Option<PathBuf>,
    /// Config file (default: /etc/strata/config.toml, if it exists; one
    /// named here must exist).
    #[arg(long, global = true, env = "STRATA_CONFIG")]
    config: Option<PathBuf>,
    /// Log level or filter (error, warn, info, debug, trace).
    #[arg(long, global = true, env = "STRATA_LOG")]
    log_level: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve containerd's snapshots API on a unix socket (a proxy snapshotter).
    Serve(cmd::serve::Args),
    /// Pull an image from a registry (HOST[:PORT]/NAME[:TAG|@DIGEST]) or an OCI layout (oci:DIR[:TAG]).
    Pull(cmd::pull::Args),
    /// Convert an image's layers to eStargz or zstd:chunked, from and to a registry or an OCI layout.
    Convert(cmd::convert::Args),
    /// List images.
    Images(cmd::images::Args),
    /// Remove an image name (its files go at the next gc).
    Rmi(cmd::rmi::Args),
    /// Mount an image on a directory.
    Mount(cmd::mount::Args),
    /// Unmount what `strata mount` mounted.
    Umount(cmd::umount::Args),
    /// Show logical and stored bytes and the dedup ratio.
    Df(cmd::df::Args),
    /// Remove objects and images nothing references.
    Gc(cmd::gc::Args),
    /// Verify objects and images; optionally repair.
    Fsck(cmd::fsck::Args),
    /// Show version and the kernel features in use.
    Version(cmd::version::Args),
    /// Keep LAZY (the missing files of lazily pulled images) mounted and served; started by `strata serve`.
    #[command(hide = true)]
    LazyDaemon,
    /// Serve LAZY's session; started by `strata lazy-daemon`.
    #[command(hide = true)]
    LazyServer(cmd::lazy_server::Args),
}

/// Exit code of a usage error (bad flags, a malformed reference, a bad config).
const USAGE: u8 = 2;

/// Marks an error as the user's input being wrong: exit code 2.
#[derive(Debug)]
pub struct UsageError(pub String);

impl std::fmt::Display for UsageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}

/// `anyhow::Error` -> a usage error, keeping its message.
pub fn usage(e: impl std::fmt::Display) -> anyhow::Error {
    UsageError(e.to_string()).into()
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = match config::Config::load(cli.config.as_deref(), cli.root.clone(), cli.log_level.clone()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("strata: {}", message(&e));
            return ExitCode::from(USAGE);
        }
    };
    draw::init_logging(&config.log_level);
    let result = match cli.command {
        Command::Serve(args) => cmd::serve::run(&config, cli.config.as_deref(), args),
        Command::Pull(args) => cmd::pull::run(&config, args),
        Command::Convert(args) => cmd::convert::run(&config, args),
        Command::Images(args) => cmd::images::run(&config, args),
        Command::Rmi(args) => cmd::rmi::run(&config, args),
        Command::Mount(args) => cmd::mount::run(&config, args),
        Command::Umount(args) => cmd::umount::run(&config, args),
        Command::Df(args) => cmd::df::run(&config, args),
        Command::Gc(args) => cmd::gc::run(&config, args),
        Command::Fsck(args) => cmd::fsck::run(&config, args),
        Command::Version(args) => cmd::version::run(&config, args),
        Command::LazyDaemon => cmd::lazy_daemon::run(&config, cli.config.as_deref()),
        Command::LazyServer(args) => cmd::lazy_server::run(&config, args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("strata: {}", message(&e));
            if disk_full(&e) {
                eprintln!("strata: the filesystem holding the store is full: free space or run `strata gc`");
            }
            if e.chain().any(|c| c.is::<UsageError>()) {
                ExitCode::from(USAGE)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

/// The error and its causes joined by ": ", leaving out a cause whose text
/// is already there (library errors often print their source too), so an
/// OS error appears once.
fn message(e: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in e.chain() {
        let part = cause.to_string();
        if text.contains(&part) {
            continue;
        }
        if !text.is_empty() {
            text.push_str(": ");
        }
        text.push_str(&part);
    }
    text
}

/// True when any cause in the chain is ENOSPC.
fn disk_full(e: &anyhow::Error) -> bool {
    e.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.raw_os_error() == Some(28))
    })
}
