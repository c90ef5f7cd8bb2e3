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

/// One progress line, at most `width - 1` columns (so a terminal never
/// wraps it): an empty bar and no byte counts until the sizes are known.
pub fn render(bytes: u64, total: u64, summary: &str, width: usize) -> String {
    const BAR: u64 = 20;
    let line = match bytes.min(total).saturating_mul(BAR).checked_div(total) {
        None => format!("[{}] resolving... {summary}", " ".repeat(20)),
        Some(filled) => {
            let filled = usize::try_from(filled).unwrap_or(20);
            format!(
                "[{}{}] {}/{} {summary}",
                "#".repeat(filled),
                " ".repeat(20 - filled),
                human(bytes),
                human(total)
            )
        }
    };
    line.chars().take(width.saturating_sub(1)).collect()
}

/// A plain log line, for when stderr is no terminal.
pub fn log_line(bytes: u64, total: u64, summary: &str) -> String {
    format!("pull: {} of {}, {summary}", human(bytes), human(total))
}

/// Columns of the terminal (`COLUMNS`, else 80).
fn columns() -> usize {
    std::env::var("COLUMNS")
        .ok()
        .and_then(|c| c.parse().ok())
        .filter(|&c| c > 0)
        .unwrap_or(80)
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
            let terminal = std::io::stderr().is_terminal();
            let mut waited = Duration::ZERO;
            while !flag.load(Ordering::Relaxed) {
                let (bytes, total) = (Progress::get(&progress.bytes), Progress::get(&progress.bytes_total));
                if terminal {
                    eprint!("\r{}\x1b[K", render(bytes, total, &summary(&progress), columns()));
                } else if waited >= Duration::from_secs(5) {
                    waited = Duration::ZERO;
                    eprintln!("{}", log_line(bytes, total, &summary(&progress)));
                }
                // Parked, not slept: dropping the ticker wakes it at once.
                std::thread::park_timeout(Duration::from_millis(100));
                waited += Duration::from_millis(100);
            }
            if terminal {
                eprint!("\r\x1b[K");
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
            t.thread().unpark();
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_starts_empty_and_fits_80_columns() {
        let summary = "layers 0/5, 0 files, 0 new objects, 0 dedup hits";
        let start = render(0, 0, summary, 80);
        assert!(start.starts_with(&format!("[{}]", " ".repeat(20))), "{start}");
        assert!(!start.contains("0 B/0 B"), "{start}");
        let long = "x".repeat(200);
        for (bytes, total) in [(0, 0), (0, 10), (5 << 20, 10 << 20), (20, 10)] {
            let line = render(bytes, total, &long, 80);
            assert!(line.chars().count() < 80, "{line}");
        }
        let half = render(5 << 20, 10 << 20, "s", 80);
        assert!(
            half.starts_with(&format!("[{}{}] 5.0 MiB/10.0 MiB", "#".repeat(10), " ".repeat(10))),
            "{half}"
        );
        assert!(render(20, 10, "s", 80).starts_with(&format!("[{}]", "#".repeat(20))));
        assert_eq!(log_line(3 << 20, 1 << 30, "s"), "pull: 3.0 MiB of 1.0 GiB, s");
    }
}
