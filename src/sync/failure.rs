//! The one failure policy: every error met while bringing a path in step, from the service or
//! from this machine, goes through `verdict`, which says what it means for that path.

use crate::api::{ApiError, GrantId};

/// What went wrong during a look at a path.
#[derive(Debug)]
pub enum Failure {
    Api(ApiError),
    /// Local trouble (an index write, a read error, a task that died).
    Local(String),
    /// The file went away while we looked; the event that removed it marks the path again.
    Vanished,
}

impl Failure {
    pub fn index(err: anyhow::Error) -> Failure {
        Failure::Local(format!("index: {err:#}"))
    }
}

impl From<ApiError> for Failure {
    fn from(err: ApiError) -> Self {
        Failure::Api(err)
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
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// The call's purpose is met without it: the record is already gone (a delete's 404), or
    /// the path cannot have a record (a refused `Find`), or the file vanished meanwhile.
    Settled,
    /// The record is gone from the service (an update's 404): create a new one.
    CreateInstead,
    /// Try again later, with this path's backoff.
    Retry { why: String },
    /// The key was refused: all sending stops until the keys change.
    Pause,
    /// The service refuses this path as it is: reported, and tried again on its next change.
    Fail { why: String },
}

pub fn verdict(step: Step, failure: &Failure, grant: GrantId) -> Verdict {
    match failure {
        Failure::Vanished => Verdict::Settled,
        Failure::Local(message) => Verdict::Retry {
            why: message.clone(),
        },
        Failure::Api(err) => match (err, step) {
            (ApiError::Transient(message), _) => Verdict::Retry {
                why: message.clone(),
            },
            (ApiError::Unauthorized, _) => Verdict::Pause,
            (ApiError::NotFound, Step::Update) => Verdict::CreateInstead,
            (ApiError::NotFound, Step::Delete) => Verdict::Settled,
            (ApiError::NotFound, _) => Verdict::Fail {
                why: format!("grant {grant} not found (404)"),
            },
            // Refused: that create can never have made a record either.
            (ApiError::BadRequest { .. }, Step::Find) => Verdict::Settled,
            (ApiError::BadRequest { .. }, _) => Verdict::Fail {
                why: err.to_string(),
            },
        },
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
    fn a_rejection_fails_the_path_except_for_a_find() {
        assert!(matches!(
            verdict(Step::Create, &api(rejected()), 1),
            Verdict::Fail { .. }
        ));
        assert_eq!(verdict(Step::Find, &api(rejected()), 1), Verdict::Settled);
    }
}
