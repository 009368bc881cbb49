//! Generated sequences of namespace and content operations on a small name space, run on a plain
//! directory and through a mount (each case in a fresh subdirectory of both): every operation's
//! result and the final trees must be equal. 16 cases per data path; `PROPTEST_CASES` overrides.

mod common;

use common::posix::{self, snapshot};
use common::DataPath;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use std::ffi::OsStr;
use std::path::Path;

/// Names the operations draw from: collisions, nesting and missing parents are the point.
const PATHS: &[&str] = &["a", "b", "c", "d", "d/a", "d/b", "e", "e/a", "d/e/a"];
const XATTRS: &[&str] = &["user.a", "user.b"];

#[derive(Clone, Debug)]
enum Op {
    Create(&'static str),
    Write(&'static str, Vec<u8>, u8),
    Append(&'static str, Vec<u8>),
    Truncate(&'static str, u8),
    Read(&'static str),
    Rename(&'static str, &'static str, u32),
    Link(&'static str, &'static str),
    Symlink(&'static str, &'static str),
    Unlink(&'static str),
    Mkdir(&'static str),
    Rmdir(&'static str),
    SetXattr(&'static str, &'static str, Vec<u8>),
    RemoveXattr(&'static str, &'static str),
}

fn op() -> impl Strategy<Value = Op> {
    let path = || proptest::sample::select(PATHS);
    let data = || proptest::collection::vec(any::<u8>(), 0..32);
    let rename_flags =
        proptest::sample::select(vec![0, libc::RENAME_NOREPLACE, libc::RENAME_EXCHANGE]);
    prop_oneof![
        path().prop_map(Op::Create),
        (path(), data(), any::<u8>()).prop_map(|(p, d, o)| Op::Write(p, d, o % 64)),
        (path(), data()).prop_map(|(p, d)| Op::Append(p, d)),
        (path(), any::<u8>()).prop_map(|(p, len)| Op::Truncate(p, len % 80)),
        path().prop_map(Op::Read),
        (path(), path(), rename_flags).prop_map(|(a, b, f)| Op::Rename(a, b, f)),
        (path(), path()).prop_map(|(a, b)| Op::Link(a, b)),
        (path(), path()).prop_map(|(target, at)| Op::Symlink(target, at)),
        path().prop_map(Op::Unlink),
        path().prop_map(Op::Mkdir),
        path().prop_map(Op::Rmdir),
        (path(), proptest::sample::select(XATTRS), data())
            .prop_map(|(p, n, v)| Op::SetXattr(p, n, v)),
        (path(), proptest::sample::select(XATTRS)).prop_map(|(p, n)| Op::RemoveXattr(p, n)),
    ]
}

/// Applies `op` under `root`; the result as text, so reads compare content too.
fn apply(root: &Path, op: &Op) -> String {
    let p = |name: &str| root.join(name);
    let outcome: Result<String, i32> = match op {
        Op::Create(a) => posix::touch(&p(a), libc::O_CREAT | libc::O_WRONLY, 0o644).map(show),
        Op::Write(a, data, offset) => {
            posix::write_file(&p(a), libc::O_WRONLY, data, i64::from(*offset)).map(show)
        }
        Op::Append(a, data) => {
            posix::write_file(&p(a), libc::O_WRONLY | libc::O_APPEND, data, 0).map(show)
        }
        Op::Truncate(a, len) => posix::truncate(&p(a), i64::from(*len)).map(show),
        Op::Read(a) => posix::read_file(&p(a)).map(|data| format!("{data:?}")),
        Op::Rename(a, b, flags) => posix::rename(&p(a), &p(b), *flags).map(show),
        Op::Link(a, b) => posix::link(&p(a), &p(b)).map(show),
        Op::Symlink(target, at) => posix::symlink(OsStr::new(target), &p(at)).map(show),
        Op::Unlink(a) => posix::unlink(&p(a)).map(show),
        Op::Mkdir(a) => posix::mkdir(&p(a), 0o755).map(show),
        Op::Rmdir(a) => posix::rmdir(&p(a)).map(show),
        Op::SetXattr(a, name, value) => posix::setxattr(&p(a), name, value, 0).map(show),
        Op::RemoveXattr(a, name) => posix::removexattr(&p(a), name).map(show),
    };
    format!("{op:?} -> {outcome:?}")
}

fn show(value: i64) -> String {
    value.to_string()
}

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(16)
}

#[test]
fn generated_sequences_match_a_plain_directory() {
    for data_path in DataPath::ALL {
        let Some(mount) = data_path.mount_or_skip("generated_sequences") else {
            return;
        };
        let native = tempfile::tempdir().unwrap();
        let case = std::cell::Cell::new(0);
        let config = Config {
            cases: cases(),
            failure_persistence: None,
            ..Config::default()
        };
        let mut runner = TestRunner::new(config);
        let result = runner.run(&proptest::collection::vec(op(), 1..40), |ops| {
            case.set(case.get() + 1);
            let name = format!("case-{}", case.get());
            let (want_root, got_root) = (native.path().join(&name), mount.mountpoint.join(&name));
            posix::mkdir(&want_root, 0o755).unwrap();
            posix::mkdir(&got_root, 0o755).unwrap();
            for op in &ops {
                let (want, got): (String, String) = (apply(&want_root, op), apply(&got_root, op));
                prop_assert_eq!(want, got, "{:?}", data_path);
            }
            let want_tree = snapshot(&want_root);
            prop_assert_eq!(&want_tree, &snapshot(&got_root), "{:?}", data_path);
            prop_assert_eq!(&want_tree, &snapshot(&mount.backing.join(&name)));
            Ok(())
        });
        if let Err(e) = result {
            panic!("{data_path:?}: {e}");
        }
        mount.unmount();
    }
}

/// Checks the helper itself can fail: a mismatch must be reported, not swallowed.
#[test]
fn outcomes_differ_when_trees_differ() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    posix::mkdir(&a, 0o755).unwrap();
    posix::mkdir(&b, 0o755).unwrap();
    posix::mkdir(&a.join("d"), 0o755).unwrap();
    let op = Op::Create("d/a");
    assert_ne!(apply(&a, &op), apply(&b, &op));
}
