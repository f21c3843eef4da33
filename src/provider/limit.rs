//! Per-provider concurrency limits: a provider wrapped so that at most N of its
//! requests are in flight. Retries and failover happen above this layer, so a
//! waiting request holds no slot.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;

use super::{ChatRequest, ChatResponse, ProgressFn, Provider, ProviderError, Providers};

/// Where a call also takes a slot shared with other processes (limits that
/// hold across instances). `None`: no shared slot could be had, the local
/// limit alone applies.
#[async_trait::async_trait]
pub trait Gate: Send + Sync {
    /// Wait for a slot of `scope` (one of `limit`).
    async fn enter(&self, scope: &str, limit: usize) -> Option<Box<dyn Held>>;
}

/// A slot taken through a [`Gate`]: [`Held::leave`] gives it back (and
/// returns once it is); dropped, it is given back in the background.
#[async_trait::async_trait]
pub trait Held: Send + Sync {
    /// Give the slot back.
    async fn leave(self: Box<Self>);
}

/// A provider with a cap on requests in flight.
pub struct Limited {
    inner: Arc<dyn Provider>,
    slots: Arc<Semaphore>,
    /// The cap, and the shared slots that hold it across instances.
    limit: usize,
    gate: Option<(Arc<dyn Gate>, String)>,
}

#[async_trait::async_trait]
impl Provider for Limited {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn default_max_tokens(&self) -> Option<u32> {
        self.inner.default_max_tokens()
    }

    async fn chat(
        &self,
        model: &str,
        req: &ChatRequest,
        timeout: Duration,
        progress: Option<&ProgressFn>,
    ) -> Result<ChatResponse, ProviderError> {
        // The semaphore is never closed; should it be, run unlimited rather than fail.
        let permit = self.slots.acquire().await.ok();
        let shared = match &self.gate {
            Some((gate, scope)) => gate.enter(scope, self.limit).await,
            None => None,
        };
        let answer = self.inner.chat(model, req, timeout, progress).await;
        // The shared slot first: the next call here must find it free.
        if let Some(held) = shared {
            held.leave().await;
        }
        drop(permit);
        answer
    }
}

/// Wrap every provider with a limit: `overrides[name]`, else `default` (at
/// least 1); with a `gate`, each call also takes one of that many slots of
/// scope `provider:NAME` there.
pub fn limit_concurrency(
    providers: Providers,
    default: usize,
    overrides: &BTreeMap<String, usize>,
    gate: Option<Arc<dyn Gate>>,
) -> Providers {
    let wrapped: Vec<Arc<dyn Provider>> = providers
        .names()
        .filter_map(|n| providers.get(n).cloned())
        .map(|inner| {
            let n = overrides
                .get(inner.name())
                .copied()
                .unwrap_or(default)
                .max(1);
            let gate = gate
                .clone()
                .map(|g| (g, format!("provider:{}", inner.name())));
            Arc::new(Limited {
                inner,
                slots: Arc::new(Semaphore::new(n)),
                limit: n,
                gate,
            }) as Arc<dyn Provider>
        })
        .collect();
    wrapped
        .into_iter()
        .fold(providers, Providers::with_provider)
}
