//! SMPP 3.4 to the operator's own SMSC, with the `rusmppc` client (its PDU codec is `rusmpp`'s).
//!
//! One long-lived `bind_transceiver` session per provider, kept by a background task: it binds,
//! keeps the session alive with `enquire_link`, answers every `deliver_sm` with
//! `deliver_sm_resp`, and reconnects with a doubling backoff when the session is lost. Sends
//! share the session, at most `window` of them awaiting their `submit_sm_resp` at once.
//!
//! - The text goes as GSM-7 (`data_coding` 0, unpacked) or UCS-2 (`data_coding` 8), as the
//!   segment counter decided; a text of several segments as concatenated parts (a UDH with an
//!   8-bit reference).
//! - `ESME_RTHROTTLED` and `ESME_RMSGQFUL` are retried twice on the session, then the next
//!   provider is tried; other refusals (`ESME_RINVDSTADR`, …) are final.
//! - A submit whose answer was lost with the session, or did not come in time, is never
//!   submitted again: it may have been delivered (like an HTTP timeout), and the buyer may resend.
//! - Delivery receipts (`deliver_sm` with the `receipted_message_id` / `message_state` TLVs, or
//!   the `id:… stat:DELIVRD …` text of SMPP 3.4's appendix B) are handed to the verifier, and
//!   the `deliver_sm` is answered once the receipt is applied.

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use futures_util::StreamExt;
use rusmpp::extra::concatenation::SubmitSmMultipartExt;
use rusmpp::pdus::{BindTransceiver, DeliverSm, DeliverSmResp, SubmitSm};
use rusmpp::tlvs::TlvValue;
use rusmpp::types::COctetString;
use rusmpp::values::{InterfaceVersion, MessageState, Npi, RegisteredDelivery, Ton};
use rusmpp::{CommandId, CommandStatus, Pdu};
use rusmppc::{Client, ConnectionBuilder, Event};
use secrecy::{ExposeSecret, SecretString};
use tokio::sync::{Semaphore, mpsc, watch};

use super::segments::{self, Encoding};
use super::{SendError, SmsMessage, SmsProvider};
use crate::metrics::Metrics;
use crate::settings::ProviderSettings;

/// A delivery receipt from an SMSC, to apply and then acknowledge.
pub struct DeliveryReceipt {
    /// The provider whose session it came in on.
    pub provider: String,
    /// The SMSC's message id (what `submit_sm_resp` answered).
    pub reference: String,
    pub delivered: bool,
    /// `stat:… err:…` of an undelivered message.
    pub reason: String,
    ack: Option<(Client, u32, Arc<Busy>)>,
    /// When it came in, and where its submit's answer time is kept (the receipt lag).
    received: Option<(Instant, Arc<Shared>, Arc<Metrics>)>,
}

impl DeliveryReceipt {
    /// Answers the `deliver_sm` (`deliver_sm_resp`), once the receipt is applied, and records
    /// the receipt lag. By now the send that took the message has recorded its answer's time,
    /// even for a receipt that overtook it (a lag of 0).
    pub async fn acknowledge(mut self) {
        if let Some((received_at, shared, metrics)) = self.received.take() {
            if let Some(answered_at) = shared.take_answered(&self.reference) {
                metrics
                    .smpp
                    .receipt_lag
                    .with_label_values(&[&self.provider])
                    .observe(
                        received_at
                            .saturating_duration_since(answered_at)
                            .as_secs_f64(),
                    );
            }
        }
        if let Some((client, sequence_number, busy)) = self.ack.take() {
            let _in_flight = busy.enter();
            if let Err(error) = client
                .deliver_sm_resp(sequence_number, DeliverSmResp::default())
                .await
            {
                tracing::warn!(provider = self.provider, %error, "answering a deliver_sm failed");
            }
        }
    }
}

/// What the session task needs.
struct Session {
    name: String,
    url: String,
    system_id: String,
    password: SecretString,
    system_type: String,
    submit_timeout: Duration,
    enquire_link: Duration,
    reconnect_initial: Duration,
    reconnect_max: Duration,
}

/// State shared between the session task and the sends.
#[derive(Default)]
struct Shared {
    client: RwLock<Option<Client>>,
    busy: Arc<Busy>,
    /// When each message's submit was answered, for the receipt lag (bounded).
    answered: Mutex<HashMap<String, Instant>>,
}

const ANSWERED_KEPT: usize = 100_000;

