//! The beat as a Celery user has it: the wheel `pip install`ed into a
//! virtualenv (`beat` and the `celery_diesel_kit` package), with Celery
//! beside it.
//!
//! `.ci/run` builds the wheel and names it in `CDK_WHEEL`: the tests then
//! install it into `target/wheel-venv` (made afresh for each new wheel)
//! and run that `beat`. Without `CDK_WHEEL` (a plain `cargo test`) they
//! run this build's `beat` with the package from `python/` on
//! `PYTHONPATH`, in the Celery virtualenv; the tests that are about the
//! wheel itself are then skipped, loudly.

use super::celery::celery_python;
use super::process::BEAT_VARS;
use super::skip;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The release of celery-sqlalchemy-kit whose task classes the tests
/// declare routines with, as its users do; and `ephem`, which Celery needs
/// to make a solar schedule (which the tests see refused).
pub const USER_PACKAGES: [&str; 2] = ["celery-sqlalchemy-kit==0.2.0", "ephem"];

/// The Celery of the installed wheel's tests: the 5.5 series, as the
/// issue's users run.
const CELERY: &str = "celery[redis]>=5.5,<5.6";

/// The built wheel `.ci/run` names (`CDK_WHEEL`); `None`, skipped (a
/// failure under CI), without one.
pub fn built_wheel(test: &str) -> Option<PathBuf> {
    match std::env::var("CDK_WHEEL") {
        Ok(path) if !path.is_empty() => {
            let path = PathBuf::from(path);
            assert!(path.is_file(), "CDK_WHEEL={} is no file", path.display());
            Some(path)
        }
        _ => {
            skip(
                test,
                "no wheel built (CDK_WHEEL unset; .ci/run builds it with maturin)",
            );
            None
        }
    }
}

/// A Python with Celery and the kit, and the `beat` its user runs.
pub struct UserBeat {
    pub python: PathBuf,
    pub beat: PathBuf,
    /// The wheel, installed (`CDK_WHEEL`); else this build and `python/`.
    pub installed: bool,
}

impl UserBeat {
    /// The installed wheel if `.ci/run` built one, else this build; `None`
    /// (skipped, a failure under CI) without Python and pip.
    pub fn get(test: &str) -> Option<UserBeat> {
        if let Ok(wheel) = std::env::var("CDK_WHEEL") {
            if !wheel.is_empty() {
                return Some(UserBeat::installed(test, Path::new(&wheel)));
            }
        }
        let python = celery_python(test)?;
        pip_install_once(&python, "celery_sqlalchemy_kit, ephem", &USER_PACKAGES);
        Some(UserBeat {
            python,
            beat: PathBuf::from(env!("CARGO_BIN_EXE_beat")),
            installed: false,
        })
    }

    /// `target/wheel-venv` with `wheel`, Celery and the kit installed;
    /// made again when the wheel changes.
    fn installed(test: &str, wheel: &Path) -> UserBeat {
        let target = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target");
        let venv = target.join("wheel-venv");
        let lock = std::fs::File::create(target.join("wheel-venv.lock")).expect("lock file");
        lock.lock().expect("lock target/wheel-venv.lock");
        let meta = std::fs::metadata(wheel).expect("the wheel");
        let stamp = format!(
            "{} {} {:?}",
            wheel.display(),
            meta.len(),
            meta.modified().ok()
        );
        let ready = venv.join(".ready");
        if std::fs::read_to_string(&ready).ok().as_deref() != Some(stamp.as_str()) {
            let _ = std::fs::remove_dir_all(&venv);
            let made = Command::new("python3")
                .args(["-m", "venv"])
                .arg(&venv)
                .status()
                .is_ok_and(|s| s.success());
            assert!(made, "{test}: python3 -m venv {}", venv.display());
            let python = venv.join("bin/python");
            let installed = Command::new(&python)
                .args(["-m", "pip", "install", "--quiet"])
                .arg(wheel)
                .arg(CELERY)
                .args(USER_PACKAGES)
                .status()
                .is_ok_and(|s| s.success());
            assert!(installed, "{test}: pip install {} celery", wheel.display());
            std::fs::write(&ready, &stamp).expect("write .ready");
        }
        UserBeat {
            python: venv.join("bin/python"),
            beat: venv.join("bin/beat"),
            installed: true,
        }
    }

    /// `program` with nothing of the host's beat settings, and, for this
    /// build, the package from `python/` and this `beat` for its `sync`.
    fn command(&self, program: &Path) -> Command {
        let mut cmd = Command::new(program);
        for var in BEAT_VARS {
            cmd.env_remove(var);
        }
        cmd.env_remove("CELERY_DIESEL_KIT_BEAT");
        if !self.installed {
            cmd.env("PYTHONPATH", concat!(env!("CARGO_MANIFEST_DIR"), "/python"))
                .env("CELERY_DIESEL_KIT_BEAT", &self.beat);
        }
        cmd
    }

    /// The user's `beat`.
    pub fn beat_command(&self) -> Command {
        self.command(&self.beat)
    }

    /// The user's Python.
    pub fn python_command(&self) -> Command {
        self.command(&self.python)
    }

    /// What the user's app needs in its environment to import this
    /// package: nothing when installed, else `python/` on `PYTHONPATH`
    /// (for processes started without [`UserBeat::python_command`], such
    /// as a Celery worker).
    pub fn app_env(&self) -> Vec<(String, String)> {
        if self.installed {
            Vec::new()
        } else {
            vec![(
                "PYTHONPATH".into(),
                concat!(env!("CARGO_MANIFEST_DIR"), "/python").into(),
            )]
        }
    }

    /// What `beat --celery-app` needs besides the app: nothing when
    /// installed (it finds its virtualenv's Python itself), else that
    /// Python.
    pub fn python_args(&self) -> Vec<String> {
        if self.installed {
            Vec::new()
        } else {
            vec!["--python".into(), self.python.display().to_string()]
        }
    }
}

/// Installs `requirements` into `python`'s environment unless `module`
/// imports already (the kit, into the Celery virtualenv, once).
fn pip_install_once(python: &Path, module: &str, requirements: &[&str]) {
    let target = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target");
    let lock = std::fs::File::create(target.join("celery-venv.lock")).expect("lock file");
    lock.lock().expect("lock target/celery-venv.lock");
    let present = Command::new(python)
        .args(["-c", &format!("import {module}")])
        .status()
        .is_ok_and(|s| s.success());
    if !present {
        let installed = Command::new(python)
            .args(["-m", "pip", "install", "--quiet"])
            .args(requirements)
            .status()
            .is_ok_and(|s| s.success());
        assert!(installed, "pip install {requirements:?}");
    }
}
