//! Logging setup and the pull progress display: a bar on a terminal, plain
//! log lines otherwise.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use strata_image::Progress;

pub fn init_logging(level: &str) {
    let filter =
        tracing_subscriber::EnvFilter::try_new(level).unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}

fn summary(p: &Progress) -> String {
    format!(
        "layers {}/{}, {} files, {} new objects, {} dedup hits",
        Progress::get(&p.layers_done),
        Progress::get(&p.layers_total),
        Progress::get(&p.files),
        Progress::get(&p.new_objects),
        Progress::get(&p.dedup_hits),
    )
}

/// Draws `progress` until the returned guard is dropped.
pub struct Ticker {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Ticker {
    pub fn start(progress: Arc<Progress>) -> Ticker {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            if std::io::stderr().is_terminal() {
                let bar = indicatif::ProgressBar::new(0);
                bar.set_style(
                    indicatif::ProgressStyle::with_template("{bar:30} {bytes}/{total_bytes} {bytes_per_sec} {msg}")
                        .expect("valid template"),
                );
                while !flag.load(Ordering::Relaxed) {
                    bar.set_length(Progress::get(&progress.bytes_total));
                    bar.set_position(Progress::get(&progress.bytes));
                    bar.set_message(summary(&progress));
                    std::thread::sleep(Duration::from_millis(100));
                }
                bar.finish_and_clear();
            } else {
                let mut waited = Duration::ZERO;
                while !flag.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(100));
                    waited += Duration::from_millis(100);
                    if waited >= Duration::from_secs(5) {
                        waited = Duration::ZERO;
                        eprintln!(
                            "pull: {} of {} bytes, {}",
                            Progress::get(&progress.bytes),
                            Progress::get(&progress.bytes_total),
                            summary(&progress)
                        );
                    }
                }
            }
        });
        Ticker {
            stop,
            thread: Some(thread),
        }
    }

    pub fn line(progress: &Progress) -> String {
        summary(progress)
    }
}

impl Drop for Ticker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

pub fn human(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}
