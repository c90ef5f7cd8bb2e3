//! Single-flight fetches with a deadline per waiter.
//!
//! The first open of a missing name starts a flight: one thread runs the
//! fetch, another (its supervisor) answers the waiters. Later opens of the
//! same name join the flight instead of fetching again. Each waiter has its
//! own deadline; when it passes, the supervisor gives that waiter up (EIO)
//! even if the fetch never returns. A stuck fetch keeps its flight, so
//! later opens of that name join it and time out too, rather than piling up
//! more stuck fetches; its two threads end when the fetch does.

use std::collections::HashMap;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use strata_tree::Digest;

/// Why waiters were answered without the fetch's outcome.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum GaveUp {
    /// Their deadline passed first.
    Timeout,
    /// No thread could be started for the fetch.
    NoThread,
}

/// Answers a flight's waiters.
pub(crate) trait Landing<W, O>: Send + Sync + 'static {
    /// The fetch of `name` ended with `outcome`; `waiters` (possibly none:
    /// all gave up) wait for it.
    fn landed(&self, name: &Digest, outcome: O, waiters: Vec<W>);
    /// `waiters` are answered without an outcome.
    fn gave_up(&self, name: &Digest, waiters: Vec<W>, why: GaveUp);
}

struct Flight<W, O> {
    waiters: Vec<(Instant, W)>,
    outcome: Option<O>,
    wake: Arc<Condvar>,
}

type FlightMap<W, O> = Mutex<HashMap<Digest, Flight<W, O>>>;

pub(crate) struct Flights<W, O> {
    flights: Arc<FlightMap<W, O>>,
    landing: Arc<dyn Landing<W, O>>,
    timeout: Duration,
}

impl<W: Send + 'static, O: Send + 'static> Flights<W, O> {
    pub fn new(timeout: Duration, landing: Arc<dyn Landing<W, O>>) -> Self {
        Self {
            flights: Arc::new(Mutex::new(HashMap::new())),
            landing,
            timeout,
        }
    }

    /// Adds `waiter` to the flight of `name`, starting the flight with
    /// `fetch` if none is under way. True if this call started it. If no
    /// thread can be started, the waiter is given up at once.
    pub fn join(&self, name: Digest, waiter: W, fetch: impl FnOnce() -> O + Send + 'static) -> bool {
        let deadline = Instant::now() + self.timeout;
        let mut flights = lock(&self.flights);
        if let Some(flight) = flights.get_mut(&name) {
            flight.waiters.push((deadline, waiter));
            flight.wake.notify_one();
            return false;
        }
        let wake = Arc::new(Condvar::new());
        flights.insert(
            name,
            Flight {
                waiters: vec![(deadline, waiter)],
                outcome: None,
                wake: wake.clone(),
            },
        );
        drop(flights);
        let (map, landing) = (self.flights.clone(), self.landing.clone());
        let started = thread::Builder::new()
            .name("lazy-flight".into())
            .spawn(move || supervise(&map, name, &wake, landing.as_ref(), fetch));
        if let Err(e) = started {
            tracing::error!("lazy: no thread for the flight of {name}: {e}");
            if let Some(flight) = lock(&self.flights).remove(&name) {
                let waiters = flight.waiters.into_iter().map(|(_, w)| w).collect();
                self.landing.gave_up(&name, waiters, GaveUp::NoThread);
            }
        }
        true
    }

    /// Names with a flight under way.
    #[cfg(test)]
    pub fn in_flight(&self) -> usize {
        lock(&self.flights).len()
    }
}

