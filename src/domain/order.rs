//! Held orders (gate mode): identifiers and the states an order moves through.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Identifies one held order; also the upstream `Idempotency-Key`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct OrderId(Uuid);

impl OrderId {
    pub fn new() -> Self {
        Self(crate::domain::id::new_v7())
    }

    pub fn as_uuid(&self) -> &Uuid {
        &self.0
    }
}

impl Default for OrderId {
    fn default() -> Self {
        Self::new()
    }
}

impl FromStr for OrderId {
    type Err = uuid::Error;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Uuid::parse_str(s).map(Self)
    }
}

impl fmt::Display for OrderId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// awaiting_verification → forwarding → forwarded | rejected_upstream | forward_failed;
/// or awaiting_verification → aborted | expired | locked (never forwarded).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum OrderStatus {
    AwaitingVerification,
    Forwarding,
    Forwarded,
    RejectedUpstream,
    ForwardFailed,
    Aborted,
    Expired,
    Locked,
}

impl OrderStatus {
    pub const ALL: [OrderStatus; 8] = [
        Self::AwaitingVerification,
        Self::Forwarding,
        Self::Forwarded,
        Self::RejectedUpstream,
        Self::ForwardFailed,
        Self::Aborted,
        Self::Expired,
        Self::Locked,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::AwaitingVerification => "awaiting_verification",
            Self::Forwarding => "forwarding",
            Self::Forwarded => "forwarded",
            Self::RejectedUpstream => "rejected_upstream",
            Self::ForwardFailed => "forward_failed",
            Self::Aborted => "aborted",
            Self::Expired => "expired",
            Self::Locked => "locked",
        }
    }

    /// Whether the order has reached its end.
    pub fn is_final(self) -> bool {
        !matches!(self, Self::AwaitingVerification | Self::Forwarding)
    }
}

impl FromStr for OrderStatus {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|status| status.as_str() == s)
            .ok_or_else(|| format!("unknown order status {s:?}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_round_trip_and_only_two_are_open() {
        for status in OrderStatus::ALL {
            assert_eq!(status.as_str().parse::<OrderStatus>(), Ok(status));
        }
        let open: Vec<_> = OrderStatus::ALL
            .into_iter()
            .filter(|s| !s.is_final())
            .collect();
        assert_eq!(
            open,
            vec![OrderStatus::AwaitingVerification, OrderStatus::Forwarding]
        );
    }
}
