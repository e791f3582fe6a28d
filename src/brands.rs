//! Brands: `brands/_base/brand.toml` merged with each `brands/<id>/brand.toml`.
//!
//! This is the part of the brand format the verification core needs: identity, allowed
//! countries, SMS sender and text, limits and API keys. API keys are stored only as SHA-256
//! hashes; a key authenticates exactly one brand.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, RwLock};

use anyhow::{Context, bail};
use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::domain::Limits;

/// The folder every brand inherits from.
pub const BASE_DIR: &str = "_base";

/// A brand's id: its folder name, lower-case letters, digits and dashes.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct BrandId(String);

impl BrandId {
    pub fn parse(id: &str) -> Result<Self, String> {
        let valid = (2..=40).contains(&id.len())
            && id
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !id.starts_with('-');
        if valid {
            Ok(Self(id.to_owned()))
        } else {
            Err(format!(
                "brand id {id:?} must be 2–40 lower-case letters, digits or dashes"
            ))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for BrandId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// `brand.toml` after merging `_base` and the brand's own file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct BrandFile {
    display_name: String,
    /// ISO 3166 alpha-2 codes; empty accepts every country.
    #[serde(default)]
    allowed_countries: Vec<String>,
    /// Country assumed for numbers typed without `+`. Default: the first allowed country.
    #[serde(default)]
    default_country: Option<String>,
    sms_sender: String,
    limits: Limits,
    sms: SmsTextFile,
    #[serde(default)]
    api_keys: Vec<ApiKeyFile>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct SmsTextFile {
    template: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct ApiKeyFile {
    /// A label for the key, shown in logs instead of the key.
    id: String,
    /// `sha256:<hex>` of the key.
    hash: String,
    /// Accepted in dev mode only (the README's example key).
    #[serde(default)]
    dev_only: bool,
}

/// A loaded, validated brand.
#[derive(Debug, Clone)]
pub struct Brand {
    pub id: BrandId,
    pub display_name: String,
    pub allowed_countries: Vec<String>,
    pub default_country: Option<String>,
    pub sms_sender: String,
    pub limits: Limits,
    /// SMS text with `{brand}`, `{code}`, `{amount}`, `{order_reference}` and `{minutes}`.
    pub sms_template: String,
}

#[derive(Debug, Clone)]
struct ApiKey {
    brand: BrandId,
    label: String,
    dev_only: bool,
}

/// All brands and their API keys, swappable as a whole.
#[derive(Debug, Default)]
struct Snapshot {
    brands: HashMap<BrandId, Arc<Brand>>,
    keys: HashMap<[u8; 32], ApiKey>,
}

/// The brands the service serves.
#[derive(Debug)]
pub struct BrandRegistry {
    snapshot: RwLock<Arc<Snapshot>>,
    accept_dev_keys: bool,
}

/// Hashes an API key the way `brand.toml` stores it.
pub fn api_key_hash(key: &str) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(key.as_bytes())))
}

impl BrandRegistry {
    /// Loads every brand under `dir`. Fails with every problem found, each as `file: key: problem`.
    pub fn load(dir: &Path, accept_dev_keys: bool) -> anyhow::Result<Self> {
        let snapshot = load_snapshot(dir)?;
        Ok(Self {
            snapshot: RwLock::new(Arc::new(snapshot)),
            accept_dev_keys,
        })
    }

