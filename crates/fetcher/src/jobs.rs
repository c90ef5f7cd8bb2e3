//! Layer imports running ahead of containerd's Prepares: a queue served by
//! a fixed number of workers, and one slot per chain ID that holds the
//! result until a Prepare claims it. A Prepare whose layer is still queued
//! runs the import itself rather than wait behind others; results nobody
//! claims are dropped after a while, with their staged objects and the
//! store lock they hold.

use std::collections::{HashMap, VecDeque};
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use strata_snapshotter::FetchedLayer;

/// A finished import, or why it failed.
pub type Outcome = Result<FetchedLayer, String>;

type Work = Box<dyn FnOnce() -> Outcome + Send>;

enum State {
    /// In the queue, with its work.
    Queued(Work),
    Running,
    Done(Box<Outcome>, Instant),
    /// Another Prepare took the result.
    Taken,
}

struct Slot {
    /// The image it belongs to, to drop its jobs together.
    group: String,
    state: Mutex<State>,
    changed: Condvar,
}

#[derive(Default)]
struct Table {
    slots: HashMap<String, Arc<Slot>>,
    queue: VecDeque<String>,
}

pub struct Jobs {
    table: Mutex<Table>,
    queued: Condvar,
    keep_unclaimed: Duration,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Runs an import; a panic in it becomes a failed outcome.
fn run(work: Work) -> Outcome {
    std::panic::catch_unwind(AssertUnwindSafe(work)).unwrap_or_else(|_| Err("the layer import panicked".into()))
}

impl Jobs {
    /// Starts `workers` import threads; at least one must start.
    pub fn start(workers: usize, keep_unclaimed: Duration) -> std::io::Result<Arc<Jobs>> {
        let jobs = Arc::new(Jobs {
            table: Mutex::new(Table::default()),
            queued: Condvar::new(),
            keep_unclaimed,
        });
        for n in 0..workers.max(1) {
            let worker = Arc::clone(&jobs);
            let spawned = std::thread::Builder::new()
                .name(format!("strata-fetch-{n}"))
                .spawn(move || worker.serve());
            if let Err(e) = spawned {
                if n == 0 {
                    return Err(e);
                }
                tracing::warn!("starting layer fetch worker {n}: {e}");
            }
        }
        Ok(jobs)
    }

