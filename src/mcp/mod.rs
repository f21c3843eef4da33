//! The MCP face of `dispatch`: the only module (with its transports) that knows
//! MCP and JSON-RPC. It maps tool calls and resource reads onto the library
//! ([`crate::app::App`]) and turns every failure into something a model can read.

pub mod approvals;
pub mod client;
pub mod client_tasks;
pub mod mrtr;
pub mod resources;
pub mod schema;
pub mod stdio;
pub mod task_ext;
pub mod task_wire;
pub mod tasks;
pub mod tools;
pub mod workflows;

use std::sync::Arc;

use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, ContentBlock, Implementation,
    ListResourceTemplatesResult, ListResourcesResult, ListToolsResult, PaginatedRequestParams,
    ReadResourceRequestParams, ReadResourceResponse, ReadResourceResult, ServerCapabilities,
    ServerConfig, SubscriptionFilter,
};
use rmcp::service::{NotificationContext, RequestContext, SubscriptionContext};
use rmcp::{ErrorData as McpError, RoleServer, ServerHandler, ServiceExt};
use tokio::sync::broadcast;
use tokio_util::task::TaskTracker;

use crate::app::{App, KbChange};
use crate::auth::Principal;
use crate::engine::Engine;
use crate::kb::{KbError, KbView};

/// Text sent in `initialize` telling a model how to use this server.
pub const INSTRUCTIONS: &str = "\
dispatch runs a team of specialist AI agents, each on the model that suits it, and keeps a \
markdown knowledge base (KB) of their work.

- agent_list: the agents (name, description, model chain, mirror auditor) and problems in their \
files. Check it before choosing an agent.
- agent_run: run an agent on an input and wait for the answer (wait_seconds, default 45). The \
agent sees only `input`: include the diff, logs or text it needs. If the result says the task is \
not done, call task_result with its task_id instead of running it again.
- agent_delegate: start long work in the background and get a task_id at once; omit `agent` to \
let the router choose.
- task_status / task_result / task_list / task_cancel: follow, collect, list and stop tasks.
- usage_report: tokens and cost per agent and model, and the saving against one baseline model.
- workflow_run / workflow_status: run a DAG of agents (inline, or a workflow agent such as \
review-and-document) and follow each step; task_cancel with the run id stops it.
- kb_search: find earlier work by text or regex before redoing it; results are `path:line: snippet`.
- kb_read: read a KB file by KB-relative path (e.g. `outbox/code-review-42.md`); follow \
`next_offset` for long files.
- kb_list: browse folders: inbox/ (requests), outbox/ (agent results), context/ (standing \
context), sessions/ (workflow runs).
- kb_write: save notes or context (modes: overwrite, append, create_new).

KB files are also resources at kb://<path>. Paths are always relative to the KB root; `..` and \
absolute paths are refused. Errors come back as tool results that say what to change.";

/// Server-wide shared state: the app plus the KB change feed every session
/// forwards to its client.
#[derive(Clone)]
pub struct DispatchServer {
    app: Arc<App>,
    engine: Arc<Engine>,
    kb_changes: broadcast::Sender<KbChange>,
    /// The caller, when the transport fixed it for the whole session (legacy
    /// SSE); Streamable HTTP brings it with each request instead.
    principal: Option<Principal>,
    /// The subject that opened this session: requests from anyone else are
    /// refused, so a leaked session id is useless without its owner's token.
    session_subject: Arc<std::sync::OnceLock<String>>,
    /// Tool calls in flight, so an HTTP shutdown can wait for them.
    calls: Option<TaskTracker>,
    /// Which transport carries this session.
    transport: Transport,
}

/// Which transport a session came in on: what a client may be shown
/// depends on it (a remote client never sees the server's file paths).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// stdin/stdout of a local client.
    Stdio,
    /// HTTP (Streamable HTTP or legacy SSE), possibly from another machine.
    Http,
}

impl DispatchServer {
    /// A server over `app` and `engine`; `kb_changes` fires when KB files
    /// appear or disappear.
    pub fn new(
        app: Arc<App>,
        engine: Arc<Engine>,
        kb_changes: broadcast::Sender<KbChange>,
    ) -> Self {
        DispatchServer {
            app,
            engine,
            kb_changes,
            principal: None,
            session_subject: Arc::new(std::sync::OnceLock::new()),
            calls: None,
            transport: Transport::Stdio,
        }
    }

