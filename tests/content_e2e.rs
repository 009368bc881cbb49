//! End to end: files written through a real mount reach the emulator's object store, byte for
//! byte, before their records; asserted on the store (`/_emulator/objects`) and the calls it
//! counted (`/_emulator/stats`).

#[macro_use]
mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::proxy::{is_download, response, Action, Proxy, Rule};
use common::service::{check_catalog, output_within, run, sh, Emulator, Mount, BIN};

const MIB: usize = 1024 * 1024;

/// Pseudo-random bytes (xorshift), different per seed: no two parts alike.
fn bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        out.extend_from_slice(&state.to_le_bytes());
    }
    out.truncate(len);
    out
}

fn maxlo_hash(path: &Path) -> String {
    maxlofs_api::hash::hash_file(path).unwrap().to_hex()
}

/// The bytes the store holds for `hash`, if it holds it.
fn try_object(emulator: &Emulator, hash: &str) -> Option<Vec<u8>> {
    let response =
        reqwest::blocking::get(format!("{}/_emulator/objects/{hash}", emulator.url)).unwrap();
    match response.status().as_u16() {
        404 => None,
        200 => Some(response.bytes().unwrap().to_vec()),
        other => panic!("object {hash}: {other}"),
    }
}

fn object(emulator: &Emulator, hash: &str) -> Vec<u8> {
    try_object(emulator, hash).unwrap_or_else(|| panic!("the store lacks {hash}"))
}

fn object_count(emulator: &Emulator) -> usize {
    emulator.get("/_emulator/objects")["object_list"]
        .as_array()
        .unwrap()
        .len()
}

/// Every live record names content the store holds, with the backing file's bytes.
fn assert_content_matches(emulator: &Emulator, mount: &Mount) {
    let live = emulator.live();
    assert!(!live.is_empty());
    for (path, record) in live {
        let file = mount.backing.join(&path);
        let hash = record["file_hash"].as_str().unwrap();
        assert_eq!(hash, maxlo_hash(&file), "{path}: record");
        let stored = try_object(emulator, hash).unwrap_or_else(|| {
            panic!(
                "{path}: the store lacks {hash}\nstats: {}\nlog:\n{}",
                emulator.stats(),
                mount.log_text()
            )
        });
        assert!(
            stored == std::fs::read(&file).unwrap(),
            "{path}: the stored object differs from the file"
        );
    }
}

#[test]
fn small_exactly_16_mib_and_multipart_files_reach_the_store() {
    let emulator = Emulator::start(&[]);
    let mount = mount!(emulator);
    std::fs::write(mount.path("small.jpg"), bytes(100_000, 1)).unwrap();
    std::fs::write(mount.path("edge.mov"), bytes(16 * MIB, 2)).unwrap();
    std::fs::write(mount.path("big.mov"), bytes(40 * MIB + 3, 3)).unwrap();
    mount.wait_synced_within(120);
    assert_content_matches(&emulator, &mount);
    assert_eq!(object_count(&emulator), 3);
    // Two whole objects, one multipart upload of five 8 MiB parts (the last short).
    assert_eq!(emulator.calls("object_put"), 2);
    assert_eq!(emulator.calls("s3_object"), 2);
    assert_eq!(emulator.calls("multipart"), 1);
    assert_eq!(emulator.calls("part_put"), 6);
    assert_eq!(emulator.calls("multipart_complete"), 1);
    let status = mount.status();
    assert!(status["uploaded_bytes"].as_u64().unwrap() >= (56 * MIB + 100_003) as u64);
    assert_eq!(status["uploads_off"], serde_json::Value::Null);
}

#[test]
fn identical_content_in_two_places_goes_up_once() {
    let emulator = Emulator::start(&[]);
    let mount = mount!(emulator);
    let content = bytes(3 * MIB, 4);
    std::fs::create_dir(mount.path("copy")).unwrap();
    std::fs::write(mount.path("a.jpg"), &content).unwrap();
    std::fs::write(mount.path("copy/a.jpg"), &content).unwrap();
    mount.wait_synced();
    assert_eq!(emulator.live().len(), 2);
    assert_content_matches(&emulator, &mount);
    assert_eq!(object_count(&emulator), 1);
    assert_eq!(emulator.calls("object_put"), 1);
}

#[test]
fn failed_and_dropped_puts_are_retried_until_the_content_is_up() {
    let emulator = Emulator::start(&["--fail-rate", "0.3", "--drop-rate", "0.2"]);
    let mount = mount!(emulator);
    for i in 0..6 {
        std::fs::write(
            mount.path(&format!("f{i}")),
            bytes(300_000 + i, 10 + i as u64),
        )
        .unwrap();
    }
    std::fs::write(mount.path("big"), bytes(20 * MIB, 20)).unwrap();
    mount.wait_synced_within(240);
    assert_content_matches(&emulator, &mount);
    assert_eq!(emulator.live().len(), 7);
    let (failed, dropped) = emulator.faults();
    assert!(failed + dropped > 0, "no fault was injected");
}

