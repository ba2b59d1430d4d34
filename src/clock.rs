//! The source of "now", injected so that schedule logic is tested without
//! sleeping.

use chrono::{DateTime, Utc};

/// The source of "now". Inject one ([`BeatBuilder::clock`](crate::BeatBuilder::clock))
/// to test schedule logic without sleeping.
pub trait Clock: Send + Sync + 'static {
    /// The current time.
    fn now(&self) -> DateTime<Utc>;
}

/// The system clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }
}
