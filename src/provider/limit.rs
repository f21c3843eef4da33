//! Per-provider concurrency limits: a provider wrapped so that at most N of its
//! requests are in flight. Retries and failover happen above this layer, so a
//! waiting request holds no slot.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;

use super::{ChatRequest, ChatResponse, ProgressFn, Provider, ProviderError, Providers};

/// A provider with a cap on requests in flight.
pub struct Limited {
    inner: Arc<dyn Provider>,
    slots: Arc<Semaphore>,
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
        let _permit = self.slots.acquire().await.ok();
        self.inner.chat(model, req, timeout, progress).await
    }
}

/// Wrap every provider with a limit: `overrides[name]`, else `default` (at least 1).
pub fn limit_concurrency(
    providers: Providers,
    default: usize,
    overrides: &BTreeMap<String, usize>,
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
            Arc::new(Limited {
                inner,
                slots: Arc::new(Semaphore::new(n)),
            }) as Arc<dyn Provider>
        })
        .collect();
    wrapped
        .into_iter()
        .fold(providers, Providers::with_provider)
}
