//! What to do about one path: a pure function of what a look at it found (the file now, the index
//! entry, any unsure note, the hint of the marks, whether a writer holds it open). No I/O, no
//! clock: every rule of what reaches the service is here, and the executor only carries it out.

use super::failure::Step;
use super::index::{IndexEntry, Unsure};
use super::local::FileStat;
use super::queue::Hint;
use maxlofs_api::{MediaId, MediaRecord, MediaState};

/// What the path holds, as far as the catalog is concerned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Local {
    /// Nothing the catalog shows: no entry at the path, a directory, a symlink, fifo, socket or
    /// device, or a name that stays local (ignored, trash).
    Absent,
    /// A regular file, with its content hash once it has been taken.
    File {
        stat: FileStat,
        hash: Option<String>,
    },
}

/// Whether the service holds the content of a file's hash, as far as this look knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Content {
    /// Not known: it goes up before any record names it.
    Unknown,
    /// The service holds it (uploaded, or it answered `skip_upload`).
    Held,
    /// Records only: `--no-upload`, an encrypted grant, or uploads disabled by the service.
    NotSent,
}

/// Everything a decision depends on.
#[derive(Clone, Copy, Debug)]
pub struct Facts<'a> {
    pub local: &'a Local,
    pub entry: Option<&'a IndexEntry>,
    pub unsure: Option<&'a Unsure>,
    pub hint: Hint,
    /// A handle open for writing holds the file: it is not complete yet.
    pub writing: bool,
    /// `--no-delete`: records of vanished files stay on the service.
    pub no_delete: bool,
    /// Whether the content of the file's hash is on the service.
    pub content: Content,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// The record already shows the path, or there is nothing to send.
    Nothing,
    /// A writer holds the file open; the release of its last writer marks the path again.
    WaitForWriter,
    /// Nothing can be decided before the content is hashed.
    Hash,
    /// The record shows this content already: only the index entry is rewritten (the inode or
    /// ctime moved, as after a rename onto the path).
    Remember {
        media_id: MediaId,
    },
    /// The file's content goes up first: a record never names content the service lacks.
    Upload,
    Update {
        media_id: MediaId,
    },
    Create,
    Delete {
        media_id: MediaId,
    },
    /// A create's answer was lost and the file is gone: create again to learn the record's id
    /// (stored at once), then delete it.
    FindAndDelete,
    /// `--no-delete`: forget the entry or note without telling the service.
    Forget,
}

pub fn decide(facts: Facts<'_>) -> Action {
    match facts.local {
        Local::Absent => match (facts.entry, facts.unsure) {
            (None, None) => Action::Nothing,
            _ if facts.no_delete => Action::Forget,
            (Some(entry), _) => Action::Delete {
                media_id: entry.media_id,
            },
            (None, Some(unsure)) => match unsure.media_id {
                Some(media_id) => Action::Delete { media_id },
                None => Action::FindAndDelete,
            },
        },
        Local::File { stat, hash } => {
            if facts.writing {
                return Action::WaitForWriter;
            }
            if let Some(entry) = facts.entry {
                // Only ctime moved (rename, chmod, link): nothing the record shows has changed.
                // Unless its content is not known to be up (sent with no content: records only
                // then, or made before uploads existed) and uploads are on: it goes up now, and
                // the entry then says so.
                let backfill = !entry.content_up && facts.content != Content::NotSent;
                if facts.hint == Hint::Meta && same_content(entry, stat) && !backfill {
                    return Action::Nothing;
                }
            }
            let Some(hash) = hash else {
                return Action::Hash;
            };
            // The content goes up before a record names it: before a create, before an update
            // to another hash, and for a record whose content is not known to be up. An update
            // that keeps a hash known to be up (times only) needs nothing more; the record
            // keeps naming the old content until the new one is up.
            let known_up = facts
                .entry
                .is_some_and(|entry| entry.hash == *hash && entry.content_up);
            if facts.content == Content::Unknown && !known_up {
                return Action::Upload;
            }
            match facts.entry {
                Some(entry)
                    if entry.hash == *hash
                        && entry.size == stat.size
                        && entry.mtime_ns == stat.mtime_ns =>
                {
                    Action::Remember {
                        media_id: entry.media_id,
                    }
                }
                Some(entry) => Action::Update {
                    media_id: entry.media_id,
                },
                // A delete of this path's record is not acknowledged yet and the file is back:
                // the record is updated (undeleted if the delete went through), keeping its id.
                None => match facts.unsure.and_then(|u| u.media_id) {
                    Some(media_id) => Action::Update { media_id },
                    None => Action::Create,
                },
            }
        }
    }
}

