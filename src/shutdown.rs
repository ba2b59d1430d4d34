//! Stopping: one signal, seen by the scheduler thread and every worker,
//! with the deadline the stop gives them.
//!
//! The signal is the disconnection of a channel that never carries a
//! message: dropping the [`Trigger`] wakes every waiter at once, and a
//! waiter that arrives later sees it immediately. There is nothing to lose
//! and nothing to send twice.

use crossbeam_channel::{bounded, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

/// Fires the shutdown when dropped or [`Trigger::fire`]d.
#[derive(Debug)]
pub(crate) struct Trigger {
    _tx: Sender<()>,
    deadline: Arc<OnceLock<Instant>>,
}

impl Trigger {
    /// Fires, telling every waiter that the stop ends at `deadline`.
    pub(crate) fn fire(self, deadline: Instant) {
        let _ = self.deadline.set(deadline);
    }
}

/// A long-running loop's view of the shutdown.
#[derive(Debug, Clone)]
pub(crate) struct Shutdown {
    rx: Receiver<()>,
    deadline: Arc<OnceLock<Instant>>,
}

pub(crate) fn channel() -> (Trigger, Shutdown) {
    let (tx, rx) = bounded(0);
    let deadline = Arc::new(OnceLock::new());
    (
        Trigger {
            _tx: tx,
            deadline: Arc::clone(&deadline),
        },
        Shutdown { rx, deadline },
    )
}

impl Shutdown {
    /// When the stop ends, once it has fired (a trigger dropped without
    /// firing sets none: then the stop ends at once).
    pub(crate) fn deadline(&self) -> Option<Instant> {
        // The trigger sets the deadline before it disconnects.
        self.is_fired()
            .then(|| *self.deadline.get_or_init(Instant::now))
    }

    /// Whether the shutdown has fired.
    pub(crate) fn is_fired(&self) -> bool {
        matches!(
            self.rx.try_recv(),
            Err(crossbeam_channel::TryRecvError::Disconnected)
        )
    }

    /// Sleeps for `timeout` or until the shutdown fires; returns whether it
    /// fired.
    pub(crate) fn sleep(&self, timeout: Duration) -> bool {
        matches!(
            self.rx.recv_timeout(timeout),
            Err(RecvTimeoutError::Disconnected)
        )
    }

    /// The receiver, for `select!` with other channels.
    pub(crate) fn receiver(&self) -> &Receiver<()> {
        &self.rx
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    #[test]
    fn firing_wakes_a_sleeper_at_once() {
        let (trigger, shutdown) = channel();
        assert!(!shutdown.is_fired());
        assert_eq!(shutdown.deadline(), None);
        assert!(!shutdown.sleep(Duration::from_millis(1)));
        let (sleeping_tx, sleeping) = std::sync::mpsc::channel();
        let sleeper = {
            let shutdown = shutdown.clone();
            std::thread::spawn(move || {
                let start = Instant::now();
                sleeping_tx.send(()).unwrap();
                (shutdown.sleep(Duration::from_secs(60)), start.elapsed())
            })
        };
        // Fired once the sleeper is about to sleep (nanoseconds before its
        // wait), so that the fire wakes a waiter rather than precedes it.
        sleeping.recv().unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        trigger.fire(deadline);
        let (fired, slept) = sleeper.join().unwrap();
        assert!(fired);
        // Of its 60 s: a disconnection wakes it in microseconds; 1 s
        // covers a loaded machine.
        assert!(slept < Duration::from_secs(1), "slept {slept:?}");
        assert!(shutdown.is_fired());
        assert!(shutdown.sleep(Duration::from_secs(60)));
        assert_eq!(
            shutdown.deadline(),
            Some(deadline),
            "every waiter sees the stop's deadline"
        );
    }
}
