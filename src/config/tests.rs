//! The configuration's keys, read from variables and files.

use super::*;
use std::collections::HashMap;

fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
    let map: HashMap<String, String> = pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    move |name| map.get(name).cloned()
}

/// Each key's variable: its name in upper case, but Celery's name for the
/// broker.
fn variable(key: &str) -> String {
    match key {
        "broker_url" => "CELERY_BROKER_URL".to_owned(),
        _ => key.to_ascii_uppercase(),
    }
}

/// A key, a value for it other than its default, and whether a
/// configuration holds exactly what that value says.
type Sample = (&'static str, &'static str, fn(&Config) -> bool);

/// One sample for every key (`every_key_…` fails on a key without one).
fn samples() -> Vec<Sample> {
    const fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }
    const fn millis(n: u64) -> Duration {
        Duration::from_millis(n)
    }
    vec![
        ("scheduler_db_uri", "postgres://u:p@h/db", |c| {
            c.scheduler_db_uri == "postgres://u:p@h/db"
        }),
        ("scheduler_max_interval", "12.5", |c| {
            c.scheduler_max_interval == millis(12_500)
        }),
        ("scheduler_sync_every", "60", |c| {
            c.scheduler_sync_every == secs(60)
        }),
        ("scheduler_watch_interval", "0.25", |c| {
            c.scheduler_watch_interval == millis(250)
        }),
        ("scheduler_db_timeout", "7", |c| {
            c.scheduler_db_timeout == secs(7)
        }),
        ("celery_max_retry", "7", |c| c.celery_max_retry == 7),
        ("celery_retry_delay", "0", |c| {
            c.celery_retry_delay == Duration::ZERO
        }),
        ("create_table", "False", |c| !c.create_table),
        ("broker_url", "redis://localhost:6379/3", |c| {
            c.broker_url.as_deref() == Some("redis://localhost:6379/3")
        }),
        ("broker_dedup_window", "600", |c| {
            c.broker_dedup_window == secs(600)
        }),
        ("worker_concurrency", "97", |c| c.worker_concurrency == 97),
        ("shutdown_timeout", "9", |c| c.shutdown_timeout == secs(9)),
        ("scheduler_misfire_policy", "skip", |c| {
            c.scheduler_misfire_policy == MisfirePolicy::Skip
        }),
        ("scheduler_misfire_grace_time", "2.5", |c| {
            c.scheduler_misfire_grace_time == millis(2500)
        }),
        ("timezone", "Europe/Berlin", |c| {
            c.timezone == chrono_tz::Europe::Berlin
        }),
        ("history", "off", |c| !c.history),
        ("history_max_age", "86400.5", |c| {
            c.history_max_age == millis(86_400_500)
        }),
        ("history_max_runs", "12", |c| c.history_max_runs == 12),
        ("scheduler_heartbeat_interval", "0.5", |c| {
            c.scheduler_heartbeat_interval == millis(500)
        }),
        ("scheduler_dead_after", "3", |c| {
            c.scheduler_dead_after == secs(3)
        }),
        ("http_addr", "127.0.0.1:9808", |c| {
            c.http_addr == Some(SocketAddr::from(([127, 0, 0, 1], 9808)))
        }),
        ("http_token", "0123456789abcdef-token", |c| {
            c.http_token.as_deref() == Some("0123456789abcdef-token")
        }),
        ("http_tokens", "alice:alice-token-0123456789", |c| {
            matches!(c.http_tokens.as_slice(), [alice] if alice.name() == "alice"
                && alice.secret == TokenSecret::Plain("alice-token-0123456789".into()))
        }),
        ("http_tokens_file", "/etc/beat/operators", |c| {
            c.http_tokens_file.as_deref() == Some(Path::new("/etc/beat/operators"))
        }),
        ("http_public_read", "yes", |c| c.http_public_read),
        ("audit_max_age", "3600", |c| c.audit_max_age == secs(3600)),
        ("audit_max_edits", "7", |c| c.audit_max_edits == 7),
    ]
}

