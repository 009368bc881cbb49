//! Scrub and heal (docs/semantics.md, "Scrub"): damage made to a disk behind every system call,
//! found and repaired. The damage is real: a byte flipped in an ext4 image's data block while the
//! filesystem is unmounted.

mod common;

use common::ext4::Ext4Image;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// The technique the scrub tests stand on: a flipped byte changes a file's content and leaves its
/// size, mtime and ctime (and inode) as they were.
#[test]
fn a_byte_flipped_in_the_image_changes_the_content_and_not_the_stat() {
    let Some(mut disk) = Ext4Image::new(
        "a_byte_flipped_in_the_image_changes_the_content_and_not_the_stat",
        64,
    ) else {
        return;
    };
    let content: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    let file = disk.root.join("photo.jpg");
    std::fs::write(&file, &content).unwrap();
    let before = std::fs::metadata(&file).unwrap();
    disk.unmount();
    disk.flip_byte(Path::new("photo.jpg"), 70_000);
    disk.mount();
    let after = std::fs::metadata(&file).unwrap();
    let read = std::fs::read(&file).unwrap();
    assert_eq!(read.len(), content.len());
    let differing: Vec<usize> = (0..read.len()).filter(|&i| read[i] != content[i]).collect();
    assert_eq!(differing, [70_000], "exactly the flipped byte differs");
    let stat = |m: &std::fs::Metadata| {
        (
            m.size(),
            m.mtime(),
            m.mtime_nsec(),
            m.ctime(),
            m.ctime_nsec(),
            m.ino(),
        )
    };
    assert_eq!(stat(&after), stat(&before));
}

fn pattern(len: usize, seed: u32) -> Vec<u8> {
    (0..len as u32)
        .map(|i| (i.wrapping_mul(31).wrapping_add(seed) % 251) as u8)
        .collect()
}

fn mtime_ns(path: &Path) -> (i64, i64) {
    let meta = std::fs::metadata(path).unwrap();
    (meta.mtime(), meta.mtime_nsec())
}

fn maxlofs(args: &[&std::ffi::OsStr]) -> std::process::Output {
    std::process::Command::new(common::service::BIN)
        .args(args)
        .output()
        .unwrap()
}

