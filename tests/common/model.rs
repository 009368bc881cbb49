//! A reference model of a directory tree and random operations on it, for model-based tests
//! (like mountpoint-s3's reftests): each `Op` is resolved against the model's current state
//! (indices pick among what exists), carried out on a real tree (a mount) when the model says it
//! is valid, and mirrored in the model. `Model::assert_tree` then compares the real tree with it.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::CString;
use std::fmt;
use std::io::{self, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};

use proptest::collection::vec;
use proptest::prelude::*;

/// Names for files and directories alike, so that operations collide.
pub const NAMES: [&str; 5] = ["a", "b.jpg", "c", "d.txt", "e"];
/// Deepest directory the model makes with mkdir.
pub const MAX_DEPTH: usize = 3;

/// File content, described by a length and a seed (generated on use).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Data {
    pub len: u32,
    pub seed: u8,
}

impl fmt::Debug for Data {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Data {{ len: {}, seed: {} }}", self.len, self.seed)
    }
}

impl Data {
    pub fn bytes(&self) -> Vec<u8> {
        (0..self.len)
            .map(|i| self.seed.wrapping_add((i.wrapping_mul(31) % 251) as u8) ^ (i >> 8) as u8)
            .collect()
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SaveStyle {
    /// Write `.NAME.tmpN`, rename it over NAME (sed -i, rsync, LibreOffice).
    TempRename,
    /// vim with `backupcopy=no`: probe `4913`, rename NAME to `NAME~`, write NAME, remove `NAME~`.
    Vim,
    /// Write an ignored temp name (`.goutputstream-N`), rename it over NAME (gedit).
    IgnoredTemp,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// Create or overwrite (O_TRUNC) DIR/NAME.
    Create {
        dir: u8,
        name: u8,
        data: Data,
    },
    /// pwrite at an offset (may leave a hole past the end).
    Write {
        file: u8,
        offset: u32,
        data: Data,
    },
    Append {
        file: u8,
        data: Data,
    },
    Truncate {
        file: u8,
        len: u32,
    },
    /// utimensat to a fixed time.
    Utime {
        file: u8,
        secs: u32,
    },
    /// Rename a file to DIR/NAME, over an existing file too.
    Rename {
        file: u8,
        dir: u8,
        name: u8,
    },
    /// Rename a directory to DIR/NAME, over an existing empty directory too.
    RenameDir {
        src: u8,
        dir: u8,
        name: u8,
    },
    /// renameat2(RENAME_EXCHANGE) of two entries (files or directories).
    Exchange {
        a: u8,
        b: u8,
    },
    Unlink {
        file: u8,
    },
    Link {
        file: u8,
        dir: u8,
        name: u8,
    },
    Mkdir {
        dir: u8,
        name: u8,
    },
    /// rmdir of an empty directory.
    Rmdir {
        dir: u8,
    },
    /// rm -r of a directory.
    RemoveTree {
        dir: u8,
    },
    SafeSave {
        file: u8,
        data: Data,
        style: SaveStyle,
    },
    Sleep {
        ms: u8,
    },
    /// Unmount (the daemon drains and exits) and mount again. Carried out by the case runner;
    /// the model skips it.
    Remount,
    /// Open a file for writing and keep the handle open across later operations (at most
    /// three); it follows the inode through renames and unlinks.
    Hold {
        file: u8,
    },
    /// pwrite through a held handle.
    WriteHeld {
        handle: u8,
        offset: u32,
        data: Data,
    },
    /// Close a held handle.
    Release {
        handle: u8,
    },
    /// kill -9 of the daemon and mount again: whatever was queued is caught up by reconcile.
    /// Carried out by the case runner.
    Kill,
}

pub fn data() -> impl Strategy<Value = Data> {
    (
        prop_oneof![6 => 0u32..300, 2 => 300u32..20_000, 1 => 20_000u32..300_000],
        any::<u8>(),
    )
        .prop_map(|(len, seed)| Data { len, seed })
}

pub fn op() -> impl Strategy<Value = Op> {
    let idx = any::<u8>;
    prop_oneof![
        6 => (idx(), idx(), data()).prop_map(|(dir, name, data)| Op::Create { dir, name, data }),
        3 => (idx(), 0u32..4000, data()).prop_map(|(file, offset, data)| Op::Write { file, offset, data }),
        2 => (idx(), data()).prop_map(|(file, data)| Op::Append { file, data }),
        2 => (idx(), 0u32..4000).prop_map(|(file, len)| Op::Truncate { file, len }),
        2 => (idx(), 0u32..2_000_000_000).prop_map(|(file, secs)| Op::Utime { file, secs }),
        3 => (idx(), idx(), idx()).prop_map(|(file, dir, name)| Op::Rename { file, dir, name }),
        2 => (idx(), idx(), idx()).prop_map(|(src, dir, name)| Op::RenameDir { src, dir, name }),
        1 => (idx(), idx()).prop_map(|(a, b)| Op::Exchange { a, b }),
        2 => idx().prop_map(|file| Op::Unlink { file }),
        2 => (idx(), idx(), idx()).prop_map(|(file, dir, name)| Op::Link { file, dir, name }),
        3 => (idx(), idx()).prop_map(|(dir, name)| Op::Mkdir { dir, name }),
        1 => idx().prop_map(|dir| Op::Rmdir { dir }),
        1 => idx().prop_map(|dir| Op::RemoveTree { dir }),
        3 => (idx(), data(), prop_oneof![
                Just(SaveStyle::TempRename),
                Just(SaveStyle::Vim),
                Just(SaveStyle::IgnoredTemp)
            ])
            .prop_map(|(file, data, style)| Op::SafeSave { file, data, style }),
        2 => any::<u8>().prop_map(|ms| Op::Sleep { ms }),
        1 => Just(Op::Remount),
        1 => Just(Op::Kill),
        2 => idx().prop_map(|file| Op::Hold { file }),
        3 => (idx(), 0u32..4000, data())
            .prop_map(|(handle, offset, data)| Op::WriteHeld { handle, offset, data }),
        2 => idx().prop_map(|handle| Op::Release { handle }),
    ]
}

pub fn ops(max: usize) -> impl Strategy<Value = Vec<Op>> {
    vec(op(), 1..max)
}

/// Exactly `n` operations (workloads).
pub fn ops_exact(n: usize) -> impl Strategy<Value = Vec<Op>> {
    vec(op(), n)
}

#[derive(Clone, Debug)]
pub struct InodeModel {
    pub data: Vec<u8>,
    /// Set by utime and not changed since; `None`: "some time", not checked.
    pub mtime: Option<i64>,
}

impl InodeModel {
    /// What `pwrite(bytes, offset)` does to the content: a gap before `offset` reads as zeros,
    /// and writing nothing changes no byte (the mtime is still unknown after).
    fn write_at(&mut self, offset: usize, bytes: &[u8]) {
        if !bytes.is_empty() {
            let end = offset + bytes.len();
            if self.data.len() < end {
                self.data.resize(end, 0);
            }
            self.data[offset..end].copy_from_slice(bytes);
        }
        self.mtime = None;
    }
}

/// The tree as it must be. Paths are relative; the root is "" and is not listed in `dirs`.
#[derive(Debug, Default)]
pub struct Model {
    pub dirs: BTreeSet<PathBuf>,
    pub files: BTreeMap<PathBuf, usize>,
    pub inodes: Vec<InodeModel>,
    /// Every path that was ever a regular file in the tree (so records may exist for it).
    pub ever: BTreeSet<PathBuf>,
    /// What was done, for failure messages.
    pub log: Vec<String>,
    temp_counter: u32,
    /// Handles held open for writing, with the inode each writes to.
    held: Vec<(std::fs::File, usize)>,
}

fn pick<T: Clone>(items: &[T], idx: u8) -> Option<T> {
    (!items.is_empty()).then(|| items[idx as usize % items.len()].clone())
}

fn name(idx: u8) -> &'static str {
    NAMES[idx as usize % NAMES.len()]
}

fn depth(path: &Path) -> usize {
    path.components().count()
}

fn rebase(path: &Path, from: &Path, to: &Path) -> Option<PathBuf> {
    path.strip_prefix(from).ok().map(|rest| {
        if rest.as_os_str().is_empty() {
            to.to_path_buf()
        } else {
            to.join(rest)
        }
    })
}

fn c_path(path: &Path) -> CString {
    CString::new(path.as_os_str().as_bytes()).unwrap()
}

/// Sets atime and mtime of `path` (no symlink following), like `touch -d`.
pub fn set_mtime(path: &Path, secs: i64) -> io::Result<()> {
    let time = libc::timespec {
        tv_sec: secs,
        tv_nsec: 123_000_000,
    };
    let times = [time, time];
    let path = c_path(path);
    // SAFETY: valid C string and array of two timespecs.
    let rc = unsafe {
        libc::utimensat(
            libc::AT_FDCWD,
            path.as_ptr(),
            times.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

pub fn rename_exchange(a: &Path, b: &Path) -> io::Result<()> {
    let (a, b) = (c_path(a), c_path(b));
    // SAFETY: valid C strings.
    let rc = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            a.as_ptr(),
            libc::AT_FDCWD,
            b.as_ptr(),
            libc::RENAME_EXCHANGE,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

impl Model {
    pub fn file_list(&self) -> Vec<PathBuf> {
        self.files.keys().cloned().collect()
    }

    /// The root ("") and every directory.
    pub fn dir_list(&self) -> Vec<PathBuf> {
        std::iter::once(PathBuf::new())
            .chain(self.dirs.iter().cloned())
            .collect()
    }

    fn is_dir(&self, path: &Path) -> bool {
        path.as_os_str().is_empty() || self.dirs.contains(path)
    }

    fn exists(&self, path: &Path) -> bool {
        self.is_dir(path) || self.files.contains_key(path)
    }

    fn is_empty_dir(&self, dir: &Path) -> bool {
        let below = |p: &&PathBuf| p.parent() == Some(dir);
        self.is_dir(dir)
            && !self.dirs.iter().any(|p| below(&p))
            && !self.files.keys().any(|p| below(&p))
    }

    fn new_inode(&mut self, data: Vec<u8>) -> usize {
        self.inodes.push(InodeModel { data, mtime: None });
        self.inodes.len() - 1
    }

    fn add_file(&mut self, path: PathBuf, inode: usize) {
        self.ever.insert(path.clone());
        self.files.insert(path, inode);
    }

    /// Moves everything at or below `from` to `to`.
    fn move_tree(&mut self, from: &Path, to: &Path) {
        let dirs: Vec<_> = self
            .dirs
            .iter()
            .filter(|d| d.starts_with(from))
            .cloned()
            .collect();
        for d in dirs {
            self.dirs.remove(&d);
            self.dirs.insert(rebase(&d, from, to).unwrap());
        }
        let files: Vec<_> = self
            .files
            .iter()
            .filter(|(p, _)| p.starts_with(from))
            .map(|(p, i)| (p.clone(), *i))
            .collect();
        for (p, _) in &files {
            self.files.remove(p);
        }
        for (p, i) in files {
            self.add_file(rebase(&p, from, to).unwrap(), i);
        }
    }

    /// Removes everything at or below `path`.
    fn remove_tree(&mut self, path: &Path) {
        self.dirs.retain(|d| !d.starts_with(path));
        self.files.retain(|p, _| !p.starts_with(path));
    }

    fn temp_name(&mut self, prefix: &str, suffix: &str) -> String {
        self.temp_counter += 1;
        format!("{prefix}{}{suffix}", self.temp_counter)
    }

    /// Carries out `op` under `root` if the model says it is valid, and mirrors it. `Ok(false)`:
    /// skipped (not valid in this state). An error is the real tree refusing a valid operation;
    /// the model is then unreliable (see `Model::scan`).
    pub fn apply(&mut self, root: &Path, op: &Op) -> io::Result<bool> {
        let done = self.apply_inner(root, op);
        match &done {
            Ok(true) => {}
            Ok(false) => return done,
            Err(err) => self.log.push(format!("  FAILED: {err}")),
        }
        done
    }

    fn note(&mut self, what: String) {
        self.log.push(what);
    }

    fn apply_inner(&mut self, root: &Path, op: &Op) -> io::Result<bool> {
        let files = self.file_list();
        let dirs = self.dir_list();
        match *op {
            Op::Create { dir, name: n, data } => {
                let path = pick(&dirs, dir).unwrap().join(name(n));
                if self.is_dir(&path) {
                    return Ok(false);
                }
                self.note(format!("create {path:?} {data:?}"));
                let bytes = data.bytes();
                std::fs::write(root.join(&path), &bytes)?;
                match self.files.get(&path) {
                    Some(&inode) => {
                        self.inodes[inode] = InodeModel {
                            data: bytes,
                            mtime: None,
                        }
                    }
                    None => {
                        let inode = self.new_inode(bytes);
                        self.add_file(path, inode);
                    }
                }
            }
            Op::Write { file, offset, data } => {
                let Some(path) = pick(&files, file) else {
                    return Ok(false);
                };
                let inode = self.files[&path];
                let offset = offset as usize % (self.inodes[inode].data.len() + 500);
                self.note(format!("write {path:?} at {offset} {data:?}"));
                let bytes = data.bytes();
                let handle = std::fs::OpenOptions::new()
                    .write(true)
                    .open(root.join(&path))?;
                handle.write_all_at(&bytes, offset as u64)?;
                drop(handle);
                self.inodes[inode].write_at(offset, &bytes);
            }
            Op::Append { file, data } => {
                let Some(path) = pick(&files, file) else {
                    return Ok(false);
                };
                self.note(format!("append {path:?} {data:?}"));
                let bytes = data.bytes();
                let mut handle = std::fs::OpenOptions::new()
                    .append(true)
                    .open(root.join(&path))?;
                handle.write_all(&bytes)?;
                drop(handle);
                let model = &mut self.inodes[self.files[&path]];
                model.data.extend_from_slice(&bytes);
                model.mtime = None;
            }
            Op::Truncate { file, len } => {
                let Some(path) = pick(&files, file) else {
                    return Ok(false);
                };
                let inode = self.files[&path];
                let len = len as usize % (self.inodes[inode].data.len() + 500);
                self.note(format!("truncate {path:?} to {len}"));
                let handle = std::fs::OpenOptions::new()
                    .write(true)
                    .open(root.join(&path))?;
                handle.set_len(len as u64)?;
                drop(handle);
                let model = &mut self.inodes[inode];
                model.data.resize(len, 0);
                model.mtime = None;
            }
            Op::Utime { file, secs } => {
                let Some(path) = pick(&files, file) else {
                    return Ok(false);
                };
                self.note(format!("utime {path:?} {secs}"));
                set_mtime(&root.join(&path), i64::from(secs))?;
                let inode = self.files[&path];
                self.inodes[inode].mtime = Some(i64::from(secs));
            }
            Op::Rename { file, dir, name: n } => {
                let Some(from) = pick(&files, file) else {
                    return Ok(false);
                };
                let to = pick(&dirs, dir).unwrap().join(name(n));
                if to == from || self.is_dir(&to) {
                    return Ok(false);
                }
                self.note(format!("rename {from:?} -> {to:?}"));
                std::fs::rename(root.join(&from), root.join(&to))?;
                let inode = self.files[&from];
                if self.files.get(&to) != Some(&inode) {
                    // (Renaming a hard link onto another of the same file does nothing.)
                    self.files.remove(&from);
                    self.add_file(to, inode);
                }
            }
            Op::RenameDir { src, dir, name: n } => {
                let Some(from) = pick(&self.dirs.iter().cloned().collect::<Vec<_>>(), src) else {
                    return Ok(false);
                };
                let parent = pick(&dirs, dir).unwrap();
                let to = parent.join(name(n));
                if to == from
                    || parent.starts_with(&from)
                    || self.files.contains_key(&to)
                    || (self.is_dir(&to) && !self.is_empty_dir(&to))
                {
                    return Ok(false);
                }
                self.note(format!("rename dir {from:?} -> {to:?}"));
                std::fs::rename(root.join(&from), root.join(&to))?;
                self.dirs.remove(&to);
                self.move_tree(&from, &to);
            }
            Op::Exchange { a, b } => {
                let all: Vec<PathBuf> =
                    self.dirs.iter().chain(self.files.keys()).cloned().collect();
                let (Some(a), Some(b)) = (pick(&all, a), pick(&all, b)) else {
                    return Ok(false);
                };
                if a.starts_with(&b) || b.starts_with(&a) {
                    return Ok(false);
                }
                self.note(format!("exchange {a:?} <-> {b:?}"));
                rename_exchange(&root.join(&a), &root.join(&b))?;
                let swap = PathBuf::from("\u{0}swap");
                self.move_tree(&a, &swap);
                self.move_tree(&b, &a);
                self.move_tree(&swap, &b);
                self.ever.retain(|p| !p.starts_with(&swap));
            }
            Op::Unlink { file } => {
                let Some(path) = pick(&files, file) else {
                    return Ok(false);
                };
                self.note(format!("unlink {path:?}"));
                std::fs::remove_file(root.join(&path))?;
                self.files.remove(&path);
            }
            Op::Link { file, dir, name: n } => {
                let Some(from) = pick(&files, file) else {
                    return Ok(false);
                };
                let to = pick(&dirs, dir).unwrap().join(name(n));
                if self.exists(&to) {
                    return Ok(false);
                }
                self.note(format!("link {from:?} -> {to:?}"));
                std::fs::hard_link(root.join(&from), root.join(&to))?;
                let inode = self.files[&from];
                self.add_file(to, inode);
            }
            Op::Mkdir { dir, name: n } => {
                let parent = pick(&dirs, dir).unwrap();
                let path = parent.join(name(n));
                if depth(&parent) >= MAX_DEPTH || self.exists(&path) {
                    return Ok(false);
                }
                self.note(format!("mkdir {path:?}"));
                std::fs::create_dir(root.join(&path))?;
                self.dirs.insert(path);
            }
            Op::Rmdir { dir } => {
                let empty: Vec<PathBuf> = self
                    .dirs
                    .iter()
                    .filter(|d| self.is_empty_dir(d))
                    .cloned()
                    .collect();
                let Some(path) = pick(&empty, dir) else {
                    return Ok(false);
                };
                self.note(format!("rmdir {path:?}"));
                std::fs::remove_dir(root.join(&path))?;
                self.dirs.remove(&path);
            }
            Op::RemoveTree { dir } => {
                let Some(path) = pick(&self.dirs.iter().cloned().collect::<Vec<_>>(), dir) else {
                    return Ok(false);
                };
                self.note(format!("rm -r {path:?}"));
                std::fs::remove_dir_all(root.join(&path))?;
                self.remove_tree(&path);
            }
            Op::SafeSave { file, data, style } => {
                let Some(path) = pick(&files, file) else {
                    return Ok(false);
                };
                let parent = path.parent().unwrap().to_path_buf();
                let base = path.file_name().unwrap().to_str().unwrap().to_string();
                let backup = parent.join(format!("{base}~"));
                if style == SaveStyle::Vim && self.exists(&backup) {
                    return Ok(false);
                }
                self.note(format!("safe-save {style:?} {path:?} {data:?}"));
                let bytes = data.bytes();
                match style {
                    SaveStyle::TempRename | SaveStyle::IgnoredTemp => {
                        let temp = parent.join(match style {
                            SaveStyle::TempRename => self.temp_name(&format!(".{base}.tmp"), ""),
                            _ => self.temp_name(".goutputstream-", ""),
                        });
                        std::fs::write(root.join(&temp), &bytes)?;
                        if style == SaveStyle::TempRename {
                            self.ever.insert(temp.clone());
                        }
                        std::fs::rename(root.join(&temp), root.join(&path))?;
                    }
                    SaveStyle::Vim => {
                        let probe = parent.join("4913");
                        if !self.exists(&probe) {
                            std::fs::write(root.join(&probe), b"")?;
                            std::fs::remove_file(root.join(&probe))?;
                        }
                        std::fs::rename(root.join(&path), root.join(&backup))?;
                        std::fs::write(root.join(&path), &bytes)?;
                        std::fs::remove_file(root.join(&backup))?;
                    }
                }
                let inode = self.new_inode(bytes);
                self.add_file(path, inode);
            }
            // Not the model's to do (see `reftest::run_case`).
            Op::Remount | Op::Kill => return Ok(false),
            Op::Hold { file } => {
                let Some(path) = pick(&files, file) else {
                    return Ok(false);
                };
                if self.held.len() >= 3 {
                    return Ok(false);
                }
                self.note(format!("hold {path:?} open for writing"));
                let handle = std::fs::OpenOptions::new()
                    .write(true)
                    .open(root.join(&path))?;
                self.held.push((handle, self.files[&path]));
            }
            Op::WriteHeld {
                handle,
                offset,
                data,
            } => {
                if self.held.is_empty() {
                    return Ok(false);
                }
                let which = handle as usize % self.held.len();
                let inode = self.held[which].1;
                let offset = offset as usize % (self.inodes[inode].data.len() + 500);
                self.note(format!("write held handle {which} at {offset} {data:?}"));
                let bytes = data.bytes();
                self.held[which].0.write_all_at(&bytes, offset as u64)?;
                self.inodes[inode].write_at(offset, &bytes);
            }
            Op::Release { handle } => {
                if self.held.is_empty() {
                    return Ok(false);
                }
                let which = handle as usize % self.held.len();
                self.note(format!("close held handle {which}"));
                self.held.remove(which);
            }
            Op::Sleep { ms } => {
                let ms = u64::from(ms) % 120;
                self.note(format!("sleep {ms} ms"));
                std::thread::sleep(std::time::Duration::from_millis(ms));
            }
        }
        Ok(true)
    }

    /// Closes every held handle (before unmounting, and before the checks).
    pub fn release_all(&mut self) {
        if !self.held.is_empty() {
            self.note(format!("close {} held handles", self.held.len()));
            self.held.clear();
        }
    }

    /// The model of a real tree as it is (mtimes unchecked), e.g. after an operation failed.
    pub fn scan(root: &Path) -> Model {
        let mut model = Model::default();
        let mut by_ino: BTreeMap<u64, usize> = BTreeMap::new();
        let mut stack = vec![PathBuf::new()];
        while let Some(dir) = stack.pop() {
            let Ok(entries) = std::fs::read_dir(root.join(&dir)) else {
                continue;
            };
            for entry in entries.flatten() {
                let rel = dir.join(entry.file_name());
                let Ok(meta) = std::fs::symlink_metadata(root.join(&rel)) else {
                    continue;
                };
                if meta.is_dir() {
                    model.dirs.insert(rel.clone());
                    stack.push(rel);
                } else if meta.is_file() {
                    let data = std::fs::read(root.join(&rel)).unwrap_or_default();
                    let inode = match by_ino.get(&meta.ino()) {
                        Some(&inode) => inode,
                        None => {
                            let inode = model.new_inode(data);
                            by_ino.insert(meta.ino(), inode);
                            inode
                        }
                    };
                    model.add_file(rel, inode);
                }
            }
        }
        model
    }

    /// Asserts the tree under `mnt` (read through it) is the model, and that `backing` has the
    /// same hard-link structure.
    pub fn assert_tree(&self, mnt: &Path, backing: &Path) {
        let real = Model::scan(mnt);
        let context = || format!("operations:\n{}", self.log.join("\n"));
        assert_eq!(real.dirs, self.dirs, "directories differ; {}", context());
        let real_files: BTreeSet<_> = real.files.keys().collect();
        let model_files: BTreeSet<_> = self.files.keys().collect();
        assert_eq!(real_files, model_files, "files differ; {}", context());
        let mut inode_of_ino: BTreeMap<u64, usize> = BTreeMap::new();
        for (path, &inode) in &self.files {
            let want = &self.inodes[inode];
            let got = &real.inodes[real.files[path]].data;
            assert!(
                got == &want.data,
                "content of {path:?} differs: {} bytes, want {}; {}",
                got.len(),
                want.data.len(),
                context()
            );
            let meta = std::fs::symlink_metadata(mnt.join(path)).unwrap();
            if let Some(secs) = want.mtime {
                assert_eq!(meta.mtime(), secs, "mtime of {path:?}; {}", context());
            }
            let ino = std::fs::symlink_metadata(backing.join(path)).unwrap().ino();
            let known = *inode_of_ino.entry(ino).or_insert(inode);
            assert_eq!(known, inode, "{path:?} is linked wrongly; {}", context());
        }
        let distinct: BTreeSet<_> = self.files.values().collect();
        assert_eq!(
            inode_of_ino.len(),
            distinct.len(),
            "hard links differ; {}",
            context()
        );
    }
}
