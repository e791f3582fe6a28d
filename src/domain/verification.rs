//! The verification lifecycle: identifiers, statuses and per-brand limits.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Identifies one verification. UUIDv7, so ids sort by creation time in indexes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct VerificationId(Uuid);

impl VerificationId {
    pub fn new() -> Self {
        Self(crate::domain::id::new_v7())
    }

    pub fn as_uuid(&self) -> &Uuid {
        &self.0
    }
}

impl Default for VerificationId {
    fn default() -> Self {
        Self::new()
    }
}

impl FromStr for VerificationId {
    type Err = uuid::Error;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Uuid::parse_str(s).map(Self)
    }
}

impl fmt::Display for VerificationId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// Where a verification stands. Only `Pending` ever changes; the others are final.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Pending,
    Approved,
    Locked,
    Aborted,
    Expired,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Approved => "approved",
            Self::Locked => "locked",
            Self::Aborted => "aborted",
            Self::Expired => "expired",
        }
    }

    pub const ALL: [Status; 5] = [
        Self::Pending,
        Self::Approved,
        Self::Locked,
        Self::Aborted,
        Self::Expired,
    ];
}

impl FromStr for Status {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|status| status.as_str() == s)
            .ok_or_else(|| format!("unknown verification status {s:?}"))
    }
}

/// The limits a verification is started with; copied into the row so a later brand change
/// does not alter verifications already under way.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Digits in a code, 4–10. Default 6.
    pub code_length: u8,
    /// Seconds a verification stays open. Default 300.
    pub ttl_seconds: u32,
    /// Code checks allowed before the verification locks. Default 5.
    pub max_checks: u32,
    /// SMS sends allowed, the first included. Default 3.
    pub max_sends: u32,
    /// Seconds between two sends. Default 30.
    pub resend_cooldown_seconds: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            code_length: 6,
            ttl_seconds: 300,
            max_checks: 5,
            max_sends: 3,
            resend_cooldown_seconds: 30,
        }
    }
}

impl Limits {
    /// Every problem with these limits, each as `key: what is wrong`.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if !super::code::CODE_LENGTHS.contains(&self.code_length) {
            problems.push(format!(
                "code_length: must be between 4 and 10, not {}",
                self.code_length
            ));
        }
        // Below a minute only benchmarks and tests make sense; buyers need the time.
        if !(5..=3600).contains(&self.ttl_seconds) {
            problems.push(format!(
                "ttl_seconds: must be between 5 and 3600, not {}",
                self.ttl_seconds
            ));
        }
        if !(1..=20).contains(&self.max_checks) {
            problems.push(format!(
                "max_checks: must be between 1 and 20, not {}",
                self.max_checks
            ));
        }
        if !(1..=10).contains(&self.max_sends) {
            problems.push(format!(
                "max_sends: must be between 1 and 10, not {}",
                self.max_sends
            ));
        }
        if self.resend_cooldown_seconds > 600 {
            problems.push(format!(
                "resend_cooldown_seconds: must be at most 600, not {}",
                self.resend_cooldown_seconds
            ));
        }
        problems
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_round_trip_through_their_names() {
        for status in Status::ALL {
            assert_eq!(status.as_str().parse::<Status>(), Ok(status));
        }
        assert!("approve".parse::<Status>().is_err());
    }

    #[test]
    fn default_limits_are_valid_and_out_of_range_limits_are_named() {
        assert!(Limits::default().problems().is_empty());
        let bad = Limits {
            code_length: 3,
            max_checks: 0,
            ..Limits::default()
        };
        let problems = bad.problems();
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(problems[0].starts_with("code_length:"));
        assert!(problems[1].starts_with("max_checks:"));
    }
}
