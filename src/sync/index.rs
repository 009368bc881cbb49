//! The persistent index: per synced path, what the service acknowledged. Written only after an
//! acknowledgement, so after a crash it may lag the service but never lead it; re-sending is
//! idempotent. An LRU of path → entry sits in front of SQLite for media_id lookups.

use lru::LruCache;
use parking_lot::Mutex;
use rusqlite::types::{Value, ValueRef};
use rusqlite::{params, Connection, OptionalExtension};
use std::collections::BTreeMap;
use std::num::NonZeroUsize;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use maxlofs_api::{MediaId, NewMedia};

/// What the service holds for one path, as of its last acknowledgement.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IndexEntry {
    pub media_id: MediaId,
    pub hash: String,
    pub size: u64,
    pub mtime_ns: i128,
    pub ctime_ns: i128,
    pub ino: u64,
    /// The service is known to hold the content of `hash` (it took the upload or answered
    /// `skip_upload`). False for records sent with no content: `--no-upload`, uploads disabled,
    /// or made before uploads existed; those are sent once uploads are on (docs/semantics.md).
    pub content_up: bool,
}

pub struct Index {
    db: Mutex<Connection>,
    /// `None` caches "no entry", which is the common answer for new files.
    cache: Mutex<LruCache<String, Option<IndexEntry>>>,
    /// Rows of `synced`, kept with each write so that status need not count them.
    entries: AtomicU64,
    /// Whether any corruption mark may exist: every look asks `corrupted`, which skips the query
    /// while none was ever noted (the common case).
    corrupted_noted: AtomicBool,
    /// How many deletes keep their record (`DELETED_KEPT`; fewer in tests).
    deleted_kept: u64,
}

/// How many of the last deletes keep their path's record for `maxlofs restore --deleted`:
/// enough for any undo a user asks for, bounded so that the index does not grow without end.
pub const DELETED_KEPT: u64 = 100_000;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS synced (
    path TEXT PRIMARY KEY,
    media_id INTEGER NOT NULL,
    hash TEXT NOT NULL,
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    ctime_ns INTEGER NOT NULL,
    ino INTEGER NOT NULL,
    content_up INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS synced_ino ON synced (ino);
-- One path per id: the service keeps one record per path, so an id named for a second path is
-- an answer that cannot be true (`Index::put` refuses it before this would).
CREATE UNIQUE INDEX IF NOT EXISTS synced_media_id ON synced (media_id);
CREATE INDEX IF NOT EXISTS synced_content_up ON synced (content_up);
CREATE TABLE IF NOT EXISTS unsure (path TEXT PRIMARY KEY, state TEXT NOT NULL, media_id INTEGER);
CREATE TABLE IF NOT EXISTS multipart (
    hash TEXT PRIMARY KEY,
    size INTEGER NOT NULL,
    upload_id TEXT NOT NULL,
    s3_bucket_id TEXT NOT NULL,
    urls TEXT NOT NULL,
    started_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS multipart_part (
    hash TEXT NOT NULL,
    part_num INTEGER NOT NULL,
    etag TEXT NOT NULL,
    PRIMARY KEY (hash, part_num)
);
-- Paths whose bytes changed while their stat did not (`sync::scrub`): damage, not an edit.
CREATE TABLE IF NOT EXISTS corrupted (
    path TEXT PRIMARY KEY,
    recorded_hash TEXT NOT NULL,
    found_hash TEXT NOT NULL,
    ranges TEXT NOT NULL,
    ctime_ns NOT NULL,
    found_at INTEGER NOT NULL
);
-- The hashes scrub found damaged files to have, kept after their marks go: bytes that hash to one
-- are a damaged copy (renamed, chmodded or copied since), never sent as content.
CREATE TABLE IF NOT EXISTS damaged_content (hash TEXT PRIMARY KEY, of_hash TEXT NOT NULL);
-- The File Hashing part digests of a multipart content, once seen to hash to it, so that a
-- download can check each part as it comes (`sync::restore`).
CREATE TABLE IF NOT EXISTS content_parts (hash TEXT PRIMARY KEY, digests BLOB NOT NULL);
-- The last record of each path whose delete was sent, for `maxlofs restore --deleted`. Rowids
-- follow the deletes (a path deleted again is replaced by a new row): the oldest go first.
CREATE TABLE IF NOT EXISTS deleted (
    path TEXT PRIMARY KEY,
    hash TEXT NOT NULL,
    size INTEGER NOT NULL,
    mtime_ns NOT NULL,
    deleted_at INTEGER NOT NULL
);
";

/// A multipart upload under way, kept so that a restart sends only the parts still missing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MultipartUpload {
    pub size: u64,
    pub upload_id: String,
    pub s3_bucket_id: String,
    /// Signed URL of each part, by part_num.
    pub urls: BTreeMap<u64, String>,
    /// ETag of each part the store acknowledged, by part_num.
    pub etags: BTreeMap<u64, String>,
    /// When the service answered `multipart` (seconds since the epoch).
    pub started_at: i64,
}

/// A path whose record the service may hold live although no entry names it: a create was sent
/// and its answer never came, or a delete was sent and not yet acknowledged.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unsure {
    /// What was sent (or would be sent again to find the record); `None` if unreadable.
    pub media: Option<NewMedia>,
    /// The record's id, once known: a delete of it needs no other call.
    pub media_id: Option<MediaId>,
}

/// A path found damaged in place: its bytes no longer hash to the recorded hash although its
/// size, times and inode are those recorded (`sync::scrub`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CorruptMark {
    pub recorded_hash: String,
    pub found_hash: String,
    /// The byte ranges `[start, end)` that differ: the File Hashing parts whose digests differ
    /// when the recorded ones are known, else the whole file.
    pub ranges: Vec<(u64, u64)>,
    /// The ctime the file had when found: a later one means it was written since (an edit).
    pub ctime_ns: i128,
    /// When it was found, seconds since the epoch.
    pub found_at: i64,
}

/// The last record of a path whose delete was sent: what `maxlofs restore --deleted` brings back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeletedRecord {
    pub hash: String,
    pub size: u64,
    pub mtime_ns: i128,
    /// When its delete was decided, seconds since the epoch.
    pub deleted_at: i64,
}

/// (path, hash, size) of a synced record, as `maxlofs verify` checks it.
pub type SyncedRecord = (String, String, u64);

fn synced_record(row: &rusqlite::Row<'_>) -> rusqlite::Result<SyncedRecord> {
    Ok((row.get(0)?, row.get(1)?, row.get::<_, i64>(2)? as u64))
}

