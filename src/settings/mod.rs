//! Configuration: defaults → TOML file → environment (`ORDERGUARD_…`, `__` between levels).
//!
//! The environment is applied last so that it wins, which is what operators expect on
//! Kubernetes. Environment values are read as TOML when the setting is not a string (numbers,
//! booleans, arrays, tables such as `[{kind="http", …}]`); quote a value to force a string.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use secrecy::SecretString;
use serde::{Deserialize, Serialize};

mod env;
mod validate;

use env::{env_value, lookup, set_path};

/// Environment variables that configure the service start with this prefix.
pub const ENV_PREFIX: &str = "ORDERGUARD_";

/// Everything the service can be told.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    /// `dev` (default: no setup needed) or `production` (refuses generated keys, the `log` SMS
    /// provider and an implicit database).
    pub mode: Mode,
    /// Where the embedded database and generated keys live. Default `./data`.
    pub data_dir: PathBuf,
    /// The brands folder (`_base` plus one folder per brand). Default `./brands`.
    pub brands_dir: PathBuf,
    /// How often the brands folder is checked for changes (hot reload); 0 turns it off.
    /// Default 2000.
    pub brands_reload_interval_ms: u64,
    pub http: HttpSettings,
    pub database: DatabaseSettings,
    pub secrets: SecretSettings,
    pub sms: SmsSettings,
    pub sweeper: SweeperSettings,
    pub events: EventSettings,
    pub clickhouse: ClickHouseSettings,
    pub approval: ApprovalSettings,
    pub gate: GateSettings,
    /// Secrets that brand folders refer to by name (`upstream.auth_secret`,
    /// `customer_directory.auth_secret`, `webhooks.secret`), e.g.
    /// `ORDERGUARD_BRAND_SECRETS__NORDWIND_UPSTREAM`. Brand folders never hold secrets.
    #[serde(serialize_with = "serialize_redacted_map")]
    pub brand_secrets: std::collections::BTreeMap<String, SecretString>,
    pub log: LogSettings,
    pub prefix: PrefixSettings,
    pub admin: AdminSettings,
    pub testing: TestingSettings,
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

fn default_sms_timeout_ms() -> u64 {
    5_000
}

fn serialize_redacted_secret<S: serde::Serializer>(
    _: &SecretString,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    serializer.serialize_str("<redacted>")
}

fn serialize_redacted_map<S: serde::Serializer>(
    map: &std::collections::BTreeMap<String, SecretString>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    use serde::ser::SerializeMap;
    let mut out = serializer.serialize_map(Some(map.len()))?;
    for key in map.keys() {
        out.serialize_entry(key, "<redacted>")?;
    }
    out.end()
}

fn serialize_redacted<S: serde::Serializer>(
    value: &Option<SecretString>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    match value {
        Some(_) => serializer.serialize_str("<redacted>"),
        None => serializer.serialize_none(),
    }
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            mode: Mode::Dev,
            data_dir: PathBuf::from("data"),
            brands_dir: PathBuf::from("brands"),
            brands_reload_interval_ms: 2_000,
            http: HttpSettings::default(),
            database: DatabaseSettings::default(),
            secrets: SecretSettings::default(),
            sms: SmsSettings::default(),
            sweeper: SweeperSettings::default(),
            events: EventSettings::default(),
            clickhouse: ClickHouseSettings::default(),
            approval: ApprovalSettings::default(),
            gate: GateSettings::default(),
            brand_secrets: std::collections::BTreeMap::new(),
            log: LogSettings::default(),
            prefix: PrefixSettings::default(),
            admin: AdminSettings::default(),
            testing: TestingSettings::default(),
        }
    }
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

impl Settings {
    /// Loads defaults, then `file` (if given, it must exist; else `orderguard.toml` if present),
    /// then the process environment.
    pub fn load(file: Option<&Path>) -> anyhow::Result<Self> {
        let text = match file {
            Some(path) => Some(
                std::fs::read_to_string(path)
                    .with_context(|| format!("reading configuration file {}", path.display()))?,
            ),
            None => std::fs::read_to_string("orderguard.toml").ok(),
        };
        Self::from_sources(text.as_deref(), std::env::vars())
    }

