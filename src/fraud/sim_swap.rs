//! The SIM-swap check: CAMARA SIM Swap v2, `POST {base_url}/sim-swap/v2/check` with
//! `{"phoneNumber": "<E.164>", "maxAge": <hours>}`, answered `{"swapped": bool}`
//! (camaraproject/SimSwap, `code/API_definitions/sim-swap.yaml`, operation `checkSimSwap`).
//!
//! The service holds a two-legged token (client credentials or a static token), so the spec
//! requires `phoneNumber` in the body. Every call carries an `x-correlator` (the spec's
//! pattern `^[a-zA-Z0-9-_:;./<>{}]{0,256}$`; a UUID fits). It is called only when every cheaper
//! rule passed, and never inside a database transaction.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use secrecy::ExposeSecret;
use serde::Deserialize;

use super::config::SimSwapConfig;
use crate::directory::BrandSecrets;

/// What the operator said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SwapAnswer {
    Swapped,
    NotSwapped,
    /// No usable answer: timeout, transport error, non-2xx, a body without `swapped`.
    Error(String),
}

impl SwapAnswer {
    pub fn label(&self) -> &'static str {
        match self {
            Self::Swapped => "swapped",
            Self::NotSwapped => "not_swapped",
            Self::Error(_) => "error",
        }
    }
}

#[derive(Deserialize)]
struct CheckAnswer {
    swapped: bool,
}

#[derive(Deserialize)]
struct TokenAnswer {
    access_token: String,
    #[serde(default)]
    expires_in: Option<u64>,
}

/// Calls SIM swap APIs; OAuth2 tokens are cached per token URL and client until shortly before
/// they expire.
pub struct SimSwapClient {
    client: reqwest::Client,
    secrets: BrandSecrets,
    tokens: Mutex<HashMap<(String, String), (String, Instant)>>,
}

impl SimSwapClient {
    pub fn new(secrets: BrandSecrets) -> anyhow::Result<Self> {
        Ok(Self {
            client: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()?,
            secrets,
            tokens: Mutex::new(HashMap::new()),
        })
    }

    fn secret(&self, name: &str) -> Result<String, String> {
        self.secrets
            .get(name)
            .map(|s| s.expose_secret().to_owned())
            .ok_or_else(|| format!("brand secret {name} is not configured"))
    }

    async fn token(&self, config: &SimSwapConfig) -> Result<String, String> {
        if let Some(name) = &config.token_secret {
            return self.secret(name);
        }
        let (Some(key), Some(secret_name)) = (token_key(config), &config.client_secret) else {
            return Err("no token configured".to_owned());
        };
        let (url, client_id) = &key;
        if let Some((token, until)) = self
            .tokens
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
            && *until > Instant::now()
        {
            return Ok(token.clone());
        }
        let secret = self.secret(secret_name)?;
        let answer = self
            .client
            .post(url)
            .timeout(Duration::from_millis(config.timeout_ms))
            .basic_auth(client_id, Some(&secret))
            .form(&[("grant_type", "client_credentials")])
            .send()
            .await
            .map_err(|e| format!("token request: {}", e.without_url()))?;
        if !answer.status().is_success() {
            return Err(format!("token endpoint answered {}", answer.status()));
        }
        let token: TokenAnswer = answer
            .json()
            .await
            .map_err(|_| "token endpoint answered no access_token".to_owned())?;
        // Renewed a little early, so a token never expires in flight.
        let lifetime = Duration::from_secs(token.expires_in.unwrap_or(300).saturating_sub(30));
        self.tokens
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key, (token.access_token.clone(), Instant::now() + lifetime));
        Ok(token.access_token)
    }

    /// Whether `e164` had its SIM swapped within `config.max_age_hours`. An OAuth2 token the
    /// operator answers 401 to (revoked, or expired before its `expires_in`) is dropped from
    /// the cache and the check asked once more with a fresh one.
    pub async fn check(&self, config: &SimSwapConfig, e164: &str) -> SwapAnswer {
        let Some(base_url) = &config.base_url else {
            return SwapAnswer::NotSwapped;
        };
        let mut response = match self.ask(config, base_url, e164).await {
            Ok(response) => response,
            Err(answer) => return answer,
        };
        if response.status() == reqwest::StatusCode::UNAUTHORIZED && config.token_secret.is_none() {
            self.forget_token(config);
            response = match self.ask(config, base_url, e164).await {
                Ok(response) => response,
                Err(answer) => return answer,
            };
        }
        if !response.status().is_success() {
            return SwapAnswer::Error(format!("answered {}", response.status()));
        }
        match response.json::<CheckAnswer>().await {
            Ok(CheckAnswer { swapped: true }) => SwapAnswer::Swapped,
            Ok(CheckAnswer { swapped: false }) => SwapAnswer::NotSwapped,
            Err(_) => SwapAnswer::Error("an answer without `swapped`".to_owned()),
        }
    }

    /// One check request with the current token.
    async fn ask(
        &self,
        config: &SimSwapConfig,
        base_url: &str,
        e164: &str,
    ) -> Result<reqwest::Response, SwapAnswer> {
        let token = self.token(config).await.map_err(SwapAnswer::Error)?;
        let url = format!("{}/sim-swap/v2/check", base_url.trim_end_matches('/'));
        self.client
            .post(url)
            .timeout(Duration::from_millis(config.timeout_ms))
            .bearer_auth(token)
            .header("x-correlator", crate::domain::id::new_v7().to_string())
            .json(&serde_json::json!({"phoneNumber": e164, "maxAge": config.max_age_hours}))
            .send()
            .await
            .map_err(|error| {
                if error.is_timeout() {
                    SwapAnswer::Error("timed out".to_owned())
                } else {
                    SwapAnswer::Error(format!("transport: {}", error.without_url()))
                }
            })
    }

    fn forget_token(&self, config: &SimSwapConfig) {
        if let Some(key) = token_key(config) {
            self.tokens
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&key);
        }
    }
}

/// Where an OAuth2 token of `config` is cached: its token URL and client.
fn token_key(config: &SimSwapConfig) -> Option<(String, String)> {
    Some((config.token_url.clone()?, config.client_id.clone()?))
}
