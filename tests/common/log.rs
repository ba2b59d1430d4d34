//! This test process's own log lines (the library's `log` records), for
//! tests of what a beat in the same process logs.

use std::sync::{Mutex, Once};

/// Every log line of this test process, from the first call on (a logger
/// can be installed once per process; tests filter by their own routines).
pub fn captured_log() -> &'static Mutex<Vec<String>> {
    struct Capture;
    static LINES: Mutex<Vec<String>> = Mutex::new(Vec::new());
    static INSTALL: Once = Once::new();
    impl ::log::Log for Capture {
        fn enabled(&self, metadata: &::log::Metadata) -> bool {
            metadata.level() <= ::log::Level::Info
        }
        fn log(&self, record: &::log::Record) {
            if self.enabled(record.metadata()) {
                LINES
                    .lock()
                    .unwrap()
                    .push(format!("{} {}", record.level(), record.args()));
            }
        }
        fn flush(&self) {}
    }
    static CAPTURE: Capture = Capture;
    INSTALL.call_once(|| {
        if ::log::set_logger(&CAPTURE).is_ok() {
            ::log::set_max_level(::log::LevelFilter::Info);
        }
    });
    &LINES
}

/// `output` (logs, errors, reports) shows URLs with their password masked
/// (`:***@`), and `secret` nowhere.
pub fn assert_redacted(output: &str, secret: &str) {
    assert!(output.contains(":***@"), "nothing was redacted?\n{output}");
    assert!(
        !output.contains(secret),
        "a password leaked:\n{}",
        output
            .lines()
            .filter(|l| l.contains(secret))
            .collect::<Vec<_>>()
            .join("\n")
    );
}
