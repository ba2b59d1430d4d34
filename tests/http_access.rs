//! Who may see and do what on the dashboard, tried as an attacker would:
//! every page read without credentials, with a wrong token and with a
//! forged cookie while a token is configured (and with `http_public_read`);
//! named operators, a hashed tokens file and settings that could not name
//! their holder; a flood of wrong tokens; requests that stall, trickle or
//! overflow; one client holding too many connections; and "Run now"
//! answering at once. The probes under all of it at once are in
//! `tests/http_starvation.rs`.

mod common;

use celery_diesel_kit::ops::Operator;
use celery_diesel_kit::{Beat, BeatHandle, EditFilter, HttpServer, Routine, Via};
use common::cli::beat;
use common::web::{self, any_port, csrf_of, get, post, request_from, sample};
use common::{every, is_active, wait_until, Recorder, TestDb};
use serde_json::json;
use std::io::{Read, Write};
use std::net::IpAddr;
use std::time::{Duration, Instant};

const TOKEN: &str = "shared-operator-token-0123";
const ALICE: &str = "alice-operator-token-0123";

/// A loopback address of its own: another client.
fn client(n: u8) -> IpAddr {
    IpAddr::from([127, 0, 0, n])
}

/// A beat on SQLite with nothing to run, and its listener, whose one
/// operator is alice.
fn alices_dashboard(test: &str) -> (TestDb, BeatHandle, HttpServer) {
    let db = TestDb::sqlite(test);
    let mut config = db.config();
    config
        .set("http_tokens", &format!("alice:{ALICE}"))
        .unwrap();
    let beat = Beat::builder(config.clone()).start().unwrap();
    let server = HttpServer::start(any_port(), beat.monitor(), config).unwrap();
    (db, beat, server)
}

#[test]
fn anonymous_callers_see_no_routine_data_while_a_token_is_configured() {
    let db = TestDb::sqlite("http_anonymous");
    let mut config = db.config();
    config.http_token = Some(TOKEN.into());
    let beat = Beat::builder(config.clone())
        .task(Recorder::new("ok"))
        .routine(
            Routine::new("secret-routine", "ok", every(3600))
                .kwargs(json!({"api_key": "sk_live_abc123"}))
                .options(json!({"queue": "secret-queue"})),
        )
        .routine(Routine::new(
            "broken-routine",
            "secret.unknown.task",
            every(3600),
        ))
        .start()
        .unwrap();
    assert!(wait_until(Duration::from_secs(10), || {
        db.store()
            .routine("broken-routine")
            .unwrap()
            .is_some_and(|r| r.last_error.is_some())
    }));
    let server = HttpServer::start(any_port(), beat.monitor(), config.clone()).unwrap();
    let addr = server.addr();
    // Routine names, a task, kwargs, options, an error's words.
    let secrets = [
        "secret-routine",
        "broken-routine",
        "secret.unknown.task",
        "sk_live_abc123",
        "secret-queue",
        "unknown",
    ];
    let pages = [
        "/",
        "/?q=secret",
        "/?state=error",
        "/routine?name=secret-routine",
        "/routine?name=secret-routine&preview=1&schedule=%7B%22minute%22%3A%220%22%7D",
        "/beats",
    ];
    let shows_nothing = |what: &str, answer: &web::Answer| {
        for secret in secrets {
            assert!(
                !answer.body.contains(secret),
                "{what} shows {secret}:\n{}",
                answer.body
            );
        }
    };
    for (i, page) in pages.iter().enumerate() {
        // No credentials: a script gets 401, a browser the login page
        // (401 too); HEAD the same, without a body.
        let plain = get(addr, page);
        assert_eq!(plain.status, 401, "{page}: {}", plain.body);
        assert_eq!(plain.header("WWW-Authenticate"), Some("Bearer"));
        shows_nothing(page, &plain);
        let browser = web::request(addr, "GET", page, &[("Accept", "text/html")], "");
        assert_eq!(browser.status, 401, "{page}");
        assert!(browser.body.contains("name=\"token\""), "{}", browser.body);
        shows_nothing(page, &browser);
        let head = web::request(addr, "HEAD", page, &[], "");
        assert_eq!((head.status, head.body.as_str()), (401, ""), "{page}");
        // A wrong token (each from an address of its own, below the
        // throttle) and a forged session cookie.
        let wrong = request_from(
            client(10 + i as u8),
            addr,
            "GET",
            page,
            &[("Authorization", "Bearer not-the-token-at-all")],
            "",
        );
        assert_eq!(wrong.status, 401, "{page}");
        shows_nothing(page, &wrong);
        let forged = web::request(
            addr,
            "GET",
            page,
            &[("Cookie", "beat_session=0123456789abcdef0123456789abcdef")],
            "",
        );
        assert_eq!(forged.status, 401, "{page}");
        shows_nothing(page, &forged);
    }
    // Changes without credentials: refused before their body is read.
    for change in ["/routine/disable", "/routine/run", "/routine/edit"] {
        let refused = post(addr, change, &[], &[("name", "secret-routine")]);
        assert_eq!(refused.status, 401, "{change}");
    }
    assert!(is_active(&config, "secret-routine"));
    // Probes and scrapes stay open, and name no routine.
    // (`/metrics` labels runs by task, never by routine: task names are
    // its business, routine names, kwargs and errors are not.)
    for probe in ["/healthz", "/readyz", "/metrics"] {
        let answer = get(addr, probe);
        assert_eq!(answer.status, 200, "{probe}: {}", answer.body);
        for secret in [
            "secret-routine",
            "broken-routine",
            "sk_live_abc123",
            "secret-queue",
            "unknown task",
        ] {
            assert!(!answer.body.contains(secret), "{probe} shows {secret}");
        }
    }
    // The right token sees it all.
    let bearer = format!("Bearer {TOKEN}");
    let seen = web::request(
        addr,
        "GET",
        "/routine?name=secret-routine",
        &[("Authorization", &bearer)],
        "",
    );
    assert_eq!(seen.status, 200);
    assert!(seen.body.contains("sk_live_abc123"));
    drop(server);

    // http_public_read: today's open pages; changes still need a login.
    let mut public = config.clone();
    public.http_public_read = true;
    let server = HttpServer::start(any_port(), beat.monitor(), public).unwrap();
    let list = get(server.addr(), "/");
    assert_eq!(list.status, 200);
    assert!(list.body.contains("secret-routine") && list.body.contains("Read-only until you"));
    assert!(get(server.addr(), "/routine?name=secret-routine")
        .body
        .contains("sk_live_abc123"));
    let refused = post(
        server.addr(),
        "/routine/disable",
        &[],
        &[("name", "secret-routine")],
    );
    assert_eq!(refused.status, 401);
    assert!(is_active(&config, "secret-routine"));
    drop(server);

    // Without any token: open and read-only, as before.
    let mut open = config.clone();
    open.http_token = None;
    let server = HttpServer::start(any_port(), beat.monitor(), open).unwrap();
    let list = get(server.addr(), "/");
    assert_eq!(list.status, 200);
    assert!(list.body.contains("secret-routine"));
    beat.stop();
}