/// `--upload-limit` paces a PUT without long silences: a store gives up on a request whose body
/// stops (S3 after about 20 s; this emulator after 2 s), so a chunk waited for whole at a low rate
/// was refused, and sent again, for ever.
#[test]
fn a_paced_upload_never_stops_long_enough_for_the_store_to_give_up() {
    let emulator = Emulator::start(&["--body-idle-secs", "2"]);
    let mount = mount!(emulator, &["--upload-limit", "200K"]);
    // One sent from the bytes hashed, one read from the file as it is sent.
    std::fs::write(mount.path("kept.jpg"), bytes(600_000, 40)).unwrap();
    std::fs::write(mount.path("read.jpg"), bytes(1_200_000, 41)).unwrap();
    mount.wait_synced_within(60);
    assert_content_matches(&emulator, &mount);
    assert_eq!(
        emulator.stats()["calls"]["object_put"],
        serde_json::json!({"200": 2}),
        "{}",
        mount.log_text()
    );
}

/// Waits until `status` counts `bytes` uploaded in all.
fn wait_uploaded(mount: &Mount, bytes: u64) {
    // Status leaves the upload fields out while they are zero.
    common::eventually_within(
        Duration::from_secs(30),
        format!("{bytes} bytes were not sent in time"),
        || mount.status()["uploaded_bytes"].as_u64().unwrap_or(0) >= bytes,
    );
}

#[test]
fn a_file_changed_while_it_is_uploaded_ends_with_its_final_content() {
    let emulator = Emulator::start(&[]);
    let mount = mount!(emulator, &["--upload-limit", "1M"]);
    std::fs::write(mount.path("a.mov"), bytes(4 * MIB, 30)).unwrap();
    // Mid-way through its upload (at 1 MiB/s, four seconds), it is written again.
    wait_uploaded(&mount, MIB as u64);
    let last = bytes(4 * MIB, 31);
    std::fs::write(mount.path("a.mov"), &last).unwrap();
    mount.wait_synced_within(60);
    assert_content_matches(&emulator, &mount);
    assert_eq!(
        object(&emulator, &maxlo_hash(&mount.backing.join("a.mov"))),
        last
    );
    assert_eq!(
        object_count(&emulator),
        1,
        "the first content never completed"
    );
}

