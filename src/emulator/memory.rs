//! An in-memory MediaApi for unit tests: the emulator's `Store` (the same rules, without HTTP)
//! plus hooks to inject failures, refuse the keys in use, read back records and count calls.
//!
//! ```
//! use maxlofs_emulator::memory::MemoryApi;
//! use maxlofs_api::{ApiError, MediaApi};
//!
//! let api = MemoryApi::default(); // grant 1; calls with demo-device-key and demo-user-key
//! api.fail_next(1, ApiError::Transient("boom".into()));
//! tokio::runtime::Runtime::new().unwrap().block_on(async {
//!     assert!(api.current_device().await.unwrap_err().is_transient());
//!     assert_eq!(api.current_device().await.unwrap().device_id, 1);
//! });
//! ```

use crate::stats::{Call, Outcome, Stats, StatsSnapshot};
use crate::store::{Credentials, Store, StoreConfig, StoreError};
use maxlofs_api::answer::{check_create, classify};
use maxlofs_api::{
    ApiError, CreateOutcome, DeviceInfo, GrantId, Keys, MediaApi, MediaGrantList, MediaId,
    MediaRecord, MediaState, NewMedia, SecretKey,
};
use parking_lot::Mutex;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::VecDeque;

pub struct MemoryApi {
    store: Store,
    keys: Mutex<Keys>,
    faults: Mutex<Faults>,
    stats: Stats,
}

/// A fault queued for one of the next calls.
enum Injected {
    /// Answer this error without reaching the store.
    Fail(ApiError),
    /// Carry the call out, then answer a transient error (the emulator's `--drop-rate`).
    LoseAnswer,
    /// Panic in the caller's task, as a bug in the code under test would.
    Panic,
}

#[derive(Default)]
struct Faults {
    queued: VecDeque<Injected>,
    /// Chance of a transient failure per call, drawn from a seeded generator for reproducibility.
    random: Option<(f64, StdRng)>,
}

/// A store error as the HTTP client meets it: the emulator's status and body for it, read by the
/// same `classify`, so that both clients give an answer one meaning.
fn as_answered(err: &StoreError) -> ApiError {
    let body = serde_json::to_vec(&err.body()).expect("a JSON value serializes");
    match classify(err.status(), body) {
        Err(api_error) => api_error,
        Ok(answer) => unreachable!("a store error answers an error status, not {answer:?}"),
    }
}

impl Default for MemoryApi {
    /// The emulator's defaults (`StoreConfig::default()`), calling with its first device key and
    /// first user key.
    fn default() -> Self {
        let config = StoreConfig::default();
        let keys = Keys {
            device: SecretKey::new(&config.device_keys[0]),
            user: config.user_keys.first().map(SecretKey::new),
        };
        MemoryApi::new(config, keys)
    }
}

impl MemoryApi {
    /// An API over a fresh in-memory store with `config`, calling with `keys`.
    ///
    /// Panics if SQLite cannot open an in-memory database.
    pub fn new(config: StoreConfig, keys: Keys) -> Self {
        MemoryApi {
            store: Store::in_memory(config).expect("an in-memory SQLite database opens"),
            keys: Mutex::new(keys),
            faults: Mutex::default(),
            stats: Stats::default(),
        }
    }

    /// The next `n` calls answer `error` and change nothing.
    pub fn fail_next(&self, n: usize, error: ApiError) {
        let mut faults = self.faults.lock();
        faults
            .queued
            .extend((0..n).map(|_| Injected::Fail(error.clone())));
    }

    /// The next `n` calls take effect but answer `ApiError::Transient`, as when a connection
    /// drops before the answer arrives.
    pub fn lose_next_answers(&self, n: usize) {
        let mut faults = self.faults.lock();
        faults.queued.extend((0..n).map(|_| Injected::LoseAnswer));
    }

    /// The next call panics instead of answering (after the faults queued before it).
    pub fn panic_next(&self) {
        self.faults.lock().queued.push_back(Injected::Panic);
    }

