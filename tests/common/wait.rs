//! Waiting on what a test expects, never on time alone: `wait_until` for
//! something that must happen, `holds_for` for something that must not
//! change over a stated window. Both poll every [`POLL`]; this is the one
//! place tests sleep to poll.

use std::time::{Duration, Instant};

/// How often a condition is looked at.
pub const POLL: Duration = Duration::from_millis(10);

/// Looks every [`POLL`] until `look` finds something or `limit` has
/// passed (it looks once more after that).
fn poll<T>(limit: Duration, mut look: impl FnMut() -> Option<T>) -> Option<T> {
    let start = Instant::now();
    loop {
        if let Some(found) = look() {
            return Some(found);
        }
        if start.elapsed() > limit {
            return None;
        }
        std::thread::sleep(POLL);
    }
}

/// Polls `condition` until it holds or `limit` passes; returns whether it
/// held.
pub fn wait_until(limit: Duration, mut condition: impl FnMut() -> bool) -> bool {
    poll(limit, || condition().then_some(())).is_some()
}

/// A check over a window: polls `condition` for all of `window` (and once
/// after it), and returns `false` as soon as it fails, `true` if it held
/// throughout. For "nothing more happens": the window is the time in which
/// it would have happened, and the call says so.
pub fn holds_for(window: Duration, mut condition: impl FnMut() -> bool) -> bool {
    poll(window, || (!condition()).then_some(())).is_none()
}