/// An upload takes a while; what the user does to the file meanwhile wins. A file deleted or
/// renamed away while its content is sent never gets a record at its old path (not even one
/// deleted right after), and the renamed file gets its record at the new path.
#[test]
fn a_file_deleted_or_renamed_while_it_is_uploaded_gets_no_record_at_its_old_path() {
    let emulator = Emulator::start(&[]);
    let mount = mount!(emulator, &["--upload-limit", "2M"]);
    // Multipart, and whole objects: the bytes hashed and kept, and the file read again.
    let files = [
        ("deleted.mov", 20 * MIB),
        ("moved.mov", 20 * MIB),
        ("deleted.jpg", 200 * 1024),
        ("moved.jpg", 3 * MIB),
    ];
    for (seed, (name, len)) in files.iter().enumerate() {
        std::fs::write(mount.path(name), bytes(*len, 60 + seed as u64)).unwrap();
    }
    // At 2 MiB/s the 43 MiB take 20 s: once the first MiB is up, all are still on their way.
    wait_uploaded(&mount, MIB as u64);
    assert!(
        emulator.records().is_empty(),
        "no record before its content is up: {:?}",
        emulator.records()
    );
    std::fs::remove_file(mount.path("deleted.mov")).unwrap();
    std::fs::remove_file(mount.path("deleted.jpg")).unwrap();
    std::fs::rename(mount.path("moved.mov"), mount.path("renamed.mov")).unwrap();
    std::fs::rename(mount.path("moved.jpg"), mount.path("renamed.jpg")).unwrap();
    mount.wait_synced_within(90);
    let paths: Vec<String> = emulator
        .records()
        .iter()
        .map(|record| record["media_path"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        paths.iter().collect::<BTreeSet<_>>(),
        BTreeSet::from([&"renamed.jpg".to_string(), &"renamed.mov".to_string()]),
        "records ever made (deleted ones included)"
    );
    assert_eq!(emulator.calls("delete"), 0, "nothing to delete was made");
    assert_content_matches(&emulator, &mount);
    // The control: a file whose record was made is deleted.
    std::fs::remove_file(mount.path("renamed.jpg")).unwrap();
    mount.wait_synced();
    assert_eq!(emulator.calls("delete"), 1, "a made record is deleted");
}

/// A large file's upload stops at its next part once the file is deleted; a renamed one's goes
/// on under its new name, without sending a part twice.
#[test]
fn a_multipart_upload_stops_when_its_file_is_deleted_and_goes_on_when_it_is_renamed() {
    let emulator = Emulator::start(&[]);
    // One part at a time, 4 MiB/s: the 5 parts of 40 MiB take 10 s.
    let mount = mount!(
        emulator,
        &["--upload-limit", "4M", "--upload-concurrency", "1"]
    );
    std::fs::write(mount.path("gone.mov"), bytes(40 * MIB, 70)).unwrap();
    wait_uploaded(&mount, MIB as u64);
    std::fs::remove_file(mount.path("gone.mov")).unwrap();
    mount.wait_synced_within(60);
    let parts_sent = emulator.calls("part_put");
    assert!(
        parts_sent <= 2,
        "{parts_sent} of 5 parts sent of a deleted file"
    );
    assert_eq!(emulator.calls("multipart_complete"), 0);
    assert_eq!(emulator.records(), Vec::<serde_json::Value>::new());
    assert_eq!(mount.status()["upload_bytes_left"].as_u64().unwrap_or(0), 0);

    let content = bytes(40 * MIB, 71);
    std::fs::write(mount.path("first.mov"), &content).unwrap();
    let sent = mount.status()["uploaded_bytes"].as_u64().unwrap_or(0);
    wait_uploaded(&mount, sent + MIB as u64);
    std::fs::rename(mount.path("first.mov"), mount.path("renamed.mov")).unwrap();
    mount.wait_synced_within(60);
    let records = emulator.records();
    assert_eq!(records.len(), 1, "{records:?}");
    assert_eq!(records[0]["media_path"], "renamed.mov");
    assert_eq!(
        records[0]["file_hash"],
        maxlo_hash(&mount.backing.join("renamed.mov"))
    );
    assert_eq!(
        object(&emulator, &maxlo_hash(&mount.backing.join("renamed.mov"))),
        content
    );
    assert_eq!(
        emulator.calls("part_put") - parts_sent,
        5,
        "each part of the renamed file sent once"
    );
    // The control for the deleted file's upload: the renamed one's is completed.
    assert_eq!(emulator.calls("multipart_complete"), 1);
}

/// Small files have PUT slots of their own: one is sent while a large transfer holds every
/// large slot, not after it.
#[test]
fn a_small_file_is_not_held_behind_a_large_transfer() {
    let emulator = Emulator::start(&[]);
    // One large PUT at a time, at 1 MiB/s: the 16 MiB file, sent whole, takes 16 s.
    let mount = mount!(
        emulator,
        &["--upload-limit", "1M", "--upload-concurrency", "1"]
    );
    std::fs::write(mount.path("big.mov"), bytes(16 * MIB, 90)).unwrap();
    wait_uploaded(&mount, MIB as u64);
    std::fs::write(mount.path("small.jpg"), bytes(4096, 91)).unwrap();
    common::eventually_within(
        Duration::from_secs(30),
        "small.jpg never reached the catalog",
        || emulator.live().contains_key("small.jpg"),
    );
    let left = mount.status()["upload_bytes_left"].as_u64().unwrap_or(0);
    assert!(
        left > 0,
        "small.jpg was recorded only once the large transfer had ended"
    );
    assert!(!emulator.live().contains_key("big.mov"));
    mount.wait_synced_within(60);
    assert_content_matches(&emulator, &mount);
}

/// Signed URLs that expire before the upload can end (a slow link, a large file): new ones are
/// asked for the same upload, and only the parts still missing go up, so the upload ends.
#[test]
fn a_multipart_upload_longer_than_its_urls_live_still_completes() {
    // 40 MiB at 4 MiB/s, one part at a time: 10 s, against URLs that live 3 s.
    let emulator = Emulator::start(&["--url-ttl-secs", "3"]);
    let mount = mount!(
        emulator,
        &["--upload-limit", "4M", "--upload-concurrency", "1"]
    );
    let content = bytes(40 * MIB, 80);
    std::fs::write(mount.path("long.mov"), &content).unwrap();
    mount.wait_synced_within(90);
    assert_content_matches(&emulator, &mount);
    assert_eq!(
        object(&emulator, &maxlo_hash(&mount.backing.join("long.mov"))),
        content
    );
    assert!(emulator.calls("multipart") >= 2, "new URLs were asked for");
    assert_eq!(emulator.calls("multipart_complete"), 1);
    let stats = emulator.stats();
    assert_eq!(
        stats["calls"]["part_put"]["200"].as_u64(),
        Some(5),
        "each part sent once: {stats}"
    );
}

#[test]
fn uploads_disabled_by_the_service_still_send_records_and_status_says_so() {
    let emulator = Emulator::start(&["--upload-disabled"]);
    let mount = mount!(emulator);
    std::fs::write(mount.path("a.jpg"), bytes(1000, 40)).unwrap();
    mount.wait_synced();
    assert_eq!(emulator.live().len(), 1);
    assert_eq!(object_count(&emulator), 0);
    assert_eq!(emulator.calls("object_put"), 0);
    let off = mount.status()["uploads_off"].as_str().unwrap().to_string();
    assert!(off.contains("disabled by the service"), "{off}");
    let text = run(Command::new(BIN).arg("status").arg(&mount.mnt));
    assert!(String::from_utf8_lossy(&text.stdout)
        .contains("uploads:    off: uploads are disabled by the service"));
    // The control: the same file to a service that takes uploads is uploaded.
    let open = Emulator::start(&[]);
    let control = mount!(open);
    std::fs::write(control.path("a.jpg"), bytes(1000, 40)).unwrap();
    control.wait_synced();
    assert_eq!(open.calls("object_put"), 1);
}

#[test]
fn no_upload_sends_records_and_no_content_call() {
    let emulator = Emulator::start(&[]);
    let mount = mount!(emulator, &["--no-upload"]);
    std::fs::write(mount.path("a.jpg"), bytes(1000, 50)).unwrap();
    mount.wait_synced();
    assert_eq!(emulator.live().len(), 1);
    for call in ["upload", "object_put", "s3_object", "multipart", "part_put"] {
        assert_eq!(emulator.calls(call), 0, "{call}");
    }
    assert_eq!(mount.status()["uploads_off"], "--no-upload");
    // The control: without --no-upload the same file's content is sent.
    let open = Emulator::start(&[]);
    let control = mount!(open);
    std::fs::write(control.path("a.jpg"), bytes(1000, 50)).unwrap();
    control.wait_synced();
    assert!(open.calls("upload") >= 1, "the control asked for no upload");
    assert_eq!(open.calls("object_put"), 1);
}

/// (mtime, ctime) of a backing file, in nanoseconds: what touching it would move.
fn times(path: &Path) -> (i128, i128) {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(path).unwrap();
    let ns = |secs: i64, nanos: i64| secs as i128 * 1_000_000_000 + nanos as i128;
    (
        ns(meta.mtime(), meta.mtime_nsec()),
        ns(meta.ctime(), meta.ctime_nsec()),
    )
}

#[test]
fn records_sent_without_content_get_it_at_the_next_mount_with_uploads_on() {
    let emulator = Emulator::start(&[]);
    let dir = tempfile::tempdir().unwrap();
    let mut mount = Mount::prepare(dir.path(), &emulator, &["--no-upload"]);
    if !mount.mount() {
        return;
    }
    std::fs::create_dir(mount.path("sub")).unwrap();
    // Small, streamed, and multipart: each way content goes up.
    let files = [
        ("a.jpg", bytes(1000, 80)),
        ("sub/b.mov", bytes(2 * MIB, 81)),
        ("sub/c.mov", bytes(17 * MIB, 82)),
    ];
    for (name, content) in &files {
        std::fs::write(mount.path(name), content).unwrap();
    }
    mount.wait_synced();
    assert_eq!(emulator.live().len(), files.len());
    assert_eq!(object_count(&emulator), 0);
    assert!(mount.unmount().success());
    let records = (emulator.calls("create"), emulator.calls("update"));
    let untouched: Vec<_> = files
        .iter()
        .map(|(name, _)| times(&mount.backing.join(name)))
        .collect();

    let mut mount = Mount::prepare(dir.path(), &emulator, &[]);
    assert!(mount.mount(), "mounts again with uploads on");
    mount.wait_synced_within(60);
    assert_content_matches(&emulator, &mount);
    assert_eq!(object_count(&emulator), files.len());
    assert_eq!(
        (emulator.calls("create"), emulator.calls("update")),
        records,
        "the records already named this content"
    );
    let now: Vec<_> = files
        .iter()
        .map(|(name, _)| times(&mount.backing.join(name)))
        .collect();
    assert_eq!(now, untouched);
    assert!(mount.unmount().success());

    // Known to be up now: the next start asks about none of it.
    let asked = emulator.calls("upload");
    let mut mount = Mount::prepare(dir.path(), &emulator, &[]);
    assert!(mount.mount(), "mounts a third time");
    mount.wait_synced();
    assert_eq!(emulator.calls("upload"), asked);
    assert_eq!(
        (emulator.calls("create"), emulator.calls("update")),
        records
    );
}

#[test]
fn a_multipart_upload_killed_midway_resumes_with_the_missing_parts() {
    let emulator = Emulator::start(&[]);
    let dir = tempfile::tempdir().unwrap();
    let mut mount = Mount::prepare(dir.path(), &emulator, &["--upload-limit", "16M"]);
    if !mount.mount() {
        return;
    }
    // 160 MiB: 20 parts of 8 MiB, ten seconds at 16 MiB/s.
    let size = 160 * MIB;
    let parts = 20;
    let source = dir.path().join("source");
    std::fs::write(&source, bytes(size, 60)).unwrap();
    std::fs::copy(&source, mount.path("long.mov")).unwrap();
    common::eventually_within(Duration::from_secs(60), "the parts did not go up", || {
        emulator.calls("part_put") >= parts / 2
    });
    // Streamed: the daemon never holds the file, only a few chunks per PUT under way.
    let pid = mount.pid().unwrap();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let peak_kib: u64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    assert!(
        peak_kib < 100 * 1024,
        "peak RSS {peak_kib} KiB uploading 160 MiB"
    );
    mount.kill();
    let before = emulator.calls("part_put");
    assert!(before < parts, "killed too late: {before} parts sent");
    assert!(mount.mount(), "mounts again");
    mount.wait_synced_within(120);
    assert_content_matches(&emulator, &mount);
    let sent = emulator.calls("part_put");
    // Only the missing parts (and those on the wire at the kill) are sent again.
    assert!(
        sent < parts + parts / 2 + 2,
        "{sent} part PUTs for {parts} parts"
    );
    assert_eq!(emulator.calls("multipart"), 1, "the same upload went on");
    assert_eq!(emulator.calls("multipart_complete"), 1);
}

#[test]
fn multipart_urls_expired_while_unmounted_start_the_upload_over() {
    let emulator = Emulator::start(&["--url-ttl-secs", "60"]);
    let dir = tempfile::tempdir().unwrap();
    let mut mount = Mount::prepare(dir.path(), &emulator, &["--upload-limit", "4M"]);
    if !mount.mount() {
        return;
    }
    // 40 MiB: five parts, ten seconds at 4 MiB/s.
    std::fs::write(mount.path("a.mov"), bytes(40 * MIB, 70)).unwrap();
    common::eventually_within(Duration::from_secs(60), "the parts did not go up", || {
        emulator.calls("part_put") >= 2
    });
    mount.kill();
    // The URLs expire while it is down.
    emulator.advance_clock(61);
    // Unlimited now, so the new URLs outlive the upload.
    let mut mount = Mount::prepare(dir.path(), &emulator, &[]);
    assert!(mount.mount(), "mounts again");
    mount.wait_synced_within(120);
    assert_content_matches(&emulator, &mount);
    assert_eq!(emulator.calls("multipart"), 2, "a new upload with new URLs");
    assert_eq!(emulator.calls("multipart_complete"), 1);
}

/// `maxlofs verify` of `mount`'s backing folder (unmounted: its index is read), as (exit code,
/// stdout).
fn verify(emulator: &Emulator, mount: &Mount, deep: bool) -> (i32, String) {
    let state = ["--state-dir", mount.state.to_str().unwrap()];
    verify_folder(emulator, mount, &mount.backing, &state, deep)
}

fn verify_folder(
    emulator: &Emulator,
    mount: &Mount,
    folder: &Path,
    extra: &[&str],
    deep: bool,
) -> (i32, String) {
    let mut command = Command::new(BIN);
    command
        .arg("verify")
        .arg(folder)
        .args(["--api", &emulator.url, "--device-key-file"])
        .arg(&mount.key_file)
        .args(extra);
    if deep {
        command.arg("--deep");
    }
    let out = command.output().unwrap();
    (
        out.status.code().unwrap(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[test]
fn verify_finds_missing_and_deep_finds_corrupted_content() {
    let emulator = Emulator::start(&[]);
    let dir = tempfile::tempdir().unwrap();
    let mut mount = Mount::prepare(dir.path(), &emulator, &[]);
    if !mount.mount() {
        return;
    }
    std::fs::write(mount.path("gone.jpg"), bytes(5000, 80)).unwrap();
    std::fs::write(mount.path("bad.mov"), bytes(17 * MIB, 81)).unwrap();
    std::fs::write(mount.path("fine.jpg"), bytes(7000, 82)).unwrap();
    mount.wait_synced();
    // Mounted: the daemon lists its synced records.
    let (code, out) = verify_folder(&emulator, &mount, &mount.mnt, &[], false);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("3 records, 3 contents checked: all held"),
        "{out}"
    );
    assert!(mount.unmount().success());
    let (code, out) = verify(&emulator, &mount, true);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("3 records, 3 contents checked (downloaded): all held"),
        "{out}"
    );

    let gone = maxlo_hash(&mount.backing.join("gone.jpg"));
    let bad = maxlo_hash(&mount.backing.join("bad.mov"));
    let client = reqwest::blocking::Client::new();
    let url = |hash: &str| format!("{}/_emulator/objects/{hash}", emulator.url);
    assert!(client
        .delete(url(&gone))
        .send()
        .unwrap()
        .status()
        .is_success());
    let corrupt = client
        .post(format!("{}/corrupt", url(&bad)))
        .send()
        .unwrap();
    assert!(corrupt.status().is_success());

    let (code, out) = verify(&emulator, &mount, false);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains(&format!("missing   gone.jpg ({gone})")),
        "{out}"
    );
    assert!(
        !out.contains("bad.mov"),
        "a shallow check cannot see corruption: {out}"
    );
    let (code, out) = verify(&emulator, &mount, true);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains(&format!("corrupted bad.mov ({bad})")), "{out}");
    assert!(
        out.contains("gone.jpg") && !out.contains("fine.jpg"),
        "{out}"
    );
}