    fn current(&self) -> Arc<Snapshot> {
        // A poisoned lock still holds a complete snapshot: swaps replace the Arc whole.
        self.snapshot
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn get(&self, id: &str) -> Option<Arc<Brand>> {
        let id = BrandId::parse(id).ok()?;
        self.current().brands.get(&id).cloned()
    }

    pub fn len(&self) -> usize {
        self.current().brands.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The brand a presented API key belongs to, with the key's label.
    pub fn authenticate(&self, key: &str) -> Option<(Arc<Brand>, String)> {
        let digest: [u8; 32] = Sha256::digest(key.as_bytes()).into();
        let snapshot = self.current();
        let entry = snapshot.keys.get(&digest)?;
        if entry.dev_only && !self.accept_dev_keys {
            return None;
        }
        let brand = snapshot.brands.get(&entry.brand)?.clone();
        Some((brand, entry.label.clone()))
    }
}

fn read_toml(path: &Path) -> anyhow::Result<toml::Value> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("{}: cannot read", path.display()))?;
    toml::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {}", path.display(), e.message()))
}

fn load_snapshot(dir: &Path) -> anyhow::Result<Snapshot> {
    let base_path = dir.join(BASE_DIR).join("brand.toml");
    let base = read_toml(&base_path)?;
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .with_context(|| format!("{}: cannot read the brands folder", dir.display()))?
        .filter_map(Result::ok)
        .filter(|e| e.path().is_dir() && e.file_name() != BASE_DIR)
        .collect();
    entries.sort_by_key(|e| e.file_name());

    let mut snapshot = Snapshot::default();
    let mut problems = Vec::new();
    for entry in entries {
        let name = entry.file_name().to_string_lossy().into_owned();
        let file = entry.path().join("brand.toml");
        match load_brand(&name, &file, &base) {
            Ok((brand, keys)) => {
                for (digest, key) in keys {
                    if let Some(other) = snapshot.keys.insert(digest, key) {
                        problems.push(format!(
                            "{}: api_keys: a key is also used by brand {}",
                            file.display(),
                            other.brand
                        ));
                    }
                }
                snapshot.brands.insert(brand.id.clone(), Arc::new(brand));
            }
            Err(brand_problems) => problems.extend(brand_problems),
        }
    }
    if !problems.is_empty() {
        bail!("invalid brands:\n  - {}", problems.join("\n  - "));
    }
    if snapshot.brands.is_empty() {
        bail!("{}: no brand folders next to {BASE_DIR}", dir.display());
    }
    Ok(snapshot)
}

type LoadedBrand = (Brand, Vec<([u8; 32], ApiKey)>);

fn load_brand(name: &str, file: &Path, base: &toml::Value) -> Result<LoadedBrand, Vec<String>> {
    let at = |key: &str, what: String| format!("{}: {key}: {what}", file.display());
    let id = BrandId::parse(name).map_err(|e| vec![at("(folder name)", e)])?;
    let own = read_toml(file).map_err(|e| vec![e.to_string()])?;
    let mut merged = base.clone();
    crate::toml_merge(&mut merged, own);
    let parsed: BrandFile = merged
        .try_into()
        .map_err(|e: toml::de::Error| vec![format!("{}: {}", file.display(), e.message())])?;

    let mut problems: Vec<String> = parsed
        .limits
        .problems()
        .into_iter()
        .map(|p| at("limits", p))
        .collect();
    let countries = parsed
        .allowed_countries
        .iter()
        .map(|c| ("allowed_countries", c));
    for (key, country) in countries.chain(
        parsed
            .default_country
            .iter()
            .map(|c| ("default_country", c)),
    ) {
        if country.len() != 2 || !country.bytes().all(|b| b.is_ascii_uppercase()) {
            problems.push(at(
                key,
                format!("{country:?} is not an ISO 3166 alpha-2 code"),
            ));
        }
    }
    if !parsed.sms.template.contains("{code}") {
        problems.push(at(
            "sms.template",
            "must contain the {code} placeholder".to_owned(),
        ));
    }
    if parsed.sms_sender.is_empty()
        || (parsed.sms_sender.len() > 11 && !parsed.sms_sender.starts_with('+'))
    {
        problems.push(at(
            "sms_sender",
            "must be 1–11 characters (or a phone number)".to_owned(),
        ));
    }
    let mut keys = Vec::new();
    for key in &parsed.api_keys {
        match key
            .hash
            .strip_prefix("sha256:")
            .and_then(|h| hex::decode(h).ok())
        {
            Some(bytes) if bytes.len() == 32 => {
                let mut digest = [0u8; 32];
                digest.copy_from_slice(&bytes);
                keys.push((
                    digest,
                    ApiKey {
                        brand: id.clone(),
                        label: key.id.clone(),
                        dev_only: key.dev_only,
                    },
                ));
            }
            _ => problems.push(at(
                "api_keys",
                format!("{}: hash must be sha256:<64 hex digits>", key.id),
            )),
        }
    }
    if !problems.is_empty() {
        return Err(problems);
    }
    let default_country = parsed
        .default_country
        .or_else(|| parsed.allowed_countries.first().cloned());
    let brand = Brand {
        id,
        display_name: parsed.display_name,
        allowed_countries: parsed.allowed_countries,
        default_country,
        sms_sender: parsed.sms_sender,
        limits: parsed.limits,
        sms_template: parsed.sms.template,
    };
    Ok((brand, keys))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, rel: &str, text: &str) {
        let path = dir.join(rel);
        std::fs::create_dir_all(path.parent().expect("has parent")).expect("mkdir");
        std::fs::write(path, text).expect("write");
    }

