//! Events: one row per state change, written to the outbox in the same database transaction
//! as the change, and shipped by the [`relay`] to ClickHouse (or a JSON-lines file).
//!
//! Raw phone numbers, customer references and IP addresses never leave the service: events
//! carry keyed-hash pseudonyms ([`Pseudonymizer`]), a number prefix and the country.

pub mod clickhouse;
pub mod jsonl;
pub mod relay;

use uuid::Uuid;

pub use crate::domain::{Event, EventType};
use crate::domain::{Millis, PhoneNumber, VerificationRecord};
pub use crate::pseudonym::Pseudonymizer;

/// How numbers are grouped into prefixes: the country code and the first N national digits,
/// N per country with a default. One definition serves the pumping guard, the events'
/// `number_prefix` and so the dashboards.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrefixScheme {
    pub national_digits: usize,
    pub by_country: std::collections::BTreeMap<String, usize>,
}

impl Default for PrefixScheme {
    fn default() -> Self {
        Self {
            national_digits: 3,
            by_country: Default::default(),
        }
    }
}

impl PrefixScheme {
    /// The prefix of `phone`, e.g. `+49151`.
    pub fn prefix(&self, phone: &PhoneNumber) -> String {
        let digits = self
            .by_country
            .get(phone.country())
            .copied()
            .unwrap_or(self.national_digits);
        number_prefix(phone, digits)
    }
}

/// `+` and the country code, then the first `digits` digits of the national number.
pub fn number_prefix(phone: &PhoneNumber, digits: usize) -> String {
    let calling_code_len = phone.calling_code_len();
    let end = (1 + calling_code_len + digits).min(phone.e164().len());
    phone.e164()[..end].to_owned()
}

/// A coarse browser family from a User-Agent, enough for fraud trends and never identifying.
pub fn user_agent_family(user_agent: &str) -> &'static str {
    let ua = user_agent;
    let mobile = ua.contains("Mobile") || ua.contains("Android") || ua.contains("iPhone");
    let family = if ua.is_empty() {
        return "";
    } else if ua.contains("Edg/") {
        "Edge"
    } else if ua.contains("OPR/") || ua.contains("Opera") {
        "Opera"
    } else if ua.contains("SamsungBrowser") {
        "Samsung Internet"
    } else if ua.contains("Firefox/") {
        "Firefox"
    } else if ua.contains("Chrome/") || ua.contains("Chromium/") {
        "Chrome"
    } else if ua.contains("Safari/") {
        "Safari"
    } else if ua.contains("curl/")
        || ua.contains("python")
        || ua.contains("Go-http-client")
        || ua.contains("okhttp")
    {
        "Script"
    } else {
        "Other"
    };
    match (family, mobile) {
        ("Chrome", true) => "Chrome Mobile",
        ("Firefox", true) => "Firefox Mobile",
        ("Safari", true) => "Mobile Safari",
        (family, _) => family,
    }
}

/// Builds events with the columns every event of a verification shares.
#[derive(Debug, Clone)]
pub struct EventFactory {
    pseudonymizer: Pseudonymizer,
    prefixes: PrefixScheme,
    instance: String,
}

impl EventFactory {
    pub fn new(pseudonymizer: Pseudonymizer, prefixes: PrefixScheme, instance: String) -> Self {
        Self {
            pseudonymizer,
            prefixes,
            instance,
        }
    }

    pub fn pseudonymizer(&self) -> &Pseudonymizer {
        &self.pseudonymizer
    }

    pub fn prefixes(&self) -> &PrefixScheme {
        &self.prefixes
    }

    /// A prefix block placed (`kind` = placed, with the rule and the block's level in
    /// `attempt`) or lifted (with `reason` naming the operator).
    pub fn prefix_block(
        &self,
        brand: &str,
        kind: EventType,
        prefix: &str,
        level: i64,
        reason: &str,
        now: Millis,
    ) -> Event {
        Event {
            event_id: crate::domain::id::new_v7(),
            ts: now,
            brand: brand.to_owned(),
            event_type: kind.as_str().to_owned(),
            verification_id: Uuid::nil(),
            order_id: Uuid::nil(),
            channel: "sms".to_owned(),
            country: String::new(),
            number_prefix: prefix.to_owned(),
            phone_pseudonym: String::new(),
            customer_pseudonym: String::new(),
            ip_pseudonym: String::new(),
            attempt: u16::try_from(level).unwrap_or(u16::MAX),
            outcome: match kind {
                EventType::PrefixBlockLifted => "lifted".to_owned(),
                _ => "placed".to_owned(),
            },
            reason: reason.to_owned(),
            amount_minor: 0,
            currency: String::new(),
            ms_since_start: 0,
            sms_provider: String::new(),
            sms_segments: 0,
            locale: String::new(),
            user_agent_family: String::new(),
            instance: self.instance.clone(),
            rule: "pumping".to_owned(),
            key_type: "prefix".to_owned(),
            flags: Vec::new(),
        }
    }

