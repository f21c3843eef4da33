//! Workflows: a DAG of agent steps whose inputs may use the outputs of earlier steps.
//!
//! This module is pure (no I/O, no async) so that the executor, the MCP tools and the CLI all
//! share one definition of what a valid workflow is:
//!
//! - [`def`]: the wire format ([`WorkflowDef`], [`StepDef`]) and lenient parsing of it;
//! - [`validate`](mod@validate): every check that must pass before anything runs, producing a
//!   [`Plan`] (the graph in index form) or *all* problems at once;
//! - [`template`]: `{{input...}}` / `{{<step>.output...}}` placeholders in step inputs;
//! - [`render`]: Mermaid and Graphviz diagrams of a plan coloured by step state.

pub mod def;
pub mod render;
pub mod schedule;
pub mod template;
pub mod validate;

pub use def::{MAX_RETRY, MAX_STEPS, StepDef, WorkflowDef};
pub use render::{StepState, dot, mermaid};
pub use schedule::Scheduler;
pub use template::{RenderCtx, RenderError, TemplateRef, references, render_input};
pub use validate::{Plan, WorkflowError, validate};
