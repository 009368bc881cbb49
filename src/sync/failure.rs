//! The one failure policy: every error met while bringing a path in step, from the service or
//! from this machine, goes through `verdict`, which says what it means for that path.

use std::io;

use maxlofs_api::{ApiError, GrantId};

/// Why an `Unreadable` path (or a file that cannot be read) is not sent, as status shows it.
pub const UNREADABLE: &str = "permission denied to the daemon's user; looked at again after a \
                              chmod or chown through the mount, or at the next mount";

/// What a local I/O error says about the path it was met on: the one reading of an errno, for
/// observing a path, walking a folder and hashing a file alike.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Io {
    /// The path names nothing there now, or no longer the file looked at: a missing component
    /// (ENOENT), a file where a directory was expected (ENOTDIR), a symlink on the way (ELOOP),
    /// a way out of the tree (EXDEV), or something other than a regular file where one was
    /// opened ([`NotRegular`]). The event that did it marks the path again.
    Vanished,
    /// The daemon's user may not open or search it (EACCES, EPERM).
    Unreadable,
    /// Anything else: trouble, tried again with the path's backoff.
    Other,
}

/// Met opening a file to hash it when the path shows something else now (a directory, a
/// symlink, a fifo): the file looked at is gone from there.
#[derive(Debug, thiserror::Error)]
#[error("not a regular file")]
pub struct NotRegular;

/// The meaning of `err`, met on a path beneath the backing folder.
pub fn io_meaning(err: &io::Error) -> Io {
    match err.raw_os_error() {
        Some(libc::ENOENT | libc::ENOTDIR | libc::ELOOP | libc::EXDEV) => Io::Vanished,
        Some(libc::EACCES | libc::EPERM) => Io::Unreadable,
        Some(_) => Io::Other,
        None if err.get_ref().is_some_and(|inner| inner.is::<NotRegular>()) => Io::Vanished,
        None => Io::Other,
    }
}

/// What went wrong during a look at a path. The Display text is what status and the log show.
#[derive(Debug, thiserror::Error)]
pub enum Failure {
    #[error(transparent)]
    Api(#[from] ApiError),
    /// Local I/O trouble, with what was being done (`reading`, `opening`, ...).
    #[error("{what}: {source}")]
    Io {
        what: &'static str,
        #[source]
        source: io::Error,
    },
    /// The index could not be read or written.
    #[error("index: {0:#}")]
    Index(anyhow::Error),
    /// Other local trouble, in our own words (a task that died, a name that cannot be sent).
    #[error("{0}")]
    Local(String),
    /// The file changed while its content was read or sent: a normal race, not an error. The
    /// path is looked at again once it settles.
    #[error("changed while it was read or sent; looked at again once it settles")]
    Changed,
    /// The file went away while we looked; the event that removed it marks the path again.
    #[error("it went away while it was looked at")]
    Vanished,
    /// The daemon's user may not read the file, or look at its path (EACCES, EPERM).
    #[error("{}", UNREADABLE)]
    Unreadable,
    /// An answer that cannot be true, such as a create naming the record of another path:
    /// refused, never followed.
    #[error("{0}")]
    Untrue(String),
}

impl Failure {
    pub fn index(err: anyhow::Error) -> Failure {
        Failure::Index(err)
    }

    pub fn io(what: &'static str, source: io::Error) -> Failure {
        Failure::Io { what, source }
    }

    /// An error met opening or reading a file, as `io_meaning` reads it: a file gone or replaced
    /// meanwhile, or one the daemon may not read, is no trouble to retry.
    pub fn reading(what: &'static str, source: io::Error) -> Failure {
        match io_meaning(&source) {
            Io::Vanished => Failure::Vanished,
            Io::Unreadable => Failure::Unreadable,
            Io::Other => Failure::io(what, source),
        }
    }
}

/// The call that failed: the same answer means different things for different calls.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// Reading the file or the index, writing the index.
    Local,
    Create,
    Update,
    Delete,
    /// The create sent only to learn the id of a record whose create answer was lost.
    Find,
    /// `upload`: asking whether and where the content goes.
    Upload,
    /// The PUT of a whole object to its signed URL.
    ObjectPut,
    /// `s3_object` after a whole-object PUT.
    S3Object,
    /// `multipart`: starting a multipart upload.
    Multipart,
    /// The PUT of one part to its signed URL.
    PartPut,
    MultipartComplete,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// The call's purpose is met without it: the record is already gone (a delete's 404), or
    /// the path cannot have a record (a refused `Find`), or the file vanished meanwhile.
    Settled,
    /// The record is gone from the service (an update's 404): create a new one.
    CreateInstead,
    /// The file is still changing: looked at again once it settles, with no error reported.
    Again,
    /// Try again later, with this path's backoff.
    Retry { why: String },
    /// The key was refused: all sending stops until the keys change.
    Pause,
    /// The service refuses this path as it is: reported, and tried again on its next change.
    Fail { why: String },
    /// The daemon may not read it: reported, and looked at again when its permissions change
    /// (retrying would not help, and would keep `status --wait` from ever returning).
    Unreadable,
}

