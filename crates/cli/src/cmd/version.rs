use crate::config::Config;

#[derive(clap::Args)]
pub struct Args {}

pub fn run(config: &Config, _args: Args) -> anyhow::Result<()> {
    println!("strata {}", env!("CARGO_PKG_VERSION"));
    // What is there, found without creating or changing anything.
    let state = match strata_store::probe(&config.root) {
        Ok(state) => state.to_string(),
        Err(e) => format!("unreadable: {e}"),
    };
    println!("store: {} ({state})", config.root.display());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    println!("kernel: {}", kernel.trim());
    let filesystems = std::fs::read_to_string("/proc/filesystems").unwrap_or_default();
    let has = |fs: &str| filesystems.lines().any(|l| l.split_whitespace().last() == Some(fs));
    println!("erofs: {}", if has("erofs") { "available" } else { "missing" });
    println!("overlay: {}", if has("overlay") { "available" } else { "missing" });
    println!("fs-verity: user-space digests (objects are named by fs-verity digest; kernel enforcement not used)");
    Ok(())
}