/// What the session has in flight, for [`drive`].
#[derive(Default)]
struct Busy {
    count: std::sync::atomic::AtomicUsize,
    started: tokio::sync::Notify,
}

/// Counts one call in flight until dropped.
struct InFlight<'a>(&'a Busy);

impl Busy {
    fn enter(&self) -> InFlight<'_> {
        if self.count.fetch_add(1, Ordering::AcqRel) == 0 {
            self.started.notify_one();
        }
        InFlight(self)
    }

    fn idle(&self) -> bool {
        self.count.load(Ordering::Acquire) == 0
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.count.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Runs rusmppc's connection. It handles at most five queued client calls per poll and is
/// polled again only when the socket or its keep-alive timer wakes it, so calls queued beyond
/// those five would wait for the next `enquire_link` (the load test saw every submit of a
/// 32-wide window stall). While any call is in flight, the connection is polled every
/// millisecond; idle, only by its own wake-ups.
async fn drive(connection: impl std::future::Future<Output = ()>, busy: Arc<Busy>) {
    let mut connection = std::pin::pin!(connection);
    loop {
        if busy.idle() {
            tokio::select! {
                () = &mut connection => return,
                () = busy.started.notified() => {}
            }
        } else {
            tokio::select! {
                () = &mut connection => return,
                () = tokio::time::sleep(Duration::from_millis(1)) => {}
            }
        }
    }
}

impl Shared {
    fn client(&self) -> Option<Client> {
        self.client
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
            .filter(Client::is_active)
    }

    fn set_client(&self, client: Option<Client>) {
        *self
            .client
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = client;
    }

    fn answered(&self, id: &str) {
        let mut answered = self
            .answered
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if answered.len() >= ANSWERED_KEPT {
            answered.clear();
        }
        answered.insert(id.to_owned(), Instant::now());
    }

    fn take_answered(&self, id: &str) -> Option<Instant> {
        self.answered
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(id)
    }
}

pub struct SmppProvider {
    name: String,
    shared: Arc<Shared>,
    window: Arc<Semaphore>,
    window_size: usize,
    submit_timeout: Duration,
    source: Option<String>,
    source_ton: Option<u8>,
    source_npi: Option<u8>,
    registered_delivery: bool,
    reference: AtomicU8,
    metrics: Arc<Metrics>,
    stop: watch::Sender<bool>,
}

impl Drop for SmppProvider {
    fn drop(&mut self) {
        // Ends the session task: it unbinds and closes the connection.
        let _ = self.stop.send(true);
    }
}

impl SmppProvider {
    /// Starts the session task; receipts go to `receipts`.
    pub fn start(
        settings: &ProviderSettings,
        receipts: mpsc::UnboundedSender<DeliveryReceipt>,
        metrics: Arc<Metrics>,
    ) -> anyhow::Result<Self> {
        let ProviderSettings::Smpp {
            name,
            host,
            port,
            system_id,
            password,
            system_type,
            source_addr,
            source_ton,
            source_npi,
            window,
            submit_timeout_ms,
            enquire_link_ms,
            reconnect_initial_ms,
            reconnect_max_ms,
            delivery_receipts,
        } = settings
        else {
            anyhow::bail!("not an smpp provider");
        };
        anyhow::ensure!(
            system_id.len() <= 15,
            "sms provider {name}: system_id has at most 15 characters"
        );
        anyhow::ensure!(
            password.expose_secret().len() <= 8,
            "sms provider {name}: an SMPP 3.4 password has at most 8 characters"
        );
        anyhow::ensure!(
            *window >= 1,
            "sms provider {name}: window must be at least 1"
        );
        let session = Session {
            name: name.clone(),
            url: format!("smpp://{host}:{port}"),
            system_id: system_id.clone(),
            password: password.clone(),
            system_type: system_type.clone(),
            submit_timeout: Duration::from_millis(*submit_timeout_ms),
            enquire_link: Duration::from_millis(*enquire_link_ms),
            reconnect_initial: Duration::from_millis(*reconnect_initial_ms),
            reconnect_max: Duration::from_millis((*reconnect_max_ms).max(*reconnect_initial_ms)),
        };
        let shared = Arc::new(Shared::default());
        let (stop, stopped) = watch::channel(false);
        metrics.smpp.session_up.with_label_values(&[name]).set(0);
        metrics.smpp.window_in_use.with_label_values(&[name]).set(0);
        tokio::spawn(keep_session(
            session,
            shared.clone(),
            receipts,
            metrics.clone(),
            stopped,
        ));
        let window_size = *window as usize;
        Ok(Self {
            name: name.clone(),
            shared,
            window: Arc::new(Semaphore::new(window_size)),
            window_size,
            submit_timeout: Duration::from_millis(*submit_timeout_ms),
            source: source_addr.clone(),
            source_ton: *source_ton,
            source_npi: *source_npi,
            registered_delivery: *delivery_receipts,
            reference: AtomicU8::new(0),
            metrics,
            stop,
        })
    }

    /// Whether the session is bound.
    pub fn is_bound(&self) -> bool {
        self.shared.client().is_some()
    }

    /// The `submit_sm` PDUs of `message`: one, or the concatenated parts.
    fn parts(&self, message: &SmsMessage) -> Result<Vec<SubmitSm>, SendError> {
        let refuse = |what: &str| SendError::Refused(format!("cannot submit: {what}"));
        let source = self.source.as_deref().unwrap_or(&message.sender);
        let alphanumeric = !source.chars().all(|c| c.is_ascii_digit() || c == '+');
        let source_ton = self.source_ton.unwrap_or(if alphanumeric { 5 } else { 1 });
        let source_npi = self.source_npi.unwrap_or(u8::from(!alphanumeric));
        let destination = message.to.e164().trim_start_matches('+');
        let base = SubmitSm::builder()
            .source_addr_ton(Ton::from(source_ton))
            .source_addr_npi(Npi::from(source_npi))
            .source_addr(
                COctetString::from_str(source.trim_start_matches('+'))
                    .map_err(|_| refuse("the sender is not a valid source_addr"))?,
            )
            // Store-and-forward, no special type: 0 (rusmpp's default sets an ANSI-41 bit).
            .esm_class(rusmpp::values::EsmClass::from(0))
            .dest_addr_ton(Ton::International)
            .dest_addr_npi(Npi::Isdn)
            .destination_addr(
                COctetString::from_str(destination)
                    .map_err(|_| refuse("the number is not a valid destination_addr"))?,
            )
            // 0x01: a receipt on final delivery, success or failure (SMPP 3.4, 5.2.17).
            .registered_delivery(RegisteredDelivery::from(u8::from(self.registered_delivery)))
            .build();
        let count = segments::count(&message.text);
        let reference = self.reference.fetch_add(1, Ordering::Relaxed);
        let multipart = base.multipart(&message.text).reference_u8(reference);
        let built = match (count.encoding, count.segments) {
            // Unpacked GSM-7 takes an octet per septet: 160 in one message; a concatenated
            // part's six UDH octets take seven septets, leaving 153 (159 - 6).
            (Encoding::Gsm7, 1) => multipart
                .max_short_message_size(160)
                .gsm7bit_unpacked()
                .build()
                .map_err(|e| e.to_string()),
            (Encoding::Gsm7, _) => multipart
                .max_short_message_size(159)
                .gsm7bit_unpacked()
                .build()
                .map_err(|e| e.to_string()),
            (Encoding::Ucs2, _) => multipart.ucs2().build().map_err(|e| e.to_string()),
        };
        built.map_err(|error| refuse(&error))
    }

    fn count(&self, outcome: &str) {
        self.metrics
            .smpp
            .submits
            .with_label_values(&[&self.name, outcome])
            .inc();
    }

    /// Submits one part; `sent_before` parts of the message were accepted already.
    async fn submit(&self, part: &SubmitSm, sent_before: usize) -> Result<String, SendError> {
        // Once a part is out, any failure may leave a partial message on the phone.
        let lost = |cause: String| {
            if sent_before == 0 {
                SendError::Unavailable(cause)
            } else {
                SendError::Broken(format!("{cause} after {sent_before} part(s)"))
            }
        };
        let mut throttled = 0u32;
        loop {
            let Some(client) = self.shared.client() else {
                self.count("no_session");
                return Err(lost("no SMPP session is bound".to_owned()));
            };
            let answer = {
                let _in_flight = self.shared.busy.enter();
                client.submit_sm(part.clone()).await
            };
            match answer {
                Ok(response) => {
                    self.count("ok");
                    return Ok(response.message_id().as_str().to_owned());
                }
                Err(rusmppc::error::Error::UnexpectedResponse { response }) => {
                    let status = response.status();
                    if matches!(
                        status,
                        CommandStatus::EsmeRthrottled | CommandStatus::EsmeRmsgqful
                    ) {
                        self.count("throttled");
                        if throttled < 2 {
                            throttled += 1;
                            tokio::time::sleep(Duration::from_millis(100 << throttled)).await;
                            continue;
                        }
                        return Err(lost(format!("the SMSC is throttling ({status:?})")));
                    }
                    if matches!(status, CommandStatus::EsmeRsyserr) {
                        self.count("error");
                        return Err(lost(format!("the SMSC answered {status:?}")));
                    }
                    self.count("refused");
                    return Err(if sent_before == 0 {
                        SendError::Refused(format!("the SMSC refused the message: {status:?}"))
                    } else {
                        lost(format!("the SMSC refused a part: {status:?}"))
                    });
                }
                Err(rusmppc::error::Error::ResponseTimeout { .. }) => {
                    self.count("timeout");
                    return Err(SendError::TimedOut);
                }
                Err(error) => {
                    // The session went down with the submit in flight: it may have been
                    // delivered, so it is not submitted again.
                    self.count("lost");
                    return Err(SendError::Broken(format!(
                        "the SMPP session was lost before the answer: {error}"
                    )));
                }
            }
        }
    }
}

#[async_trait]
impl SmsProvider for SmppProvider {
    fn name(&self) -> &str {
        &self.name
    }

    fn is_available(&self) -> bool {
        self.is_bound()
    }

    async fn send(&self, message: &SmsMessage) -> Result<Option<String>, SendError> {
        let parts = self.parts(message)?;
        let Ok(Ok(_permit)) =
            tokio::time::timeout(self.submit_timeout, self.window.acquire()).await
        else {
            self.count("window_full");
            return Err(SendError::Unavailable(
                "the SMPP window stayed full".to_owned(),
            ));
        };
        let in_use = self.window_size - self.window.available_permits();
        let gauge = self
            .metrics
            .smpp
            .window_in_use
            .with_label_values(&[&self.name]);
        gauge.set(in_use as i64);
        let mut first = None;
        let mut outcome = Ok(());
        for (index, part) in parts.iter().enumerate() {
            match self.submit(part, index).await {
                Ok(id) => {
                    if first.is_none() {
                        // At once: its receipt may follow the answer within milliseconds.
                        self.shared.answered(&id);
                        first = Some(id);
                    }
                }
                Err(error) => {
                    outcome = Err(error);
                    break;
                }
            }
        }
        gauge.set((self.window_size - self.window.available_permits() - 1) as i64);
        outcome?;
        Ok(first)
    }
}

/// Binds, keeps and rebinds the session until the provider is dropped.
async fn keep_session(
    session: Session,
    shared: Arc<Shared>,
    receipts: mpsc::UnboundedSender<DeliveryReceipt>,
    metrics: Arc<Metrics>,
    mut stop: watch::Receiver<bool>,
) {
    let name = session.name.as_str();
    let up = metrics.smpp.session_up.with_label_values(&[name]);
    let mut backoff = session.reconnect_initial;
    while !*stop.borrow() {
        match bind(&session, &shared.busy).await {
            Ok((client, mut events)) => {
                metrics.smpp.binds.with_label_values(&[name, "ok"]).inc();
                tracing::info!(provider = name, "SMPP session bound");
                shared.set_client(Some(client.clone()));
                up.set(1);
                backoff = session.reconnect_initial;
                loop {
                    tokio::select! {
                        _ = stop.changed() => {
                            shared.set_client(None);
                            up.set(0);
                            let _in_flight = shared.busy.enter();
                            let _ = client.unbind().await;
                            let _ = client.close().await;
                            return;
                        }
                        event = events.next() => match event {
                            None => break,
                            Some(Event::Incoming(command)) if command.id() == CommandId::DeliverSm => {
                                deliver(&session.name, &client, &shared, &receipts, &metrics, command).await;
                            }
                            Some(Event::Incoming(_)) => {}
                            Some(Event::Error(error)) => {
                                tracing::warn!(provider = name, %error, "SMPP session error");
                            }
                        }
                    }
                }
                shared.set_client(None);
                up.set(0);
                tracing::warn!(provider = name, "SMPP session lost; reconnecting");
            }
            Err((result, reason)) => {
                tracing::error!(provider = name, result, %reason, "SMPP bind failed");
                metrics.smpp.binds.with_label_values(&[name, &result]).inc();
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = stop.changed() => return,
        }
        backoff = (backoff * 2).min(session.reconnect_max);
    }
}

type Events = Box<dyn futures_util::Stream<Item = Event> + Unpin + Send>;

/// Connects and binds as a transceiver; on failure, the metric label and a readable reason.
async fn bind(session: &Session, busy: &Arc<Busy>) -> Result<(Client, Events), (String, String)> {
    // Every request's answer times out after `submit_timeout` (rusmppc applies the
    // connection's timeout, not a per-request one).
    let (client, events, connection) = ConnectionBuilder::new()
        .enquire_link_interval(session.enquire_link)
        .response_timeout(session.submit_timeout)
        .enable_auto_enquire_link_response()
        .disable_interface_version_check()
        .no_spawn()
        .connect(&session.url)
        .await
        .map_err(|error| ("connect_failed".to_owned(), error.to_string()))?;
    tokio::spawn(drive(connection, busy.clone()));
    let _in_flight = busy.enter();
    fn field<const N: usize>(
        value: &str,
        what: &str,
    ) -> Result<COctetString<1, N>, (String, String)> {
        COctetString::from_str(value)
            .map_err(|_| ("invalid".to_owned(), format!("{what} is not valid")))
    }
    let bound = client
        .bind_transceiver(
            BindTransceiver::builder()
                .system_id(field(&session.system_id, "system_id")?)
                .password(field(session.password.expose_secret(), "password")?)
                .system_type(field(&session.system_type, "system_type")?)
                .interface_version(InterfaceVersion::Smpp3_4)
                .addr_ton(Ton::Unknown)
                .addr_npi(Npi::Unknown)
                .address_range(COctetString::empty())
                .build(),
        )
        .await;
    match bound {
        Ok(_) => Ok((client, Box::new(events))),
        Err(error) => {
            let _ = client.close().await;
            Err(match error {
                rusmppc::error::Error::UnexpectedResponse { response } => {
                    let status = response.status();
                    let reason = match status {
                        CommandStatus::EsmeRinvpaswd => "the SMSC refused the password",
                        CommandStatus::EsmeRinvsysid => "the SMSC does not know this system_id",
                        CommandStatus::EsmeRbindfail => "the SMSC refused the bind",
                        CommandStatus::EsmeRalybnd => "the SMSC says this account is bound already",
                        _ => "the SMSC refused the bind",
                    };
                    (format!("{status:?}"), format!("{reason} ({status:?})"))
                }
                other => ("error".to_owned(), other.to_string()),
            })
        }
    }
}

/// A `deliver_sm`: a receipt goes to the verifier, which answers it once applied; anything
/// else (a message from a phone) is answered at once.
async fn deliver(
    provider: &str,
    client: &Client,
    shared: &Arc<Shared>,
    receipts: &mpsc::UnboundedSender<DeliveryReceipt>,
    metrics: &Arc<Metrics>,
    command: rusmpp::Command,
) {
    let sequence_number = command.sequence_number();
    let receipt = match command.pdu() {
        Some(Pdu::DeliverSm(deliver_sm)) => parse_receipt(deliver_sm),
        _ => None,
    };
    let Some((reference, state)) = receipt else {
        let _in_flight = shared.busy.enter();
        let _ = client
            .deliver_sm_resp(sequence_number, DeliverSmResp::default())
            .await;
        return;
    };
    let receipt = DeliveryReceipt {
        provider: provider.to_owned(),
        reference,
        delivered: state.delivered.unwrap_or_default(),
        reason: state.reason,
        ack: Some((client.clone(), sequence_number, shared.busy.clone())),
        received: state
            .delivered
            .map(|_| (Instant::now(), shared.clone(), metrics.clone())),
    };
    if state.delivered.is_none() {
        // An intermediate state (ENROUTE, ACCEPTD): nothing to record.
        receipt.acknowledge().await;
        return;
    }
    if let Err(unsent) = receipts.send(receipt) {
        unsent.0.acknowledge().await;
    }
}

/// A receipt's state: delivered, undelivered, or not final (`None`).
#[derive(Debug, PartialEq, Eq)]
struct ReceiptState {
    delivered: Option<bool>,
    reason: String,
}

/// The message id and state of a delivery receipt; `None` for a `deliver_sm` that is not one.
/// The TLVs win over the text, which SMPP 3.4 (appendix B) only suggests.
fn parse_receipt(deliver_sm: &DeliverSm) -> Option<(String, ReceiptState)> {
    let is_receipt = deliver_sm.esm_class.message_type
        == rusmpp::values::MessageType::ShortMessageContainsMCDeliveryReceipt;
    let text = String::from_utf8_lossy(deliver_sm.short_message().as_ref()).into_owned();
    let field = |name: &str| {
        text.split_whitespace()
            .find_map(|word| word.strip_prefix(name))
            .map(str::to_owned)
    };
    let mut reference = field("id:");
    let mut state = field("stat:").map(|stat| stat_state(&stat, field("err:")));
    for tlv in deliver_sm.tlvs() {
        match tlv.value() {
            Some(TlvValue::ReceiptedMessageId(id)) => reference = Some(id.as_str().to_owned()),
            Some(TlvValue::MessageState(message_state)) => {
                state = Some(message_state_state(*message_state, field("err:")));
            }
            _ => {}
        }
    }
    if !is_receipt && reference.is_none() {
        return None;
    }
    Some((reference?, state?))
}

fn stat_state(stat: &str, err: Option<String>) -> ReceiptState {
    let delivered = match stat {
        "DELIVRD" => Some(true),
        "ENROUTE" | "ACCEPTD" => None,
        _ => Some(false),
    };
    ReceiptState {
        delivered,
        reason: reason(stat, err, delivered),
    }
}

fn message_state_state(state: MessageState, err: Option<String>) -> ReceiptState {
    let (delivered, stat) = match state {
        MessageState::Delivered => (Some(true), "DELIVRD"),
        MessageState::Scheduled | MessageState::Enroute | MessageState::Accepted => {
            (None, "ENROUTE")
        }
        MessageState::Expired => (Some(false), "EXPIRED"),
        MessageState::Deleted => (Some(false), "DELETED"),
        MessageState::Rejected => (Some(false), "REJECTD"),
        MessageState::Undeliverable => (Some(false), "UNDELIV"),
        _ => (Some(false), "UNKNOWN"),
    };
    ReceiptState {
        delivered,
        reason: reason(stat, err, delivered),
    }
}

fn reason(stat: &str, err: Option<String>, delivered: Option<bool>) -> String {
    match (delivered, err) {
        (Some(false), Some(err)) => format!("stat:{stat} err:{err}"),
        (Some(false), None) => format!("stat:{stat}"),
        _ => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn receipt(
        text: &str,
        tlvs: Vec<rusmpp::tlvs::MessageDeliveryRequestTlvValue>,
    ) -> Option<(String, ReceiptState)> {
        let mut deliver_sm = DeliverSm::builder()
            .esm_class(rusmpp::values::EsmClass::from(0x04))
            .short_message(rusmpp::types::OctetString::from_str(text).expect("text"))
            .build();
        for tlv in tlvs {
            deliver_sm.push_tlv(tlv);
        }
        parse_receipt(&deliver_sm)
    }

    #[test]
    fn receipts_are_read_from_the_text_and_the_tlvs_win() {
        let text = "id:abc123 sub:001 dlvrd:001 submit date:2612041200 done date:2612041201 stat:DELIVRD err:000 text:";
        assert_eq!(
            receipt(text, vec![]),
            Some((
                "abc123".to_owned(),
                ReceiptState {
                    delivered: Some(true),
                    reason: String::new()
                }
            ))
        );
        let undelivered = "id:x1 sub:001 dlvrd:000 submit date:2612041200 done date:2612041201 stat:UNDELIV err:034 text:";
        assert_eq!(
            receipt(undelivered, vec![]).map(|(_, state)| state.reason),
            Some("stat:UNDELIV err:034".to_owned())
        );
        let (id, state) = receipt(
            "id:text-id stat:DELIVRD",
            vec![
                rusmpp::tlvs::MessageDeliveryRequestTlvValue::ReceiptedMessageId(
                    COctetString::from_str("tlv-id").expect("id"),
                ),
                rusmpp::tlvs::MessageDeliveryRequestTlvValue::MessageState(MessageState::Expired),
            ],
        )
        .expect("a receipt");
        assert_eq!((id.as_str(), state.delivered), ("tlv-id", Some(false)));
        assert_eq!(
            receipt("id:1 stat:ENROUTE", vec![]).map(|(_, s)| s.delivered),
            Some(None)
        );
        assert_eq!(receipt("hello from a phone", vec![]), None);
    }
}