/// The stdout of a command that must have exited with `code` (else the test fails, showing both
/// its outputs).
fn stdout_of_exit(out: &std::process::Output, code: i32) -> String {
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(
        out.status.code(),
        Some(code),
        "{said}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    said
}

/// Runs `maxlofs restore MNT ARGS...` and asserts it restored `count` files and exited 0.
fn assert_restores(mount: &common::service::Mount, args: &[&std::ffi::OsStr], count: usize) {
    let argv: Vec<&std::ffi::OsStr> = ["restore".as_ref(), mount.mnt.as_os_str()]
        .into_iter()
        .chain(args.iter().copied())
        .collect();
    let restore = maxlofs(&argv);
    let said = String::from_utf8_lossy(&restore.stdout);
    assert_eq!(
        restore.status.code(),
        Some(0),
        "{said}\n{}",
        mount.log_text()
    );
    assert!(said.starts_with(&format!("{count} restored")), "{said}");
}

/// A mount whose BACKING is the folder `library` on an ext4 image of `mib` MiB, syncing to a
/// fresh emulator; `None` (the test returns) where no image or mount can be made and neither is
/// required.
struct OnDisk {
    // Dropped in this order: the mount, then the emulator, the image and the folders.
    mount: common::service::Mount,
    emulator: common::service::Emulator,
    disk: Ext4Image,
    _dir: tempfile::TempDir,
}

impl OnDisk {
    fn start(test: &str, mib: u64) -> Option<OnDisk> {
        let disk = Ext4Image::new(test, mib)?;
        let emulator = common::service::Emulator::start(&[]);
        let dir = tempfile::tempdir().unwrap();
        let mut mount = common::service::Mount::prepare(dir.path(), &emulator, &[]);
        mount.backing = disk.root.join("library");
        std::fs::create_dir(&mount.backing).unwrap();
        mount.mount().then_some(OnDisk {
            mount,
            emulator,
            disk,
            _dir: dir,
        })
    }

    /// Flips a byte of each (path, offset) in the image, the mount and the image unmounted
    /// meanwhile, and mounts both again.
    fn damage(&mut self, bytes: &[(&str, u64)]) {
        self.mount.unmount();
        self.disk.unmount();
        for (path, offset) in bytes {
            self.disk
                .flip_byte(&Path::new("library").join(path), *offset);
        }
        self.disk.mount();
        assert!(self.mount.mount());
        self.mount.wait_synced();
    }
}

/// Issue #26's whole story on a real disk: two synced files are damaged in the image while it is
/// unmounted (one whole-hashed, one multipart); the mount comes back and sends nothing for them;
/// an edit made through the mount is sent as an edit; scrub names exactly the damaged two (the
/// multipart one by its damaged part); restore makes both byte-identical with their mtimes, and
/// the service sees no update for them at any point.
#[test]
fn scrub_finds_damage_made_behind_the_filesystem_and_restore_heals_it() {
    let test = "scrub_finds_damage_made_behind_the_filesystem_and_restore_heals_it";
    let Some(mut site) = OnDisk::start(test, 256) else {
        return;
    };
    const MIB: usize = 1 << 20;
    let files = [
        ("photo.jpg", pattern(100_000, 1)),
        ("film/clip.mp4", pattern(20 * MIB + 123, 2)),
        ("notes.txt", pattern(5_000, 3)),
    ];
    std::fs::create_dir(site.mount.path("film")).unwrap();
    for (name, content) in &files {
        std::fs::write(site.mount.path(name), content).unwrap();
    }
    site.mount.wait_synced();
    let mtimes: Vec<_> = files
        .iter()
        .map(|(name, _)| mtime_ns(&site.mount.path(name)))
        .collect();
    assert_eq!(site.emulator.calls("update"), 0);

    // The clip's byte is in its second File Hashing part (8 MiB parts).
    site.damage(&[("photo.jpg", 70_000), ("film/clip.mp4", 9 * MIB as u64 + 5)]);
    let (mount, emulator, disk) = (&mut site.mount, &site.emulator, &site.disk);
    assert_eq!(emulator.calls("update"), 0, "the damage was sent");

    // An edit through the mount is an edit: sent, never reported as damage.
    let mut edited = files[2].1.clone();
    edited.extend_from_slice(b"one more line\n");
    std::fs::write(mount.path("notes.txt"), &edited).unwrap();
    mount.wait_synced();
    assert_eq!(emulator.calls("update"), 1, "{}", mount.log_text());

    let scrub = maxlofs(&["scrub".as_ref(), mount.mnt.as_os_str()]);
    let said = String::from_utf8_lossy(&scrub.stdout);
    assert_eq!(scrub.status.code(), Some(3), "{said}\n{}", mount.log_text());
    let damaged: Vec<&str> = said
        .lines()
        .filter(|line| line.contains("corrupted locally"))
        .collect();
    assert_eq!(damaged.len(), 2, "{said}");
    assert!(
        damaged
            .iter()
            .any(|line| line.starts_with("photo.jpg: ") && line.contains("bytes 0-99999 ")),
        "{said}"
    );
    assert!(
        damaged
            .iter()
            .any(|line| line.starts_with("film/clip.mp4: ")
                && line.contains("bytes 8388608-16777215 ")),
        "only the damaged part is named:\n{said}"
    );
    let status = mount.status();
    assert_eq!(status["corrupted_count"], 2, "{status}");
    assert_eq!(emulator.calls("update"), 1, "scrub sent the damage");

    // Read through the mount, so the kernel holds their entries: the damage is what it serves.
    for (name, content) in &files[..2] {
        assert!(
            std::fs::read(mount.path(name)).unwrap() != *content,
            "{name}"
        );
    }
    assert_restores(mount, &["--corrupted".as_ref()], 2);
    for (i, (name, content)) in files[..2].iter().enumerate() {
        // At once, though the kernel held the damaged file's entry: opening the inode the
        // restore replaced fails as stale (it is no longer beneath BACKING), and the kernel
        // looks the name up again.
        assert!(
            std::fs::read(mount.path(name)).unwrap() == *content,
            "{name} is not its original through the mount"
        );
        assert_eq!(mtime_ns(&mount.path(name)), mtimes[i], "{name}'s mtime");
        assert!(std::fs::read(disk.root.join("library").join(name)).unwrap() == *content);
    }
    mount.wait_synced();
    let status = mount.status();
    assert!(status["corrupted_count"].is_null(), "{status}");
    assert_eq!(
        emulator.calls("update"),
        1,
        "the restore was sent as an edit"
    );
    common::service::assert_catalog_matches(emulator, &mount.backing);
    mount.unmount();
}

/// A file gone from BACKING behind the mount's back (the disk lost it), whose delete the
/// mass-deletion guard holds, comes back from its record with `maxlofs restore MNT PATH`: the
/// user chooses, per file, between releasing the delete and restoring the file.
#[test]
fn files_whose_deletes_are_held_come_back_from_their_records() {
    let emulator = common::service::Emulator::start(&[]);
    let dir = tempfile::tempdir().unwrap();
    let mut mount = common::service::Mount::prepare(dir.path(), &emulator, &["--settle-ms", "20"]);
    if !mount.mount() {
        return;
    }
    let names: Vec<String> = (0..20).map(|i| format!("photo-{i:02}.jpg")).collect();
    for (i, name) in names.iter().enumerate() {
        std::fs::write(mount.path(name), pattern(10_000 + i, i as u32)).unwrap();
    }
    mount.wait_synced();
    let mtimes: Vec<_> = names
        .iter()
        .map(|name| mtime_ns(&mount.path(name)))
        .collect();
    assert!(mount.unmount().success());
    for name in &names[..15] {
        std::fs::remove_file(mount.backing.join(name)).unwrap();
    }
    assert!(mount.mount());
    mount.wait_synced();
    assert_eq!(mount.status()["held_deletes"], 15, "{}", mount.status());

    assert_restores(
        &mount,
        &[names[0].as_ref(), mount.path(&names[1]).as_os_str()],
        2,
    );
    for i in 0..2 {
        let path = mount.path(&names[i]);
        assert!(std::fs::read(&path).unwrap() == pattern(10_000 + i, i as u32));
        assert_eq!(mtime_ns(&path), mtimes[i], "{}'s mtime", names[i]);
    }
    // A path with no record is refused, and said so.
    let refused = maxlofs(&[
        "restore".as_ref(),
        mount.mnt.as_os_str(),
        "nowhere.jpg".as_ref(),
    ]);
    assert_eq!(refused.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&refused.stdout).contains("no entry"));

    common::service::run(
        std::process::Command::new(common::service::BIN)
            .arg("release-deletes")
            .arg(&mount.mnt),
    );
    mount.wait_synced();
    assert_eq!(emulator.calls("delete"), 13, "the restored two are kept");
    let live: Vec<String> = emulator.live().into_keys().collect();
    let expected: Vec<String> = names[..2].iter().chain(&names[15..]).cloned().collect();
    assert_eq!(live, expected);
    assert_eq!(emulator.calls("update"), 0);
    assert!(mount.unmount().success());
}

