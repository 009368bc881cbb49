//! `maxlofs hash` as a user runs it: the real binary on real files.

use std::path::Path;
use std::process::{Command, Output};

fn maxlofs_hash(args: &[&Path]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_maxlofs"))
        .arg("hash")
        .args(args)
        .output()
        .expect("run maxlofs")
}

fn text(bytes: &[u8]) -> &str {
    std::str::from_utf8(bytes).expect("UTF-8 output")
}

#[test]
fn prints_hash_and_path_per_file_like_sha256sum() {
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("empty");
    let hello = dir.path().join("hello world.txt");
    std::fs::write(&empty, b"").unwrap();
    std::fs::write(&hello, b"hello").unwrap();

    let out = maxlofs_hash(&[&empty, &hello]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        text(&out.stdout),
        format!(
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855  {}\n\
             2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824  {}\n",
            empty.display(),
            hello.display()
        )
    );
    assert_eq!(text(&out.stderr), "");
}

#[test]
fn missing_files_and_directories_are_reported_and_the_rest_still_hashed() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing");
    let file = dir.path().join("file");
    std::fs::write(&file, b"hello").unwrap();

    let out = maxlofs_hash(&[&missing, dir.path(), &file]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert_eq!(
        text(&out.stdout),
        format!(
            "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824  {}\n",
            file.display()
        )
    );
    let stderr: Vec<&str> = text(&out.stderr).lines().collect();
    assert_eq!(stderr.len(), 2, "{stderr:?}");
    assert!(
        stderr[0].starts_with(&format!("maxlofs: hash: {}: ", missing.display()))
            && stderr[0].contains("No such file or directory"),
        "{stderr:?}"
    );
    assert!(
        stderr[1].starts_with(&format!("maxlofs: hash: {}: ", dir.path().display()))
            && stderr[1].contains("Is a directory"),
        "{stderr:?}"
    );
}

#[test]
fn single_part_hash_equals_sha256sum() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("data");
    let content: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7 % 256) as u8).collect();
    std::fs::write(&path, content).unwrap();

    let ours = maxlofs_hash(&[&path]);
    let theirs = Command::new("sha256sum").arg(&path).output().unwrap();
    assert!(ours.status.success() && theirs.status.success());
    assert_eq!(text(&ours.stdout), text(&theirs.stdout));
}

/// A name holding a newline, a carriage return or a backslash is written as GNU sha256sum writes
/// it: the line starts with `\` and the name has `\n`, `\r` and `\\`, so one file stays one line
/// (it used to print the newline, making two lines of one file).
#[test]
fn names_with_newlines_are_escaped_like_sha256sum() {
    let dir = tempfile::tempdir().unwrap();
    for name in ["a\nb", "c\rd", "e\\f", "plain"] {
        let path = dir.path().join(name);
        std::fs::write(&path, b"x").unwrap();
        let ours = maxlofs_hash(&[&path]);
        let theirs = Command::new("sha256sum").arg(&path).output().unwrap();
        assert!(ours.status.success() && theirs.status.success());
        assert_eq!(text(&ours.stdout), text(&theirs.stdout), "{name:?}");
        assert_eq!(text(&ours.stdout).lines().count(), 1, "{name:?}");
    }
    let path = dir.path().join("a\nb");
    let line = text(&maxlofs_hash(&[&path]).stdout).to_string();
    let hash = "2d711642b726b04401627ca9fbac32f5c8530fb1903cc4db02258717921a4881";
    assert_eq!(line, format!("\\{hash}  {}/a\\nb\n", dir.path().display()));
}
