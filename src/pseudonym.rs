//! Pseudonyms: keyed hashes of personal data (numbers, customer references, IPs) with the
//! server's event pepper. Events and the fraud counters carry these, never the raw values.

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// Keyed hashing of personal data with the server's event pepper.
#[derive(Clone)]
pub struct Pseudonymizer {
    pepper: Vec<u8>,
}

impl std::fmt::Debug for Pseudonymizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Pseudonymizer(<pepper redacted>)")
    }
}

impl Pseudonymizer {
    pub fn new(pepper: &[u8]) -> Self {
        Self {
            pepper: pepper.to_vec(),
        }
    }

    /// 128 bits of `HMAC-SHA256(pepper, kind ":" value)` in hex; empty for an empty value.
    /// The kind keeps a number and a customer reference with the same text apart.
    pub fn pseudonym(&self, kind: &str, value: &str) -> String {
        if value.is_empty() {
            return String::new();
        }
        let mut mac =
            Hmac::<Sha256>::new_from_slice(&self.pepper).expect("HMAC takes any key length");
        mac.update(kind.as_bytes());
        mac.update(b":");
        mac.update(value.as_bytes());
        hex::encode(&mac.finalize().into_bytes()[..16])
    }
}