    /// An event about `record` at `now`.
    pub fn verification(&self, record: &VerificationRecord, kind: EventType, now: Millis) -> Event {
        Event {
            event_id: crate::domain::id::new_v7(),
            ts: now,
            brand: record.brand.clone(),
            event_type: kind.as_str().to_owned(),
            verification_id: *record.id.as_uuid(),
            order_id: Uuid::nil(),
            channel: "sms".to_owned(),
            country: record.phone.country().to_owned(),
            // Stored at start; computed only for rows written before they were stored.
            number_prefix: if record.number_prefix.is_empty() {
                self.prefixes.prefix(&record.phone)
            } else {
                record.number_prefix.clone()
            },
            phone_pseudonym: if record.phone_pseudonym.is_empty() {
                self.pseudonymizer.pseudonym("phone", record.phone.e164())
            } else {
                record.phone_pseudonym.clone()
            },
            customer_pseudonym: record.customer_pseudonym.clone(),
            ip_pseudonym: record.ip_pseudonym.clone(),
            attempt: 0,
            outcome: String::new(),
            reason: String::new(),
            amount_minor: record.amount.minor(),
            currency: record.amount.currency().to_owned(),
            ms_since_start: (now - record.created_at).max(0),
            sms_provider: String::new(),
            sms_segments: 0,
            locale: record.locale.clone().unwrap_or_default(),
            user_agent_family: record.user_agent_family.clone(),
            instance: self.instance.clone(),
            rule: String::new(),
            key_type: String::new(),
            flags: Vec::new(),
        }
    }

    /// A refusal before any verification exists (a blocked start).
    pub fn blocked(&self, brand: &str, context: &BlockedStart<'_>, now: Millis) -> Event {
        let (country, prefix, phone) = match context.phone {
            Some(phone) => (
                phone.country().to_owned(),
                self.prefixes.prefix(phone),
                self.pseudonymizer.pseudonym("phone", phone.e164()),
            ),
            None => (
                context.country.unwrap_or_default().to_owned(),
                String::new(),
                String::new(),
            ),
        };
        Event {
            event_id: crate::domain::id::new_v7(),
            ts: now,
            brand: brand.to_owned(),
            event_type: EventType::VerificationBlocked.as_str().to_owned(),
            verification_id: crate::domain::id::new_v7(),
            order_id: Uuid::nil(),
            channel: "sms".to_owned(),
            country,
            number_prefix: prefix,
            phone_pseudonym: phone,
            customer_pseudonym: self
                .pseudonymizer
                .pseudonym("customer", context.customer_reference),
            ip_pseudonym: self.pseudonymizer.pseudonym("ip", context.client_ip),
            attempt: 0,
            outcome: if context.monitored {
                "monitored".to_owned()
            } else {
                "blocked".to_owned()
            },
            reason: context.rule.to_owned(),
            amount_minor: context.amount_minor,
            currency: context.currency.to_owned(),
            ms_since_start: 0,
            sms_provider: String::new(),
            sms_segments: 0,
            locale: context.locale.to_owned(),
            user_agent_family: user_agent_family(context.user_agent).to_owned(),
            instance: self.instance.clone(),
            rule: context.rule.to_owned(),
            key_type: context.key_type.to_owned(),
            flags: Vec::new(),
        }
    }
}

/// What is known of a start that a rule refused.
#[derive(Debug, Default)]
pub struct BlockedStart<'a> {
    pub rule: &'a str,
    /// What the rule counted by (see [`Event::key_type`]).
    pub key_type: &'a str,
    /// Monitor mode: the start was served; the event says what the rule would have done.
    pub monitored: bool,
    /// The parsed number when the refusal came after parsing (country, number type).
    pub phone: Option<&'a PhoneNumber>,
    pub country: Option<&'a str>,
    pub customer_reference: &'a str,
    pub client_ip: &'a str,
    pub user_agent: &'a str,
    pub locale: &'a str,
    pub amount_minor: i64,
    pub currency: &'a str,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pseudonyms_are_keyed_and_kind_separated() {
        let a = Pseudonymizer::new(b"pepper-a");
        let b = Pseudonymizer::new(b"pepper-b");
        let phone = "+4915123456789";
        assert_eq!(a.pseudonym("phone", phone).len(), 32);
        assert_eq!(a.pseudonym("phone", phone), a.pseudonym("phone", phone));
        assert_ne!(
            a.pseudonym("phone", phone),
            b.pseudonym("phone", phone),
            "the pepper matters"
        );
        assert_ne!(
            a.pseudonym("phone", "42"),
            a.pseudonym("customer", "42"),
            "the kind matters"
        );
        assert!(!a.pseudonym("phone", phone).contains("15123456789"));
        assert_eq!(a.pseudonym("ip", ""), "");
    }

    #[test]
    fn number_prefixes_keep_country_code_and_leading_digits() {
        let de = PhoneNumber::parse("+4915123456789", None, &[]).expect("valid");
        assert_eq!(number_prefix(&de, 3), "+49151");
        assert_eq!(number_prefix(&de, 0), "+49");
        let us = PhoneNumber::parse("+12015550123", None, &[]).expect("valid");
        assert_eq!(number_prefix(&us, 3), "+1201");
    }

    #[test]
    fn user_agents_map_to_coarse_families() {
        let cases = [
            (
                "Mozilla/5.0 (Windows NT 10.0) AppleWebKit/537.36 Chrome/120.0 Safari/537.36",
                "Chrome",
            ),
            (
                "Mozilla/5.0 (Linux; Android 14) AppleWebKit/537.36 Chrome/120.0 Mobile Safari/537.36",
                "Chrome Mobile",
            ),
            (
                "Mozilla/5.0 (iPhone; CPU iPhone OS 17_0) AppleWebKit/605.1.15 Version/17.0 Mobile/15E148 Safari/604.1",
                "Mobile Safari",
            ),
            (
                "Mozilla/5.0 (Windows NT 10.0) AppleWebKit/537.36 Chrome/120.0 Safari/537.36 Edg/120.0",
                "Edge",
            ),
            (
                "Mozilla/5.0 (X11; Linux x86_64; rv:120.0) Gecko/20100101 Firefox/120.0",
                "Firefox",
            ),
            ("curl/8.4.0", "Script"),
            ("", ""),
        ];
        for (ua, family) in cases {
            assert_eq!(user_agent_family(ua), family, "{ua}");
        }
    }
}