    /// Builds settings from a TOML text and `(name, value)` environment pairs.
    pub fn from_sources(
        file: Option<&str>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> anyhow::Result<Self> {
        let mut tree =
            toml::Value::try_from(Settings::default()).context("serialising defaults")?;
        let defaults = tree.clone();
        if let Some(text) = file {
            let overlay: toml::Value =
                toml::from_str(text).context("configuration file is not valid TOML")?;
            crate::toml_merge(&mut tree, overlay);
        }
        let mut env: Vec<(String, String)> = env
            .into_iter()
            .filter(|(name, _)| name.starts_with(ENV_PREFIX) && name != "ORDERGUARD_CONFIG")
            .collect();
        env.sort();
        for (name, raw) in env {
            let path: Vec<String> = name[ENV_PREFIX.len()..]
                .split("__")
                .map(str::to_ascii_lowercase)
                .collect();
            let value = env_value(&raw, lookup(&defaults, &path));
            set_path(&mut tree, &path, value)
                .with_context(|| format!("environment variable {name}"))?;
        }
        let settings: Self = tree.try_into().context("invalid configuration")?;
        settings.validate()?;
        Ok(settings)
    }

    /// The address to bind.
    pub fn bind_address(&self) -> anyhow::Result<SocketAddr> {
        format!("{}:{}", self.http.host, self.http.port)
            .parse()
            .with_context(|| format!("http.host {:?} is not an IP address", self.http.host))
    }

    /// The public base URL, without a trailing slash.
    pub fn public_url(&self, bound_port: u16) -> String {
        self.http
            .public_url
            .clone()
            .unwrap_or_else(|| format!("http://localhost:{bound_port}"))
            .trim_end_matches('/')
            .to_owned()
    }

    /// The database URL: the configured one, or the embedded SQLite file in dev mode.
    pub fn database_url(&self) -> String {
        self.database.url.clone().unwrap_or_else(|| {
            format!(
                "sqlite://{}?mode=rwc",
                self.data_dir.join("orderguard.db").display()
            )
        })
    }

    /// In production mode, every setting that is missing or only fit for development, each
    /// naming the key and its environment variable. Empty in dev mode.
    pub fn production_problems(&self) -> Vec<String> {
        if self.mode != Mode::Production {
            return Vec::new();
        }
        let mut problems = Vec::new();
        if self.testing.clock_offset_ms != 0 {
            problems.push(
                "testing.clock_offset_ms (ORDERGUARD_TESTING__CLOCK_OFFSET_MS) is a test seam: production runs on the system clock"
                    .to_owned(),
            );
        }
        if self.database.url.is_none() {
            problems.push(
                "database.url (ORDERGUARD_DATABASE__URL) is not set: production needs an explicit database"
                    .to_owned(),
            );
        }
        if self.secrets.code_key.is_none() {
            problems.push(
                "secrets.code_key (ORDERGUARD_SECRETS__CODE_KEY) is not set: production refuses a generated key"
                    .to_owned(),
            );
        }
        if self.secrets.event_pepper.is_none() {
            problems.push(
                "secrets.event_pepper (ORDERGUARD_SECRETS__EVENT_PEPPER) is not set: production refuses a generated pepper"
                    .to_owned(),
            );
        }
        if self.secrets.widget_key.is_none() {
            problems.push(
                "secrets.widget_key (ORDERGUARD_SECRETS__WIDGET_KEY) is not set: production refuses a generated key"
                    .to_owned(),
            );
        }
        if self.approval.keys.is_empty() {
            problems.push(
                "approval.keys (ORDERGUARD_APPROVAL__KEYS) is empty: production refuses a generated signing key"
                    .to_owned(),
            );
        }
        if self.sms.providers.is_empty() {
            problems.push(
                "sms.providers (ORDERGUARD_SMS__PROVIDERS) is empty: production needs a real SMS provider"
                    .to_owned(),
            );
        }
        for (index, provider) in self.sms.providers.iter().enumerate() {
            if let ProviderSettings::Log { .. } = provider {
                problems.push(format!(
                    "sms.providers[{index}] is the `log` provider, which is for development only"
                ));
            }
        }
        if self.gate.allow_loopback_callbacks == Some(true) {
            problems.push(
                "gate.allow_loopback_callbacks (ORDERGUARD_GATE__ALLOW_LOOPBACK_CALLBACKS) is true: webhooks to loopback are for development only"
                    .to_owned(),
            );
        }
        if self.http.public_url.is_none() {
            problems.push(
                "http.public_url (ORDERGUARD_HTTP__PUBLIC_URL) is not set: buyers' links and the SMS need it"
                    .to_owned(),
            );
        }
        problems
    }

    /// Fails with all production problems at once.
    pub fn check_production(&self) -> anyhow::Result<()> {
        let problems = self.production_problems();
        if !problems.is_empty() {
            bail!(
                "production mode cannot start:\n  - {}",
                problems.join("\n  - ")
            );
        }
        Ok(())
    }

    /// Where webhooks may go (see [`crate::gate::callback`]).
    pub fn callback_policy(&self) -> crate::gate::callback::CallbackPolicy {
        crate::gate::callback::CallbackPolicy {
            allow_loopback: self
                .gate
                .allow_loopback_callbacks
                .unwrap_or(self.mode == Mode::Dev),
        }
    }

    /// The JSON-lines file of the embedded default.
    pub fn jsonl_path(&self) -> PathBuf {
        self.events
            .jsonl_path
            .clone()
            .unwrap_or_else(|| self.data_dir.join("events.jsonl"))
    }

    /// This instance's name in events.
    pub fn instance(&self) -> String {
        self.events
            .instance
            .clone()
            .or_else(|| std::env::var("HOSTNAME").ok().filter(|h| !h.is_empty()))
            .unwrap_or_else(|| "orderguard".to_owned())
    }

    /// The effective log format.
    pub fn log_format(&self) -> LogFormat {
        self.log.format.unwrap_or(match self.mode {
            Mode::Dev => LogFormat::Pretty,
            Mode::Production => LogFormat::Json,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::ExposeSecret;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn defaults_need_no_file_and_no_environment() {
        let settings = Settings::from_sources(None, env(&[])).expect("defaults load");
        assert_eq!(settings.mode, Mode::Dev);
        assert_eq!(settings.http.port, 8080);
        assert!(
            settings
                .database_url()
                .starts_with("sqlite://data/orderguard.db")
        );
        assert!(settings.production_problems().is_empty());
    }

    #[test]
    fn environment_overrides_the_file_which_overrides_defaults() {
        let file = "[http]\nport = 9000\nhost = \"0.0.0.0\"\n[database]\nmax_connections = 3\n";
        let settings = Settings::from_sources(
            Some(file),
            env(&[
                ("ORDERGUARD_HTTP__PORT", "9100"),
                (
                    "ORDERGUARD_SECRETS__CODE_KEY",
                    "12345678901234567890123456789012",
                ),
                ("ORDERGUARD_SMS__PROVIDERS__0__KIND", "http"),
                ("ORDERGUARD_SMS__PROVIDERS__0__NAME", "gw"),
                (
                    "ORDERGUARD_SMS__PROVIDERS__0__URL",
                    "http://127.0.0.1:9/send",
                ),
                ("ORDERGUARD_SMS__PROVIDERS__0__TIMEOUT_MS", "250"),
                ("OTHER_VARIABLE", "ignored"),
            ]),
        )
        .expect("loads");
        assert_eq!(settings.http.port, 9100, "environment wins over the file");
        assert_eq!(settings.http.host, "0.0.0.0", "file wins over defaults");
        assert_eq!(settings.database.max_connections, 3);
        let key = settings.secrets.code_key.as_ref().expect("set");
        assert_eq!(key.expose_secret(), "12345678901234567890123456789012");
        match &settings.sms.providers[..] {
            [
                ProviderSettings::Http {
                    name, timeout_ms, ..
                },
            ] => {
                assert_eq!((name.as_str(), *timeout_ms), ("gw", 250));
            }
            other => panic!("unexpected providers {other:?}"),
        }
    }

    #[test]
    fn unknown_keys_are_refused_with_their_name() {
        let error =
            Settings::from_sources(Some("[http]\nprot = 1\n"), env(&[])).expect_err("unknown key");
        assert!(format!("{error:#}").contains("prot"), "{error:#}");
        let error = Settings::from_sources(None, env(&[("ORDERGUARD_HTTP__PROT", "1")]))
            .expect_err("unknown key");
        assert!(format!("{error:#}").contains("prot"), "{error:#}");
    }

    #[test]
    fn production_names_every_missing_setting() {
        let settings =
            Settings::from_sources(Some("mode = \"production\""), env(&[])).expect("loads");
        let problems = settings.production_problems().join("\n");
        for key in [
            "database.url",
            "secrets.code_key",
            "secrets.event_pepper",
            "secrets.widget_key",
            "approval.keys",
            "sms.providers",
            "http.public_url",
        ] {
            assert!(problems.contains(key), "{key} missing from:\n{problems}");
        }
        let with_log = Settings::from_sources(
            Some("mode = \"production\"\n[[sms.providers]]\nkind = \"log\"\n"),
            env(&[]),
        )
        .expect("loads");
        assert!(
            with_log
                .production_problems()
                .join("\n")
                .contains("development only")
        );
    }

    #[test]
    fn debug_output_redacts_secrets() {
        let settings = Settings::from_sources(
            None,
            env(&[(
                "ORDERGUARD_SECRETS__CODE_KEY",
                "very-secret-key-value-0123456789abcdef",
            )]),
        )
        .expect("loads");
        assert!(!format!("{settings:?}").contains("very-secret"));
    }

    #[test]
    fn the_readme_configuration_table_names_every_setting() {
        fn leaves(prefix: &str, value: &serde_json::Value, out: &mut Vec<String>) {
            match value {
                serde_json::Value::Object(map) if !map.is_empty() => {
                    for (key, inner) in map {
                        let path = if prefix.is_empty() {
                            key.clone()
                        } else {
                            format!("{prefix}.{key}")
                        };
                        leaves(&path, inner, out);
                    }
                }
                _ => out.push(prefix.to_owned()),
            }
        }
        let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md"))
            .expect("README.md");
        let table = readme
            .split("| key | default | meaning |")
            .nth(1)
            .and_then(|rest| rest.split("\n\n").next())
            .expect("the README's configuration table");
        let mut keys = Vec::new();
        leaves(
            "",
            &serde_json::to_value(Settings::default()).expect("json"),
            &mut keys,
        );
        let missing: Vec<&String> = keys
            .iter()
            .filter(|key| !table.contains(&format!("`{key}`")))
            .collect();
        assert!(missing.is_empty(), "not in the README: {missing:?}");
    }
}
