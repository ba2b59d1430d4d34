//! The retry timer: failed runs wait here for `celery_retry_delay`, off
//! the workers, then go back to the queue; at a stop, those still waiting
//! are dropped (counted, logged, recorded as abandoned).

use super::{Happened, InFlight, Job, Reporter};
use crossbeam_channel::{select, Receiver, Sender};
use std::collections::BinaryHeap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A retry waiting for its time; the heap's top is the earliest.
struct Pending(Instant, Job);

impl PartialEq for Pending {
    fn eq(&self, other: &Self) -> bool {
        self.0 == other.0
    }
}
impl Eq for Pending {}
impl PartialOrd for Pending {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Pending {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        other.0.cmp(&self.0)
    }
}

/// Holds failed runs until their retry time, then queues them again.
/// Returns how many retries the stop dropped.
pub(super) fn retry_timer(
    incoming: Receiver<(Instant, Job)>,
    stop: Receiver<()>,
    jobs: Sender<Job>,
    in_flight: Arc<InFlight>,
    reporter: Reporter,
) -> usize {
    let mut pending = BinaryHeap::new();
    'serve: loop {
        let wait = pending
            .peek()
            .map(|Pending(at, _)| at.saturating_duration_since(Instant::now()));
        let timeout = crossbeam_channel::after(wait.unwrap_or(Duration::from_secs(3600)));
        select! {
            recv(incoming) -> msg => match msg {
                Ok((at, job)) => pending.push(Pending(at, job)),
                Err(_) => break,
            },
            recv(stop) -> _ => break,
            recv(timeout) -> _ => {}
        }
        while pending
            .peek()
            .is_some_and(|Pending(at, _)| *at <= Instant::now())
        {
            let Some(Pending(at, job)) = pending.pop() else {
                break;
            };
            // The routine stayed in flight during the wait. A full queue
            // must not hold the timer past a stop.
            select! {
                send(jobs, job.clone()) -> sent => if let Err(e) = sent {
                    let job = e.into_inner();
                    reporter.report(&job, Happened::Abandoned);
                    in_flight.end(&job);
                    break 'serve;
                },
                recv(stop) -> _ => {
                    pending.push(Pending(at, job));
                    break 'serve;
                }
            }
        }
    }
    let dropped = pending.len();
    for Pending(_, job) in pending {
        log::warn!(
            "routine {}: retry {} of the run due {} dropped at stop",
            job.ctx.routine,
            job.ctx.attempt,
            job.ctx.scheduled_at
        );
        reporter.report(&job, Happened::Abandoned);
        in_flight.end(&job);
    }
    dropped
}
