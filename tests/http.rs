//! The HTTP listener: `/metrics` (checked by `promtool` and scraped by a
//! real Prometheus), `/healthz` and `/readyz` through a database cut, the
//! token, the session and the anti-forgery token, escaping, and the
//! dashboard's list, edit and preview. The browser tests are in
//! `tests/browser.rs`.

mod common;

use celery_diesel_kit::ops::{Change, Operator};
use celery_diesel_kit::{Beat, BeatHandle, HttpServer, Routine};
use chrono::Timelike;
use common::web::{self, any_port, csrf_of, encode, get, post, sample, tool};
use common::{at, captured_log, every, is_active, wait_until, Recorder, TestClock, TestDb};
use serde_json::json;
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const TOKEN: &str = "t0ken-for-the-http-tests";

/// A task that always fails.
struct Fail;

impl celery_diesel_kit::SyncTask for Fail {
    fn name(&self) -> &str {
        "fail"
    }
    fn run(&self, _: &celery_diesel_kit::TaskContext) -> celery_diesel_kit::TaskResult {
        Err("no".into())
    }
}

#[test]
fn metrics_count_runs_by_task_target_and_outcome_and_pass_promtool() {
    let db = TestDb::sqlite("metrics_by_task");
    let mut config = db.config();
    config.celery_max_retry = 0;
    let ok = Recorder::new("ok");
    let mut beat = Beat::builder(config.clone())
        .clock(TestClock::at(at(0)))
        .task(ok.clone())
        .task(Fail)
        .routine(Routine::new("a1", "ok", every(10)))
        .routine(Routine::new("a2", "ok", every(10)))
        .routine(Routine::new("f", "fail", every(10)))
        .routine(Routine::new("bad", "nope \"quoted\"", every(10)))
        .start_manual()
        .unwrap();
    beat.tick(at(0)).unwrap();
    beat.tick(at(10)).unwrap();
    assert!(
        wait_until(Duration::from_secs(10), || {
            let s = beat.stats();
            s.succeeded == 2 && s.gave_up == 1
        }),
        "{:?}",
        beat.stats()
    );
    let server = HttpServer::start(any_port(), beat.monitor(), config.clone()).unwrap();
    let answer = get(server.addr(), "/metrics");
    assert_eq!(answer.status, 200);
    assert_eq!(
        answer.header("Content-Type"),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    let m = &answer.body;
    let runs = |task: &str, target: &str, outcome: &str| {
        sample(
            m,
            &format!(
                "beat_runs_total{{task=\"{task}\",target=\"{target}\",outcome=\"{outcome}\"}}"
            ),
        )
    };
    assert_eq!(runs("ok", "in_process", "dispatched"), Some(2.0), "{m}");
    assert_eq!(runs("ok", "in_process", "succeeded"), Some(2.0), "{m}");
    assert_eq!(runs("ok", "in_process", "failed"), None, "{m}");
    assert_eq!(runs("fail", "in_process", "dispatched"), Some(1.0), "{m}");
    assert_eq!(runs("fail", "in_process", "failed"), Some(1.0), "{m}");
    assert_eq!(runs("fail", "in_process", "gave_up"), Some(1.0), "{m}");
    // The task name is escaped in its label.
    assert_eq!(
        runs(r#"nope \"quoted\""#, "none", "invalid"),
        Some(1.0),
        "{m}"
    );
    // Never a series per routine.
    assert!(!m.contains("a1") && !m.contains("routine="), "{m}");
    assert_eq!(sample(m, "beat_lateness_seconds_count"), Some(3.0), "{m}");
    assert_eq!(
        sample(m, "beat_lateness_seconds_bucket{le=\"+Inf\"}"),
        Some(3.0),
        "{m}"
    );
    // One claim transaction per tick: each found its due rows (four at
    // most) in one batch.
    assert_eq!(
        sample(m, "beat_claim_duration_seconds_count"),
        Some(2.0),
        "{m}"
    );
    assert_eq!(
        sample(m, "beat_routines{state=\"active\"}"),
        Some(3.0),
        "{m}"
    );
    assert_eq!(
        sample(m, "beat_routines{state=\"error\"}"),
        Some(1.0),
        "{m}"
    );
    assert_eq!(
        sample(m, "beat_routines{state=\"inactive\"}"),
        Some(0.0),
        "{m}"
    );
    assert_eq!(sample(m, "beat_beats_alive"), Some(1.0), "{m}");
    assert_eq!(sample(m, "beat_database_up"), Some(1.0), "{m}");
    // A manual beat has no scheduler thread: unhealthy, and it says why.
    assert_eq!(sample(m, "beat_healthy"), Some(0.0), "{m}");
    let health = get(server.addr(), "/healthz");
    assert_eq!(
        (health.status, health.body.as_str()),
        (503, "the scheduler thread is not running\n")
    );

    let open = web::request(
        server.addr(),
        "GET",
        "/metrics",
        &[(
            "Accept",
            "application/openmetrics-text;version=1.0.0,text/plain;q=0.5",
        )],
        "",
    );
    assert!(open
        .header("Content-Type")
        .is_some_and(|t| t.starts_with("application/openmetrics-text")));
    assert!(open.body.ends_with("# EOF\n"), "{}", open.body);
    assert!(open.body.contains("# TYPE beat_runs counter\n"));

    let Some(promtool) = tool(
        "metrics_count_runs_by_task_target_and_outcome_and_pass_promtool",
        "promtool",
        "prometheus",
    ) else {
        return;
    };
    let mut check = Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut check.stdin.take().unwrap(), m.as_bytes()).unwrap();
    let out = check.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}\n{m}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_real_prometheus_scrapes_the_beat_and_answers_queries() {
    let test = "a_real_prometheus_scrapes_the_beat_and_answers_queries";
    let Some(prometheus) = tool(test, "prometheus", "prometheus") else {
        return;
    };
    let db = TestDb::sqlite("prometheus_scrape");
    let config = db.config();
    let tick = Recorder::new("tick");
    let beat = Beat::builder(config.clone())
        .task(tick.clone())
        .routine(Routine::new("every second", "tick", every(1)))
        .start()
        .unwrap();
    let server = HttpServer::start(any_port(), beat.monitor(), config).unwrap();
    let dir = std::env::temp_dir().join(format!("cdk-prometheus-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("prometheus.yml"),
        format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: beat\n    static_configs:\n      - targets: ['{}']\n",
            server.addr()
        ),
    )
    .unwrap();
    let port = web::free_port();
    let log = std::fs::File::create(dir.join("prometheus.log")).unwrap();
    let mut child = Command::new(prometheus)
        .arg(format!(
            "--config.file={}",
            dir.join("prometheus.yml").display()
        ))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    let api: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let query = |q: &str| -> Vec<serde_json::Value> {
        if std::net::TcpStream::connect(api).is_err() {
            return Vec::new();
        }
        let answer = get(api, &format!("/api/v1/query?query={}", encode(q)));
        let json: serde_json::Value = serde_json::from_str(&answer.body).unwrap_or_default();
        json["data"]["result"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    };
    let value = |r: &serde_json::Value| -> f64 {
        r["value"][1]
            .as_str()
            .and_then(|v| v.parse().ok())
            .unwrap_or(-1.0)
    };
    let succeeded = r#"beat_runs_total{task="tick",outcome="succeeded"}"#;
    let found = wait_until(Duration::from_secs(60), || {
        query(succeeded).first().is_some_and(|r| value(r) >= 2.0)
    });
    let series = query(succeeded);
    let up = query("beat_database_up");
    let active = query(r#"beat_routines{state="active"}"#);
    let _ = child.kill();
    let _ = child.wait();
    let prometheus_log = std::fs::read_to_string(dir.join("prometheus.log")).unwrap_or_default();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        found,
        "Prometheus never had {succeeded} ≥ 2:\n{prometheus_log}"
    );
    assert_eq!(series.len(), 1, "{series:?}");
    let labels = &series[0]["metric"];
    assert_eq!(labels["job"], "beat");
    assert_eq!(labels["target"], "in_process");
    assert_eq!(labels["__name__"], "beat_runs_total");
    assert_eq!(up.first().map(value), Some(1.0), "{up:?}");
    assert_eq!(active.first().map(value), Some(1.0), "{active:?}");
    drop(server);
    beat.stop();
}

/// The back-off's cap between tries during an outage, of the database
/// and of the broker alike (`BACKOFF.1` in src/backoff.rs).
const BACKOFF_CAP: Duration = Duration::from_secs(5);
/// The connection pool's checkout timeout (src/store/pool.rs): r2d2 tries
/// a new connection again after at most half of it.
const CHECKOUT_TIMEOUT: Duration = Duration::from_secs(5);
/// What a loaded machine may add to a turn: a pass or a publish on a
/// local service, and the test's next poll of `/healthz` (10 ms apart,
/// each a request).
const SLACK: Duration = Duration::from_millis(500);

/// Restores the cut and waits for `/healthz` to answer 200, for at most
/// `latest` (still 503 just before the restore); how long it took.
fn healthy_after_restore(
    proxy: &common::Proxy,
    latest: Duration,
    healthz: impl Fn() -> u16,
) -> Duration {
    assert_eq!(healthz(), 503);
    proxy.restore();
    let restored = Instant::now();
    assert!(
        wait_until(latest, || healthz() == 200),
        "still unhealthy {:?} after the restore",
        restored.elapsed()
    );
    let healthy_after = restored.elapsed();
    assert!(healthy_after <= latest + SLACK, "{healthy_after:?}");
    healthy_after
}

#[test]
fn health_turns_503_while_the_database_is_cut_and_200_after() {
    let Some(db) = TestDb::postgres("health_database_cut") else {
        return;
    };
    db.store();
    let proxy = common::Proxy::in_front_of(&db.url);
    let mut config = db.config();
    config.scheduler_db_uri = proxy.url(&db.url);
    config.scheduler_db_timeout = Duration::from_secs(3);
    let watch = config.scheduler_watch_interval;
    assert_eq!(watch, Duration::from_millis(100));
    let beat = Beat::builder(config.clone())
        .task(Recorder::new("ok"))
        .routine(Routine::new("r", "ok", every(1)))
        .start()
        .unwrap();
    // The bound: 20 watch intervals (2 s), at least 10 s.
    let bound = beat.monitor().bound();
    assert_eq!(bound, Duration::from_secs(10));
    let server = HttpServer::start(any_port(), beat.monitor(), config).unwrap();
    let addr = server.addr();
    let healthz = || get(addr, "/healthz").status;
    assert!(wait_until(Duration::from_secs(10), || get(addr, "/readyz")
        .status
        == 200));
    assert_eq!(get(addr, "/healthz").body, "ok\n");

    // Cut: /healthz turns 503 once the last good pass is older than the
    // bound. That pass came at most a watch interval and a pass before
    // the cut (a pass starts at least every watch interval), and none
    // came after it; health is judged at each request. So the turn comes
    // in [bound - watch - a pass, bound + SLACK] after the cut (a pass:
    // 0.1 s more on the lower side).
    proxy.cut();
    let cut = Instant::now();
    let (earliest, latest) = (bound - watch - Duration::from_millis(100), bound + SLACK);
    // The first 503: when it was asked for, and when it was answered.
    let mut turned = None;
    assert!(
        wait_until(latest, || {
            let asked = chrono::Utc::now();
            let unhealthy = healthz() == 503;
            turned = unhealthy.then(|| (asked, chrono::Utc::now()));
            unhealthy
        }),
        "still healthy {:?} after the cut",
        cut.elapsed()
    );
    let unhealthy_after = cut.elapsed();
    assert!(
        unhealthy_after >= earliest && unhealthy_after <= latest + SLACK,
        "503 after {unhealthy_after:?}, not in [{earliest:?}, {latest:?}]"
    );
    // Exactly, from the last good pass (its time is on /metrics): not
    // answered before the bound had passed, and asked for within SLACK
    // after it.
    let (asked, answered) = turned.unwrap();
    let last_pass = sample(
        &get(addr, "/metrics").body,
        "beat_last_pass_timestamp_seconds",
    )
    .map(|t| chrono::DateTime::from_timestamp_micros((t * 1e6).round() as i64).unwrap())
    .unwrap();
    let bound_td = chrono::TimeDelta::from_std(bound).unwrap();
    let slack_td = chrono::TimeDelta::from_std(SLACK).unwrap();
    assert!(
        answered - last_pass >= bound_td && asked - last_pass <= bound_td + slack_td,
        "last pass {last_pass}, 503 asked {asked}, answered {answered} (bound {bound:?})"
    );
    let health = get(addr, "/healthz");
    assert!(
        health.body.starts_with("database failing for ") && health.body.lines().count() == 1,
        "{}",
        health.body
    );
    assert!(!health.body.contains(&db.url), "{}", health.body);
    assert_eq!(get(addr, "/readyz").status, 503);
    let m = get(addr, "/metrics").body;
    assert_eq!(sample(&m, "beat_database_up"), Some(0.0), "{m}");
    assert_eq!(sample(&m, "beat_healthy"), Some(0.0), "{m}");

    // Restore: 200 at the first pass that succeeds, and not before (still
    // 503 up to the restore). The loop's tries are at most the back-off's
    // cap apart, and one that waits on the pool's checkout gets the
    // connection r2d2 tries again at most half the checkout timeout after
    // the restore; a try that timed out just before that sleeps one cap
    // more. So the turn comes within [0, checkout/2 + cap + SLACK].
    let healthy_after =
        healthy_after_restore(&proxy, CHECKOUT_TIMEOUT / 2 + BACKOFF_CAP + SLACK, healthz);
    let m = get(addr, "/metrics").body;
    assert_eq!(sample(&m, "beat_database_up"), Some(1.0), "{m}");
    eprintln!("healthz: 503 after {unhealthy_after:.1?} of a database cut (bound {bound:?}), 200 {healthy_after:.1?} after the restore");

    beat.stop();
    let health = get(addr, "/healthz");
    assert_eq!(
        (health.status, health.body.as_str()),
        (503, "the scheduler thread is not running\n")
    );
}

/// How long the broker may go unpublished to before the beat checks it
/// (the broker's watch; it wakes four times as often).
const CHECK_INTERVAL: Duration = Duration::from_secs(1);

/// With nothing due (the one routine is hourly), a cut of the broker at
/// `url` shows all the same: the beat's watch checks the broker when
/// nothing was published for a second, so `beat_broker_up` turns 0 within
/// that (and a check's failure), `/healthz` 503 once the outage is older
/// than the bound, and both turn back at the first check after the
/// restore.
fn health_follows_a_cut_broker_with_nothing_due(test: &str, url: &str) {
    let proxy = common::Proxy::in_front_of(url);
    let db = TestDb::sqlite(test);
    let mut config = db.config();
    config.broker_url = Some(proxy.url(url));
    let beat = Beat::builder(config.clone())
        .routine(Routine::new("to celery", "reports.send", every(3600)))
        .start()
        .unwrap();
    // 20 watch intervals of 0.1 s, at least 10 s.
    let bound = beat.monitor().bound();
    assert_eq!(bound, Duration::from_secs(10));
    let server = HttpServer::start(any_port(), beat.monitor(), config).unwrap();
    let addr = server.addr();
    let healthz = || get(addr, "/healthz").status;
    let broker_up = || sample(&get(addr, "/metrics").body, "beat_broker_up");
    assert!(wait_until(Duration::from_secs(10), || healthz() == 200));
    assert_eq!(broker_up(), Some(1.0));

    proxy.cut();
    let cut = Instant::now();
    let latest = CHECK_INTERVAL + CHECK_INTERVAL / 4 + SLACK;
    assert!(
        wait_until(latest, || broker_up() == Some(0.0)),
        "beat_broker_up still 1 {:?} after a cut with nothing due",
        cut.elapsed()
    );
    let down_after = cut.elapsed();
    assert_eq!(beat.stats().fired, 0, "nothing was published to learn it");
    // /healthz turns 503 once the outage is older than the bound: not
    // before bound after the cut (the outage starts after it), and within
    // bound (+ SLACK) after beat_broker_up was seen turning 0.
    assert!(
        wait_until(down_after + bound + SLACK, || healthz() == 503),
        "still healthy {:?} after the cut",
        cut.elapsed()
    );
    let unhealthy_after = cut.elapsed();
    assert!(
        unhealthy_after >= bound && unhealthy_after <= down_after + bound + 2 * SLACK,
        "503 after {unhealthy_after:?} (beat_broker_up 0 after {down_after:?}; bound {bound:?})"
    );
    let health = get(addr, "/healthz").body;
    assert!(
        health.starts_with("broker failing for ") && health.lines().count() == 1,
        "{health}"
    );

    // Restore: 200 at the first check that succeeds, and not before
    // (still 503 up to the restore). Checks follow the back-off, whose
    // tries are at most its cap apart, so the turn comes within
    // [0, cap + SLACK] after the restore.
    let healthy_after =
        healthy_after_restore(&proxy, BACKOFF_CAP + CHECK_INTERVAL / 4 + SLACK, healthz);
    assert_eq!(broker_up(), Some(1.0));
    eprintln!("healthz ({test}): broker down {down_after:.1?} and 503 {unhealthy_after:.1?} after a broker cut with nothing due (bound {bound:?}), 200 {healthy_after:.1?} after the restore");
    drop(server);
    beat.stop();
}

#[test]
fn health_follows_a_cut_redis_with_nothing_due() {
    let test = "health_follows_a_cut_redis_with_nothing_due";
    if let Some(redis) = common::redis_db(test, 12) {
        health_follows_a_cut_broker_with_nothing_due(test, &redis);
    }
}

#[test]
fn health_follows_a_cut_rabbitmq_with_nothing_due() {
    let test = "health_follows_a_cut_rabbitmq_with_nothing_due";
    if let Some(vhost) = common::rabbit::rabbit_vhost(test, "health") {
        health_follows_a_cut_broker_with_nothing_due(test, &vhost.url());
    }
}

#[test]
fn an_address_in_use_is_an_error_naming_http_addr() {
    let db = TestDb::sqlite("http_addr_in_use");
    let config = db.config();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let beat = Beat::builder(config.clone()).start_manual().unwrap();
    let e = HttpServer::start(taken.local_addr().unwrap(), beat.monitor(), config)
        .unwrap_err()
        .to_string();
    assert!(
        e.starts_with(&format!(
            "cannot listen on http_addr {}: ",
            taken.local_addr().unwrap()
        )),
        "{e}"
    );
}

/// A beat with one hourly routine `r`, and its dashboard guarded by the
/// operator token `TOKEN`.
fn guarded_dashboard(db: &TestDb) -> (celery_diesel_kit::Config, BeatHandle, HttpServer) {
    let mut config = db.config();
    config.http_token = Some(TOKEN.into());
    let beat = Beat::builder(config.clone())
        .task(Recorder::new("ok"))
        .routine(Routine::new("r", "ok", every(3600)))
        .start()
        .unwrap();
    let server = HttpServer::start(any_port(), beat.monitor(), config.clone()).unwrap();
    (config, beat, server)
}

#[test]
fn changes_need_the_token_and_forged_requests_change_nothing() {
    let db = TestDb::sqlite("http_auth");
    let (config, beat, server) = guarded_dashboard(&db);
    let addr = server.addr();
    let disable = |headers: &[(&str, &str)], csrf: Option<&str>| {
        let mut form = vec![("name", "r")];
        if let Some(csrf) = csrf {
            form.push(("csrf", csrf));
        }
        post(addr, "/routine/disable", headers, &form).status
    };
    assert_eq!(disable(&[], None), 401);
    assert_eq!(
        disable(&[("Authorization", "Bearer not-the-token")], None),
        401
    );
    assert_eq!(
        disable(&[("Authorization", &format!("Bearer {TOKEN}x"))], None),
        401
    );
    assert_eq!(get(addr, "/routine/disable?name=r").status, 405);
    let huge = "x".repeat(300 * 1024);
    let too_large = post(
        addr,
        "/routine/disable",
        &[("Authorization", &format!("Bearer {TOKEN}"))],
        &[("name", "r"), ("pad", &huge)],
    );
    assert_eq!(too_large.status, 413);
    assert!(is_active(&config, "r"));

    let wrong = post(addr, "/login", &[], &[("token", "wrong-token-wrong-token")]);
    assert_eq!(wrong.status, 401);
    assert!(wrong.header("Set-Cookie").is_none());
    let login = post(addr, "/login", &[], &[("token", TOKEN)]);
    assert_eq!(login.status, 303);
    let set_cookie = login.header("Set-Cookie").unwrap().to_owned();
    assert!(
        set_cookie.contains("HttpOnly") && set_cookie.contains("SameSite=Strict"),
        "{set_cookie}"
    );
    let cookie = set_cookie.split(';').next().unwrap().to_owned();
    let session = [("Cookie", cookie.as_str())];
    // A forged form: the session's cookie, without or with a wrong token.
    assert_eq!(disable(&session, None), 403);
    assert_eq!(disable(&session, Some("forged")), 403);
    assert!(is_active(&config, "r"));
    // A forged cookie is no session.
    assert_eq!(
        disable(&[("Cookie", "beat_session=forged")], Some("forged")),
        401
    );

    // The counts shown (kept up to 15 s) are read again after a change.
    assert!(request_page(addr, "/", &session).contains(">0 inactive<"));
    let page = request_page(addr, "/routine?name=r", &session);
    // A name no routine has is 404, and says so.
    let missing = web::request(addr, "GET", "/routine?name=nope", &session, "");
    assert_eq!(missing.status, 404, "{}", missing.body);
    assert!(
        missing.body.contains("routine nope: no such routine"),
        "{}",
        missing.body
    );
    let csrf = csrf_of(&page);
    assert_eq!(disable(&session, Some(&csrf)), 303);
    assert!(!is_active(&config, "r"));
    assert!(request_page(addr, "/", &session).contains(">1 inactive<"));
    let enabled = post(
        addr,
        "/routine/enable",
        &[("Authorization", &format!("Bearer {TOKEN}"))],
        &[("name", "r")],
    );
    assert_eq!(enabled.status, 303);
    assert_eq!(
        enabled.header("Location"),
        Some("/routine?name=r&done=enabled")
    );
    assert!(is_active(&config, "r"));

    // The token is never shown, nor the session's cookie.
    for path in ["/", "/routine?name=r", "/beats", "/metrics", "/login"] {
        let body = request_page(addr, path, &session);
        assert!(!body.contains(TOKEN), "{path} shows the token");
    }
    // A forged logout (a form without the session's form token, or with
    // a wrong one, e.g. from another site) is refused and ends nothing:
    // no cookie is cleared and the session still reads and changes.
    for form in [vec![], vec![("csrf", "forged")]] {
        let forged = post(addr, "/logout", &session, &form);
        assert_eq!(forged.status, 403, "{form:?}: {}", forged.body);
        assert!(
            forged.body.contains("anti-forgery token"),
            "{}",
            forged.body
        );
        assert_eq!(forged.header("Set-Cookie"), None, "{form:?}");
        request_page(addr, "/", &session);
    }
    assert_eq!(disable(&session, Some(&csrf)), 303);
    assert!(!is_active(&config, "r"));
    let enabled = post(
        addr,
        "/routine/enable",
        &session,
        &[("name", "r"), ("csrf", &csrf)],
    );
    assert_eq!(enabled.status, 303);
    assert!(is_active(&config, "r"));
    // Logging out ends the session, and clears its cookie.
    let out = post(addr, "/logout", &session, &[("csrf", &csrf)]);
    assert!(
        out.header("Set-Cookie")
            .is_some_and(|c| c.starts_with("beat_session=;") && c.contains("Max-Age=0")),
        "{:?}",
        out.headers
    );
    assert_eq!(out.status, 303);
    assert_eq!(disable(&session, Some(&csrf)), 401);

    // Without a token the page is read-only, and says so.
    let mut read_only = config.clone();
    read_only.http_token = None;
    let server = HttpServer::start(any_port(), beat.monitor(), read_only).unwrap();
    let refused = post(
        server.addr(),
        "/routine/disable",
        &[("Authorization", &format!("Bearer {TOKEN}"))],
        &[("name", "r")],
    );
    assert_eq!(refused.status, 403);
    assert!(refused.body.contains("read-only"));
    assert!(get(server.addr(), "/")
        .body
        .contains("Read-only: no http_token or http_tokens is configured"));
    assert!(is_active(&config, "r"));
    beat.stop();
}

#[test]
fn wrong_methods_get_405_naming_the_right_ones_and_bodies_not_utf8_get_400() {
    let db = TestDb::sqlite("http_methods");
    let (config, beat, server) = guarded_dashboard(&db);
    let addr = server.addr();
    let bearer = format!("Bearer {TOKEN}");
    let operator = [("Authorization", bearer.as_str())];

    // Every path with a method it does not serve, as an operator (so that
    // no refusal of the caller hides the method's): 405, and `Allow`
    // names the methods it does serve. A GET of a change never changes.
    for (method, path, allow) in [
        ("POST", "/metrics", "GET, HEAD"),
        ("POST", "/healthz", "GET, HEAD"),
        ("POST", "/readyz", "GET, HEAD"),
        ("POST", "/", "GET, HEAD"),
        ("POST", "/routine?name=r", "GET, HEAD"),
        ("POST", "/beats", "GET, HEAD"),
        ("GET", "/routine/disable?name=r", "POST"),
        ("HEAD", "/routine/disable?name=r", "POST"),
        ("GET", "/routine/run?name=r", "POST"),
        ("GET", "/routine/edit?name=r&schedule=%7B%7D", "POST"),
        ("GET", "/logout", "POST"),
    ] {
        let answer = web::request(addr, method, path, &operator, "name=r");
        assert_eq!(
            (answer.status, answer.header("Allow")),
            (405, Some(allow)),
            "{method} {path}: {answer:?}"
        );
    }
    // Methods the listener does not serve at all: 501.
    for method in ["DELETE", "PUT", "PATCH"] {
        let answer = web::request(addr, method, "/routine?name=r", &operator, "");
        assert_eq!(answer.status, 501, "{method}: {answer:?}");
    }
    assert!(is_active(&config, "r"));

    // Bodies that are not UTF-8, sent as a client that skips the form's
    // encoding would: the right name and raw bytes that are no text in
    // another field (0xFF, an overlong `/` 0xC0 0xAF, a lone surrogate
    // 0xED 0xA0 0x80). A server that decoded them lossily would act on
    // `name=r`; this one answers 400 and reads no field.
    for junk in [&b"\xff"[..], b"\xc0\xaf", b"\xed\xa0\x80"] {
        let body = [&b"name=r&pad="[..], junk].concat();
        let answer = web::post_bytes(addr, "/routine/disable", &operator, &body);
        assert_eq!(
            (answer.status, answer.body.as_str()),
            (400, "the request body is not UTF-8 text\n"),
            "{junk:x?}"
        );
        // The same in the name itself, and in a login with the right token.
        let answer = web::post_bytes(
            addr,
            "/routine/disable",
            &operator,
            &[&b"name=r"[..], junk].concat(),
        );
        assert_eq!(answer.status, 400, "{junk:x?}");
        let login = web::post_bytes(
            addr,
            "/login",
            &[],
            &[format!("token={TOKEN}&pad=").as_bytes(), junk].concat(),
        );
        assert_eq!(
            (login.status, login.header("Set-Cookie")),
            (400, None),
            "{junk:x?}"
        );
    }
    assert!(is_active(&config, "r"));
    // Percent-encoded, the same bytes make a text body: the form decodes
    // them to U+FFFD, a name no routine has, so nothing changes either.
    let encoded = web::request(addr, "POST", "/routine/disable", &operator, "name=r%FF");
    assert_eq!(encoded.status, 404, "{}", encoded.body);
    assert!(encoded.body.contains("no such routine"), "{}", encoded.body);
    assert!(is_active(&config, "r"));
    // And a well-formed request still works.
    assert_eq!(
        post(addr, "/routine/disable", &operator, &[("name", "r")]).status,
        303
    );
    assert!(!is_active(&config, "r"));
    beat.stop();
}

fn request_page(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> String {
    let answer = web::request(addr, "GET", path, headers, "");
    assert_eq!(answer.status, 200, "{path}: {}", answer.body);
    answer.body
}

/// An operator whose name is itself hostile (names may hold anything
/// printable but `,` and `:`).
const HOSTILE_OPERATOR: &str = "<img src=x onerror=alert(3)>";
const HOSTILE_TOKEN: &str = "hostile-operator-token-0123";

#[test]
fn hostile_values_in_every_field_are_shown_as_text_and_passwords_never() {
    let Some(db) = TestDb::postgres("http_escaping") else {
        return;
    };
    db.store();
    // Trust authentication takes any password: the URL carries one.
    let url = db.url.replace("postgres@", "postgres:pw-s3cret-42@");
    let mut config = db.config();
    config.scheduler_db_uri = url;
    config.http_token = Some(TOKEN.into());
    config
        .set(
            "http_tokens",
            &format!("{HOSTILE_OPERATOR}:{HOSTILE_TOKEN}"),
        )
        .unwrap();
    // Hostile name, task (so the beat's last_error too), kwargs, options;
    // then an edit by plain SQL from a session with a hostile
    // application_name, whose audit diff carries hostile values.
    db.exec(
        r#"INSERT INTO routines (id, name, task, schedule, kwargs, options, active, total_run_count, needs_sync)
           VALUES ('6f1c1a52-1f5e-4a53-9c55-2b1f5f3a0001', '<script>alert(1)</script>', '<b>task</b>',
                   '{"timedelta": 60}', '{"x": "</textarea><script>alert(2)</script>"}',
                   '{"queue": "<u>q</u>"}', true, 0, true);
           SET application_name = '<em>app</em>';
           UPDATE routines SET kwargs = '{"x": "</td><script>alert(4)</script>"}'
           WHERE name = '<script>alert(1)</script>'"#,
    );
    let beat = Beat::builder(config.clone())
        .task(Recorder::new("ok"))
        .start()
        .unwrap();
    let server = HttpServer::start(any_port(), beat.monitor(), config.clone()).unwrap();
    let addr = server.addr();
    let name = "<script>alert(1)</script>";
    // The beat finds the task unknown; its error names the task.
    assert!(wait_until(Duration::from_secs(10), || {
        Operator::connect(config.clone())
            .unwrap()
            .store()
            .routine(name)
            .unwrap()
            .is_some_and(|r| r.last_error.is_some())
    }));
    // The hostile operator edits it from the dashboard.
    let hostile = format!("Bearer {HOSTILE_TOKEN}");
    let disabled = post(
        addr,
        "/routine/disable",
        &[("Authorization", &hostile)],
        &[("name", name)],
    );
    assert_eq!(disabled.status, 303, "{}", disabled.body);
    let bearer = format!("Bearer {TOKEN}");
    let as_operator = [("Authorization", bearer.as_str())];
    let list = request_page(addr, "/?q=script", &as_operator);
    let page = request_page(
        addr,
        &format!("/routine?name={}", encode(name)),
        &as_operator,
    );
    for body in [&list, &page] {
        assert!(!body.contains("<script>"), "{body}");
        assert!(!body.contains("<b>task"), "{body}");
        assert!(
            body.contains("&lt;script&gt;alert(1)&lt;/script&gt;"),
            "{body}"
        );
        // The beat's last_error names the hostile task.
        assert!(body.contains("&lt;b&gt;task&lt;/b&gt;"), "{body}");
    }
    // kwargs (in the row and in the edit form), options, the audit diff,
    // the SQL session's application_name and the operator's name.
    for escaped in [
        "&lt;/td&gt;&lt;script&gt;alert(4)&lt;/script&gt;",
        "&lt;/textarea&gt;&lt;script&gt;alert(2)",
        "&lt;u&gt;q&lt;/u&gt;",
        "(&lt;em&gt;app&lt;/em&gt;)",
        "&lt;img src=x onerror=alert(3)&gt;",
    ] {
        assert!(page.contains(escaped), "{escaped} not on the page:\n{page}");
    }
    for raw in [
        "</textarea><script>",
        "</td><script>",
        "<u>q",
        "<em>app",
        "<img src=x",
    ] {
        assert!(!page.contains(raw), "{raw} on the page:\n{page}");
    }
    let beats = request_page(addr, "/beats", &as_operator);
    assert!(beats.contains("postgres:***@"), "{beats}");
    for path in ["/", "/beats", "/metrics", "/healthz", "/login"] {
        for headers in [&as_operator[..], &[]] {
            let body = web::request(addr, "GET", path, headers, "").body;
            assert!(!body.contains("pw-s3cret-42"), "{path} shows the password");
            assert!(
                !body.contains(TOKEN) && !body.contains(HOSTILE_TOKEN),
                "{path} shows a token"
            );
        }
    }
    beat.stop();
}

#[test]
fn editing_checks_as_the_beat_does_and_previews_without_saving() {
    // The capture is installed before the beat and the listener start, so
    // that it sees every line they log (checked below: the edit's own).
    let log = captured_log();
    let db = TestDb::sqlite("http_edit");
    let mut config = db.config();
    config.http_token = Some(TOKEN.into());
    let beat = Beat::builder(config.clone())
        .task(Recorder::new("ok"))
        .routine(Routine::new("e", "ok", every(3600)))
        .start()
        .unwrap();
    let server = HttpServer::start(any_port(), beat.monitor(), config.clone()).unwrap();
    let addr = server.addr();
    let bearer = format!("Bearer {TOKEN}");
    let edit = |schedule: &str| {
        post(
            addr,
            "/routine/edit",
            &[("Authorization", &bearer)],
            &[
                ("name", "e"),
                ("schedule", schedule),
                ("kwargs", "{}"),
                ("options", "{}"),
            ],
        )
    };
    let op = Operator::connect(config.clone()).unwrap();
    let schedule_of = || op.store().routine("e").unwrap().unwrap().schedule;
    let before = schedule_of();

    // The beat's own words, escaped for the page.
    let mut change = Change::default();
    change.schedule = Some(json!({"minute": "61"}));
    change.kwargs = Some(json!({}));
    change.options = Some(json!({}));
    let expected = op
        .edit(&common::tester(), "e", &change)
        .unwrap_err()
        .to_string();
    let refused = edit(r#"{"minute": "61"}"#);
    assert_eq!(refused.status, 422);
    let escaped = expected
        .replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;");
    assert!(
        refused.body.contains(&escaped),
        "{escaped}\n{}",
        refused.body
    );
    // What was typed stays in the form.
    assert!(refused
        .body
        .contains("{&quot;minute&quot;: &quot;61&quot;}"));
    let not_json = edit("every minute");
    assert_eq!(not_json.status, 422);
    assert!(
        not_json
            .body
            .contains("routine e: schedule: not valid JSON"),
        "{}",
        not_json.body
    );
    assert_eq!(schedule_of(), before);

    let preview = web::request(
        addr,
        "GET",
        &format!(
            "/routine?name=e&preview=1&schedule={}",
            encode(r#"{"minute": "*/15"}"#)
        ),
        &[("Authorization", &bearer)],
        "",
    );
    assert_eq!(preview.status, 200);
    let times = preview
        .body
        .split("id=\"preview-times\"")
        .nth(1)
        .unwrap_or("");
    let times = &times[..times.find("</ol>").unwrap_or(0)];
    // Ten times, the next quarter hours from now: each on one, 15 minutes
    // apart, the first within 15 minutes.
    let times: Vec<chrono::NaiveDateTime> = times
        .split("<li>")
        .skip(1)
        .map(|li| {
            let text = &li[..li.find("</li>").unwrap()];
            chrono::NaiveDateTime::parse_from_str(text, "%Y-%m-%d %H:%M:%S UTC").unwrap()
        })
        .collect();
    assert_eq!(times.len(), 10, "{}", preview.body);
    assert!(
        times
            .iter()
            .all(|t| t.minute() % 15 == 0 && t.second() == 0),
        "{times:?}"
    );
    assert!(
        times
            .windows(2)
            .all(|w| w[1] - w[0] == chrono::TimeDelta::minutes(15)),
        "{times:?}"
    );
    let from_now = times[0] - chrono::Utc::now().naive_utc();
    assert!(
        from_now > chrono::TimeDelta::zero() && from_now <= chrono::TimeDelta::minutes(15),
        "{times:?}"
    );
    let bad_preview = web::request(
        addr,
        "GET",
        &format!(
            "/routine?name=e&preview=1&schedule={}",
            encode(r#"{"minute": "61"}"#)
        ),
        &[("Authorization", &bearer)],
        "",
    );
    assert!(
        bad_preview.body.contains("id=\"preview-error\""),
        "{}",
        bad_preview.body
    );
    assert_eq!(schedule_of(), before);

    let saved = edit(r#"{"minute": "*/15"}"#);
    assert_eq!(saved.status, 303, "{}", saved.body);
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&schedule_of()).unwrap(),
        json!({"minute": "*/15"})
    );
    // The serving beat plans it again: its next run is on a quarter hour.
    assert!(wait_until(Duration::from_secs(10), || {
        let row = op.store().routine("e").unwrap().unwrap();
        row.next_run_at_utc()
            .is_some_and(|t| t.minute() % 15 == 0 && t.second() == 0)
            && !common::sql::needs_sync(&db.url, "e")
    }));
    // The log saw the listener start and this edit (so it captures), and
    // no line of this process, at info and above, shows the token.
    let logged = log.lock().unwrap().join("\n");
    assert!(
        logged.contains("INFO http: listening on http://")
            && logged.contains("INFO http: routine e: edited from the dashboard by http_token"),
        "{logged}"
    );
    assert!(!logged.contains(TOKEN), "{logged}");
    beat.stop();
}

#[test]
fn the_list_searches_filters_and_pages() {
    let db = TestDb::sqlite("http_list");
    let config = db.config();
    let mut routines: Vec<Routine> = (0..130)
        .map(|i| Routine::new(format!("job-{i:03}"), "ok", every(3600)))
        .collect();
    routines.extend((0..5).map(|i| Routine::new(format!("zz-{i}"), "other.Task", every(3600))));
    let beat = Beat::builder(config.clone())
        .task(Recorder::new("ok"))
        .task(Recorder::new("other.Task"))
        .routines(routines)
        .start_manual()
        .unwrap();
    db.exec("UPDATE routines SET active = 0 WHERE name LIKE 'job-00%'");
    let server = HttpServer::start(any_port(), beat.monitor(), config).unwrap();
    let addr = server.addr();
    let rows = |body: &str| body.matches("<tr><td><a href=\"/routine?name=").count();
    let next = |body: &str| {
        body.split("id=\"next\" href=\"")
            .nth(1)
            .map(|rest| rest[..rest.find('"').unwrap()].replace("&amp;", "&"))
    };
    let mut page = get(addr, "/").body;
    let mut sizes = vec![rows(&page)];
    while let Some(link) = next(&page) {
        page = get(addr, &link).body;
        sizes.push(rows(&page));
    }
    assert_eq!(sizes, vec![50, 50, 35]);
    assert!(page.contains("zz-4"));

    assert_eq!(rows(&get(addr, "/?q=JOB-12").body), 10);
    assert_eq!(rows(&get(addr, "/?q=other.task").body), 5);
    let percent = get(addr, &format!("/?q={}", encode("%"))).body;
    assert_eq!(rows(&percent), 0);
    assert!(percent.contains("No routine matches."));
    assert_eq!(rows(&get(addr, "/?q=job&state=inactive").body), 10);
    assert_eq!(rows(&get(addr, "/?state=active").body), 50);
    let counts = get(addr, "/").body;
    assert!(
        counts.contains(">125 active<") && counts.contains(">10 inactive<"),
        "{counts}"
    );
    beat.stop();
}

backend_tests! {
    fn routines_are_found_and_counted_by_state(db) {
        use celery_diesel_kit::ops::NewRoutineSpec;
        use celery_diesel_kit::{RoutineQuery, RoutineState};
        let op = Operator::migrate(db.config()).unwrap();
        for name in ["alpha", "Beta_1", "beta%2", "gamma", "delta"] {
            op.add(&common::tester(), &NewRoutineSpec::new(name, "app.Task", json!({"timedelta": 60}))).unwrap();
        }
        op.set_active(&common::tester(), "gamma", false).unwrap();
        db.exec("UPDATE routines SET last_error = 'broken' WHERE name = 'delta'");
        let names = |search: &str, state: Option<RoutineState>, after: Option<(String, String)>, limit: usize| {
            let mut q = RoutineQuery::default();
            q.search = search.into();
            q.state = state;
            q.after = after;
            q.limit = limit;
            op.find(&q).unwrap().into_iter().map(|v| v.row.name).collect::<Vec<_>>()
        };
        // In the database's name order (its collation's).
        let all = names("", None, None, 10);
        assert_eq!(all.len(), 5);
        let mut betas = names("BETA", None, None, 10);
        betas.sort();
        assert_eq!(betas, vec!["Beta_1", "beta%2"]);
        // `%` and `_` are text, not wildcards.
        assert_eq!(names("a%1", None, None, 10), Vec::<String>::new());
        assert_eq!(names("a%2", None, None, 10), vec!["beta%2"]);
        assert_eq!(names("a_1", None, None, 10), vec!["Beta_1"]);
        assert_eq!(names("app.task", None, None, 10).len(), 5);
        assert_eq!(names("", Some(RoutineState::Inactive), None, 10), vec!["gamma"]);
        assert_eq!(names("", Some(RoutineState::Error), None, 10), vec!["delta"]);
        assert_eq!(names("", Some(RoutineState::Active), None, 10).len(), 3);
        // Pages: each after the last of the one before.
        let mut q = RoutineQuery::default();
        q.limit = 2;
        let first = op.find(&q).unwrap();
        let last = first.last().unwrap();
        let rest = names("", None, Some((last.row.name.clone(), last.row.id.clone())), 10);
        assert_eq!(rest, all[2..].to_vec());
        let counts = op.counts().unwrap();
        assert_eq!((counts.active, counts.inactive, counts.error), (3, 1, 1));
    }
}
