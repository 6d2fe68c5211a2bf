//! The batches repository: batches, their tasks (the queue the dispatcher reads) and the
//! steps of each task's trajectory. A task's life (transitions, lease, retries, log) is its
//! run in `store::jobs`; these rows hold its spec, queue order, outcome and steps.

use sqlx::Row;

use super::Db;
use crate::error::WharfResult;

#[derive(Debug, Clone)]
pub struct BatchRow {
    pub id: String,
    pub owner: String,
    pub key_id: String,
    pub options: String,
    pub invalid_lines: String,
    pub created_ms: i64,
    pub cancelled_ms: Option<i64>,
}

#[derive(Debug, Clone)]
pub struct TaskRow {
    pub id: String,
    pub batch_id: String,
    pub owner: String,
    pub task_id: String,
    pub task_type: String,
    pub line: i64,
    pub priority: i64,
    pub spec: String,
    pub status: String,
    pub side: Option<String>,
    pub error_class: Option<String>,
    pub error_message: Option<String>,
    pub attempts: i64,
    pub sandbox_id: Option<String>,
    pub outcome: Option<String>,
    pub cache: Option<String>,
    pub cache_source: Option<String>,
    pub queued_ms: i64,
    pub started_ms: Option<i64>,
    pub ended_ms: Option<i64>,
}

/// A task to insert with its batch.
pub struct NewTask<'a> {
    pub id: &'a str,
    pub task_id: &'a str,
    pub task_type: &'a str,
    pub line: i64,
    pub priority: i64,
    pub spec: &'a str,
}

#[derive(Debug, Clone)]
pub struct StepRow {
    pub step_id: i64,
    pub action_type: String,
    pub tool: Option<String>,
    pub params: String,
    pub observation: String,
    pub observation_truncated: bool,
    pub success: bool,
    pub error_class: Option<String>,
    pub error_message: Option<String>,
    pub ts_ms: i64,
    pub duration_ms: f64,
    /// The model's text that came with a plugin planner's call.
    pub thought: Option<String>,
}

/// Which tasks of a batch to list.
#[derive(Debug, Default)]
pub struct TaskFilter<'a> {
    pub status: Option<&'a str>,
    pub error_class: Option<&'a str>,
    pub side: Option<&'a str>,
    pub task_type: Option<&'a str>,
    /// Tasks after this line (a cursor).
    pub after_line: i64,
    pub limit: i64,
}

/// How a task ended, as stored.
pub struct TaskEnd<'a> {
    pub status: &'a str,
    pub side: Option<&'a str>,
    pub error_class: Option<&'a str>,
    pub error_message: Option<&'a str>,
    pub outcome: Option<&'a str>,
}

const TASK_COLUMNS: &str = "id, batch_id, owner, task_id, task_type, line, priority, spec, status, side, \
     error_class, error_message, attempts, sandbox_id, outcome, cache, cache_source, queued_ms, started_ms, ended_ms";

const LIVE: &str = "('queued', 'running')";

fn task_row(row: &sqlx::sqlite::SqliteRow) -> TaskRow {
    TaskRow {
        id: row.get("id"),
        batch_id: row.get("batch_id"),
        owner: row.get("owner"),
        task_id: row.get("task_id"),
        task_type: row.get("task_type"),
        line: row.get("line"),
        priority: row.get("priority"),
        spec: row.get("spec"),
        status: row.get("status"),
        side: row.get("side"),
        error_class: row.get("error_class"),
        error_message: row.get("error_message"),
        attempts: row.get("attempts"),
        sandbox_id: row.get("sandbox_id"),
        outcome: row.get("outcome"),
        cache: row.get("cache"),
        cache_source: row.get("cache_source"),
        queued_ms: row.get("queued_ms"),
        started_ms: row.get("started_ms"),
        ended_ms: row.get("ended_ms"),
    }
}