/// Bytes scrub found damaged are never sent, whatever the file's name or stat becomes: neither a
/// chmod (a new ctime, which ends the in-place check) nor a copy of the damaged file sends them.
#[test]
fn a_damaged_file_chmodded_or_copied_is_never_sent() {
    let test = "a_damaged_file_chmodded_or_copied_is_never_sent";
    let Some(mut site) = OnDisk::start(test, 64) else {
        return;
    };
    std::fs::write(site.mount.path("photo.jpg"), pattern(50_000, 7)).unwrap();
    site.mount.wait_synced();
    site.damage(&[("photo.jpg", 1_000)]);
    let (mount, emulator) = (&mut site.mount, &site.emulator);
    let scrub = maxlofs(&["scrub".as_ref(), mount.mnt.as_os_str()]);
    assert_eq!(scrub.status.code(), Some(3), "{}", mount.log_text());

    let chmod = std::process::Command::new("chmod")
        .arg("600")
        .arg(mount.path("photo.jpg"))
        .status()
        .unwrap();
    assert!(chmod.success());
    std::fs::copy(mount.path("photo.jpg"), mount.path("copy.jpg")).unwrap();
    // A positive control: a good file written beside them is sent.
    std::fs::write(mount.path("good.jpg"), pattern(3_000, 8)).unwrap();
    mount.wait_synced();
    let live: Vec<String> = emulator.live().into_keys().collect();
    assert_eq!(live, ["good.jpg", "photo.jpg"], "{}", mount.log_text());
    assert_eq!(emulator.calls("update"), 0, "the damage was sent");
    let status = mount.status();
    let local_only: Vec<&str> = status["local_only"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|entry| entry["reason"].as_str().unwrap().contains("damaged"))
        .map(|entry| entry["path"].as_str().unwrap())
        .collect();
    assert_eq!(local_only, ["copy.jpg"], "{status}");
    // A chmod changes no content the engine would send (same inode, size and mtime): the file
    // stays listed as damaged where it is.
    assert_eq!(status["corrupted"][0]["path"], "photo.jpg", "{status}");
    mount.unmount();
}

