//! Short-lived signed links to the code page: `/w/<verification id>?t=<expiry>.<signature>`.
//!
//! The code page lives in a third-party iframe, where cookies are blocked, so the link itself
//! is the credential: an HMAC of (verification id, expiry) under the server's widget key. A
//! token opens exactly one verification and stops working at its expiry.
//!
//! The tag is the first [`TAG_BYTES`] bytes of HMAC-SHA256, always exactly that long: a shorter
//! tag is refused before any comparison, so nobody can guess a one-byte tag in 256 tries.

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::domain::{Millis, VerificationId};

/// How long after a verification's own expiry its link still shows the result page.
pub const LINK_GRACE_MS: Millis = 10 * 60 * 1000;

/// The length of a link's tag: 16 bytes (128 bits, 32 hex digits), no more and no less.
pub const TAG_BYTES: usize = 16;

#[derive(Clone)]
pub struct WidgetSigner {
    key: Vec<u8>,
}

impl std::fmt::Debug for WidgetSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WidgetSigner(<key redacted>)")
    }
}

impl WidgetSigner {
    pub fn new(key: &[u8]) -> Self {
        Self { key: key.to_vec() }
    }

    fn mac(&self, id: &VerificationId, expires: Millis) -> Hmac<Sha256> {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.key).expect("HMAC takes any key length");
        mac.update(b"widget:");
        mac.update(id.as_uuid().as_bytes());
        mac.update(&expires.to_be_bytes());
        mac
    }

    /// A token for `id` valid until `expires` (Unix ms).
    pub fn token(&self, id: &VerificationId, expires: Millis) -> String {
        let signature = self.mac(id, expires).finalize().into_bytes();
        format!("{expires}.{}", hex::encode(&signature[..TAG_BYTES]))
    }

    /// Whether `token` opens `id` at `now`; the comparison is constant time.
    pub fn verify(&self, id: &VerificationId, token: &str, now: Millis) -> bool {
        let Some((expires, signature)) = token.split_once('.') else {
            return false;
        };
        let (Ok(expires), Ok(signature)) = (expires.parse::<Millis>(), hex::decode(signature))
        else {
            return false;
        };
        // `verify_truncated_left` alone accepts any prefix of the tag, down to one byte: the
        // length is checked first. Only the length leaks through timing, never the tag.
        signature.len() == TAG_BYTES
            && expires > now
            && self
                .mac(id, expires)
                .verify_truncated_left(&signature)
                .is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_opens_its_verification_until_it_expires() {
        let signer = WidgetSigner::new(b"widget key");
        let id = VerificationId::new();
        let token = signer.token(&id, 2_000);
        assert!(signer.verify(&id, &token, 1_999));
        assert!(!signer.verify(&id, &token, 2_000), "expired");
        assert!(
            !signer.verify(&VerificationId::new(), &token, 1_000),
            "another verification"
        );
        assert!(
            !WidgetSigner::new(b"other key").verify(&id, &token, 1_000),
            "another key"
        );
        let forged = token.replacen("2000.", "9999999999999.", 1);
        assert!(
            !signer.verify(&id, &forged, 1_000),
            "a later expiry is not signed"
        );
        let (expiry, tag) = token.split_once('.').expect("expiry.tag");
        for cut in 1..tag.len() / 2 {
            let truncated = format!("{expiry}.{}", &tag[..cut * 2]);
            assert!(!signer.verify(&id, &truncated, 1_000), "{cut}-byte tag");
        }
        let extended = format!("{token}00");
        assert!(!signer.verify(&id, &extended, 1_000), "extended tag");
        let full = hex::encode(signer.mac(&id, 2_000).finalize().into_bytes());
        assert!(
            !signer.verify(&id, &format!("2000.{full}"), 1_000),
            "the whole 32-byte MAC is not the documented tag"
        );
        // The attack: pick any expiry, try every one-byte tag.
        let one_byte_forgeries = (0..=255u8)
            .filter(|byte| signer.verify(&id, &format!("9999999999999.{byte:02x}"), 1_000))
            .count();
        assert_eq!(one_byte_forgeries, 0);
        for broken in ["", "2000", "2000.zz", ".abcd", "x.y"] {
            assert!(!signer.verify(&id, broken, 1_000), "{broken:?}");
        }
    }
}