pub fn verdict(step: Step, failure: &Failure, grant: GrantId) -> Verdict {
    match failure {
        Failure::Vanished => Verdict::Settled,
        Failure::Changed => Verdict::Again,
        Failure::Unreadable => Verdict::Unreadable,
        Failure::Local(_) | Failure::Io { .. } | Failure::Index(_) => Verdict::Retry {
            why: failure.to_string(),
        },
        Failure::Untrue(message) => Verdict::Fail {
            why: message.clone(),
        },
        Failure::Api(err) if starts_over(step, err) => Verdict::Retry {
            why: match err {
                // Not the key: the URL.
                ApiError::Unauthorized => {
                    "the store refused a part's signed URL (403, expired?); asking for new URLs"
                        .to_string()
                }
                _ => format!(
                    "the store no longer takes this multipart upload ({err}); it starts over"
                ),
            },
        },
        Failure::Api(err) => match (err, step) {
            (ApiError::Transient(message) | ApiError::Transport { message, .. }, _) => {
                Verdict::Retry {
                    why: message.clone(),
                }
            }
            // The signed URL, not the key, was refused: it expired, and a new one is asked for.
            (ApiError::Unauthorized, Step::ObjectPut) => Verdict::Retry {
                why: "the store refused the signed URL (403, expired?); asking for a new one"
                    .into(),
            },
            // `no_active_file`: the service will not take this content now. The record waits
            // for it (a record never names content the service lacks).
            (ApiError::BadRequest { status: 409, .. }, Step::Multipart) => Verdict::Retry {
                why: format!("{err}; the service takes no upload of it now"),
            },
            (ApiError::Unauthorized, _) => Verdict::Pause,
            (ApiError::NotFound, Step::Update) => Verdict::CreateInstead,
            (ApiError::NotFound, Step::Delete) => Verdict::Settled,
            (ApiError::NotFound, _) => Verdict::Fail {
                why: format!("grant {grant} not found (404)"),
            },
            // Refused: that create can never have made a record either.
            (ApiError::BadRequest { .. }, Step::Find) => Verdict::Settled,
            (ApiError::BadRequest { .. } | ApiError::SignedLength { .. }, _) => Verdict::Fail {
                why: err.to_string(),
            },
        },
    }
}