    /// From now on each call (after the queued faults) fails with `ApiError::Transient` and
    /// changes nothing, with probability `rate`; the draws are reproducible from `seed`. A rate
    /// of 0 turns this off.
    ///
    /// Panics unless `rate` is between 0 and 1.
    pub fn set_failure_rate(&self, rate: f64, seed: u64) {
        assert!(
            (0.0..=1.0).contains(&rate),
            "failure rate {rate} not in 0..=1"
        );
        self.faults.lock().random = Some((rate, StdRng::seed_from_u64(seed)));
    }

    /// The keys in use are refused (`ApiError::Unauthorized`) from now on; `set_keys` with other
    /// accepted keys recovers.
    pub fn revoke_keys(&self) {
        let keys = self.keys.lock().clone();
        self.store.revoke_key(keys.device.expose());
        if let Some(user) = &keys.user {
            self.store.revoke_key(user.expose());
        }
    }

    /// Every record of `grant`, deleted ones included, by media_id.
    ///
    /// Panics if `grant` is not configured.
    pub fn records(&self, grant: GrantId) -> Vec<MediaRecord> {
        self.store
            .records(grant)
            .unwrap_or_else(|err| panic!("records of grant {grant}: {err}"))
    }

    /// How many calls of one kind were made, injected failures included.
    pub fn calls(&self, call: Call) -> u64 {
        self.stats.snapshot().total(call)
    }

    /// Calls by kind and outcome (status, or "dropped" for lost answers).
    pub fn stats(&self) -> StatsSnapshot {
        self.stats.snapshot()
    }

    /// The store underneath, e.g. to act as another client.
    pub fn store(&self) -> &Store {
        &self.store
    }

    fn next_fault(&self) -> Option<Injected> {
        let mut faults = self.faults.lock();
        if let Some(injected) = faults.queued.pop_front() {
            return Some(injected);
        }
        let (rate, rng) = faults.random.as_mut()?;
        rng.gen_bool(*rate)
            .then(|| Injected::Fail(ApiError::Transient("injected failure".into())))
    }

    /// One call: faults first, then the store with the keys in use; counted either way.
    /// `ok_status` says which status a success stands for (200, or 409 for a conflict).
    fn call<T>(
        &self,
        call: Call,
        op: impl FnOnce(&Store, &Credentials) -> Result<T, StoreError>,
        ok_status: impl FnOnce(&T) -> u16,
    ) -> Result<T, ApiError> {
        let injected = self.next_fault();
        if let Some(Injected::Panic) = injected {
            panic!("injected panic in a {call:?} call");
        }
        if let Some(Injected::Fail(error)) = injected {
            self.stats.record(call, Outcome::Status(status_of(&error)));
            return Err(error);
        }
        let credentials = {
            let keys = self.keys.lock();
            Credentials {
                device_key: Some(keys.device.clone()),
                user_key: keys.user.clone(),
            }
        };
        let result = op(&self.store, &credentials);
        if let Some(Injected::LoseAnswer) = injected {
            self.stats.record(call, Outcome::Dropped);
            return Err(ApiError::Transient(
                "connection closed before an answer".into(),
            ));
        }
        let status = match &result {
            Ok(value) => ok_status(value),
            Err(err) => err.status(),
        };
        self.stats.record(call, Outcome::Status(status));
        result.map_err(|err| as_answered(&err))
    }
}

/// The status an injected error stands for in the stats.
fn status_of(error: &ApiError) -> u16 {
    match error {
        ApiError::Unauthorized => 403,
        ApiError::NotFound => 404,
        ApiError::BadRequest { status, .. } => *status,
        ApiError::Transient(_) | ApiError::Transport { .. } => 503,
        // Refused before it was sent: no answer.
        ApiError::SignedLength { .. } => 0,
    }
}

