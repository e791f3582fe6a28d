//! The HMAC signature scheme of orderguard's HTTP callbacks, both ways: delivery receipts it
//! receives and webhooks it sends. The header is `t=<unix seconds>,v1=<hex HMAC-SHA256(secret,
//! "<t>.<raw body>")>`; the timestamp lets receivers refuse replays.

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// How far a signature's timestamp may be from now.
pub const TOLERANCE_SECONDS: i64 = 300;

fn mac(secret: &[u8], timestamp: i64, body: &[u8]) -> Hmac<Sha256> {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    mac
}

/// The header value signing `body` at `timestamp`.
pub fn sign(secret: &[u8], timestamp: i64, body: &[u8]) -> String {
    format!(
        "t={timestamp},v1={}",
        hex::encode(mac(secret, timestamp, body).finalize().into_bytes())
    )
}

/// Whether `header` signs `body` with `secret`, within the tolerance of `now` (seconds).
/// The comparison is constant time.
pub fn verify(secret: &[u8], header: &str, body: &[u8], now: i64) -> bool {
    let mut timestamp = None;
    let mut signature = None;
    for part in header.split(',') {
        match part.trim().split_once('=') {
            Some(("t", t)) => timestamp = t.parse::<i64>().ok(),
            Some(("v1", v)) => signature = hex::decode(v).ok(),
            _ => {}
        }
    }
    let (Some(timestamp), Some(signature)) = (timestamp, signature) else {
        return false;
    };
    (now - timestamp).abs() <= TOLERANCE_SECONDS
        && mac(secret, timestamp, body)
            .verify_slice(&signature)
            .is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signature_verifies_only_with_its_secret_body_and_time() {
        let header = sign(b"secret", 1_000, b"{}");
        assert!(verify(b"secret", &header, b"{}", 1_100));
        assert!(!verify(b"other", &header, b"{}", 1_100));
        assert!(!verify(b"secret", &header, b"{ }", 1_100));
        assert!(
            !verify(b"secret", &header, b"{}", 1_000 + TOLERANCE_SECONDS + 1),
            "too old"
        );
        assert!(!verify(b"secret", "t=1000", b"{}", 1_000));
    }
}
