//! Approval tokens: a compact JWS (EdDSA over Ed25519) issued when a verification is
//! approved, bound to brand, verification, order reference, amount and currency, and short
//! lived. Order APIs check it against `/.well-known/jwks.json`.
//!
//! A relying party must check `aud` (the brand id: one service signs for every brand, so a
//! token of one brand must never pass for another's order) and, in gate mode, `order_id` and
//! `payload_sha256` (base64url SHA-256 of the exact bytes it received). `jti` is unique per
//! approval; an order API that keeps the `jti`s it accepted until their `exp` refuses replays.
//!
//! Several keys may be configured for rotation: the first signs, all are published.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ed25519_dalek::{Signer, SigningKey};
use serde::Serialize;
use serde_json::{Value, json};

use crate::domain::Millis;
use crate::domain::VerificationRecord;

/// The claims of an approval token.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ApprovalClaims {
    /// The service that approved (its public URL).
    pub iss: String,
    /// The brand id: the audience the token is for.
    pub aud: String,
    pub brand: String,
    /// The verification id (also `jti`).
    pub sub: String,
    pub jti: String,
    pub order_reference: String,
    /// Decimal amount, e.g. `"49.90"`.
    pub amount: String,
    pub currency: String,
    /// Issued at and expiry, in Unix seconds.
    pub iat: i64,
    pub exp: i64,
    /// Gate mode: the held order this approval releases.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub order_id: Option<String>,
    /// Gate mode: base64url (no padding) SHA-256 of the exact payload bytes forwarded.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub payload_sha256: Option<String>,
}

/// The held order an approval token releases (gate mode).
#[derive(Debug, Clone, Copy)]
pub struct OrderBinding<'a> {
    pub order_id: &'a crate::domain::OrderId,
    /// The payload exactly as forwarded.
    pub payload: &'a [u8],
}

/// base64url (no padding) SHA-256 of `bytes`: the `payload_sha256` claim.
pub fn payload_sha256(bytes: &[u8]) -> String {
    use sha2::Digest;
    URL_SAFE_NO_PAD.encode(sha2::Sha256::digest(bytes))
}

pub struct ApprovalSigner {
    /// `(kid, key)`; the first signs.
    keys: Vec<(String, SigningKey)>,
    issuer: String,
    ttl_seconds: i64,
}

impl std::fmt::Debug for ApprovalSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kids: Vec<&str> = self.keys.iter().map(|(kid, _)| kid.as_str()).collect();
        f.debug_struct("ApprovalSigner")
            .field("kids", &kids)
            .finish_non_exhaustive()
    }
}

impl ApprovalSigner {
    /// `keys` are `(kid, 32-byte Ed25519 seed)`; at least one.
    pub fn new(
        keys: Vec<(String, [u8; 32])>,
        issuer: String,
        ttl_seconds: i64,
    ) -> anyhow::Result<Self> {
        anyhow::ensure!(!keys.is_empty(), "at least one approval key is needed");
        let keys = keys
            .into_iter()
            .map(|(kid, seed)| (kid, SigningKey::from_bytes(&seed)))
            .collect();
        Ok(Self {
            keys,
            issuer,
            ttl_seconds,
        })
    }

    /// The claims for an approved verification; `None` unless it is approved.
    pub fn claims(
        &self,
        record: &VerificationRecord,
        order: Option<OrderBinding<'_>>,
    ) -> Option<ApprovalClaims> {
        if record.status != crate::domain::Status::Approved {
            return None;
        }
        let approved_at: Millis = record.finished_at?;
        let iat = approved_at / 1000;
        Some(ApprovalClaims {
            iss: self.issuer.clone(),
            aud: record.brand.clone(),
            brand: record.brand.clone(),
            sub: record.id.to_string(),
            jti: record.id.to_string(),
            order_reference: record.order_reference.clone(),
            amount: record.amount.decimal(),
            currency: record.amount.currency().to_owned(),
            iat,
            exp: iat + self.ttl_seconds,
            order_id: order.map(|order| order.order_id.to_string()),
            payload_sha256: order.map(|order| payload_sha256(order.payload)),
        })
    }

    /// The compact JWS of an approved verification (the same each time: Ed25519 signatures
    /// are deterministic), or `None` if it is not approved.
    pub fn token(
        &self,
        record: &VerificationRecord,
        order: Option<OrderBinding<'_>>,
    ) -> Option<String> {
        let claims = self.claims(record, order)?;
        let (kid, key) = &self.keys[0];
        let header = json!({"alg": "EdDSA", "typ": "JWT", "kid": kid});
        let encode =
            |value: &Value| URL_SAFE_NO_PAD.encode(serde_json::to_vec(value).unwrap_or_default());
        let signing_input = format!(
            "{}.{}",
            encode(&header),
            encode(&serde_json::to_value(&claims).ok()?)
        );
        let signature = key.sign(signing_input.as_bytes());
        Some(format!(
            "{signing_input}.{}",
            URL_SAFE_NO_PAD.encode(signature.to_bytes())
        ))
    }