/// Runs `fetch` on its own thread and answers the waiters of `name` as
/// their deadlines pass or the outcome arrives.
fn supervise<W: Send + 'static, O: Send + 'static>(
    map: &Arc<FlightMap<W, O>>,
    name: Digest,
    wake: &Arc<Condvar>,
    landing: &dyn Landing<W, O>,
    fetch: impl FnOnce() -> O + Send + 'static,
) {
    let (fetch_map, fetch_wake) = (map.clone(), wake.clone());
    let started = thread::Builder::new().name("lazy-fetch".into()).spawn(move || {
        let outcome = fetch();
        if let Some(flight) = lock(&fetch_map).get_mut(&name) {
            flight.outcome = Some(outcome);
        }
        fetch_wake.notify_one();
    });
    if let Err(e) = started {
        tracing::error!("lazy: no thread to fetch {name}: {e}");
        if let Some(flight) = lock(map).remove(&name) {
            let waiters = flight.waiters.into_iter().map(|(_, w)| w).collect();
            landing.gave_up(&name, waiters, GaveUp::NoThread);
        }
        return;
    }
    let mut flights = lock(map);
    loop {
        let flight = flights.get_mut(&name).expect("only its supervisor removes a flight");
        if flight.outcome.is_some() {
            let flight = flights.remove(&name).expect("present");
            drop(flights);
            let waiters = flight.waiters.into_iter().map(|(_, w)| w).collect();
            landing.landed(&name, flight.outcome.expect("checked"), waiters);
            return;
        }
        let now = Instant::now();
        let (expired, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut flight.waiters)
            .into_iter()
            .partition(|(deadline, _)| *deadline <= now);
        flight.waiters = waiting;
        if !expired.is_empty() {
            drop(flights);
            landing.gave_up(&name, expired.into_iter().map(|(_, w)| w).collect(), GaveUp::Timeout);
            flights = lock(map);
            continue;
        }
        flights = match flight.waiters.iter().map(|(deadline, _)| *deadline).min() {
            Some(next) => {
                wake.wait_timeout(flights, next - now)
                    .unwrap_or_else(PoisonError::into_inner)
                    .0
            }
            None => wake.wait(flights).unwrap_or_else(PoisonError::into_inner),
        };
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc;

    use super::*;

    /// (waiter, the outcome it got, or why it was given up).
    type Answer = (u32, Option<u32>, Option<GaveUp>);

    struct Answers(Mutex<mpsc::Sender<Answer>>);

    impl Landing<u32, u32> for Answers {
        fn landed(&self, _: &Digest, outcome: u32, waiters: Vec<u32>) {
            for w in waiters {
                lock(&self.0).send((w, Some(outcome), None)).unwrap();
            }
        }
        fn gave_up(&self, _: &Digest, waiters: Vec<u32>, why: GaveUp) {
            for w in waiters {
                lock(&self.0).send((w, None, Some(why))).unwrap();
            }
        }
    }

    fn flights(timeout: Duration) -> (Flights<u32, u32>, mpsc::Receiver<Answer>) {
        let (tx, rx) = mpsc::channel();
        (Flights::new(timeout, Arc::new(Answers(Mutex::new(tx)))), rx)
    }

    #[test]
    fn joiners_share_one_fetch() {
        let (flights, answers) = flights(Duration::from_secs(10));
        let (release, gate) = mpsc::channel::<()>();
        let gate = Mutex::new(gate);
        let name = Digest([1; 32]);
        assert!(flights.join(name, 0, move || {
            let _ = lock(&gate).recv_timeout(Duration::from_secs(10));
            42
        }));
        for waiter in 1..5 {
            assert!(!flights.join(name, waiter, || unreachable!("a second fetch of one name")));
        }
        drop(release);
        let mut got: Vec<_> = (0..5)
            .map(|_| answers.recv_timeout(Duration::from_secs(10)).unwrap())
            .collect();
        got.sort_by_key(|(waiter, _, _)| *waiter);
        let expected: Vec<_> = (0..5).map(|w| (w, Some(42), None)).collect();
        assert_eq!(got, expected);
        assert_eq!(flights.in_flight(), 0);
    }

    #[test]
    fn a_stuck_fetch_times_its_waiters_out_and_others_go_on() {
        let (flights, answers) = flights(Duration::from_millis(300));
        let (_hold, stuck) = mpsc::channel::<()>();
        let stuck = Mutex::new(stuck);
        let started = Instant::now();
        flights.join(Digest([2; 32]), 1, move || {
            let _ = lock(&stuck).recv_timeout(Duration::from_secs(20));
            0
        });
        flights.join(Digest([3; 32]), 2, || 7);
        assert_eq!(
            answers.recv_timeout(Duration::from_secs(5)).unwrap(),
            (2, Some(7), None)
        );
        assert!(
            started.elapsed() < Duration::from_millis(300),
            "the other name did not wait"
        );
        assert_eq!(
            answers.recv_timeout(Duration::from_secs(5)).unwrap(),
            (1, None, Some(GaveUp::Timeout))
        );
        assert!(started.elapsed() >= Duration::from_millis(300));
        assert_eq!(flights.in_flight(), 1, "the stuck flight stays for later joiners");
    }
}