/// `scrub --repair` restores what the pass finds, and exits 0 once nothing damaged is left.
#[test]
fn scrub_repair_restores_what_the_pass_finds() {
    let Some(mut site) = OnDisk::start("scrub_repair_restores_what_the_pass_finds", 64) else {
        return;
    };
    let content = pattern(200_000, 9);
    std::fs::write(site.mount.path("a.jpg"), &content).unwrap();
    std::fs::write(site.mount.path("b.jpg"), pattern(1_000, 10)).unwrap();
    site.mount.wait_synced();
    let mtime = mtime_ns(&site.mount.path("a.jpg"));
    site.damage(&[("a.jpg", 150_000)]);
    let scrub = maxlofs(&[
        "scrub".as_ref(),
        site.mount.mnt.as_os_str(),
        "--repair".as_ref(),
    ]);
    let said = String::from_utf8_lossy(&scrub.stdout);
    assert_eq!(
        scrub.status.code(),
        Some(0),
        "{said}\n{}",
        site.mount.log_text()
    );
    assert!(
        said.contains("2 files checked") && said.contains("1 found corrupted, 1 restored"),
        "{said}"
    );
    assert!(std::fs::read(site.mount.path("a.jpg")).unwrap() == content);
    assert_eq!(mtime_ns(&site.mount.path("a.jpg")), mtime);
    assert!(site.mount.status()["corrupted_count"].is_null());
    assert_eq!(site.emulator.calls("update"), 0);
    site.mount.unmount();
}