/// What follows a create's 409, which names the record the path already has.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AfterConflict {
    /// The record is taken as this path's, as it is.
    Adopt,
    /// The record is taken as this path's, and updated (undeleted) to show the file.
    AdoptAndUpdate,
    /// The create was sent only to find a live record (`FindAndDelete`), and the record is
    /// deleted: there is none to delete.
    NoLiveRecord,
}

/// What a 409 to the create of `step` (`Create`, or the `Find` of `FindAndDelete`) leads to;
/// `sent`: the state the create asked for.
pub fn after_conflict(step: Step, record: &MediaRecord, sent: &MediaState) -> AfterConflict {
    match step {
        Step::Find if record.is_deleted => AfterConflict::NoLiveRecord,
        Step::Find => AfterConflict::Adopt,
        // Another device's record, or our own earlier create whose answer was lost: it is made
        // to show the local file.
        _ if record.is_deleted || record.state() != *sent => AfterConflict::AdoptAndUpdate,
        _ => AfterConflict::Adopt,
    }
}

/// What stat tells of a file's content: its inode, size and mtime.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ContentKey {
    ino: u64,
    size: u64,
    mtime_ns: i128,
}

impl From<&FileStat> for ContentKey {
    fn from(stat: &FileStat) -> Self {
        ContentKey {
            ino: stat.ino,
            size: stat.size,
            mtime_ns: stat.mtime_ns,
        }
    }
}

impl From<&IndexEntry> for ContentKey {
    fn from(entry: &IndexEntry) -> Self {
        ContentKey {
            ino: entry.ino,
            size: entry.size,
            mtime_ns: entry.mtime_ns,
        }
    }
}

/// The one "unchanged": a file whose key is the one recorded (in its index entry, or when it was
/// hashed) holds the content recorded with it, as far as stat can tell.
pub fn same_content(recorded: impl Into<ContentKey>, now: impl Into<ContentKey>) -> bool {
    recorded.into() == now.into()
}

#[cfg(test)]
mod tests {
    use super::*;

    const HASH: &str = "aa";

    fn stat() -> FileStat {
        FileStat {
            dev: 1,
            ino: 5,
            size: 3,
            mtime_ns: 100,
            ctime_ns: 200,
        }
    }

    fn entry() -> IndexEntry {
        IndexEntry {
            media_id: 9,
            hash: HASH.into(),
            size: 3,
            mtime_ns: 100,
            ctime_ns: 200,
            ino: 5,
            content_up: true,
        }
    }

    fn file(hash: Option<&str>) -> Local {
        Local::File {
            stat: stat(),
            hash: hash.map(str::to_string),
        }
    }

    fn unsure(media_id: Option<MediaId>) -> Unsure {
        Unsure {
            media: None,
            media_id,
        }
    }

