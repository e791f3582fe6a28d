//! Time-ordered identifiers (UUIDv7, RFC 9562 §5.7) for verifications, orders, events and
//! messages.

use rand::Rng;
use uuid::Uuid;

/// A new UUIDv7: the Unix time in milliseconds, then 74 random bits from the thread's
/// cryptographically secure generator (`rand::rng()`, seeded from the OS and reseeded by it).
/// `Uuid::now_v7` asks the OS for its random bits on every call, a system call per id, which
/// was 2 % of a refused start's CPU. Ids of the same millisecond are not ordered among
/// themselves (RFC 9562 makes that ordering optional); nothing here relies on it.
pub fn new_v7() -> Uuid {
    let millis = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| {
            u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX)
        });
    let random: [u8; 10] = rand::rng().random();
    uuid::Builder::from_unix_timestamp_millis(millis, &random).into_uuid()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_version_7_carry_the_time_and_differ() {
        let before = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("time")
            .as_millis();
        let ids: Vec<Uuid> = (0..1000).map(|_| new_v7()).collect();
        let distinct: std::collections::HashSet<&Uuid> = ids.iter().collect();
        assert_eq!(distinct.len(), ids.len());
        for id in &ids {
            assert_eq!(id.get_version_num(), 7);
            assert_eq!(id.get_variant(), uuid::Variant::RFC4122);
            let (seconds, nanos) = id.get_timestamp().expect("timestamp").to_unix();
            let millis = u128::from(seconds) * 1000 + u128::from(nanos / 1_000_000);
            assert!(millis >= before && millis <= before + 60_000, "{id}");
        }
        // The ids sort by time across milliseconds.
        let first = new_v7();
        std::thread::sleep(std::time::Duration::from_millis(2));
        assert!(new_v7() > first);
    }
}