/// `maxlofs scrub` and `maxlofs restore` of a backing folder that is not mounted: scrub (which
/// needs no key) finds the byte flipped in the image; a restore, given the key, is killed while
/// it downloads the file's third part (the store trickles it): the damaged file is still at its
/// path, whole, and the next restore fetches only the parts it lacks and puts back the original
/// with its mtime. Mounted again, nothing is sent for the file.
#[test]
fn an_unmounted_folder_is_scrubbed_and_a_restore_killed_mid_download_completes_next_time() {
    let test =
        "an_unmounted_folder_is_scrubbed_and_a_restore_killed_mid_download_completes_next_time";
    let Some(mut site) = OnDisk::start(test, 128) else {
        return;
    };
    const MIB: usize = 1 << 20;
    // Four File Hashing parts of 8 MiB: the store serves one per range request.
    let content = pattern(30 * MIB, 11);
    std::fs::write(site.mount.path("clip.mov"), &content).unwrap();
    std::fs::write(site.mount.path("fine.jpg"), pattern(4_000, 12)).unwrap();
    site.mount.wait_synced();
    let mtime = mtime_ns(&site.mount.path("clip.mov"));
    assert!(site.mount.unmount().success());
    site.disk.unmount();
    site.disk
        .flip_byte(Path::new("library/clip.mov"), 20 * MIB as u64 + 3);
    site.disk.mount();
    let file = site.mount.backing.join("clip.mov");
    let damaged = std::fs::read(&file).unwrap();
    assert!(damaged != content);

    let unmounted = |command: &str| -> std::process::Command {
        let mut run = std::process::Command::new(common::service::BIN);
        run.arg(command)
            .arg(&site.mount.backing)
            .arg("--state-dir")
            .arg(&site.mount.state)
            .env_remove("MAXLO_DEVICE_SESSION_KEY")
            .env_remove("MAXLOFS_DEVICE_KEY_FILE");
        run
    };
    let said = stdout_of_exit(&unmounted("scrub").output().unwrap(), 3);
    assert!(said.contains("2 files checked"), "{said}");
    let damaged_lines: Vec<&str> = said
        .lines()
        .filter(|l| l.contains("corrupted locally"))
        .collect();
    assert_eq!(damaged_lines.len(), 1, "{said}");
    assert!(
        damaged_lines[0].starts_with("clip.mov: ")
            && damaged_lines[0].contains("bytes 16777216-25165823 "),
        "{said}"
    );

    // Without a key a restore is refused, and says why.
    let keyless = unmounted("restore").arg("--corrupted").output().unwrap();
    assert_eq!(keyless.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&keyless.stderr).contains("no device key"));

    // The service's own answer to `download`, its URL sent through a proxy that can hold a part.
    let proxy = common::proxy::Proxy::start(&site.emulator.url);
    let mut hasher = maxlofs_api::hash::StreamHasher::new(content.len() as u64);
    hasher.update(&content);
    let hash = hasher.finish().unwrap().to_hex();
    let (status, mut answer) = site.emulator.post(
        "/device/1/media_grant/1/download",
        &serde_json::json!({"device_session_key": "demo-device-key", "hash_list": [hash]}),
    );
    assert_eq!(status, 200, "{answer}");
    let item = &mut answer["download_list"][0];
    item["url"] = item["url"]
        .as_str()
        .unwrap()
        .replace(&site.emulator.url, &proxy.url)
        .into();
    let download_answered = common::proxy::Rule {
        matches: common::proxy::is_download,
        action: common::proxy::Action::Answer(common::proxy::response(
            "200 OK",
            answer.to_string().as_bytes(),
        )),
        times: None,
    };
    proxy.add_rule(download_answered.clone());
    let object_gets = |proxy: &common::proxy::Proxy| {
        proxy
            .seen()
            .iter()
            .filter(|line| line.starts_with("GET /_s3/"))
            .count()
    };
    let restore = |proxy: &common::proxy::Proxy| {
        let mut run = unmounted("restore");
        run.arg("--corrupted")
            .args(["--api", &proxy.url, "--device-key-file"])
            .arg(&site.mount.key_file);
        run
    };
    proxy.add_rule(common::proxy::Rule {
        matches: common::proxy::is_object_get,
        action: common::proxy::Action::Forward,
        times: Some(2),
    });
    proxy.add_rule(common::proxy::Rule {
        matches: common::proxy::is_object_get,
        action: common::proxy::Action::Trickle {
            head: format!(
                "HTTP/1.1 206 Partial Content\r\ncontent-length: {}\r\n\
                 content-range: bytes {}-{}/{}\r\n\r\n",
                8 * MIB,
                16 * MIB,
                24 * MIB - 1,
                content.len()
            )
            .into_bytes(),
            every: std::time::Duration::from_millis(200),
        },
        times: None,
    });
    let mut first = restore(&proxy)
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while object_gets(&proxy) < 3 {
        assert!(std::time::Instant::now() < deadline, "{:?}", proxy.seen());
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert!(
        first.try_wait().unwrap().is_none(),
        "the restore ended before it was killed"
    );
    first.kill().unwrap();
    first.wait().unwrap();
    assert!(
        std::fs::read(&file).unwrap() == damaged,
        "the path changed before the end"
    );
    let temps: Vec<String> = std::fs::read_dir(&site.mount.backing)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().into_string().unwrap())
        .filter(|name| name.starts_with(".maxlofs-restore-"))
        .collect();
    assert_eq!(temps.len(), 1, "the parts fetched are kept: {temps:?}");

    proxy.clear_rules();
    proxy.add_rule(download_answered);
    let gets_before = object_gets(&proxy);
    let said = stdout_of_exit(&restore(&proxy).output().unwrap(), 0);
    assert!(said.starts_with("1 restored"), "{said}");
    assert_eq!(
        object_gets(&proxy) - gets_before,
        2,
        "only the two parts not fetched before: {:?}",
        proxy.seen()
    );
    assert!(std::fs::read(&file).unwrap() == content);
    assert_eq!(mtime_ns(&file), mtime);

    assert!(site.mount.mount());
    site.mount.wait_synced();
    assert_eq!(
        site.emulator.calls("update"),
        0,
        "{}",
        site.mount.log_text()
    );
    assert!(site.mount.status()["corrupted_count"].is_null());
    common::service::assert_catalog_matches(&site.emulator, &site.mount.backing);
    site.mount.unmount();
}

