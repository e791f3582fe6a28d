//! The settings' sections and their defaults.

use std::path::PathBuf;

use secrecy::SecretString;
use serde::{Deserialize, Serialize};

use super::{serialize_redacted, serialize_redacted_list, serialize_redacted_secret};

/// `[privacy]`: how long personal data is kept (see the README's "Personal data").
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct PrivacySettings {
    /// Days after a verification or order finished until its number, payload and upstream
    /// answer are blanked, and dead letters are deleted. Default 30.
    pub retention_days: u32,
    /// Hours an idempotency key (and the answer stored with it) is kept. Default 24.
    pub idempotency_hours: u32,
    /// How often the purge runs. Default 60000.
    pub purge_interval_ms: u64,
    /// Rows per statement of a purge pass (each its own short transaction). Default 1000.
    pub purge_batch_rows: u32,
}

impl Default for PrivacySettings {
    fn default() -> Self {
        Self {
            retention_days: 30,
            idempotency_hours: 24,
            purge_interval_ms: 60_000,
            purge_batch_rows: 1_000,
        }
    }
}

impl PrivacySettings {
    pub fn retention(&self) -> crate::privacy::Retention {
        crate::privacy::Retention {
            retention_days: self.retention_days,
            idempotency_hours: self.idempotency_hours,
            interval: std::time::Duration::from_millis(self.purge_interval_ms),
            batch_rows: self.purge_batch_rows,
        }
    }
}

/// Seams for tests of the real binary; refused in production.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct TestingSettings {
    /// Starts the application's clock this far ahead of the system clock, so a test of the
    /// binary sees windows, retries and expiries without waiting. Default 0; production
    /// refuses anything else.
    pub clock_offset_ms: i64,
}

/// How numbers are grouped into prefixes (the pumping guard, the events' `number_prefix`,
/// the dashboards): the country code and the first N national digits.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct PrefixSettings {
    /// N for every country not listed in `by_country`. Default 3 (`+49151`).
    pub national_digits: u8,
    /// N per country (ISO 3166 alpha-2), e.g. `{ SE = 2 }`. Default empty.
    pub by_country: std::collections::BTreeMap<String, u8>,
}

impl Default for PrefixSettings {
    fn default() -> Self {
        Self {
            national_digits: 3,
            by_country: Default::default(),
        }
    }
}

/// One operator allowed on the admin routes.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct OperatorToken {
    /// Who this is, named in the events of what they do (e.g. a lifted block).
    pub actor: String,
    /// `fraud` (blocks) or `privacy` (erasure and access requests).
    pub scope: String,
    /// `sha256:<hex>` of the bearer token; the token itself is never configured.
    pub hash: String,
}

