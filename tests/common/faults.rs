//! The chaos soak's faults: a schedule drawn from a seed, so that a failing
//! run can be replayed with the same faults at the same moments, and what
//! each fault may explain once it has happened.
//!
//! Two tracks run side by side, each one fault after another with a rest
//! between: the beats' processes (SIGKILL, SIGSTOP/SIGCONT, SIGTERM and a
//! new start, and now and then every beat killed at once), and their
//! network (the database or the broker cut off or slowed down, for one
//! beat or for all). Each track deals its faults from a shuffled deck, so
//! that even a short run has each kind.

use super::rng::Rng;
use chrono::{DateTime, Duration as TimeDelta, Utc};
use std::time::Duration;

/// A service the beats talk to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Service {
    Database,
    Broker,
}

/// Which beats a network fault touches: the one in a slot, or all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    One(usize),
    All,
}

/// One fault, as planned.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Fault {
    /// SIGKILL; the slot's beat is started again after `down`.
    Kill { slot: usize, down: Duration },
    /// SIGSTOP, and SIGCONT after `pause`.
    Freeze { slot: usize, pause: Duration },
    /// SIGTERM, and a new beat once it has stopped (a deploy).
    Restart { slot: usize },
    /// Every beat SIGKILLed; all started again after `down`.
    AllKilled { down: Duration },
    /// The service's connections dropped and refused for `length`.
    Cut {
        service: Service,
        scope: Scope,
        length: Duration,
    },
    /// Each read to or from the service held for `delay`, for `length`.
    Slow {
        service: Service,
        scope: Scope,
        delay: Duration,
        length: Duration,
    },
}

/// A fault and when, from the soak's start, it begins.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Planned {
    pub at: Duration,
    pub fault: Fault,
}

impl Fault {
    /// From its first action to its last.
    pub fn length(&self) -> Duration {
        match *self {
            Fault::Kill { down, .. } | Fault::AllKilled { down } => down,
            Fault::Freeze { pause, .. } => pause,
            Fault::Restart { .. } => Duration::ZERO,
            Fault::Cut { length, .. } | Fault::Slow { length, .. } => length,
        }
    }

    /// Whether it reaches the database of no beat (a broker fault): such a
    /// fault cannot explain what happens to in-process runs.
    pub fn broker_only(&self) -> bool {
        matches!(
            self,
            Fault::Cut {
                service: Service::Broker,
                ..
            } | Fault::Slow {
                service: Service::Broker,
                ..
            }
        )
    }

    /// Whether it cuts off or slows down a beat's database.
    pub fn database(&self) -> bool {
        matches!(
            self,
            Fault::Cut {
                service: Service::Database,
                ..
            } | Fault::Slow {
                service: Service::Database,
                ..
            }
        )
    }

    /// Whether it leaves no beat able to dispatch while it lasts.
    pub fn global(&self) -> bool {
        matches!(
            self,
            Fault::AllKilled { .. }
                | Fault::Cut {
                    scope: Scope::All,
                    ..
                }
        )
    }
}

/// The schedule of faults for a soak of `seconds` with `slots` beats,
/// drawn from `seed`. Slot 0 is never killed nor restarted (its one
/// process lives the whole run, for the memory figure); it may be frozen
/// and cut off. Cuts last from a second to a minute (at most a sixth of
/// the run); every fault ends three seconds before the run does.
pub fn plan(seed: u64, seconds: u64, slots: usize) -> Vec<Planned> {
    assert!(
        slots >= 2,
        "the soak needs a beat that may die beside one that may not"
    );
    let mut rng = Rng(seed);
    let end = Duration::from_secs(seconds).saturating_sub(Duration::from_secs(3));
    let longest = (seconds / 6).clamp(2, 60);
    let mut planned = Vec::new();
    let tracks: [(u64, Deck); 2] = [(5, process_deck), (8, network_deck)];
    for (start, deck) in tracks {
        let mut hand = Vec::new();
        let mut at = Duration::from_secs(start);
        loop {
            if hand.is_empty() {
                hand = deck(&mut rng);
            }
            let fault = deal(hand.pop().expect("a dealt card"), &mut rng, slots, longest);
            if at + fault.length() > end {
                break;
            }
            planned.push(Planned { at, fault });
            at += fault.length() + millis(&mut rng, 3_000, 12_000);
        }
    }
    planned.sort_by_key(|p| p.at);
    planned
}

/// Deals a track's deck of cards (a card per kind of fault).
type Deck = fn(&mut Rng) -> Vec<u8>;

/// A shuffled deck of process faults: two kills, two freezes, a restart,
/// and four times in ten every beat killed.
fn process_deck(rng: &mut Rng) -> Vec<u8> {
    let mut deck = vec![0, 0, 1, 1, 2];
    if rng.chance(40) {
        deck.push(3);
    }
    shuffle(&mut deck, rng);
    deck
}

/// A shuffled deck of network faults: the database cut off from one beat
/// (10) and from all (11), the broker likewise (12, 13), and each slowed
/// down (14, 15).
fn network_deck(rng: &mut Rng) -> Vec<u8> {
    let mut deck = vec![10, 11, 12, 13, 14, 15];
    shuffle(&mut deck, rng);
    deck
}