/// `maxlofs restore MNT --deleted PATH` brings back a file the user deleted through the mount, from
/// the record its delete left in the index: byte-identical, with its mtime, and recorded again.
/// It never overwrites what stands at the path now, and a path never deleted is refused, saying so.
#[test]
fn a_file_deleted_through_the_mount_comes_back_from_its_last_record() {
    let emulator = common::service::Emulator::start(&[]);
    let Some(mut mount) = common::service::Mount::start(&emulator, &["--settle-ms", "20"]) else {
        return;
    };
    std::fs::create_dir(mount.path("trip")).unwrap();
    let photo = pattern(300_000, 21);
    std::fs::write(mount.path("trip/photo.jpg"), &photo).unwrap();
    std::fs::write(mount.path("taken.jpg"), pattern(2_000, 22)).unwrap();
    mount.wait_synced();
    let mtime = mtime_ns(&mount.path("trip/photo.jpg"));
    std::fs::remove_file(mount.path("trip/photo.jpg")).unwrap();
    std::fs::remove_file(mount.path("taken.jpg")).unwrap();
    mount.wait_synced();
    assert!(emulator.live().is_empty(), "{}", mount.log_text());
    std::fs::write(mount.path("taken.jpg"), b"a new file in its place").unwrap();

    let restore = maxlofs(&[
        "restore".as_ref(),
        mount.mnt.as_os_str(),
        "--deleted".as_ref(),
        "trip/photo.jpg".as_ref(),
        mount.path("taken.jpg").as_os_str(),
        "never.jpg".as_ref(),
    ]);
    let said = String::from_utf8_lossy(&restore.stdout);
    assert_eq!(
        restore.status.code(),
        Some(3),
        "{said}\n{}",
        mount.log_text()
    );
    assert!(said.starts_with("1 restored"), "{said}");
    assert!(
        said.contains("not restored: taken.jpg: something stands at the path"),
        "{said}"
    );
    assert!(
        said.contains("not restored: never.jpg: no deleted record of this path is known"),
        "{said}"
    );
    assert!(std::fs::read(mount.path("trip/photo.jpg")).unwrap() == photo);
    assert_eq!(mtime_ns(&mount.path("trip/photo.jpg")), mtime);
    assert_eq!(
        std::fs::read(mount.path("taken.jpg")).unwrap(),
        b"a new file in its place"
    );
    mount.wait_synced();
    assert!(
        emulator.live().contains_key("trip/photo.jpg"),
        "{}",
        mount.log_text()
    );
    common::service::assert_catalog_matches(&emulator, &mount.backing);
    mount.unmount();
}

