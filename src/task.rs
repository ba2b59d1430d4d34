//! Tasks: the code a routine runs in-process, and the registry of them.
//!
//! A routine's `task` column names a task. If a task of that name is
//! registered here, the beat's own worker pool runs it; otherwise (with a
//! broker configured) the beat sends it to Celery.

use chrono::{DateTime, Utc};
use serde::de::DeserializeOwned;
use serde_json::Value;
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

/// What a task returns on failure: any error. A failed run is retried up to
/// `celery_max_retry` times.
pub type TaskError = Box<dyn std::error::Error + Send + Sync>;

/// What a task returns.
pub type TaskResult = Result<(), TaskError>;

/// Everything a run knows about why it runs.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskContext {
    /// The routine's id.
    pub routine_id: String,
    /// The routine's name.
    pub routine: String,
    /// The task's name.
    pub task: String,
    /// The due time this run stands for.
    pub scheduled_at: DateTime<Utc>,
    /// 0 for the first attempt, 1 for the first retry, ...
    pub attempt: u32,
    /// The routine's positional args (a JSON array; `[]` when the row has
    /// none).
    pub args: Value,
    /// The routine's kwargs (a JSON object; `{}` when the row has none).
    pub kwargs: Value,
}

impl TaskContext {
    /// The kwargs deserialized into `T`.
    ///
    /// ```
    /// # use celery_diesel_kit::TaskContext;
    /// #[derive(serde::Deserialize)]
    /// struct Report { recipient: String, #[serde(default)] verbose: bool }
    /// # let ctx = TaskContext { routine_id: String::new(), routine: "r".into(), task: "t".into(),
    /// #     scheduled_at: chrono::Utc::now(), attempt: 0, args: serde_json::json!([]),
    /// #     kwargs: serde_json::json!({"recipient": "ops@example.com"}) };
    /// let report: Report = ctx.kwargs()?;
    /// assert_eq!(report.recipient, "ops@example.com");
    /// # Ok::<(), celery_diesel_kit::TaskError>(())
    /// ```
    pub fn kwargs<T: DeserializeOwned>(&self) -> Result<T, TaskError> {
        T::deserialize(&self.kwargs).map_err(|e| {
            format!(
                "routine {}: kwargs do not fit task {}: {e}",
                self.routine, self.task
            )
            .into()
        })
    }
}

/// A blocking task, run on a worker thread (the kit's `SyncTask`).
///
/// ```
/// use celery_diesel_kit::{SyncTask, TaskContext, TaskResult};
///
/// struct Cleanup;
/// impl SyncTask for Cleanup {
///     fn name(&self) -> &str { "cleanup" }
///     fn run(&self, ctx: &TaskContext) -> TaskResult {
///         println!("{} due at {}", ctx.routine, ctx.scheduled_at);
///         Ok(())
///     }
/// }
/// ```
pub trait SyncTask: Send + Sync + 'static {
    /// The name routines use in their `task` column.
    fn name(&self) -> &str;
    /// Does the work.
    fn run(&self, ctx: &TaskContext) -> TaskResult;
}

/// An async task, run on the worker thread's own current-thread tokio
/// runtime (the kit's `AsyncTask`). Its future need not be `Send`.
///
/// ```
/// use celery_diesel_kit::{AsyncTask, TaskContext, TaskResult};
///
/// struct Ping;
/// impl AsyncTask for Ping {
///     fn name(&self) -> &str { "ping" }
///     async fn run(&self, _ctx: TaskContext) -> TaskResult {
///         tokio::time::sleep(std::time::Duration::from_millis(1)).await;
///         Ok(())
///     }
/// }
/// ```
pub trait AsyncTask: Send + Sync + 'static {
    /// The name routines use in their `task` column.
    fn name(&self) -> &str;
    /// Does the work.
    // The future runs on the worker thread that polls it (a current-thread
    // runtime), so it deliberately carries no `Send` bound.
    #[allow(async_fn_in_trait)]
    async fn run(&self, ctx: TaskContext) -> TaskResult;
}

/// A future borrowed from a task, as the worker polls it.
pub(crate) type TaskFuture<'a> = Pin<Box<dyn Future<Output = TaskResult> + 'a>>;

/// [`AsyncTask`] with its future boxed, so tasks of different types can sit
/// in one registry.
pub(crate) trait DynAsyncTask: Send + Sync {
    fn run_boxed(&self, ctx: TaskContext) -> TaskFuture<'_>;
}

impl<T: AsyncTask> DynAsyncTask for T {
    fn run_boxed(&self, ctx: TaskContext) -> TaskFuture<'_> {
        Box::pin(self.run(ctx))
    }
}

/// A registered task.
#[derive(Clone)]
pub(crate) enum Registered {
    Sync(Arc<dyn SyncTask>),
    Async(Arc<dyn DynAsyncTask>),
}

/// The in-process tasks, by name.
#[derive(Clone, Default)]
pub(crate) struct TaskRegistry {
    tasks: HashMap<String, Registered>,
}

impl TaskRegistry {
    pub(crate) fn add_sync(&mut self, task: impl SyncTask) {
        self.tasks
            .insert(task.name().to_owned(), Registered::Sync(Arc::new(task)));
    }

    pub(crate) fn add_async(&mut self, task: impl AsyncTask) {
        self.tasks
            .insert(task.name().to_owned(), Registered::Async(Arc::new(task)));
    }

    pub(crate) fn get(&self, name: &str) -> Option<&Registered> {
        self.tasks.get(name)
    }

    /// The task names.
    pub(crate) fn names(&self) -> impl Iterator<Item = &str> {
        self.tasks.keys().map(String::as_str)
    }
}
