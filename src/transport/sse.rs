//! The legacy HTTP+SSE transport (MCP 2024-11-05) for older clients:
//! `GET /sse` opens a stream whose first event names the endpoint to post to
//! (`/messages?sessionId=...`); every answer and notification comes back as a
//! `message` event on that stream.
//!
//! Each stream is its own MCP session with its own server instance, so two
//! clients never see each other's messages (the prototype's second SSE client
//! broke the first). A session belongs to the subject that opened it: posts
//! from anyone else are answered as if the session did not exist.

use std::collections::HashMap;
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Extension;
use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use rmcp::model::{ClientJsonRpcMessage, RequestId, ServerJsonRpcMessage};
use rmcp::service::{RxJsonRpcMessage, TxJsonRpcMessage};
use rmcp::transport::Transport;
use rmcp::{RoleServer, ServiceExt};
use tokio::sync::mpsc;
use tokio_stream::Stream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tokio_util::task::task_tracker::TaskTrackerToken;

use super::Shared;
use crate::auth::Principal;

/// Messages buffered per direction before the sender waits.
const CHANNEL: usize = 64;

/// Open legacy sessions by id.
#[derive(Default)]
pub struct Sessions {
    map: Mutex<HashMap<String, Session>>,
}

struct Session {
    to_server: mpsc::Sender<ClientJsonRpcMessage>,
    subject: Option<String>,
}

impl Sessions {
    fn insert(&self, id: String, s: Session) {
        if let Ok(mut m) = self.map.lock() {
            m.insert(id, s);
        }
    }

    fn remove(&self, id: &str) {
        if let Ok(mut m) = self.map.lock() {
            m.remove(id);
        }
    }

    fn sender(
        &self,
        id: &str,
        subject: Option<&str>,
    ) -> Option<mpsc::Sender<ClientJsonRpcMessage>> {
        let m = self.map.lock().ok()?;
        let s = m.get(id)?;
        (s.subject.as_deref() == subject).then(|| s.to_server.clone())
    }
}

/// rmcp's side of one legacy session: messages in from `POST /messages`,
/// messages out to the SSE stream.
struct ChannelTransport {
    rx: mpsc::Receiver<ClientJsonRpcMessage>,
    tx: mpsc::Sender<ServerJsonRpcMessage>,
    /// Requests not yet answered, each holding a shutdown-tracker token until
    /// its answer is on the stream: a graceful shutdown waits for them.
    pending: HashMap<RequestId, TaskTrackerToken>,
    calls: TaskTracker,
}

/// The SSE stream is gone.
#[derive(Debug, thiserror::Error)]
#[error("the SSE client disconnected")]
struct Disconnected;

impl Transport<RoleServer> for ChannelTransport {
    type Error = Disconnected;

    fn send(
        &mut self,
        item: TxJsonRpcMessage<RoleServer>,
    ) -> impl Future<Output = Result<(), Self::Error>> + Send + 'static {
        let token = match &item {
            ServerJsonRpcMessage::Response(r) => self.pending.remove(&r.id),
            ServerJsonRpcMessage::Error(e) => e.id.as_ref().and_then(|id| self.pending.remove(id)),
            _ => None,
        };
        let tx = self.tx.clone();
        async move {
            let sent = tx.send(item).await.map_err(|_| Disconnected);
            drop(token);
            sent
        }
    }

    async fn receive(&mut self) -> Option<RxJsonRpcMessage<RoleServer>> {
        let msg = self.rx.recv().await?;
        if let ClientJsonRpcMessage::Request(r) = &msg {
            self.pending.insert(r.id.clone(), self.calls.token());
        }
        Some(msg)
    }

    async fn close(&mut self) -> Result<(), Self::Error> {
        self.rx.close();
        Ok(())
    }
}

