//! The emulated service's rules, kept once: which keys are accepted, which grants and records
//! exist, and what create, update and delete do to them. The HTTP layer (`emulator::server`) and
//! `api::memory::MemoryApi` both run on a `Store`.
//!
//! Every call checks, in this order: the key (403), the grant and the media_id (404), then the
//! request's fields (400). See docs/emulator.md.

use maxlofs_api::contract;
use maxlofs_api::{
    CreateOutcome, DeviceInfo, GrantId, MediaGrant, MediaGrantList, MediaId, MediaRecord,
    MediaState, NewMedia, SecretKey,
};
use parking_lot::{Mutex, MutexGuard};
use rusqlite::{params, Connection, OptionalExtension, Row, Transaction, TransactionBehavior};
use std::collections::HashSet;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

/// What the emulated service accepts and how it resolves the cases the API page leaves open.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoreConfig {
    pub grants: Vec<GrantId>,
    /// Accepted `device_session_key`s. The key at position i is device i+1, owned by user i+1.
    pub device_keys: Vec<String>,
    /// Accepted `user_session_key`s. The key at position i is user i+1.
    pub user_keys: Vec<String>,
    /// A create on an existing path answers 200 with its media_id and updates it (no 409).
    pub merge_parallel_creates: bool,
    /// DELETE accepts only a user key (otherwise a device key too).
    pub strict_delete_auth: bool,
    /// Every device's record says `is_upload_disabled: true`.
    pub device_upload_disabled: bool,
}

/// The grant that exists when none is configured.
pub const DEFAULT_GRANT: GrantId = 1;
/// The device key accepted when none is configured.
pub const DEFAULT_DEVICE_KEY: &str = "demo-device-key";
/// The user key accepted when none is configured.
pub const DEFAULT_USER_KEY: &str = "demo-user-key";

impl Default for StoreConfig {
    /// Grant 1, `demo-device-key`, `demo-user-key`, 409 on an existing path, any key deletes:
    /// what `maxlofs emulator` runs with when given no flags.
    fn default() -> Self {
        StoreConfig {
            grants: vec![DEFAULT_GRANT],
            device_keys: vec![DEFAULT_DEVICE_KEY.to_string()],
            user_keys: vec![DEFAULT_USER_KEY.to_string()],
            merge_parallel_creates: false,
            strict_delete_auth: false,
            device_upload_disabled: false,
        }
    }
}

/// The session keys a request carried (query string or body).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Credentials {
    pub device_key: Option<SecretKey>,
    pub user_key: Option<SecretKey>,
}

/// A field of a request that the service refuses (400).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct Invalid {
    pub field: &'static str,
    pub reason: String,
}

