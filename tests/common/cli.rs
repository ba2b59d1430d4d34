//! The `beat` binary run as a command (a subcommand to its end): its exit
//! status and output.

use serde_json::Value;
use std::process::Command;

/// What a command did: exit status, stdout, stderr.
pub struct Ran {
    pub code: i32,
    pub out: String,
    pub err: String,
}

impl Ran {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.out)
            .unwrap_or_else(|e| panic!("not JSON ({e}):\n{}\n{}", self.out, self.err))
    }
}

impl std::fmt::Debug for Ran {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {}\n--- stdout\n{}--- stderr\n{}",
            self.code, self.out, self.err
        )
    }
}

/// Runs `beat ARGS` on `url` (and nothing of the host's settings).
pub fn beat(url: &str, args: &[&str]) -> Ran {
    beat_with(url, args, &[])
}

/// As [`beat`], with more variables.
pub fn beat_with(url: &str, args: &[&str], env: &[(&str, &str)]) -> Ran {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_beat"));
    for var in super::BEAT_VARS {
        cmd.env_remove(var);
    }
    cmd.args(args)
        .env("SCHEDULER_DB_URI", url)
        .envs(env.iter().copied())
        .current_dir(std::env::temp_dir());
    Ran::of(cmd)
}

impl Ran {
    /// Runs `cmd` to its end.
    pub fn of(mut cmd: Command) -> Ran {
        let out = cmd.output().expect("run a command");
        Ran {
            code: out.status.code().unwrap_or(-1),
            out: String::from_utf8_lossy(&out.stdout).into_owned(),
            err: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }
}
