//! `strata lazy-server`: serves LAZY's session for its keeper, `strata
//! lazy-daemon` (`cmd/lazy_daemon.rs`), which started it with the session's
//! /dev/fuse fd and journal. A first server answers the kernel's INIT; a
//! successor of one that died takes the session over from the journal
//! (docs/lazy-pulls.md, "Hand-over"). It exits once the kernel ends the
//! session, and never unmounts LAZY: the keeper owns the mount point.

use std::time::Duration;

use anyhow::Context;
use strata_lazy::LazyDevice;

use super::lazy::lazy_dir;
use super::lazy_daemon::warm_up_network;
use crate::config::Config;

#[derive(clap::Args)]
pub struct Args {
    /// The session's /dev/fuse fd, inherited from the keeper.
    #[arg(long)]
    fuse_fd: i32,
    /// The session journal's fd, inherited from the keeper.
    #[arg(long)]
    journal_fd: i32,
    /// The connection's number under /sys/fs/fuse/connections.
    #[arg(long)]
    connection: u32,
}

pub fn run(config: &Config, args: Args) -> anyhow::Result<()> {
    // A panic on any thread ends the process by a signal, which the keeper
    // answers with a successor: a FUSE thread that died alone would leave
    // its request unanswered, and fuser's session would end as if LAZY
    // had been unmounted.
    let report = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        report(info);
        std::process::abort();
    }));
    anyhow::ensure!(
        args.fuse_fd != args.journal_fd,
        "--fuse-fd and --journal-fd name the same fd ({})",
        args.fuse_fd
    );
    let fuse = strata_sys::take_inherited_fd(args.fuse_fd).context("the keeper's /dev/fuse fd")?;
    let journal = strata_sys::take_inherited_fd(args.journal_fd).context("the keeper's session journal")?;
    let store = config.open_store()?;
    warm_up_network();
    let device = LazyDevice::from_parts(fuse, args.connection, lazy_dir(&store));
    let served = super::lazy::serve(config, &store, device, journal)?;
    while !served.session_ended() {
        std::thread::sleep(Duration::from_millis(200));
    }
    tracing::info!("LAZY's session ended; strata lazy-server exits");
    Ok(())
}
