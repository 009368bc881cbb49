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
