//! The `[fraud]` section of `brand.toml`: every rule's settings, with defaults in
//! `brands/_base/brand.toml` that protect a brand that configures nothing.

use serde::Deserialize;

/// Whether a rule refuses (`enforce`), only reports what it would have refused (`monitor`:
/// the start is served and a `verification_blocked` event with outcome `monitored` is written),
/// or does not run at all (`off`: for a brand whose shop runs its own rules, and to measure
/// what the rules cost).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum RuleMode {
    #[default]
    Enforce,
    Monitor,
    Off,
}

impl RuleMode {
    /// Whether the rule runs at all.
    pub fn runs(self) -> bool {
        self != Self::Off
    }
}

/// A count per window, written `"5/10m"` (units `s`, `m`, `h`, `d`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    pub limit: i64,
    pub window_ms: i64,
}

impl Window {
    pub fn parse(text: &str) -> Result<Self, String> {
        let error = || format!("{text:?} is not a limit like \"5/10m\" (count/window; s, m, h, d)");
        let (count, window) = text.split_once('/').ok_or_else(error)?;
        let limit: i64 = count.trim().parse().map_err(|_| error())?;
        let window = window.trim();
        let unit = window.chars().last().ok_or_else(error)?;
        let amount: i64 = if window.len() == 1 {
            1
        } else {
            window[..window.len() - 1].parse().map_err(|_| error())?
        };
        let unit_ms = match unit {
            's' => 1_000,
            'm' => 60_000,
            'h' => 3_600_000,
            'd' => 86_400_000,
            _ => return Err(error()),
        };
        if limit < 1 || amount < 1 || amount * unit_ms > 31 * 86_400_000 {
            return Err(error());
        }
        Ok(Self {
            limit,
            window_ms: amount * unit_ms,
        })
    }

    /// The text form, used in counter keys: a changed window starts a new counter.
    pub fn label(&self) -> String {
        format!("{}/{}s", self.limit, self.window_ms / 1000)
    }
}

impl<'de> Deserialize<'de> for Window {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Self::parse(&text).map_err(serde::de::Error::custom)
    }
}

/// `[fraud]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FraudConfig {
    /// Numbers (E.164) no rule refuses: the brand's test numbers.
    #[serde(default)]
    pub allow_numbers: Vec<String>,
    /// Number prefixes (`+4915199`) never blocked by the pumping guard nor limited by it.
    #[serde(default)]
    pub allow_prefixes: Vec<String>,
    /// Number prefixes always refused (`deny_list`).
    #[serde(default)]
    pub deny_prefixes: Vec<String>,
    /// How long an approval makes a number or customer known-good: it passes prefix blocks.
    pub known_good_days: u32,
    pub rate_limits: RateLimits,
    pub pumping: Pumping,
    #[serde(default)]
    pub sim_swap: SimSwapConfig,
}

/// `[fraud.rate_limits]`: several windows per key.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimits {
    #[serde(default)]
    pub mode: RuleMode,
    /// Starts and resends to one number.
    pub phone: Vec<Window>,
    /// Starts for one customer reference.
    pub customer: Vec<Window>,
    /// Starts from one client IP that have not converted (an approval gives its start back),
    /// so many real buyers behind one carrier-grade NAT address are not refused.
    pub ip: Vec<Window>,
    /// The same per /24 (IPv4) or /64 (IPv6).
    pub ip_range: Vec<Window>,
    /// Starts for one order reference.
    pub order_reference: Vec<Window>,
    /// All starts of the brand: a ceiling against floods.
    pub brand: Vec<Window>,
}

/// `[fraud.pumping]`: the SMS-pumping guard per number prefix, and the brand's budget of
/// unconverted starts.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pumping {
    #[serde(default)]
    pub mode: RuleMode,
    /// The window over which a prefix's starts and approvals are counted.
    pub window_seconds: u32,
    /// Starts to a prefix in the window before its approval ratio is judged.
    pub min_starts: u32,
    /// Below this share of approved starts the prefix is blocked (0–1; Vonage: 0.35).
    pub min_approval_ratio: f64,
    /// The first block's cool-down; each repeat doubles it, up to `max_cooldown_seconds`.
    pub cooldown_seconds: u32,
    pub max_cooldown_seconds: u32,
    /// The brand's own starts in the window before its approval ratio is judged; 0 turns the
    /// brand-wide guard off.
    pub brand_min_starts: u32,
    /// Below this share of the brand's starts approved, only prefixes with an approval in the
    /// window (and known-good numbers) are served: slow pumping spread thin over many prefixes
    /// lowers the whole brand's conversion, while real buyers keep their prefixes converting.
    pub brand_min_approval_ratio: f64,
    /// Once the brand's buyers' prefixes have shown (`new_prefix_min_approvals` approvals
    /// within `known_good_days`, or `new_prefix_recent_approvals` in the pumping window and the
    /// one before), starts to prefixes with no approval within `known_good_days` are slow
    /// pumping's ground: at most this many of them that have not converted are served per
    /// window, then only known-good numbers. 0 turns it off (as does `brand_min_starts = 0`).
    pub new_prefix_budget: u32,
    /// A history: approvals within `known_good_days`.
    pub new_prefix_min_approvals: u32,
    /// A shop without that history that is busy now (a new shop, a fresh database): approvals
    /// in the pumping window and the one before. 0: only a history counts.
    pub new_prefix_recent_approvals: u32,
    /// The range guard: an IP range (the `ip_range` limit's /24 or /64) with more than this
    /// many starts served in the limit's first window, none of them approved, is refused once
    /// at least [`RANGE_MIN_SETTLED`] of them are old enough to have converted. 0 turns it off.
    pub range_min_starts: u32,
}

