//! Python's Celery: a virtualenv with it installed, and a real `celery
//! worker` that runs what a beat published.

use super::process::collect_stderr;
use super::redis::redis_conn;
use super::skip;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A Python with `celery` installed: `CDK_CELERY_PYTHON`, or a virtualenv
/// under `target/celery-venv`, created on first use. `None` (skipped, a
/// failure under CI) if `python3 -m venv` or `pip` cannot make it; a
/// file that cannot be written is a failure.
pub fn celery_python(test: &str) -> Option<PathBuf> {
    if let Ok(python) = std::env::var("CDK_CELERY_PYTHON") {
        return Some(PathBuf::from(python));
    }
    let target = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target");
    std::fs::create_dir_all(&target).expect("create target/");
    let venv = target.join("celery-venv");
    let python = venv.join("bin").join("python");
    let ready = venv.join(".ready");
    // One test process at a time builds it; the others wait on the lock.
    let lock =
        std::fs::File::create(target.join("celery-venv.lock")).expect("create the lock file");
    lock.lock().expect("lock target/celery-venv.lock");
    if !ready.exists() {
        let ok = std::process::Command::new("python3")
            .args(["-m", "venv"])
            .arg(&venv)
            .status()
            .is_ok_and(|s| s.success())
            && std::process::Command::new(&python)
                .args(["-m", "pip", "install", "--quiet", "celery[redis]>=5.5,<6"])
                .status()
                .is_ok_and(|s| s.success());
        if !ok {
            skip(
                test,
                "cannot install celery into target/celery-venv (python3 -m venv / pip)",
            );
            return None;
        }
        std::fs::write(&ready, "").expect("write target/celery-venv/.ready");
    }
    Some(python)
}

/// A real `celery worker` (solo pool, one task at a time) on `broker`,
/// consuming `queues`; killed when dropped.
pub struct CeleryWorker {
    child: std::process::Child,
    log: Arc<Mutex<Vec<String>>>,
}

impl CeleryWorker {
    pub fn start(python: &Path, broker: &str, queues: &str) -> CeleryWorker {
        CeleryWorker::start_recording_in(python, broker, queues, broker)
    }

    /// A worker on `broker` whose task records its calls in the Redis at
    /// `calls` (for a broker that is not Redis).
    pub fn start_recording_in(
        python: &Path,
        broker: &str,
        queues: &str,
        calls: &str,
    ) -> CeleryWorker {
        let dir = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python"));
        let env = [("CDK_BROKER_URL", broker), ("CDK_CALLS_URL", calls)];
        CeleryWorker::start_app(python, dir, "celery_app", queues, &env)
    }

    /// A worker of the Celery app `app` (`celery -A`), found in `dir`,
    /// consuming `queues`, with `env` for the app.
    pub fn start_app(
        python: &Path,
        dir: &Path,
        app: &str,
        queues: &str,
        env: &[(&str, &str)],
    ) -> CeleryWorker {
        let mut child = std::process::Command::new(python)
            .args([
                "-m",
                "celery",
                "-A",
                app,
                "worker",
                "--pool",
                "solo",
                "--concurrency",
                "1",
                "--without-gossip",
                "--without-mingle",
                "--without-heartbeat",
                "-l",
                "info",
                "-Q",
                queues,
            ])
            .arg(format!("--hostname=cdk-{}@%h", std::process::id()))
            .current_dir(dir)
            .envs(env.iter().copied())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("start celery worker");
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (log, _reader) = collect_stderr(&mut child, move |line| {
            if line.contains(" ready.") {
                let _ = ready_tx.send(());
            }
        });
        let worker = CeleryWorker { child, log };
        if ready_rx.recv_timeout(Duration::from_secs(60)).is_err() {
            panic!("celery worker not ready in 60 s:\n{}", worker.log());
        }
        worker
    }

    pub fn log(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }
}

impl Drop for CeleryWorker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The calls `tasks.record` (tests/python/celery_app.py) saw, in order.
pub fn recorded_calls(redis_url: &str) -> Vec<serde_json::Value> {
    let mut conn = redis_conn(redis_url);
    let lines: Vec<String> = ::redis::cmd("LRANGE")
        .arg("calls")
        .arg(0)
        .arg(-1)
        .query(&mut conn)
        .unwrap();
    lines
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}