#[async_trait::async_trait]
impl MediaApi for MemoryApi {
    async fn create(&self, grant: GrantId, media: &NewMedia) -> Result<CreateOutcome, ApiError> {
        let outcome = self.call(
            Call::Create,
            |store, credentials| store.create(credentials, grant, Ok(media.clone())),
            |outcome| match outcome {
                CreateOutcome::Created(_) => 200,
                CreateOutcome::Conflict(_) => 409,
            },
        )?;
        check_create(media, outcome)
    }

    async fn update(
        &self,
        grant: GrantId,
        media_id: MediaId,
        state: &MediaState,
    ) -> Result<(), ApiError> {
        self.call(
            Call::Update,
            |store, credentials| store.update(credentials, grant, media_id, Ok(state.clone())),
            |_| 200,
        )
    }

    async fn delete(&self, grant: GrantId, media_id: MediaId) -> Result<(), ApiError> {
        self.call(
            Call::Delete,
            |store, credentials| store.delete(credentials, grant, media_id),
            |_| 200,
        )
    }

    async fn current_device(&self) -> Result<DeviceInfo, ApiError> {
        self.call(
            Call::Current,
            |store, credentials| store.current_device(credentials),
            |_| 200,
        )
    }

    async fn media_grants(&self) -> Result<MediaGrantList, ApiError> {
        self.call(
            Call::MediaGrant,
            |store, credentials| store.media_grants(credentials),
            |_| 200,
        )
    }