    fn serve(&self) {
        loop {
            let (chain_id, slot, work) = {
                let mut table = lock(&self.table);
                loop {
                    let expired = self.expire(&mut table);
                    if !expired.is_empty() {
                        // Staged files are unlinked without the table lock.
                        drop(table);
                        drop(expired);
                        table = lock(&self.table);
                        continue;
                    }
                    if let Some(job) = Self::next(&mut table) {
                        break job;
                    }
                    let wait = self.keep_unclaimed.max(Duration::from_millis(100));
                    table = self
                        .queued
                        .wait_timeout(table, wait)
                        .unwrap_or_else(|e| e.into_inner())
                        .0;
                }
            };
            let started = Instant::now();
            let outcome = run(work);
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

    /// The first queued job whose slot still waits for it, now Running.
    fn next(table: &mut Table) -> Option<(String, Arc<Slot>, Work)> {
        while let Some(chain_id) = table.queue.pop_front() {
            let Some(slot) = table.slots.get(&chain_id).cloned() else {
                continue;
            };
            let mut state = lock(&slot.state);
            if let State::Queued(_) = &*state {
                let State::Queued(work) = std::mem::replace(&mut *state, State::Running) else {
                    unreachable!("checked above");
                };
                drop(state);
                return Some((chain_id, slot, work));
            }
        }
        None
    }

    /// Queues `work` for `chain_id` of image `group` unless it is queued,
    /// running or done already; a failed result is replaced. `first`
    /// puts it (or moves it) to the front.
    pub fn submit(&self, group: &str, chain_id: &str, first: bool, work: impl FnOnce() -> Outcome + Send + 'static) {
        let mut table = lock(&self.table);
        let expired = self.expire(&mut table);
        let stale = table.slots.get(chain_id).is_some_and(|slot| {
            let state = lock(&slot.state);
            matches!(&*state, State::Taken) || matches!(&*state, State::Done(outcome, _) if outcome.is_err())
        });
        if stale {
            table.slots.remove(chain_id);
        }
        if table.slots.contains_key(chain_id) {
            if first {
                table.queue.retain(|c| c != chain_id);
                table.queue.push_front(chain_id.to_owned());
            }
            drop(table);
            drop(expired);
            return;
        }
        table.slots.insert(
            chain_id.to_owned(),
            Arc::new(Slot {
                group: group.to_owned(),
                state: Mutex::new(State::Queued(Box::new(work))),
                changed: Condvar::new(),
            }),
        );
        if first {
            table.queue.push_front(chain_id.to_owned());
        } else {
            table.queue.push_back(chain_id.to_owned());
        }
        drop(table);
        drop(expired);
        self.queued.notify_one();
    }

    /// Takes `chain_id`'s result: runs the import on this thread if no
    /// worker has started it, else waits for it. `None` when nothing was
    /// submitted for it.
    pub fn claim(&self, chain_id: &str) -> Option<Outcome> {
        let slot = lock(&self.table).slots.get(chain_id).cloned()?;
        let outcome = Self::take(&slot, chain_id);
        // The table is locked only after the slot's lock is released: the
        // workers, submit and expire take the table first, then a slot.
        let mut table = lock(&self.table);
        if table.slots.get(chain_id).is_some_and(|s| Arc::ptr_eq(s, &slot)) {
            table.slots.remove(chain_id);
        }
        Some(outcome)
    }

    /// The slot's outcome, run here or waited for; the slot is Taken after.
    fn take(slot: &Slot, chain_id: &str) -> Outcome {
        let mut state = lock(&slot.state);
        match std::mem::replace(&mut *state, State::Taken) {
            State::Queued(work) => {
                drop(state);
                run(work)
            }
            State::Running => {
                *state = State::Running;
                while matches!(&*state, State::Running) {
                    state = slot.changed.wait(state).unwrap_or_else(|e| e.into_inner());
                }
                match std::mem::replace(&mut *state, State::Taken) {
                    State::Done(outcome, _) => *outcome,
                    _ => Err(format!("another Prepare took the import of {chain_id}")),
                }
            }
            State::Done(outcome, _) => *outcome,
            State::Taken => Err(format!("another Prepare took the import of {chain_id}")),
        }
    }

    /// Drops every job of image `group` that no worker runs: its
    /// Prepares will not come (containerd fetches the rest itself).
    pub fn abandon(&self, group: &str) {
        let mut table = lock(&self.table);
        let mut dropped = Vec::new();
        table.slots.retain(|_, slot| {
            let idle = !matches!(&*lock(&slot.state), State::Running);
            if slot.group == group && idle {
                dropped.push(Arc::clone(slot));
                return false;
            }
            true
        });
        drop(table);
        drop(dropped);
    }

    /// Takes out results nobody claimed in time; the caller drops them
    /// after releasing the table.
    fn expire(&self, table: &mut Table) -> Vec<Arc<Slot>> {
        let keep = self.keep_unclaimed;
        let mut expired = Vec::new();
        table.slots.retain(|chain_id, slot| {
            let stale = matches!(&*lock(&slot.state), State::Done(_, at) if at.elapsed() > keep);
            if stale {
                tracing::info!(chain_id, "dropping a prefetched layer nobody asked for");
                expired.push(Arc::clone(slot));
            }
            !stale
        });
        expired
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

    fn err(outcome: Option<Outcome>) -> String {
        outcome.expect("a result").err().expect("an error outcome")
    }

    #[test]
    fn a_queued_layer_runs_on_the_claiming_thread_and_is_claimed_once() {
        let jobs = Jobs::start(1, Duration::from_secs(60)).unwrap();
        let order = Arc::new(Mutex::new(Vec::new()));
        let gate = Arc::new(AtomicBool::new(false));
        // The one worker is held on "a" while the others queue.
        jobs.submit("img", "a", true, job(&order, "a", &gate));
        std::thread::sleep(Duration::from_millis(50));
        for name in ["b", "c", "d"] {
            jobs.submit("img", name, false, job(&order, name, &gate));
        }
        jobs.submit("img", "d", true, job(&order, "never", &gate));
        gate.store(true, Ordering::Release);
        assert_eq!(err(jobs.claim("d")), "d ran");
        assert_eq!(err(jobs.claim("a")), "a ran");
        assert!(jobs.claim("d").is_none(), "a claimed result is gone");
        assert!(jobs.claim("zzz").is_none());
        assert!(!order.lock().unwrap().contains(&"never".to_owned()));
    }

    #[test]
    fn a_failed_prefetch_is_tried_again_when_its_layer_is_asked_for() {
        let jobs = Jobs::start(1, Duration::from_secs(60)).unwrap();
        let order = Arc::new(Mutex::new(Vec::new()));
        let gate = Arc::new(AtomicBool::new(true));
        jobs.submit("img", "a", false, job(&order, "first try", &gate));
        while order.lock().unwrap().is_empty() {
            std::thread::sleep(Duration::from_millis(1));
        }
        std::thread::sleep(Duration::from_millis(20));
        jobs.submit("img", "a", true, job(&order, "second try", &gate));
        assert_eq!(err(jobs.claim("a")), "second try ran");
    }

    #[test]
    fn a_panicking_import_fails_its_claim_and_the_worker_goes_on() {
        let jobs = Jobs::start(1, Duration::from_secs(60)).unwrap();
        jobs.submit("img", "a", false, || panic!("boom"));
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(err(jobs.claim("a")), "the layer import panicked");
        let order = Arc::new(Mutex::new(Vec::new()));
        let gate = Arc::new(AtomicBool::new(true));
        jobs.submit("img", "b", false, job(&order, "b", &gate));
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(order.lock().unwrap().as_slice(), ["b".to_owned()]);
    }

    #[test]
    fn unclaimed_results_expire_on_their_own_and_abandoned_jobs_go() {
        let jobs = Jobs::start(1, Duration::from_millis(30)).unwrap();
        let order = Arc::new(Mutex::new(Vec::new()));
        let gate = Arc::new(AtomicBool::new(true));
        jobs.submit("img", "a", false, job(&order, "a", &gate));
        std::thread::sleep(Duration::from_millis(300));
        assert!(jobs.claim("a").is_none(), "expired without another submit");
        let held = Arc::new(AtomicBool::new(false));
        jobs.submit("other", "x", false, job(&order, "x", &held));
        jobs.submit("img2", "b", false, job(&order, "b", &gate));
        jobs.abandon("img2");
        assert!(jobs.claim("b").is_none());
        held.store(true, Ordering::Release);
        assert_eq!(err(jobs.claim("x")), "x ran");
    }

    #[test]
    fn claims_racing_submits_never_deadlock() {
        let (done, finished) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let jobs = Jobs::start(1, Duration::from_secs(60)).unwrap();
            let stop = Arc::new(AtomicBool::new(false));
            let submitter = {
                let (jobs, stop) = (Arc::clone(&jobs), Arc::clone(&stop));
                std::thread::spawn(move || {
                    let mut n = 0u64;
                    while !stop.load(Ordering::Acquire) {
                        jobs.submit("other", &format!("y{}", n % 64), false, || Err("y".into()));
                        n += 1;
                    }
                })
            };
            for i in 0..3000 {
                let name = format!("x{i}");
                jobs.submit("img", &name, false, || Err("x".into()));
                while jobs.claim(&name).is_none() {}
            }
            stop.store(true, Ordering::Release);
            submitter.join().unwrap();
            done.send(()).unwrap();
        });
        finished
            .recv_timeout(Duration::from_secs(60))
            .expect("claim and submit deadlocked");
    }
}
