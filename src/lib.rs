//! `dispatch`: an MCP orchestrator server that turns a folder of agent files
//! into a team of specialist AI agents, each on the model that suits it.
//!
//! The crate is a library with a thin binary (`main.rs`). A map of it:
//!
//! - [`cli`]: the command line (`serve`, `agents`, `agents check`).
//! - [`app`]: the opened project — config, agent registry, knowledge base —
//!   shared by the CLI and the MCP server.
//! - [`config`]: `--root`/`--agents`/`--kb` and the optional `dispatch.toml`.
//! - [`agent`]: what an agent file says: the reader for every supported
//!   dialect and the checks across files.
//! - [`registry`]: loads the agents folder into immutable snapshots and swaps
//!   them on change.
//! - [`kb`]: the markdown knowledge base: safe paths, paged reads, atomic
//!   writes, listing, search.
//! - [`task`]: tasks, attempts and the one task state machine.
//! - [`engine`]: admission under limits, driving tasks through the state
//!   machine, cancellation, waiting, recovery, routing, outbox, usage report.
//! - [`provider`]: LLM clients (OpenAI-compatible, Anthropic), retries,
//!   failover, circuit breakers, prices. Only this module knows a wire format.
//! - [`store`]: durable tasks and attempts (SQLite). Only this module knows SQL.
//! - [`metrics`]: Prometheus metrics (families, recording, the `/metrics`
//!   text), shared by the engine and its providers.
//! - [`workflow`]: workflow definitions: validation into a petgraph plan,
//!   templates, Mermaid and DOT rendering.
//! - [`auth`]: the OAuth 2.0 resource server: bearer tokens (JWT or
//!   introspection) to a principal with scopes, challenges, RFC 9728 metadata.
//! - [`mcp`]: the MCP server (tools, resources, notifications). Only this
//!   module and [`transport`] know MCP and JSON-RPC.
//! - [`transport`]: the HTTP server: Streamable HTTP, legacy SSE, health,
//!   metrics, OAuth2 metadata, and the guards every request passes.
//! - [`diag`]: `file:line:col` diagnostics.
//! - [`watch`]: debounced folder watching.
//!
//! ARCHITECTURE.md at the repository root describes the invariants.

pub mod agent;
pub mod app;
pub mod auth;
pub mod cli;
mod cli_approve;
mod cli_store;
mod cli_tasks;
pub mod config;
pub mod diag;
pub mod engine;
pub mod kb;
pub mod mcp;
pub mod metrics;
pub mod provider;
pub mod registry;
pub mod store;
pub mod task;
pub mod transport;
pub mod watch;
pub mod workflow;
