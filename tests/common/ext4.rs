//! A small ext4 filesystem in an image file, mounted through a loop device, whose blocks a test
//! damages while it is unmounted: a file's bytes change and its size, mtime and ctime do not, as
//! when a disk rots under a library (docs/semantics.md, "Scrub").
//!
//! Needs root, `mkfs.ext4` and `debugfs` (e2fsprogs) and loop devices. Without them `new` prints
//! a `SKIP` line and answers `None`, unless `MAXLOFS_REQUIRE_FUSE=1` (CI): then it panics.

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use tempfile::TempDir;

/// ext4's block size here, set at mkfs so that a file offset maps to a block and an offset in it.
const BLOCK: u64 = 4096;

pub struct Ext4Image {
    _dir: TempDir,
    image: PathBuf,
    /// Where the filesystem is mounted (while `mounted`).
    pub root: PathBuf,
    mounted: bool,
}

fn run(command: &mut Command) -> Result<String, String> {
    let out = command
        .output()
        .map_err(|err| format!("{command:?}: {err}"))?;
    if !out.status.success() {
        return Err(format!(
            "{command:?}: {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

impl Ext4Image {
    /// A fresh, mounted ext4 of `mib` MiB, or `None` (with a SKIP line) where one cannot be made.
    pub fn new(test: &str, mib: u64) -> Option<Ext4Image> {
        match Ext4Image::try_new(mib) {
            Ok(image) => Some(image),
            Err(why) if std::env::var_os("MAXLOFS_REQUIRE_FUSE").is_some() => {
                panic!("{test}: cannot make an ext4 image, and MAXLOFS_REQUIRE_FUSE is set: {why}")
            }
            Err(why) => {
                eprintln!("SKIP {test}: cannot make an ext4 image: {why}");
                None
            }
        }
    }

    fn try_new(mib: u64) -> Result<Ext4Image, String> {
        let dir = tempfile::tempdir().map_err(|err| err.to_string())?;
        let image = dir.path().join("disk.img");
        let root = dir.path().join("root");
        std::fs::create_dir(&root).map_err(|err| err.to_string())?;
        let file = std::fs::File::create(&image).map_err(|err| err.to_string())?;
        file.set_len(mib << 20).map_err(|err| err.to_string())?;
        // No inline data (the default), so every file's bytes live in data blocks.
        run(Command::new("mkfs.ext4")
            .args(["-q", "-F", "-b", &BLOCK.to_string()])
            .arg(&image))?;
        let mut made = Ext4Image {
            _dir: dir,
            image,
            root,
            mounted: false,
        };
        made.try_mount()?;
        Ok(made)
    }

    fn try_mount(&mut self) -> Result<(), String> {
        run(Command::new("mount")
            .args(["-t", "ext4", "-o", "loop"])
            .arg(&self.image)
            .arg(&self.root))?;
        self.mounted = true;
        Ok(())
    }

    pub fn mount(&mut self) {
        assert!(!self.mounted, "already mounted");
        self.try_mount().unwrap();
    }

    /// Unmounts, so that the image's blocks can be changed behind the filesystem's back.
    pub fn unmount(&mut self) {
        run(Command::new("umount").arg(&self.root)).unwrap();
        self.mounted = false;
    }

    /// Flips the low bit of the byte at `offset` of the file at `path` (relative to the
    /// filesystem's root), in the image's data block: no system call on the file, so its stat
    /// (ctime included) stays as it was. Only while unmounted.
    pub fn flip_byte(&self, path: &Path, offset: u64) {
        assert!(!self.mounted, "flip a byte only while unmounted");
        let request = format!("bmap /{} {}", path.display(), offset / BLOCK);
        let answer = run(Command::new("debugfs")
            .arg("-R")
            .arg(&request)
            .arg(&self.image))
        .unwrap();
        let block: u64 = answer
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("debugfs {request:?} answered {answer:?}"));
        assert!(block > 0, "{path:?} has no block at {offset}");
        let image = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&self.image)
            .unwrap();
        let at = block * BLOCK + offset % BLOCK;
        let mut byte = [0];
        image.read_exact_at(&mut byte, at).unwrap();
        byte[0] ^= 1;
        image.write_all_at(&byte, at).unwrap();
        image.sync_all().unwrap();
    }
}

impl Drop for Ext4Image {
    fn drop(&mut self) {
        if self.mounted {
            let _ = Command::new("umount").arg(&self.root).status();
        }
    }
}
