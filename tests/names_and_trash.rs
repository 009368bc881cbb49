//! Names that stay local and the trash, end to end: real tools (gio, mv, rsync, python) in a real
//! mount against the emulator, asserting on every record it ever held, deleted ones included.

#[macro_use]
mod common;

use std::path::Path;
use std::process::Command;

use common::service::{assert_catalog_matches, run, sh, Emulator, BIN};

/// Every media_path the emulator holds a record for, live or deleted.
fn every_path(emulator: &Emulator) -> Vec<String> {
    emulator
        .records()
        .into_iter()
        .map(|r| r["media_path"].as_str().unwrap().to_string())
        .collect()
}

/// Whether `path` has a record and every record it has is deleted.
fn is_deleted(emulator: &Emulator, path: &str) -> bool {
    let records: Vec<_> = emulator
        .records()
        .into_iter()
        .filter(|r| r["media_path"] == path)
        .collect();
    !records.is_empty() && records.iter().all(|r| r["is_deleted"] == true)
}

fn trash_paths(emulator: &Emulator) -> Vec<String> {
    every_path(emulator)
        .into_iter()
        .filter(|path| path.starts_with(".Trash"))
        .collect()
}

#[test]
fn gio_trash_deletes_the_record_and_gio_restore_brings_it_back() {
    let emulator = Emulator::start(&[]);
    let mount = mount!(emulator);
    sh(
        "mkdir photos && echo sunset > photos/a.jpg && echo dawn > photos/b.jpg",
        &mount.mnt,
    );
    mount.wait_synced();
    let id = emulator.live()["photos/a.jpg"]["media_id"].clone();

    sh("gio trash photos/a.jpg", &mount.mnt);
    mount.wait_synced();
    // gio used the trash at the mount's top (as root: .Trash-0), not the home trash.
    let uid = String::from_utf8(run(Command::new("id").arg("-u")).stdout).unwrap();
    let trash = mount.backing.join(format!(".Trash-{}", uid.trim()));
    assert!(trash.join("files/a.jpg").is_file(), "not in {trash:?}");
    assert!(trash.join("info/a.jpg.trashinfo").is_file());
    assert!(
        is_deleted(&emulator, "photos/a.jpg"),
        "{:?}",
        emulator.records()
    );
    assert_eq!(trash_paths(&emulator), Vec::<String>::new());
    assert_eq!(emulator.live().keys().collect::<Vec<_>>(), ["photos/b.jpg"]);

    // `gio trash --restore` takes the trash:// URI that `--list` shows beside the original path;
    // both go through gvfsd-trash, which needs a session bus.
    let original = mount.mnt.join("photos/a.jpg");
    run(Command::new("dbus-run-session")
        .args(["--", "sh", "-ec"])
        .arg(
            "uri=$(gio trash --list | awk -F '\\t' -v p=\"$1\" '$2 == p { print $1 }')
             test -n \"$uri\" || { echo \"$1 is not in: $(gio trash --list)\"; exit 1; }
             gio trash --restore \"$uri\"",
        )
        .arg("restore")
        .arg(&original));
    mount.wait_synced();
    assert!(original.is_file());
    let live = emulator.live();
    assert_eq!(
        live.keys().collect::<Vec<_>>(),
        ["photos/a.jpg", "photos/b.jpg"]
    );
    // The service keeps one record per path: a create on the deleted one's path revives it.
    assert_eq!(live["photos/a.jpg"]["media_id"], id);
    assert_eq!(trash_paths(&emulator), Vec::<String>::new());
    assert_catalog_matches(&emulator, &mount.backing);
}