#[test]
fn defaults_are_the_kits() {
    let c = Config::default();
    let secs = Duration::from_secs;
    assert_eq!(c.scheduler_db_uri, DEFAULT_DB_URI);
    assert_eq!(c.scheduler_max_interval, secs(300));
    assert_eq!(c.scheduler_sync_every, secs(180));
    assert_eq!(c.scheduler_watch_interval, Duration::from_millis(500));
    assert_eq!(c.scheduler_db_timeout, secs(30));
    assert_eq!(c.celery_max_retry, 3);
    assert_eq!(c.celery_retry_delay, secs(300));
    assert!(c.create_table);
    assert_eq!(c.broker_url, None);
    assert_eq!(c.broker_dedup_window, secs(3600));
    let cpus = std::thread::available_parallelism().map_or(2, |n| n.get());
    assert_eq!(c.worker_concurrency, cpus);
    assert_eq!(c.shutdown_timeout, secs(30));
    assert_eq!(c.scheduler_misfire_policy, MisfirePolicy::FireOnce);
    assert_eq!(c.scheduler_misfire_grace_time, secs(1));
    assert_eq!(c.timezone, Tz::UTC);
    assert!(c.history);
    assert_eq!(c.history_max_age, secs(7 * 86_400));
    assert_eq!(c.history_max_runs, 100);
    assert_eq!(c.scheduler_heartbeat_interval, secs(2));
    assert_eq!(c.scheduler_dead_after, secs(10));
    assert_eq!(c.http_addr, None);
    assert_eq!(c.http_token, None);
    assert!(c.http_tokens.is_empty());
    assert_eq!(c.http_tokens_file, None);
    assert!(!c.http_public_read);
    assert_eq!(c.audit_max_age, secs(90 * 86_400));
    assert_eq!(c.audit_max_edits, 100);
    assert_eq!(KEY_NAMES.len(), 27, "a new key: add its default here");
    c.validate().unwrap();
}

/// Each key alone from its variable sets that key and no other; then all
/// of them at once. The keys come from `KEY_NAMES` (declared once, in
/// `keys!`), so a new key without a sample fails here.
#[test]
fn every_key_is_read_from_its_upper_case_variable() {
    let samples = samples();
    let mut sampled: Vec<&str> = samples.iter().map(|s| s.0).collect();
    let mut declared = KEY_NAMES.to_vec();
    sampled.sort_unstable();
    declared.sort_unstable();
    assert_eq!(sampled, declared, "one sample per declared key");
    for (key, value, holds) in &samples {
        let var = variable(key);
        let mut c = Config::default();
        assert!(
            !holds(&c),
            "{key}: {value:?} is its default, which proves nothing"
        );
        c.apply_env(env(&[(&var, value)])).unwrap();
        assert!(holds(&c), "{var}={value} did not set {key}: {c:?}");
        let mut only_that = Config::default();
        assert!(only_that.set(key, value).unwrap());
        assert!(c == only_that, "{var} changed more than {key}: {c:?}");
    }
    let all: Vec<(String, &str)> = samples.iter().map(|(k, v, _)| (variable(k), *v)).collect();
    let pairs: Vec<(&str, &str)> = all.iter().map(|(k, v)| (k.as_str(), *v)).collect();
    let mut c = Config::default();
    c.apply_env(env(&pairs)).unwrap();
    for (key, value, holds) in &samples {
        assert!(
            holds(&c),
            "{key} = {value:?} not read beside the others: {c:?}"
        );
    }
    let shown = format!("{c:?}");
    assert!(!shown.contains("alice-token-0123456789"), "{shown}");
    assert!(!shown.contains("0123456789abcdef-token"), "{shown}");
    assert!(!shown.contains("u:p@"), "{shown}");
}

#[test]
fn http_settings_are_checked_and_a_bad_token_is_not_repeated() {
    let mut c = Config::default();
    let e = c.set("http_addr", "localhost").unwrap_err().to_string();
    assert!(
        e.contains("http_addr") && e.contains("127.0.0.1:9808"),
        "{e}"
    );
    let e = c.set("http_token", "short-secret").unwrap_err().to_string();
    assert!(e.contains("http_token") && e.contains("16"), "{e}");
    assert!(!e.contains("short-secret"), "{e}");
}