fn entry_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<IndexEntry> {
    Ok(IndexEntry {
        media_id: row.get("media_id")?,
        hash: row.get("hash")?,
        size: row.get::<_, i64>("size")? as u64,
        mtime_ns: time_from_sql(row, "mtime_ns")?,
        ctime_ns: time_from_sql(row, "ctime_ns")?,
        ino: row.get::<_, i64>("ino")? as u64,
        content_up: row.get("content_up")?,
    })
}

/// Times are nanoseconds in an i128. SQLite integers are i64, so a time outside it (before
/// 1677 or after 2262) is kept as its 16 big-endian bytes.
fn time_to_sql(ns: i128) -> Value {
    match i64::try_from(ns) {
        Ok(ns) => Value::Integer(ns),
        Err(_) => Value::Blob(ns.to_be_bytes().to_vec()),
    }
}

fn time_from_sql(row: &rusqlite::Row<'_>, column: &str) -> rusqlite::Result<i128> {
    let value = row.get_ref(column)?;
    let ns = match value {
        ValueRef::Integer(ns) => Some(i128::from(ns)),
        ValueRef::Blob(bytes) => <[u8; 16]>::try_from(bytes).ok().map(i128::from_be_bytes),
        _ => None,
    };
    ns.ok_or_else(|| {
        let index = row.as_ref().column_index(column).unwrap_or_default();
        rusqlite::Error::InvalidColumnType(index, column.to_string(), value.data_type())
    })
}

impl Index {
    /// Opens (creating) the index at `path`. `identity` names what the entries are valid for (API,
    /// grant, prefix): if it differs from the stored one the entries are dropped, and the next
    /// reconcile re-learns every media_id from the service's 409 answers.
    pub fn open(path: &Path, identity: &str, cache_entries: usize) -> anyhow::Result<Index> {
        Index::open_with(path, Some(identity), cache_entries)
    }

    /// Opens the index a mount made at `path` as it is, for work on a backing folder that is not
    /// mounted (`maxlofs scrub`, `restore` and `verify` of BACKING): never created, never started
    /// over, whatever service the caller names (a restored content is checked against its hash,
    /// whoever serves it). Fails (SQLite's "database is locked") while a mount holds it.
    pub fn open_made(path: &Path, cache_entries: usize) -> anyhow::Result<Index> {
        Index::open_with(path, None, cache_entries)
    }