    /// Mark the sessions of this server as coming over `transport`.
    pub fn with_transport(mut self, transport: Transport) -> Self {
        self.transport = transport;
        self
    }

    /// Fix the caller for every request of this session.
    pub fn with_principal(mut self, principal: Option<Principal>) -> Self {
        self.principal = principal;
        self
    }

    /// Track tool calls in `tracker` (graceful shutdown waits for them).
    pub fn with_call_tracker(mut self, tracker: TaskTracker) -> Self {
        self.calls = Some(tracker);
        self
    }

    /// The caller's view of the KB ([`App::kb_view`]), for resources and
    /// notices.
    fn kb_view_of(&self, ext: &rmcp::model::Extensions) -> Result<KbView, McpError> {
        let principal = self
            .principal_of(ext)
            .map_err(|e| McpError::invalid_request(e, None))?;
        self.app
            .kb_view(principal.as_ref().map(|p| p.subject.as_str()))
            .map_err(kb_error_to_mcp)
    }

    /// The authenticated caller of a request: the HTTP layer leaves it in the
    /// request's extensions; stdio has none (and sees every task).
    fn principal_of(&self, ext: &rmcp::model::Extensions) -> Result<Option<Principal>, String> {
        let p = ext
            .get::<http::request::Parts>()
            .and_then(|parts| parts.extensions.get::<Principal>())
            .cloned()
            .or_else(|| self.principal.clone());
        if let Some(p) = &p {
            let owner = self.session_subject.get_or_init(|| p.subject.clone());
            if *owner != p.subject {
                return Err(
                    "this MCP session belongs to another user: start your own session (initialize) with your token"
                        .into(),
                );
            }
        }
        Ok(p)
    }
}

/// The longest error text a tool result carries: enough for every problem
/// of a workflow, never a client's megabytes echoed back.
const MAX_ERROR_BYTES: usize = 16 * 1024;

fn clip_error(mut text: String) -> String {
    if text.len() > MAX_ERROR_BYTES {
        let mut end = MAX_ERROR_BYTES;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
        text.push_str("… (cut)");
    }
    text
}

/// A tool's outcome as the `CallToolResult` a client gets: the same for a
/// plain call and for the result of an MCP task.
pub(crate) fn call_result(
    name: &str,
    outcome: Result<tools::ToolReply, tools::ToolError>,
) -> CallToolResult {
    match outcome {
        Ok(reply) => {
            let text = reply.text.unwrap_or_else(|| {
                serde_json::to_string_pretty(&reply.structured)
                    .unwrap_or_else(|_| reply.structured.to_string())
            });
            let mut r = CallToolResult::success(vec![ContentBlock::text(text)]);
            r.structured_content = Some(reply.structured);
            r
        }
        Err(e) => {
            let text = clip_error(e.to_string());
            tracing::debug!(tool = %name, error = %text, "tool call failed");
            CallToolResult::error(vec![ContentBlock::text(text)])
        }
    }
}

fn kb_error_to_mcp(e: KbError) -> McpError {
    if e.is_user_error() {
        McpError::resource_not_found(e.to_string(), None)
    } else {
        McpError::internal_error(e.to_string(), None)
    }
}

impl DispatchServer {
    /// What a request's handler knows of its caller.
    fn call_ctx(
        &self,
        principal: Option<Principal>,
        progress_token: Option<rmcp::model::ProgressToken>,
        context: &RequestContext<RoleServer>,
    ) -> tasks::CallCtx {
        let subject = principal.map(|p| p.subject);
        tasks::CallCtx {
            approver: Some(approvals::ClientApprover::of(
                &self.engine,
                context,
                subject.as_deref(),
            )),
            peer: Some(context.peer.clone()),
            progress_token,
            cancelled: context.ct.clone(),
            subject,
            transport: self.transport,
            heartbeat: match self.app.config.progress.heartbeat_secs {
                0 => None,
                s => Some(std::time::Duration::from_secs(s)),
            },
        }
    }

    /// The caller of a task method (the HTTP layer checked its scope).
    fn task_caller(
        &self,
        context: &RequestContext<RoleServer>,
    ) -> Result<tasks::CallCtx, McpError> {
        let principal = self
            .principal_of(&context.extensions)
            .map_err(|e| McpError::invalid_request(e, None))?;
        Ok(self.call_ctx(principal, None, context))
    }