#[test]
fn the_zone_is_read_from_timezone_then_celerys_name_and_checked() {
    let mut c = Config::default();
    assert_eq!(c.timezone.name(), "UTC");
    c.apply_env(env(&[("CELERY_TIMEZONE", "Asia/Kathmandu")]))
        .unwrap();
    assert_eq!(c.timezone.name(), "Asia/Kathmandu");
    c.apply_env(env(&[
        ("TIMEZONE", "Pacific/Chatham"),
        ("CELERY_TIMEZONE", "Asia/Kathmandu"),
    ]))
    .unwrap();
    assert_eq!(c.timezone.name(), "Pacific/Chatham", "TIMEZONE wins");
    let err = Config::default()
        .apply_env(env(&[("TIMEZONE", "Mars/Olympus_Mons")]))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("timezone") && err.contains("Mars/Olympus_Mons"),
        "{err}"
    );
}

#[test]
fn the_kits_default_prefixed_retry_variables_are_read_too() {
    let mut c = Config::default();
    c.apply_env(env(&[
        ("DEFAULT_CELERY_MAX_RETRY", "9"),
        ("DEFAULT_CELERY_RETRY_DELAY", "7"),
    ]))
    .unwrap();
    assert_eq!(
        (c.celery_max_retry, c.celery_retry_delay),
        (9, Duration::from_secs(7))
    );
    c.apply_env(env(&[
        ("CELERY_MAX_RETRY", "1"),
        ("DEFAULT_CELERY_MAX_RETRY", "9"),
    ]))
    .unwrap();
    assert_eq!(c.celery_max_retry, 1, "the documented name wins");
}

#[test]
fn bad_values_name_the_key_and_the_value() {
    for (key, value) in [
        ("scheduler_max_interval", "soon"),
        ("scheduler_max_interval", "0"),
        ("scheduler_sync_every", "-1"),
        ("celery_max_retry", "-3"),
        ("celery_retry_delay", "NaN"),
        ("create_table", "maybe"),
        ("worker_concurrency", "0"),
        ("scheduler_misfire_policy", "never"),
        // Positive seconds: not zero, not negative, finite, a number.
        ("scheduler_db_timeout", "0"),
        ("scheduler_db_timeout", "-1"),
        ("broker_dedup_window", "0"),
        ("broker_dedup_window", "inf"),
        ("history_max_age", "0"),
        ("history_max_age", "a week"),
        ("history_max_age", "1e30"),
        ("scheduler_heartbeat_interval", "0"),
        ("scheduler_heartbeat_interval", "NaN"),
        ("scheduler_dead_after", "-10"),
        ("scheduler_dead_after", "ten"),
        // Seconds ≥ 0.
        ("shutdown_timeout", "-1"),
        ("shutdown_timeout", "inf"),
        ("scheduler_misfire_grace_time", "-0.5"),
        ("scheduler_misfire_grace_time", "NaN"),
        // Whole numbers ≥ 1.
        ("history_max_runs", "0"),
        ("history_max_runs", "-1"),
        ("history_max_runs", "2.5"),
        // A boolean.
        ("history", "sometimes"),
        ("history", "2"),
    ] {
        let var = variable(key);
        let mut c = Config::default();
        let err = c.apply_env(env(&[(&var, value)])).unwrap_err();
        let text = err.to_string();
        assert!(
            matches!(&err, ConfigError::Invalid { key: k, value: v, .. } if k == &key && v == value),
            "{var}={value}: {err:?}"
        );
        assert!(
            text.starts_with(&format!("invalid {key} = {value:?}: expected ")),
            "{text}"
        );
        assert!(
            c == Config::default(),
            "{var}={value} changed the configuration"
        );
    }
    // The edges that are allowed, so the refusals above are the values'.
    for (key, value) in [
        ("scheduler_db_timeout", "0.001"),
        ("broker_dedup_window", "1"),
        ("history_max_age", "0.5"),
        ("scheduler_heartbeat_interval", "0.001"),
        ("scheduler_dead_after", "0.002"),
        ("shutdown_timeout", "0"),
        ("scheduler_misfire_grace_time", "0"),
        ("history_max_runs", "1"),
        ("history", "ON"),
    ] {
        Config::default()
            .apply_env(env(&[(&variable(key), value)]))
            .unwrap_or_else(|e| panic!("{key} = {value}: {e}"));
    }
}