    /// `identity`: the one to hold (see `open`); `None`: the stored one, which must exist.
    fn open_with(
        path: &Path,
        identity: Option<&str>,
        cache_entries: usize,
    ) -> anyhow::Result<Index> {
        let db = match identity {
            Some(_) => Connection::open(path)?,
            None => {
                let existing =
                    rusqlite::OpenFlags::default() - rusqlite::OpenFlags::SQLITE_OPEN_CREATE;
                Connection::open_with_flags(path, existing)?
            }
        };
        // A daemon that has just stopped may still be closing it.
        db.busy_timeout(std::time::Duration::from_secs(5))?;
        db.pragma_update(None, "journal_mode", "WAL")?;
        db.pragma_update(None, "synchronous", "NORMAL")?;
        // One daemon owns a state folder: holding the file lock for the connection's life spares
        // two fcntl calls per transaction, and a second daemon on the same folder is refused.
        db.pragma_update(None, "locking_mode", "EXCLUSIVE")?;
        // A damaged page that the open reads nowhere else would fail each look that needs it,
        // again and again: found here, the mount is refused as damaged instead (a pass over
        // the file, milliseconds for a large index).
        let check: String = db.query_row("PRAGMA quick_check(1)", [], |row| row.get(0))?;
        if check != "ok" {
            let corrupt = rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_CORRUPT);
            return Err(rusqlite::Error::SqliteFailure(corrupt, Some(check)).into());
        }
        // Indexes made before uploads existed: whether their records' content is up is not
        // known (0), so it is sent once uploads are on. Before the schema, which indexes it.
        let has_table: bool = db
            .prepare("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'synced'")?
            .exists([])?;
        let has_content_up: bool = db
            .prepare("SELECT 1 FROM pragma_table_info('synced') WHERE name = 'content_up'")?
            .exists([])?;
        if has_table && !has_content_up {
            db.execute_batch(
                "ALTER TABLE synced ADD COLUMN content_up INTEGER NOT NULL DEFAULT 0",
            )?;
        }
        if has_table {
            forget_shared_ids(&db)?;
        }
        db.execute_batch(SCHEMA)?;
        // Indexes made before unsure notes carried an id.
        let has_media_id: bool = db
            .prepare("SELECT 1 FROM pragma_table_info('unsure') WHERE name = 'media_id'")?
            .exists([])?;
        if !has_media_id {
            db.execute_batch("ALTER TABLE unsure ADD COLUMN media_id INTEGER")?;
        }
        let stored: Option<String> = db
            .query_row("SELECT value FROM meta WHERE key = 'identity'", [], |r| {
                r.get(0)
            })
            .optional()?;
        let identity = match (identity, stored.as_deref()) {
            (Some(wanted), _) => wanted,
            (None, Some(made)) => made,
            (None, None) => anyhow::bail!("{} is not an index a mount made", path.display()),
        };
        if stored.as_deref() != Some(identity) {
            if stored.is_some() {
                tracing::warn!(
                    "index was made for another service, grant or prefix; starting over"
                );
            }
            db.execute("DELETE FROM synced", [])?;
            db.execute("DELETE FROM unsure", [])?;
            db.execute("DELETE FROM multipart", [])?;
            db.execute("DELETE FROM multipart_part", [])?;
            db.execute("DELETE FROM corrupted", [])?;
            db.execute("DELETE FROM deleted", [])?;
        }
        // Written on every open: the first write takes the exclusive lock, held from now on.
        db.execute(
            "INSERT OR REPLACE INTO meta (key, value) VALUES ('identity', ?1)",
            [identity],
        )?;
        let entries: i64 = db.query_row("SELECT COUNT(*) FROM synced", [], |r| r.get(0))?;
        let corrupted: i64 = db.query_row(
            "SELECT (SELECT COUNT(*) FROM corrupted) + (SELECT COUNT(*) FROM damaged_content)",
            [],
            |r| r.get(0),
        )?;
        // Grown as it fills, not allocated whole at start (`LruCache::new` would): a large
        // --cache-entries costs only what is used.
        let mut cache = LruCache::unbounded();
        cache.resize(NonZeroUsize::new(cache_entries.max(1)).expect("at least one"));
        Ok(Index {
            db: Mutex::new(db),
            cache: Mutex::new(cache),
            entries: AtomicU64::new(entries as u64),
            corrupted_noted: AtomicBool::new(corrupted > 0),
            deleted_kept: DELETED_KEPT,
        })
    }

    pub fn get(&self, path: &str) -> anyhow::Result<Option<IndexEntry>> {
        if let Some(hit) = self.cache.lock().get(path) {
            return Ok(hit.clone());
        }
        // The cache is filled while the database is held, so a `put` or `remove` of this path
        // from another thread (reconcile runs beside the workers) cannot be overwritten by what
        // was read before it.
        let db = self.db.lock();
        let entry = db
            .prepare_cached("SELECT * FROM synced WHERE path = ?1")?
            .query_row([path], entry_from_row)
            .optional()?;
        self.cache.lock().put(path.to_string(), entry.clone());
        drop(db);
        Ok(entry)
    }

    /// Before a create is sent for `path` (with `state`): until its answer is in (`put`), the
    /// service may hold a record for `path` that no entry names (an answer lost on the way).
    /// This is an intent, not an acknowledgement: the entries still never lead the service.
    pub fn mark_unsure(&self, path: &str, media: &NewMedia) -> anyhow::Result<()> {
        self.db
            .lock()
            // A create is sent only when no live record's id is known for the path (an id of
            // an earlier note belongs to a record found gone): the note starts without one.
            .prepare_cached("INSERT OR REPLACE INTO unsure (path, state) VALUES (?1, ?2)")?
            .execute(params![path, serde_json::to_string(media)?])?;
        Ok(())
    }

    /// Stores the id of the record an unsure note is about, the moment it is learned.
    pub fn learn_unsure_id(&self, path: &str, media_id: MediaId) -> anyhow::Result<()> {
        self.db
            .lock()
            .prepare_cached("UPDATE unsure SET media_id = ?2 WHERE path = ?1")?
            .execute(params![path, media_id])?;
        Ok(())
    }

    /// The unsure note of `path`, if any.
    pub fn unsure(&self, path: &str) -> anyhow::Result<Option<Unsure>> {
        Ok(self
            .db
            .lock()
            .prepare_cached("SELECT state, media_id FROM unsure WHERE path = ?1")?
            .query_row([path], |r| {
                let state: String = r.get(0)?;
                Ok(Unsure {
                    media: serde_json::from_str(&state).ok(),
                    media_id: r.get(1)?,
                })
            })
            .optional()?)
    }

    pub fn clear_unsure(&self, path: &str) -> anyhow::Result<()> {
        self.db
            .lock()
            .prepare_cached("DELETE FROM unsure WHERE path = ?1")?
            .execute([path])?;
        Ok(())
    }

    pub fn unsure_paths(&self) -> anyhow::Result<Vec<String>> {
        let db = self.db.lock();
        let mut stmt = db.prepare_cached("SELECT path FROM unsure")?;
        let rows = stmt.query_map([], |row| row.get(0))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// The path whose entry holds `media_id`, if any.
    pub fn path_of(&self, media_id: MediaId) -> anyhow::Result<Option<String>> {
        Ok(self
            .db
            .lock()
            .prepare_cached("SELECT path FROM synced WHERE media_id = ?1")?
            .query_row([media_id], |row| row.get(0))
            .optional()?)
    }

    /// Records what the service acknowledged for `path` (and that no create for it is unsure).
    /// Refused, changing nothing, if another path's entry holds the id (`IdTaken`).
    pub fn put(&self, path: &str, entry: &IndexEntry) -> anyhow::Result<()> {
        let db = self.db.lock();
        let mut added = false;
        let mut taken = None;
        // One transaction: a crash must not leave the unsure row gone and the entry not written.
        in_transaction(&db, |db| {
            // Checked here, not left to the unique index: INSERT OR REPLACE would settle that
            // conflict by deleting the other path's entry.
            taken = db
                .prepare_cached("SELECT path FROM synced WHERE media_id = ?1 AND path != ?2")?
                .query_row(params![entry.media_id, path], |row| row.get::<_, String>(0))
                .optional()?;
            if taken.is_some() {
                return Ok(());
            }
            added = !db
                .prepare_cached("SELECT 1 FROM synced WHERE path = ?1")?
                .exists([path])?;
            db.prepare_cached(
                "INSERT OR REPLACE INTO synced
                 (path, media_id, hash, size, mtime_ns, ctime_ns, ino, content_up)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            )?
            .execute(params![
                path,
                entry.media_id,
                entry.hash,
                entry.size as i64,
                time_to_sql(entry.mtime_ns),
                time_to_sql(entry.ctime_ns),
                entry.ino as i64,
                entry.content_up
            ])?;
            db.prepare_cached("DELETE FROM unsure WHERE path = ?1")?
                .execute([path])?;
            // The service now holds other content for the path: the damage found in the old
            // content is no longer what the path is about. The same content put again keeps it.
            db.prepare_cached("DELETE FROM corrupted WHERE path = ?1 AND recorded_hash != ?2")?
                .execute([path, entry.hash.as_str()])?;
            Ok(())
        })?;
        if let Some(holder) = taken {
            return Err(IdTaken {
                media_id: entry.media_id,
                holder,
            }
            .into());
        }
        if added {
            self.entries.fetch_add(1, Ordering::Relaxed);
        }
        self.cache.lock().put(path.to_string(), Some(entry.clone()));
        drop(db);
        Ok(())
    }

    /// Forgets the entry of `path` and, in the same transaction, notes `media` (with its id) as
    /// unsure: a delete is about to be sent, and whether it reached the service is known only
    /// after. A retry then deletes by id, never creating the path again to find the record.
    /// The entry's hash, size and mtime are kept as the path's deleted record (`deleted`).
    pub fn remove_as_unsure(
        &self,
        path: &str,
        media: &NewMedia,
        media_id: MediaId,
    ) -> anyhow::Result<()> {
        let media_json = serde_json::to_string(media)?;
        let db = self.db.lock();
        let mut removed = 0;
        in_transaction(&db, |db| {
            keep_deleted(db, path, self.deleted_kept)?;
            removed = delete_entry(db, path)?;
            db.prepare_cached(
                "INSERT OR REPLACE INTO unsure (path, state, media_id) VALUES (?1, ?2, ?3)",
            )?
            .execute(params![path, media_json, media_id])?;
            Ok(())
        })?;
        self.entries.fetch_sub(removed as u64, Ordering::Relaxed);
        self.cache.lock().put(path.to_string(), None);
        drop(db);
        Ok(())
    }

    /// The last record of `path` whose delete was sent, while it is among the last
    /// `DELETED_KEPT` deletes.
    pub fn deleted(&self, path: &str) -> anyhow::Result<Option<DeletedRecord>> {
        Ok(self
            .db
            .lock()
            .prepare_cached("SELECT hash, size, mtime_ns, deleted_at FROM deleted WHERE path = ?1")?
            .query_row([path], |row| {
                Ok(DeletedRecord {
                    hash: row.get("hash")?,
                    size: row.get::<_, i64>("size")? as u64,
                    mtime_ns: time_from_sql(row, "mtime_ns")?,
                    deleted_at: row.get("deleted_at")?,
                })
            })
            .optional()?)
    }

    pub fn remove(&self, path: &str) -> anyhow::Result<()> {
        let db = self.db.lock();
        let mut removed = 0;
        in_transaction(&db, |db| {
            removed = delete_entry(db, path)?;
            Ok(())
        })?;
        self.entries.fetch_sub(removed as u64, Ordering::Relaxed);
        self.cache.lock().put(path.to_string(), None);
        drop(db);
        Ok(())
    }

    /// Paths of entries for inode `ino`: the other names of a hard-linked file, or the old name of
    /// a renamed one.
    pub fn find_by_ino(&self, ino: u64) -> anyhow::Result<Vec<(String, IndexEntry)>> {
        let db = self.db.lock();
        let mut stmt = db.prepare_cached("SELECT * FROM synced WHERE ino = ?1")?;
        let rows = stmt.query_map([ino as i64], |row| {
            Ok((row.get("path")?, entry_from_row(row)?))
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Paths of entries whose content is not known to be on the service.
    pub fn paths_not_up(&self) -> anyhow::Result<Vec<String>> {
        let db = self.db.lock();
        let mut stmt = db.prepare_cached("SELECT path FROM synced WHERE content_up = 0")?;
        let rows = stmt.query_map([], |row| row.get(0))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Paths strictly below directory `dir` ("" is the root).
    pub fn paths_under(&self, dir: &str) -> anyhow::Result<Vec<String>> {
        let db = self.db.lock();
        if dir.is_empty() {
            let mut stmt = db.prepare_cached("SELECT path FROM synced")?;
            let rows = stmt.query_map([], |row| row.get(0))?;
            return Ok(rows.collect::<Result<_, _>>()?);
        }
        // '/' + 1 == '0': the range [dir/, dir0) holds exactly the paths below dir.
        let mut stmt =
            db.prepare_cached("SELECT path FROM synced WHERE path >= ?1 AND path < ?2")?;
        let rows = stmt.query_map(params![format!("{dir}/"), format!("{dir}0")], |row| {
            row.get(0)
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// The multipart upload of `hash` under way, if any.
    pub fn multipart(&self, hash: &str) -> anyhow::Result<Option<MultipartUpload>> {
        let db = self.db.lock();
        let Some((size, upload_id, s3_bucket_id, urls, started_at)) = db
            .prepare_cached(
                "SELECT size, upload_id, s3_bucket_id, urls, started_at FROM multipart
                 WHERE hash = ?1",
            )?
            .query_row([hash], |r| {
                Ok((
                    r.get::<_, i64>(0)? as u64,
                    r.get(1)?,
                    r.get(2)?,
                    r.get::<_, String>(3)?,
                    r.get(4)?,
                ))
            })
            .optional()?
        else {
            return Ok(None);
        };
        let mut stmt =
            db.prepare_cached("SELECT part_num, etag FROM multipart_part WHERE hash = ?1")?;
        let etags = stmt
            .query_map([hash], |r| Ok((r.get::<_, i64>(0)? as u64, r.get(1)?)))?
            .collect::<Result<_, _>>()?;
        Ok(Some(MultipartUpload {
            size,
            upload_id,
            s3_bucket_id,
            urls: serde_json::from_str(&urls)?,
            etags,
            started_at,
        }))
    }

    /// Records a multipart upload the service just started (no part sent yet), replacing any
    /// earlier one of the same content.
    pub fn start_multipart(&self, hash: &str, upload: &MultipartUpload) -> anyhow::Result<()> {
        let urls = serde_json::to_string(&upload.urls)?;
        let db = self.db.lock();
        in_transaction(&db, |db| {
            // The same upload asked again (new URLs): the parts it holds stay done.
            db.prepare_cached(
                "DELETE FROM multipart_part WHERE hash = ?1 AND NOT EXISTS
                 (SELECT 1 FROM multipart WHERE hash = ?1 AND upload_id = ?2)",
            )?
            .execute([hash, upload.upload_id.as_str()])?;
            db.prepare_cached(
                "INSERT OR REPLACE INTO multipart
                 (hash, size, upload_id, s3_bucket_id, urls, started_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )?
            .execute(params![
                hash,
                upload.size as i64,
                upload.upload_id,
                upload.s3_bucket_id,
                urls,
                upload.started_at
            ])?;
            Ok(())
        })?;
        Ok(())
    }

    /// Records a part the store acknowledged, the moment it did.
    pub fn part_done(&self, hash: &str, part_num: u64, etag: &str) -> anyhow::Result<()> {
        self.db
            .lock()
            .prepare_cached(
                "INSERT OR REPLACE INTO multipart_part (hash, part_num, etag) VALUES (?1, ?2, ?3)",
            )?
            .execute(params![hash, part_num as i64, etag])?;
        Ok(())
    }

    /// Forgets the signed URLs of the multipart upload of `hash` (the store refused one), keeping
    /// its upload_id and the parts done: the next attempt asks for new URLs, and keeps those
    /// parts if the service answers the same upload.
    pub fn forget_urls(&self, hash: &str) -> anyhow::Result<()> {
        self.db
            .lock()
            .prepare_cached("UPDATE multipart SET urls = '{}' WHERE hash = ?1")?
            .execute([hash])?;
        Ok(())
    }

    /// Forgets the multipart upload of `hash`: completed, or not to be resumed.
    pub fn forget_multipart(&self, hash: &str) -> anyhow::Result<()> {
        let db = self.db.lock();
        in_transaction(&db, |db| {
            db.prepare_cached("DELETE FROM multipart_part WHERE hash = ?1")?
                .execute([hash])?;
            db.prepare_cached("DELETE FROM multipart WHERE hash = ?1")?
                .execute([hash])?;
            Ok(())
        })?;
        Ok(())
    }

    /// Every synced record, by path (`maxlofs verify`).
    pub fn synced_records(&self) -> anyhow::Result<Vec<SyncedRecord>> {
        let db = self.db.lock();
        let mut stmt = db.prepare("SELECT path, hash, size FROM synced ORDER BY path")?;
        let rows = stmt.query_map([], synced_record)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Up to `limit` entries whose path sorts after `after`, by path: a walk that a new or
    /// removed path does not shift, unlike offsets.
    pub fn entries_after(
        &self,
        after: &str,
        limit: u64,
    ) -> anyhow::Result<Vec<(String, IndexEntry)>> {
        let db = self.db.lock();
        let mut stmt =
            db.prepare_cached("SELECT * FROM synced WHERE path > ?1 ORDER BY path LIMIT ?2")?;
        let rows = stmt.query_map(params![after, limit as i64], |row| {
            Ok((row.get("path")?, entry_from_row(row)?))
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Notes `path` as damaged in place, replacing an earlier note of it. Putting the same
    /// entry again keeps the note; an entry of other content, or its removal (`remove`,
    /// `remove_as_unsure`), drops it.
    pub fn mark_corrupted(&self, path: &str, mark: &CorruptMark) -> anyhow::Result<()> {
        self.corrupted_noted.store(true, Ordering::SeqCst);
        let db = self.db.lock();
        in_transaction(&db, |db| {
            db.prepare_cached(
                "INSERT OR REPLACE INTO corrupted
                 (path, recorded_hash, found_hash, ranges, ctime_ns, found_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )?
            .execute(params![
                path,
                mark.recorded_hash,
                mark.found_hash,
                serde_json::to_string(&mark.ranges)
                    .map_err(|err| rusqlite::Error::ToSqlConversionFailure(err.into()))?,
                time_to_sql(mark.ctime_ns),
                mark.found_at
            ])?;
            db.prepare_cached(
                "INSERT OR REPLACE INTO damaged_content (hash, of_hash) VALUES (?1, ?2)",
            )?
            .execute(params![mark.found_hash, mark.recorded_hash])?;
            Ok(())
        })?;
        Ok(())
    }

    /// The good content's hash when `hash` is one scrub found a damaged file to have.
    pub fn damaged_copy_of(&self, hash: &str) -> anyhow::Result<Option<String>> {
        if !self.corrupted_noted.load(Ordering::SeqCst) {
            return Ok(None);
        }
        Ok(self
            .db
            .lock()
            .prepare_cached("SELECT of_hash FROM damaged_content WHERE hash = ?1")?
            .query_row([hash], |row| row.get(0))
            .optional()?)
    }

    /// The damage noted for `path`, if any.
    pub fn corrupted(&self, path: &str) -> anyhow::Result<Option<CorruptMark>> {
        if !self.corrupted_noted.load(Ordering::SeqCst) {
            return Ok(None);
        }
        let db = self.db.lock();
        let found = db
            .prepare_cached("SELECT * FROM corrupted WHERE path = ?1")?
            .query_row([path], corrupt_mark_of)
            .optional()?;
        found.map(|(_, mark)| mark).transpose()
    }

    /// Every path noted as damaged, with its mark (or why the mark cannot be read), by path: one
    /// query, for status.
    pub fn corrupted_marks(&self) -> anyhow::Result<Vec<(String, anyhow::Result<CorruptMark>)>> {
        if !self.corrupted_noted.load(Ordering::SeqCst) {
            return Ok(Vec::new());
        }
        let db = self.db.lock();
        let mut stmt = db.prepare_cached("SELECT * FROM corrupted ORDER BY path")?;
        let rows = stmt.query_map([], corrupt_mark_of)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Every path noted as damaged, by path.
    pub fn corrupted_paths(&self) -> anyhow::Result<Vec<String>> {
        let db = self.db.lock();
        let mut stmt = db.prepare_cached("SELECT path FROM corrupted ORDER BY path")?;
        let rows = stmt.query_map([], |row| row.get(0))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    pub fn clear_corrupted(&self, path: &str) -> anyhow::Result<()> {
        self.db
            .lock()
            .prepare_cached("DELETE FROM corrupted WHERE path = ?1")?
            .execute([path])?;
        Ok(())
    }

    /// Keeps the part digests of the multipart content `hash`; the caller has seen them hash to
    /// it.
    pub fn set_content_parts(&self, hash: &str, digests: &[[u8; 32]]) -> anyhow::Result<()> {
        self.db
            .lock()
            .prepare_cached("INSERT OR REPLACE INTO content_parts (hash, digests) VALUES (?1, ?2)")?
            .execute(params![hash, digests.concat()])?;
        Ok(())
    }

    /// The part digests kept for `hash`, if any.
    pub fn content_parts(&self, hash: &str) -> anyhow::Result<Option<Vec<[u8; 32]>>> {
        let blob: Option<Vec<u8>> = self
            .db
            .lock()
            .prepare_cached("SELECT digests FROM content_parts WHERE hash = ?1")?
            .query_row([hash], |row| row.get(0))
            .optional()?;
        Ok(blob.map(|blob| {
            blob.chunks_exact(32)
                .map(|digest| digest.try_into().expect("32 bytes"))
                .collect()
        }))
    }

    /// What the index notes under `key` about the mount it serves (`meta`).
    pub fn note(&self, key: &str) -> anyhow::Result<Option<String>> {
        Ok(self
            .db
            .lock()
            .prepare_cached("SELECT value FROM meta WHERE key = ?1")?
            .query_row([key], |row| row.get(0))
            .optional()?)
    }

    pub fn set_note(&self, key: &str, value: &str) -> anyhow::Result<()> {
        self.db
            .lock()
            .prepare_cached("INSERT OR REPLACE INTO meta (key, value) VALUES (?1, ?2)")?
            .execute([key, value])?;
        Ok(())
    }

    /// How many paths have an entry.
    pub fn count(&self) -> u64 {
        self.entries.load(Ordering::Relaxed)
    }
}

/// An id the service named for one path while the index holds it for another.
#[derive(Debug, thiserror::Error)]
#[error("media_id {media_id} is the record of {holder:?}")]
pub struct IdTaken {
    pub media_id: MediaId,
    pub holder: String,
}

/// Drops the entries of ids that more than one path holds (indexes made before one path per id
/// was enforced, which a lying answer could lead into that): which path the record is of is not
/// known, so each such path is looked at afresh, and its create's 409 names its own record. A
/// file among them removed meanwhile keeps its record, which is the safe side.
fn forget_shared_ids(db: &Connection) -> rusqlite::Result<()> {
    let forgotten = db.execute(
        "DELETE FROM synced WHERE media_id IN
         (SELECT media_id FROM synced GROUP BY media_id HAVING COUNT(*) > 1)",
        [],
    )?;
    if forgotten > 0 {
        tracing::warn!(
            "{forgotten} index entries shared a media_id; their paths are looked at again"
        );
    }
    Ok(())
}

/// A row of `corrupted`: its path, and its mark (whose ranges, JSON, may fail to decode).
fn corrupt_mark_of(row: &rusqlite::Row) -> rusqlite::Result<(String, anyhow::Result<CorruptMark>)> {
    let ranges: String = row.get("ranges")?;
    let mark = CorruptMark {
        recorded_hash: row.get("recorded_hash")?,
        found_hash: row.get("found_hash")?,
        ranges: Vec::new(),
        ctime_ns: time_from_sql(row, "ctime_ns")?,
        found_at: row.get("found_at")?,
    };
    let mark = serde_json::from_str(&ranges)
        .map(|ranges| CorruptMark { ranges, ..mark })
        .map_err(anyhow::Error::from);
    Ok((row.get("path")?, mark))
}

/// Deletes `path`'s entry and its corruption mark (which was of that entry); answers how many
/// entries went (0 or 1).
fn delete_entry(db: &Connection, path: &str) -> rusqlite::Result<usize> {
    let removed = db
        .prepare_cached("DELETE FROM synced WHERE path = ?1")?
        .execute([path])?;
    db.prepare_cached("DELETE FROM corrupted WHERE path = ?1")?
        .execute([path])?;
    Ok(removed)
}

/// Copies the entry of `path` (if any) into `deleted`, replacing an earlier delete of it, and
/// drops the deletes older than the last `kept`: rowids below the newest by `kept` or more, found
/// through the rowid key, not counted.
fn keep_deleted(db: &Connection, path: &str, kept: u64) -> rusqlite::Result<()> {
    db.prepare_cached(
        "INSERT OR REPLACE INTO deleted (path, hash, size, mtime_ns, deleted_at)
         SELECT path, hash, size, mtime_ns, ?2 FROM synced WHERE path = ?1",
    )?
    .execute(params![path, chrono::Utc::now().timestamp()])?;
    db.prepare_cached("DELETE FROM deleted WHERE rowid <= (SELECT MAX(rowid) FROM deleted) - ?1")?
        .execute([kept as i64])?;
    Ok(())
}

/// Runs `work` in one transaction. BEGIN and COMMIT come from the statement cache: rusqlite's
/// `transaction()` parses them anew on every call, a measurable share of a small file's sync.
fn in_transaction(
    db: &Connection,
    work: impl FnOnce(&Connection) -> rusqlite::Result<()>,
) -> rusqlite::Result<()> {
    db.prepare_cached("BEGIN")?.execute([])?;
    let result = work(db).and_then(|()| db.prepare_cached("COMMIT")?.execute([]).map(drop));
    if result.is_err() && !db.is_autocommit() {
        let _ = db.execute_batch("ROLLBACK");
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(media_id: MediaId, ino: u64) -> IndexEntry {
        IndexEntry {
            media_id,
            hash: "ab".repeat(32),
            size: 3,
            mtime_ns: 1,
            ctime_ns: 2,
            ino,
            content_up: true,
        }
    }

    #[test]
    fn the_cache_is_bounded_and_costs_only_what_it_holds() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("index.db");
        // Allocated whole at open, this capacity would abort the daemon.
        let index = Index::open(&db, "id", usize::MAX).unwrap();
        index.put("a", &entry(1, 1)).unwrap();
        assert_eq!(index.get("a").unwrap(), Some(entry(1, 1)));
        drop(index);
        let index = Index::open(&db, "id", 2).unwrap();
        for path in ["a", "b", "c"] {
            index.get(path).unwrap();
        }
        assert_eq!(index.cache.lock().len(), 2);
        assert_eq!(index.get("a").unwrap(), Some(entry(1, 1)));
    }

    #[test]
    fn a_second_index_on_the_same_folder_is_refused_until_the_first_closes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("index.db");
        drop(Index::open(&path, "id", 4).unwrap());
        // An existing index, opened with nothing to write yet, is already held.
        let first = Index::open(&path, "id", 4).unwrap();
        let second = Index::open(&path, "id", 4);
        assert!(second.is_err(), "two daemons would share one index");
        drop(first);
        let reopened = Index::open(&path, "id", 4).unwrap();
        reopened.put("a", &entry(1, 1)).unwrap();
    }

    #[test]
    fn an_id_belongs_to_one_path_and_an_old_index_sharing_one_forgets_both() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("index.db");
        let index = Index::open(&db, "id", 4).unwrap();
        index.put("a", &entry(7, 1)).unwrap();
        let err = index.put("b", &entry(7, 2)).unwrap_err();
        let taken = err.downcast_ref::<IdTaken>().expect("IdTaken");
        assert_eq!((taken.media_id, taken.holder.as_str()), (7, "a"));
        assert_eq!(index.get("a").unwrap(), Some(entry(7, 1)));
        assert_eq!(index.get("b").unwrap(), None);
        assert_eq!(index.path_of(7).unwrap().as_deref(), Some("a"));
        // The same path again is an update of its own entry.
        index.put("a", &entry(7, 3)).unwrap();
        assert_eq!(index.count(), 1);
        drop(index);

        // An index from before the rule, in which two paths came to share an id.
        let raw = Connection::open(&db).unwrap();
        raw.execute_batch(
            "DROP INDEX synced_media_id;
             INSERT INTO synced (path, media_id, hash, size, mtime_ns, ctime_ns, ino)
             VALUES ('b', 7, 'x', 1, 1, 1, 2), ('c', 8, 'x', 1, 1, 1, 4);",
        )
        .unwrap();
        drop(raw);
        let index = Index::open(&db, "id", 4).unwrap();
        assert_eq!(index.paths_under("").unwrap(), ["c"]);
        assert_eq!(index.count(), 1);
    }

    /// i64 nanoseconds end in 2262 and begin in 1677; ext4 keeps times from 1901 to 2446.
    #[test]
    fn times_past_sqlite_integers_persist_exactly() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("index.db");
        let far = IndexEntry {
            mtime_ns: 10_413_792_000_123_456_789,
            ctime_ns: i128::MIN,
            ..entry(1, 10)
        };
        let near = IndexEntry {
            mtime_ns: -1,
            ctime_ns: i64::MAX.into(),
            ..entry(2, 11)
        };
        {
            let index = Index::open(&db, "grant-1", 2).unwrap();
            index.put("far", &far).unwrap();
            index.put("near", &near).unwrap();
        }
        let index = Index::open(&db, "grant-1", 2).unwrap();
        assert_eq!(index.get("far").unwrap(), Some(far));
        assert_eq!(index.get("near").unwrap(), Some(near));
    }

    #[test]
    fn entries_persist_and_are_found_by_path_inode_and_prefix() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("index.db");
        {
            let index = Index::open(&db, "grant-1", 2).unwrap();
            index.put("a/b", &entry(1, 10)).unwrap();
            index.put("a/c", &entry(2, 10)).unwrap();
            index.put("a0", &entry(3, 11)).unwrap();
            index.put("ab/x", &entry(4, 12)).unwrap();
            index.remove("ab/x").unwrap();
            assert_eq!(index.get("ab/x").unwrap(), None);
            // Counted as written: a replaced entry is not a new one, a removed one goes.
            index.put("a/b", &entry(1, 10)).unwrap();
            index.remove("no/such").unwrap();
            assert_eq!(index.count(), 3);
        }
        let index = Index::open(&db, "grant-1", 2).unwrap();
        assert_eq!(index.get("a/b").unwrap(), Some(entry(1, 10)));
        let mut under = index.paths_under("a").unwrap();
        under.sort();
        assert_eq!(under, ["a/b", "a/c"]);
        assert_eq!(index.find_by_ino(10).unwrap().len(), 2);
        assert_eq!(index.count(), 3);
        assert_eq!(index.paths_under("").unwrap().len(), 3);
    }

    #[test]
    fn another_identity_starts_over() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("index.db");
        Index::open(&db, "grant-1", 8)
            .unwrap()
            .put("x", &entry(1, 1))
            .unwrap();
        let index = Index::open(&db, "grant-2", 8).unwrap();
        assert_eq!(index.get("x").unwrap(), None);
    }

    fn media(path: &str) -> NewMedia {
        NewMedia {
            media_path: path.into(),
            state: maxlofs_api::MediaState {
                file_hash: "ab".repeat(32),
                file_size: 3,
                ctime: "2026-01-01T00:00:00.000Z".into(),
                mtime: "2026-01-01T00:00:00.000Z".into(),
            },
        }
    }

    #[test]
    fn an_unsure_note_keeps_the_id_once_learned() {
        let dir = tempfile::tempdir().unwrap();
        let index = Index::open(&dir.path().join("index.db"), "id", 4).unwrap();
        index.mark_unsure("a", &media("a")).unwrap();
        assert_eq!(
            index.unsure("a").unwrap(),
            Some(Unsure {
                media: Some(media("a")),
                media_id: None
            })
        );
        index.learn_unsure_id("a", 7).unwrap();
        assert_eq!(index.unsure("a").unwrap().unwrap().media_id, Some(7));
        // A create sent again for the path is for another record.
        index.mark_unsure("a", &media("a")).unwrap();
        assert_eq!(index.unsure("a").unwrap().unwrap().media_id, None);
        index.put("b", &entry(9, 1)).unwrap();
        index.remove_as_unsure("b", &media("b"), 9).unwrap();
        assert_eq!(index.get("b").unwrap(), None);
        assert_eq!(index.unsure("b").unwrap().unwrap().media_id, Some(9));
        index.clear_unsure("b").unwrap();
        assert_eq!(index.unsure("b").unwrap(), None);
    }

    #[test]
    fn a_sent_delete_keeps_the_last_record_of_its_path_until_another_identity() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("index.db");
        let index = Index::open(&db, "id", 4).unwrap();
        // Past an SQLite integer, as times may be.
        let first = IndexEntry {
            mtime_ns: 10_413_792_000_123_456_789,
            ..entry(1, 1)
        };
        index.put("a", &first).unwrap();
        let before = chrono::Utc::now().timestamp();
        index.remove_as_unsure("a", &media("a"), 1).unwrap();
        drop(index);
        let index = Index::open(&db, "id", 4).unwrap();
        let kept = index.deleted("a").unwrap().unwrap();
        assert_eq!(
            (kept.hash, kept.size, kept.mtime_ns),
            (first.hash, first.size, first.mtime_ns)
        );
        assert!(kept.deleted_at >= before);
        // The path made and deleted again: the last delete's record is the one kept.
        let second = IndexEntry {
            hash: "cd".repeat(32),
            size: 5,
            mtime_ns: 7,
            ..entry(2, 2)
        };
        index.put("a", &second).unwrap();
        index.remove_as_unsure("a", &media("a"), 2).unwrap();
        let kept = index.deleted("a").unwrap().unwrap();
        assert_eq!(
            (kept.hash, kept.size, kept.mtime_ns),
            (second.hash, second.size, second.mtime_ns)
        );
        // An entry forgotten with no delete sent has no deleted record.
        index.put("b", &entry(3, 3)).unwrap();
        index.remove("b").unwrap();
        assert_eq!(index.deleted("b").unwrap(), None);
        drop(index);
        let index = Index::open(&db, "grant-2", 4).unwrap();
        assert_eq!(index.deleted("a").unwrap(), None);
    }

    #[test]
    fn only_the_last_deletes_keep_their_records() {
        let dir = tempfile::tempdir().unwrap();
        let mut index = Index::open(&dir.path().join("index.db"), "id", 4).unwrap();
        index.deleted_kept = 2;
        let delete = |path: &str, media_id| {
            index.put(path, &entry(media_id, 1)).unwrap();
            index
                .remove_as_unsure(path, &media(path), media_id)
                .unwrap();
        };
        delete("a", 1);
        delete("b", 2);
        // Deleted again, "a" is newer than "b".
        delete("a", 3);
        delete("c", 4);
        let kept = |path| index.deleted(path).unwrap().is_some();
        assert_eq!((kept("a"), kept("b"), kept("c")), (true, false, true));
        let rows: i64 = index
            .db
            .lock()
            .query_row("SELECT COUNT(*) FROM deleted", [], |row| row.get(0))
            .unwrap();
        assert_eq!(rows, 2);
    }

    #[test]
    fn a_multipart_upload_keeps_its_urls_and_each_finished_part() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("index.db");
        let upload = MultipartUpload {
            size: 20,
            upload_id: "u1".into(),
            s3_bucket_id: "b".into(),
            urls: BTreeMap::from([(1, "http://s/1?sig".into()), (2, "http://s/2?sig".into())]),
            etags: BTreeMap::new(),
            started_at: 1000,
        };
        {
            let index = Index::open(&path, "id", 4).unwrap();
            assert_eq!(index.multipart("h").unwrap(), None);
            index.start_multipart("h", &upload).unwrap();
            index.part_done("h", 2, "\"e2\"").unwrap();
        }
        let index = Index::open(&path, "id", 4).unwrap();
        let resumed = index.multipart("h").unwrap().unwrap();
        assert_eq!(resumed.etags, BTreeMap::from([(2, "\"e2\"".to_string())]));
        assert_eq!(resumed.urls, upload.urls);
        // Its URLs refused: they go, the upload and its parts stay.
        index.forget_urls("h").unwrap();
        let refused = index.multipart("h").unwrap().unwrap();
        assert!(refused.urls.is_empty());
        assert_eq!(
            (refused.upload_id, refused.etags),
            ("u1".into(), resumed.etags)
        );
        // The same upload answered again with new URLs keeps its parts.
        let renewed = MultipartUpload {
            urls: BTreeMap::from([(1, "http://s/1?new".into()), (2, "http://s/2?new".into())]),
            ..upload.clone()
        };
        index.start_multipart("h", &renewed).unwrap();
        let kept = index.multipart("h").unwrap().unwrap();
        assert_eq!((kept.urls, kept.etags.len()), (renewed.urls, 1));
        // A new upload of the same content starts with no part done.
        let new = MultipartUpload {
            upload_id: "u2".into(),
            ..upload.clone()
        };
        index.start_multipart("h", &new).unwrap();
        assert!(index.multipart("h").unwrap().unwrap().etags.is_empty());
        index.part_done("h", 1, "e1").unwrap();
        index.forget_multipart("h").unwrap();
        assert_eq!(index.multipart("h").unwrap(), None);
        index.start_multipart("h", &upload).unwrap();
        assert!(index.multipart("h").unwrap().unwrap().etags.is_empty());
    }

    #[test]
    fn a_corruption_mark_outlives_the_same_entry_put_again_but_not_other_content() {
        let dir = tempfile::tempdir().unwrap();
        let index = Index::open(&dir.path().join("index.db"), "id", 4).unwrap();
        index.put("a", &entry(1, 1)).unwrap();
        let mark = CorruptMark {
            recorded_hash: "ab".repeat(32),
            found_hash: "cd".repeat(32),
            ranges: vec![(0, 3)],
            // Past an SQLite integer, as times may be.
            ctime_ns: i128::from(i64::MAX) + 1,
            found_at: 5,
        };
        index.mark_corrupted("a", &mark).unwrap();
        assert_eq!(index.corrupted("a").unwrap(), Some(mark.clone()));
        index.put("a", &entry(1, 1)).unwrap();
        assert_eq!(index.corrupted_paths().unwrap(), ["a"]);
        let other = IndexEntry {
            hash: "ef".repeat(32),
            ..entry(1, 1)
        };
        index.put("a", &other).unwrap();
        assert!(index.corrupted_paths().unwrap().is_empty());
        index.mark_corrupted("a", &mark).unwrap();
        index.remove("a").unwrap();
        assert_eq!(index.corrupted("a").unwrap(), None);
        index.put("a", &entry(1, 1)).unwrap();
        index.mark_corrupted("a", &mark).unwrap();
        index.remove_as_unsure("a", &media("a"), 1).unwrap();
        assert_eq!(index.corrupted("a").unwrap(), None);
        index.mark_corrupted("b", &mark).unwrap();
        index.clear_corrupted("b").unwrap();
        assert!(index.corrupted_paths().unwrap().is_empty());
    }

    #[test]
    fn part_digests_are_kept_by_content_and_entries_are_walked_by_path() {
        let dir = tempfile::tempdir().unwrap();
        let index = Index::open(&dir.path().join("index.db"), "id", 4).unwrap();
        index.set_content_parts("h", &[[1; 32], [2; 32]]).unwrap();
        assert_eq!(
            index.content_parts("h").unwrap(),
            Some(vec![[1; 32], [2; 32]])
        );
        assert_eq!(index.content_parts("other").unwrap(), None);
        for (n, path) in ["c", "a", "b"].into_iter().enumerate() {
            index.put(path, &entry(n as i64 + 1, 1)).unwrap();
        }
        let paths = |after, limit| -> Vec<String> {
            let page = index.entries_after(after, limit).unwrap();
            page.into_iter().map(|(path, _)| path).collect()
        };
        assert_eq!(paths("", 1), ["a"]);
        assert_eq!(paths("a", 10), ["b", "c"]);
        assert!(paths("c", 10).is_empty());
    }

    /// An index of identity "id" written by an older version: its meta table, then `tables`.
    fn older_index(tables: &str) -> (tempfile::TempDir, Index) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("index.db");
        Connection::open(&path)
            .unwrap()
            .execute_batch(&format!(
                "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
                 INSERT INTO meta VALUES ('identity', 'id');
                 {tables}"
            ))
            .unwrap();
        let index = Index::open(&path, "id", 4).unwrap();
        (dir, index)
    }

    #[test]
    fn entries_made_before_uploads_existed_count_as_content_not_up() {
        let (_dir, index) = older_index(
            "CREATE TABLE synced (path TEXT PRIMARY KEY, media_id INTEGER NOT NULL,
                 hash TEXT NOT NULL, size INTEGER NOT NULL, mtime_ns INTEGER NOT NULL,
                 ctime_ns INTEGER NOT NULL, ino INTEGER NOT NULL);
             INSERT INTO synced VALUES ('old', 1, 'ab', 3, 1, 2, 10);",
        );
        assert!(!index.get("old").unwrap().unwrap().content_up);
        index.put("new", &entry(2, 11)).unwrap();
        assert_eq!(index.paths_not_up().unwrap(), ["old"]);
        index
            .put(
                "old",
                &IndexEntry {
                    content_up: true,
                    ..index.get("old").unwrap().unwrap()
                },
            )
            .unwrap();
        assert!(index.paths_not_up().unwrap().is_empty());
    }

    #[test]
    fn an_index_made_before_notes_had_ids_is_upgraded() {
        let (_dir, index) = older_index(
            "CREATE TABLE unsure (path TEXT PRIMARY KEY, state TEXT NOT NULL);
             INSERT INTO unsure VALUES ('old', 'not json');",
        );
        assert_eq!(index.unsure_paths().unwrap(), ["old"]);
        assert_eq!(
            index.unsure("old").unwrap(),
            Some(Unsure {
                media: None,
                media_id: None
            })
        );
    }
}