/// An unmounted folder's index is opened as the daemon opens it: a state folder or an index that
/// is a symlink (another user may have planted it) is refused, and what it points at untouched;
/// a mount's index is refused while it is mounted.
#[test]
fn an_unmounted_folders_index_is_never_reached_through_a_symlink() {
    let emulator = common::service::Emulator::start(&[]);
    let dir = tempfile::tempdir().unwrap();
    let mut mount = common::service::Mount::prepare(dir.path(), &emulator, &[]);
    if !mount.mount() {
        return;
    }
    std::fs::write(mount.path("photo.jpg"), pattern(1_000, 31)).unwrap();
    mount.wait_synced();
    let backing = mount.backing.clone();
    let scrub = |state: &Path| {
        let out = std::process::Command::new(common::service::BIN)
            .arg("scrub")
            .arg(&backing)
            .arg("--state-dir")
            .arg(state)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    // While mounted, its index is the daemon's alone: the backing folder is refused, saying why.
    let (code, err) = scrub(&mount.state);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("is another maxlofs mount using this state folder?"),
        "{err}"
    );
    assert!(mount.unmount().success());
    assert_eq!(scrub(&mount.state).0, Some(0), "a positive control");

    let elsewhere = dir.path().join("elsewhere");
    std::fs::create_dir(&elsewhere).unwrap();
    std::fs::rename(mount.state.join("index.db"), elsewhere.join("index.db")).unwrap();
    std::os::unix::fs::symlink(elsewhere.join("index.db"), mount.state.join("index.db")).unwrap();
    let before = std::fs::metadata(elsewhere.join("index.db")).unwrap();
    let (code, err) = scrub(&mount.state);
    assert_eq!(code, Some(2), "refused as a usage mistake: {err}");
    assert!(err.contains("symlink"), "{err}");

    let linked_state = dir.path().join("linked-state");
    std::os::unix::fs::symlink(&elsewhere, &linked_state).unwrap();
    let (code, err) = scrub(&linked_state);
    assert_eq!(code, Some(2), "refused as a usage mistake: {err}");
    assert!(err.contains("symlink"), "{err}");
    let after = std::fs::metadata(elsewhere.join("index.db")).unwrap();
    assert_eq!(
        (after.mtime(), after.mtime_nsec(), after.mode()),
        (before.mtime(), before.mtime_nsec(), before.mode())
    );
    assert_eq!(
        std::fs::metadata(&elsewhere).unwrap().mode() & 0o777,
        0o755,
        "the folder a symlink names was changed"
    );
}

/// A mount that sends records only (`--no-upload`) still verifies and restores: downloading
/// content is not uploading it. The content was sent by an earlier mount of the same folder.
#[test]
fn a_mount_that_sends_records_only_still_verifies_and_restores() {
    let emulator = common::service::Emulator::start(&[]);
    let dir = tempfile::tempdir().unwrap();
    let mut mount = common::service::Mount::prepare(dir.path(), &emulator, &["--settle-ms", "20"]);
    if !mount.mount() {
        return;
    }
    let photo = pattern(40_000, 41);
    std::fs::write(mount.path("photo.jpg"), &photo).unwrap();
    mount.wait_synced();
    assert!(mount.unmount().success());
    let mut records_only = common::service::Mount::prepare(
        dir.path(),
        &emulator,
        &["--settle-ms", "20", "--no-upload"],
    );
    assert!(records_only.mount());
    let verify = std::process::Command::new(common::service::BIN)
        .arg("verify")
        .arg(&records_only.mnt)
        .arg("--deep")
        .output()
        .unwrap();
    assert!(
        stdout_of_exit(&verify, 0).contains("1 records, 1 contents checked (downloaded): all held")
    );
    std::fs::remove_file(records_only.path("photo.jpg")).unwrap();
    records_only.wait_synced();
    let restore = maxlofs(&[
        "restore".as_ref(),
        records_only.mnt.as_os_str(),
        "--deleted".as_ref(),
        "photo.jpg".as_ref(),
    ]);
    assert!(stdout_of_exit(&restore, 0).starts_with("1 restored"));
    assert!(std::fs::read(records_only.path("photo.jpg")).unwrap() == photo);
    records_only.wait_synced();
    assert!(emulator.live().contains_key("photo.jpg"));
    records_only.unmount();
}