/// `maxlofs verify MNT` on a live mount needs nothing more than `maxlofs status`: the daemon holds
/// the key and runs the check. Every finding reaches the command, however many: 600 records
/// whose content the service lost take more than one extended attribute's page.
#[test]
fn verify_on_a_live_mount_needs_no_key_and_reports_every_finding() {
    let emulator = Emulator::start(&[]);
    let Some(mount) = Mount::start(&emulator, &["--settle-ms", "20"]) else {
        return;
    };
    let names: Vec<String> = (0..600).map(|i| format!("lost/photo-{i:03}.jpg")).collect();
    std::fs::create_dir(mount.path("lost")).unwrap();
    for (i, name) in names.iter().enumerate() {
        std::fs::write(mount.path(name), bytes(64, 1000 + i as u64)).unwrap();
    }
    std::fs::write(mount.path("fine.jpg"), bytes(3000, 5)).unwrap();
    mount.wait_synced();
    let keyless_verify = |deep: bool| {
        let mut command = Command::new(BIN);
        command
            .arg("verify")
            .arg(&mount.mnt)
            .env_remove("MAXLO_DEVICE_SESSION_KEY")
            .env_remove("MAXLOFS_DEVICE_KEY_FILE")
            .env("MAXLOFS_API", "http://127.0.0.1:9");
        if deep {
            command.arg("--deep");
        }
        let out = command.output().unwrap();
        (
            out.status.code().unwrap(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, out, err) = keyless_verify(true);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("601 records, 601 contents checked (downloaded): all held"),
        "{out}"
    );

    let client = reqwest::blocking::Client::new();
    for name in &names {
        let hash = maxlo_hash(&mount.backing.join(name));
        let url = format!("{}/_emulator/objects/{hash}", emulator.url);
        assert!(client.delete(url).send().unwrap().status().is_success());
    }
    let (code, out, err) = keyless_verify(false);
    assert_eq!(code, 1, "{out}{err}");
    let missing: BTreeSet<&str> = out
        .lines()
        .filter_map(|line| line.strip_prefix("missing   "))
        .map(|rest| rest.split(' ').next().unwrap())
        .collect();
    let expected: BTreeSet<&str> = names.iter().map(String::as_str).collect();
    assert_eq!(missing, expected);
    assert!(
        out.contains("601 records, 601 contents checked: 600 records lack their content"),
        "{out}"
    );
    let status = mount.status();
    assert_eq!(status["heal"]["kind"], "verify", "{status}");
    assert_eq!(status["heal"]["verify"]["lacking"], 600, "{status}");
    // An unmounted folder needs the key, and says so.
    let unmounted = Command::new(BIN)
        .arg("verify")
        .arg(&mount.backing)
        .env_remove("MAXLO_DEVICE_SESSION_KEY")
        .env_remove("MAXLOFS_DEVICE_KEY_FILE")
        .output()
        .unwrap();
    assert_eq!(unmounted.status.code(), Some(2));
    let err = String::from_utf8_lossy(&unmounted.stderr);
    assert!(err.contains("no device key"), "{err}");
}

/// A service that lies to `verify`: a download without end, or a content of another size than
/// the record's, is reported as corrupted, and verify ends.
#[test]
fn verify_ends_and_reports_a_service_that_sends_without_end_or_names_another_size() {
    fn is_endless(_: &str, path: &str) -> bool {
        path == "/endless"
    }
    let emulator = Emulator::start(&[]);
    let dir = tempfile::tempdir().unwrap();
    let mut mount = Mount::prepare(dir.path(), &emulator, &[]);
    if !mount.mount() {
        return;
    }
    std::fs::write(mount.path("photo.jpg"), bytes(5000, 83)).unwrap();
    mount.wait_synced();
    assert!(mount.unmount().success());
    let hash = maxlo_hash(&mount.backing.join("photo.jpg"));

    let proxy = Proxy::start(&emulator.url);
    let download = |size: u64| {
        let answer = serde_json::json!({"download_list": [{
            "file_hash": hash, "file_size": size, "chunk_size": size,
            "url": format!("{}/endless", proxy.url), "is_deleted": false,
        }]});
        Action::Answer(response("200 OK", answer.to_string().as_bytes()))
    };
    proxy.add_rule(Rule {
        matches: is_endless,
        action: Action::Endless(b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\n".to_vec()),
        times: None,
    });
    proxy.add_rule(Rule {
        matches: is_download,
        action: download(5000),
        times: None,
    });
    let verify_via_proxy = |deep: bool| {
        let mut command = Command::new(BIN);
        command
            .arg("verify")
            .arg(&mount.backing)
            .args(["--api", &proxy.url, "--device-key-file"])
            .arg(&mount.key_file)
            .arg("--state-dir")
            .arg(&mount.state);
        if deep {
            command.arg("--deep");
        }
        let out = output_within(&mut command, Duration::from_secs(60));
        (
            out.status.code().unwrap(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    let (code, out) = verify_via_proxy(true);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains(&format!("corrupted photo.jpg ({hash})")),
        "{out}"
    );

    proxy.clear_rules();
    proxy.add_rule(Rule {
        matches: is_download,
        action: download(5001),
        times: None,
    });
    let (code, out) = verify_via_proxy(false);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains(&format!("corrupted photo.jpg ({hash})")),
        "{out}"
    );
}

/// A download that trickles (a byte every 200 ms, as a service holding verify would send) is
/// given up once it brings less than 64 KiB in the floor's window (shortened to 2 s here), and
/// named; verify goes on with the other contents, which it finds intact, and exits 2 (not all
/// could be checked). It used to wait on the trickle for as long as it lasted.
#[test]
fn verify_gives_up_a_download_slower_than_its_floor_and_checks_the_rest() {
    fn is_trickle(_: &str, path: &str) -> bool {
        path == "/trickle"
    }
    let emulator = Emulator::start(&[]);
    let dir = tempfile::tempdir().unwrap();
    let mut mount = Mount::prepare(dir.path(), &emulator, &[]);
    if !mount.mount() {
        return;
    }
    let names = ["a.mov", "b.mov", "c.mov"];
    for (seed, name) in names.iter().enumerate() {
        std::fs::write(mount.path(name), bytes(200 * 1024, 90 + seed as u64)).unwrap();
    }
    mount.wait_synced();
    assert!(mount.unmount().success());
    let hashes: Vec<String> = names
        .iter()
        .map(|name| maxlo_hash(&mount.backing.join(name)))
        .collect();

    // The service's own answer, but b.mov's content is to be had only by the trickle.
    let proxy = Proxy::start(&emulator.url);
    let (status, mut answer) = emulator.post(
        "/device/1/media_grant/1/download",
        &serde_json::json!({"device_session_key": "demo-device-key", "hash_list": hashes}),
    );
    assert_eq!(status, 200, "{answer}");
    for item in answer["download_list"].as_array_mut().unwrap() {
        if item["file_hash"] == hashes[1].as_str() {
            item["url"] = format!("{}/trickle", proxy.url).into();
        }
    }
    proxy.add_rule(Rule {
        matches: is_download,
        action: Action::Answer(response("200 OK", answer.to_string().as_bytes())),
        times: None,
    });
    let head = "HTTP/1.1 200 OK\r\ncontent-length: 204800\r\nconnection: close\r\n\r\n";
    proxy.add_rule(Rule {
        matches: is_trickle,
        action: Action::Trickle {
            head: head.as_bytes().to_vec(),
            every: Duration::from_millis(200),
        },
        times: None,
    });
    let mut command = Command::new(BIN);
    command
        .arg("verify")
        .arg(&mount.backing)
        .args(["--deep", "--download-floor-secs", "2", "--api", &proxy.url])
        .arg("--device-key-file")
        .arg(&mount.key_file)
        .arg("--state-dir")
        .arg(&mount.state);
    let out = output_within(&mut command, Duration::from_secs(120));
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(2), "{text}{out:?}");
    assert!(
        text.contains(&format!("too slow  b.mov ({})", hashes[1])),
        "{text}"
    );
    assert!(
        !text.contains("a.mov") && !text.contains("c.mov"),
        "the others were checked and found intact: {text}"
    );
    assert!(
        text.contains(
            "3 records, 3 contents checked (downloaded): 1 records not checked: their download \
             brought less than 64 KiB in 2 s and was given up"
        ),
        "{text}"
    );
    assert!(
        proxy
            .seen()
            .iter()
            .any(|seen| seen == "GET /trickle trickle"),
        "{:?}",
        proxy.seen()
    );
}

/// A working session with everyday tools against a service that fails and drops calls, uploads
/// on: `cp -a` (old times kept), git (commits, gc, a clone), SQLite in WAL and rollback-journal
/// modes, names swapped through a third, a rename over a synced file, `dd conv=notrunc` into a
/// multipart file while it uploads, hard links outliving their first name, a content put back to
/// an earlier version, an mmap writer, a truncate and rewrite. The catalog ends as the tree (hash,
/// size, mtime), the store holds every record's bytes, and SQLite's journals, which live only
/// while their database is open, never got a record.
#[test]
fn everyday_tools_against_a_faulty_service_end_with_the_tree_in_the_catalog_and_store() {
    let emulator = Emulator::start(&["--fail-rate", "0.15", "--drop-rate", "0.05"]);
    let mount = mount!(emulator);
    let src = tempfile::tempdir().unwrap();
    sh(
        "mkdir -p tree/sub
         for i in 1 2 3 4 5 6; do
           head -c $((i * 7000)) /dev/urandom > tree/sub/p$i.jpg
           TZ=UTC0 touch -d \"2019-0$i-1$i 12:34:56.789\" tree/sub/p$i.jpg
         done",
        src.path(),
    );
    let script = format!(
        "cp -a '{src}/tree' tree
         git init -q repo
         cd repo
         for i in 1 2 3; do
           head -c 3000 /dev/urandom | od -x > f$i.txt
           git add . && git -c user.name=u -c user.email=u@example.com commit -qm c$i
         done
         git gc -q
         cd ..
         git clone -q repo clone
         python3 -c '
import sqlite3
for name, mode in ((\"wal.db\", \"wal\"), (\"journal.db\", \"delete\")):
    db = sqlite3.connect(name)
    db.execute(\"pragma journal_mode=\" + mode)
    db.execute(\"create table t(x)\")
    for i in range(50):
        db.execute(\"insert into t values (?)\", (i,))
        db.commit()
    db.close()
'
         echo aaa > a.txt; echo bbb > b.txt; echo new > new.jpg; echo old > old.jpg
         head -c 70000 /dev/urandom > orig.jpg; ln orig.jpg link1.jpg; ln orig.jpg link2.jpg
         echo v1 > rev.txt
         sleep 1
         mv a.txt t.txt; mv b.txt a.txt; mv t.txt b.txt
         mv new.jpg old.jpg
         rm orig.jpg; echo more >> link1.jpg
         echo v2 > rev.txt
         head -c {big} /dev/urandom > big.mov
         dd if=/dev/urandom of=big.mov bs=1M seek=10 count=1 conv=notrunc status=none
         python3 -c '
import mmap, os
fd = os.open(\"mapped.bin\", os.O_RDWR | os.O_CREAT, 0o644)
os.ftruncate(fd, 1 << 20)
m = mmap.mmap(fd, 1 << 20)
m[:] = os.urandom(1 << 20)
m.close()
os.close(fd)
'
         head -c 300000 /dev/urandom > cut.jpg; truncate -s 0 cut.jpg; echo short >> cut.jpg
         sleep 1
         echo v1 > rev.txt",
        src = src.path().display(),
        big = 20 * MIB,
    );
    sh(&script, &mount.mnt);
    mount.wait_synced_within(240);
    check_catalog(&emulator, &mount.backing);
    assert_content_matches(&emulator, &mount);
    assert_eq!(
        emulator.live()["tree/sub/p3.jpg"]["mtime"],
        "2019-03-13T12:34:56.789Z"
    );
    let journals: Vec<String> = emulator
        .records()
        .iter()
        .map(|record| record["media_path"].as_str().unwrap().to_string())
        .filter(|path| {
            path.ends_with("-wal") || path.ends_with("-shm") || path.ends_with("-journal")
        })
        .collect();
    assert!(journals.is_empty(), "journals got records: {journals:?}");
    let (failed, dropped) = emulator.faults();
    assert!(failed + dropped > 0, "no fault was injected");
}