/// Fisher-Yates, drawn from `rng`.
pub fn shuffle(deck: &mut [u8], rng: &mut Rng) {
    for i in (1..deck.len()).rev() {
        deck.swap(i, rng.below(i as u64 + 1) as usize);
    }
}

/// A duration from `low` to `high` milliseconds.
fn millis(rng: &mut Rng, low: u64, high: u64) -> Duration {
    Duration::from_millis(low + rng.below(high - low + 1))
}

/// The fault a card stands for, its beat and lengths drawn.
fn deal(card: u8, rng: &mut Rng, slots: usize, longest: u64) -> Fault {
    let mortal = 1 + rng.below(slots as u64 - 1) as usize;
    let any = rng.below(slots as u64) as usize;
    // Cuts: from a second to the longest, most of them short.
    let lengths = [1, 2, 3, 5, 8, 13, 21, 34, 55];
    let fitting: Vec<u64> = lengths.into_iter().filter(|l| *l <= longest).collect();
    let cut = Duration::from_secs(fitting[rng.below(fitting.len() as u64) as usize])
        + millis(rng, 0, 999);
    let scope = if rng.chance(50) {
        Scope::All
    } else {
        Scope::One(any)
    };
    let slow = |rng: &mut Rng, service| Fault::Slow {
        service,
        scope,
        delay: millis(rng, 20, 400),
        length: millis(rng, 2_000, longest.min(20) * 1000),
    };
    match card {
        0 => Fault::Kill {
            slot: mortal,
            down: millis(rng, 0, 8_000),
        },
        1 => Fault::Freeze {
            slot: any,
            pause: millis(rng, 200, 12_000),
        },
        2 => Fault::Restart { slot: mortal },
        3 => Fault::AllKilled {
            down: millis(rng, 500, 10_000),
        },
        10..=13 => Fault::Cut {
            service: if card < 12 {
                Service::Database
            } else {
                Service::Broker
            },
            // Even cards cut one beat off, odd ones all.
            scope: if card.is_multiple_of(2) {
                Scope::One(any)
            } else {
                Scope::All
            },
            length: cut,
        },
        14 => slow(rng, Service::Database),
        _ => slow(rng, Service::Broker),
    }
}

/// A fault as it happened: when its first and last actions were done.
#[derive(Debug, Clone)]
pub struct Happened {
    pub fault: Fault,
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
}

impl Happened {
    /// The due times whose runs it may have cost (missed, late, repeated):
    /// from two seconds before it began (a claim under way) to three
    /// seconds after its effect ended. A single beat's kill, restart or
    /// lost database ends its effect at once (its sessions end and its rows
    /// are free); a frozen beat's rows are held until its database ends
    /// the frozen session (`db_timeout`); a global fault lasts until the
    /// beats dispatch again (`back`, the first dispatch after it ended).
    pub fn window(
        &self,
        db_timeout: Duration,
        back: Option<DateTime<Utc>>,
    ) -> (DateTime<Utc>, DateTime<Utc>) {
        let end = match self.fault {
            Fault::Freeze { .. } => self.to.min(self.from + delta(db_timeout)),
            _ if self.fault.global() => back.unwrap_or(self.to).max(self.to),
            _ => self.to,
        };
        (
            self.from - TimeDelta::seconds(2),
            end + TimeDelta::seconds(3),
        )
    }
}

fn delta(d: Duration) -> TimeDelta {
    TimeDelta::from_std(d).unwrap_or(TimeDelta::MAX)
}

/// A fault in a line of the log.
pub fn describe(fault: &Fault) -> String {
    let scope = |scope: &Scope| match scope {
        Scope::One(slot) => format!("beat {slot}"),
        Scope::All => "every beat".to_owned(),
    };
    match fault {
        Fault::Kill { slot, down } => format!("SIGKILL beat {slot}, down {down:.1?}"),
        Fault::Freeze { slot, pause } => format!("SIGSTOP beat {slot} for {pause:.1?}"),
        Fault::Restart { slot } => format!("SIGTERM beat {slot} and start it again"),
        Fault::AllKilled { down } => format!("SIGKILL every beat, all down {down:.1?}"),
        Fault::Cut {
            service,
            scope: s,
            length,
        } => format!("{service:?} cut off from {} for {length:.1?}", scope(s)),
        Fault::Slow {
            service,
            scope: s,
            delay,
            length,
        } => format!(
            "{service:?} slowed by {delay:.0?} a read for {}, for {length:.1?}",
            scope(s)
        ),
    }
}

/// The kind of a fault, for counting them.
pub fn kind(fault: &Fault) -> &'static str {
    match fault {
        Fault::Kill { .. } => "kill",
        Fault::Freeze { .. } => "freeze",
        Fault::Restart { .. } => "restart",
        Fault::AllKilled { .. } => "all killed",
        Fault::Cut {
            service: Service::Database,
            scope: Scope::All,
            ..
        } => "database cut (all)",
        Fault::Cut {
            service: Service::Database,
            ..
        } => "database cut (one)",
        Fault::Cut {
            scope: Scope::All, ..
        } => "broker cut (all)",
        Fault::Cut { .. } => "broker cut (one)",
        Fault::Slow {
            service: Service::Database,
            ..
        } => "database slow",
        Fault::Slow { .. } => "broker slow",
    }
}