#[test]
fn a_file_managers_trash_renames_delete_and_restore_and_emptying_sends_nothing() {
    let emulator = Emulator::start(&[]);
    let mount = mount!(emulator);
    sh(
        "mkdir -p albums/.Trash-1000/files && echo a > a.jpg && echo b > albums/b.jpg \
         && echo nested > albums/.Trash-1000/files/c.jpg",
        &mount.mnt,
    );
    mount.wait_synced();
    assert_eq!(emulator.live().len(), 3);

    // What a file manager run by uid 1000 does, and `.Trash/UID`, the shared form.
    sh(
        "mkdir -p .Trash-1000/files .Trash-1000/info .Trash/1000/files .Trash/1000/info
         mv a.jpg .Trash-1000/files/
         printf '[Trash Info]\\nPath=a.jpg\\nDeletionDate=2026-11-30T12:00:00\\n' \
             > .Trash-1000/info/a.jpg.trashinfo
         mv albums/b.jpg .Trash/1000/files/
         printf '[Trash Info]\\nPath=albums/b.jpg\\nDeletionDate=2026-11-30T12:00:00\\n' \
             > .Trash/1000/info/b.jpg.trashinfo",
        &mount.mnt,
    );
    mount.wait_synced();
    assert!(is_deleted(&emulator, "a.jpg"));
    assert!(is_deleted(&emulator, "albums/b.jpg"));
    assert_eq!(trash_paths(&emulator), Vec::<String>::new());
    // A trash folder below the top is an ordinary folder.
    assert_eq!(
        emulator.live().keys().collect::<Vec<_>>(),
        ["albums/.Trash-1000/files/c.jpg"]
    );

    sh(
        "mv .Trash-1000/files/a.jpg a.jpg && rm .Trash-1000/info/a.jpg.trashinfo",
        &mount.mnt,
    );
    mount.wait_synced();
    assert!(emulator.live().contains_key("a.jpg"));

    let deletes = emulator.calls("delete");
    sh("rm -rf .Trash/1000/files/* .Trash/1000/info/*", &mount.mnt);
    mount.wait_synced();
    assert_eq!(emulator.calls("delete"), deletes, "emptying the trash");
    assert_eq!(trash_paths(&emulator), Vec::<String>::new());
    assert_catalog_matches(&emulator, &mount.backing);
}

/// Writes `doc` in four parts over about a second while the lock file `lock` exists, as an
/// office suite does: the lock is written when the document is opened and removed when it is
/// closed. Both outlive the mount's settle window (100 ms), so either would be sent if its name
/// were not ignored.
fn edit_under_a_lock(dir: &Path, lock: &str, doc: &str) {
    run(Command::new("python3").current_dir(dir).args([
        "-c",
        "import os, sys, time
lock, doc = sys.argv[1:]
with open(lock, 'w') as f:
    f.write('Maxlo Tester,host,host,30.11.2026 12:00,file:///home/tester/.config;\\n')
with open(doc, 'wb') as f:
    for part in range(4):
        f.write(os.urandom(4096))
        f.flush()
        time.sleep(0.3)
time.sleep(0.5)
os.remove(lock)",
        lock,
        doc,
    ]));
}

#[test]
fn office_lock_files_never_reach_the_service() {
    let emulator = Emulator::start(&[]);
    let mount = mount!(emulator);
    edit_under_a_lock(&mount.mnt, ".~lock.report.odt#", "report.odt");
    edit_under_a_lock(&mount.mnt, "~$report.docx", "report.docx");
    mount.wait_synced();
    assert_eq!(every_path(&emulator), ["report.odt", "report.docx"]);
    assert_eq!(emulator.calls("create"), 2);
    assert_eq!(emulator.calls("delete"), 0);
    assert_catalog_matches(&emulator, &mount.backing);
    // The control: removing a document (not a lock) is sent.
    std::fs::remove_file(mount.path("report.docx")).unwrap();
    mount.wait_synced();
    assert_eq!(emulator.calls("delete"), 1);
}

/// Saves `doc` as LibreOffice does: the new content under `temp` beside it, closed, then renamed
/// over it. The mount is let settle between the two (`status --wait`), as when the rename comes
/// long after the close: a temp name that were not ignored would be sent by then.
fn save_as_libreoffice(mount: &common::service::Mount, temp: &str, doc: &str, content: &str) {
    std::fs::write(mount.path(temp), content).unwrap();
    mount.wait_synced();
    std::fs::rename(mount.path(temp), mount.path(doc)).unwrap();
    mount.wait_synced();
}

