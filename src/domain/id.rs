//! Time-ordered identifiers (UUIDv7, RFC 9562 §5.7) for verifications, orders, events and
//! messages.

use std::sync::Mutex;

use rand::Rng;
use uuid::Uuid;

/// The 74 bits after the timestamp (`rand_a` and `rand_b`).
const RANDOM_BITS: u32 = 74;
const RANDOM_MAX: u128 = (1 << RANDOM_BITS) - 1;

/// The last id's millisecond and random bits: ids of one millisecond count up from it.
static LAST: Mutex<(u64, u128)> = Mutex::new((0, 0));

/// A new UUIDv7: the Unix time in milliseconds, then 74 bits from the thread's cryptographically
/// secure generator (`rand::rng()`, seeded and reseeded by the OS). Within one millisecond
/// (or if the clock steps back) the bits count up from the last id's by a random step, RFC
/// 9562's "monotonic random" (§6.2, method 2), so ids sort in the order they were made: the
/// events of one millisecond keep their order in ClickHouse. `Uuid::now_v7` asked the OS for
/// its random bits on every call, a system call per id: 2 % of a refused start's CPU.
pub fn new_v7() -> Uuid {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| {
            u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX)
        });
    let mut rng = rand::rng();
    let fresh = rng.random::<u128>() & RANDOM_MAX;
    let step = 1 + u128::from(rng.random::<u32>());
    let (millis, bits) = {
        let mut last = LAST.lock().unwrap_or_else(|e| e.into_inner());
        let next = if now > last.0 {
            (now, fresh)
        } else {
            match last.1.checked_add(step).filter(|bits| *bits <= RANDOM_MAX) {
                Some(bits) => (last.0, bits),
                // The millisecond's bits ran out: borrow the next millisecond.
                None => (last.0 + 1, fresh >> 1),
            }
        };
        *last = next;
        next
    };
    let rand_a = bits >> 62;
    let rand_b = bits & ((1 << 62) - 1);
    Uuid::from_u128(
        (u128::from(millis & 0xFFFF_FFFF_FFFF) << 80)
            | (0x7 << 76)
            | (rand_a << 64)
            | (0b10 << 62)
            | rand_b,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unix_millis() -> u128 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("time")
            .as_millis()
    }

    #[test]
    fn ids_are_version_7_carry_the_time_and_count_up() {
        let before = unix_millis();
        let ids: Vec<Uuid> = (0..10_000).map(|_| new_v7()).collect();
        let after = unix_millis();
        for pair in ids.windows(2) {
            assert!(pair[0] < pair[1], "{} then {}", pair[0], pair[1]);
        }
        for id in &ids {
            assert_eq!(id.get_version_num(), 7);
            assert_eq!(id.get_variant(), uuid::Variant::RFC4122);
            let (seconds, nanos) = id.get_timestamp().expect("timestamp").to_unix();
            let millis = u128::from(seconds) * 1000 + u128::from(nanos / 1_000_000);
            // A busy millisecond may borrow the next one.
            assert!(millis >= before && millis <= after + 1, "{id}");
        }
    }

    #[test]
    fn threads_get_distinct_ids_each_in_order() {
        let threads: Vec<_> = (0..4)
            .map(|_| std::thread::spawn(|| (0..5_000).map(|_| new_v7()).collect::<Vec<_>>()))
            .collect();
        let mut all = std::collections::HashSet::new();
        for thread in threads {
            let ids = thread.join().expect("thread");
            assert!(ids.windows(2).all(|pair| pair[0] < pair[1]));
            all.extend(ids);
        }
        assert_eq!(all.len(), 20_000);
    }
}
