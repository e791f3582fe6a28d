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
mod sections;
mod validate;

pub use sections::*;

use env::{env_value, is_service_link, lookup, set_path};

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
    pub privacy: PrivacySettings,
    pub testing: TestingSettings,
    /// Kubernetes service-link variables found in the environment and ignored (see
    /// `settings::env::is_service_link`); logged once at start.
    #[serde(skip)]
    pub ignored_env: Vec<String>,
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

fn serialize_redacted_list<S: serde::Serializer>(
    list: &[SecretString],
    serializer: S,
) -> Result<S::Ok, S::Error> {
    use serde::ser::SerializeSeq;
    let mut out = serializer.serialize_seq(Some(list.len()))?;
    for _ in list {
        out.serialize_element("<redacted>")?;
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
            privacy: PrivacySettings::default(),
            testing: TestingSettings::default(),
            ignored_env: Vec::new(),
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
        let (links, env): (Vec<_>, Vec<_>) = env
            .into_iter()
            .partition(|(name, _)| is_service_link(&name[ENV_PREFIX.len()..]));
        for (name, raw) in env {
            let path: Vec<String> = name[ENV_PREFIX.len()..]
                .split("__")
                .map(str::to_ascii_lowercase)
                .collect();
            let value = env_value(&raw, lookup(&defaults, &path));
            set_path(&mut tree, &path, value)
                .with_context(|| format!("environment variable {name}"))?;
        }
        let mut settings: Self = tree.try_into().context("invalid configuration")?;
        settings.validate()?;
        settings.ignored_env = links.into_iter().map(|(name, _)| name).collect();
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
            match provider {
                ProviderSettings::Log { .. } => problems.push(format!(
                    "sms.providers[{index}] is the `log` provider, which is for development only"
                )),
                ProviderSettings::Twilio { base_url, .. } if !base_url.starts_with("https://") => {
                    problems.push(format!(
                        "sms.providers[{index}].base_url {base_url:?} is not https: the Auth Token would travel in clear"
                    ));
                }
                _ => {}
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
    fn kubernetes_service_links_are_ignored_and_every_other_unknown_variable_refused() {
        // What Kubernetes injects for a Service named `orderguard` with ports 8080 and 9100.
        let links = [
            ("ORDERGUARD_SERVICE_HOST", "10.0.0.7"),
            ("ORDERGUARD_SERVICE_PORT", "8080"),
            ("ORDERGUARD_SERVICE_PORT_HTTP", "8080"),
            ("ORDERGUARD_SERVICE_PORT_ADMIN", "9100"),
            ("ORDERGUARD_PORT", "tcp://10.0.0.7:8080"),
            ("ORDERGUARD_PORT_8080_TCP", "tcp://10.0.0.7:8080"),
            ("ORDERGUARD_PORT_8080_TCP_PROTO", "tcp"),
            ("ORDERGUARD_PORT_8080_TCP_PORT", "8080"),
            ("ORDERGUARD_PORT_8080_TCP_ADDR", "10.0.0.7"),
            ("ORDERGUARD_PORT_9100_TCP", "tcp://10.0.0.7:9100"),
        ];
        let mut vars = links.to_vec();
        vars.push(("ORDERGUARD_HTTP__PORT", "9000"));
        let settings = Settings::from_sources(None, env(&vars)).expect("starts");
        assert_eq!(settings.http.port, 9000);
        assert_eq!(settings.ignored_env.len(), links.len());
        // Near misses are typos, not service links: refused with their name.
        for typo in [
            "ORDERGUARD_SERVICE",
            "ORDERGUARD_SERVICE_HOSTS",
            "ORDERGUARD_SERVICES_HOST",
            "ORDERGUARD_PORTS",
            "ORDERGUARD_PORT_8080",
            "ORDERGUARD_PORT_8080_TCP_HOST",
            "ORDERGUARD_PORT_80X_TCP",
            "ORDERGUARD_PORT_8080_HTTP",
            "ORDERGUARD_SERVICE_PORT__X",
            "ORDERGUARD_HTTP_PORT",
        ] {
            let error = Settings::from_sources(None, env(&[(typo, "1")])).expect_err(typo);
            let setting = typo["ORDERGUARD_".len()..]
                .split("__")
                .next()
                .unwrap_or_default()
                .to_ascii_lowercase();
            assert!(
                format!("{error:#}").contains(&format!("`{setting}`")),
                "{typo}: {error:#}"
            );
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

    #[test]
    fn every_provider_example_in_the_readme_is_a_valid_provider() {
        let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md"))
            .expect("README.md");
        let examples: Vec<&str> = readme
            .split("```toml\n")
            .skip(1)
            .filter_map(|block| block.split("```").next())
            .filter(|block| block.starts_with("[[sms.providers]]"))
            .collect();
        let mut kinds = Vec::new();
        for example in examples {
            #[derive(serde::Deserialize)]
            struct Sms {
                sms: SmsSettings,
            }
            let parsed: Sms = toml::from_str(example)
                .unwrap_or_else(|error| panic!("{error}\nin the README's example:\n{example}"));
            kinds.extend(parsed.sms.providers.iter().map(|provider| match provider {
                ProviderSettings::Log { .. } => "log",
                ProviderSettings::Http { .. } => "http",
                ProviderSettings::Smpp { .. } => "smpp",
                ProviderSettings::Twilio { .. } => "twilio",
            }));
        }
        assert_eq!(kinds, ["http", "smpp", "twilio"]);
    }
}