/// `GET /sse`
pub async fn open(
    State(shared): State<Arc<Shared>>,
    principal: Option<Extension<Principal>>,
) -> Response {
    let principal = principal.map(|Extension(p)| p);
    // Unguessable: the id is all a legacy client presents when it posts.
    let id = format!("{:032x}", rand::random::<u128>());
    let (in_tx, in_rx) = mpsc::channel(CHANNEL);
    let (out_tx, out_rx) = mpsc::channel(CHANNEL);
    let ct = shared.shutdown.child_token();
    shared.sse.insert(
        id.clone(),
        Session {
            to_server: in_tx,
            subject: principal.as_ref().map(|p| p.subject.clone()),
        },
    );
    let server = shared.mcp_server(principal);
    let calls = shared.calls.clone();
    let service_ct = ct.clone();
    let sid = id.clone();
    tokio::spawn(async move {
        let transport = ChannelTransport {
            rx: in_rx,
            tx: out_tx,
            pending: HashMap::new(),
            calls,
        };
        match server.serve_with_ct(transport, service_ct).await {
            Ok(running) => {
                let _ = running.waiting().await;
            }
            Err(e) => {
                tracing::debug!(session = %sid, error = %e, "legacy SSE session ended before the handshake")
            }
        }
    });
    tracing::debug!(session = %id, "legacy SSE session opened");
    let stream = SessionStream {
        endpoint: Some(format!("/messages?sessionId={id}")),
        rx: out_rx,
        closed: Box::pin(ct.clone().cancelled_owned()),
        _guard: SessionGuard {
            id,
            shared: shared.clone(),
            ct,
        },
    };
    Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response()
}

/// Removes the session and stops its server when the stream is dropped
/// (client gone or server shutting down).
struct SessionGuard {
    id: String,
    shared: Arc<Shared>,
    ct: CancellationToken,
}

impl Drop for SessionGuard {
    fn drop(&mut self) {
        self.shared.sse.remove(&self.id);
        self.ct.cancel();
        tracing::debug!(session = %self.id, "legacy SSE session closed");
    }
}

/// The `endpoint` event, then one `message` event per server message, until
/// the session's server stops or the server shuts down.
struct SessionStream {
    endpoint: Option<String>,
    rx: mpsc::Receiver<ServerJsonRpcMessage>,
    closed: Pin<Box<tokio_util::sync::WaitForCancellationFutureOwned>>,
    _guard: SessionGuard,
}

impl Stream for SessionStream {
    type Item = Result<Event, Infallible>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if let Some(e) = self.endpoint.take() {
            return Poll::Ready(Some(Ok(Event::default().event("endpoint").data(e))));
        }
        if self.closed.as_mut().poll(cx).is_ready() {
            // Shutting down: deliver what is already queued, then end.
            return match self.rx.try_recv() {
                Ok(msg) => Poll::Ready(Some(Ok(message_event(&msg)))),
                Err(_) => Poll::Ready(None),
            };
        }
        match self.rx.poll_recv(cx) {
            Poll::Ready(Some(msg)) => Poll::Ready(Some(Ok(message_event(&msg)))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }
}

fn message_event(msg: &ServerJsonRpcMessage) -> Event {
    let data = serde_json::to_string(msg).unwrap_or_else(|e| {
        // Cannot happen for rmcp's own types; never panic on it.
        format!(
            r#"{{"jsonrpc":"2.0","method":"notifications/message","params":{{"level":"error","data":"unserializable message: {e}"}}}}"#
        )
    });
    Event::default().event("message").data(data)
}

/// `?sessionId=`
#[derive(serde::Deserialize)]
pub struct SessionQuery {
    #[serde(rename = "sessionId")]
    session_id: Option<String>,
}

/// `POST /messages?sessionId=...`: hand one JSON-RPC message to the session;
/// its answer arrives on the SSE stream.
pub async fn post(
    State(shared): State<Arc<Shared>>,
    Query(q): Query<SessionQuery>,
    principal: Option<Extension<Principal>>,
    body: Bytes,
) -> Response {
    let Some(id) = q.session_id else {
        return (
            StatusCode::BAD_REQUEST,
            "missing ?sessionId=: use the endpoint URL sent in the `endpoint` event of GET /sse\n",
        )
            .into_response();
    };
    let subject = principal.as_ref().map(|Extension(p)| p.subject.as_str());
    let Some(tx) = shared.sse.sender(&id, subject) else {
        return (
            StatusCode::NOT_FOUND,
            "no such SSE session (it was closed, or never existed): open a new one with GET /sse\n",
        )
            .into_response();
    };
    let msg: ClientJsonRpcMessage = match serde_json::from_slice(&body) {
        Ok(m) => m,
        Err(e) => {
            return (
                StatusCode::BAD_REQUEST,
                format!("the body is not a JSON-RPC message: {e}\n"),
            )
                .into_response();
        }
    };
    if tx.send(msg).await.is_err() {
        return (
            StatusCode::NOT_FOUND,
            "the SSE session has ended: open a new one with GET /sse\n",
        )
            .into_response();
    }
    StatusCode::ACCEPTED.into_response()
}
