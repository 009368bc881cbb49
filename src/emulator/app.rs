//! The emulator's shared state, handed to every handler of `server` and `content` (the faults it
//! injects among it), and the one way they answer an error.

use std::sync::Arc;
use std::time::Duration;

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use parking_lot::Mutex;
use serde_json::json;

use super::objects::ObjectStore;
use super::stats::Stats;
use super::store::Store;

/// The faults injected into API calls (never into `/_emulator` ones).
#[derive(Clone, Copy, Debug)]
pub struct Faults {
    /// Chance of a 503 instead of carrying out the call.
    pub(super) fail_rate: f64,
    /// Chance of carrying out the call and then closing the connection without an answer: the
    /// worst case for a client, which cannot tell whether its call took effect.
    pub(super) drop_rate: f64,
    pub(super) latency: Duration,
}

impl Faults {
    /// Rates are chances between 0 and 1.
    pub fn new(fail_rate: f64, drop_rate: f64, latency: Duration) -> anyhow::Result<Self> {
        for (flag, rate) in [("--fail-rate", fail_rate), ("--drop-rate", drop_rate)] {
            anyhow::ensure!(
                (0.0..=1.0).contains(&rate),
                "{flag} must be between 0 and 1, not {rate}"
            );
        }
        Ok(Faults {
            fail_rate,
            drop_rate,
            latency,
        })
    }
}

#[derive(Clone)]
pub(super) struct App {
    pub(super) store: Arc<Store>,
    pub(super) objects: Arc<ObjectStore>,
    pub(super) stats: Arc<Stats>,
    /// Changed at run time by `POST /_emulator/fail-rate`.
    pub(super) faults: Arc<Mutex<Faults>>,
    /// `http://IP:PORT` of this emulator, where its signed URLs point.
    pub(super) origin: String,
}

impl App {
    /// Runs `call` off the async workers. Every store call (SQLite) and object store call (file
    /// system) goes through here: a call that blocks on a worker also holds up the connection
    /// tokio queued in that worker's LIFO slot (no other worker takes it), and as many such calls
    /// as workers (one per core) leave the whole emulator silent.
    pub(super) async fn blocking<T: Send + 'static>(
        &self,
        call: impl FnOnce(&App) -> T + Send + 'static,
    ) -> T {
        let app = self.clone();
        tokio::task::spawn_blocking(move || call(&app))
            .await
            .unwrap_or_else(|err| std::panic::resume_unwind(err.into_panic()))
    }
}

/// An error answer: `{"error": message}` with `status`.
pub(super) fn error_response(status: StatusCode, message: &str) -> Response {
    (status, Json(json!({ "error": message }))).into_response()
}
