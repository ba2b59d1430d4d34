//! `--celery-app MODULE:APP`: the periodic tasks a Celery app declares
//! (`app.conf.beat_schedule`, and the kit's `SyncTask`/`AsyncTask` classes
//! with a `schedule`) and its configuration, read in the app's own Python
//! by the package this binary ships in (`python -m celery_diesel_kit
//! export`), then checked here as every declared routine is.

use crate::declared::{self, Declared, Refused};
use anyhow::{bail, Context};
use celery_diesel_kit::Config;
use serde_json::Value;
use std::io::Read;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

/// How long the app may take to import before the beat gives up on it.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(120);

/// Where the periodic tasks come from.
pub struct CeleryApp {
    /// `MODULE:APP`, as `celery -A` takes it.
    pub app: String,
    /// The Python that imports it (`--python`), else the one beside this
    /// executable (a virtualenv's, where pip put `beat`), else `python3`.
    pub python: Option<PathBuf>,
}

/// The routines a Celery app declares, and the configuration it carries.
pub struct Exported {
    pub declared: Declared,
    /// `key = value` pairs of the kit's configuration names.
    config: Vec<(String, String)>,
}

impl CeleryApp {
    /// Imports the app in Python and reads its periodic tasks. An entry
    /// the beat cannot represent (a solar schedule, say) is refused by
    /// name; the others are declared.
    pub fn export(&self) -> anyhow::Result<Exported> {
        let python = self.python.clone().unwrap_or_else(default_python);
        log::info!(
            "beat: reading the periodic tasks of the Celery app {} with {}",
            self.app,
            python.display()
        );
        let mut child = Command::new(&python)
            .args(["-m", "celery_diesel_kit", "export", "-A", &self.app])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("cannot run {}", python.display()))?;
        let mut stdout = child.stdout.take().context("no pipe from python")?;
        let (tx, rx) = crossbeam_channel::bounded(1);
        std::thread::spawn(move || {
            let mut text = String::new();
            let read = stdout.read_to_string(&mut text).map(|_| text);
            let _ = tx.send(read);
        });
        let text = match rx.recv_timeout(EXPORT_TIMEOUT) {
            Ok(read) => read.context("cannot read what python printed")?,
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                bail!(
                    "the Celery app {} took more than {} s to import",
                    self.app,
                    EXPORT_TIMEOUT.as_secs()
                );
            }
        };
        let status = child.wait().context("waiting for python")?;
        if !status.success() {
            bail!(
                "cannot read the Celery app {} ({} -m celery_diesel_kit export: {status}; \
                 its error is above; is the wheel installed in that Python?)",
                self.app,
                python.display()
            );
        }
        parse(&text).with_context(|| format!("reading the Celery app {}", self.app))
    }
}

impl Exported {
    /// Sets the app's configuration in `config`, under the environment:
    /// defaults, then the `--config` file, then the app, then the
    /// environment, which wins as it does over the file.
    pub fn configure(&self, config: &mut Config) -> anyhow::Result<()> {
        for (key, value) in &self.config {
            config
                .set(key, value)
                .with_context(|| format!("the Celery app's {key}"))?;
        }
        config.apply_env(|name| std::env::var(name).ok())?;
        Ok(())
    }
}

/// The document `python -m celery_diesel_kit export` prints: `{"routines":
/// [...], "refused": [{"name", "source", "reason"}], "config": {...}}`.
fn parse(text: &str) -> anyhow::Result<Exported> {
    let document: Value = serde_json::from_str(text).context("the export is not JSON")?;
    let routines = document
        .get("routines")
        .and_then(Value::as_array)
        .context("the export has no \"routines\" array")?;
    let mut declared = declared::one_by_one(routines);
    for entry in document
        .get("refused")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let text = |key: &str| entry.get(key).and_then(Value::as_str).unwrap_or("?");
        declared.refused.push(Refused {
            name: text("name").to_owned(),
            reason: format!("{} entry: {}", text("source"), text("reason")),
        });
    }
    let mut config = Vec::new();
    for (key, value) in document
        .get("config")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
    {
        let value = match value {
            Value::String(s) => s.clone(),
            Value::Null => continue,
            other => other.to_string(),
        };
        config.push((key.clone(), value));
    }
    Ok(Exported { declared, config })
}

/// The Python of the environment this executable was installed into:
/// `python3` (or `python`) beside it, or in the `bin/` of the nearest
/// directory above it that has one. The wheel's `beat` is a script in the
/// virtualenv's `bin/` that runs this binary from
/// `lib/pythonX.Y/site-packages/celery_diesel_kit.scripts/`, four levels
/// below the virtualenv. Else `python3` on the PATH.
fn default_python() -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_default();
    for dir in exe.ancestors().skip(1).take(6) {
        for candidate in [dir.to_path_buf(), dir.join("bin")] {
            for name in ["python3", "python"] {
                let python = candidate.join(name);
                if python.is_file() {
                    return python;
                }
            }
        }
    }
    PathBuf::from("python3")
}

#[cfg(test)]
mod tests {
    use super::parse;

    #[test]
    fn an_export_declares_what_is_valid_and_refuses_the_rest_by_name() {
        let exported = parse(
            r#"{"routines": [
                {"name": "ok", "task": "t", "schedule": {"timedelta": 5}},
                {"name": "bad hour", "task": "t", "schedule": {"hour": 25}}],
               "refused": [{"name": "sunset", "source": "beat_schedule", "reason": "a solar schedule"}],
               "config": {"broker_url": "redis://h/0", "create_table": false, "scheduler_max_interval": 30, "timezone": null}}"#,
        )
        .unwrap();
        let names: Vec<&str> = exported
            .declared
            .routines
            .iter()
            .map(|r| r.name())
            .collect();
        assert_eq!(names, ["ok"]);
        let refused: Vec<(&str, &str)> = exported
            .declared
            .refused
            .iter()
            .map(|r| (r.name.as_str(), r.reason.as_str()))
            .collect();
        assert_eq!(
            refused[1],
            ("sunset", "beat_schedule entry: a solar schedule")
        );
        assert_eq!(refused[0].0, "bad hour");
        assert!(refused[0].1.contains("hour"), "{}", refused[0].1);
        assert_eq!(
            exported.config,
            [
                ("broker_url".to_owned(), "redis://h/0".to_owned()),
                ("create_table".to_owned(), "false".to_owned()),
                ("scheduler_max_interval".to_owned(), "30".to_owned()),
            ]
        );
        assert!(parse("[]").is_err());
    }
}