    fn tasks_api<'a>(&'a self, call: &'a tasks::CallCtx) -> client_tasks::Tasks<'a> {
        client_tasks::Tasks {
            engine: &self.engine,
            config: &self.app.config.tasks,
            call,
        }
    }

    /// The 2025-11-25 task methods ([`task_wire`] renamed the ones rmcp
    /// knows by another generation's meaning).
    async fn task_method(
        &self,
        request: rmcp::model::CustomRequest,
        context: RequestContext<RoleServer>,
    ) -> Result<serde_json::Value, McpError> {
        let principal = self
            .principal_of(&context.extensions)
            .map_err(|e| McpError::invalid_request(e, None))?;
        let params = request.params.unwrap_or(serde_json::Value::Null);
        let method = request.method.as_str();
        removed_in_2026(method, &context)?;
        task_scope(principal.as_ref(), method, &params)?;
        let progress_token = params
            .get("_meta")
            .and_then(|m| m.get("progressToken"))
            .cloned()
            .and_then(|t| serde_json::from_value(t).ok());
        let call = self.call_ctx(principal, progress_token, &context);
        let api = client_tasks::Tasks {
            engine: &self.engine,
            config: &self.app.config.tasks,
            call: &call,
        };
        let answer = match method {
            task_wire::CALL => {
                let create = create_task(&api, &params)?;
                match &self.calls {
                    Some(t) => t.track_future(create).await,
                    None => create.await,
                }
            }
            task_wire::GET => api.get(&task_id_of(method, &params)?).await,
            task_wire::RESULT => api.result(&task_id_of(method, &params)?).await,
            task_wire::CANCEL => api.cancel(&task_id_of(method, &params)?).await,
            task_wire::LIST => {
                let cursor = params.get("cursor").and_then(|c| c.as_str());
                api.list(cursor).await
            }
            other => {
                return Err(McpError::new(
                    rmcp::model::ErrorCode::METHOD_NOT_FOUND,
                    format!("method not found: {}", crate::provider::clip(other, 80)),
                    None,
                ));
            }
        };
        answer.map_err(|e| McpError::new(e.code(), clip_error(e.to_string()), None))
    }
}

/// SEP-2663 removed `tasks/result` and `tasks/list` from the 2026-07-28
/// revision: `tasks/get` carries the result, and a client keeps its own list.
fn removed_in_2026(method: &str, context: &RequestContext<RoleServer>) -> Result<(), McpError> {
    if approvals::speaks_2026(context) && matches!(method, task_wire::RESULT | task_wire::LIST) {
        return Err(McpError::new(
            rmcp::model::ErrorCode::METHOD_NOT_FOUND,
            format!(
                "{method} is not part of the 2026-07-28 tasks extension: poll tasks/get, which carries the result once the task has ended"
            ),
            None,
        ));
    }
    Ok(())
}

/// The scope a task method needs. The HTTP layer checked it under the
/// method's wire name; this keeps the rule for every transport.
fn task_scope(
    principal: Option<&Principal>,
    method: &str,
    params: &serde_json::Value,
) -> Result<(), McpError> {
    let Some(p) = principal else {
        return Ok(());
    };
    let needed = match method {
        task_wire::CALL => {
            crate::auth::required_scope(params.get("name").and_then(|n| n.as_str()).unwrap_or(""))
        }
        task_wire::CANCEL => crate::auth::Scope::Run,
        _ => crate::auth::Scope::Read,
    };
    if p.has(needed) {
        return Ok(());
    }
    Err(McpError::invalid_request(
        format!(
            "insufficient_scope: {method} needs the scope {}",
            needed.as_str()
        ),
        None,
    ))
}

/// A 2025-11-25 task-augmented `tools/call`, its params checked.
fn create_task<'a>(
    api: &'a client_tasks::Tasks<'a>,
    params: &serde_json::Value,
) -> Result<
    impl std::future::Future<Output = Result<serde_json::Value, client_tasks::TaskError>> + 'a,
    McpError,
