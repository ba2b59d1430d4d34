//! The routines table: migrations, adopting the kit's table, the triggers
//! that mark edits, and connection errors.

mod common;

use celery_diesel_kit::ops::Operator;
use celery_diesel_kit::{Beat, Config, Error, Routine, RoutineStore, RunFilter, Target};
use common::kit::{kit_ddl, kit_insert, kit_insert_run};
use common::{at, every, sql, wait_until, Kind, Recorder, TestClock, TestDb};
use std::time::Duration;

backend_tests! {
    fn a_run_recorded_as_local_reads_and_migrates_as_in_process(db) {
        // A history written before the run target had one name: put the
        // newest migration back to pending, and a run recorded as `local`.
        let store = db.store();
        let no = if db.kind == Kind::Postgres { "false" } else { "0" };
        db.exec(&format!(
            "INSERT INTO routine_runs (routine_id, routine, task, due_at, dispatched_at, task_id, \
             target, on_demand, outcome) VALUES ('r1', 'r', 't', '2030-01-01 00:00:00', \
             '2030-01-01 00:00:00', 'id1', 'local', {no}, 'succeeded')"
        ));
        db.exec("DELETE FROM __diesel_schema_migrations WHERE version = '20261201000002'");
        let err = store.check_schema().unwrap_err().to_string();
        assert!(err.contains("migration 20261201000002 has not run"), "{err}");
        // An older beat's `local` still reads as in-process.
        let mut filter = RunFilter::default();
        filter.limit = 10;
        let runs = |store: &RoutineStore| store.runs().list(&filter).unwrap();
        assert_eq!(runs(&store)[0].target, Target::InProcess);
        // The migration renames it in the table.
        store.migrate().unwrap();
        store.check_schema().unwrap();
        assert_eq!(db.number("SELECT COUNT(*) AS n FROM routine_runs WHERE target = 'in_process'"), 1);
        assert_eq!(db.number("SELECT COUNT(*) AS n FROM routine_runs WHERE target = 'local'"), 0);
        assert_eq!(runs(&store)[0].target, Target::InProcess);
    }

    // A second migration of a database in use (a routine, a run, an edit,
    // a stopped beat) changes nothing: the catalog's schema (columns,
    // indexes, constraints, triggers, functions), the migrations recorded
    // and when they ran, and every row as the library reads it.
    fn migrating_twice_changes_nothing(db) {
        let config = db.config();
        let clock = TestClock::at(at(0));
        let rec = Recorder::new("record");
        let mut beat = Beat::builder(config.clone())
            .clock(clock.clone())
            .task(rec.clone())
            .routine(Routine::new("r", "record", every(10)))
            .start_manual()
            .unwrap();
        beat.tick(at(0)).unwrap();
        clock.set(at(10));
        assert_eq!(beat.tick(at(10)).unwrap().fired, 1);
        let store = RoutineStore::connect(&db.url).unwrap();
        let mut filter = RunFilter::default();
        filter.limit = 100;
        let succeeded = || store.runs().list(&filter).unwrap().iter().any(|r| r.outcome.as_str() == "succeeded");
        assert!(wait_until(Duration::from_secs(10), succeeded));
        Operator::connect(config).unwrap().set_active(&common::tester(), "r", false).unwrap();
        beat.stop();
        let data = || {
            let beats: Vec<_> = store.beats().list().unwrap().into_iter()
                .map(|b| (b.id, b.host, b.pid, b.version, b.started_at, b.heartbeat_at, b.stopped_at, b.tasks, b.broker))
                .collect();
            let edits = db.number("SELECT COUNT(*) AS n FROM routine_edits");
            format!("{:#?}\n{:#?}\n{beats:#?}\nedits: {edits}", store.routines().unwrap(), store.runs().list(&filter).unwrap())
        };
        let (schema, before) = (sql::schema(&db.url), data());
        for table in ["routines ", "routine_runs ", "beats ", "routine_edits "] {
            assert!(schema.iter().any(|line| line.contains(table)), "{table}: {schema:#?}");
        }
        assert!(before.contains("outcome: Succeeded") && before.contains("edits: 2") && before.contains("active: false"), "{before}");
        store.migrate().unwrap();
        store.migrate().unwrap();
        store.check_schema().unwrap();
        assert_eq!(sql::schema(&db.url), schema);
        assert_eq!(data(), before);
    }

    fn a_table_the_python_kit_created_is_adopted(db) {
        db.exec(kit_ddl(db.kind));
        db.exec(&kit_insert(db.kind, "celery test", r#"{"timedelta": 1}"#));
        db.exec(&kit_insert(db.kind, "kit crontab",
            r#"{"minute": "*/5", "hour": "*", "day_of_week": "*", "day_of_month": "*", "month_of_year": "*"}"#));
        let rec = Recorder::new("celery test");
        let beat = Beat::builder(db.config()).task(rec.clone()).task(Recorder::new("kit crontab")).start().unwrap();
        assert!(wait_until(Duration::from_secs(10), || rec.count() >= 1), "the kit's row never ran");
        let crontab = beat.store().routine("kit crontab").unwrap().unwrap();
        assert!(crontab.next_run_at.is_some() && crontab.last_error.is_none(), "{crontab:?}");
        beat.stop();
        // The kit keeps working on the adopted table: its own INSERT still runs.
        db.exec(&kit_insert(db.kind, "inserted later by the kit", r#"{"timedelta": 15}"#));
        let row = db.store().routine("inserted later by the kit").unwrap().unwrap();
        assert!(common::sql::needs_sync(&db.url, &row.name) && row.next_run_at.is_none(), "a kit insert waits for planning: {row:?}");
        // The stop let every claimed run finish: the count is the runs.
        let row = db.store().routine("celery test").unwrap().unwrap();
        assert_eq!((row.total_run_count, row.last_run_at.is_some()), (Some(rec.count() as i32), true));
        // The audit trail is adopted with the table: the kit's insert made
        // after the migration is in it, as plain SQL; the rows from before
        // the migration have no edits, and the beat's runs of them none.
        let mut filter = celery_diesel_kit::EditFilter::default();
        filter.limit = 10;
        let edits = db.store().edits().list(&filter).unwrap();
        let seen: Vec<(&str, celery_diesel_kit::EditAction, celery_diesel_kit::Via)> =
            edits.iter().map(|e| (e.routine.as_str(), e.action, e.via)).collect();
        assert_eq!(
            seen,
            vec![("inserted later by the kit", celery_diesel_kit::EditAction::Insert, celery_diesel_kit::Via::Sql)]
        );
    }

    fn a_kit_table_with_duplicate_names_is_adopted_and_runs_one_row_of_each(db) {
        db.exec(kit_ddl(db.kind));
        let every = r#"{"timedelta": 10}"#;
        for (name, count) in [("dup", 0), ("dup", 5), ("dup", 1), ("twin", 0), ("twin", 0), ("single", 0)] {
            db.exec(&kit_insert_run(db.kind, name, every, count));
        }
        let rec = Recorder::new("dup");
        let (twin, single) = (Recorder::new("twin"), Recorder::new("single"));
        let mut beat = Beat::builder(db.config())
            .task(rec.clone()).task(twin.clone()).task(single.clone())
            .start_manual()
            .unwrap();
        let tick = beat.tick(at(0)).unwrap();
        assert_eq!((tick.planned, tick.invalid), (6, 3), "three rows share a name with another");
        let rows = db.store().routines().unwrap();
        for name in ["dup", "twin", "single"] {
            let of_name: Vec<_> = rows.iter().filter(|r| r.name == name).collect();
            let running: Vec<_> = of_name.iter().filter(|r| r.last_error.is_none()).collect();
            assert_eq!(running.len(), 1, "{name}: {of_name:#?}");
            assert!(!common::sql::duplicate_name(&db.url, &running[0].id) && running[0].next_run_at.is_some());
            for other in of_name.iter().filter(|r| r.last_error.is_some()) {
                let error = other.last_error.as_deref().unwrap_or_default();
                assert!(common::sql::duplicate_name(&db.url, &other.id) && error.contains("another row is also named"), "{error}");
                assert!(other.next_run_at.is_none());
            }
        }
        let dup = rows.iter().find(|r| r.name == "dup" && r.last_error.is_none()).unwrap();
        assert_eq!(dup.total_run_count, Some(5), "the row that has run most keeps running");
        let ran = || rec.count() + twin.count() + single.count();
        for k in 1..=3 {
            assert_eq!(beat.tick(at(10 * k)).unwrap().fired, 3);
            // Each run ends before the next is due (a run still going is
            // skipped); `succeeded` counts a run once it has left the
            // in-flight set.
            assert!(wait_until(Duration::from_secs(10), || beat.stats().succeeded == 3 * k as u64));
        }
        assert_eq!(ran(), 9);
        assert_eq!((rec.count(), twin.count(), single.count()), (3, 3, 3));
        // And it stays so: an insert or a rename to a name a running row
        // has fails; a name whose row is gone is free.
        let refused = |sql: String| common::sql::execute(&db.url, &sql).is_err();
        assert!(refused(kit_insert(db.kind, "single", every)), "a second row named 'single' was accepted");
        assert!(refused("UPDATE routines SET name = 'single' WHERE name = 'twin' AND name_unique".into()));
        db.exec("DELETE FROM routines WHERE name = 'single'");
        db.exec(&kit_insert(db.kind, "single", every));
        db.exec("UPDATE routines SET name = 'renamed' WHERE name = 'single'");
        db.exec(&kit_insert(db.kind, "single", every));
    }

    fn edits_mark_rows_for_the_beat_and_the_beats_own_writes_do_not(db) {
        let rec = Recorder::new("record");
        let mut beat = Beat::builder(db.config())
            .task(rec.clone())
            .routine(Routine::new("r", "record", every(60)))
            .start_manual()
            .unwrap();
        let now = at(0);
        beat.tick(now).unwrap();
        let store = db.store();
        let get = || store.routine("r").unwrap().unwrap();
        let marked = |name: &str| common::sql::needs_sync(&db.url, name);
        let planned = get();
        assert!(!marked("r") && planned.next_run_at.is_some());

        db.exec(r#"UPDATE routines SET kwargs = '{"a": 1}'"#);
        let r = get();
        assert!(marked("r") && r.next_run_at == planned.next_run_at, "kwargs: marked, plan kept: {r:?}");
        beat.tick(now).unwrap();

        db.exec(r#"UPDATE routines SET schedule = '{"timedelta": 30}'"#);
        let r = get();
        assert!(marked("r") && r.next_run_at.is_none(), "schedule: marked, plan cleared: {r:?}");
        beat.tick(now).unwrap();

        db.exec(r#"UPDATE routines SET schedule = '{"timedelta": 30}'"#);
        assert!(!marked("r"), "writing the same schedule is no edit");
        db.exec("UPDATE routines SET name = 'r2' WHERE name = 'r'");
        db.exec("UPDATE routines SET name = 'r' WHERE name = 'r2'");
        assert!(!marked("r"), "a rename needs no planning");

        // The beat's own writes (firing) leave the row unmarked.
        let tick = beat.tick(now + chrono::Duration::seconds(30)).unwrap();
        assert_eq!(tick.fired, 1);
        assert!(!marked("r"));
    }

    fn an_operators_upsert_enable_disable_and_remove_are_edits_the_beat_acts_on(db) {
        let rec = Recorder::new("record");
        let mut beat = Beat::builder(db.config()).task(rec.clone()).start_manual().unwrap();
        let store = db.store();
        let op = Operator::connect(db.config()).unwrap();
        let me = common::tester();
        let marked = |name: &str| common::sql::needs_sync(&db.url, name);

        assert!(op.upsert(&me, &Routine::new("r", "record", every(10))).unwrap(), "inserted");
        beat.tick(at(0)).unwrap();
        assert_eq!(store.routine("r").unwrap().unwrap().next_run_at_utc(), Some(at(10)));
        assert_eq!(beat.tick(at(10)).unwrap().fired, 1);
        // `succeeded` counts a run once it has left the in-flight set.
        let ran = |beat: &celery_diesel_kit::ManualBeat, n: u64| {
            wait_until(Duration::from_secs(10), || beat.stats().succeeded >= n)
        };
        assert!(ran(&beat, 1), "the run due at 10 never ran");

        // A new schedule is planned from the last run: 10 + 30, not now + 30.
        assert!(!op.upsert(&me, &Routine::new("r", "record", every(30))).unwrap(), "updated");
        let row = store.routine("r").unwrap().unwrap();
        assert!(marked("r") && row.next_run_at.is_none(), "{row:?}");
        beat.tick(at(12)).unwrap();
        assert_eq!(store.routine("r").unwrap().unwrap().next_run_at_utc(), Some(at(40)));
        // Writing the same routine again is no edit.
        op.upsert(&me, &Routine::new("r", "record", every(30))).unwrap();
        assert!(!marked("r"));

        op.set_active(&me, "r", false).unwrap();
        let tick = beat.tick(at(40)).unwrap();
        assert_eq!((tick.planned, tick.fired), (1, 0), "disabled: planned out, not fired");
        op.set_active(&me, "r", true).unwrap();
        assert_eq!(beat.tick(at(41)).unwrap().fired, 1, "enabled: the run due at 40 fires");
        assert!(matches!(op.set_active(&me, "nope", true), Err(Error::NoSuchRoutine(_))));

        op.remove(&me, "r").unwrap();
        assert!(store.routine("r").unwrap().is_none());
        assert!(matches!(op.remove(&me, "r"), Err(Error::NoSuchRoutine(_))));
        assert_eq!(beat.tick(at(100)).unwrap().fired, 0);
        assert!(ran(&beat, 2));
        assert_eq!(rec.count(), 2);
    }

    // The kit's table holds names and tasks of 1 to 50 characters: an
    // operator's upsert, a beat's declared routines and `beat add` refuse
    // others with the reason; a row written by SQL that breaks the rule
    // (an empty name anywhere; on SQLite, any length) is refused by the
    // beat, which records why and never runs it. 50 characters is allowed.
    fn names_empty_or_over_50_characters_are_refused_on_every_write_path(db) {
        let config = db.config();
        let op = Operator::migrate(config.clone()).unwrap();
        let me = common::tester();
        let (fifty, long) = ("n".repeat(50), "n".repeat(51));
        let cases = [
            ("", "name must not be empty"),
            ("  ", "name must not be empty"),
            (long.as_str(), "name is longer than 50 characters"),
        ];
        for (name, reason) in cases {
            let err = op.upsert(&me, &Routine::new(name, "record", every(60))).unwrap_err();
            assert_eq!(err.to_string(), format!("routine {name}: {reason}"));
            let err = Beat::builder(config.clone())
                .routine(Routine::new(name, "record", every(60)))
                .start_manual()
                .err()
                .expect("refused");
            assert_eq!(err.to_string(), format!("routine {name}: {reason}"));
            let ran = common::cli::beat(&db.url, &["add", name, "--task", "demo.hello", "--every", "30"]);
            assert_eq!(ran.code, 1, "{ran:?}");
            assert!(ran.err.contains(&format!("routine {name}: {reason}")), "{ran:?}");
        }
        let err = op.upsert(&me, &Routine::new("t", "t".repeat(51), every(60))).unwrap_err();
        assert_eq!(err.to_string(), "routine t: task is longer than 50 characters");
        assert!(op.upsert(&me, &Routine::new(fifty.as_str(), "record", every(60))).unwrap());
        let names: Vec<String> = op.store().routines().unwrap().into_iter().map(|r| r.name).collect();
        assert_eq!(names, std::slice::from_ref(&fifty), "only the 50-character name was written");

        db.exec(&sql_row(db.kind, "", "record"));
        let long_by_sql = sql::execute(&db.url, &sql_row(db.kind, &long, "record"));
        let long_task = sql::execute(&db.url, &sql_row(db.kind, "long task", &"t".repeat(51)));
        match db.kind {
            // SQLite does not enforce VARCHAR(50).
            Kind::Sqlite => assert!(long_by_sql.is_ok() && long_task.is_ok()),
            // The others refuse the row (PostgreSQL always, MariaDB in
            // its default strict mode).
            Kind::Postgres | Kind::Mysql => assert!(long_by_sql.is_err() && long_task.is_err()),
        }
        let rec = Recorder::new("record");
        let mut beat = Beat::builder(config.clone()).task(rec.clone()).start_manual().unwrap();
        let tick = beat.tick(at(0)).unwrap();
        let refused = if db.kind == Kind::Sqlite { 3 } else { 1 };
        assert_eq!(tick.invalid, refused, "{tick:?}");
        let tick = beat.tick(at(60)).unwrap();
        assert_eq!(tick.fired, 1, "only the valid routine runs: {tick:?}");
        assert!(wait_until(Duration::from_secs(10), || rec.count() == 1));
        let rows = op.store().routines().unwrap();
        let error = |name: &str| rows.iter().find(|r| r.name == name).unwrap().last_error.clone();
        assert_eq!(error(""), Some("name must not be empty".to_owned()));
        if db.kind == Kind::Sqlite {
            assert_eq!(error(&long), Some("name is longer than 50 characters".to_owned()));
            assert_eq!(error("long task"), Some("task is longer than 50 characters".to_owned()));
        }
        assert_eq!(error(&fifty), None);
        beat.stop();
    }
}

/// A row written by SQL, as an operator at a prompt would.
fn sql_row(kind: Kind, name: &str, task: &str) -> String {
    let id = uuid::Uuid::new_v4();
    let id = match kind {
        Kind::Postgres => id.to_string(),
        Kind::Sqlite | Kind::Mysql => id.simple().to_string(),
    };
    format!(
        "INSERT INTO routines (id, name, task, schedule, active, kwargs, options) \
         VALUES ('{id}', '{name}', '{task}', '{{\"timedelta\": 60}}', {}, '{{}}', '{{}}')",
        if kind == Kind::Postgres { "true" } else { "1" }
    )
}

#[cfg(not(feature = "mysql"))]
#[test]
fn mysql_urls_without_the_mysql_feature_say_how_to_turn_it_on() {
    let err = RoutineStore::connect("mysql://app:hunter2@127.0.0.1:3306/app")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("the `mysql` feature") && err.contains("app:***@") && !err.contains("hunter2"),
        "{err}"
    );
    // The MariaDB variants of the backend tests are not in this build; say
    // so where `cargo test` shows it (.ci/run runs them with the feature).
    common::report(
        "\n*** NOT BUILT: the MySQL/MariaDB tests (`cargo test --features mysql` runs them) ***",
    );
}

#[test]
fn without_create_table_a_missing_schema_is_a_clear_error() {
    let db = TestDb::sqlite("without_create_table");
    let config = {
        let mut c = db.config();
        c.create_table = false;
        c
    };
    let err = Beat::builder(config)
        .start()
        .err()
        .expect("no schema, no start");
    assert!(err.to_string().contains("diesel migration run"), "{err}");
}

#[test]
fn diesel_migration_run_from_the_repository_root_creates_the_schema() {
    let test = "diesel_migration_run";
    let Some(db) = TestDb::postgres(test) else {
        return;
    };
    let diesel = std::env::var("CARGO_HOME")
        .map(std::path::PathBuf::from)
        .or_else(|_| std::env::var("HOME").map(|h| std::path::Path::new(&h).join(".cargo")))
        .map(|home| home.join("bin").join("diesel"))
        .ok()
        .filter(|path| path.exists())
        .unwrap_or_else(|| "diesel".into());
    let output = std::process::Command::new(&diesel)
        .args(["migration", "run", "--database-url", &db.url])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output();
    let output = match output {
        Ok(output) => output,
        Err(e) => return common::skip(test, &format!("no diesel CLI ({e}); .ci/run installs it")),
    };
    assert!(
        output.status.success(),
        "diesel migration run: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let config = {
        let mut c = db.config();
        c.create_table = false;
        c
    };
    let beat = Beat::builder(config)
        .task(Recorder::new("record"))
        .routine(Routine::new("r", "record", every(5)))
        .start()
        .expect("the CLI's schema is the beat's schema");
    assert!(beat.store().routine("r").unwrap().is_some());
    // The embedded migrations agree that nothing is pending: running them
    // changes no part of the schema, nor the migrations recorded.
    let schema = sql::schema(&db.url);
    beat.store().migrate().unwrap();
    assert_eq!(sql::schema(&db.url), schema);
}

#[test]
fn bad_urls_are_clear_errors_that_hide_the_password() {
    for (url, expected) in [
        (
            "postgres://app:hunter2@127.0.0.1:1/app",
            "cannot connect to postgres://app:***@127.0.0.1:1/app",
        ),
        (
            "oracle://scott:hunter2@db/app",
            "expected postgres://, mysql://, sqlite:// or a file path",
        ),
        (
            "mysql://app:hunter2@127.0.0.1:1/app",
            if cfg!(feature = "mysql") {
                "cannot connect to mysql://app:***@127.0.0.1:1/app"
            } else {
                "mysql://app:***@127.0.0.1:1/app: this build has no MySQL/MariaDB support"
            },
        ),
        ("sqlite://:memory:", "SQLite needs a file"),
    ] {
        let err = RoutineStore::connect(url).expect_err(url).to_string();
        assert!(err.contains(expected), "{url}: {err}");
        assert!(!err.contains("hunter2"), "{url}: password in {err}");
        let config = {
            let mut c = Config::default();
            c.scheduler_db_uri = url.into();
            c
        };
        let err = Beat::builder(config).start().err().expect(url);
        assert!(
            matches!(err, Error::Store(_)) && !err.to_string().contains("hunter2"),
            "{err}"
        );
    }
}
