//! Server keys: configured in production, generated and kept in the data directory in dev mode.

use std::path::Path;

use anyhow::{Context, bail};
use rand::TryRngCore;
use secrecy::ExposeSecret;
use sha2::Digest;

use crate::settings::{Mode, Settings};

/// Shortest acceptable configured key.
const MIN_KEY_LEN: usize = 32;

/// The key under which codes are hashed.
pub fn code_key(settings: &Settings) -> anyhow::Result<Vec<u8>> {
    server_key(
        settings,
        settings.secrets.code_key.as_ref(),
        "code_key",
        "code.key",
    )
}

/// The pepper of the pseudonyms in events.
pub fn event_pepper(settings: &Settings) -> anyhow::Result<Vec<u8>> {
    server_key(
        settings,
        settings.secrets.event_pepper.as_ref(),
        "event_pepper",
        "event.pepper",
    )
}

/// The key that signs code page links.
pub fn widget_key(settings: &Settings) -> anyhow::Result<Vec<u8>> {
    server_key(
        settings,
        settings.secrets.widget_key.as_ref(),
        "widget_key",
        "widget.key",
    )
}

/// The approval token keys `(kid, Ed25519 seed)`: configured, or in dev mode one generated
/// into `<data_dir>/keys/approval.key`.
pub fn approval_keys(settings: &Settings) -> anyhow::Result<Vec<(String, [u8; 32])>> {
    use base64::Engine;
    let mut keys = Vec::new();
    for key in &settings.approval.keys {
        let text = key.private_key.expose_secret().trim();
        let bytes = hex::decode(text)
            .ok()
            .or_else(|| {
                base64::engine::general_purpose::URL_SAFE_NO_PAD
                    .decode(text)
                    .ok()
            })
            .with_context(|| {
                format!(
                    "approval key {}: private_key is neither hex nor base64url",
                    key.kid
                )
            })?;
        let seed: [u8; 32] = bytes.try_into().map_err(|_| {
            anyhow::anyhow!("approval key {}: private_key must be 32 bytes", key.kid)
        })?;
        keys.push((key.kid.clone(), seed));
    }
    if !keys.is_empty() {
        return Ok(keys);
    }
    if settings.mode == Mode::Production {
        bail!("approval.keys (ORDERGUARD_APPROVAL__KEYS) is required in production mode");
    }
    let seed: [u8; 32] = generated_key(&settings.data_dir.join("keys").join("approval.key"))?
        .try_into()
        .map_err(|_| anyhow::anyhow!("approval.key must hold 32 bytes"))?;
    let kid = format!("dev-{}", &hex::encode(sha2::Sha256::digest(seed))[..8]);
    Ok(vec![(kid, seed)])
}

/// A configured secret, or in dev mode one generated once into `<data_dir>/keys/<file>`.
fn server_key(
    settings: &Settings,
    configured: Option<&secrecy::SecretString>,
    setting: &str,
    file: &str,
) -> anyhow::Result<Vec<u8>> {
    if let Some(key) = configured {
        let key = key.expose_secret().as_bytes();
        if key.len() < MIN_KEY_LEN {
            bail!("secrets.{setting} must be at least {MIN_KEY_LEN} characters");
        }
        return Ok(key.to_vec());
    }
    if settings.mode == Mode::Production {
        let env = format!("ORDERGUARD_SECRETS__{}", setting.to_ascii_uppercase());
        bail!("secrets.{setting} ({env}) is required in production mode");
    }
    generated_key(&settings.data_dir.join("keys").join(file))
}

/// Reads a hex key from `path`, creating it with 32 random bytes first if missing.
fn generated_key(path: &Path) -> anyhow::Result<Vec<u8>> {
    if let Ok(text) = std::fs::read_to_string(path) {
        return hex::decode(text.trim())
            .with_context(|| format!("{} is not a hex key", path.display()));
    }
    let mut key = vec![0u8; 32];
    rand::rngs::OsRng
        .try_fill_bytes(&mut key)
        .context("reading the OS random generator")?;
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating {}", parent.display()))?;
    }
    write_private(path, &hex::encode(&key))
        .with_context(|| format!("writing {}", path.display()))?;
    tracing::info!(path = %path.display(), "generated a development key");
    Ok(key)
}

#[cfg(unix)]
fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(text.as_bytes())
}

#[cfg(not(unix))]
fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    std::fs::write(path, text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_generated_key_is_kept_across_restarts() {
        let dir = tempfile::tempdir().expect("tempdir");
        let settings = Settings {
            data_dir: dir.path().to_owned(),
            ..Settings::default()
        };
        let first = code_key(&settings).expect("generated");
        assert_eq!(first.len(), 32);
        assert_eq!(code_key(&settings).expect("read back"), first);
        let pepper = event_pepper(&settings).expect("generated");
        assert_ne!(pepper, first, "each key is its own");
    }

    #[test]
    fn production_refuses_to_generate_and_short_keys_are_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let production = Settings {
            data_dir: dir.path().to_owned(),
            mode: Mode::Production,
            ..Settings::default()
        };
        assert!(code_key(&production).is_err());
        let mut short = Settings::default();
        short.secrets.code_key = Some("short".to_owned().into());
        assert!(code_key(&short).is_err());
    }
}