#[test]
fn libreoffice_safe_save_temps_never_reach_the_service() {
    let emulator = Emulator::start(&[]);
    let mount = mount!(emulator);
    std::fs::write(mount.path("report.odt"), "first draft").unwrap();
    mount.wait_synced();
    let id = emulator.live()["report.odt"]["media_id"].clone();

    // `lu`, the process id, a base-36 counter (unotools' tempfile.cxx).
    save_as_libreoffice(&mount, "lu40321.tmp", "report.odt", "second draft");
    save_as_libreoffice(
        &mount,
        "lu40321a9z.tmp",
        "report.odt",
        "third draft, longer",
    );
    assert_eq!(every_path(&emulator), ["report.odt"]);
    let record = &emulator.live()["report.odt"];
    assert_eq!(record["media_id"], id, "the document's record was updated");
    assert_eq!(record["file_size"], "third draft, longer".len());
    assert_eq!(emulator.calls("delete"), 0);
    assert_catalog_matches(&emulator, &mount.backing);
    // The control: removing the document itself is sent.
    std::fs::remove_file(mount.path("report.odt")).unwrap();
    mount.wait_synced();
    assert_eq!(emulator.calls("delete"), 1);
}

#[test]
fn a_dropped_default_sends_what_it_matched() {
    let emulator = Emulator::start(&[]);
    let mount = mount!(emulator, &["--no-default-ignore", "libreoffice-lock"]);
    edit_under_a_lock(&mount.mnt, ".~lock.report.odt#", "report.odt");
    edit_under_a_lock(&mount.mnt, "~$report.docx", "report.docx");
    mount.wait_synced();
    // The same edits as above: the lock, now a file like any other, came and went.
    assert!(is_deleted(&emulator, ".~lock.report.odt#"));
    assert!(!every_path(&emulator).contains(&"~$report.docx".to_string()));
    assert!(emulator.live().contains_key("report.odt"));
}

#[test]
fn rsync_temp_files_stay_local() {
    let emulator = Emulator::start(&[]);
    let mount = mount!(emulator);
    let src = tempfile::tempdir().unwrap();
    sh(
        "head -c 3000000 /dev/urandom > IMG_0001.jpg && head -c 3000000 /dev/urandom > .hidden.raw",
        src.path(),
    );
    // At 3 MB/s each file stays under its temp name, `.IMG_0001.jpg.XXXXXX`, for about a second.
    run(Command::new("rsync")
        .args(["-a", "--bwlimit=3000"])
        .arg(format!("{}/", src.path().display()))
        .arg(&mount.mnt));
    mount.wait_synced();
    // The one exception docs/semantics.md allows: a temp name whose six random characters are
    // all of one kind (lowercase, uppercase or digits), about 1 in 90. rsync adds the leading dot
    // only to a name that has none.
    let allowed_temp = |path: &str| {
        ["IMG_0001.jpg", ".hidden.raw"].iter().any(|name| {
            let dotted = if name.starts_with('.') { "" } else { "." };
            path.strip_prefix(&format!("{dotted}{name}."))
                .is_some_and(|random| {
                    random.len() == 6
                        && [
                            u8::is_ascii_lowercase,
                            u8::is_ascii_uppercase,
                            u8::is_ascii_digit,
                        ]
                        .iter()
                        .any(|kind| random.bytes().all(|byte| kind(&byte)))
                })
        })
    };
    let temps: Vec<_> = every_path(&emulator)
        .into_iter()
        .filter(|path| !["IMG_0001.jpg", ".hidden.raw"].contains(&path.as_str()))
        .filter(|path| !allowed_temp(path))
        .collect();
    assert_eq!(temps, Vec::<String>::new());
    assert!(emulator.live().contains_key("IMG_0001.jpg"));
    assert!(emulator.live().contains_key(".hidden.raw"));
    assert_catalog_matches(&emulator, &mount.backing);
}

#[test]
fn the_config_file_drops_defaults_and_unknown_names_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("maxlofs.toml");
    std::fs::write(
        &config,
        "ignore = [\"Thumbs.db\"]\nno_default_ignore = [\"trash\", \"partial-download\"]\n",
    )
    .unwrap();
    let out = run(Command::new(BIN)
        .args(["mount", "/b", "/m", "--print-config", "--config"])
        .arg(&config));
    let settings: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        settings["no_default_ignore"],
        serde_json::json!(["trash", "partial-download"])
    );
    assert_eq!(settings["ignore"], serde_json::json!(["Thumbs.db"]));

    let refused = Command::new(BIN)
        .args(["mount", "/b", "/m", "--no-config", "--print-config"])
        .args(["--no-default-ignore", "thrash"])
        .output()
        .unwrap();
    assert_eq!(refused.status.code(), Some(2));
    let message = String::from_utf8_lossy(&refused.stderr);
    assert!(
        message.contains("possible values") && message.contains("trash"),
        "{message}"
    );
}
