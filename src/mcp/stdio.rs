//! MCP over stdin/stdout with a line reader of our own.
//!
//! rmcp's stdio transport drops a line it cannot decode without a word, so a
//! client that sends one bad line waits forever for its answer. Here every
//! line gets one: a message rmcp can decode goes to rmcp; anything else is
//! answered with a JSON-RPC 2.0 error on the spot (`-32700` with `id: null`
//! for what is not JSON, `-32600` with the request's id when it can be read
//! for JSON that is not a request), and the next line is read as usual. Lines
//! end at `\n`, `\r\n` or a lone `\r`; a line over [`MAX_LINE_BYTES`] is
//! skipped to its end and answered with `-32700` (it is never held whole).
//!
//! One writer task owns stdout: rmcp's messages and our error replies are
//! written whole, one per line, in the order they are handed to it.

use std::borrow::Cow;
use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};

use super::task_wire;
use rmcp::RoleServer;
use rmcp::model::{ClientJsonRpcMessage, ServerJsonRpcMessage};
use rmcp::transport::Transport;
use serde_json::{Value, json};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

/// The longest line read; longer ones are answered `-32700` and skipped.
pub const MAX_LINE_BYTES: usize = 16 * 1024 * 1024;

/// Longest part of a parse error echoed back to the client.
const MAX_ECHO_CHARS: usize = 200;

/// The transport rmcp serves on: decoded messages in, lines out.
pub struct LineTransport {
    incoming: mpsc::Receiver<ClientJsonRpcMessage>,
    out: mpsc::UnboundedSender<Vec<u8>>,
    /// Requests whose answers [`task_wire::outbound`] completes, by id.
    answers: Pending,
}

/// Requests whose answers need completing, by JSON-RPC id.
type Pending = Arc<Mutex<HashMap<String, task_wire::Answer>>>;

impl LineTransport {
    /// The message as it goes out: an answer [`task_wire`] marked is completed.
    fn complete(&self, item: &ServerJsonRpcMessage) -> serde_json::Result<Vec<u8>> {
        let pending = {
            let answers = self.answers.lock().unwrap_or_else(|e| e.into_inner());
            !answers.is_empty()
        };
        if !pending {
            return serde_json::to_vec(item);
        }
        let mut v = serde_json::to_value(item)?;
        let answer = task_wire::id_key(&v)
            .filter(|_| v.get("method").is_none())
            .and_then(|id| {
                self.answers
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(&id)
            });
        if let Some(answer) = answer {
            task_wire::outbound(answer, &mut v);
        }
        serde_json::to_vec(&v)
    }
}

impl Transport<RoleServer> for LineTransport {
    type Error = std::io::Error;

    fn name() -> Cow<'static, str> {
        "stdio".into()
    }

    fn send(
        &mut self,
        item: ServerJsonRpcMessage,
    ) -> impl Future<Output = Result<(), Self::Error>> + Send + 'static {
        // Serialised here, in call order, so lines go out in that order.
        let line = self.complete(&item).map(|mut v| {
            v.push(b'\n');
            v
        });
        let out = self.out.clone();
        async move {
            let line = line.map_err(std::io::Error::other)?;
            out.send(line)
                .map_err(|_| std::io::Error::new(std::io::ErrorKind::BrokenPipe, "stdout closed"))
        }
    }

    fn receive(&mut self) -> impl Future<Output = Option<ClientJsonRpcMessage>> + Send {
        self.incoming.recv()
    }

    fn close(&mut self) -> impl Future<Output = Result<(), Self::Error>> + Send {
        self.incoming.close();
        std::future::ready(Ok(()))
    }
}

/// The running pieces: the transport for rmcp and the tasks that feed it.
pub struct Stdio {
    /// Hand this to rmcp's `serve`.
    pub transport: LineTransport,
    /// Ends when the input ends (after `on_eof` ran).
    pub reader: tokio::task::JoinHandle<()>,
    /// Ends once every sender of output is gone and the last line is out.
    pub writer: tokio::task::JoinHandle<()>,
}

/// Start reading `input` and writing `output` (stdin and stdout in
/// production). `on_eof` runs when the input ends, before rmcp learns of it.
pub fn start<R, W>(input: R, output: W, on_eof: impl FnOnce() + Send + 'static) -> Stdio
where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let (to_rmcp, incoming) = mpsc::channel(64);
    let (out, lines) = mpsc::unbounded_channel();
    let replies = out.clone();
    let answers = Pending::default();
    let marks = answers.clone();
    let reader = tokio::spawn(async move {
        read_lines(input, |line| {
            classify(line, to_rmcp.clone(), replies.clone(), marks.clone())
        })
        .await;
        on_eof();
        // Dropping `to_rmcp` here tells rmcp the input ended.
    });
    let writer = tokio::spawn(write_lines(output, lines));
    Stdio {
        transport: LineTransport {
            incoming,
            out,
            answers,
        },
        reader,
        writer,
    }
}

/// One complete line, or one that was too long to keep.
enum Line {
    Whole(Vec<u8>),
    TooLong,
}

