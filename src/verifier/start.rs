//! The start step, as steps: parse the request into checked values → resolve the number (the
//! customer directory) → the start rules (country and number type first, then the fraud
//! rules) → persist the verification with its events → send the code.

use super::{StartRequest, Verifier, VerifyError};
use crate::brands::Brand;
use crate::directory::DirectoryError;
use crate::domain::{
    Millis, Money, NewVerification, OtpCode, PhoneError, PhoneNumber, Status, VerificationId,
    VerificationRecord,
};
use crate::events::{BlockedStart, Event, EventType, user_agent_family};

/// A start request's fields, checked.
struct StartInput {
    id: VerificationId,
    typed_phone: Option<String>,
    order_reference: String,
    amount: Money,
    locale: Option<String>,
    customer_reference: Option<String>,
    client_ip: Option<String>,
    user_agent: String,
    order: Option<crate::domain::NewOrder>,
}

impl StartInput {
    /// Checks the fields in the order they are documented; the first problem is reported.
    fn parse(request: StartRequest) -> Result<Self, VerifyError> {
        let order_reference = validate_text("order_reference", &request.order_reference, 64)?;
        let amount = Money::parse(&request.amount, &request.currency)?;
        let locale = request.locale.as_deref().map(validate_locale).transpose()?;
        let customer_reference = request
            .customer_reference
            .as_deref()
            .map(|c| validate_text("customer_reference", c, 128))
            .transpose()?;
        let client_ip = request.client_ip.as_deref().map(validate_ip).transpose()?;
        let user_agent = request.user_agent.unwrap_or_default();
        if user_agent.chars().count() > 512 {
            return Err(VerifyError::InvalidField {
                field: "user_agent",
                message: "must be at most 512 characters".to_owned(),
            });
        }
        Ok(Self {
            id: request.id,
            typed_phone: request.phone,
            order_reference,
            amount,
            locale,
            customer_reference,
            client_ip,
            user_agent,
            order: request.order,
        })
    }
}

impl Verifier {
    /// What an idempotent start that died mid-way (a crash, a dropped connection, its own
    /// timeout) created: `None` if it never stored the verification, so the retry starts
    /// afresh with the same id. A pending verification whose SMS was never recorded gets it
    /// now, with a new code (the first one was never known outside the dead request).
    pub async fn resume(
        &self,
        brand: &Brand,
        id: &VerificationId,
    ) -> Result<Option<VerificationRecord>, VerifyError> {
        let Some(record) = self.store.get_verification(&brand.id, id).await? else {
            return Ok(None);
        };
        if record.status == Status::Pending && !self.store.has_sms(id).await? {
            let code = OtpCode::generate(brand.limits.code_length);
            let hash = self.hasher.hash(id, &code);
            if self.store.replace_code(id, &hash).await? {
                tracing::info!(verification_id = %id, brand = %brand.id, "resumed start: sending its code");
                self.send_code(brand, &record, &code).await?;
            }
        }
        Ok(Some(record))
    }

    /// Starts a verification and sends the first code.
    pub async fn start(
        &self,
        brand: &Brand,
        request: StartRequest,
    ) -> Result<VerificationRecord, VerifyError> {
        let input = StartInput::parse(request)?;
        let now = self.now();
        let phone_input = self.resolve_number(brand, &input).await?;
        let phone = self.number_rules(brand, &input, &phone_input, now).await?;
        let verdict = self.fraud_rules(brand, &input, &phone, now).await?;
        let (record, code) = self.persist(brand, input, phone, &verdict, now).await?;
        self.send_code(brand, &record, &code).await?;
        Ok(record)
    }

    /// The number to verify: the one on file when the brand has a customer directory and the
    /// shop names the customer (a fraudster cannot redirect it), else the one typed in.
    async fn resolve_number(
        &self,
        brand: &Brand,
        input: &StartInput,
    ) -> Result<String, VerifyError> {
        let on_file = match &input.customer_reference {
            Some(reference) => match self
                .directory
                .phone(&brand.customer_directory, reference)
                .await
            {
                Ok(phone) => phone,
                Err(DirectoryError::UnknownCustomer) => return Err(VerifyError::CustomerUnknown),
                Err(DirectoryError::NoPhone) => return Err(VerifyError::CustomerHasNoPhone),
                Err(DirectoryError::Unavailable(cause)) => {
                    tracing::warn!(brand = %brand.id, cause, "customer directory unavailable");
                    return Err(VerifyError::DirectoryUnavailable);
                }
            },
            None => None,
        };
        on_file
            .or_else(|| input.typed_phone.clone())
            .ok_or_else(|| VerifyError::InvalidField {
                field: "phone",
                message:
                    "is required (or a customer_reference, for a brand with a customer directory)"
                        .to_owned(),
            })
    }