/// What no single key can say: `scheduler_dead_after` must be at least
/// twice `scheduler_heartbeat_interval` (exactly twice is allowed).
#[test]
fn a_dead_after_under_two_heartbeats_is_refused_naming_both_keys() {
    let mut c = Config::default();
    c.apply_env(env(&[
        ("SCHEDULER_HEARTBEAT_INTERVAL", "2"),
        ("SCHEDULER_DEAD_AFTER", "3.999"),
    ]))
    .unwrap();
    let err = c.validate().unwrap_err();
    assert_eq!(
        err.to_string(),
        "invalid scheduler_dead_after = \"3.999s\": must be at least twice scheduler_heartbeat_interval"
    );
    c.scheduler_dead_after = Duration::from_secs(4);
    c.validate().unwrap();
}

#[test]
fn a_file_is_read_line_by_line() {
    let dir = std::env::temp_dir().join(format!("cdk-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("beat.conf");
    let no_env = |_: &str| None;
    std::fs::write(
        &path,
        "# comment\nscheduler_max_interval = 30\ncelery_max_retry = \"2\"\n\n  timezone='Asia/Kathmandu'  \n",
    )
    .unwrap();
    let loaded = Config::load_with(&path, no_env).unwrap();
    let expected = Config {
        scheduler_max_interval: Duration::from_secs(30),
        celery_max_retry: 2,
        timezone: chrono_tz::Asia::Kathmandu,
        ..Config::default()
    };
    assert!(loaded == expected, "{loaded:?}");

    std::fs::write(&path, "# ok\nno_such_key = 1\n").unwrap();
    let err = Config::load_with(&path, no_env).unwrap_err().to_string();
    let shown = path.display();
    assert_eq!(
        err,
        format!("{shown}:2: unknown configuration key \"no_such_key\"")
    );
    std::fs::write(&path, "history = on\n\njust words\n").unwrap();
    let err = Config::load_with(&path, no_env).unwrap_err().to_string();
    assert_eq!(err, format!("{shown}:3: expected `key = value`"));
    std::fs::write(&path, "history = on\nhistory_max_runs = none\n").unwrap();
    let err = Config::load_with(&path, no_env).unwrap_err().to_string();
    assert_eq!(
        err,
        format!("{shown}:2: invalid history_max_runs = \"none\": expected a whole number ≥ 1")
    );
    let missing = dir.join("missing.conf");
    let err = Config::load_with(&missing, no_env).unwrap_err();
    assert!(
        matches!(&err, ConfigError::Io { path, source } if path == &missing.display().to_string()
            && source.kind() == std::io::ErrorKind::NotFound),
        "{err:?}"
    );
    assert!(err
        .to_string()
        .starts_with(&format!("cannot read {}: ", missing.display())));
    std::fs::remove_dir_all(&dir).unwrap();
}

/// As documented: the environment overrides the file, which overrides the
/// defaults; an empty variable leaves the file's value.
#[test]
fn the_environment_overrides_the_file_which_overrides_the_defaults() {
    let dir = std::env::temp_dir().join(format!("cdk-config-env-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("beat.conf");
    std::fs::write(
        &path,
        "history_max_runs = 5\ncelery_max_retry = 2\ntimezone = Asia/Kathmandu\n",
    )
    .unwrap();
    let loaded = Config::load_with(
        &path,
        env(&[
            ("HISTORY_MAX_RUNS", "9"),
            ("CELERY_MAX_RETRY", " "),
            ("AUDIT_MAX_EDITS", "4"),
        ]),
    )
    .unwrap();
    assert_eq!(
        loaded.history_max_runs, 9,
        "the variable wins over the file"
    );
    assert_eq!(
        loaded.celery_max_retry, 2,
        "an empty variable leaves the file's value"
    );
    assert_eq!(
        loaded.timezone,
        chrono_tz::Asia::Kathmandu,
        "the file wins over the default"
    );
    assert_eq!(
        loaded.audit_max_edits, 4,
        "a variable for a key the file has not"
    );
    assert_eq!(
        loaded.shutdown_timeout,
        Duration::from_secs(30),
        "neither: the default"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
