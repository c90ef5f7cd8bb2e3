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
    // fs-verity is the store's filesystem's answer: tried only in a store
    // that can be written, so that version changes nothing else.
    let writable = matches!(
        strata_store::probe(&config.root),
        Ok(strata_store::StoreState::Store {
            supported: true,
            read_only: false,
            ..
        })
    );
    let store = writable.then(|| config.open_store().ok()).flatten();
    match crate::kernel::offered(store.as_ref()) {
        Ok(offered) => {
            println!("kernel offers: {}", offered_text(&offered, store.is_some()));
            match crate::kernel::ladder(config, &offered) {
                Ok(ladder) => println!("kernel ladder: {ladder}"),
                Err(e) => println!("kernel ladder: none ({e:#})"),
            }
        }
        Err(e) => println!("kernel offers: unknown ({e:#})"),
    }
    println!("lazy pulls: {}", lazy_text(config));
    println!("CRI pulls: {}", cri_text(config));
    // How a size label is enforced in each place a scratch may go.
    match config.scratch_policy() {
        Ok(policy) => {
            for (place, plan) in strata_snapshotter::scratch_plans(&config.root, &policy) {
                let plan = plan.map_or_else(
                    |e| format!("unknown: {e}"),
                    |p| match p.mechanism.statfs_shows_size() {
                        true => p.to_string(),
                        false => format!("{p}; df in a container shows the filesystem, not the limit"),
                    },
                );
                println!("sized scratch in {}: {plan}", place.display());
            }
        }
        Err(e) => println!("sized scratch: unknown ({e:#})"),
    }
    Ok(())
}

/// `erofs-file loop lowerdir+ :: fs-verity`, with what is missing marked.
fn offered_text(offered: &strata_mount::Offered, verity_probed: bool) -> String {
    let verity = match (verity_probed, offered.verity) {
        (false, _) => "fs-verity:untested(no writable store)",
        (true, true) => "fs-verity",
        (true, false) => "no-fs-verity",
    };
    let mark = |has: bool, yes: &'static str, no: &'static str| if has { yes } else { no };
    [
        mark(offered.erofs, "erofs", "no-erofs"),
        mark(offered.erofs_file, "erofs-from-file", "no-erofs-from-file"),
        mark(offered.loop_devices, "loop-devices", "no-loop-devices"),
        mark(offered.lowers_append, "lowerdir+/datadir+", "no-lowerdir+"),
        mark(offered.lowers_double_colon, "data-only-::", "no-data-only-::"),
        verity,
    ]
    .join(" ")
}

/// How containerd's remote-snapshot fast path imports layers with a TOC.
fn cri_text(config: &Config) -> String {
    if !config.serve.fetch_layers {
        return "containerd fetches and unpacks every layer (serve.fetch_layers = false)".to_owned();
    }
    let mode = config.pull.policy(None).mode;
    match (config.lazy.cri, mode) {
        (false, _) => format!("strata fetches each layer before it is committed (partial pulls: {mode}; lazy.cri off)"),
        (true, strata_image::PartialPulls::Toc) => {
            "lazy where a layer has a TOC and LAZY is served (lazy.cri), else fetched before it is committed".to_owned()
        }
        (true, _) => format!(
            "strata fetches each layer before it is committed (lazy.cri needs partial_pulls = \"toc\", not \"{mode}\")"
        ),
    }
}

/// Whether `strata pull --lazy` pulls lazily here, and how prefetch runs.
fn lazy_text(config: &Config) -> String {
    let dir = config.root.join("lazy");
    let lazy = &config.lazy;
    let prefetch = match (lazy.prefetch, lazy.prefetch_bandwidth) {
        (false, _) => "prefetch off".to_owned(),
        (true, 0) => format!("prefetch {} at once", lazy.prefetch_concurrency),
        (true, rate) => format!("prefetch {} at once, at most {rate} B/s", lazy.prefetch_concurrency),
    };
    if super::lazy::is_served(&dir) {
        return format!(
            "on (LAZY served at {} by strata lazy-daemon; {prefetch})",
            dir.display()
        );
    }
    let fuse = std::fs::read_to_string("/proc/filesystems").is_ok_and(|t| t.lines().any(|l| l.ends_with("\tfuse")));
    if !fuse || !std::path::Path::new("/dev/fuse").exists() {
        return "unavailable (no FUSE: no /dev/fuse or no fuse filesystem); lazy pulls pull whole".to_owned();
    }
    "off until `strata serve` runs (it starts strata lazy-daemon, which needs FUSE passthrough, Linux 6.9+); lazy pulls pull whole meanwhile".to_owned()
}