    /// The public keys as a JWK Set.
    pub fn jwks(&self) -> Value {
        let keys: Vec<Value> = self
            .keys
            .iter()
            .map(|(kid, key)| {
                json!({
                    "kty": "OKP",
                    "crv": "Ed25519",
                    "alg": "EdDSA",
                    "use": "sig",
                    "kid": kid,
                    "x": URL_SAFE_NO_PAD.encode(key.verifying_key().to_bytes()),
                })
            })
            .collect();
        json!({ "keys": keys })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::{Signature, Verifier, VerifyingKey};

    fn record() -> VerificationRecord {
        let new = crate::domain::NewVerification {
            id: crate::domain::VerificationId::new(),
            brand: crate::brands::BrandId::parse("nordwind").expect("id"),
            phone: crate::domain::PhoneNumber::parse("+4915123456789", None, &[]).expect("phone"),
            order_reference: "A-1".into(),
            amount: crate::domain::Money::parse("49.90", "EUR").expect("money"),
            locale: None,
            code_hash: vec![],
            limits: crate::domain::Limits::default(),
            now: 1_700_000_000_000,
            phone_pseudonym: String::new(),
            number_prefix: String::new(),
            customer_pseudonym: String::new(),
            ip_pseudonym: String::new(),
            ip_range_pseudonym: String::new(),
            user_agent_family: String::new(),
            order: None,
        };
        let mut record = VerificationRecord::pending(&new);
        record.status = crate::domain::Status::Approved;
        record.finished_at = Some(1_700_000_060_000);
        record
    }

    #[test]
    fn a_token_verifies_with_the_published_key_and_carries_the_order() {
        let signer = ApprovalSigner::new(
            vec![("k2".into(), [7; 32]), ("k1".into(), [9; 32])],
            "https://og.example".into(),
            300,
        )
        .expect("signer");
        let token = signer.token(&record(), None).expect("approved");
        let parts: Vec<&str> = token.split('.').collect();
        assert_eq!(parts.len(), 3);
        let header: Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[0]).expect("b64")).expect("json");
        assert_eq!(
            (header["alg"].as_str(), header["kid"].as_str()),
            (Some("EdDSA"), Some("k2"))
        );
        let claims: Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).expect("b64")).expect("json");
        assert_eq!(
            (&claims["amount"], &claims["currency"], &claims["brand"]),
            (&json!("49.90"), &json!("EUR"), &json!("nordwind"))
        );
        assert_eq!(claims["exp"].as_i64(), Some(1_700_000_060 + 300));
        assert_eq!(claims["aud"], json!("nordwind"), "bound to the brand");
        assert!(claims.get("order_id").is_none(), "API mode has no order");
        let order_id = crate::domain::OrderId::new();
        let gated = signer
            .token(
                &record(),
                Some(OrderBinding {
                    order_id: &order_id,
                    payload: b"{\"iccid\":12345678901234567890}",
                }),
            )
            .expect("approved");
        let gated: Value = serde_json::from_slice(
            &URL_SAFE_NO_PAD
                .decode(gated.split('.').nth(1).expect("claims"))
                .expect("b64"),
        )
        .expect("json");
        assert_eq!(gated["order_id"], json!(order_id.to_string()));
        // SHA-256 of those bytes, computed independently (`printf … | sha256sum`).
        assert_eq!(
            gated["payload_sha256"],
            json!(
                URL_SAFE_NO_PAD.encode(
                    hex::decode("cbbccbf4e74080428dff3aa7eb9d8e5e85c26cd18c18c02c58b7d57020f21e45")
                        .expect("hex")
                )
            )
        );

        let jwks = signer.jwks();
        assert_eq!(
            jwks["keys"].as_array().map(Vec::len),
            Some(2),
            "rotation: both keys published"
        );
        let x = URL_SAFE_NO_PAD
            .decode(jwks["keys"][0]["x"].as_str().expect("x"))
            .expect("b64");
        let key = VerifyingKey::from_bytes(&x.try_into().expect("32 bytes")).expect("key");
        let signature =
            Signature::from_slice(&URL_SAFE_NO_PAD.decode(parts[2]).expect("b64")).expect("sig");
        assert!(
            key.verify(format!("{}.{}", parts[0], parts[1]).as_bytes(), &signature)
                .is_ok()
        );
        let mut pending = record();
        pending.status = crate::domain::Status::Pending;
        assert!(
            signer.token(&pending, None).is_none(),
            "only approvals get tokens"
        );
    }
}