/// Stores a batch and its tasks (all `queued`) in one transaction.
#[allow(clippy::too_many_arguments)]
pub async fn insert_batch(
    db: &Db,
    id: &str,
    owner: &str,
    key_id: &str,
    options: &str,
    invalid_lines: &str,
    tasks: &[NewTask<'_>],
    now_ms: i64,
) -> WharfResult<()> {
    let mut tx = db.begin().await?;
    sqlx::query(
        "INSERT INTO batches (id, owner, key_id, options, invalid_lines, created_ms) VALUES (?, ?, ?, ?, ?, ?)",
    )
    .bind(id)
    .bind(owner)
    .bind(key_id)
    .bind(options)
    .bind(invalid_lines)
    .bind(now_ms)
    .execute(&mut *tx)
    .await?;
    for task in tasks {
        sqlx::query(
            "INSERT INTO batch_tasks (id, batch_id, owner, task_id, task_type, line, priority, spec, status, queued_ms) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'queued', ?)",
        )
        .bind(task.id)
        .bind(id)
        .bind(owner)
        .bind(task.task_id)
        .bind(task.task_type)
        .bind(task.line)
        .bind(task.priority)
        .bind(task.spec)
        .bind(now_ms)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    Ok(())
}

/// A batch, of `owner` when given.
pub async fn get_batch(db: &Db, id: &str, owner: Option<&str>) -> WharfResult<Option<BatchRow>> {
    let row = sqlx::query(
        "SELECT id, owner, key_id, options, invalid_lines, created_ms, cancelled_ms FROM batches \
         WHERE id = ? AND (? IS NULL OR owner = ?)",
    )
    .bind(id)
    .bind(owner)
    .bind(owner)
    .fetch_optional(db)
    .await?;
    Ok(row.map(|row| BatchRow {
        id: row.get("id"),
        owner: row.get("owner"),
        key_id: row.get("key_id"),
        options: row.get("options"),
        invalid_lines: row.get("invalid_lines"),
        created_ms: row.get("created_ms"),
        cancelled_ms: row.get("cancelled_ms"),
    }))
}

/// Marks a batch cancelled (the first time only); false when it already was.
pub async fn mark_cancelled(db: &Db, id: &str, now_ms: i64) -> WharfResult<bool> {
    Ok(
        sqlx::query("UPDATE batches SET cancelled_ms = ? WHERE id = ? AND cancelled_ms IS NULL")
            .bind(now_ms)
            .bind(id)
            .execute(db)
            .await?
            .rows_affected()
            == 1,
    )
}

/// Tasks of a batch by status.
pub async fn status_counts(db: &Db, batch_id: &str) -> WharfResult<Vec<(String, i64)>> {
    Ok(sqlx::query_as(
        "SELECT status, COUNT(*) FROM batch_tasks WHERE batch_id = ? GROUP BY status ORDER BY status",
    )
    .bind(batch_id)
    .fetch_all(db)
    .await?)
}

/// Failed tasks of a batch by side and error class.
pub async fn failure_counts(db: &Db, batch_id: &str) -> WharfResult<Vec<(String, String, i64)>> {
    Ok(sqlx::query_as(
        "SELECT side, error_class, COUNT(*) FROM batch_tasks \
         WHERE batch_id = ? AND status = 'failed' AND side IS NOT NULL AND error_class IS NOT NULL \
         GROUP BY side, error_class ORDER BY side, error_class",
    )
    .bind(batch_id)
    .fetch_all(db)
    .await?)
}

/// Tasks of a batch in line order, filtered.
pub async fn list_tasks(
    db: &Db,
    batch_id: &str,
    filter: &TaskFilter<'_>,
) -> WharfResult<Vec<TaskRow>> {
    let rows = sqlx::query(&format!(
        "SELECT {TASK_COLUMNS} FROM batch_tasks WHERE batch_id = ? AND line > ? \
         AND (? IS NULL OR status = ?) AND (? IS NULL OR error_class = ?) \
         AND (? IS NULL OR side = ?) AND (? IS NULL OR task_type = ?) ORDER BY line LIMIT ?"
    ))
    .bind(batch_id)
    .bind(filter.after_line)
    .bind(filter.status)
    .bind(filter.status)
    .bind(filter.error_class)
    .bind(filter.error_class)
    .bind(filter.side)
    .bind(filter.side)
    .bind(filter.task_type)
    .bind(filter.task_type)
    .bind(filter.limit)
    .fetch_all(db)
    .await?;
    Ok(rows.iter().map(task_row).collect())
}

/// A task, of `owner` when given.
pub async fn get_task(db: &Db, id: &str, owner: Option<&str>) -> WharfResult<Option<TaskRow>> {
    let row = sqlx::query(&format!(
        "SELECT {TASK_COLUMNS} FROM batch_tasks WHERE id = ? AND (? IS NULL OR owner = ?)"
    ))
    .bind(id)
    .bind(owner)
    .bind(owner)
    .fetch_optional(db)
    .await?;
    Ok(row.as_ref().map(task_row))
}

/// Queued tasks by type (the queue depths).
pub async fn queued_by_type(db: &Db) -> WharfResult<Vec<(String, i64)>> {
    Ok(sqlx::query_as(
        "SELECT task_type, COUNT(*) FROM batch_tasks WHERE status = 'queued' GROUP BY task_type ORDER BY task_type",
    )
    .fetch_all(db)
    .await?)
}

/// The next task of a type's queue: highest priority, then oldest, then first line.
pub async fn next_queued(db: &Db, task_type: &str) -> WharfResult<Option<TaskRow>> {
    let row = sqlx::query(&format!(
        "SELECT {TASK_COLUMNS} FROM batch_tasks WHERE status = 'queued' AND task_type = ? \
         ORDER BY priority DESC, queued_ms, batch_id, line LIMIT 1"
    ))
    .bind(task_type)
    .fetch_optional(db)
    .await?;
    Ok(row.as_ref().map(task_row))
}

/// Moves a queued task to running and counts the attempt; false when it was not queued or
/// its batch was cancelled (the cancel marks the batch first, so nothing starts after it).
pub async fn mark_running(db: &Db, id: &str, now_ms: i64) -> WharfResult<bool> {
    Ok(sqlx::query(
        "UPDATE batch_tasks SET status = 'running', attempts = attempts + 1, started_ms = ? \
         WHERE id = ? AND status = 'queued' AND NOT EXISTS \
         (SELECT 1 FROM batches WHERE batches.id = batch_tasks.batch_id AND batches.cancelled_ms IS NOT NULL)",
    )
    .bind(now_ms)
    .bind(id)
    .execute(db)
    .await?
    .rows_affected()
        == 1)
}

/// Whether a task is still `running` (a cancel may have ended it under its executor).
pub async fn is_running(db: &Db, id: &str) -> WharfResult<bool> {
    let status: Option<String> = sqlx::query_scalar("SELECT status FROM batch_tasks WHERE id = ?")
        .bind(id)
        .fetch_optional(db)
        .await?;
    Ok(status.as_deref() == Some("running"))
}

/// Counts another attempt of a running task.
pub async fn count_attempt(db: &Db, id: &str) -> WharfResult<()> {
    sqlx::query("UPDATE batch_tasks SET attempts = attempts + 1 WHERE id = ?")
        .bind(id)
        .execute(db)
        .await?;
    Ok(())
}

/// Puts a running task back in its queue (after a restart cut its attempt short).
pub async fn requeue(db: &Db, id: &str) -> WharfResult<bool> {
    Ok(sqlx::query(
        "UPDATE batch_tasks SET status = 'queued', sandbox_id = NULL WHERE id = ? AND status = 'running'",
    )
    .bind(id)
    .execute(db)
    .await?
    .rows_affected()
        == 1)
}

pub async fn set_sandbox(db: &Db, id: &str, sandbox_id: Option<&str>) -> WharfResult<()> {
    sqlx::query("UPDATE batch_tasks SET sandbox_id = ? WHERE id = ?")
        .bind(sandbox_id)
        .bind(id)
        .execute(db)
        .await?;
    Ok(())
}

/// Ends a live task; false (nothing written) when it had already ended: the one place
/// that decides which of two racing ends (completion, cancel) counts.
pub async fn end_task(db: &Db, id: &str, end: &TaskEnd<'_>, now_ms: i64) -> WharfResult<bool> {
    Ok(sqlx::query(&format!(
        "UPDATE batch_tasks SET status = ?, side = ?, error_class = ?, error_message = ?, \
         outcome = COALESCE(?, outcome), ended_ms = ? WHERE id = ? AND status IN {LIVE}"
    ))
    .bind(end.status)
    .bind(end.side)
    .bind(end.error_class)
    .bind(end.error_message)
    .bind(end.outcome)
    .bind(now_ms)
    .bind(id)
    .execute(db)
    .await?
    .rows_affected()
        == 1)
}

/// The live tasks of a batch: (id, status, sandbox id).
pub async fn live_tasks(
    db: &Db,
    batch_id: &str,
) -> WharfResult<Vec<(String, String, Option<String>)>> {
    Ok(sqlx::query_as(&format!(
        "SELECT id, status, sandbox_id FROM batch_tasks WHERE batch_id = ? AND status IN {LIVE} ORDER BY line"
    ))
    .bind(batch_id)
    .fetch_all(db)
    .await?)
}

/// Records a task's cache key and whether the cache was a `miss` (none when the batch has
/// the cache off).
pub async fn set_cache_key(db: &Db, id: &str, key: &str, cache: Option<&str>) -> WharfResult<()> {
    sqlx::query("UPDATE batch_tasks SET cache_key = ?, cache = ? WHERE id = ?")
        .bind(key)
        .bind(cache)
        .bind(id)
        .execute(db)
        .await?;
    Ok(())
}

/// The newest succeeded task of `owner` under `key`, other than `except`.
pub async fn cached_task(
    db: &Db,
    owner: &str,
    key: &str,
    except: &str,
) -> WharfResult<Option<TaskRow>> {
    let row = sqlx::query(&format!(
        "SELECT {TASK_COLUMNS} FROM batch_tasks WHERE owner = ? AND cache_key = ? AND status = 'succeeded' \
         AND id <> ? ORDER BY ended_ms DESC, id LIMIT 1"
    ))
    .bind(owner)
    .bind(key)
    .bind(except)
    .fetch_optional(db)
    .await?;
    Ok(row.as_ref().map(task_row))
}

/// Copies the steps of `source` to `task_id` and marks the task a cache hit of it.
pub async fn copy_from_cache(db: &Db, task_id: &str, source: &str) -> WharfResult<()> {
    let mut tx = db.begin().await?;
    sqlx::query("DELETE FROM task_steps WHERE task_id = ?")
        .bind(task_id)
        .execute(&mut *tx)
        .await?;
    sqlx::query(
        "INSERT INTO task_steps (task_id, step_id, action_type, tool, params, observation, observation_truncated, \
         success, error_class, error_message, ts_ms, duration_ms, thought) \
         SELECT ?, step_id, action_type, tool, params, observation, observation_truncated, success, error_class, \
         error_message, ts_ms, duration_ms, thought FROM task_steps WHERE task_id = ?",
    )
    .bind(task_id)
    .bind(source)
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "UPDATE batch_tasks SET cache = 'hit', cache_source = ?, sandbox_id = NULL WHERE id = ?",
    )
    .bind(source)
    .bind(task_id)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(())
}

/// Tasks of a batch by cache outcome (`hit`, `miss`).
pub async fn cache_counts(db: &Db, batch_id: &str) -> WharfResult<Vec<(String, i64)>> {
    Ok(sqlx::query_as(
        "SELECT cache, COUNT(*) FROM batch_tasks WHERE batch_id = ? AND cache IS NOT NULL GROUP BY cache ORDER BY cache",
    )
    .bind(batch_id)
    .fetch_all(db)
    .await?)
}

/// Forgets the steps of a task's earlier attempt.
pub async fn clear_steps(db: &Db, task_id: &str) -> WharfResult<()> {
    sqlx::query("DELETE FROM task_steps WHERE task_id = ?")
        .bind(task_id)
        .execute(db)
        .await?;
    Ok(())
}

pub async fn insert_step(db: &Db, task_id: &str, step: &StepRow) -> WharfResult<()> {
    sqlx::query(
        "INSERT INTO task_steps (task_id, step_id, action_type, tool, params, observation, observation_truncated, \
         success, error_class, error_message, ts_ms, duration_ms, thought) \
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
    )
    .bind(task_id)
    .bind(step.step_id)
    .bind(&step.action_type)
    .bind(&step.tool)
    .bind(&step.params)
    .bind(&step.observation)
    .bind(i64::from(step.observation_truncated))
    .bind(i64::from(step.success))
    .bind(&step.error_class)
    .bind(&step.error_message)
    .bind(step.ts_ms)
    .bind(step.duration_ms)
    .bind(&step.thought)
    .execute(db)
    .await?;
    Ok(())
}

pub async fn steps(db: &Db, task_id: &str) -> WharfResult<Vec<StepRow>> {
    let rows = sqlx::query(
        "SELECT step_id, action_type, tool, params, observation, observation_truncated, success, \
         error_class, error_message, ts_ms, duration_ms, thought FROM task_steps WHERE task_id = ? \
         ORDER BY step_id",
    )
    .bind(task_id)
    .fetch_all(db)
    .await?;
    Ok(rows
        .iter()
        .map(|row| StepRow {
            step_id: row.get("step_id"),
            action_type: row.get("action_type"),
            tool: row.get("tool"),
            params: row.get("params"),
            observation: row.get("observation"),
            observation_truncated: row.get::<i64, _>("observation_truncated") != 0,
            success: row.get::<i64, _>("success") != 0,
            error_class: row.get("error_class"),
            error_message: row.get("error_message"),
            ts_ms: row.get("ts_ms"),
            duration_ms: row.get("duration_ms"),
            thought: row.get("thought"),
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task<'a>(id: &'a str, line: i64, priority: i64) -> NewTask<'a> {
        NewTask {
            id,
            task_id: id,
            task_type: "code",
            line,
            priority,
            spec: "{}",
        }
    }

    #[tokio::test]
    async fn the_queue_gives_the_highest_priority_first_and_ends_a_task_once() {
        let dir = tempfile::tempdir().unwrap();
        let db = crate::store::open(dir.path()).await.unwrap();
        let tasks = [task("t1", 1, 1), task("t2", 2, 5), task("t3", 3, 5)];
        insert_batch(&db, "bat_1", "o", "key_1", "{}", "[]", &tasks, 10)
            .await
            .unwrap();
        let next = next_queued(&db, "code").await.unwrap().unwrap();
        assert_eq!(next.id, "t2", "priority 5, first line");
        assert!(mark_running(&db, "t2", 11).await.unwrap());
        assert!(
            !mark_running(&db, "t2", 12).await.unwrap(),
            "already running"
        );
        assert_eq!(next_queued(&db, "code").await.unwrap().unwrap().id, "t3");
        assert!(next_queued(&db, "other").await.unwrap().is_none());
        let end = TaskEnd {
            status: "failed",
            side: Some("task"),
            error_class: Some("runtime_error"),
            error_message: Some("exit 1"),
            outcome: None,
        };
        assert!(end_task(&db, "t2", &end, 20).await.unwrap());
        let cancel = TaskEnd {
            status: "cancelled",
            side: None,
            error_class: None,
            error_message: None,
            outcome: None,
        };
        assert!(
            !end_task(&db, "t2", &cancel, 21).await.unwrap(),
            "ends once"
        );
        let row = get_task(&db, "t2", Some("o")).await.unwrap().unwrap();
        assert_eq!(
            (row.status.as_str(), row.attempts, row.ended_ms),
            ("failed", 1, Some(20))
        );
        assert!(
            get_task(&db, "t2", Some("someone"))
                .await
                .unwrap()
                .is_none()
        );
        assert_eq!(
            failure_counts(&db, "bat_1").await.unwrap(),
            [("task".to_string(), "runtime_error".to_string(), 1)]
        );
        let queued = TaskFilter {
            status: Some("queued"),
            limit: 10,
            ..TaskFilter::default()
        };
        let lines: Vec<i64> = list_tasks(&db, "bat_1", &queued)
            .await
            .unwrap()
            .iter()
            .map(|t| t.line)
            .collect();
        assert_eq!(lines, [1, 3]);
    }
}
