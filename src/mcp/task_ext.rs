//! MCP tasks of the 2026-07-28 revision: the `io.modelcontextprotocol/tasks`
//! extension (SEP-2663), in rmcp's types. A client that declares the
//! extension (per request, or at `initialize`) may get a task handle from
//! `tools/call` of `agent_run` or `workflow_run` when the work will not end
//! within `[tasks] answer_within_ms`; `tasks/get` carries the result inline
//! once it has one, `tasks/cancel` stops the work, `tasks/update` answers a
//! question the task asked. The tasks are those of [`super::client_tasks`],
//! so both generations see the same ones.

use rmcp::ErrorData as McpError;
use rmcp::model::{
    CallToolResponse, CreateTaskResult, DetailedTask, ErrorCode, GetTaskResult, InputResponses,
    Task, TaskPayload, TaskStatus,
};

use super::client_tasks::{Answered, Detailed, Progress, Status, TaskError, Tasks};
use super::schema::JsonObject;
use super::tasks;
use crate::task::ClientTask;

/// The tools a 2026-07-28 client may get a task from (`agent_delegate`
/// answers at once anyway).
pub fn may_become_a_task(tool: &str) -> bool {
    matches!(
        tool.replacen('/', "_", 1).as_str(),
        "agent_run" | "workflow_run"
    )
}

fn to_mcp(e: TaskError) -> McpError {
    McpError::new(e.code(), super::clip_error(e.to_string()), None)
}

/// The task in rmcp's words.
fn task_of(record: &ClientTask, progress: &Progress) -> Task {
    let status = match progress.status {
        Status::Working => TaskStatus::Working,
        Status::InputRequired => TaskStatus::InputRequired,
        Status::Completed => TaskStatus::Completed,
        Status::Failed => TaskStatus::Failed,
        Status::Cancelled => TaskStatus::Cancelled,
    };
    let mut task = Task::new(
        record.id.clone(),
        status,
        tasks::rfc3339(record.created_at),
        tasks::rfc3339(progress.updated_at.max(record.created_at)),
    )
    .with_status_message(progress.message.clone())
    .with_poll_interval_ms(record.poll_ms);
    task.ttl_ms = record.ttl_ms;
    task
}

/// `tools/call` of a tool that may become a task.
pub async fn call_tool(
    api: &Tasks<'_>,
    name: &str,
    arguments: Option<JsonObject>,
) -> Result<CallToolResponse, McpError> {
    match api.call_or_task(name, arguments).await {
        Ok(Answered::Now(outcome)) => Ok(super::call_result(name, outcome).into()),
        Ok(Answered::Task(record, progress)) => Ok(CallToolResponse::Task(CreateTaskResult::new(
            task_of(&record, &progress),
        ))),
        // Bad arguments are the model's to fix, as on the plain path.
        Err(TaskError::Tool(e)) => Ok(super::call_result(name, Err(e)).into()),
        Err(e @ TaskError::BadParams(_)) => Ok(super::call_result(
            name,
            Err(super::tools::ToolError::Engine(e.to_string())),
        )
        .into()),
        Err(e) => Err(to_mcp(e)),
    }
}

/// `tasks/get`: the task, with its result once it has one, or the
/// questions it waits on.
pub async fn get_task(api: &Tasks<'_>, id: &str) -> Result<GetTaskResult, McpError> {
    let Detailed {
        record,
        mut progress,
        outcome,
    } = api.detailed(id).await.map_err(to_mcp)?;
    let asks = super::approvals::input_requests(api.engine, &record.id);
    if progress.status == Status::InputRequired && asks.is_empty() {
        // Asked on a session (elicitation): nothing for this client to answer.
        progress.status = Status::Working;
    }
    let task = task_of(&record, &progress);
    let payload = match (progress.status, outcome) {
        (Status::Working, _) => TaskPayload::Working,
        (Status::InputRequired, _) => TaskPayload::InputRequired {
            input_requests: asks,
        },
        (Status::Cancelled, _) => TaskPayload::Cancelled,
        // A task that ended has the plain call's result, whatever became of
        // the agent's work (the result says; the status message too).
        (_, Some(outcome)) => {
            let result = super::call_result(&record.tool, outcome);
            match serde_json::to_value(result) {
                Ok(serde_json::Value::Object(o)) => TaskPayload::Completed { result: o },
                _ => {
                    return Err(McpError::internal_error(
                        "the task's result could not be written",
                        None,
                    ));
                }
            }
        }
        (_, None) => TaskPayload::Cancelled,
    };
    Ok(GetTaskResult::new(DetailedTask::new(task, payload)))
}

/// `tasks/cancel`: an empty acknowledgement, also for a task that has
/// already ended (idempotent in this generation; only an unknown task is
/// an error).
pub async fn cancel_task(api: &Tasks<'_>, id: &str) -> Result<(), McpError> {
    match api.cancel(id).await {
        Ok(_) | Err(TaskError::Finished { .. }) => Ok(()),
        Err(e) => Err(to_mcp(e)),
    }
}

/// `tasks/update`: answers to the questions `tasks/get` showed.
pub async fn update_task(
    api: &Tasks<'_>,
    id: &str,
    responses: &InputResponses,
) -> Result<(), McpError> {
    let (record, _) = api.get_record(id).await.map_err(to_mcp)?;
    if super::approvals::input_requests(api.engine, &record.id).is_empty() {
        return Err(McpError::new(
            ErrorCode::INVALID_PARAMS,
            format!(
                "task `{}` is not waiting for input (its status is not input_required): nothing to update",
                crate::provider::clip(id, 80)
            ),
            None,
        ));
    }
    let by = api
        .call
        .subject
        .clone()
        .unwrap_or_else(|| "the client's user".into());
    let delivered =
        super::approvals::answer(api.engine, &record.id, responses, &by, "tasks/update")
            .map_err(|e| McpError::new(ErrorCode::INVALID_PARAMS, e.to_string(), None))?;
    // Answers to questions that have gone since the client looked are
    // ignored; an update none of whose answers fit is the client's mistake.
    match (delivered.taken, delivered.gone.first()) {
        (0, Some(key)) => Err(McpError::new(
            ErrorCode::INVALID_PARAMS,
            crate::engine::approval::AnswerError::NotOpen(key.clone()).to_string(),
            None,
        )),
        _ => Ok(()),
    }
}
