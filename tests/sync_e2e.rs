//! End to end: real tools in a real mount against the emulator, asserting what reached the
//! catalog (the emulator's inspection endpoint) and how many calls it took (its stats).

#[macro_use]
mod common;

use std::os::unix::ffi::OsStrExt;

use common::service::{assert_catalog_matches, sh, Emulator, Mount};
use common::Later;

/// Mounts against `$emulator` with extra flags, or returns from the test when FUSE is not
/// available and not required.
fn media_id(emulator: &Emulator, path: &str) -> i64 {
    emulator.live()[path]["media_id"].as_i64().unwrap()
}

#[test]
fn cp_r_of_a_tree_reaches_the_catalog() {
    let emulator = Emulator::start(&[]);
    let mount = mount!(emulator);
    let src = tempfile::tempdir().unwrap();
    sh(
        "mkdir -p a/b/c e && echo one > a/1.txt && head -c 100000 /dev/urandom > a/b/big.bin \
         && : > a/b/c/empty && printf 'x' > e/x",
        src.path(),
    );
    sh(
        &format!("cp -r {}/. photos", src.path().display()),
        &mount.mnt,
    );
    mount.wait_synced();
    assert_catalog_matches(&emulator, &mount.backing);
    assert_eq!(emulator.live().len(), 4);
    assert!(emulator.live().contains_key("photos/a/b/c/empty"));
}

#[test]
fn touch_d_updates_the_times_of_the_same_record() {
    let emulator = Emulator::start(&[]);
    let mount = mount!(emulator);
    sh("echo content > f", &mount.mnt);
    mount.wait_synced();
    let id = media_id(&emulator, "f");
    sh("touch -d '2001-02-03 04:05:06.789 UTC' f", &mount.mnt);
    mount.wait_synced();
    let record = &emulator.live()["f"];
    assert_eq!(record["mtime"], "2001-02-03T04:05:06.789Z");
    assert_eq!(record["media_id"], id);
    assert_eq!(emulator.calls("update"), 1);
    assert_catalog_matches(&emulator, &mount.backing);
}

