//! The engine against `MemoryApi` over a real backing folder, events fed by hand: every rule of
//! what reaches the service, and every error policy.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use super::ignore::IgnoreRules;
use super::index::Index;
use super::local::Backing;
use super::{Engine, HealConfig, SyncConfig, UploadConfig};
use maxlofs_api::content_client::ContentApi;
use maxlofs_api::{ApiError, Keys, MediaApi, MediaRecord, MediaState, NewMedia, SecretKey};
use maxlofs_emulator::memory::MemoryApi;
use maxlofs_emulator::stats::Call;
use maxlofs_emulator::store::StoreConfig;
use maxlofs_fs::{Event, EventSink, OpenWriters};

mod upload;

/// A backing folder (`b`) and its index in a temp folder, for the tests of what reads the
/// backing tree against the index (scrub, restore).
pub(crate) struct Library {
    pub dir: tempfile::TempDir,
    pub index: Index,
    pub backing: Backing,
}

impl Library {
    pub fn new() -> Library {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("b")).unwrap();
        let index = Index::open(&dir.path().join("index.db"), "test", 16).unwrap();
        let backing = Backing::open(&dir.path().join("b")).unwrap();
        Library {
            dir,
            index,
            backing,
        }
    }

    /// Where `rel` is in the backing folder.
    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join("b").join(rel)
    }
}

const SETTLE: Duration = Duration::from_millis(30);

struct Rig {
    dir: tempfile::TempDir,
    api: Arc<MemoryApi>,
    engine: Arc<Engine>,
    writers: Arc<OpenWriters>,
    sink: Arc<dyn EventSink>,
    runtime: EngineRuntime,
}

/// The engine's own runtime, as in the daemon: dropping it ends the engine's tasks, which
/// closes the index for the next engine on the same folder.
struct EngineRuntime(Option<tokio::runtime::Runtime>);

impl Drop for EngineRuntime {
    fn drop(&mut self) {
        if let Some(runtime) = self.0.take() {
            runtime.shutdown_background();
        }
    }
}

fn keys(device: &str) -> Keys {
    Keys {
        device: SecretKey::new(device),
        user: None,
    }
}

/// How a rig's engine and service are set up.
struct Options {
    settle: Duration,
    no_delete: bool,
    ignore: Vec<String>,
    store: StoreConfig,
    /// What the engine calls, if not the rig's `MemoryApi` itself.
    engine_api: Option<Arc<dyn MediaApi>>,
    /// Where content goes; `None`: records only.
    content: Option<Arc<dyn ContentApi>>,
    /// The grant is checked for encryption before the first upload.
    grant_unchecked: bool,
    /// A folder to serve instead of the rig's own: its engine is not started (no reconcile walks
    /// it), and looks are run by hand.
    backing: Option<PathBuf>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            settle: SETTLE,
            no_delete: false,
            ignore: Vec::new(),
            store: store_config(),
            engine_api: None,
            content: None,
            grant_unchecked: false,
            backing: None,
        }
    }
}

fn store_config() -> StoreConfig {
    StoreConfig {
        device_keys: vec!["k1".into(), "k2".into()],
        ..StoreConfig::default()
    }
}

impl Rig {
    fn new() -> Rig {
        Rig::with_settle(SETTLE)
    }

    fn with_settle(settle: Duration) -> Rig {
        Rig::with(Options {
            settle,
            ..Options::default()
        })
    }

