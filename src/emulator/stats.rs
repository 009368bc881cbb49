//! Counts of API calls by kind and outcome, for `GET /_emulator/stats` and `MemoryApi`.

use parking_lot::Mutex;
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt;

/// The kinds of API call, named as in the stats JSON.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Call {
    Create,
    Update,
    Delete,
    Current,
    MediaGrant,
    Upload,
    S3Object,
    Multipart,
    MultipartComplete,
    Download,
    /// The signed URLs' requests to the object store (`/_s3/...`).
    ObjectPut,
    PartPut,
    ObjectGet,
}

impl Call {
    pub const ALL: [Call; 13] = [
        Call::Create,
        Call::Update,
        Call::Delete,
        Call::Current,
        Call::MediaGrant,
        Call::Upload,
        Call::S3Object,
        Call::Multipart,
        Call::MultipartComplete,
        Call::Download,
        Call::ObjectPut,
        Call::PartPut,
        Call::ObjectGet,
    ];

    /// Whether the call is made to the object store, which answers errors in S3's XML.
    pub fn is_object_transfer(self) -> bool {
        matches!(self, Call::ObjectPut | Call::PartPut | Call::ObjectGet)
    }
}

/// How a call ended: an answered status, or a connection closed without one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Status(u16),
    Dropped,
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::Status(status) => write!(f, "{status}"),
            Outcome::Dropped => f.write_str("dropped"),
        }
    }
}

/// `{"calls": {"create": {"200": 3, "409": 1}, ...}, "dropped": N}`; every kind is present.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct StatsSnapshot {
    pub calls: BTreeMap<Call, BTreeMap<String, u64>>,
    pub dropped: u64,
}

impl Default for StatsSnapshot {
    fn default() -> Self {
        StatsSnapshot {
            calls: Call::ALL
                .into_iter()
                .map(|c| (c, BTreeMap::new()))
                .collect(),
            dropped: 0,
        }
    }
}

impl StatsSnapshot {
    /// Calls of one kind, whatever their outcome.
    pub fn total(&self, call: Call) -> u64 {
        self.calls
            .get(&call)
            .map_or(0, |by_outcome| by_outcome.values().sum())
    }
}

#[derive(Debug, Default)]
pub struct Stats {
    counts: Mutex<StatsSnapshot>,
}

impl Stats {
    pub fn record(&self, call: Call, outcome: Outcome) {
        let mut counts = self.counts.lock();
        *counts
            .calls
            .entry(call)
            .or_default()
            .entry(outcome.to_string())
            .or_default() += 1;
        if outcome == Outcome::Dropped {
            counts.dropped += 1;
        }
    }

    pub fn snapshot(&self) -> StatsSnapshot {
        self.counts.lock().clone()
    }

    pub fn reset(&self) {
        *self.counts.lock() = StatsSnapshot::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_by_kind_and_outcome_and_resets() {
        let stats = Stats::default();
        stats.record(Call::Create, Outcome::Status(200));
        stats.record(Call::Create, Outcome::Status(200));
        stats.record(Call::Create, Outcome::Status(409));
        stats.record(Call::Delete, Outcome::Dropped);
        let snapshot = stats.snapshot();
        assert_eq!(snapshot.total(Call::Create), 3);
        assert_eq!(snapshot.dropped, 1);
        assert_eq!(
            serde_json::to_value(&snapshot).unwrap(),
            serde_json::json!({
                "calls": {
                    "create": {"200": 2, "409": 1},
                    "update": {},
                    "delete": {"dropped": 1},
                    "current": {},
                    "media_grant": {},
                    "upload": {},
                    "s3_object": {},
                    "multipart": {},
                    "multipart_complete": {},
                    "download": {},
                    "object_put": {},
                    "part_put": {},
                    "object_get": {}
                },
                "dropped": 1
            })
        );
        stats.reset();
        assert_eq!(stats.snapshot(), StatsSnapshot::default());
    }
}