    /// The first start rules: the number must be valid, of an allowed country and a mobile
    /// number. A refusal by a rule (not a typo) is recorded as a blocked start.
    async fn number_rules(
        &self,
        brand: &Brand,
        input: &StartInput,
        phone_input: &str,
        now: Millis,
    ) -> Result<PhoneNumber, VerifyError> {
        let error = match PhoneNumber::parse(
            phone_input,
            brand.default_country.as_deref(),
            &brand.allowed_countries,
        ) {
            Ok(phone) => return Ok(phone),
            Err(error) => error,
        };
        if error != PhoneError::Invalid {
            let parsed = PhoneNumber::parse_valid(phone_input, brand.default_country.as_deref())
                .ok()
                .map(|(number, _)| number);
            let country = match &error {
                PhoneError::CountryNotAllowed(country) => Some(country.as_str()),
                _ => None,
            };
            let event = self.blocked_event(
                brand,
                input,
                (error.kind(), "phone", false),
                parsed.as_ref(),
                country,
                now,
            );
            self.store.append_events(&[event]).await?;
            tracing::info!(brand = %brand.id, rule = error.kind(), "verification blocked");
        }
        Err(error.into())
    }

    /// The fraud rules (`crate::fraud`), cheapest first, before anything is stored or sent.
    /// A refusal is recorded with every monitored rule that would have refused too.
    async fn fraud_rules(
        &self,
        brand: &Brand,
        input: &StartInput,
        phone: &PhoneNumber,
        now: Millis,
    ) -> Result<crate::fraud::Verdict, VerifyError> {
        let facts = crate::fraud::StartFacts {
            phone,
            customer_reference: input.customer_reference.as_deref(),
            client_ip: input.client_ip.as_deref(),
            order_reference: &input.order_reference,
            resend: false,
        };
        let mut verdict = self.fraud.evaluate(brand, &facts, now).await?;
        if let Some(refusal) = verdict.refusal.take() {
            let mut events = self.monitored_events(brand, input, phone, &verdict, now);
            events.push(self.blocked_event(
                brand,
                input,
                (refusal.rule, refusal.key_type, false),
                Some(phone),
                None,
                now,
            ));
            self.store.append_events(&events).await?;
            tracing::info!(brand = %brand.id, rule = refusal.rule, key_type = refusal.key_type, "verification blocked");
            return Err(self.refused(refusal));
        }
        Ok(verdict)
    }