#[test]
fn rm_and_rm_r_delete_and_mkdir_rmdir_send_nothing() {
    let emulator = Emulator::start(&[]);
    let mount = mount!(emulator);
    sh(
        "mkdir -p d/e keep && echo 1 > f && echo 2 > d/a && echo 3 > d/e/b && echo 4 > keep/k",
        &mount.mnt,
    );
    mount.wait_synced();
    assert_eq!(emulator.calls("create"), 4);
    sh("rm f && rm -r d && mkdir empty && rmdir empty", &mount.mnt);
    mount.wait_synced();
    assert_catalog_matches(&emulator, &mount.backing);
    assert_eq!(emulator.calls("delete"), 3);
    assert_eq!(emulator.calls("create"), 4);
    let deleted: Vec<_> = emulator
        .records()
        .into_iter()
        .filter(|r| r["is_deleted"] == true)
        .map(|r| r["media_path"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(deleted.len(), 3, "{deleted:?}");
}

#[test]
fn mv_of_files_and_directories_moves_the_records() {
    let emulator = Emulator::start(&[]);
    let mount = mount!(emulator);
    sh(
        "mkdir -p d/sub && echo 1 > f && echo 2 > d/a && echo 3 > d/sub/b",
        &mount.mnt,
    );
    mount.wait_synced();
    sh(
        "mv f g && mv d renamed && mkdir x && mv renamed x/",
        &mount.mnt,
    );
    mount.wait_synced();
    assert_catalog_matches(&emulator, &mount.backing);
    let paths: Vec<_> = emulator.live().into_keys().collect();
    assert_eq!(paths, ["g", "x/renamed/a", "x/renamed/sub/b"]);
}

#[test]
fn safe_saves_by_sed_vim_and_rsync_keep_the_media_id_and_send_no_temp_names() {
    let emulator = Emulator::start(&[]);
    let mount = mount!(emulator);
    sh(
        "printf 'alpha\\nbeta\\n' > doc.txt && echo v1 > synced.txt && echo vim > edit.txt",
        &mount.mnt,
    );
    mount.wait_synced();
    let ids: Vec<i64> = ["doc.txt", "synced.txt", "edit.txt"]
        .iter()
        .map(|p| media_id(&emulator, p))
        .collect();

    sh("sed -i 's/beta/gamma/' doc.txt", &mount.mnt);
    let src = tempfile::tempdir().unwrap();
    sh("echo 'version two, longer' > synced.txt", src.path());
    sh(
        &format!("rsync {}/synced.txt synced.txt", src.path().display()),
        &mount.mnt,
    );
    // vim writes a backup/swap dance and renames over the original (writebackup).
    sh(
        "vim -u NONE -N -n -es -c 'set backupcopy=no writebackup' -c 's/vim/edited by vim/' -c 'wq' edit.txt",
        &mount.mnt,
    );
    mount.wait_synced();
    assert_catalog_matches(&emulator, &mount.backing);
    let live = emulator.live();
    assert_eq!(live.len(), 3, "{:?}", live.keys());
    for (path, id) in ["doc.txt", "synced.txt", "edit.txt"].iter().zip(ids) {
        assert_eq!(live[*path]["media_id"], id, "{path}");
    }
    assert_eq!(emulator.calls("create"), 3, "no temp name was ever created");
    assert_eq!(emulator.calls("delete"), 0);
    // The control: removing a saved file is sent.
    sh("rm edit.txt", &mount.mnt);
    mount.wait_synced();
    assert_eq!(emulator.calls("delete"), 1);
}

#[test]
fn ten_quick_saves_send_at_most_two_updates() {
    let emulator = Emulator::start(&[]);
    // A window far longer than the saves take, so a stall on a loaded machine cannot split them.
    let mount = mount!(emulator, &["--settle-ms", "1500"]);
    sh("echo 0 > f", &mount.mnt);
    mount.wait_synced();
    sh(
        "for i in 1 2 3 4 5 6 7 8 9 10; do echo $i > f; sleep 0.02; done",
        &mount.mnt,
    );
    mount.wait_synced();
    assert!(
        emulator.calls("update") <= 2,
        "{}",
        emulator.calls("update")
    );
    assert_catalog_matches(&emulator, &mount.backing);
}

#[test]
fn a_file_created_and_removed_within_the_settle_window_sends_nothing() {
    let emulator = Emulator::start(&[]);
    let mount = mount!(emulator, &["--settle-ms", "1000"]);
    let before = emulator.calls("create");
    sh("echo x > brief && mv brief brief2 && rm brief2", &mount.mnt);
    mount.wait_synced();
    assert_eq!(emulator.calls("create") - before, 0);
    assert_eq!(emulator.calls("delete"), 0);
    assert!(emulator.records().is_empty());
    // The control: a file that outlives the window is sent.
    sh("echo x > kept", &mount.mnt);
    mount.wait_synced();
    assert_eq!(emulator.calls("create") - before, 1);
}

#[test]
fn hard_links_each_have_a_record_and_a_write_through_one_updates_all() {
    let emulator = Emulator::start(&[]);
    let mount = mount!(emulator);
    sh(
        "echo shared > a && ln a b && mkdir d && ln a d/c",
        &mount.mnt,
    );
    mount.wait_synced();
    assert_eq!(emulator.live().len(), 3);
    sh("echo more >> a", &mount.mnt);
    mount.wait_synced();
    assert_catalog_matches(&emulator, &mount.backing);
}

#[test]
fn symlinks_fifos_non_utf8_names_and_ignored_files_stay_local() {
    let emulator = Emulator::start(&[]);
    let mount = mount!(emulator, &["--ignore", "*.tmp"]);
    sh(
        "echo real > real && ln -s real link && mkfifo pipe && echo s > .real.swp && echo b > real~ \
         && echo t > x.tmp",
        &mount.mnt,
    );
    let odd = mount.mnt.join(std::ffi::OsStr::from_bytes(b"caf\xe9.jpg"));
    std::fs::write(&odd, b"latin-1 name").unwrap();
    mount.wait_synced();
    let live = emulator.live();
    assert_eq!(live.keys().collect::<Vec<_>>(), ["real"]);
    let status = mount.status();
    assert_eq!(status["local_only_count"], 3, "{status}");
    assert_eq!(emulator.calls("create"), 1);
}

#[test]
fn no_delete_keeps_records_of_removed_files() {
    let emulator = Emulator::start(&[]);
    let mount = mount!(emulator, &["--no-delete"]);
    sh("echo 1 > f", &mount.mnt);
    mount.wait_synced();
    sh("rm f", &mount.mnt);
    mount.wait_synced();
    assert_eq!(emulator.calls("delete"), 0);
    assert!(emulator.live().contains_key("f"));
    // The control: the mount still sends (a new file), only not the delete.
    sh("echo 2 > g", &mount.mnt);
    mount.wait_synced();
    assert!(emulator.live().contains_key("g"));
    assert_eq!(emulator.calls("delete"), 0);
}

#[test]
fn tar_x_reaches_the_catalog_with_the_archived_times() {
    let emulator = Emulator::start(&[]);
    let mount = mount!(emulator);
    let src = tempfile::tempdir().unwrap();
    sh(
        "mkdir -p t/a/b && echo 1 > t/a/1 && echo 2 > t/a/b/2 && touch -d '2000-01-01 UTC' t/a/1 \
         && tar cf t.tar t",
        src.path(),
    );
    sh(
        &format!("tar xf {}/t.tar", src.path().display()),
        &mount.mnt,
    );
    mount.wait_synced();
    assert_catalog_matches(&emulator, &mount.backing);
    assert_eq!(
        emulator.live()["t/a/1"]["mtime"],
        "2000-01-01T00:00:00.000Z"
    );
}

#[test]
fn changes_made_while_unmounted_are_caught_up_at_the_next_mount() {
    let emulator = Emulator::start(&[]);
    let mut mount = mount!(emulator);
    sh(
        "echo same > same && echo c1 > changed && echo d > deleted",
        &mount.mnt,
    );
    mount.wait_synced();
    let changed_id = media_id(&emulator, "changed");
    assert!(mount.unmount().success(), "{}", mount.log_text());
    sh(
        "echo 'c2, longer' > changed && rm deleted && mkdir -p new && echo a > new/added",
        &mount.backing,
    );
    assert!(mount.mount());
    mount.wait_synced();
    assert_catalog_matches(&emulator, &mount.backing);
    assert_eq!(media_id(&emulator, "changed"), changed_id);
    assert_eq!(emulator.calls("create"), 4);
    assert_eq!(emulator.calls("update"), 1);
    assert_eq!(emulator.calls("delete"), 1);
}

#[test]
fn an_existing_record_at_a_new_files_path_is_adopted_and_updated() {
    let emulator = Emulator::start(&[]);
    let body = serde_json::json!({
        "device_session_key": "demo-device-key",
        "media_path": "taken.jpg",
        "file_hash": "0".repeat(64),
        "file_size": 1,
        "ctime": "2020-01-01T00:00:00.000Z",
        "mtime": "2020-01-01T00:00:00.000Z",
    });
    let (status, created) = emulator.post("/device/1/media_grant/1/media", &body);
    assert_eq!(status, 200);
    let mount = mount!(emulator);
    sh("echo local wins > taken.jpg", &mount.mnt);
    mount.wait_synced();
    assert_eq!(
        emulator.live()["taken.jpg"]["media_id"],
        created["media_id"]
    );
    assert_catalog_matches(&emulator, &mount.backing);
    assert_eq!(emulator.records().len(), 1);
}

#[test]
fn a_refused_key_or_unknown_grant_fails_before_mounting() {
    let emulator = Emulator::start(&[]);
    let dir = tempfile::tempdir().unwrap();
    for (key, grant, says) in [
        ("wrong-key", "1", "refused the device key"),
        ("demo-device-key", "77", "grant 77"),
    ] {
        let mount = Mount::prepare(dir.path(), &emulator, &["--grant", grant]);
        std::fs::write(&mount.key_file, key).unwrap();
        let out = mount
            .command_for(&mount.backing, &mount.mnt)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success());
        assert!(stderr.contains(says), "{stderr}");
        assert!(!stderr.contains(key) || key == "demo-device-key" && !stderr.contains("wrong"));
        assert!(!common::service::is_mounted(&mount.mnt));
    }
}

#[test]
fn a_mount_made_while_the_service_is_down_catches_up_when_it_returns() {
    let db = tempfile::tempdir().unwrap();
    let db_path = db.path().join("emulator.db");
    let db_arg = db_path.to_str().unwrap();
    let mut emulator = Emulator::start(&["--db", db_arg]);
    emulator.kill();
    let mount = mount!(emulator);
    assert!(mount.log_text().contains("offline"), "{}", mount.log_text());
    sh("echo offline > o.txt", &mount.mnt);
    std::thread::sleep(std::time::Duration::from_millis(500));
    emulator.restart();
    mount.wait_synced();
    assert_catalog_matches(&emulator, &mount.backing);
}

#[test]
fn a_key_revoked_mid_run_pauses_sending_until_the_key_file_changes() {
    // Keys that no random temporary folder name in the log can hold by chance, as it can `k1`.
    const OLD_KEY: &str = "revoked-key-5d1e9a";
    const NEW_KEY: &str = "fresh-key-c47b02";
    let emulator = Emulator::start(&["--device-key", OLD_KEY, "--device-key", NEW_KEY]);
    let dir = tempfile::tempdir().unwrap();
    let mut mount = Mount::prepare(dir.path(), &emulator, &[]);
    std::fs::write(&mount.key_file, OLD_KEY).unwrap();
    if !mount.mount() {
        return;
    }
    let (status, _) = emulator.post(
        "/_emulator/revoke-key",
        &serde_json::json!({"key": OLD_KEY}),
    );
    assert_eq!(status, 200);
    sh("echo waits > w", &mount.mnt);
    common::eventually_within(std::time::Duration::from_secs(20), "never paused", || {
        !mount.status()["paused"].is_null()
    });
    assert!(emulator.live().is_empty());
    std::fs::write(&mount.key_file, NEW_KEY).unwrap();
    mount.wait_synced();
    assert_catalog_matches(&emulator, &mount.backing);
    assert!(mount.status()["paused"].is_null());
    let log = mount.log_text();
    assert_eq!(log.matches("refused the session key").count(), 1, "{log}");
    assert!(
        !log.contains(OLD_KEY) && !log.contains(NEW_KEY),
        "keys leaked into the log"
    );
}

#[test]
fn unmount_drains_what_is_still_settling() {
    let emulator = Emulator::start(&[]);
    let mut mount = mount!(emulator, &["--settle-ms", "60000"]);
    sh("echo last minute > late", &mount.mnt);
    assert!(mount.unmount().success(), "{}", mount.log_text());
    assert_catalog_matches(&emulator, &mount.backing);
}

/// A signal while a writer holds a file: the mount is busy, so the daemon detaches it and serves
/// on until the writer lets go; that writer's close must not be lost with the session, however
/// the kernel orders its release and the end of the connection.
#[test]
fn a_file_still_open_at_a_signal_is_sent_with_all_its_bytes_once_its_writer_lets_go() {
    let emulator = Emulator::start(&[]);
    let mut mount = mount!(emulator, &["--settle-ms", "60000"]);
    let mut writer = std::process::Command::new("sh")
        .args(["-c", "exec 3>held; echo first >&3; read _; echo second >&3"])
        .current_dir(&mount.mnt)
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let held = mount.backing.join("held");
    let started = std::time::Instant::now();
    let limit = std::time::Duration::from_secs(20);
    common::eventually_within(limit, "the writer never wrote", || {
        std::fs::read(&held).unwrap_or_default() == b"first\n"
    });
    mount.signal(libc::SIGTERM);
    // The same deadline as the write's.
    common::eventually_within(
        limit.saturating_sub(started.elapsed()),
        Later(|| mount.log_text()),
        || mount.log_text().contains("detaching it lazily"),
    );
    drop(writer.stdin.take());
    assert!(writer.wait().unwrap().success());
    let status = mount.wait_exit();
    assert!(status.success(), "{status}: {}", mount.log_text());
    let live = emulator.live();
    let record = live
        .get("held")
        .unwrap_or_else(|| panic!("{}", mount.log_text()));
    assert_eq!(record["file_size"], 13, "{record}");
    assert_catalog_matches(&emulator, &mount.backing);
}

#[test]
fn sigterm_and_sigint_unmount_cleanly_after_draining() {
    let emulator = Emulator::start(&[]);
    for (signal, name) in [(libc::SIGTERM, "term"), (libc::SIGINT, "int")] {
        let dir = tempfile::tempdir().unwrap();
        let mut mount = Mount::prepare(dir.path(), &emulator, &["--settle-ms", "60000"]);
        if !mount.mount() {
            return;
        }
        std::fs::write(mount.path(name), name).unwrap();
        let status = mount.signal_and_wait(signal);
        assert!(status.success(), "{status}: {}", mount.log_text());
        assert!(!common::service::is_mounted(&mount.mnt));
        assert!(
            emulator.live().contains_key(name),
            "{name} was drained before exit\n{}",
            mount.log_text()
        );
    }
}
