//! Layer imports running ahead of containerd's Prepares: a queue served by
//! a fixed number of workers (the asked-for layer jumps the queue), and one
//! slot per chain ID that holds the result until a Prepare claims it.
//! Results nobody claims are dropped after a while, with their staged
//! objects.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use strata_snapshotter::FetchedLayer;

/// A finished import, or why it failed.
pub type Outcome = Result<FetchedLayer, String>;

type Work = Box<dyn FnOnce() -> Outcome + Send>;

enum State {
    Queued,
    Running,
    Done(Box<Outcome>, Instant),
    /// Another Prepare took the result.
    Taken,
}

struct Slot {
    state: Mutex<State>,
    changed: Condvar,
}

#[derive(Default)]
struct Table {
    slots: HashMap<String, Arc<Slot>>,
    queue: VecDeque<(String, Work)>,
}

pub struct Jobs {
    table: Mutex<Table>,
    queued: Condvar,
    keep_unclaimed: Duration,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Jobs {
    /// Starts `workers` import threads.
    pub fn start(workers: usize, keep_unclaimed: Duration) -> Arc<Jobs> {
        let jobs = Arc::new(Jobs {
            table: Mutex::new(Table::default()),
            queued: Condvar::new(),
            keep_unclaimed,
        });
        for n in 0..workers.max(1) {
            let jobs = Arc::clone(&jobs);
            let spawned = std::thread::Builder::new()
                .name(format!("strata-fetch-{n}"))
                .spawn(move || jobs.serve());
            if let Err(e) = spawned {
                tracing::error!("starting a layer fetch worker: {e}");
            }
        }
        jobs
    }

    fn serve(&self) {
        loop {
            let (chain_id, work, slot) = {
                let mut table = lock(&self.table);
                let (chain_id, work) = loop {
                    match table.queue.pop_front() {
                        Some(job) => break job,
                        None => table = self.queued.wait(table).unwrap_or_else(|e| e.into_inner()),
                    }
                };
                let Some(slot) = table.slots.get(&chain_id).cloned() else {
                    continue;
                };
                (chain_id, work, slot)
            };
            *lock(&slot.state) = State::Running;
            let started = Instant::now();
            let outcome = work();
            tracing::debug!(
                chain_id,
                ok = outcome.is_ok(),
                ms = started.elapsed().as_millis(),
                "layer import finished"
            );
            *lock(&slot.state) = State::Done(Box::new(outcome), Instant::now());
            slot.changed.notify_all();
        }
    }

    /// Queues `work` for `chain_id` unless it is queued, running or done
    /// already. `first` puts it (or moves it) to the front.
    pub fn submit(&self, chain_id: &str, first: bool, work: impl FnOnce() -> Outcome + Send + 'static) {
        let mut table = lock(&self.table);
        self.expire(&mut table);
        if table.slots.contains_key(chain_id) {
            if first {
                if let Some(at) = table.queue.iter().position(|(c, _)| c == chain_id) {
                    if let Some(job) = table.queue.remove(at) {
                        table.queue.push_front(job);
                    }
                }
            }
            return;
        }
        table.slots.insert(
            chain_id.to_owned(),
            Arc::new(Slot {
                state: Mutex::new(State::Queued),
                changed: Condvar::new(),
            }),
        );
        let job = (chain_id.to_owned(), Box::new(work) as Work);
        if first {
            table.queue.push_front(job);
        } else {
            table.queue.push_back(job);
        }
        drop(table);
        self.queued.notify_one();
    }

    /// Waits for `chain_id`'s import and takes its result; `None` when
    /// nothing was submitted for it.
    pub fn claim(&self, chain_id: &str) -> Option<Outcome> {
        let slot = lock(&self.table).slots.get(chain_id).cloned()?;
        let mut state = lock(&slot.state);
        while matches!(&*state, State::Queued | State::Running) {
            state = slot.changed.wait(state).unwrap_or_else(|e| e.into_inner());
        }
        let outcome = match std::mem::replace(&mut *state, State::Taken) {
            State::Done(outcome, _) => *outcome,
            _ => Err(format!("another Prepare took the import of {chain_id}")),
        };
        drop(state);
        let mut table = lock(&self.table);
        if table.slots.get(chain_id).is_some_and(|s| Arc::ptr_eq(s, &slot)) {
            table.slots.remove(chain_id);
        }
        Some(outcome)
    }

    /// Drops results nobody claimed in time.
    fn expire(&self, table: &mut Table) {
        let keep = self.keep_unclaimed;
        table.slots.retain(|chain_id, slot| {
            let stale = matches!(&*lock(&slot.state), State::Done(_, at) if at.elapsed() > keep);
            if stale {
                tracing::info!(chain_id, "dropping a prefetched layer nobody asked for");
            }
            !stale
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};

    /// A job's outcome, recorded in `order` when it runs.
    fn job(order: &Arc<Mutex<Vec<String>>>, name: &str, gate: &Arc<AtomicBool>) -> impl FnOnce() -> Outcome + Send {
        let (order, name, gate) = (Arc::clone(order), name.to_owned(), Arc::clone(gate));
        move || {
            while !gate.load(Ordering::Acquire) {
                std::thread::sleep(Duration::from_millis(1));
            }
            order.lock().unwrap().push(name.clone());
            Err(format!("{name} ran"))
        }
    }

    #[test]
    fn the_asked_for_layer_jumps_the_queue_and_is_claimed_once() {
        let jobs = Jobs::start(1, Duration::from_secs(60));
        let order = Arc::new(Mutex::new(Vec::new()));
        let gate = Arc::new(AtomicBool::new(false));
        // The one worker is held on "a" while the others queue.
        jobs.submit("a", true, job(&order, "a", &gate));
        std::thread::sleep(Duration::from_millis(50));
        for name in ["b", "c", "d"] {
            jobs.submit(name, false, job(&order, name, &gate));
        }
        jobs.submit("d", true, job(&order, "never", &gate));
        gate.store(true, Ordering::Release);
        assert_eq!(jobs.claim("d").unwrap().err().unwrap(), "d ran");
        assert_eq!(jobs.claim("b").unwrap().err().unwrap(), "b ran");
        assert!(jobs.claim("d").is_none(), "a claimed result is gone");
        assert!(jobs.claim("zzz").is_none());
        assert_eq!(order.lock().unwrap()[..2], ["a".to_owned(), "d".to_owned()]);
    }

    #[test]
    fn unclaimed_results_expire() {
        let jobs = Jobs::start(1, Duration::from_millis(10));
        let order = Arc::new(Mutex::new(Vec::new()));
        let gate = Arc::new(AtomicBool::new(true));
        jobs.submit("a", true, job(&order, "a", &gate));
        while order.lock().unwrap().is_empty() {
            std::thread::sleep(Duration::from_millis(1));
        }
        std::thread::sleep(Duration::from_millis(50));
        // Any submit drops what waited too long.
        jobs.submit("b", false, job(&order, "b", &gate));
        assert!(jobs.claim("a").is_none());
        assert!(jobs.claim("b").is_some());
    }
}