/// Split `input` into lines and hand each to `each` (which may wait on a
/// full channel: that is the backpressure on a fast client).
async fn read_lines<R, F, Fut>(mut input: R, mut each: F)
where
    R: AsyncRead + Unpin,
    F: FnMut(Line) -> Fut,
    Fut: Future<Output = ()>,
{
    let mut chunk = vec![0u8; 64 * 1024];
    let mut line: Vec<u8> = Vec::new();
    let mut too_long = false;
    // The last line ended at a `\r`: a `\n` right after it ends nothing.
    let mut after_cr = false;
    loop {
        let n = match input.read(&mut chunk).await {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read stdin; stopping");
                break;
            }
        };
        let mut rest = &chunk[..n];
        while !rest.is_empty() {
            if after_cr && rest[0] == b'\n' {
                rest = &rest[1..];
                after_cr = false;
                continue;
            }
            after_cr = false;
            match rest.iter().position(|&b| b == b'\n' || b == b'\r') {
                Some(i) => {
                    if !too_long {
                        if line.len() + i > MAX_LINE_BYTES {
                            too_long = true;
                        } else {
                            line.extend_from_slice(&rest[..i]);
                        }
                    }
                    after_cr = rest[i] == b'\r';
                    rest = &rest[i + 1..];
                    if too_long {
                        each(Line::TooLong).await;
                    } else {
                        each(Line::Whole(std::mem::take(&mut line))).await;
                    }
                    line.clear();
                    too_long = false;
                }
                None => {
                    if !too_long {
                        if line.len() + rest.len() > MAX_LINE_BYTES {
                            too_long = true;
                            line = Vec::new();
                        } else {
                            line.extend_from_slice(rest);
                        }
                    }
                    rest = &[];
                }
            }
        }
    }
    // A last line without a line end still counts.
    if too_long {
        each(Line::TooLong).await;
    } else if !line.is_empty() {
        each(Line::Whole(line)).await;
    }
}

/// Pass a decodable message to rmcp, or answer the line with an error.
async fn classify(
    line: Line,
    to_rmcp: mpsc::Sender<ClientJsonRpcMessage>,
    replies: mpsc::UnboundedSender<Vec<u8>>,
    answers: Pending,
) {
    let replies = &replies;
    let bytes = match line {
        Line::TooLong => {
            reply(
                replies,
                Value::Null,
                -32700,
                format!(
                    "Parse error: the message is over {MAX_LINE_BYTES} bytes; send smaller messages, one per line"
                ),
            );
            return;
        }
        Line::Whole(b) => b,
    };
    let bytes = bytes.as_slice();
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return;
    }
    if task_wire::may_concern(bytes)
        && let Ok(mut v) = serde_json::from_slice::<Value>(bytes)
        && v.is_object()
    {
        let answer = task_wire::inbound(&mut v);
        if let Ok(msg) = serde_json::from_value::<ClientJsonRpcMessage>(v.clone()) {
            if let (task_wire::Answer::Initialize | task_wire::Answer::ToolsList, Some(id)) =
                (answer, task_wire::id_key(&v))
            {
                answers
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(id, answer);
            }
            let _ = to_rmcp.send(msg).await;
            return;
        }
    }
    if let Ok(msg) = serde_json::from_slice::<ClientJsonRpcMessage>(bytes) {
        // rmcp gone means the server is stopping; nothing to answer with.
        let _ = to_rmcp.send(msg).await;
        return;
    }
    if let Err(e) = std::str::from_utf8(bytes) {
        reply(
            replies,
            Value::Null,
            -32700,
            format!(
                "Parse error: the line is not UTF-8 (byte {}); send JSON text, one message per line",
                e.valid_up_to()
            ),
        );
        return;
    }
    match serde_json::from_slice::<Value>(bytes) {
        Err(e) => reply(
            replies,
            Value::Null,
            -32700,
            format!("Parse error: {}", clip(&e.to_string())),
        ),
        Ok(v) => {
            let id = match v.get("id") {
                Some(id @ (Value::String(_) | Value::Number(_))) => id.clone(),
                _ => Value::Null,
            };
            reply(
                replies,
                id,
                -32600,
                "Invalid Request: not a JSON-RPC 2.0 request, notification or response this server knows (each needs \"jsonrpc\": \"2.0\"; a request needs \"method\" and \"id\")".to_string(),
            );
        }
    }
}

fn clip(s: &str) -> String {
    if s.chars().count() <= MAX_ECHO_CHARS {
        return s.to_string();
    }
    let mut out: String = s.chars().take(MAX_ECHO_CHARS).collect();
    out.push('…');
    out
}

fn reply(replies: &mpsc::UnboundedSender<Vec<u8>>, id: Value, code: i64, message: String) {
    let msg = json!({"jsonrpc": "2.0", "id": id, "error": {"code": code, "message": message}});
    let mut line = msg.to_string().into_bytes();
    line.push(b'\n');
    let _ = replies.send(line);
}

/// Write each line whole and flush it, until every sender is gone or the
/// output closes.
async fn write_lines<W: AsyncWrite + Unpin>(
    mut output: W,
    mut lines: mpsc::UnboundedReceiver<Vec<u8>>,
) {
    while let Some(line) = lines.recv().await {
        if let Err(e) = output.write_all(&line).await {
            tracing::info!(error = %e, "stdout closed");
            return;
        }
        if output.flush().await.is_err() {
            return;
        }
    }
    let _ = output.flush().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn lines_of(input: &[u8]) -> Vec<String> {
        let mut out = Vec::new();
        read_lines(input, |l| {
            out.push(match l {
                Line::Whole(b) => String::from_utf8_lossy(&b).into_owned(),
                Line::TooLong => "<too long>".to_string(),
            });
            std::future::ready(())
        })
        .await;
        out
    }

    #[tokio::test]
    async fn lines_end_at_lf_crlf_or_a_lone_cr() {
        assert_eq!(lines_of(b"a\nb\r\nc\rd").await, ["a", "b", "c", "d"]);
        assert_eq!(lines_of(b"a\r\r\nb\n\n").await, ["a", "", "b", ""]);
    }

    #[tokio::test]
    async fn an_oversize_line_is_skipped_whole() {
        let mut input = vec![b'x'; MAX_LINE_BYTES + 10];
        input.extend_from_slice(b"\nnext\n");
        assert_eq!(lines_of(&input).await, ["<too long>", "next"]);
    }
}