    fn set_keys(&self, keys: Keys) {
        *self.keys.lock() = keys;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HASH: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    fn media(path: &str) -> NewMedia {
        NewMedia {
            media_path: path.into(),
            state: MediaState {
                file_hash: HASH.into(),
                file_size: 0,
                ctime: "2026-11-26T18:20:00.000Z".into(),
                mtime: "2026-11-26T18:20:00.000Z".into(),
            },
        }
    }

    fn keys(device: &str, user: Option<&str>) -> Keys {
        Keys {
            device: SecretKey::new(device),
            user: user.map(SecretKey::new),
        }
    }

    fn two_devices() -> StoreConfig {
        StoreConfig {
            device_keys: vec!["dev-a".into(), "dev-b".into()],
            user_keys: vec!["user-a".into()],
            ..StoreConfig::default()
        }
    }

    #[tokio::test]
    async fn the_calls_follow_the_store_rules() {
        let api = MemoryApi::default();
        let CreateOutcome::Created(id) = api.create(1, &media("a.jpg")).await.unwrap() else {
            panic!("first create must succeed");
        };
        let CreateOutcome::Conflict(record) = api.create(1, &media("a.jpg")).await.unwrap() else {
            panic!("second create must conflict");
        };
        assert_eq!(record.media_id, id);
        api.delete(1, id).await.unwrap();
        api.delete(1, id).await.unwrap();
        assert!(api.records(1)[0].is_deleted);
        api.update(1, id, &media("a.jpg").state).await.unwrap();
        assert!(!api.records(1)[0].is_deleted);
        assert_eq!(
            api.update(1, id + 1, &record.state()).await,
            Err(ApiError::NotFound)
        );
        assert_eq!(
            api.create(2, &media("a.jpg")).await,
            Err(ApiError::NotFound)
        );
        let bad = api.create(1, &media("/abs")).await.unwrap_err();
        assert!(
            matches!(&bad, ApiError::BadRequest { status: 400, message } if message.starts_with("media_path:")),
            "{bad:?}"
        );
        assert_eq!(api.media_grants().await.unwrap().media_grant_list.len(), 1);

        let stats = api.stats();
        assert_eq!(stats.calls[&Call::Create]["200"], 1);
        assert_eq!(stats.calls[&Call::Create]["409"], 1);
        assert_eq!(stats.calls[&Call::Create]["404"], 1);
        assert_eq!(stats.calls[&Call::Create]["400"], 1);
        assert_eq!(api.calls(Call::Delete), 2);
        assert_eq!(api.calls(Call::Update), 2);
        assert_eq!(api.calls(Call::Current), 0);
    }

    #[tokio::test]
    async fn injected_failures_change_nothing_and_are_counted() {
        let api = MemoryApi::default();
        api.fail_next(2, ApiError::Transient("503".into()));
        api.fail_next(1, ApiError::Unauthorized);
        for expected in [
            ApiError::Transient("503".into()),
            ApiError::Transient("503".into()),
            ApiError::Unauthorized,
        ] {
            assert_eq!(api.create(1, &media("x")).await, Err(expected));
        }
        assert!(api.records(1).is_empty());
        assert!(api.create(1, &media("x")).await.is_ok());
        let stats = api.stats();
        assert_eq!(stats.calls[&Call::Create]["503"], 2);
        assert_eq!(stats.calls[&Call::Create]["403"], 1);
        assert_eq!(api.calls(Call::Create), 4);
    }

    #[tokio::test]
    async fn a_lost_answer_still_takes_effect() {
        let api = MemoryApi::default();
        api.lose_next_answers(1);
        let lost = api.create(1, &media("x")).await.unwrap_err();
        assert!(lost.is_transient());
        assert_eq!(api.records(1).len(), 1);
        // The retry a client makes now meets its own record.
        assert!(matches!(
            api.create(1, &media("x")).await,
            Ok(CreateOutcome::Conflict(_))
        ));
        assert_eq!(api.stats().dropped, 1);
    }

    #[tokio::test]
    async fn the_failure_rate_is_reproducible_from_its_seed() {
        async fn pattern(rate: f64, seed: u64) -> Vec<bool> {
            let api = MemoryApi::default();
            api.set_failure_rate(rate, seed);
            let mut failed = Vec::new();
            for _ in 0..64 {
                failed.push(api.current_device().await.is_err());
            }
            failed
        }
        let half = pattern(0.5, 7).await;
        assert_eq!(half, pattern(0.5, 7).await);
        assert!(half.contains(&true) && half.contains(&false), "{half:?}");
        assert!(pattern(1.0, 7).await.iter().all(|&failed| failed));
        assert!(pattern(0.0, 7).await.iter().all(|&failed| !failed));
    }

    #[tokio::test]
    async fn revoked_keys_are_refused_until_new_ones_are_set() {
        let api = MemoryApi::new(two_devices(), keys("dev-a", Some("user-a")));
        assert_eq!(api.current_device().await.unwrap().device_id, 1);
        api.revoke_keys();
        assert_eq!(api.current_device().await, Err(ApiError::Unauthorized));
        assert_eq!(
            api.create(1, &media("x")).await,
            Err(ApiError::Unauthorized)
        );
        // Another unaccepted key does not help; an accepted one does.
        api.set_keys(keys("dev-c", None));
        assert_eq!(api.current_device().await, Err(ApiError::Unauthorized));
        api.set_keys(keys("dev-b", None));
        assert_eq!(api.current_device().await.unwrap().device_id, 2);
        let Ok(CreateOutcome::Created(id)) = api.create(1, &media("x")).await else {
            panic!("create with the new key must succeed");
        };
        assert_eq!(api.records(1)[0].last_updated_device_id, Some(2));
        // Without a user key, delete falls back to the device key (not strict).
        api.delete(1, id).await.unwrap();
    }

    #[tokio::test]
    async fn strict_delete_needs_the_user_key() {
        let config = StoreConfig {
            strict_delete_auth: true,
            ..two_devices()
        };
        let api = MemoryApi::new(config, keys("dev-a", None));
        let Ok(CreateOutcome::Created(id)) = api.create(1, &media("x")).await else {
            panic!("create must succeed");
        };
        assert_eq!(api.delete(1, id).await, Err(ApiError::Unauthorized));
        api.set_keys(keys("dev-a", Some("user-a")));
        api.delete(1, id).await.unwrap();
        let record = &api.records(1)[0];
        assert!(record.is_deleted);
        assert_eq!(record.last_updated_device_id, None);
        assert_eq!(record.last_updated_user_id, Some(1));
    }
}
