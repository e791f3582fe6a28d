//! The store's one error type. The database driver's errors are classified here, once, so
//! nothing outside `store/` looks into `sqlx::Error`: the HTTP edge answers `Unavailable` with
//! a retryable 503, `Conflict` with a 409-style refusal, and `Other` with a 500.

use std::fmt;

/// What a caller can do about a store error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreErrorKind {
    /// The database is out of reach for now (pool exhausted, connection lost or terminated,
    /// server shutting down or starting, too many connections, SQLite busy). Nothing was
    /// committed; a retry can succeed.
    Unavailable,
    /// The write collided with another (unique violation, serialization failure, deadlock).
    Conflict,
    /// Anything else: a bug or bad data.
    Other,
}

/// A store failure: its kind, and the whole cause chain as text (so it can be cloned to every
/// caller of a group commit).
#[derive(Debug, Clone)]
pub struct StoreError {
    kind: StoreErrorKind,
    message: String,
}

pub type StoreResult<T> = Result<T, StoreError>;

impl StoreError {
    pub fn kind(&self) -> StoreErrorKind {
        self.kind
    }

    pub fn is_unavailable(&self) -> bool {
        self.kind == StoreErrorKind::Unavailable
    }

    /// Whether `error` (any chain) holds a store error the database's absence caused.
    pub fn is_unavailable_cause(error: &anyhow::Error) -> bool {
        error.chain().any(|cause| {
            cause
                .downcast_ref::<Self>()
                .is_some_and(Self::is_unavailable)
        }) || classify(error) == StoreErrorKind::Unavailable
    }
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for StoreError {}

impl StoreError {
    /// The store error `error` stands for, without consuming it (a group commit's one failure
    /// goes to each of its callers). An inner store error keeps its kind under any context
    /// added on top.
    pub(super) fn of(error: &anyhow::Error) -> Self {
        let kind = error
            .chain()
            .find_map(|cause| cause.downcast_ref::<Self>().map(Self::kind))
            .unwrap_or_else(|| classify(error));
        Self {
            kind,
            message: format!("{error:#}"),
        }
    }
}

impl From<anyhow::Error> for StoreError {
    fn from(error: anyhow::Error) -> Self {
        Self::of(&error)
    }
}

impl From<sqlx::Error> for StoreError {
    fn from(error: sqlx::Error) -> Self {
        anyhow::Error::from(error).into()
    }
}

/// The kind of the first driver error in `error`'s chain.
fn classify(error: &anyhow::Error) -> StoreErrorKind {
    let Some(cause) = error
        .chain()
        .find_map(|cause| cause.downcast_ref::<sqlx::Error>())
    else {
        return StoreErrorKind::Other;
    };
    match cause {
        sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::WorkerCrashed => StoreErrorKind::Unavailable,
        sqlx::Error::Database(database) => database
            .code()
            .map_or(StoreErrorKind::Other, |code| sqlstate_kind(&code)),
        _ => StoreErrorKind::Other,
    }
}

/// PostgreSQL SQLSTATEs (Appendix A of its manual) and SQLite result codes by kind.
fn sqlstate_kind(code: &str) -> StoreErrorKind {
    match code {
        // Class 08: connection exception; 57P01 admin_shutdown, 57P02 crash_shutdown,
        // 57P03 cannot_connect_now, 57P05 idle session timeout; 53300 too_many_connections;
        // SQLite 5 BUSY, 6 LOCKED (and their extended codes).
        c if c.starts_with("08") => StoreErrorKind::Unavailable,
        "57P01" | "57P02" | "57P03" | "57P05" | "53300" => StoreErrorKind::Unavailable,
        "5" | "6" | "261" | "517" | "262" => StoreErrorKind::Unavailable,
        // 23505 unique_violation; 40001 serialization_failure; 40P01 deadlock_detected;
        // SQLite 2067 CONSTRAINT_UNIQUE, 1555 CONSTRAINT_PRIMARYKEY.
        "23505" | "40001" | "40P01" | "2067" | "1555" => StoreErrorKind::Conflict,
        _ => StoreErrorKind::Other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn driver_errors_are_classified_once_and_keep_their_kind_under_context() {
        let lost = StoreError::from(sqlx::Error::Io(std::io::ErrorKind::BrokenPipe.into()));
        assert_eq!(lost.kind(), StoreErrorKind::Unavailable);
        let timed_out = anyhow::Error::from(sqlx::Error::PoolTimedOut).context("taking it");
        let error = StoreError::from(timed_out);
        assert!(error.is_unavailable());
        assert!(error.to_string().contains("taking it"));
        let wrapped = anyhow::Error::from(error.clone()).context("recording a check");
        assert!(StoreError::is_unavailable_cause(&wrapped));
        assert_eq!(
            StoreError::from(wrapped).kind(),
            StoreErrorKind::Unavailable
        );
        let bug = StoreError::from(anyhow::anyhow!("no such column"));
        assert_eq!(bug.kind(), StoreErrorKind::Other);
        for (code, kind) in [
            ("57P01", StoreErrorKind::Unavailable),
            ("08006", StoreErrorKind::Unavailable),
            ("53300", StoreErrorKind::Unavailable),
            ("5", StoreErrorKind::Unavailable),
            ("23505", StoreErrorKind::Conflict),
            ("40P01", StoreErrorKind::Conflict),
            ("22P02", StoreErrorKind::Other),
        ] {
            assert_eq!(sqlstate_kind(code), kind, "{code}");
        }
    }
}
