//! Waiting on shared state guarded by a mutex and a `Notify`: for a change, or a time.

use std::pin::Pin;

use tokio::sync::futures::Notified;
use tokio::time::Instant;

/// Waits until `changed` is notified or, when `at` is given, until then. `changed` must have
/// been enabled before the state was read, so that a change made since is not missed.
pub async fn changed_or_until(mut changed: Pin<&mut Notified<'_>>, at: Option<Instant>) {
    match at {
        Some(at) => {
            tokio::select! {
                _ = &mut changed => {}
                _ = tokio::time::sleep_until(at) => {}
            }
        }
        None => changed.await,
    }
}
