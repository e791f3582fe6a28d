//! One-time codes: generation from the OS CSPRNG and keyed hashing.
//!
//! A code is never stored, logged or returned. Only `HMAC-SHA256(key, verification id || code)`
//! is stored, so a database dump does not reveal codes, and a hash from one verification is
//! useless for another. Comparison goes through `Mac::verify_slice`, which is constant time.

use hmac::{Hmac, Mac};
use rand::TryRngCore;
use rand::{Rng, rngs::OsRng};
use sha2::Sha256;

use super::VerificationId;

type HmacSha256 = Hmac<Sha256>;

/// A one-time code of 4–10 decimal digits.
///
/// `Debug` is redacted so a code cannot end up in a log line through `{:?}`.
#[derive(Clone, PartialEq, Eq)]
pub struct OtpCode(String);

impl std::fmt::Debug for OtpCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("OtpCode(<redacted>)")
    }
}

/// Shortest and longest code a brand may configure.
pub const CODE_LENGTHS: std::ops::RangeInclusive<u8> = 4..=10;

impl OtpCode {
    /// Draws a code uniformly from `0 .. 10^length` using the operating system's CSPRNG.
    pub fn generate(length: u8) -> Self {
        let length = length.clamp(*CODE_LENGTHS.start(), *CODE_LENGTHS.end());
        let upper = 10u64.pow(u32::from(length));
        // `random_range` rejects samples outside a multiple of the range, so the result is
        // uniform, with no modulo bias towards low codes.
        let value = OsRng.unwrap_err().random_range(0..upper);
        Self(format!("{value:0width$}", width = usize::from(length)))
    }

    /// Accepts what a buyer typed: digits only, spaces and dashes ignored, of the expected length.
    pub fn parse(input: &str, length: u8) -> Option<Self> {
        let digits: String = input.chars().filter(|c| !matches!(c, ' ' | '-')).collect();
        (digits.len() == usize::from(length) && digits.bytes().all(|b| b.is_ascii_digit()))
            .then_some(Self(digits))
    }

    /// The digits, for the one place that needs them: the SMS text.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

/// Hashes and verifies codes under the server's code key.
#[derive(Clone)]
pub struct CodeHasher {
    key: Vec<u8>,
}

impl std::fmt::Debug for CodeHasher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CodeHasher(<key redacted>)")
    }
}

impl CodeHasher {
    pub fn new(key: &[u8]) -> Self {
        Self { key: key.to_vec() }
    }

    fn mac(&self, id: &VerificationId, code: &OtpCode) -> HmacSha256 {
        // HMAC accepts keys of any length; this cannot fail.
        let mut mac = HmacSha256::new_from_slice(&self.key).expect("HMAC takes any key length");
        mac.update(id.as_uuid().as_bytes());
        mac.update(b":");
        mac.update(code.0.as_bytes());
        mac
    }

    /// The keyed hash stored for `code` of verification `id`.
    pub fn hash(&self, id: &VerificationId, code: &OtpCode) -> Vec<u8> {
        self.mac(id, code).finalize().into_bytes().to_vec()
    }

    /// Constant-time check of `code` against a stored hash.
    pub fn verify(&self, id: &VerificationId, code: &OtpCode, stored: &[u8]) -> bool {
        self.mac(id, code).verify_slice(stored).is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_codes_have_the_requested_length_and_only_digits() {
        for length in CODE_LENGTHS {
            let code = OtpCode::generate(length);
            assert_eq!(code.expose().len(), usize::from(length));
            assert!(code.expose().bytes().all(|b| b.is_ascii_digit()));
        }
    }

    #[test]
    fn generated_codes_cover_every_leading_digit() {
        // With 4-digit codes, 2,000 draws miss a given leading digit with probability ~1e-92.
        let mut seen = [false; 10];
        for _ in 0..2_000 {
            let first = OtpCode::generate(4).expose().as_bytes()[0] - b'0';
            seen[usize::from(first)] = true;
        }
        assert!(seen.iter().all(|s| *s), "leading digits seen: {seen:?}");
    }

    #[test]
    fn a_hash_verifies_only_for_the_same_verification_and_code() {
        let hasher = CodeHasher::new(b"server key");
        let id = VerificationId::new();
        let other = VerificationId::new();
        let code = OtpCode::parse("123456", 6).expect("valid");
        let wrong = OtpCode::parse("123457", 6).expect("valid");
        let stored = hasher.hash(&id, &code);
        assert!(hasher.verify(&id, &code, &stored));
        assert!(!hasher.verify(&id, &wrong, &stored));
        assert!(!hasher.verify(&other, &code, &stored));
        assert!(!CodeHasher::new(b"other key").verify(&id, &code, &stored));
    }

    #[test]
    fn parsing_ignores_separators_and_rejects_wrong_lengths() {
        assert_eq!(
            OtpCode::parse("123 456", 6).map(|c| c.0),
            Some("123456".into())
        );
        assert!(OtpCode::parse("12345", 6).is_none());
        assert!(OtpCode::parse("12345a", 6).is_none());
        assert!(format!("{:?}", OtpCode::parse("123456", 6)).contains("redacted"));
    }
}