/// The operator routes (`/v1/admin/…`).
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminSettings {
    /// Operators and their scopes. Default none: the admin routes answer 401.
    pub tokens: Vec<OperatorToken>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    Dev,
    Production,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpSettings {
    /// Address to listen on. Default `127.0.0.1`.
    pub host: String,
    /// Port to listen on; 0 picks a free one. Default 8080.
    pub port: u16,
    /// The URL buyers reach the service at; its host ends the SMS (WebOTP `@host #code`).
    /// Default `http://localhost:<port>`.
    pub public_url: Option<String>,
    /// Requests taking longer are answered 408. Default 10000.
    pub request_timeout_ms: u64,
    /// Larger request bodies are refused with 413. Default 65536.
    pub body_limit_bytes: usize,
    /// Requests served at once; more are answered 503 `overloaded` with Retry-After, so an
    /// overload keeps memory bounded instead of queueing without end. Default 512.
    pub max_in_flight: usize,
    /// A second listener (same host) for `/metrics` and the operator routes `/v1/admin/…`, so
    /// buyers' ingress never exposes them; unset serves them on the main port. Default unset.
    pub admin_port: Option<u16>,
    /// Proxies (CIDR blocks, e.g. `10.0.0.0/8`) whose `X-Forwarded-For` names the buyer on
    /// requests from the buyer's browser (the code page); read from the right past every
    /// trusted hop. Default none: the peer address is the buyer's.
    pub trusted_proxies: Vec<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct DatabaseSettings {
    /// `postgres://…` or `sqlite://…`. Default (dev mode only): `sqlite://<data_dir>/orderguard.db`.
    pub url: Option<String>,
    /// Connections in the pool. Default 10.
    pub max_connections: u32,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct SecretSettings {
    /// Key for the codes' HMAC, at least 32 characters. Dev mode generates one in
    /// `<data_dir>/keys/code.key` when unset; production mode requires it.
    #[serde(serialize_with = "serialize_redacted")]
    pub code_key: Option<SecretString>,
    /// Key of the keyed hashes (pseudonyms) of phone numbers, customers and IPs in events, at
    /// least 32 characters. Dev mode generates one in `<data_dir>/keys/event.pepper`.
    #[serde(serialize_with = "serialize_redacted")]
    pub event_pepper: Option<SecretString>,
    /// Key that signs the code page links, at least 32 characters. Dev mode generates one in
    /// `<data_dir>/keys/widget.key`.
    #[serde(serialize_with = "serialize_redacted")]
    pub widget_key: Option<SecretString>,
    /// Event peppers replaced by `event_pepper` whose pseudonyms are still in events and
    /// rows within retention: an erasure looks a person up under each. Default none.
    #[serde(serialize_with = "serialize_redacted_list")]
    pub retired_event_peppers: Vec<SecretString>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct SmsSettings {
    /// Providers tried in order; the next is tried on a timeout, a connection error or a 5xx.
    /// Default (dev mode only): one `log` provider.
    pub providers: Vec<ProviderSettings>,
    /// Shared secret that signs delivery receipts posted to `/v1/callbacks/sms/http`.
    /// Receipts are refused while it is unset.
    #[serde(serialize_with = "serialize_redacted")]
    pub receipt_secret: Option<SecretString>,
}

/// One SMS provider.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum ProviderSettings {
    /// Development only: writes a masked line to the log and keeps the message in the dev inbox.
    Log {
        /// Name in metrics and logs. Default `log`.
        #[serde(default = "default_log_name")]
        name: String,
    },
    /// A generic HTTP gateway: JSON POST of a templated body.
    Http {
        /// Name in metrics and logs.
        name: String,
        /// The gateway's URL.
        url: String,
        /// Give up (and fail over) after this long. Default 5000.
        #[serde(default = "default_sms_timeout_ms")]
        timeout_ms: u64,
        /// Header carrying the credential, e.g. `Authorization`.
        #[serde(default)]
        auth_header: Option<String>,
        /// The credential, e.g. `Bearer …`.
        #[serde(default, serialize_with = "serialize_redacted")]
        auth_value: Option<SecretString>,
        /// JSON body with `{to}`, `{from}`, `{text}` and `{message_id}` placeholders, each replaced
        /// by the JSON-escaped value. Default
        /// `{"to":"{to}","from":"{from}","text":"{text}","reference":"{message_id}"}`.
        #[serde(default)]
        body_template: Option<String>,
    },
    /// SMPP 3.4 to an SMSC: one long-lived `bind_transceiver` session, delivery receipts as
    /// `deliver_sm`.
    Smpp {
        /// Name in metrics and logs.
        name: String,
        /// The SMSC's host.
        host: String,
        /// Default 2775.
        #[serde(default = "default_smpp_port")]
        port: u16,
        /// The ESME account (`system_id`, at most 15 characters).
        system_id: String,
        /// Its password (at most 8 characters in SMPP 3.4).
        #[serde(serialize_with = "serialize_redacted_secret")]
        password: SecretString,
        /// `system_type` of the bind. Default empty.
        #[serde(default)]
        system_type: String,
        /// `source_addr`. Default: the brand's sender.
        #[serde(default)]
        source_addr: Option<String>,
        /// `source_addr_ton`. Default: 5 (alphanumeric) for a sender with letters, else 1
        /// (international).
        #[serde(default)]
        source_ton: Option<u8>,
        /// `source_addr_npi`. Default: 0 for an alphanumeric sender, else 1 (ISDN/E.164).
        #[serde(default)]
        source_npi: Option<u8>,
        /// Submits awaiting their answer at once. Default 10.
        #[serde(default = "default_smpp_window")]
        window: u32,
        /// Give up on one `submit_sm` answer after this long. Default 5000.
        #[serde(default = "default_sms_timeout_ms")]
        submit_timeout_ms: u64,
        /// `enquire_link` keep-alive interval. Default 30000.
        #[serde(default = "default_enquire_link_ms")]
        enquire_link_ms: u64,
        /// First wait before reconnecting; doubles up to `reconnect_max_ms`. Default 500.
        #[serde(default = "default_reconnect_initial_ms")]
        reconnect_initial_ms: u64,
        /// Default 30000.
        #[serde(default = "default_reconnect_max_ms")]
        reconnect_max_ms: u64,
        /// Ask for delivery receipts (`registered_delivery`). Default true.
        #[serde(default = "default_status_callbacks")]
        delivery_receipts: bool,
    },
    /// Twilio's Messages API. Status callbacks arrive at `/v1/callbacks/sms/twilio`, signed with
    /// the Auth Token.
    Twilio {
        /// Name in metrics and logs.
        name: String,
        /// The Account SID (`AC…`).
        account_sid: String,
        /// The Auth Token: it signs the status callbacks, so it is always required.
        #[serde(serialize_with = "serialize_redacted_secret")]
        auth_token: SecretString,
        /// An API key's SID (`SK…`) to authenticate sends with instead of the Auth Token.
        #[serde(default)]
        api_key_sid: Option<String>,
        /// The API key's secret.
        #[serde(default, serialize_with = "serialize_redacted")]
        api_key_secret: Option<SecretString>,
        /// `From`: a number or an alphanumeric sender id. Default: the brand's sender.
        #[serde(default)]
        from: Option<String>,
        /// A Messaging Service (`MG…`) instead of `from`.
        #[serde(default)]
        messaging_service_sid: Option<String>,
        /// Default `https://api.twilio.com`.
        #[serde(default = "default_twilio_base_url")]
        base_url: String,
        /// Give up (and fail over) after this long. Default 5000.
        #[serde(default = "default_sms_timeout_ms")]
        timeout_ms: u64,
        /// Ask for status callbacks (`StatusCallback`). Default true.
        #[serde(default = "default_status_callbacks")]
        status_callbacks: bool,
    },
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct SweeperSettings {
    /// How often pending verifications past their TTL are marked expired. Default 5000.
    pub interval_ms: u64,
}

/// The event pipeline: outbox, relay, pseudonyms.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct EventSettings {
    /// Most events per shipped batch. Default 5000.
    pub batch_rows: usize,
    /// Most payload bytes per shipped batch. Default 8 MiB.
    pub batch_bytes: usize,
    /// How long the relay waits when the outbox is empty. Default 500.
    pub period_ms: u64,
    /// How long a claimed batch is reserved for one instance. Default 30000.
    pub lease_ms: u64,
    /// First retry delay when the sink fails; doubles up to `retry_max_ms`. Default 200.
    pub retry_initial_ms: u64,
    /// Longest retry delay. Default 30000.
    pub retry_max_ms: u64,
    /// JSON-lines file used when no ClickHouse is configured. Default `<data_dir>/events.jsonl`.
    pub jsonl_path: Option<PathBuf>,
    /// The JSON-lines file is rotated beyond this size. Default 64 MiB.
    pub jsonl_rotate_bytes: u64,
    /// Name of this instance in events. Default `$HOSTNAME`, else `orderguard`.
    pub instance: Option<String>,
}

/// Approval tokens (EdDSA JWS) issued on approval.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApprovalSettings {
    /// Signing keys; the first signs, all are published in the JWKS (rotation). Dev mode
    /// generates one in `<data_dir>/keys/approval.key` when none is set; production requires one.
    pub keys: Vec<ApprovalKeySettings>,
    /// Token lifetime in seconds. Default 300.
    pub ttl_seconds: u32,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ApprovalKeySettings {
    /// Key id in tokens and the JWKS.
    pub kid: String,
    /// The 32-byte Ed25519 seed, base64url (no padding) or hex.
    #[serde(serialize_with = "serialize_redacted_secret")]
    pub private_key: SecretString,
}

/// Gate mode: holding orders, forwarding them, webhooks.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct GateSettings {
    /// Largest order payload accepted, in bytes. Default 32768.
    pub payload_limit_bytes: usize,
    /// Largest upstream answer stored, in bytes. Default 16384.
    pub upstream_body_limit_bytes: usize,
    /// How often the forwarder and the webhook sender look for due work. Default 500.
    pub poll_interval_ms: u64,
    /// How long a claimed forward or webhook is reserved for one instance. Default 60000.
    pub lease_ms: u64,
    /// Forward attempts before an order ends as forward_failed. Default 10.
    pub forward_max_attempts: u32,
    /// Webhook attempts before a delivery is given up. Default 12.
    pub webhook_max_attempts: u32,
    /// First retry delay (forwards and webhooks); doubles up to `retry_max_ms`. Default 1000.
    pub retry_initial_ms: u64,
    /// Longest retry delay. Default 300000.
    pub retry_max_ms: u64,
    /// Timeout of a webhook request. Default 5000.
    pub webhook_timeout_ms: u64,
    /// Whether `callback_url`s may point at loopback (and use `http` there). Default: true in
    /// dev mode, false in production, where `true` is refused. Every other internal address
    /// (private, link-local, CGNAT, multicast) is always refused.
    pub allow_loopback_callbacks: Option<bool>,
}

impl Default for ApprovalSettings {
    fn default() -> Self {
        Self {
            keys: Vec::new(),
            ttl_seconds: 300,
        }
    }
}

impl Default for GateSettings {
    fn default() -> Self {
        Self {
            payload_limit_bytes: 32 * 1024,
            upstream_body_limit_bytes: 16 * 1024,
            poll_interval_ms: 500,
            lease_ms: 60_000,
            forward_max_attempts: 10,
            webhook_max_attempts: 12,
            retry_initial_ms: 1_000,
            retry_max_ms: 300_000,
            webhook_timeout_ms: 5_000,
            allow_loopback_callbacks: None,
        }
    }
}

/// Where events go in production. Unset `url` means the JSON-lines file.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClickHouseSettings {
    /// HTTP URL, e.g. `http://clickhouse:8123`. Default: unset (JSON lines).
    pub url: Option<String>,
    /// Database holding the `events` table; created if missing. Default `orderguard`.
    pub database: String,
    pub user: Option<String>,
    #[serde(serialize_with = "serialize_redacted")]
    pub password: Option<SecretString>,
    /// Months events are kept (TTL). Default 13.
    pub retention_months: u32,
    /// Timeout of one insert. Default 30000.
    pub timeout_ms: u64,
    /// A ClickHouse cluster's name (as in the servers' `remote_servers`): the schema becomes
    /// ReplicatedMergeTree tables on every shard (`events_local`, `funnel_hourly_local`)
    /// behind Distributed tables (`events`, `funnel_hourly`), created `ON CLUSTER`
    /// (`migrations/clickhouse/cluster/`). Default: unset (one server).
    pub cluster: Option<String>,
}

impl Default for EventSettings {
    fn default() -> Self {
        Self {
            batch_rows: 5_000,
            batch_bytes: 8 * 1024 * 1024,
            period_ms: 500,
            lease_ms: 30_000,
            retry_initial_ms: 200,
            retry_max_ms: 30_000,
            jsonl_path: None,
            jsonl_rotate_bytes: 64 * 1024 * 1024,
            instance: None,
        }
    }
}

impl Default for ClickHouseSettings {
    fn default() -> Self {
        Self {
            url: None,
            database: "orderguard".to_owned(),
            user: None,
            password: None,
            retention_months: 13,
            timeout_ms: 30_000,
            cluster: None,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogSettings {
    /// `pretty` or `json`. Default: `pretty` in dev mode, `json` in production.
    pub format: Option<LogFormat>,
    /// A `tracing` filter such as `info` or `orderguard=debug,info`. `RUST_LOG` wins. Default `info`.
    pub filter: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    Pretty,
    Json,
}

fn default_log_name() -> String {
    "log".to_owned()
}

fn default_smpp_port() -> u16 {
    2775
}

fn default_smpp_window() -> u32 {
    10
}

fn default_enquire_link_ms() -> u64 {
    30_000
}

fn default_reconnect_initial_ms() -> u64 {
    500
}

fn default_reconnect_max_ms() -> u64 {
    30_000
}

fn default_status_callbacks() -> bool {
    true
}

fn default_twilio_base_url() -> String {
    "https://api.twilio.com".to_owned()
}

fn default_sms_timeout_ms() -> u64 {
    5_000
}

impl Default for HttpSettings {
    fn default() -> Self {
        Self {
            host: "127.0.0.1".to_owned(),
            port: 8080,
            public_url: None,
            request_timeout_ms: 10_000,
            body_limit_bytes: 64 * 1024,
            max_in_flight: 512,
            admin_port: None,
            trusted_proxies: Vec::new(),
        }
    }
}

impl Default for DatabaseSettings {
    fn default() -> Self {
        Self {
            url: None,
            max_connections: 10,
        }
    }
}

impl Default for SweeperSettings {
    fn default() -> Self {
        Self { interval_ms: 5_000 }
    }
}

impl Default for LogSettings {
    fn default() -> Self {
        Self {
            format: None,
            filter: "info".to_owned(),
        }
    }
}