    /// Stores the verification (and its held order) with its events, in one transaction; the
    /// code exists only in memory until it is sent.
    async fn persist(
        &self,
        brand: &Brand,
        input: StartInput,
        phone: PhoneNumber,
        verdict: &crate::fraud::Verdict,
        now: Millis,
    ) -> Result<(VerificationRecord, OtpCode), VerifyError> {
        let monitored = self.monitored_events(brand, &input, &phone, verdict, now);
        let id = input.id;
        let code = OtpCode::generate(brand.limits.code_length);
        let pseudonymizer = self.events.pseudonymizer();
        let phone_pseudonym = pseudonymizer.pseudonym("phone", phone.e164());
        let number_prefix = self.events.prefixes().prefix(&phone);
        let new = NewVerification {
            id,
            brand: brand.id.clone(),
            phone,
            order_reference: input.order_reference,
            amount: input.amount,
            locale: input.locale,
            code_hash: self.hasher.hash(&id, &code),
            limits: brand.limits,
            now,
            phone_pseudonym,
            number_prefix,
            customer_pseudonym: pseudonymizer.pseudonym(
                "customer",
                input.customer_reference.as_deref().unwrap_or_default(),
            ),
            ip_pseudonym: pseudonymizer
                .pseudonym("ip", input.client_ip.as_deref().unwrap_or_default()),
            ip_range_pseudonym: pseudonymizer.pseudonym(
                "ip_range",
                &input
                    .client_ip
                    .as_deref()
                    .map(crate::fraud::ip_range)
                    .unwrap_or_default(),
            ),
            user_agent_family: user_agent_family(&input.user_agent).to_owned(),
            order: input.order,
        };
        let record = VerificationRecord::pending(&new);
        // The text's length does not depend on the code's digits: refuse before anything is
        // stored if it cannot fit the budget.
        self.sms_text(
            brand,
            &record,
            &"0".repeat(usize::from(brand.limits.code_length)),
        )?;
        let mut started = self
            .events
            .verification(&record, EventType::VerificationStarted, now);
        started.flags = verdict.flags.clone();
        started.flags.extend(
            verdict
                .monitored
                .iter()
                .map(|refusal| format!("monitored:{}", refusal.rule)),
        );
        let mut events = monitored;
        events.insert(0, started);
        if let Some(order) = &new.order {
            let mut held = self.events.verification(&record, EventType::OrderHeld, now);
            held.order_id = *order.id.as_uuid();
            events.push(held);
        }
        self.store.insert_verification(&new, &events).await?;
        self.metrics.verification_started(brand.id.as_str());
        tracing::info!(verification_id = %id, brand = %brand.id, to = %record.phone, "verification started");
        Ok((record, code))
    }

    /// What monitored rules would have refused: one blocked event each, outcome `monitored`.
    fn monitored_events(
        &self,
        brand: &Brand,
        input: &StartInput,
        phone: &PhoneNumber,
        verdict: &crate::fraud::Verdict,
        now: Millis,
    ) -> Vec<Event> {
        verdict
            .monitored
            .iter()
            .map(|refusal| {
                self.blocked_event(
                    brand,
                    input,
                    (refusal.rule, refusal.key_type, true),
                    Some(phone),
                    None,
                    now,
                )
            })
            .collect()
    }

    /// A refused start's event: what is known of the start, and which rule (`rule`, what it
    /// counted by, whether only monitored) refused it.
    fn blocked_event(
        &self,
        brand: &Brand,
        input: &StartInput,
        (rule, key_type, monitored): (&str, &str, bool),
        phone: Option<&PhoneNumber>,
        country: Option<&str>,
        now: Millis,
    ) -> Event {
        let context = BlockedStart {
            rule,
            key_type,
            monitored,
            phone,
            country,
            customer_reference: input.customer_reference.as_deref().unwrap_or_default(),
            client_ip: input.client_ip.as_deref().unwrap_or_default(),
            user_agent: &input.user_agent,
            locale: input.locale.as_deref().unwrap_or_default(),
            amount_minor: input.amount.minor(),
            currency: input.amount.currency(),
        };
        self.events.blocked(brand.id.as_str(), &context, now)
    }
}

pub(super) fn validate_text(
    field: &'static str,
    value: &str,
    max: usize,
) -> Result<String, VerifyError> {
    let value = value.trim();
    if value.is_empty() || value.chars().count() > max || value.chars().any(char::is_control) {
        return Err(VerifyError::InvalidField {
            field,
            message: format!("must be 1–{max} characters without control characters"),
        });
    }
    Ok(value.to_owned())
}

fn validate_locale(locale: &str) -> Result<String, VerifyError> {
    let valid = (2..=10).contains(&locale.len())
        && locale.bytes().all(|b| b.is_ascii_alphabetic() || b == b'-');
    if valid {
        Ok(locale.to_owned())
    } else {
        Err(VerifyError::InvalidField {
            field: "locale",
            message: "must be a language tag such as \"de\" or \"sv-SE\"".to_owned(),
        })
    }
}

fn validate_ip(ip: &str) -> Result<String, VerifyError> {
    ip.trim()
        .parse::<std::net::IpAddr>()
        // One text per address: `::FFFF:203.0.113.7`, `::ffff:203.0.113.7` and `203.0.113.7`
        // are counted (and pseudonymised) as one.
        .map(|ip| ip.to_canonical().to_string())
        .map_err(|_| VerifyError::InvalidField {
            field: "client_ip",
            message: "must be an IPv4 or IPv6 address".to_owned(),
        })
}