    const BASE: &str = r#"
display_name = "Base"
sms_sender = "orderguard"
[limits]
code_length = 6
ttl_seconds = 300
max_checks = 5
max_sends = 3
resend_cooldown_seconds = 30
[sms]
template = "{brand}: code {code}"
"#;

    #[test]
    fn the_shipped_brands_load() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("brands");
        let registry = BrandRegistry::load(&dir, true).expect("shipped brands are valid");
        assert!(registry.get("nordwind").is_some());
    }

    #[test]
    fn a_brand_inherits_base_and_overrides_only_what_it_sets() {
        let dir = tempfile::tempdir().expect("tempdir");
        write(dir.path(), "_base/brand.toml", BASE);
        write(
            dir.path(),
            "acme/brand.toml",
            "display_name = \"Acme\"\n[limits]\nmax_checks = 3\n",
        );
        let registry = BrandRegistry::load(dir.path(), false).expect("loads");
        let acme = registry.get("acme").expect("acme");
        assert_eq!(acme.display_name, "Acme");
        assert_eq!(acme.limits.max_checks, 3);
        assert_eq!(acme.limits.code_length, 6, "inherited from _base");
    }

    #[test]
    fn keys_authenticate_one_brand_and_dev_keys_only_in_dev_mode() {
        let dir = tempfile::tempdir().expect("tempdir");
        write(dir.path(), "_base/brand.toml", BASE);
        let a = format!(
            "display_name = \"A\"\n[[api_keys]]\nid = \"prod\"\nhash = \"{}\"\n",
            api_key_hash("key-a")
        );
        let b = format!(
            "display_name = \"B\"\n[[api_keys]]\nid = \"dev\"\nhash = \"{}\"\ndev_only = true\n",
            api_key_hash("key-b")
        );
        write(dir.path(), "brand-a/brand.toml", &a);
        write(dir.path(), "brand-b/brand.toml", &b);

        let dev = BrandRegistry::load(dir.path(), true).expect("loads");
        assert_eq!(
            dev.authenticate("key-a").map(|(b, _)| b.id.to_string()),
            Some("brand-a".into())
        );
        assert_eq!(
            dev.authenticate("key-b").map(|(b, _)| b.id.to_string()),
            Some("brand-b".into())
        );
        assert!(dev.authenticate("key-c").is_none());

        let production = BrandRegistry::load(dir.path(), false).expect("loads");
        assert!(production.authenticate("key-a").is_some());
        assert!(
            production.authenticate("key-b").is_none(),
            "dev keys are refused in production"
        );
    }

    #[test]
    fn every_problem_is_reported_with_file_and_key() {
        let dir = tempfile::tempdir().expect("tempdir");
        write(dir.path(), "_base/brand.toml", BASE);
        write(
            dir.path(),
            "bad/brand.toml",
            "display_name = \"Bad\"\nallowed_countries = [\"Germany\"]\n[limits]\ncode_length = 2\n[sms]\ntemplate = \"no code\"\n",
        );
        write(dir.path(), "typo/brand.toml", "display_nme = \"Typo\"\n");
        let error = BrandRegistry::load(dir.path(), true)
            .expect_err("invalid")
            .to_string();
        for expected in [
            "bad/brand.toml: limits: code_length",
            "bad/brand.toml: allowed_countries: \"Germany\"",
            "bad/brand.toml: sms.template: must contain the {code} placeholder",
            "typo/brand.toml: unknown field `display_nme`",
        ] {
            assert!(
                error.contains(expected),
                "missing {expected:?} in:\n{error}"
            );
        }
    }
}