#[test]
fn named_operators_act_under_their_names_and_ambiguous_tokens_are_refused() {
    let db = TestDb::sqlite("http_operators");
    let mut config = db.config();
    config.http_token = Some(TOKEN.into());
    config
        .set("http_tokens", &format!("alice:{ALICE}"))
        .unwrap();
    // Bob's token is kept hashed, in a file, as `beat token` prints it.
    let made = beat(&db.url, &["token", "bob", "--json"]).json();
    let bob_token = made["token"].as_str().unwrap().to_owned();
    let line = made["line"].as_str().unwrap();
    assert!(line.starts_with("bob:sha256:") && !line.contains(&bob_token));
    let file = std::env::temp_dir().join(format!("cdk-operators-{}", std::process::id()));
    std::fs::write(&file, format!("# operators\n{line}\n")).unwrap();
    config.http_tokens_file = Some(file.clone());
    let beat_handle = Beat::builder(config.clone())
        .task(Recorder::new("ok"))
        .routine(Routine::new("r", "ok", every(3600)))
        .start()
        .unwrap();
    let server = HttpServer::start(any_port(), beat_handle.monitor(), config.clone()).unwrap();
    let addr = server.addr();

    // Bob logs in through the form and disables r.
    let login = post(addr, "/login", &[], &[("token", &bob_token)]);
    assert_eq!(login.status, 303);
    let cookie = login
        .header("Set-Cookie")
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_owned();
    let session = [("Cookie", cookie.as_str())];
    let page = web::request(addr, "GET", "/routine?name=r", &session, "");
    assert!(
        page.body.contains("<span id=\"operator\">bob</span>"),
        "{}",
        page.body
    );
    let csrf = csrf_of(&page.body);
    let disabled = post(
        addr,
        "/routine/disable",
        &session,
        &[("name", "r"), ("csrf", &csrf)],
    );
    assert_eq!(disabled.status, 303, "{}", disabled.body);
    // Alice, by her bearer token, enables it; the shared token disables it.
    for (token, action) in [(ALICE, "enable"), (TOKEN, "disable")] {
        let done = post(
            addr,
            &format!("/routine/{action}"),
            &[("Authorization", &format!("Bearer {token}"))],
            &[("name", "r")],
        );
        assert_eq!(done.status, 303, "{}", done.body);
    }
    let mut filter = EditFilter::default();
    filter.limit = 10;
    let mut edits = db.store().edits().list(&filter).unwrap();
    edits.reverse();
    let who: Vec<(Option<&str>, Via, Option<serde_json::Value>)> = edits
        .iter()
        .map(|e| {
            (
                e.actor.as_deref(),
                e.via,
                e.changes.first().and_then(|c| c.new.clone()),
            )
        })
        .collect();
    let beat_id = beat_handle.monitor().beat_id().to_owned();
    assert_eq!(
        who,
        vec![
            (Some(beat_id.as_str()), Via::Beat, Some(json!("r"))),
            (Some("bob"), Via::Dashboard, Some(json!(false))),
            (Some("alice"), Via::Dashboard, Some(json!(true))),
            (Some("http_token"), Via::Dashboard, Some(json!(false))),
        ]
    );
    // The routine's page shows who changed what.
    let page = web::request(addr, "GET", "/routine?name=r", &session, "");
    let changes = page.body.split("id=\"edits\"").nth(1).unwrap_or("");
    for name in ["bob", "alice", "http_token"] {
        assert!(
            changes.contains(&format!("<td class=\"who\">{name}</td>")),
            "{name}: {changes}"
        );
    }
    assert!(
        changes.contains("<del>true</del> → <ins>false</ins>"),
        "{changes}"
    );
    drop(server);

    // Settings that could not tell operators apart, or would keep a token
    // in a file, are refused, and the error shows no token.
    let mut same = config.clone();
    same.http_tokens_file = None;
    same.set("http_tokens", &format!("carol:{TOKEN}")).unwrap();
    let e = HttpServer::start(any_port(), beat_handle.monitor(), same)
        .unwrap_err()
        .to_string();
    assert!(e.contains("same token") && !e.contains(TOKEN), "{e}");
    let mut named_like_the_shared = config.clone();
    named_like_the_shared.http_tokens_file = None;
    named_like_the_shared
        .set("http_tokens", "http_token:another-token-0123456789")
        .unwrap();
    let e = HttpServer::start(any_port(), beat_handle.monitor(), named_like_the_shared)
        .unwrap_err()
        .to_string();
    assert!(e.contains("http_token's"), "{e}");
    std::fs::write(&file, format!("{line}\ndave:{ALICE}\n")).unwrap();
    let e = HttpServer::start(any_port(), beat_handle.monitor(), config.clone())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains(&format!("{}:2", file.display()))
            && e.contains("sha256:HEX")
            && !e.contains(ALICE),
        "{e}"
    );
    let _ = std::fs::remove_file(&file);
    beat_handle.stop();
}