    fn facts<'a>(
        local: &'a Local,
        entry: Option<&'a IndexEntry>,
        unsure: Option<&'a Unsure>,
    ) -> Facts<'a> {
        Facts {
            local,
            entry,
            unsure,
            hint: Hint::Content,
            writing: false,
            no_delete: false,
            content: Content::Held,
        }
    }

    #[test]
    fn new_content_goes_up_before_a_create_or_an_update_names_it() {
        let entry = entry();
        let note = unsure(Some(4));
        let new = file(Some("bb"));
        for (entry, unsure) in [(Some(&entry), None), (None, None), (None, Some(&note))] {
            let mut f = facts(&new, entry, unsure);
            f.content = Content::Unknown;
            assert_eq!(decide(f), Action::Upload, "{entry:?} {unsure:?}");
            // Once it is held, or when records only are sent, the record follows.
            f.content = Content::Held;
            assert_ne!(decide(f), Action::Upload);
            f.content = Content::NotSent;
            assert_ne!(decide(f), Action::Upload);
        }
    }

    #[test]
    fn a_record_that_keeps_its_hash_needs_no_upload() {
        let entry = entry();
        let touched = Local::File {
            stat: FileStat {
                mtime_ns: 101,
                ..stat()
            },
            hash: Some(HASH.into()),
        };
        let mut f = facts(&touched, Some(&entry), None);
        f.content = Content::Unknown;
        assert_eq!(decide(f), Action::Update { media_id: 9 });
        let same = file(Some(HASH));
        let mut f = facts(&same, Some(&entry), None);
        f.content = Content::Unknown;
        assert_eq!(decide(f), Action::Remember { media_id: 9 });
        // Nothing is read before the hash is known, whatever the content's state.
        let unhashed = file(None);
        let mut f = facts(&unhashed, None, None);
        f.content = Content::Unknown;
        assert_eq!(decide(f), Action::Hash);
    }

    #[test]
    fn a_record_whose_content_is_not_known_up_gets_it_once_uploads_are_on() {
        let entry = IndexEntry {
            content_up: false,
            ..entry()
        };
        // A metadata mark on unchanged content looks on, to the hash and the upload.
        let unhashed = file(None);
        let mut f = facts(&unhashed, Some(&entry), None);
        f.hint = Hint::Meta;
        f.content = Content::Unknown;
        assert_eq!(decide(f), Action::Hash);
        let same = file(Some(HASH));
        let mut f = facts(&same, Some(&entry), None);
        f.hint = Hint::Meta;
        f.content = Content::Unknown;
        assert_eq!(decide(f), Action::Upload);
        // Once it is up, only the index entry is written (to say so).
        f.content = Content::Held;
        assert_eq!(decide(f), Action::Remember { media_id: 9 });
        // Records only: nothing is read or sent.
        for local in [&unhashed, &same] {
            let mut f = facts(local, Some(&entry), None);
            f.hint = Hint::Meta;
            f.content = Content::NotSent;
            assert_eq!(decide(f), Action::Nothing);
        }
    }

    #[test]
    fn unchanged_means_the_same_inode_size_and_mtime_whatever_ctime_says() {
        let entry = entry();
        assert!(same_content(&entry, &stat()));
        let renamed = FileStat {
            ctime_ns: 300,
            ..stat()
        };
        assert!(same_content(&entry, &renamed));
        assert!(same_content(&stat(), &renamed));
        for other in [
            FileStat { ino: 6, ..stat() },
            FileStat { size: 4, ..stat() },
            FileStat {
                mtime_ns: 101,
                ..stat()
            },
        ] {
            assert!(!same_content(&entry, &other), "{other:?}");
            assert!(!same_content(&stat(), &other), "{other:?}");
        }
    }

    #[test]
    fn a_409_is_adopted_updated_where_it_differs_and_found_only_when_live() {
        let sent = MediaState {
            file_hash: HASH.into(),
            file_size: 3,
            ctime: "2020-01-01T00:00:00.000Z".into(),
            mtime: "2020-01-01T00:00:00.000Z".into(),
        };
        let record = |state: &MediaState, is_deleted| MediaRecord {
            media_id: 4,
            media_path: "p".into(),
            file_hash: state.file_hash.clone(),
            file_size: state.file_size,
            ctime: state.ctime.clone(),
            mtime: state.mtime.clone(),
            last_updated_user_id: None,
            last_updated_device_id: None,
            last_updated: "2020-01-01T00:00:00.000Z".into(),
            is_deleted,
        };
        let other = MediaState {
            file_hash: "bb".into(),
            ..sent.clone()
        };
        let (same, differs) = (record(&sent, false), record(&other, false));
        let (deleted, deleted_same) = (record(&other, true), record(&sent, true));
        let after = |step, record: &MediaRecord| after_conflict(step, record, &sent);
        assert_eq!(after(Step::Create, &same), AfterConflict::Adopt);
        for record in [&differs, &deleted, &deleted_same] {
            assert_eq!(after(Step::Create, record), AfterConflict::AdoptAndUpdate);
        }
        assert_eq!(after(Step::Find, &differs), AfterConflict::Adopt);
        assert_eq!(after(Step::Find, &deleted), AfterConflict::NoLiveRecord);
    }

    #[test]
    fn nothing_for_an_absent_path_without_entry_or_note() {
        assert_eq!(decide(facts(&Local::Absent, None, None)), Action::Nothing);
    }

    #[test]
    fn an_absent_path_with_an_entry_is_deleted_by_its_id() {
        let entry = entry();
        assert_eq!(
            decide(facts(&Local::Absent, Some(&entry), None)),
            Action::Delete { media_id: 9 }
        );
    }

    #[test]
    fn an_unacknowledged_delete_is_retried_as_a_delete_never_a_create() {
        let note = unsure(Some(4));
        assert_eq!(
            decide(facts(&Local::Absent, None, Some(&note))),
            Action::Delete { media_id: 4 }
        );
    }

    #[test]
    fn a_lost_create_of_a_vanished_file_is_found_then_deleted() {
        let note = unsure(None);
        assert_eq!(
            decide(facts(&Local::Absent, None, Some(&note))),
            Action::FindAndDelete
        );
    }

    #[test]
    fn no_delete_forgets_instead() {
        let (entry, note) = (entry(), unsure(None));
        let mut f = facts(&Local::Absent, Some(&entry), None);
        f.no_delete = true;
        assert_eq!(decide(f), Action::Forget);
        let mut f = facts(&Local::Absent, None, Some(&note));
        f.no_delete = true;
        assert_eq!(decide(f), Action::Forget);
    }

    #[test]
    fn a_file_open_for_writing_waits_whatever_else_holds() {
        let entry = entry();
        for local in [file(None), file(Some("bb"))] {
            let mut f = facts(&local, Some(&entry), None);
            f.writing = true;
            assert_eq!(decide(f), Action::WaitForWriter);
            let mut f = facts(&local, None, None);
            f.writing = true;
            assert_eq!(decide(f), Action::WaitForWriter);
        }
    }

    #[test]
    fn a_metadata_mark_on_unchanged_content_sends_nothing_and_hashes_nothing() {
        let (entry, local) = (entry(), file(None));
        let mut f = facts(&local, Some(&entry), None);
        f.hint = Hint::Meta;
        assert_eq!(decide(f), Action::Nothing);
    }

    #[test]
    fn a_content_mark_hashes_first() {
        let (entry, local) = (entry(), file(None));
        assert_eq!(decide(facts(&local, Some(&entry), None)), Action::Hash);
        assert_eq!(decide(facts(&local, None, None)), Action::Hash);
    }

    #[test]
    fn the_same_hash_size_and_mtime_is_only_remembered() {
        let (entry, local) = (entry(), file(Some(HASH)));
        assert_eq!(
            decide(facts(&local, Some(&entry), None)),
            Action::Remember { media_id: 9 }
        );
    }

    #[test]
    fn other_content_or_times_update_the_record() {
        let entry = entry();
        assert_eq!(
            decide(facts(&file(Some("bb")), Some(&entry), None)),
            Action::Update { media_id: 9 }
        );
        let touched = Local::File {
            stat: FileStat {
                mtime_ns: 101,
                ..stat()
            },
            hash: Some(HASH.into()),
        };
        assert_eq!(
            decide(facts(&touched, Some(&entry), None)),
            Action::Update { media_id: 9 }
        );
    }

    #[test]
    fn a_new_file_is_created_even_after_a_lost_create_answer() {
        let (local, note) = (file(Some(HASH)), unsure(None));
        assert_eq!(decide(facts(&local, None, None)), Action::Create);
        assert_eq!(decide(facts(&local, None, Some(&note))), Action::Create);
    }

    #[test]
    fn a_file_back_before_its_delete_was_acknowledged_updates_that_record() {
        let (local, note) = (file(Some(HASH)), unsure(Some(4)));
        assert_eq!(
            decide(facts(&local, None, Some(&note))),
            Action::Update { media_id: 4 }
        );
    }
}
