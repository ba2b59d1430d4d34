//! The throttle on wrong tokens. A client address that gives [`BURST`]
//! wrong tokens is answered 429 (without a look at what it sends) until
//! its allowance has refilled, one guess per [`REFILL`]; the answer is
//! immediate, never a sleep on a shared thread.

use super::server::Client;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// Wrong tokens a client address may give before it is throttled.
pub(super) const BURST: f64 = 5.0;
/// How soon a throttled address may guess again (one more guess each).
pub(super) const REFILL: Duration = Duration::from_secs(12);
/// Client addresses whose wrong tokens are remembered (the fullest
/// allowances go first).
const MAX_CLIENTS: usize = 10_000;

/// A client address's allowance of wrong tokens.
struct Allowance {
    left: f64,
    at: Instant,
}

/// Every client address's allowance.
#[derive(Default)]
pub(super) struct Throttle(Mutex<HashMap<Client, Allowance>>);

impl Throttle {
    fn allowances(&self) -> std::sync::MutexGuard<'_, HashMap<Client, Allowance>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Takes one of `peer`'s guesses at a token, checked and charged in
    /// one step, so that requests at the same time cannot together pass
    /// the allowance; a right token gives it back (`right_token`). Returns
    /// the guesses left, or how long `peer` must wait for its next.
    pub(super) fn guess(&self, peer: IpAddr) -> Result<f64, Duration> {
        let mut allowances = self.allowances();
        if let Some(allowance) = allowances.get(&Client::of(peer)) {
            let left = refilled(allowance);
            if left < 1.0 {
                return Err(REFILL.mul_f64(1.0 - left));
            }
        } else if allowances.len() >= MAX_CLIENTS {
            // Forget the addresses that have their whole allowance back,
            // else the one with the most left.
            allowances.retain(|_, a| refilled(a) < BURST);
            if allowances.len() >= MAX_CLIENTS {
                let fullest = allowances
                    .iter()
                    .max_by(|a, b| refilled(a.1).total_cmp(&refilled(b.1)))
                    .map(|(client, _)| *client);
                if let Some(client) = fullest {
                    allowances.remove(&client);
                }
            }
        }
        let allowance = allowances.entry(Client::of(peer)).or_insert(Allowance {
            left: BURST,
            at: Instant::now(),
        });
        allowance.left = refilled(allowance) - 1.0;
        allowance.at = Instant::now();
        Ok(allowance.left)
    }

    /// `peer`'s guess was right: it is given back.
    pub(super) fn right_token(&self, peer: IpAddr) {
        if let Some(allowance) = self.allowances().get_mut(&Client::of(peer)) {
            allowance.left = (refilled(allowance) + 1.0).min(BURST);
            allowance.at = Instant::now();
        }
    }
}

/// A wrong token from `peer`, which has `left` guesses after it: said
/// once, when they run out.
pub(super) fn wrong_token(peer: IpAddr, left: f64) {
    if (0.0..1.0).contains(&left) {
        log::warn!(
            "http: {} wrong tokens from {peer}; its tokens are refused (429) for {} s",
            BURST as u32,
            REFILL.as_secs()
        );
    }
}

/// An allowance as it stands now (refilled since it was last charged).
fn refilled(a: &Allowance) -> f64 {
    (a.left + a.at.elapsed().as_secs_f64() / REFILL.as_secs_f64()).min(BURST)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Guesses are checked and charged in one step: of the burst's worth
    /// taken at once (as by requests on every listener thread), none more
    /// passes, however they interleave; a right token costs nothing.
    #[test]
    fn guesses_are_taken_in_one_step_and_a_right_token_gives_its_back() {
        let throttle = Throttle::default();
        let guesser = IpAddr::from([127, 0, 0, 1]);
        let burst = BURST as usize;
        let passed = std::thread::scope(|scope| {
            let takers: Vec<_> = (0..4 * burst)
                .map(|_| scope.spawn(|| throttle.guess(guesser).is_ok()))
                .collect();
            takers
                .into_iter()
                .map(|t| t.join().unwrap_or(false))
                .filter(|passed| *passed)
                .count()
        });
        assert_eq!(passed, burst);
        let wait = throttle.guess(guesser).unwrap_err();
        assert!(wait > Duration::ZERO && wait <= REFILL, "{wait:?}");

        let operator = IpAddr::from([10, 0, 0, 1]);
        for _ in 0..3 * burst {
            assert!(throttle.guess(operator).is_ok());
            throttle.right_token(operator);
        }
        assert_eq!(throttle.guess(operator), Ok(BURST - 1.0));
    }
}