/// Whether a failed call of a multipart upload means its signed URLs are of no more use (a URL
/// refused or gone, or the assembly refused): a new `multipart` is asked for. Only a refused
/// URL keeps the parts done, should the service answer the same upload again.
pub fn starts_over(step: Step, err: &ApiError) -> bool {
    match step {
        Step::PartPut => matches!(err, ApiError::Unauthorized | ApiError::NotFound),
        Step::MultipartComplete => {
            matches!(err, ApiError::NotFound | ApiError::BadRequest { .. })
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api(err: ApiError) -> Failure {
        Failure::Api(err)
    }

    fn rejected() -> ApiError {
        ApiError::BadRequest {
            status: 400,
            message: "bad".into(),
        }
    }

    #[test]
    fn transient_and_local_trouble_is_retried_for_every_step() {
        for step in [
            Step::Local,
            Step::Create,
            Step::Update,
            Step::Delete,
            Step::Find,
        ] {
            assert!(matches!(
                verdict(step, &api(ApiError::Transient("x".into())), 1),
                Verdict::Retry { .. }
            ));
            assert!(matches!(
                verdict(step, &Failure::Local("disk".into()), 1),
                Verdict::Retry { .. }
            ));
            assert_eq!(
                verdict(step, &api(ApiError::Unauthorized), 1),
                Verdict::Pause
            );
            assert_eq!(verdict(step, &Failure::Vanished, 1), Verdict::Settled);
        }
    }

    #[test]
    fn local_trouble_keeps_its_cause_and_says_the_same() {
        let failure = Failure::io("reading", io::Error::from_raw_os_error(libc::EIO));
        let cause = std::error::Error::source(&failure).expect("the io::Error");
        assert_eq!(
            cause.downcast_ref::<io::Error>().unwrap().raw_os_error(),
            Some(libc::EIO)
        );
        assert_eq!(
            verdict(Step::Local, &failure, 1),
            Verdict::Retry {
                why: "reading: Input/output error (os error 5)".into()
            }
        );
        let index = Failure::index(anyhow::anyhow!("disk full").context("writing"));
        assert_eq!(index.to_string(), "index: writing: disk full");
    }

    #[test]
    fn a_file_changed_while_it_was_sent_is_looked_at_again_never_an_error() {
        for step in [Step::Local, Step::ObjectPut, Step::PartPut, Step::Create] {
            assert_eq!(verdict(step, &Failure::Changed, 1), Verdict::Again);
        }
    }

    #[test]
    fn an_errno_means_the_same_while_hashing_and_observing() {
        let os = io::Error::from_raw_os_error;
        for errno in [libc::ENOENT, libc::ENOTDIR, libc::ELOOP, libc::EXDEV] {
            assert_eq!(io_meaning(&os(errno)), Io::Vanished, "errno {errno}");
        }
        let replaced = io::Error::new(io::ErrorKind::InvalidInput, NotRegular);
        assert_eq!(io_meaning(&replaced), Io::Vanished);
        for errno in [libc::EACCES, libc::EPERM] {
            assert_eq!(io_meaning(&os(errno)), Io::Unreadable);
        }
        // A kernel's EINVAL (openat2 refusing its flags, say) is trouble, never "gone": read as
        // gone while observing, it would delete every record.
        for errno in [libc::EINVAL, libc::EIO, libc::ENOSPC] {
            assert_eq!(io_meaning(&os(errno)), Io::Other);
        }
        assert_eq!(io_meaning(&io::Error::other("x")), Io::Other);
    }

    #[test]
    fn not_found_means_what_the_call_was_for() {
        let gone = api(ApiError::NotFound);
        assert_eq!(verdict(Step::Update, &gone, 1), Verdict::CreateInstead);
        assert_eq!(verdict(Step::Delete, &gone, 1), Verdict::Settled);
        assert_eq!(
            verdict(Step::Create, &gone, 7),
            Verdict::Fail {
                why: "grant 7 not found (404)".into()
            }
        );
    }

    #[test]
    fn a_refused_signed_url_is_asked_again_never_a_pause() {
        let refused = api(ApiError::Unauthorized);
        for step in [Step::ObjectPut, Step::PartPut] {
            assert!(matches!(verdict(step, &refused, 1), Verdict::Retry { .. }));
        }
        for step in [
            Step::Upload,
            Step::S3Object,
            Step::Multipart,
            Step::MultipartComplete,
        ] {
            assert_eq!(verdict(step, &refused, 1), Verdict::Pause);
        }
        assert!(starts_over(Step::PartPut, &ApiError::Unauthorized));
        assert!(starts_over(Step::MultipartComplete, &rejected()));
        assert!(!starts_over(
            Step::PartPut,
            &ApiError::Transient("x".into())
        ));
        assert!(!starts_over(Step::ObjectPut, &ApiError::Unauthorized));
        assert!(matches!(
            verdict(Step::MultipartComplete, &api(rejected()), 1),
            Verdict::Retry { .. }
        ));
    }

    #[test]
    fn no_active_file_waits_and_other_refusals_fail() {
        let no_active = api(ApiError::BadRequest {
            status: 409,
            message: "no_active_file".into(),
        });
        assert!(matches!(
            verdict(Step::Multipart, &no_active, 1),
            Verdict::Retry { .. }
        ));
        for step in [Step::Upload, Step::ObjectPut, Step::S3Object] {
            assert!(matches!(
                verdict(step, &api(rejected()), 1),
                Verdict::Fail { .. }
            ));
        }
    }

    #[test]
    fn an_untrue_answer_fails_the_path_for_every_step() {
        for step in [Step::Create, Step::Find, Step::Update] {
            assert!(matches!(
                verdict(step, &Failure::Untrue("id 4 is b's".into()), 1),
                Verdict::Fail { .. }
            ));
        }
    }

    #[test]
    fn a_signed_put_of_another_length_fails_the_path_in_our_words() {
        let mismatch = api(ApiError::SignedLength {
            signed: "10".into(),
            len: 12,
        });
        for step in [Step::ObjectPut, Step::PartPut] {
            assert_eq!(
                verdict(step, &mismatch, 1),
                Verdict::Fail {
                    why: "the signed request is for 10 bytes, not 12".into()
                }
            );
        }
    }

    #[test]
    fn a_rejection_fails_the_path_except_for_a_find() {
        assert!(matches!(
            verdict(Step::Create, &api(rejected()), 1),
            Verdict::Fail { .. }
        ));
        assert_eq!(verdict(Step::Find, &api(rejected()), 1), Verdict::Settled);
    }
}
