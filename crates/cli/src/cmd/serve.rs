use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context};
use strata_grpc::SocketOptions;
use strata_snapshotter::{LayerFetcher, Snapshotter};

use crate::config::Config;
use crate::metrics::{self, Metrics};

#[derive(clap::Args)]
pub struct Args {
    /// Unix socket to serve on (default: from the config, else /run/strata/strata.sock).
    #[arg(long)]
    address: Option<PathBuf>,
}

pub fn run(config: &Config, config_path: Option<&Path>, args: Args) -> anyhow::Result<()> {
    let socket = SocketOptions {
        path: args.address.unwrap_or_else(|| config.serve.socket.clone()),
        group: config.serve.socket_group.as_deref().map(group_id).transpose()?,
    };
    if config.serve.fetch_layers {
        super::lazy_daemon::warm_up_network();
    }
    let policy = config.scratch_policy()?;
    let store = config.open_store()?;
    let kernel = crate::kernel::mounter(config, &store)?;
    tracing::info!(ladder = %kernel.ladder, "kernel rungs");
    // LAZY lives in a process of its own, which outlives serve for as
    // long as overlays use it (cmd/lazy_daemon.rs).
    let _lazy = super::lazy_daemon::ensure(config, config_path, &store)?;
    let mut snapshotter =
        Snapshotter::open_with_mounter(store.clone(), policy, Arc::new(kernel)).context("opening the snapshotter")?;
    let mut metrics = config.metrics.address.map(|_| {
        let mut metrics = Metrics::new(store.clone());
        metrics.add_kernel_ladder(kernel.ladder);
        metrics
    });
    if config.serve.fetch_layers {
        let received = Arc::new(strata_image::Received::default());
        let lazy = lazy_cri_pulls(config, &store);
        let mut fetcher = fetcher(config, store.clone(), Arc::clone(&received))?;
        if lazy {
            let dir = store.lazy_path();
            fetcher = fetcher.with_lazy(Box::new(move || super::lazy::is_served(&dir)));
        }
        let fetcher = Arc::new(fetcher);
        let mut layer_fetcher: Arc<dyn LayerFetcher> = fetcher.clone();
        if let Some(metrics) = &mut metrics {
            metrics.add_fetcher_totals(fetcher.totals(), received);
            layer_fetcher = metrics.counting_fetcher(layer_fetcher);
        }
        snapshotter = snapshotter.with_fetcher(layer_fetcher);
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async {
        let stop = stop_signal()?;
        let mut observer = None;
        if let (Some(address), Some(metrics)) = (config.metrics.address, metrics) {
            let listener = metrics::http::bind(address).await?;
            eprintln!("strata: serving metrics on http://{}/metrics", listener.local_addr()?);
            observer = Some(metrics.call_observer());
            tokio::spawn(metrics::http::serve(listener, Arc::new(metrics)));
        }
        // Shown at any log level: the one thing an operator needs to know.
        eprintln!("strata: serving containerd snapshots on {}", socket.path.display());
        strata_grpc::serve(
            Arc::new(snapshotter),
            &socket,
            observer,
            || notify(sd_notify::NotifyState::Ready),
            stop,
        )
        .await?;
        anyhow::Ok(())
    })
}

/// The remote-snapshot fetcher: layers of CRI pulls, fetched with the
/// registry configuration `strata pull` uses; the bytes its sources
/// receive are counted into `received`.
fn fetcher(
    config: &Config,
    store: strata_store::Store,
    received: Arc<strata_image::Received>,
) -> anyhow::Result<strata_fetcher::Fetcher> {
    let registry = config.registry_config()?;
    let sources = move |reference: &strata_image::RegistryRef| -> Result<Box<dyn strata_image::BlobSource>, strata_image::ImportError> {
        let source = strata_image::source::RegistrySource::new(reference.clone(), Arc::clone(&registry))?
            .with_received(Arc::clone(&received));
        Ok(Box::new(source))
    };
    let options = strata_fetcher::FetcherOptions {
        limits: config.limits(),
        workers: config.limits.parallel_layers.max(1),
        platform: strata_image::Platform::host(),
        keep_unclaimed: std::time::Duration::from_secs(120),
        partial: config.pull.policy(None),
    };
    strata_fetcher::Fetcher::new(store, Box::new(sources), options).context("starting the layer fetch workers")
}

/// Whether CRI pulls may import layers lazily: `[lazy] cri`, where the
/// trust model allows it (a lazy layer's diff_id cannot be checked, as in
/// `partial_pulls = "toc"`); each import then asks whether LAZY serves.
fn lazy_cri_pulls(config: &Config, store: &strata_store::Store) -> bool {
    if !config.lazy.cri {
        return false;
    }
    let mode = config.pull.policy(None).mode;
    if mode != strata_image::PartialPulls::Toc {
        tracing::warn!(
            "lazy.cri is on, but pull.partial_pulls is \"{mode}\": CRI pulls fetch every layer before it is committed"
        );
        return false;
    }
    if super::lazy::is_served(&store.lazy_path()) {
        tracing::info!("CRI pulls import layers with a TOC lazily");
    } else {
        tracing::warn!("lazy.cri is on, but no LAZY is served on this store yet (see above): CRI pulls fetch every layer before it is committed until one is");
    }
    true
}

/// Tells systemd (when it started us with `Type=notify`) how serving goes;
/// without `NOTIFY_SOCKET` this does nothing.
fn notify(state: sd_notify::NotifyState<'_>) {
    if let Err(e) = sd_notify::notify(&[state]) {
        tracing::warn!("sd_notify: {e}");
    }
}

/// Resolves when SIGTERM or SIGINT arrives; the server then drains. The
/// handlers are installed at the call, before serve reports ready: a
/// SIGTERM right after READY=1 must drain, not kill.
fn stop_signal() -> anyhow::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("installing a SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing a SIGINT handler")?;
    Ok(async move {
        let name = tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        };
        notify(sd_notify::NotifyState::Stopping);
        tracing::info!("{name}: draining requests in flight");
    })
}

/// A group given by number or by name (looked up in /etc/group).
fn group_id(group: &str) -> anyhow::Result<u32> {
    if let Ok(gid) = group.parse() {
        return Ok(gid);
    }
    let path = Path::new("/etc/group");
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    for line in text.lines() {
        let mut fields = line.split(':');
        if fields.next() == Some(group) {
            if let Some(gid) = fields.nth(1).and_then(|g| g.parse().ok()) {
                return Ok(gid);
            }
        }
    }
    bail!("socket_group {group:?}: no such group")
}