impl Invalid {
    pub fn new(field: &'static str, reason: impl Into<String>) -> Self {
        Invalid {
            field,
            reason: reason.into(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("not logged in")]
    Forbidden,
    #[error("media grant not found")]
    GrantNotFound,
    #[error("media not found")]
    MediaNotFound,
    #[error(transparent)]
    Invalid(#[from] Invalid),
    #[error("database: {0}")]
    Database(#[from] rusqlite::Error),
}

impl StoreError {
    /// The HTTP status the emulated service answers for this error.
    pub fn status(&self) -> u16 {
        match self {
            StoreError::Forbidden => 403,
            StoreError::GrantNotFound | StoreError::MediaNotFound => 404,
            StoreError::Invalid(_) => 400,
            StoreError::Database(_) => 500,
        }
    }

    /// The JSON body the emulated service answers for this error: `{"error": ...}`, with the
    /// field for a 400. A database error's detail is for the emulator's log, not the client.
    pub fn body(&self) -> serde_json::Value {
        match self {
            StoreError::Invalid(invalid) => {
                serde_json::json!({ "error": invalid.to_string(), "field": invalid.field })
            }
            StoreError::Database(_) => serde_json::json!({ "error": "database error" }),
            other => serde_json::json!({ "error": other.to_string() }),
        }
    }
}

/// Who made a call, as recorded in last_updated_device_id and last_updated_user_id.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Caller {
    device_id: Option<i64>,
    user_id: i64,
}

impl Caller {
    /// Device i is owned by user i (see `StoreConfig::device_keys`).
    fn device(device_id: i64) -> Self {
        Caller {
            device_id: Some(device_id),
            user_id: device_id,
        }
    }
}

pub struct Store {
    config: StoreConfig,
    /// One connection behind one lock: calls are serialized, and each write is also a
    /// transaction under a UNIQUE (grant_id, media_path), so parallel creates of a path can
    /// never make two records.
    conn: Mutex<Connection>,
    /// Keys refused from now on although configured. Not persisted: the configuration is the
    /// source of the accepted keys at each start.
    revoked: Mutex<HashSet<String>>,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS media (
    -- AUTOINCREMENT: ids are never reused, also across restarts.
    media_id INTEGER PRIMARY KEY AUTOINCREMENT,
    grant_id INTEGER NOT NULL,
    media_path TEXT NOT NULL,
    file_hash TEXT NOT NULL,
    file_size INTEGER NOT NULL,
    ctime TEXT NOT NULL,
    mtime TEXT NOT NULL,
    last_updated_user_id INTEGER,
    last_updated_device_id INTEGER,
    last_updated TEXT NOT NULL,
    is_deleted INTEGER NOT NULL DEFAULT 0,
    UNIQUE (grant_id, media_path)
);";

const RECORD_COLUMNS: &str = "media_id, media_path, file_hash, file_size, ctime, mtime, \
     last_updated_user_id, last_updated_device_id, last_updated, is_deleted";

impl Store {
    /// A store in a SQLite file (created if absent), in WAL mode; records and the id sequence
    /// survive restarts.
    pub fn open(path: &Path, config: StoreConfig) -> Result<Self, StoreError> {
        let conn = Connection::open(path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        // Another process on the same file waits instead of failing at once.
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        Self::with_connection(conn, config)
    }

    /// A store that lives as long as the value.
    pub fn in_memory(config: StoreConfig) -> Result<Self, StoreError> {
        Self::with_connection(Connection::open_in_memory()?, config)
    }

    fn with_connection(conn: Connection, config: StoreConfig) -> Result<Self, StoreError> {
        conn.execute_batch(SCHEMA)?;
        Ok(Store {
            config,
            conn: Mutex::new(conn),
            revoked: Mutex::new(HashSet::new()),
        })
    }

    /// Create: a new record for `media.media_path`, or the existing record's state (409), or,
    /// when merging parallel creates, the existing record updated and undeleted.
    ///
    /// `media` is the body as the wire layer parsed it: its error is answered only after the key
    /// and the grant were checked, so that 403 and 404 win over 400.
    pub fn create(
        &self,
        credentials: &Credentials,
        grant: GrantId,
        media: Result<NewMedia, Invalid>,
    ) -> Result<CreateOutcome, StoreError> {
        let caller = Caller::device(self.device(credentials)?);
        self.check_grant(grant)?;
        let media = media?;
        if !contract::is_valid_media_path(&media.media_path) {
            return Err(Invalid::new(
                "media_path",
                "must be a non-empty relative path without empty, '.' or '..' parts",
            )
            .into());
        }
        let state = validated(&media.state)?;
        self.write(|tx| {
            let existing = tx
                .query_row(
                    &format!(
                        "SELECT {RECORD_COLUMNS} FROM media WHERE grant_id = ?1 AND media_path = ?2"
                    ),
                    params![grant, media.media_path],
                    record_from_row,
                )
                .optional()?;
            match existing {
                None => {
                    tx.execute(
                        "INSERT INTO media (grant_id, media_path, file_hash, file_size, ctime, \
                         mtime, last_updated_user_id, last_updated_device_id, last_updated) \
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
                        params![
                            grant,
                            media.media_path,
                            state.file_hash,
                            state.file_size,
                            state.ctime,
                            state.mtime,
                            caller.user_id,
                            caller.device_id,
                            now(),
                        ],
                    )?;
                    Ok(CreateOutcome::Created(tx.last_insert_rowid()))
                }
                Some(record) if self.config.merge_parallel_creates => {
                    write_state(tx, record.media_id, &state, caller)?;
                    Ok(CreateOutcome::Created(record.media_id))
                }
                Some(record) => Ok(CreateOutcome::Conflict(record)),
            }
        })
    }

    /// Update: sets the content fields and undeletes. `state` as in `create`.
    pub fn update(
        &self,
        credentials: &Credentials,
        grant: GrantId,
        media_id: MediaId,
        state: Result<MediaState, Invalid>,
    ) -> Result<(), StoreError> {
        let caller = Caller::device(self.device(credentials)?);
        self.check_grant(grant)?;
        self.write(|tx| {
            find_record(tx, grant, media_id)?;
            let state = validated(&state?)?;
            write_state(tx, media_id, &state, caller)
        })
    }

    /// Delete: a soft delete. Deleting a deleted record changes nothing and succeeds.
    /// Accepts a user key, or a device key unless `strict_delete_auth`.
    pub fn delete(
        &self,
        credentials: &Credentials,
        grant: GrantId,
        media_id: MediaId,
    ) -> Result<(), StoreError> {
        let caller = self.deleting_caller(credentials)?;
        self.check_grant(grant)?;
        self.write(|tx| {
            if find_record(tx, grant, media_id)?.is_deleted {
                return Ok(());
            }
            tx.execute(
                "UPDATE media SET is_deleted = 1, last_updated = ?2, \
                 last_updated_user_id = ?3, last_updated_device_id = ?4 WHERE media_id = ?1",
                params![media_id, now(), caller.user_id, caller.device_id],
            )?;
            Ok(())
        })
    }

    /// `POST /device/1/current`.
    pub fn current_device(&self, credentials: &Credentials) -> Result<DeviceInfo, StoreError> {
        let device_id = self.device(credentials)?;
        let caller = Caller::device(device_id);
        Ok(DeviceInfo {
            device_id,
            device_name: format!("device-{device_id}"),
            user_id: caller.user_id,
            user_name: format!("user-{}", caller.user_id),
            upload_priority: 0,
            is_disabled: false,
            is_upload_disabled: self.config.device_upload_disabled,
            is_download_disabled: false,
        })
    }

    /// `POST /device/1/media_grant`: every configured grant, in configured order.
    pub fn media_grants(&self, credentials: &Credentials) -> Result<MediaGrantList, StoreError> {
        self.device(credentials)?;
        let media_grant_list = self
            .config
            .grants
            .iter()
            .map(|&grant| MediaGrant {
                media_grant_id: grant.to_string(),
                grant_name: format!("grant-{grant}"),
                volume_id: i64::try_from(grant).unwrap_or(i64::MAX),
                prefix_path: String::new(),
                is_disabled: false,
                volume_encryption_key: None,
            })
            .collect();
        Ok(MediaGrantList {
            is_device_disabled: false,
            media_grant_list,
        })
    }

    /// The checks a content call starts with, as the media calls: the device key (403), then the
    /// grant (404).
    pub fn check_device_grant(
        &self,
        credentials: &Credentials,
        grant: GrantId,
    ) -> Result<(), StoreError> {
        self.device(credentials)?;
        self.check_grant(grant)
    }

    /// Every record of a grant, deleted ones included, by media_id. For inspection: no key.
    pub fn records(&self, grant: GrantId) -> Result<Vec<MediaRecord>, StoreError> {
        self.check_grant(grant)?;
        let conn = self.conn();
        let mut statement = conn.prepare(&format!(
            "SELECT {RECORD_COLUMNS} FROM media WHERE grant_id = ?1 ORDER BY media_id"
        ))?;
        let records = statement
            .query_map([grant], record_from_row)?
            .collect::<Result<_, _>>()?;
        Ok(records)
    }

    /// Makes a key (device or user) answer 403 from now on.
    pub fn revoke_key(&self, key: &str) {
        self.revoked.lock().insert(key.to_string());
    }

    fn conn(&self) -> MutexGuard<'_, Connection> {
        self.conn.lock()
    }

    /// Runs `body` in an immediate (write-locking) transaction, committed if it succeeds.
    fn write<T>(
        &self,
        body: impl FnOnce(&Transaction) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let value = body(&tx)?;
        tx.commit()?;
        Ok(value)
    }

    fn check_grant(&self, grant: GrantId) -> Result<(), StoreError> {
        if self.config.grants.contains(&grant) {
            Ok(())
        } else {
            Err(StoreError::GrantNotFound)
        }
    }

    /// 1-based position of an accepted, unrevoked key in `keys`.
    fn key_number(&self, keys: &[String], key: Option<&SecretKey>) -> Option<i64> {
        let key = key?.expose();
        if self.revoked.lock().contains(key) {
            return None;
        }
        let position = keys.iter().position(|accepted| accepted == key)?;
        i64::try_from(position + 1).ok()
    }

    /// The device_id of the device key, if accepted.
    fn device(&self, credentials: &Credentials) -> Result<i64, StoreError> {
        self.key_number(&self.config.device_keys, credentials.device_key.as_ref())
            .ok_or(StoreError::Forbidden)
    }

    /// Any accepted key suffices: a user key, else (unless strict) a device key.
    fn deleting_caller(&self, credentials: &Credentials) -> Result<Caller, StoreError> {
        if let Some(user_id) =
            self.key_number(&self.config.user_keys, credentials.user_key.as_ref())
        {
            return Ok(Caller {
                device_id: None,
                user_id,
            });
        }
        if self.config.strict_delete_auth {
            return Err(StoreError::Forbidden);
        }
        Ok(Caller::device(self.device(credentials)?))
    }
}

fn now() -> String {
    let since_epoch = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    contract::iso8601(
        i64::try_from(since_epoch.as_secs()).unwrap_or(i64::MAX),
        since_epoch.subsec_nanos(),
    )
    .expect("the clock reads a time within 262,143 years of 1970")
}

/// Checks the content fields and writes timestamps in the contract's form.
fn validated(state: &MediaState) -> Result<MediaState, Invalid> {
    if !contract::is_hex_digest(&state.file_hash) {
        return Err(Invalid::new(
            "file_hash",
            "must be 64 lowercase hexadecimal characters",
        ));
    }
    // SQLite integers are i64.
    if i64::try_from(state.file_size).is_err() {
        return Err(Invalid::new("file_size", "is too large"));
    }
    let timestamp = |field: &'static str, text: &str| {
        contract::parse_iso8601(text)
            .and_then(|t| contract::iso8601(t.timestamp(), t.timestamp_subsec_nanos()))
            .ok_or_else(|| Invalid::new(field, "must be an ISO 8601 timestamp"))
    };
    Ok(MediaState {
        file_hash: state.file_hash.clone(),
        file_size: state.file_size,
        ctime: timestamp("ctime", &state.ctime)?,
        mtime: timestamp("mtime", &state.mtime)?,
    })
}

fn find_record(
    tx: &Transaction,
    grant: GrantId,
    media_id: MediaId,
) -> Result<MediaRecord, StoreError> {
    tx.query_row(
        &format!("SELECT {RECORD_COLUMNS} FROM media WHERE grant_id = ?1 AND media_id = ?2"),
        params![grant, media_id],
        record_from_row,
    )
    .optional()?
    .ok_or(StoreError::MediaNotFound)
}

/// Sets the content fields of a record, undeletes it and stamps who changed it.
fn write_state(
    tx: &Transaction,
    media_id: MediaId,
    state: &MediaState,
    caller: Caller,
) -> Result<(), StoreError> {
    tx.execute(
        "UPDATE media SET file_hash = ?2, file_size = ?3, ctime = ?4, mtime = ?5, \
         is_deleted = 0, last_updated = ?6, last_updated_user_id = ?7, \
         last_updated_device_id = ?8 WHERE media_id = ?1",
        params![
            media_id,
            state.file_hash,
            state.file_size,
            state.ctime,
            state.mtime,
            now(),
            caller.user_id,
            caller.device_id,
        ],
    )?;
    Ok(())
}

fn record_from_row(row: &Row) -> rusqlite::Result<MediaRecord> {
    Ok(MediaRecord {
        media_id: row.get(0)?,
        media_path: row.get(1)?,
        file_hash: row.get(2)?,
        file_size: row.get(3)?,
        ctime: row.get(4)?,
        mtime: row.get(5)?,
        last_updated_user_id: row.get(6)?,
        last_updated_device_id: row.get(7)?,
        last_updated: row.get(8)?,
        is_deleted: row.get(9)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    const HASH: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
    const OTHER_HASH: &str = "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d";

    fn config() -> StoreConfig {
        StoreConfig {
            grants: vec![1, 2],
            device_keys: vec!["dev-a".into(), "dev-b".into()],
            user_keys: vec!["user-a".into()],
            merge_parallel_creates: false,
            strict_delete_auth: false,
            device_upload_disabled: false,
        }
    }

    fn store() -> Store {
        Store::in_memory(config()).unwrap()
    }

    fn device(key: &str) -> Credentials {
        Credentials {
            device_key: Some(SecretKey::new(key)),
            user_key: None,
        }
    }

    fn user(key: &str) -> Credentials {
        Credentials {
            device_key: None,
            user_key: Some(SecretKey::new(key)),
        }
    }

    fn state(hash: &str, size: u64) -> MediaState {
        MediaState {
            file_hash: hash.into(),
            file_size: size,
            ctime: "2026-11-26T18:20:00.123Z".into(),
            mtime: "2026-11-26T18:21:00.000Z".into(),
        }
    }

    fn media(path: &str) -> NewMedia {
        NewMedia {
            media_path: path.into(),
            state: state(HASH, 5),
        }
    }

    fn created(outcome: CreateOutcome) -> MediaId {
        match outcome {
            CreateOutcome::Created(id) => id,
            CreateOutcome::Conflict(record) => panic!("unexpected conflict: {record:?}"),
        }
    }

    fn only_record(store: &Store, grant: GrantId) -> MediaRecord {
        let mut records = store.records(grant).unwrap();
        assert_eq!(records.len(), 1, "{records:?}");
        records.remove(0)
    }

    #[test]
    fn create_then_conflict_answers_the_full_current_record() {
        let store = store();
        let id = created(
            store
                .create(&device("dev-b"), 1, Ok(media("a/b.jpg")))
                .unwrap(),
        );
        let CreateOutcome::Conflict(record) = store
            .create(&device("dev-a"), 1, Ok(media("a/b.jpg")))
            .unwrap()
        else {
            panic!("a second create of a path must conflict");
        };
        assert_eq!(record.media_id, id);
        assert_eq!(record.media_path, "a/b.jpg");
        assert_eq!(record.state(), state(HASH, 5));
        // Written by the first (device 2, owned by user 2), not changed by the conflict.
        assert_eq!(record.last_updated_device_id, Some(2));
        assert_eq!(record.last_updated_user_id, Some(2));
        assert!(contract::parse_iso8601(&record.last_updated).is_some());
        assert!(!record.is_deleted);
        assert_eq!(only_record(&store, 1), record);
        // The same path in another grant is another record.
        let other = created(
            store
                .create(&device("dev-a"), 2, Ok(media("a/b.jpg")))
                .unwrap(),
        );
        assert_ne!(other, id);
    }

    #[test]
    fn a_deleted_record_conflicts_as_deleted_and_update_undeletes_it() {
        let store = store();
        let id = created(store.create(&device("dev-a"), 1, Ok(media("x"))).unwrap());
        store.delete(&user("user-a"), 1, id).unwrap();
        let CreateOutcome::Conflict(record) =
            store.create(&device("dev-a"), 1, Ok(media("x"))).unwrap()
        else {
            panic!("expected a conflict");
        };
        assert!(record.is_deleted);
        assert_eq!(
            record.last_updated_device_id, None,
            "deleted with a user key"
        );
        assert_eq!(record.last_updated_user_id, Some(1));

        store
            .update(&device("dev-b"), 1, id, Ok(state(OTHER_HASH, 9)))
            .unwrap();
        let record = only_record(&store, 1);
        assert!(!record.is_deleted);
        assert_eq!(record.state(), state(OTHER_HASH, 9));
        assert_eq!(record.last_updated_device_id, Some(2));
    }

    #[test]
    fn delete_is_soft_and_idempotent() {
        let store = store();
        let id = created(store.create(&device("dev-a"), 1, Ok(media("x"))).unwrap());
        store.delete(&device("dev-a"), 1, id).unwrap();
        let deleted = only_record(&store, 1);
        assert!(deleted.is_deleted);
        store.delete(&user("user-a"), 1, id).unwrap();
        assert_eq!(
            only_record(&store, 1),
            deleted,
            "a second delete changes nothing"
        );
    }

    #[test]
    fn merge_mode_answers_the_existing_id_and_updates_it() {
        let store = Store::in_memory(StoreConfig {
            merge_parallel_creates: true,
            ..config()
        })
        .unwrap();
        let id = created(store.create(&device("dev-a"), 1, Ok(media("x"))).unwrap());
        store.delete(&device("dev-a"), 1, id).unwrap();
        let again = NewMedia {
            media_path: "x".into(),
            state: state(OTHER_HASH, 7),
        };
        assert_eq!(
            store.create(&device("dev-b"), 1, Ok(again)).unwrap(),
            CreateOutcome::Created(id)
        );
        let record = only_record(&store, 1);
        assert_eq!(record.state(), state(OTHER_HASH, 7));
        assert!(!record.is_deleted);
        assert_eq!(record.last_updated_device_id, Some(2));
    }

    #[test]
    fn keys_are_checked_and_can_be_revoked() {
        let store = store();
        for credentials in [
            Credentials::default(),
            device("nope"),
            user("user-a"), // a user key is not a device key
        ] {
            assert!(matches!(
                store.create(&credentials, 1, Ok(media("x"))),
                Err(StoreError::Forbidden)
            ));
        }
        assert_eq!(store.current_device(&device("dev-b")).unwrap().device_id, 2);
        store.revoke_key("dev-b");
        assert!(matches!(
            store.current_device(&device("dev-b")),
            Err(StoreError::Forbidden)
        ));
        assert!(matches!(
            store.media_grants(&device("dev-b")),
            Err(StoreError::Forbidden)
        ));
        assert!(store.current_device(&device("dev-a")).is_ok());
    }

    #[test]
    fn strict_delete_auth_refuses_device_keys() {
        let store = Store::in_memory(StoreConfig {
            strict_delete_auth: true,
            ..config()
        })
        .unwrap();
        let id = created(store.create(&device("dev-a"), 1, Ok(media("x"))).unwrap());
        assert!(matches!(
            store.delete(&device("dev-a"), 1, id),
            Err(StoreError::Forbidden)
        ));
        assert!(matches!(
            store.delete(&user("nope"), 1, id),
            Err(StoreError::Forbidden)
        ));
        store.delete(&user("user-a"), 1, id).unwrap();
    }

    #[test]
    fn status_precedence_is_key_then_existence_then_fields() {
        let store = store();
        fn bad<T>() -> Result<T, Invalid> {
            Err(Invalid::new("body", "must be a JSON object"))
        }
        let status = |result: Result<(), StoreError>| result.unwrap_err().status();
        let create = |credentials: &Credentials, grant| {
            status(store.create(credentials, grant, bad()).map(drop))
        };
        assert_eq!(create(&device("nope"), 9), 403);
        assert_eq!(create(&device("dev-a"), 9), 404);
        assert_eq!(create(&device("dev-a"), 1), 400);
        let update =
            |grant, media_id| status(store.update(&device("dev-a"), grant, media_id, bad()));
        assert_eq!(update(9, 1), 404);
        assert_eq!(update(1, 1), 404, "unknown media_id before a bad body");
        let id = created(store.create(&device("dev-a"), 1, Ok(media("x"))).unwrap());
        assert_eq!(update(1, id), 400);
        assert_eq!(update(2, id), 404, "a media_id of another grant is unknown");
        assert_eq!(status(store.delete(&device("dev-a"), 2, id)), 404);
        assert_eq!(status(store.delete(&user("nope"), 9, id)), 403);
    }

    #[test]
    fn fields_are_validated() {
        let store = store();
        let field = |media: NewMedia| match store.create(&device("dev-a"), 1, Ok(media)) {
            Err(StoreError::Invalid(invalid)) => invalid.field,
            other => panic!("expected 400, got {other:?}"),
        };
        for path in ["", "/abs", "a/../b", "a//b", "./a"] {
            assert_eq!(field(media(path)), "media_path", "{path:?}");
        }
        let with = |change: fn(&mut MediaState)| {
            let mut media = media("x");
            change(&mut media.state);
            media
        };
        assert_eq!(
            field(with(|s| s.file_hash = HASH.to_uppercase())),
            "file_hash"
        );
        assert_eq!(field(with(|s| s.file_hash = HASH[1..].into())), "file_hash");
        assert_eq!(
            field(with(|s| s.file_hash = format!("{HASH}0"))),
            "file_hash"
        );
        assert_eq!(field(with(|s| s.file_size = u64::MAX)), "file_size");
        assert_eq!(field(with(|s| s.ctime = "yesterday".into())), "ctime");
        assert_eq!(
            field(with(|s| s.mtime = "2026-13-01T00:00:00Z".into())),
            "mtime"
        );
        assert!(store.records(1).unwrap().is_empty(), "nothing was written");
    }

    #[test]
    fn timestamps_are_stored_in_the_contract_form() {
        let store = store();
        let mut media = media("x");
        media.state.ctime = "2026-11-26T19:20:00+01:00".into();
        media.state.mtime = "2026-11-26T18:20:00.5Z".into();
        created(store.create(&device("dev-a"), 1, Ok(media)).unwrap());
        let record = only_record(&store, 1);
        assert_eq!(record.ctime, "2026-11-26T18:20:00.000Z");
        assert_eq!(record.mtime, "2026-11-26T18:20:00.500Z");
    }

    #[test]
    fn grants_and_device_are_described() {
        let store = store();
        let grants = store.media_grants(&device("dev-a")).unwrap();
        let ids: Vec<_> = grants
            .media_grant_list
            .iter()
            .map(|g| g.media_grant_id.as_str())
            .collect();
        assert_eq!(ids, ["1", "2"]);
        assert_eq!(grants.media_grant_list[1].grant_name, "grant-2");
        let info = store.current_device(&device("dev-a")).unwrap();
        assert_eq!((info.device_id, info.user_id), (1, 1));
        assert!(matches!(store.records(9), Err(StoreError::GrantNotFound)));
    }

    #[test]
    fn parallel_creates_of_one_path_make_one_record() {
        let store = Arc::new(store());
        let outcomes: Vec<_> = (0..16)
            .map(|_| {
                let store = store.clone();
                std::thread::spawn(move || store.create(&device("dev-a"), 1, Ok(media("p"))))
            })
            .collect::<Vec<_>>()
            .into_iter()
            .map(|thread| thread.join().unwrap().unwrap())
            .collect();
        let winners = outcomes
            .iter()
            .filter(|o| matches!(o, CreateOutcome::Created(_)))
            .count();
        assert_eq!(winners, 1, "{outcomes:?}");
        only_record(&store, 1);
    }

    #[test]
    fn a_file_store_survives_reopening_and_never_reuses_ids() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("emulator.db");
        let first = {
            let store = Store::open(&path, config()).unwrap();
            let first = created(store.create(&device("dev-a"), 1, Ok(media("a"))).unwrap());
            let second = created(store.create(&device("dev-a"), 1, Ok(media("b"))).unwrap());
            store.delete(&device("dev-a"), 1, second).unwrap();
            first
        };
        let store = Store::open(&path, config()).unwrap();
        let records = store.records(1).unwrap();
        assert_eq!(records.len(), 2);
        assert!(records[1].is_deleted);
        let third = created(store.create(&device("dev-a"), 1, Ok(media("c"))).unwrap());
        assert!(third > records[1].media_id && records[0].media_id == first);
    }
}