> {
    let name = params
        .get("name")
        .and_then(|n| n.as_str())
        .unwrap_or("")
        .to_string();
    let arguments = match params.get("arguments") {
        None | Some(serde_json::Value::Null) => None,
        Some(serde_json::Value::Object(o)) => Some(o.clone()),
        Some(_) => {
            return Err(McpError::invalid_params(
                "tools/call params.arguments must be an object",
                None,
            ));
        }
    };
    let ttl = params
        .get("task")
        .and_then(|t| t.get("ttl"))
        .and_then(serde_json::Value::as_u64);
    Ok(async move { api.create(&name, arguments, ttl).await })
}

/// `params.taskId` of a task method.
fn task_id_of(method: &str, params: &serde_json::Value) -> Result<String, McpError> {
    params
        .get("taskId")
        .and_then(|v| v.as_str())
        .map(str::to_string)
        .ok_or_else(|| {
            McpError::invalid_params(format!("{method} needs params.taskId (a string)"), None)
        })
}

impl ServerHandler for DispatchServer {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(
            ServerCapabilities::builder()
                .enable_tools()
                // rmcp answers prompts/list (with none): say so, as the
                // 2026-07-28 revision requires of what a server answers.
                .enable_prompts()
                .enable_resources()
                .enable_resources_list_changed()
                .enable_tasks()
                .build(),
        )
        .with_server_info(
            Implementation::new(env!("CARGO_PKG_NAME"), env!("CARGO_PKG_VERSION"))
                .with_title("dispatch")
                .with_description(env!("CARGO_PKG_DESCRIPTION")),
        )
        .with_instructions(INSTRUCTIONS)
    }

    async fn initialize(
        &self,
        request: rmcp::model::InitializeRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<rmcp::model::InitializeResult, McpError> {
        // Binds the session to whoever opened it (see `session_subject`).
        self.principal_of(&context.extensions)
            .map_err(|e| McpError::invalid_request(e, None))?;
        context.peer.set_peer_info(request.clone());
        self.negotiate_initialize(&request)
    }

    /// Accepted (answered `{}`) for clients that still send it, although MCP
    /// deprecated logging (SEP-2577) and the capability is not declared:
    /// dispatch's logs go to stderr, so there is nothing to filter per session.
    #[allow(deprecated)]
    async fn set_level(
        &self,
        request: rmcp::model::SetLevelRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<(), McpError> {
        tracing::debug!(level = ?request.level, "client set its log level");
        Ok(())
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, McpError> {
        Ok(ListToolsResult::with_all_items(
            tools::TOOLS.iter().map(|t| t.tool.clone()).collect(),
        ))
    }

    fn get_tool(&self, name: &str) -> Option<rmcp::model::Tool> {
        tools::find(name).map(|t| t.tool.clone())
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, McpError> {
        let name = request.name.to_string();
        let principal = match self.principal_of(&context.extensions) {
            Ok(p) => p,
            Err(e) => return Ok(CallToolResult::error(vec![ContentBlock::text(e)]).into()),
        };
        // The HTTP layer already answered 403 for a missing scope; this keeps
        // the rule true for any transport that carries a principal.
        if let Some(p) = &principal {
            let needed = crate::auth::required_scope(&name);
            if !p.has(needed) {
                return Ok(CallToolResult::error(vec![ContentBlock::text(format!(
                    "insufficient_scope: {name} needs the scope {}",
                    needed.as_str()
                ))])
                .into());
            }
        }
        let progress_token = request
            .meta
            .as_ref()
            .and_then(|m| m.get_progress_token())
            .or_else(|| context.meta.get_progress_token());
        let client_does_tasks = context
            .client_capabilities()
            .is_some_and(|c| c.supports_tasks());
        let mut caller = self.call_ctx(principal, progress_token, &context);
        let tool = name.replacen('/', "_", 1);
        let becomes_task = client_does_tasks && task_ext::may_become_a_task(&name);
        if approvals::reach_of(&context) == approvals::Reach::InputRequests && !becomes_task {
            // Without a task or a session, only agent_run's own result
            // (input_required) can carry a question back.
            if tool == "agent_run" {
                let call = mrtr::agent_run(&self.engine, &request, &caller);
                let outcome = match &self.calls {
                    Some(t) => t.track_future(call).await,
                    None => call.await,
                };
                return Ok(match outcome {
                    Ok(r) => r,
                    Err(e) => call_result(&name, Err(e)).into(),
                });
            }
            caller.approver = Some(approvals::refusing(
                "the task was started by a 2026-07-28 client outside agent_run or an MCP task, so no question can reach its user",
            ));
        }
        if becomes_task {
            let api = client_tasks::Tasks {
                engine: &self.engine,
                config: &self.app.config.tasks,
                call: &caller,
            };
            let call = task_ext::call_tool(&api, &name, request.arguments);
            return match &self.calls {
                Some(t) => t.track_future(call).await,
                None => call.await,
            };
        }
        let ctx = tools::Ctx {
            app: &self.app,
            engine: &self.engine,
            call: &caller,
            kb_changes: &self.kb_changes,
        };
        let call = tools::call(&ctx, &name, request.arguments);
        let outcome = match &self.calls {
            Some(t) => t.track_future(call).await,
            None => call.await,
        };
        Ok(call_result(&name, outcome).into())
    }

    async fn get_task(
        &self,
        request: rmcp::model::GetTaskParams,
        context: RequestContext<RoleServer>,
    ) -> Result<rmcp::model::GetTaskResult, McpError> {
        let call = self.task_caller(&context)?;
        task_ext::get_task(&self.tasks_api(&call), &request.task_id).await
    }

    async fn update_task(
        &self,
        request: rmcp::model::UpdateTaskParams,
        context: RequestContext<RoleServer>,
    ) -> Result<(), McpError> {
        let call = self.task_caller(&context)?;
        task_ext::update_task(
            &self.tasks_api(&call),
            &request.task_id,
            &request.input_responses,
        )
        .await
    }

    async fn cancel_task(
        &self,
        request: rmcp::model::CancelTaskParams,
        context: RequestContext<RoleServer>,
    ) -> Result<(), McpError> {
        let call = self.task_caller(&context)?;
        task_ext::cancel_task(&self.tasks_api(&call), &request.task_id).await
    }

    async fn on_custom_request(
        &self,
        request: rmcp::model::CustomRequest,
        context: RequestContext<RoleServer>,
    ) -> Result<rmcp::model::CustomResult, McpError> {
        self.task_method(request, context)
            .await
            .map(rmcp::model::CustomResult::new)
    }

    async fn list_resources(
        &self,
        request: Option<PaginatedRequestParams>,
        context: RequestContext<RoleServer>,
    ) -> Result<ListResourcesResult, McpError> {
        let view = self.kb_view_of(&context.extensions)?;
        let cursor = request.and_then(|r| r.cursor);
        let (items, next) =
            tokio::task::spawn_blocking(move || resources::page(&view, cursor.as_deref()))
                .await
                .map_err(|e| McpError::internal_error(format!("listing failed: {e}"), None))?
                .map_err(|e| match e {
                    resources::PageError::Cursor(_) => {
                        McpError::invalid_params(e.to_string(), None)
                    }
                    resources::PageError::Kb(k) => kb_error_to_mcp(k),
                })?;
        let mut result = ListResourcesResult::with_all_items(items);
        result.next_cursor = next;
        Ok(result)
    }

    async fn list_resource_templates(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListResourceTemplatesResult, McpError> {
        Ok(ListResourceTemplatesResult::with_all_items(vec![
            resources::template(),
        ]))
    }

    async fn read_resource(
        &self,
        request: ReadResourceRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<ReadResourceResponse, McpError> {
        let view = self.kb_view_of(&context.extensions)?;
        let uri = request.uri;
        // SEP-2164: a resource that is not there is -32602 with its URI.
        let not_found = |text: String, uri: &str| {
            McpError::invalid_params(text, Some(serde_json::json!({ "uri": uri })))
        };
        let path = resources::path_of(&uri).map_err(|e| not_found(e.to_string(), &uri))?;
        let asked = uri.clone();
        let contents = tokio::task::spawn_blocking(move || resources::read(&view, &uri, &path))
            .await
            .map_err(|e| McpError::internal_error(format!("read failed: {e}"), None))?
            .map_err(|e| match e.is_user_error() {
                true => not_found(e.to_string(), &asked),
                false => McpError::internal_error(e.to_string(), None),
            })?;
        Ok(ReadResourceResult::new(vec![contents]).into())
    }

    /// Sessions that use the `initialize` handshake get list-changed
    /// notifications pushed for as long as the client is connected.
    async fn on_initialized(&self, context: NotificationContext<RoleServer>) {
        let mut rx = self.kb_changes.subscribe();
        let peer = context.peer;
        // The session's owner was fixed by `initialize`; it only hears of
        // changes in its own view of the KB.
        let subject = self.session_subject.get().cloned();
        let Ok(view) = self.app.kb_view(subject.as_deref()) else {
            return;
        };
        tokio::spawn(async move {
            while next_change_seen(&mut rx, &view).await.is_some() {
                if peer.notify_resource_list_changed().await.is_err() {
                    break; // the client is gone
                }
            }
        });
    }

    /// Sessions on the 2026-07-28 lifecycle ask for notifications with
    /// `subscriptions/listen`; we offer resource list changes.
    fn accepted_subscription_filter(
        &self,
        requested: &SubscriptionFilter,
    ) -> Option<SubscriptionFilter> {
        let _ = requested;
        Some(
            SubscriptionFilter::builder()
                .resources_list_changed()
                .build(),
        )
    }

    async fn listen(&self, context: SubscriptionContext) -> Result<(), McpError> {
        let mut rx = self.kb_changes.subscribe();
        let wants = context.accepted().resources_list_changed == Some(true);
        let view = self.kb_view_of(&context.request_context().extensions)?;
        loop {
            tokio::select! {
                _ = context.cancelled() => return Ok(()),
                seen = next_change_seen(&mut rx, &view) => {
                    if seen.is_none() {
                        return Ok(());
                    }
                    if wants && context.sink().notify_resource_list_changed().await.is_err() {
                        return Ok(());
                    }
                }
            }
        }
    }
}

/// Waits for the next KB change `view` sees; `None` once the feed is closed.
/// A lagged receiver (several changes merged) counts as seen, to be safe.
async fn next_change_seen(rx: &mut broadcast::Receiver<KbChange>, view: &KbView) -> Option<()> {
    loop {
        match rx.recv().await {
            Ok(change) if change.iter().any(|p| view.sees(p)) => return Some(()),
            Ok(_) => {}
            Err(broadcast::error::RecvError::Lagged(_)) => return Some(()),
            Err(broadcast::error::RecvError::Closed) => return None,
        }
    }
}

/// Serve MCP over stdin/stdout until the client closes stdin. Every line
/// gets an answer, bad ones a JSON-RPC error ([`stdio`]). When stdin ends,
/// the engine starts its shutdown at once, so the requests cut off by the
/// closing connection do not cancel the tasks they started: those finish or
/// are stored for the next start (see [`Engine::shutdown`]).
pub async fn serve_stdio(
    app: Arc<App>,
    engine: Arc<Engine>,
    kb_changes: broadcast::Sender<KbChange>,
) -> Result<(), ServeError> {
    let stopping = engine.clone();
    let io = stdio::start(tokio::io::stdin(), tokio::io::stdout(), move || {
        stopping.begin_shutdown()
    });
    let server = DispatchServer::new(app, engine, kb_changes);
    let running = match server.serve(io.transport).await {
        Ok(r) => r,
        // A client that goes away before the handshake is not an error: the
        // server's job ends when stdin closes.
        Err(rmcp::service::ServerInitializeError::ConnectionClosed(what)) => {
            tracing::info!("stdin closed before the handshake ({what})");
            return Ok(());
        }
        Err(e) => return Err(ServeError::Start(e.to_string())),
    };
    let reason = running
        .waiting()
        .await
        .map_err(|e| ServeError::Run(e.to_string()))?;
    tracing::info!(?reason, "client disconnected");
    // The last answers are on their way out. (The reader has ended if stdin
    // did; if rmcp stopped for another reason, stdin may still be open.)
    let reader = io.reader;
    if tokio::time::timeout(std::time::Duration::from_secs(1), reader)
        .await
        .is_err()
    {
        tracing::debug!("stdin still open after the service ended");
    }
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), io.writer).await;
    Ok(())
}

/// Errors running the MCP server.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The handshake failed.
    #[error("MCP handshake failed: {0}")]
    Start(String),
    /// The service loop died.
    #[error("MCP server stopped unexpectedly: {0}")]
    Run(String),
}
