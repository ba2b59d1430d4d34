//! Claiming: due rows are locked, dispatched and advanced in one
//! transaction per batch, read here from top to bottom (see `dispatch`
//! for what happens to each run).
//!
//! Bursts of due rows are shared by several claimers, each with its own
//! connections: `SKIP LOCKED` keeps their batches apart, and while one
//! waits on the database another builds and publishes messages.

use super::Scheduler;
use crate::dispatch::{Fired, Outcome};
use crate::error::Error;
use crate::metrics::Counts;
use crate::store::{NewRun, Plan};
use chrono::{DateTime, Utc};

/// Rows claimed per transaction.
pub(super) const CLAIM_BATCH: usize = 1000;
/// Claim transactions per pass, so that edits are looked at between bursts.
pub(super) const CLAIMS_PER_TICK: usize = 20;

/// What one claimer did.
#[derive(Default)]
pub(super) struct Claimed {
    pub(super) batches: usize,
    /// The last batch was full: more may be due.
    pub(super) more: bool,
    pub(super) counts: Counts,
    pub(super) error: Option<Error>,
}

impl Claimed {
    fn panicked() -> Self {
        Claimed {
            error: Some(Error::Thread {
                what: "claimer",
                source: std::io::Error::other("a claimer thread panicked"),
            }),
            ..Claimed::default()
        }
    }
}

impl Scheduler {
    /// Claims everything due at `now`, up to `CLAIMS_PER_TICK` batches.
    ///
    /// One batch first; if it came back full (a burst), and `fork_bursts`,
    /// several claimers share the rest. On a broker failure the broker's
    /// routines are left due and the pass goes on with in-process ones.
    /// Returns what was claimed, and whether more is due than one pass
    /// claims.
    pub(super) fn claim(
        &self,
        now: DateTime<Utc>,
        fork_bursts: bool,
    ) -> Result<(Counts, bool), Error> {
        let mut counts = Counts::default();
        let mut passes = 0;
        let mut first = true;
        while passes < CLAIMS_PER_TICK && !self.shutdown.is_fired() {
            // While the broker is out, claim only in-process routines: the
            // others stay due until it is back.
            let local_only = self.broker_paused();
            let claimers = if first || !fork_bursts {
                1
            } else {
                self.claimers.max(1)
            };
            let budget = if first { 1 } else { CLAIMS_PER_TICK - passes };
            let outcomes: Vec<Claimed> = if claimers == 1 {
                vec![self.claim_batches(0, now, local_only, budget)]
            } else {
                let share = budget.div_ceil(claimers);
                std::thread::scope(|scope| {
                    let others: Vec<_> = (1..claimers)
                        .map(|i| scope.spawn(move || self.claim_batches(i, now, local_only, share)))
                        .collect();
                    let mut all = vec![self.claim_batches(0, now, local_only, share)];
                    all.extend(
                        others
                            .into_iter()
                            .map(|h| h.join().unwrap_or_else(|_| Claimed::panicked())),
                    );
                    all
                })
            };
            first = false;
            let mut more = false;
            let mut broker_failed = false;
            for outcome in outcomes {
                counts.add(outcome.counts);
                passes += outcome.batches;
                more |= outcome.more;
                match outcome.error {
                    None => {}
                    // The broker noted its outage: go on with the rest.
                    Some(Error::Broker(_)) => broker_failed = true,
                    Some(e) => return Err(e),
                }
            }
            // After a broker failure, go on with the in-process routines.
            if !more && !broker_failed {
                return Ok((counts, false));
            }
        }
        Ok((counts, passes >= CLAIMS_PER_TICK))
    }

    /// One claimer: up to `budget` batches, until one comes back short.
    pub(super) fn claim_batches(
        &self,
        claimer: usize,
        now: DateTime<Utc>,
        local_only: bool,
        budget: usize,
    ) -> Claimed {
        let mut out = Claimed::default();
        while out.batches < budget && !self.shutdown.is_fired() {
            let started = std::time::Instant::now();
            let outcomes = match self.claim_batch(claimer, now, local_only) {
                Ok(outcomes) => outcomes,
                Err(e) => {
                    out.error = Some(e);
                    return out;
                }
            };
            self.metrics.claim_seconds.observe(started.elapsed());
            out.batches += 1;
            out.more = outcomes.len() == CLAIM_BATCH;
            out.counts.add(self.dispatcher.hand_over(outcomes));
            if !out.more {
                break;
            }
        }
        out
    }

    /// One claim transaction: locks a batch of due rows, decides each
    /// one's run, publishes the Celery messages, records the runs,
    /// advances the rows and commits. A failure anywhere rolls it all back
    /// (the rows stay due). Returns the outcomes, for the hand-over.
    fn claim_batch(
        &self,
        claimer: usize,
        now: DateTime<Utc>,
        local_only: bool,
    ) -> Result<Vec<Outcome>, Error> {
        let dispatcher = &self.dispatcher;
        let router = &dispatcher.router;
        let mut claim = self.store.begin_claim()?;
        let tasks = local_only.then_some(router.local_tasks.as_str());
        let rows = claim.lock_due(now, CLAIM_BATCH, tasks)?;
        let local: Vec<&str> = rows
            .iter()
            .filter(|row| router.is_local(&row.task))
            .map(|row| row.id.as_str())
            .collect();
        let busy = claim.busy_elsewhere(&local)?;
        let fired: Vec<Fired> = rows
            .iter()
            .map(|row| dispatcher.fire(row, now, &busy))
            .collect();
        let (mut plans, mut outcomes, mut runs) = unzip(fired);
        dispatcher.publish(Some(claimer), &mut outcomes, &mut runs)?;
        for (plan, outcome) in plans.iter_mut().zip(&outcomes) {
            if let Some(reason) = outcome.refused() {
                plan.last_error = Some(reason.to_owned());
            }
        }
        let committed = claim
            .record(&runs, now)
            .and_then(|()| claim.advance(&plans))
            .and_then(|()| claim.end(&super::plan::ended(&plans)))
            .and_then(|()| claim.commit());
        if let Err(e) = committed {
            // Published but not claimed: the rows are due again, and their
            // messages are not to be published twice.
            dispatcher.not_committed(&outcomes);
            return Err(e.into());
        }
        if dispatcher.history {
            let recorded = runs.iter().map(|run| run.routine_id.as_str());
            dispatcher.touched.note(recorded);
        }
        Ok(outcomes)
    }
}

/// The plans, outcomes and records of a batch's runs, apart.
fn unzip(fired: Vec<Fired>) -> (Vec<Plan>, Vec<Outcome>, Vec<NewRun>) {
    let mut plans = Vec::with_capacity(fired.len());
    let mut outcomes = Vec::with_capacity(fired.len());
    let mut runs = Vec::with_capacity(fired.len());
    for one in fired {
        plans.push(one.plan);
        outcomes.push(one.outcome);
        runs.extend(one.run);
    }
    (plans, outcomes, runs)
}
