//! Routines declared outside the table: a JSON array of routines (a
//! `--routines` file, or `beat sync`'s standard input), and `beat sync`,
//! which applies the kit's source-of-truth rules to them and exits.

use anyhow::{bail, Context};
use celery_diesel_kit::ops::Operator;
use celery_diesel_kit::{Actor, Routine};
use serde_json::{json, Value};
use std::io::Read;
use std::path::Path;

/// A routine the beat will not declare, and why.
pub struct Refused {
    pub name: String,
    pub reason: String,
}

/// Routines read from JSON: the valid ones, and the refused ones by name.
#[derive(Default)]
pub struct Declared {
    pub routines: Vec<Routine>,
    pub refused: Vec<Refused>,
}

/// The JSON array of routines in the file at `path` (`-`: standard input).
pub fn read_array(path: &Path) -> anyhow::Result<Vec<Value>> {
    let shown = if path == Path::new("-") {
        "standard input".to_owned()
    } else {
        path.display().to_string()
    };
    let text = if path == Path::new("-") {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .context("cannot read standard input")?;
        text
    } else {
        std::fs::read_to_string(path).with_context(|| format!("cannot read {shown}"))?
    };
    let value: Value =
        serde_json::from_str(&text).with_context(|| format!("{shown} is not valid JSON"))?;
    let Value::Array(items) = value else {
        bail!("{shown} must hold a JSON array of routines");
    };
    Ok(items)
}

/// Every routine of `items` (the routines file's form), all or nothing:
/// the first bad one is the error, naming it and `path`.
pub fn all_or_nothing(items: &[Value], path: &Path) -> anyhow::Result<Vec<Routine>> {
    items
        .iter()
        .map(|item| Routine::from_json(item).with_context(|| format!("in {}", path.display())))
        .collect()
}

/// Each routine of `items` on its own: a bad one is refused by name (its
/// JSON when it has none) and the others are declared.
pub fn one_by_one(items: &[Value]) -> Declared {
    let mut declared = Declared::default();
    for item in items {
        match Routine::from_json(item) {
            Ok(routine) => declared.routines.push(routine),
            Err(e) => declared.refused.push(Refused {
                name: e.routine.clone(),
                reason: e.reason.clone(),
            }),
        }
    }
    declared
}

/// `beat sync`: the source-of-truth rules applied now to `declared`, as
/// `me`'s edits, without serving. A routine refused (here, or on its way)
/// is named on standard error and its row left alone, as are the rows
/// named in `keep`; the others are synced. Exit status 1 if any was
/// refused.
pub fn sync(
    op: &Operator,
    me: &Actor,
    declared: Declared,
    keep: &[String],
    json: bool,
) -> anyhow::Result<i32> {
    let mut kept_names: Vec<String> = keep.to_vec();
    for refused in &declared.refused {
        eprintln!("refused: routine {}: {}", refused.name, refused.reason);
        kept_names.push(refused.name.clone());
    }
    if declared.routines.is_empty() {
        // The kit's rule: with nothing declared, nothing is deleted.
        eprintln!("beat sync: no routine declared; the table is left as it is");
    }
    let synced = op.sync(me, &declared.routines, &kept_names)?;
    if json {
        let refused: Vec<Value> = declared
            .refused
            .iter()
            .map(|r| json!({"name": r.name, "reason": r.reason}))
            .collect();
        println!(
            "{}",
            json!({
                "inserted": synced.inserted,
                "kept": synced.kept,
                "deleted": synced.deleted,
                "refused": refused,
            })
        );
    } else {
        let list = |names: &[String]| {
            if names.is_empty() {
                "none".to_owned()
            } else {
                names.join(", ")
            }
        };
        println!("inserted: {}", list(&synced.inserted));
        println!("kept (the table's version stays): {}", list(&synced.kept));
        println!("deleted (no longer declared): {}", list(&synced.deleted));
    }
    Ok(if declared.refused.is_empty() { 0 } else { 1 })
}