#[test]
fn a_flood_of_wrong_tokens_gets_429_at_once_and_the_right_token_works_from_elsewhere() {
    let (_db, beat_handle, server) = alices_dashboard("http_throttle");
    let addr = server.addr();
    // 16 clients on one address, 25 wrong logins each. (The listener used
    // to sleep 250 ms on one of its 4 threads per wrong login: these 400
    // would have taken 25 s, and held every thread.)
    let flooding = client(2);
    let started = Instant::now();
    let flood: Vec<_> = (0..16)
        .map(|_| {
            std::thread::spawn(move || {
                (0..25)
                    .map(|_| {
                        let sent = Instant::now();
                        let answer = request_from(
                            flooding,
                            addr,
                            "POST",
                            "/login",
                            &[("Content-Type", "application/x-www-form-urlencoded")],
                            "token=wrong-token-wrong-token",
                        );
                        (
                            answer.status,
                            answer.header("Retry-After").map(str::to_owned),
                            sent.elapsed(),
                        )
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    // Meanwhile, from another address: the right token logs in, and the
    // probes answer.
    let login = post(addr, "/login", &[], &[("token", ALICE)]);
    assert_eq!(login.status, 303);
    assert_eq!(get(addr, "/healthz").status, 200);
    let answers: Vec<_> = flood.into_iter().flat_map(|t| t.join().unwrap()).collect();
    let took = started.elapsed();
    // The allowance refills one guess per 12 s: the flood must end sooner
    // for the count of 401s to be exactly the burst of 5.
    assert!(took < Duration::from_secs(12), "the flood took {took:?}");
    let wrong = answers
        .iter()
        .filter(|(status, _, _)| *status == 401)
        .count();
    let throttled: Vec<_> = answers
        .iter()
        .filter(|(status, _, _)| *status == 429)
        .collect();
    let other: Vec<u16> = answers
        .iter()
        .map(|(status, _, _)| *status)
        .filter(|s| *s != 401 && *s != 429)
        .collect();
    assert_eq!(
        (wrong, throttled.len()),
        (5, 395),
        "401s and 429s of 400 wrong logins; other answers: {other:?}"
    );
    for (_, retry, _) in &throttled {
        let retry: u64 = retry.as_deref().unwrap().parse().unwrap();
        assert!((1..=12).contains(&retry), "Retry-After {retry}");
    }
    let slowest = answers.iter().map(|(_, _, t)| *t).max().unwrap();
    assert!(
        slowest < Duration::from_secs(1),
        "an answer took {slowest:?}"
    );
    // The flooding address is refused even the right token, unread.
    let right_from_flood = request_from(
        flooding,
        addr,
        "POST",
        "/login",
        &[("Content-Type", "application/x-www-form-urlencoded")],
        &format!("token={ALICE}"),
    );
    assert_eq!(right_from_flood.status, 429);
    // Wrong bearer tokens count the same way.
    let guesser = client(3);
    let bearer = |token: &str| {
        request_from(
            guesser,
            addr,
            "GET",
            "/",
            &[("Authorization", &format!("Bearer {token}"))],
            "",
        )
        .status
    };
    let statuses: Vec<u16> = (0..6).map(|_| bearer("wrong-token-wrong-token")).collect();
    assert_eq!(statuses, vec![401, 401, 401, 401, 401, 429]);
    assert_eq!(bearer(ALICE), 429);
    assert_eq!(
        request_from(
            client(4),
            addr,
            "GET",
            "/",
            &[("Authorization", &format!("Bearer {ALICE}"))],
            ""
        )
        .status,
        200
    );
    beat_handle.stop();
}

/// Waits for the answer on `stream`: its status, and how long after
/// `since` it came.
fn answer_to(stream: &mut std::net::TcpStream, since: Instant) -> (u16, Duration) {
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut raw = Vec::new();
    let mut chunk = [0u8; 4096];
    let mut took = None;
    loop {
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                took.get_or_insert_with(|| since.elapsed());
                raw.extend_from_slice(&chunk[..n]);
            }
        }
    }
    let text = String::from_utf8_lossy(&raw);
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, took.unwrap_or_else(|| since.elapsed()))
}

#[test]
fn slow_partial_oversized_and_crowding_requests_are_cut_off_within_their_bounds() {
    let (_db, beat_handle, server) = alices_dashboard("http_slow");
    let addr = server.addr();
    // One client holding 32 connections: its 33rd is refused at once; a
    // probe from another address is answered meanwhile.
    let crowd: Vec<_> = (0..32)
        .map(|_| web::connect_from(client(24), addr).unwrap())
        .collect();
    assert!(
        wait_until(Duration::from_secs(5), || {
            web::sample(&get(addr, "/metrics").body, "beat_http_connections") == Some(33.0)
        }),
        "the 32 and the scrape itself"
    );
    let mut one_more = web::connect_from(client(24), addr).unwrap();
    let (status, took) = answer_to(&mut one_more, Instant::now());
    assert_eq!(status, 503);
    assert!(took < Duration::from_secs(1), "{took:?}");
    assert_eq!(get(addr, "/healthz").status, 200);
    drop(crowd);
    // Once the listener has seen the 33 close (its gauge counts only the
    // scrape), the address is welcome again: asked once, not polled, so
    // that the count of refusals below stays exact.
    assert!(wait_until(Duration::from_secs(10), || {
        web::sample(&get(addr, "/metrics").body, "beat_http_connections") == Some(1.0)
    }));
    assert_eq!(
        request_from(client(24), addr, "GET", "/healthz", &[], "").status,
        200
    );

    // A head that never ends: 408 once the 5 s head deadline has passed
    // (the upper side allows 2 s for a loaded machine to get to it).
    let stalled = std::thread::spawn(move || {
        let mut s = web::connect_from(client(20), addr).unwrap();
        let since = Instant::now();
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
            .unwrap();
        answer_to(&mut s, since)
    });
    // A body trickled a byte every 0.5 s (time passing is the point: each
    // wait is a read that would see the answer): 408 once the 10 s body
    // deadline after the head has passed.
    let trickled = std::thread::spawn(move || {
        let mut s = web::connect_from(client(21), addr).unwrap();
        s.write_all(b"POST /login HTTP/1.1\r\nHost: x\r\nContent-Length: 64\r\n\r\n")
            .unwrap();
        let since = Instant::now();
        s.set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        let mut first = [0u8; 1];
        for _ in 0..60 {
            if s.write_all(b"t").is_err() || matches!(s.read(&mut first), Ok(1)) {
                break;
            }
        }
        // (If the loop read the answer's first byte, the rest still reads
        // `TTP/1.1 408 …`: the status is its second word either way.)
        answer_to(&mut s, since)
    });
    // A login body larger than a login form: 413 before any of it is read.
    let mut big = web::connect_from(client(22), addr).unwrap();
    let since = Instant::now();
    big.write_all(b"POST /login HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n")
        .unwrap();
    let (status, took) = answer_to(&mut big, since);
    assert_eq!(status, 413);
    assert!(took < Duration::from_secs(1), "{took:?}");
    // A head over 16 KiB, a chunked body, a body that is not UTF-8.
    let long = format!(
        "GET /healthz HTTP/1.1\r\nX-Pad: {}\r\n\r\n",
        "p".repeat(17 * 1024)
    );
    let chunked =
        "POST /login HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n";
    for (raw, want) in [
        (long.as_bytes().to_vec(), 431),
        (chunked.as_bytes().to_vec(), 501),
        (
            b"POST /login HTTP/1.1\r\nContent-Length: 2\r\n\r\n\xff\xfe".to_vec(),
            400,
        ),
        (b"BREW /pot HTTP/1.1\r\n\r\n".to_vec(), 501),
    ] {
        let mut s = web::connect_from(client(23), addr).unwrap();
        s.write_all(&raw).unwrap();
        assert_eq!(answer_to(&mut s, Instant::now()).0, want);
    }
    let (status, took) = stalled.join().unwrap();
    assert_eq!(status, 408);
    assert!(
        took >= Duration::from_secs(5) && took < Duration::from_secs(7),
        "{took:?}"
    );
    let (status, took) = trickled.join().unwrap();
    assert_eq!(status, 408);
    assert!(
        took >= Duration::from_secs(10) && took < Duration::from_secs(12),
        "{took:?}"
    );
    let metrics = get(addr, "/metrics").body;
    assert_eq!(
        sample(&metrics, "beat_http_refused_total{reason=\"client\"}"),
        Some(1.0),
        "{metrics}"
    );
    assert_eq!(
        sample(&metrics, "beat_http_refused_total{reason=\"timeout\"}"),
        Some(2.0),
        "{metrics}"
    );
    beat_handle.stop();
}

#[test]
fn pages_stuck_on_the_database_fill_their_threads_and_queue_and_no_more() {
    let Some(db) = TestDb::postgres("http_pages_bound") else {
        return;
    };
    let mut config = db.config();
    config
        .set("http_tokens", &format!("alice:{ALICE}"))
        .unwrap();
    let beat_handle = Beat::builder(config.clone()).start().unwrap();
    let server = HttpServer::start(any_port(), beat_handle.monitor(), config).unwrap();
    let addr = server.addr();
    assert!(wait_until(Duration::from_secs(10), || get(addr, "/readyz")
        .status
        == 200));
    // An operator's transaction holds the routines table: every page that
    // reads it waits (the beat's statement bound, 30 s, is far off).
    use diesel::connection::{Connection, SimpleConnection};
    let mut holder = diesel::pg::PgConnection::establish(&db.url).unwrap();
    holder
        .batch_execute("BEGIN; LOCK TABLE routines IN ACCESS EXCLUSIVE MODE")
        .unwrap();
    // 24 pages: the first 4 take the 4 page threads and wait on the lock
    // (seen in pg_stat_activity, so that no page thread is still on its way
    // to the queue when the rest come); of the other 20, the queue holds 16
    // and 4 are refused at once.
    let bearer = format!("Bearer {ALICE}");
    let page = |bearer: String| {
        std::thread::spawn(move || {
            let sent = Instant::now();
            let answer = web::request(addr, "GET", "/", &[("Authorization", &bearer)], "");
            (answer.status, sent.elapsed())
        })
    };
    let waiting_pages = || {
        common::sql::number(
            &db.url,
            "SELECT COUNT(*) AS n FROM pg_stat_activity WHERE wait_event_type = 'Lock' \
             AND query LIKE '%ORDER BY routines.name, routines.id%'",
        )
        .unwrap()
    };
    let mut pages: Vec<_> = (0..4).map(|_| page(bearer.clone())).collect();
    assert!(
        wait_until(Duration::from_secs(10), || waiting_pages() == 4),
        "{} pages waiting on the lock",
        waiting_pages()
    );
    pages.extend((0..20).map(|_| page(bearer.clone())));
    let refused = || {
        sample(
            &get(addr, "/metrics").body,
            "beat_http_refused_total{reason=\"pages\"}",
        )
    };
    assert!(
        wait_until(Duration::from_secs(10), || refused() == Some(4.0)),
        "{:?} pages refused",
        refused()
    );
    // Meanwhile the probes answer.
    let probe = Instant::now();
    assert_eq!(get(addr, "/healthz").status, 200);
    assert!(
        probe.elapsed() < Duration::from_secs(1),
        "{:?}",
        probe.elapsed()
    );
    holder.batch_execute("COMMIT").unwrap();
    let answers: Vec<(u16, Duration)> = pages.into_iter().map(|t| t.join().unwrap()).collect();
    let busy: Vec<&Duration> = answers
        .iter()
        .filter(|(status, _)| *status == 503)
        .map(|(_, took)| took)
        .collect();
    let served = answers.iter().filter(|(status, _)| *status == 200).count();
    assert_eq!((busy.len(), served), (4, 20), "{answers:?}");
    assert!(
        busy.iter().all(|t| **t < Duration::from_secs(1)),
        "{busy:?}"
    );
    assert_eq!(refused(), Some(4.0));
    beat_handle.stop();
}

#[test]
fn run_now_answers_at_once_and_the_run_shows_when_a_beat_takes_it() {
    let db = TestDb::sqlite("http_run_now");
    let mut config = db.config();
    config
        .set("http_tokens", &format!("alice:{ALICE}"))
        .unwrap();
    // A beat that looks for requests every 3 s: the old "Run now" held a
    // listener thread until a beat took the request, up to 5 s.
    config.scheduler_watch_interval = Duration::from_secs(3);
    let ok = Recorder::new("ok");
    let beat_handle = Beat::builder(config.clone())
        .task(ok.clone())
        .routine(Routine::new("later", "ok", every(86_400)))
        .start()
        .unwrap();
    let server = HttpServer::start(any_port(), beat_handle.monitor(), config.clone()).unwrap();
    let asked = Instant::now();
    let run = post(
        server.addr(),
        "/routine/run",
        &[("Authorization", &format!("Bearer {ALICE}"))],
        &[("name", "later")],
    );
    assert_eq!(run.status, 303, "{}", run.body);
    assert!(
        asked.elapsed() < Duration::from_secs(1),
        "{:?}",
        asked.elapsed()
    );
    assert_eq!(run.header("Location"), Some("/routine?name=later&done=run"));
    // The beat looks for requests every watch interval (3 s): it takes
    // this one within that and a pass (1 s more on a loaded machine), runs
    // it once, and the routine's page shows that one run, on demand.
    let op = Operator::connect(config.clone()).unwrap();
    let within = config.scheduler_watch_interval + Duration::from_secs(1);
    assert!(
        wait_until(within, || {
            op.history(Some("later"), false, None, 10)
                .unwrap()
                .iter()
                .any(|r| r.on_demand)
        }),
        "not taken {:?} after the request",
        asked.elapsed()
    );
    assert!(wait_until(Duration::from_secs(5), || ok.count() == 1));
    let page = web::request(
        server.addr(),
        "GET",
        "/routine?name=later",
        &[("Authorization", &format!("Bearer {ALICE}"))],
        "",
    );
    let runs = page.body.split("id=\"runs\"").nth(1).unwrap_or("");
    let runs = &runs[..runs.find("</table>").unwrap_or(0)];
    assert_eq!(
        (
            runs.matches("<tr>").count(),
            runs.matches("(on demand)").count()
        ),
        (2, 1),
        "the header and the one run:\n{}",
        page.body
    );
    assert_eq!(ok.count(), 1);
    beat_handle.stop();
}
