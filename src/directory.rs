//! The customer directory connector: the number on file for a customer reference, from the
//! brand's directory (`[customer_directory] kind = "http"`), so a typed-in number cannot
//! redirect the code.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};

use crate::brands::DirectoryConfig;

/// Secrets brand folders refer to by name.
pub type BrandSecrets = Arc<BTreeMap<String, SecretString>>;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DirectoryError {
    #[error("the customer directory did not answer: {0}")]
    Unavailable(String),
    #[error("the customer directory does not know this customer")]
    UnknownCustomer,
    #[error("the customer directory has no mobile number for this customer")]
    NoPhone,
}

pub struct Directory {
    client: reqwest::Client,
    secrets: BrandSecrets,
}

impl Directory {
    pub fn new(secrets: BrandSecrets) -> anyhow::Result<Self> {
        Ok(Self {
            client: reqwest::Client::builder().build()?,
            secrets,
        })
    }

    /// The number on file, or `None` when the brand has no directory.
    pub async fn phone(
        &self,
        config: &DirectoryConfig,
        customer_reference: &str,
    ) -> Result<Option<String>, DirectoryError> {
        let DirectoryConfig::Http {
            url,
            phone_pointer,
            timeout_ms,
            auth_header,
            auth_secret,
        } = config
        else {
            return Ok(None);
        };
        let reference: String =
            url::form_urlencoded::byte_serialize(customer_reference.as_bytes()).collect();
        let mut request = self
            .client
            .get(url.replace("{customer_reference}", &reference))
            .timeout(Duration::from_millis(*timeout_ms))
            .header(reqwest::header::ACCEPT, "application/json");
        if let (Some(header), Some(name)) = (auth_header, auth_secret) {
            let secret = self.secrets.get(name).ok_or_else(|| {
                DirectoryError::Unavailable(format!("brand secret {name} is not configured"))
            })?;
            request = request.header(header.as_str(), secret.expose_secret());
        }
        let response = request.send().await.map_err(|e| {
            DirectoryError::Unavailable(if e.is_timeout() {
                "timed out".to_owned()
            } else {
                e.without_url().to_string()
            })
        })?;
        match response.status() {
            status if status.is_success() => {}
            reqwest::StatusCode::NOT_FOUND => return Err(DirectoryError::UnknownCustomer),
            status => return Err(DirectoryError::Unavailable(format!("answered {status}"))),
        }
        let body: serde_json::Value = response
            .json()
            .await
            .map_err(|e| DirectoryError::Unavailable(format!("not JSON: {}", e.without_url())))?;
        let phone = body
            .pointer(phone_pointer)
            .and_then(|v| v.as_str())
            .filter(|p| !p.trim().is_empty());
        phone
            .map(|p| Some(p.to_owned()))
            .ok_or(DirectoryError::NoPhone)
    }
}