/// Of a range's unconverted starts, how many must be older than the brand's confirmation lag
/// before the range guard judges it (see `range.rs`).
pub const RANGE_MIN_SETTLED: i64 = 3;

impl Pumping {
    /// Whether the new-prefix budget runs: it is part of the brand-wide guard.
    pub fn budget_runs(&self) -> bool {
        self.new_prefix_budget > 0 && self.brand_min_starts > 0
    }
}

/// What happens when the SIM was swapped recently.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum OnSwap {
    #[default]
    Refuse,
    Flag,
}

/// What happens when the SIM swap API cannot answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum OnError {
    #[default]
    Allow,
    Deny,
}

/// `[fraud.sim_swap]`: CAMARA SIM Swap v2, `POST {base_url}/sim-swap/v2/check`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SimSwapConfig {
    /// Unset turns the check off.
    #[serde(default)]
    pub base_url: Option<String>,
    /// A static bearer token: the name of a `brand_secrets` entry.
    #[serde(default)]
    pub token_secret: Option<String>,
    /// OAuth2 client credentials instead of a static token.
    #[serde(default)]
    pub token_url: Option<String>,
    #[serde(default)]
    pub client_id: Option<String>,
    /// The name of a `brand_secrets` entry.
    #[serde(default)]
    pub client_secret: Option<String>,
    /// A swap within this many hours counts (1–2400; CAMARA's default 240).
    #[serde(default = "default_max_age")]
    pub max_age_hours: u32,
    #[serde(default)]
    pub on_swap: OnSwap,
    #[serde(default)]
    pub on_error: OnError,
    #[serde(default = "default_sim_swap_timeout")]
    pub timeout_ms: u64,
    #[serde(default)]
    pub mode: RuleMode,
}

fn default_max_age() -> u32 {
    240
}

/// The longest a start may wait for the operator's answer (a token request and the check each
/// get `timeout_ms`; a revoked token costs one more of each).
const MAX_SIM_SWAP_TIMEOUT_MS: u64 = 30_000;

fn default_sim_swap_timeout() -> u64 {
    1_500
}

impl Default for SimSwapConfig {
    fn default() -> Self {
        Self {
            base_url: None,
            token_secret: None,
            token_url: None,
            client_id: None,
            client_secret: None,
            max_age_hours: default_max_age(),
            on_swap: OnSwap::Refuse,
            on_error: OnError::Allow,
            timeout_ms: default_sim_swap_timeout(),
            mode: RuleMode::Enforce,
        }
    }
}

impl FraudConfig {
    /// Whether `e164` lies in one of the brand's `allow_prefixes`, which the pumping guards
    /// never refuse (its test numbers).
    pub fn exempt(&self, e164: &str) -> bool {
        self.allow_prefixes
            .iter()
            .any(|prefix| e164.starts_with(prefix.as_str()))
    }

