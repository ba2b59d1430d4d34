//! `beat` processes started by the tests: their environment, their log,
//! their end.

use super::wait::wait_until;
use std::process::{Child, ExitStatus};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// Every variable the `beat` binary reads: cleared for the processes the
/// tests start, so that the host's settings cannot leak into a test.
pub const BEAT_VARS: [&str; 31] = [
    "SCHEDULER_DB_URI",
    "SCHEDULER_MAX_INTERVAL",
    "SCHEDULER_SYNC_EVERY",
    "SCHEDULER_WATCH_INTERVAL",
    "CELERY_MAX_RETRY",
    "CELERY_RETRY_DELAY",
    "DEFAULT_CELERY_MAX_RETRY",
    "DEFAULT_CELERY_RETRY_DELAY",
    "CREATE_TABLE",
    "CELERY_BROKER_URL",
    "WORKER_CONCURRENCY",
    "SHUTDOWN_TIMEOUT",
    "SCHEDULER_MISFIRE_POLICY",
    "SCHEDULER_MISFIRE_GRACE_TIME",
    "SCHEDULER_DB_TIMEOUT",
    "BROKER_DEDUP_WINDOW",
    "TIMEZONE",
    "CELERY_TIMEZONE",
    "HISTORY",
    "HISTORY_MAX_AGE",
    "HISTORY_MAX_RUNS",
    "SCHEDULER_HEARTBEAT_INTERVAL",
    "SCHEDULER_DEAD_AFTER",
    "HTTP_ADDR",
    "HTTP_TOKEN",
    "HTTP_TOKENS",
    "HTTP_TOKENS_FILE",
    "HTTP_PUBLIC_READ",
    "AUDIT_MAX_AGE",
    "AUDIT_MAX_EDITS",
    "RUST_LOG",
];

/// How long an exited process's log may take to be read to its end.
const LOG_DRAIN: Duration = Duration::from_secs(5);

/// Collects a child's stderr line by line, on a thread of its own (which
/// ends at the pipe's end, when the child has exited); `watch` sees each
/// line as it comes.
pub(super) fn collect_stderr(
    child: &mut Child,
    watch: impl Fn(&str) + Send + 'static,
) -> (Arc<Mutex<Vec<String>>>, JoinHandle<()>) {
    use std::io::BufRead;
    let log = Arc::new(Mutex::new(Vec::new()));
    let stderr = child.stderr.take().expect("stderr is piped");
    let lines = Arc::clone(&log);
    let reader = std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            watch(&line);
            lines.lock().unwrap().push(line);
        }
    });
    (log, reader)
}

/// A `beat` process; its stderr is collected line by line. Killed when
/// dropped.
pub struct BeatProcess {
    child: Child,
    log: Arc<Mutex<Vec<String>>>,
    reader: Option<JoinHandle<()>>,
}

impl BeatProcess {
    /// Starts the `beat` binary with `env` (and nothing of the host's beat
    /// settings).
    /// (`CDK_BEAT_BIN` names another build of the binary, to measure an
    /// older version with today's tests.)
    pub fn start(env: &[(&str, &str)]) -> BeatProcess {
        BeatProcess::start_with(&[], env)
    }

    /// As [`BeatProcess::start`], with command-line arguments.
    pub fn start_with(args: &[&str], env: &[(&str, &str)]) -> BeatProcess {
        let binary =
            std::env::var("CDK_BEAT_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_beat").to_owned());
        let mut cmd = std::process::Command::new(binary);
        cmd.args(args);
        for var in BEAT_VARS {
            cmd.env_remove(var);
        }
        cmd.envs(env.iter().copied())
            .current_dir(std::env::temp_dir());
        BeatProcess::spawn(cmd)
    }

    /// Starts `cmd`, a `beat` made ready by the caller (another binary,
    /// another directory).
    pub fn spawn(mut cmd: std::process::Command) -> BeatProcess {
        cmd.stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped());
        let mut child = cmd.spawn().expect("start beat");
        let (log, reader) = collect_stderr(&mut child, |_| {});
        BeatProcess {
            child,
            log,
            reader: Some(reader),
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether it is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Lines logged so far that contain `needle`.
    pub fn lines_with(&self, needle: &str) -> Vec<String> {
        self.log
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.contains(needle))
            .cloned()
            .collect()
    }

    /// Waits (up to `limit`) until it has logged a line containing
    /// `needle`; returns whether it did.
    pub fn logs_within(&self, limit: Duration, needle: &str) -> bool {
        wait_until(limit, || !self.lines_with(needle).is_empty())
    }

    pub fn log(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    /// Waits (up to `limit`) for it to exit, then for its log to be read
    /// to the end; its exit status, or `None` if it is still running.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        let mut status = None;
        wait_until(limit, || {
            status = self.child.try_wait().ok().flatten();
            status.is_some()
        });
        status?;
        if let Some(reader) = self.reader.take() {
            // The pipe ends with the process (the beat starts no children):
            // a check on the log after this sees its last line.
            assert!(
                wait_until(LOG_DRAIN, || reader.is_finished()),
                "the beat exited but its stderr was not read to the end in {LOG_DRAIN:?}"
            );
            reader.join().expect("the stderr reader panicked");
        }
        status
    }

    /// SIGTERM, then waits (up to `limit`) for the exit; returns whether it
    /// exited successfully.
    pub fn terminate(&mut self, limit: Duration) -> bool {
        // Not `proc::signal`: a process already gone is no failure here.
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status();
        self.wait_exit(limit).is_some_and(|s| s.success())
    }

    /// SIGKILL: no chance to clean up.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for BeatProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.kill();
        }
    }
}