    fn with(options: Options) -> Rig {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("b")).unwrap();
        let api = Arc::new(MemoryApi::new(options.store.clone(), keys("k1")));
        Rig::start(dir, api, options)
    }

    fn start(dir: tempfile::TempDir, api: Arc<MemoryApi>, options: Options) -> Rig {
        let config = SyncConfig {
            grant: 1,
            prefix: String::new(),
            settle: options.settle,
            concurrency: 4,
            no_delete: options.no_delete,
            ignore: IgnoreRules::new(&options.ignore, &[]).unwrap(),
            upload: match options.content.clone() {
                Some(api) => UploadConfig {
                    api: Some(api),
                    records_only: None,
                    concurrency: 2,
                    small_concurrency: 2,
                    limit: None,
                    grant_unchecked: options.grant_unchecked,
                },
                None => UploadConfig::records_only("unit test without content"),
            },
            heal: HealConfig {
                content: options.content,
                ..HealConfig::default()
            },
        };
        let index = Index::open(&dir.path().join("index.db"), "test", 16).unwrap();
        let started = options.backing.is_none();
        let backing = options.backing.unwrap_or_else(|| dir.path().join("b"));
        let backing = Backing::open(&backing).unwrap();
        let writers = Arc::new(OpenWriters::default());
        let engine_api = options.engine_api.unwrap_or_else(|| api.clone());
        let engine = Engine::new(config, engine_api, index, backing, writers.clone());
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        if started {
            let _context = runtime.enter();
            engine.start();
        }
        let sink = engine.event_sink();
        Rig {
            dir,
            api,
            engine,
            writers,
            sink,
            runtime: EngineRuntime(Some(runtime)),
        }
    }

    /// Stops this engine and starts another on the same folder, index and service.
    async fn restart(self, no_delete: bool) -> Rig {
        self.restart_with(Options {
            no_delete,
            ..Options::default()
        })
        .await
    }

    async fn restart_with(self, options: Options) -> Rig {
        assert!(self.engine.drain(Duration::from_secs(10)).await);
        let Rig {
            dir,
            api,
            engine,
            sink,
            runtime,
            ..
        } = self;
        drop((runtime, engine, sink));
        Rig::start(dir, api, options)
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join("b").join(rel)
    }

    fn write(&self, rel: &str, content: &[u8]) {
        let existed = self.path(rel).exists();
        std::fs::write(self.path(rel), content).unwrap();
        if !existed {
            self.sink.send(Event::Created { path: rel.into() });
        }
        self.sink.send(Event::ContentChanged {
            path: rel.into(),
            ino: self.ino(rel),
        });
    }

    /// Removes `rel` and reports it, as the filesystem does.
    fn remove(&self, rel: &str) {
        std::fs::remove_file(self.path(rel)).unwrap();
        self.sink.send(Event::Removed {
            path: rel.into(),
            is_dir: false,
        });
    }

    /// Waits until the service has been sent at least one `call`.
    async fn first(&self, call: Call) {
        let sent = async {
            while self.calls(call) == 0 {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(10), sent)
            .await
            .expect("the call is sent");
    }

    /// The backing inode number of `rel`, as the filesystem reports it in events.
    fn ino(&self, rel: impl AsRef<Path>) -> u64 {
        self.inode(rel).1
    }

    /// `(st_dev, st_ino)` of `rel`, as the filesystem counts its writers.
    fn inode(&self, rel: impl AsRef<Path>) -> (u64, u64) {
        use std::os::unix::fs::MetadataExt;
        let meta = std::fs::metadata(self.path("").join(rel)).unwrap();
        (meta.dev(), meta.ino())
    }

    async fn settled(&self) {
        let wait = async {
            loop {
                let status = self.engine.status();
                if status.reconciled && status.pending == 0 && status.in_flight == 0 {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(20), wait)
            .await
            .expect("the engine settles");
    }

    fn live(&self) -> BTreeMap<String, MediaRecord> {
        self.api
            .records(1)
            .into_iter()
            .filter(|r| !r.is_deleted)
            .map(|r| (r.media_path.clone(), r))
            .collect()
    }

    fn calls(&self, call: Call) -> u64 {
        self.api.calls(call)
    }

    fn all_calls(&self) -> u64 {
        Call::ALL.iter().map(|call| self.api.calls(*call)).sum()
    }
}

fn maxlo_hash(content: &[u8]) -> String {
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), content).unwrap();
    maxlofs_api::hash::hash_file(file.path()).unwrap().to_hex()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_file_is_created_with_hash_size_and_times() {
    let rig = Rig::new();
    rig.write("a.txt", b"hello");
    rig.settled().await;
    let live = rig.live();
    let record = &live["a.txt"];
    assert_eq!(record.file_hash, maxlo_hash(b"hello"));
    assert_eq!(record.file_size, 5);
    let meta = std::fs::metadata(rig.path("a.txt")).unwrap();
    let mtime = chrono::DateTime::<chrono::Utc>::from(meta.modified().unwrap());
    assert_eq!(
        record.mtime,
        mtime.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
    );
    assert_eq!(rig.calls(Call::Create), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rewrite_updates_the_same_record_and_an_unchanged_close_sends_nothing() {
    let rig = Rig::new();
    rig.write("a", b"one");
    rig.settled().await;
    let id = rig.live()["a"].media_id;
    rig.write("a", b"two!");
    rig.settled().await;
    assert_eq!(rig.live()["a"].media_id, id);
    assert_eq!(rig.live()["a"].file_hash, maxlo_hash(b"two!"));
    assert_eq!(rig.calls(Call::Update), 1);
    // A close that changed nothing: an event, but nothing to send.
    rig.sink.send(Event::ContentChanged {
        path: "a".into(),
        ino: rig.ino("a"),
    });
    rig.settled().await;
    assert_eq!((rig.calls(Call::Create), rig.calls(Call::Update)), (1, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn setting_times_updates_the_times() {
    let rig = Rig::new();
    rig.write("t", b"content");
    rig.settled().await;
    let when = std::time::UNIX_EPOCH + Duration::from_secs(1_000_000_000);
    let file = std::fs::File::options()
        .write(true)
        .open(rig.path("t"))
        .unwrap();
    file.set_times(std::fs::FileTimes::new().set_modified(when))
        .unwrap();
    rig.sink.send(Event::TimesSet {
        path: "t".into(),
        ino: rig.ino("t"),
    });
    rig.settled().await;
    let record = &rig.live()["t"];
    assert_eq!(record.mtime, "2001-09-09T01:46:40.000Z");
    assert_eq!(record.file_hash, maxlo_hash(b"content"));
    assert_eq!(rig.calls(Call::Update), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_safe_save_keeps_the_media_id_and_the_temp_name_never_reaches_the_service() {
    let rig = Rig::new();
    rig.write("doc.txt", b"v1");
    rig.settled().await;
    let id = rig.live()["doc.txt"].media_id;
    rig.write("doc.txt.tmp123", b"v2");
    std::fs::rename(rig.path("doc.txt.tmp123"), rig.path("doc.txt")).unwrap();
    rig.sink.send(Event::Renamed {
        from: "doc.txt.tmp123".into(),
        to: "doc.txt".into(),
        is_dir: false,
    });
    rig.settled().await;
    let live = rig.live();
    assert_eq!(live.keys().collect::<Vec<_>>(), ["doc.txt"]);
    assert_eq!(live["doc.txt"].media_id, id);
    assert_eq!(live["doc.txt"].file_hash, maxlo_hash(b"v2"));
    assert_eq!(rig.calls(Call::Create), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_created_and_removed_inside_the_settle_window_sends_nothing() {
    let rig = Rig::new();
    rig.write("brief", b"x");
    rig.remove("brief");
    rig.settled().await;
    assert_eq!(rig.all_calls(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unlink_deletes_and_no_delete_keeps_the_record() {
    let rig = Rig::new();
    rig.write("gone", b"1");
    rig.write("kept", b"2");
    rig.settled().await;
    rig.remove("gone");
    rig.settled().await;
    assert!(!rig.live().contains_key("gone"));
    let rig = rig.restart(true).await;
    rig.remove("kept");
    rig.settled().await;
    assert!(rig.live().contains_key("kept"));
    assert_eq!(rig.calls(Call::Delete), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renaming_a_directory_moves_every_file_below() {
    let rig = Rig::new();
    std::fs::create_dir_all(rig.path("d/sub")).unwrap();
    rig.write("d/a", b"a");
    rig.write("d/sub/b", b"b");
    rig.settled().await;
    std::fs::rename(rig.path("d"), rig.path("e")).unwrap();
    rig.sink.send(Event::Renamed {
        from: "d".into(),
        to: "e".into(),
        is_dir: true,
    });
    rig.settled().await;
    let live = rig.live();
    assert_eq!(live.keys().collect::<Vec<_>>(), ["e/a", "e/sub/b"]);
    assert_eq!(live["e/sub/b"].file_hash, maxlo_hash(b"b"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_through_one_hard_link_updates_every_link() {
    let rig = Rig::new();
    rig.write("a", b"shared");
    std::fs::hard_link(rig.path("a"), rig.path("b")).unwrap();
    rig.sink.send(Event::Linked { path: "b".into() });
    rig.settled().await;
    assert_eq!(rig.live().len(), 2);
    std::fs::write(rig.path("a"), b"changed").unwrap();
    rig.sink.send(Event::ContentChanged {
        path: "a".into(),
        ino: rig.ino("a"),
    });
    rig.settled().await;
    let live = rig.live();
    assert_eq!(live["a"].file_hash, maxlo_hash(b"changed"));
    assert_eq!(live["b"].file_hash, maxlo_hash(b"changed"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn symlinks_fifos_ignored_and_non_utf8_names_stay_local_and_are_reported() {
    use std::os::unix::ffi::OsStrExt;
    let rig = Rig::new();
    std::os::unix::fs::symlink("/etc/passwd", rig.path("link")).unwrap();
    rig.sink.send(Event::Created {
        path: "link".into(),
    });
    rig.write(".notes.txt.swp", b"swap");
    let odd = PathBuf::from(std::ffi::OsStr::from_bytes(b"caf\xe9.jpg"));
    std::fs::write(rig.path("").join(&odd), b"x").unwrap();
    rig.sink.send(Event::ContentChanged {
        ino: rig.ino(&odd),
        path: odd,
    });
    rig.settled().await;
    assert!(rig.live().is_empty());
    let status = rig.engine.status();
    assert_eq!(status.local_only_count, 2, "{status:?}");
    assert_eq!(rig.all_calls(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transient_errors_are_retried_until_they_pass() {
    let rig = Rig::new();
    rig.api
        .fail_next(3, ApiError::Transient("503 from the test".into()));
    rig.write("r", b"retry me");
    rig.settled().await;
    assert_eq!(rig.live().len(), 1);
}

/// A path backing off keeps its wait when another path gets through: the service answering one
/// call says nothing of when to press it again (its pacer says that), and waking every waiting
/// path at once hammered a service that had only partly recovered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_paths_success_does_not_cut_a_backoff_short() {
    let rig = Rig::new();
    rig.api
        .fail_next(4, ApiError::Transient("503 from the test".into()));
    rig.write("failing", b"1");
    // After its fourth failure the path waits 1.6 s, times 0.5-1.5: at least 0.8 s.
    let failed_four_times = async {
        while rig.calls(Call::Create) < 4 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(10), failed_four_times)
        .await
        .expect("four failed creates");
    rig.write("fine", b"2");
    let sent = async {
        while !rig.live().contains_key("fine") {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(10), sent)
        .await
        .expect("the other path is sent");
    // Waking it took one hand-off to a worker: well within this, and within its backoff.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(rig.calls(Call::Create), 5, "{:?}", rig.api.records(1));
    // Its own wait over, it is sent.
    rig.settled().await;
    assert_eq!(rig.live().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_answer_is_resent_and_adopted_without_a_second_record() {
    let rig = Rig::new();
    rig.api.lose_next_answers(1);
    rig.write("once", b"1");
    rig.settled().await;
    let records = rig.api.records(1);
    assert_eq!(records.len(), 1, "{records:?}");
    assert!(!records[0].is_deleted);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_create_answer_leaves_no_live_record_once_the_file_is_gone() {
    // With a service that merges parallel creates too: finding the record costs one create.
    for merge_parallel_creates in [false, true] {
        let rig = Rig::with(Options {
            store: StoreConfig {
                merge_parallel_creates,
                ..store_config()
            },
            ..Options::default()
        });
        rig.api.lose_next_answers(1);
        rig.write("gone", b"1");
        rig.first(Call::Create).await;
        // The record exists; its answer was lost and the retry waits out its backoff.
        rig.remove("gone");
        rig.settled().await;
        assert!(rig.live().is_empty(), "{:?}", rig.api.records(1));
        assert_eq!((rig.calls(Call::Create), rig.calls(Call::Delete)), (2, 1));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_existing_record_is_adopted_and_made_to_show_the_local_file() {
    let rig = Rig::new();
    let other = MediaState {
        file_hash: "0".repeat(64),
        file_size: 1,
        ctime: "2020-01-01T00:00:00.000Z".into(),
        mtime: "2020-01-01T00:00:00.000Z".into(),
    };
    let media = |path: &str| NewMedia {
        media_path: path.into(),
        state: other.clone(),
    };
    let maxlofs_api::CreateOutcome::Created(live_id) =
        rig.api.create(1, &media("p")).await.unwrap()
    else {
        panic!("created")
    };
    let maxlofs_api::CreateOutcome::Created(dead_id) =
        rig.api.create(1, &media("q")).await.unwrap()
    else {
        panic!("created")
    };
    rig.api.delete(1, dead_id).await.unwrap();
    rig.write("p", b"local p");
    rig.write("q", b"local q");
    rig.settled().await;
    let live = rig.live();
    assert_eq!(live["p"].media_id, live_id);
    assert_eq!(live["p"].file_hash, maxlo_hash(b"local p"));
    assert_eq!(live["q"].media_id, dead_id);
    assert_eq!(live["q"].file_hash, maxlo_hash(b"local q"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_key_pauses_everything_until_new_keys_arrive() {
    let rig = Rig::new();
    rig.api.revoke_keys();
    rig.write("p", b"waits");
    tokio::time::timeout(Duration::from_secs(10), async {
        while !rig.engine.is_paused() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("pauses");
    assert!(rig.engine.status().paused.is_some());
    assert!(rig.live().is_empty());
    rig.api.set_keys(keys("k2"));
    rig.engine.resume();
    rig.settled().await;
    assert_eq!(rig.live().len(), 1);
    assert!(rig.engine.status().paused.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejected_request_marks_the_path_failed_with_the_message() {
    let rig = Rig::new();
    rig.api.fail_next(
        1,
        ApiError::BadRequest {
            status: 400,
            message: "file_size: nope".into(),
        },
    );
    rig.write("bad", b"x");
    rig.settled().await;
    let status = rig.engine.status();
    assert_eq!(status.failed_count, 1);
    assert_eq!(status.failed[0].path, "bad");
    assert!(status.failed[0].reason.contains("file_size: nope"));
    // A later change tries again, and success clears the failure.
    rig.write("bad", b"xy");
    rig.settled().await;
    assert_eq!(rig.engine.status().failed_count, 0);
    assert_eq!(rig.live().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_update_of_a_vanished_record_becomes_a_create() {
    let rig = Rig::new();
    rig.write("v", b"1");
    rig.settled().await;
    rig.api.fail_next(1, ApiError::NotFound);
    rig.write("v", b"22");
    rig.settled().await;
    assert_eq!(rig.live()["v"].file_hash, maxlo_hash(b"22"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_catches_up_changes_made_while_stopped() {
    let rig = Rig::new();
    rig.write("same", b"s");
    rig.write("changed", b"c1");
    rig.write("deleted", b"d");
    rig.settled().await;
    let ids: BTreeMap<_, _> = rig
        .live()
        .into_iter()
        .map(|(k, r)| (k, r.media_id))
        .collect();
    assert!(rig.engine.drain(Duration::from_secs(5)).await);
    // Changes the engine never hears about.
    std::fs::write(rig.path("changed"), b"c2 longer").unwrap();
    std::fs::remove_file(rig.path("deleted")).unwrap();
    std::fs::write(rig.path("added"), b"a").unwrap();
    let before = rig.all_calls();
    let rig = rig.restart(false).await;
    rig.settled().await;
    let live = rig.live();
    assert_eq!(
        live.keys().collect::<Vec<_>>(),
        ["added", "changed", "same"]
    );
    assert_eq!(live["changed"].media_id, ids["changed"]);
    assert_eq!(live["changed"].file_hash, maxlo_hash(b"c2 longer"));
    // One create, one update, one delete; nothing for the unchanged file.
    assert_eq!(rig.all_calls() - before, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_quick_saves_send_one_or_two_updates() {
    // A window far longer than the saves take, so a stalled test thread cannot split them.
    let rig = Rig::with_settle(Duration::from_millis(500));
    rig.write("s", b"0");
    rig.settled().await;
    for i in 1..=10u8 {
        rig.write("s", &[i; 10]);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    rig.settled().await;
    assert!(rig.calls(Call::Update) <= 2, "{}", rig.calls(Call::Update));
    assert_eq!(rig.live()["s"].file_hash, maxlo_hash(&[10; 10]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_open_for_writing_is_sent_only_after_its_last_writer_closes() {
    let rig = Rig::new();
    std::fs::write(rig.path("rec.wav"), b"first second").unwrap();
    let inode = rig.inode("rec.wav");
    let ino = inode.1;
    rig.writers.opened(inode);
    rig.writers.opened(inode);
    rig.sink.send(Event::Created {
        path: "rec.wav".into(),
    });
    rig.sink.send(Event::ContentChanged {
        path: "rec.wav".into(),
        ino,
    });
    tokio::time::sleep(SETTLE * 5).await;
    rig.settled().await;
    assert_eq!(rig.all_calls(), 0, "sent while open");
    // One of two writers closes after a change: still open.
    std::fs::write(rig.path("rec.wav"), b"first second third").unwrap();
    rig.writers.closed(inode, |last| {
        assert!(!last);
        rig.sink.send(Event::ContentChanged {
            path: "rec.wav".into(),
            ino,
        });
    });
    tokio::time::sleep(SETTLE * 5).await;
    rig.settled().await;
    assert_eq!(rig.all_calls(), 0, "sent while one writer is left");
    rig.writers.closed(inode, |last| {
        assert!(last);
        rig.sink.send(Event::WriterClosed {
            path: "rec.wav".into(),
            ino,
        });
    });
    rig.settled().await;
    assert_eq!(rig.calls(Call::Create), 1);
    assert_eq!(
        rig.live()["rec.wav"].file_hash,
        maxlo_hash(b"first second third")
    );
}

/// A session that ends with a writer's release never delivered: the file is sent as it is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_writer_whose_close_never_came_is_gone_when_the_session_ends() {
    let rig = Rig::new();
    std::fs::write(rig.path("held"), b"first").unwrap();
    let inode = rig.inode("held");
    rig.writers.opened(inode);
    rig.sink.send(Event::Created {
        path: "held".into(),
    });
    tokio::time::sleep(SETTLE * 5).await;
    rig.settled().await;
    assert_eq!(rig.all_calls(), 0, "sent while open");
    std::fs::write(rig.path("held"), b"first second").unwrap();
    rig.engine.session_ended();
    rig.settled().await;
    assert_eq!(rig.writers.count(), 0);
    assert_eq!(rig.live()["held"].file_hash, maxlo_hash(b"first second"));
}

/// A file unlinked while a writer holds it: the writer's close names no path, and the wait for
/// it ends all the same (a temporary file created, unlinked and written, as many programs do,
/// must leave nothing behind in the engine).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_wait_for_a_writer_of_a_file_unlinked_while_open_ends_at_its_close() {
    let rig = Rig::new();
    std::fs::write(rig.path("scratch.tmp"), b"being written").unwrap();
    let inode = rig.inode("scratch.tmp");
    let ino = inode.1;
    rig.writers.opened(inode);
    rig.sink.send(Event::Created {
        path: "scratch.tmp".into(),
    });
    tokio::time::sleep(SETTLE * 5).await;
    rig.settled().await;
    assert_eq!(
        rig.engine.inodes_waited_for(),
        1,
        "the look waits for the writer"
    );
    std::fs::remove_file(rig.path("scratch.tmp")).unwrap();
    rig.sink.send(Event::Removed {
        path: "scratch.tmp".into(),
        is_dir: false,
    });
    rig.settled().await;
    rig.writers.closed(inode, |last| {
        assert!(last);
        rig.sink.send(Event::WriterGone { ino });
    });
    rig.settled().await;
    assert_eq!(rig.engine.inodes_waited_for(), 0);
    assert_eq!(rig.all_calls(), 0, "nothing to send for a file gone");
}

/// A file written through a name the mount then unlinked, while its other link (made in BACKING
/// directly, so the mount never saw it) stays: the last close names no path, and the other
/// link's record still follows the change.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_to_a_file_unlinked_while_open_reaches_its_other_links() {
    let rig = Rig::new();
    rig.write("a", b"before");
    std::fs::hard_link(rig.path("a"), rig.path("b")).unwrap();
    rig.sink.send(Event::Linked { path: "b".into() });
    rig.settled().await;
    let inode = rig.inode("a");
    let ino = inode.1;
    rig.writers.opened(inode);
    rig.remove("a");
    rig.settled().await;
    std::fs::write(rig.path("b"), b"after").unwrap();
    rig.writers.closed(inode, |last| {
        assert!(last);
        rig.sink.send(Event::WriterGone { ino });
    });
    rig.settled().await;
    let live = rig.live();
    assert!(!live.contains_key("a"));
    assert_eq!(live["b"].file_hash, maxlo_hash(b"after"));
}

/// Under a service that merges parallel creates, a create of a deleted record's path undeletes
/// it: a delete whose answer is lost must be retried as a delete, never a create.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unacknowledged_delete_is_retried_by_id_and_the_record_stays_deleted() {
    let rig = Rig::with(Options {
        store: StoreConfig {
            merge_parallel_creates: true,
            ..store_config()
        },
        ..Options::default()
    });
    for name in ["a", "b", "c"] {
        rig.write(name, name.as_bytes());
    }
    rig.settled().await;
    let creates = rig.calls(Call::Create);
    rig.api.lose_next_answers(3);
    for name in ["a", "b", "c"] {
        rig.remove(name);
    }
    rig.settled().await;
    assert_eq!(rig.calls(Call::Create), creates, "no create after a delete");
    assert!(rig.live().is_empty(), "{:?}", rig.api.records(1));
    assert_eq!(rig.calls(Call::Delete), 6, "each delete sent once more");
}

/// A name that stays local has no record: one made before the rule existed is deleted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_of_a_name_now_ignored_is_deleted_at_the_next_start() {
    let rig = Rig::new();
    rig.write("keep.jpg", b"k");
    rig.write("scratch.tmp", b"s");
    rig.settled().await;
    assert_eq!(rig.live().len(), 2);
    let rig = rig
        .restart_with(Options {
            ignore: vec!["*.tmp".into()],
            ..Options::default()
        })
        .await;
    rig.settled().await;
    assert_eq!(rig.live().keys().collect::<Vec<_>>(), ["keep.jpg"]);
    assert!(rig.path("scratch.tmp").exists(), "the file itself stays");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_in_one_look_leaves_no_path_in_flight_and_the_path_is_sent_later() {
    let rig = Rig::new();
    rig.api.panic_next();
    rig.write("p", b"panics first");
    rig.settled().await;
    assert_eq!(rig.live().len(), 1);
    let status = rig.engine.status();
    assert!(
        status
            .last_error
            .is_some_and(|e| e.contains("injected panic")),
        "the panic is reported"
    );
    let age = chrono::Utc::now().timestamp() - status.last_error_at.expect("with its time");
    assert!((0..60).contains(&age), "{age} s ago");
    rig.write("q", b"and work goes on");
    rig.settled().await;
    assert_eq!(rig.live().len(), 2);
}

#[tokio::test]
async fn a_path_whose_folder_became_a_file_while_it_was_hashed_is_vanished_not_a_failure() {
    let rig = Rig::new();
    std::fs::write(rig.path("d"), b"a file where a folder was").unwrap();
    let stat = super::local::FileStat::from_metadata(&std::fs::metadata(rig.path("d")).unwrap());
    // Opening `d/x` meets ENOTDIR: the file looked at is no longer there.
    let hashed = rig.engine.hash_now(Path::new("d/x"), stat).await;
    assert!(matches!(hashed, Err(super::failure::Failure::Vanished)));
    // So is a folder where the file was (opened, it is not a regular file).
    std::fs::create_dir(rig.path("e")).unwrap();
    let hashed = rig.engine.hash_now(Path::new("e"), stat).await;
    assert!(matches!(hashed, Err(super::failure::Failure::Vanished)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rename_after_a_restart_reuses_the_hash_of_the_file_as_indexed() {
    let rig = Rig::new();
    rig.write("a", b"old");
    rig.settled().await;
    let rig = rig.restart(false).await;
    rig.settled().await;
    // Rewritten behind the engine's back with its size and mtime kept: only a reused hash is
    // the old one.
    let mtime = std::fs::metadata(rig.path("a"))
        .unwrap()
        .modified()
        .unwrap();
    std::fs::write(rig.path("a"), b"new").unwrap();
    let file = std::fs::File::options().write(true).open(rig.path("a"));
    file.unwrap().set_modified(mtime).unwrap();
    std::fs::rename(rig.path("a"), rig.path("b")).unwrap();
    rig.sink.send(Event::Renamed {
        from: "a".into(),
        to: "b".into(),
        is_dir: false,
    });
    rig.settled().await;
    assert_eq!(rig.live()["b"].file_hash, maxlo_hash(b"old"));
}

#[tokio::test]
async fn a_file_gone_or_changed_before_its_content_is_sent_is_no_error() {
    let rig = Rig::new();
    rig.write("f", b"sent soon");
    let stat = super::local::FileStat::from_metadata(&std::fs::metadata(rig.path("f")).unwrap());
    let failure = |opened: Result<_, super::execute::Failed>| opened.err().map(|failed| failed.1);
    rig.write("f", b"changed meanwhile");
    let opened = rig.engine.open_unchanged(Path::new("f"), stat).await;
    assert!(matches!(
        failure(opened),
        Some(super::failure::Failure::Changed)
    ));
    std::fs::remove_file(rig.path("f")).unwrap();
    let opened = rig.engine.open_unchanged(Path::new("f"), stat).await;
    assert!(matches!(
        failure(opened),
        Some(super::failure::Failure::Vanished)
    ));
}

/// A sysfs file reads shorter than the size its stat shows, on every try: as a file cut short
/// while each read of it runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_that_kept_changing_while_it_was_hashed_is_looked_at_again_never_an_error() {
    let rig = Rig::with(Options {
        backing: Some("/sys/devices/system/cpu".into()),
        ..Options::default()
    });
    let engine = rig.engine.clone();
    let look = move || engine.sync_path(Path::new("online"), super::queue::Hint::Content);
    let outcome = tokio::task::spawn_blocking(look).await.unwrap();
    assert!(matches!(outcome, super::engine::Outcome::Again));
    let status = rig.engine.status();
    assert_eq!((status.last_error, status.failed_count), (None, 0));
}
