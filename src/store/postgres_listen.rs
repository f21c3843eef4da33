//! The PostgreSQL store's ear: one connection that `LISTEN`s on the tasks'
//! channel and passes what it hears on as [`Change`]s.
//!
//! Announcements only wake: whoever acts on one reads the store first, and
//! everyone also polls. So when the connection drops (a restart, a pooler
//! that does not forward `LISTEN`), the listener says [`Change::Missed`]
//! once it listens again, and nothing else is needed.

use std::time::Duration;

use sqlx::postgres::{PgListener, PgPool};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use super::Change;
use super::postgres_sql::{CHANNEL, SLOT_CHANNEL, reason};
use crate::task::TaskState;

/// Announcements a slow receiver may fall behind by before it is told it
/// missed some.
pub(super) const BUFFER: usize = 1024;

/// The longest wait between two attempts to listen again.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Listens on `pool` (a pool of its own: the listener keeps its connection)
/// until `stop`, sending on `tx`.
pub(super) fn spawn(pool: PgPool, tx: broadcast::Sender<Change>, stop: CancellationToken) {
    tokio::spawn(async move {
        let mut backoff = Duration::from_millis(100);
        loop {
            match listen(&pool).await {
                Ok(mut listener) => {
                    backoff = Duration::from_millis(100);
                    // Whatever was said while no one listened is lost.
                    let _ = tx.send(Change::Missed);
                    if !hear(&mut listener, &tx, &stop).await {
                        return;
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot listen for task changes; polling meanwhile");
                }
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    });
}

/// A listener subscribed to the channel.
async fn listen(pool: &PgPool) -> Result<PgListener, String> {
    let mut listener = PgListener::connect_with(pool)
        .await
        .map_err(|e| reason(&e))?;
    listener
        .listen_all([CHANNEL, SLOT_CHANNEL])
        .await
        .map_err(|e| reason(&e))?;
    Ok(listener)
}

/// Passes announcements on until `stop` (false) or the connection fails
/// in a way the listener does not recover from by itself (true: listen again).
async fn hear(
    listener: &mut PgListener,
    tx: &broadcast::Sender<Change>,
    stop: &CancellationToken,
) -> bool {
    loop {
        let next = tokio::select! {
            _ = stop.cancelled() => return false,
            n = listener.try_recv() => n,
        };
        match next {
            Ok(Some(n)) => {
                let change = if n.channel() == SLOT_CHANNEL {
                    Some(Change::Slot {
                        scope: n.payload().to_string(),
                    })
                } else {
                    parse(n.payload())
                };
                if let Some(change) = change {
                    let _ = tx.send(change);
                }
            }
            // The connection dropped and was made again (and listens again).
            Ok(None) => {
                let _ = tx.send(Change::Missed);
            }
            Err(e) => {
                tracing::warn!(error = %reason(&e), "lost the connection that listens for task changes");
                let _ = tx.send(Change::Missed);
                return true;
            }
        }
    }
}

/// `ID STATE`, as the trigger says it; anything else is ignored.
fn parse(payload: &str) -> Option<Change> {
    let (id, state) = payload.split_once(' ')?;
    let state = state.parse::<TaskState>().ok()?;
    Some(Change::Task {
        id: id.to_string(),
        state,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads() {
        assert_eq!(
            parse("01abc succeeded"),
            Some(Change::Task {
                id: "01abc".into(),
                state: TaskState::Succeeded
            })
        );
        assert_eq!(parse("01abc"), None);
        assert_eq!(parse("01abc sleeping"), None);
    }
}