    /// Every problem, each as `key: what is wrong`.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        let pumping = &self.pumping;
        if !(0.0..=1.0).contains(&pumping.brand_min_approval_ratio) {
            problems.push(format!(
                "fraud.pumping.brand_min_approval_ratio: must be between 0 and 1, not {}",
                pumping.brand_min_approval_ratio
            ));
        }
        if !(0.0..=1.0).contains(&pumping.min_approval_ratio) {
            problems.push(format!(
                "fraud.pumping.min_approval_ratio: must be between 0 and 1, not {}",
                pumping.min_approval_ratio
            ));
        }
        if pumping.window_seconds == 0 || pumping.min_starts == 0 || pumping.cooldown_seconds == 0 {
            problems.push(
                "fraud.pumping: window_seconds, min_starts and cooldown_seconds must be at least 1"
                    .to_owned(),
            );
        }
        if pumping.max_cooldown_seconds < pumping.cooldown_seconds {
            problems.push(
                "fraud.pumping.max_cooldown_seconds: must not be below cooldown_seconds".to_owned(),
            );
        }
        for (key, prefixes) in [
            ("fraud.allow_prefixes", &self.allow_prefixes),
            ("fraud.deny_prefixes", &self.deny_prefixes),
            ("fraud.allow_numbers", &self.allow_numbers),
        ] {
            for prefix in prefixes {
                let digits = prefix.strip_prefix('+').unwrap_or_default();
                if digits.is_empty()
                    || digits.len() > 15
                    || !digits.bytes().all(|b| b.is_ascii_digit())
                {
                    problems.push(format!("{key}: {prefix:?} is not + and digits"));
                }
            }
        }
        let swap = &self.sim_swap;
        for (key, url) in [("base_url", &swap.base_url), ("token_url", &swap.token_url)] {
            if let Some(url) = url
                && !url::Url::parse(url).is_ok_and(|u| matches!(u.scheme(), "http" | "https"))
            {
                problems.push(format!(
                    "fraud.sim_swap.{key}: {url:?} is not an http(s) URL"
                ));
            }
        }
        if swap.base_url.is_some() {
            let oauth = swap.token_url.is_some() || swap.client_id.is_some();
            if swap.token_secret.is_some() && oauth {
                problems.push(
                    "fraud.sim_swap: token_secret or token_url with client_id and client_secret, not both"
                        .to_owned(),
                );
            }
            if swap.token_secret.is_none() && !oauth {
                problems.push(
                    "fraud.sim_swap: needs token_secret, or token_url with client_id and client_secret"
                        .to_owned(),
                );
            }
            if oauth
                && (swap.token_url.is_none()
                    || swap.client_id.is_none()
                    || swap.client_secret.is_none())
            {
                problems.push(
                    "fraud.sim_swap: token_url, client_id and client_secret go together".to_owned(),
                );
            }
        }
        if !(1..=MAX_SIM_SWAP_TIMEOUT_MS).contains(&swap.timeout_ms) {
            problems.push(format!(
                "fraud.sim_swap.timeout_ms: must be 1–{MAX_SIM_SWAP_TIMEOUT_MS}, not {}",
                swap.timeout_ms
            ));
        }
        if !(1..=2400).contains(&swap.max_age_hours) {
            problems.push(format!(
                "fraud.sim_swap.max_age_hours: must be 1–2400 (CAMARA), not {}",
                swap.max_age_hours
            ));
        }
        problems
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_parse_with_their_units_and_refuse_nonsense() {
        assert_eq!(
            Window::parse("5/10m"),
            Ok(Window {
                limit: 5,
                window_ms: 600_000
            })
        );
        assert_eq!(Window::parse("10/1d").map(|w| w.window_ms), Ok(86_400_000));
        assert_eq!(Window::parse("3/h").map(|w| w.window_ms), Ok(3_600_000));
        for bad in ["5", "0/1m", "5/0m", "5/10x", "five/1m", "5/40d", "/1m"] {
            assert!(Window::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_sim_swap_section_names_one_token_source_and_sane_urls_and_timeout() {
        let swap = |extra: &str| -> Vec<String> {
            // The base brand's rules, with this [fraud.sim_swap].
            let base: toml::Table =
                toml::from_str(include_str!("../../brands/_base/brand.toml")).expect("base");
            let mut fraud = base["fraud"].as_table().expect("[fraud]").clone();
            let section = format!("base_url = \"https://api.operator.example\"\n{extra}");
            let section: toml::Table = toml::from_str(&section).expect("section");
            fraud.insert("sim_swap".to_owned(), section.into());
            toml::Value::Table(fraud)
                .try_into::<FraudConfig>()
                .expect("parses")
                .problems()
        };
        assert!(swap("token_secret = \"t\"").is_empty());
        let oauth = "token_url = \"https://auth.operator.example/token\"\nclient_id = \"c\"\nclient_secret = \"s\"";
        assert!(swap(oauth).is_empty());
        let both = swap(&format!("token_secret = \"t\"\n{oauth}"));
        assert!(both.iter().any(|p| p.contains("not both")), "{both:?}");
        let ftp = swap("token_url = \"ftp://x/token\"\nclient_id = \"c\"\nclient_secret = \"s\"");
        assert!(
            ftp.iter()
                .any(|p| p.starts_with("fraud.sim_swap.token_url")),
            "{ftp:?}"
        );
        let never = swap("token_secret = \"t\"\ntimeout_ms = 0");
        assert!(
            never
                .iter()
                .any(|p| p.starts_with("fraud.sim_swap.timeout_ms")),
            "{never:?}"
        );
        assert!(swap("").iter().any(|p| p.contains("needs token_secret")));
    }
}
