//! Named fail points for crash and rollback tests.
//!
//! Off unless `STRATA_FAILPOINTS` is set when the process starts, e.g.
//! `STRATA_FAILPOINTS=prepare.after_clone=error,commit.before_db=abort`.
//! `error` makes [`hit`] return an error; `abort` kills the process with
//! SIGKILL on the spot, as `kill -9` would, so no destructor runs.

#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::sync::OnceLock;

pub const ENV: &str = "STRATA_FAILPOINTS";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Action {
    Error,
    Abort,
}

#[derive(Debug, thiserror::Error)]
#[error("fail point {0} triggered")]
pub struct Triggered(pub &'static str);

fn points() -> &'static HashMap<String, Action> {
    static POINTS: OnceLock<HashMap<String, Action>> = OnceLock::new();
    POINTS.get_or_init(|| std::env::var(ENV).map(|v| parse(&v)).unwrap_or_default())
}

fn parse(spec: &str) -> HashMap<String, Action> {
    spec.split(',')
        .filter_map(|item| {
            let (name, action) = item.trim().split_once('=')?;
            let action = match action {
                "error" => Action::Error,
                "abort" => Action::Abort,
                _ => return None,
            };
            Some((name.to_owned(), action))
        })
        .collect()
}

/// Passes unless the fail point `name` is set.
pub fn hit(name: &'static str) -> Result<(), Triggered> {
    match points().get(name) {
        None => Ok(()),
        Some(Action::Error) => Err(Triggered(name)),
        Some(Action::Abort) => {
            let _ = rustix::process::kill_process(rustix::process::getpid(), rustix::process::Signal::KILL);
            unreachable!("SIGKILL is not delivered late to the process itself")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_parses_and_ignores_junk() {
        let p = parse("a=error, b=abort,c=maybe,d");
        assert_eq!(p.get("a"), Some(&Action::Error));
        assert_eq!(p.get("b"), Some(&Action::Abort));
        assert_eq!(p.len(), 2);
    }
}
