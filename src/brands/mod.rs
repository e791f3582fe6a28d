//! Brands: `brands/_base/` holds everything a brand inherits; `brands/<id>/` holds only what
//! differs (identity, theme, frame origins, locales offered, limits, API keys, and optional
//! locale, template and asset overrides).
//!
//! Loading validates everything and reports every problem at once, each as
//! `file: key: what is wrong` (paths relative to the brands folder). The registry swaps in a
//! changed brand atomically; a change that fails validation is refused and the last good
//! version of that brand keeps serving.

mod load;
pub mod pages;
pub mod scaffold;
pub mod schema;
mod validate;
pub mod watch;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use handlebars::Handlebars;
use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::domain::Limits;
pub use load::{check, fingerprint};
pub use pages::{Page, PageModel};

/// The folder every brand inherits from.
pub const BASE_DIR: &str = "_base";

/// A brand's id: its folder name, lower-case letters, digits and dashes.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
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

/// The look of a brand's pages, served as CSS custom properties.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Theme {
    pub primary: String,
    pub on_primary: String,
    pub background: String,
    pub surface: String,
    pub text: String,
    pub muted: String,
    pub accent: String,
    pub error: String,
    /// A CSS font stack.
    pub font: String,
    /// Corner radius, e.g. `8px`.
    pub radius: String,
    /// File name of the logo in the brand's (or `_base`'s) `assets/`.
    pub logo: String,
}

/// Gate mode: the order API approved orders are forwarded to.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    /// Where held orders are POSTed once approved.
    pub url: String,
    /// Header carrying the credential, e.g. `Authorization`.
    #[serde(default)]
    pub auth_header: Option<String>,
    /// Name of the credential in the service's `brand_secrets`.
    #[serde(default)]
    pub auth_secret: Option<String>,
    /// Give up on one attempt after this long (it is retried). Default 10000.
    #[serde(default = "default_upstream_timeout")]
    pub timeout_ms: u64,
}

fn default_upstream_timeout() -> u64 {
    10_000
}

fn default_directory_timeout() -> u64 {
    3_000
}

/// Where the number on file comes from when a customer reference is given.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum DirectoryConfig {
    /// The phone number comes from the request.
    None,
    /// `GET url` (with `{customer_reference}` filled in, URL-encoded); the number is at the
    /// JSON pointer `phone_pointer` of the answer.
    Http {
        url: String,
        phone_pointer: String,
        #[serde(default = "default_directory_timeout")]
        timeout_ms: u64,
        #[serde(default)]
        auth_header: Option<String>,
        #[serde(default)]
        auth_secret: Option<String>,
    },
}

/// Webhooks to shops' `callback_url`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// Name of the signing secret in the service's `brand_secrets`; shops verify with it.
    #[serde(default)]
    pub secret: Option<String>,
    /// Hosts a `callback_url` may name (`shop.example` or `*.shop.example`); empty allows any
    /// public host. Internal addresses are refused either way.
    #[serde(default)]
    pub hosts: Vec<String>,
}

/// A file served under `/assets/<brand>/`.
#[derive(Debug, Clone)]
pub struct Asset {
    pub bytes: Arc<[u8]>,
    pub content_type: &'static str,
}

/// A loaded, validated brand.
pub struct Brand {
    pub id: BrandId,
    pub display_name: String,
    pub allowed_countries: Vec<String>,
    pub default_country: Option<String>,
    pub sms_sender: String,
    pub limits: Limits,
    /// Origins allowed to frame the code page (`frame-ancestors`) and to receive postMessage.
    pub frame_origins: Vec<String>,
    pub default_locale: String,
    /// Offered locales, the default first.
    pub locales: Vec<String>,
    pub theme: Theme,
    pub sms_max_segments: u8,
    pub upstream: Option<UpstreamConfig>,
    pub customer_directory: DirectoryConfig,
    pub webhooks: WebhookConfig,
    /// The fraud rules' settings (`[fraud]`).
    pub fraud: crate::fraud::FraudConfig,
    /// Locale → its copy (nested tables, as templates see them).
    catalogs: HashMap<String, serde_json::Value>,
    templates: Handlebars<'static>,
    assets: HashMap<String, Asset>,
    api_keys: Vec<ApiKeyEntry>,
    /// Changes whenever the brand's files change; used to bust caches of its assets.
    pub version: String,
}

/// One API key of a brand: the SHA-256 of the key, a label for logs, and whether it is a
/// development key.
#[derive(Debug, Clone)]
pub struct ApiKeyEntry {
    pub digest: [u8; 32],
    pub label: String,
    pub dev_only: bool,
}

impl std::fmt::Debug for Brand {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Brand")
            .field("id", &self.id)
            .field("version", &self.version)
            .finish_non_exhaustive()
    }
}

impl Brand {
    /// The locale to use: an explicit choice if offered, else the best of `Accept-Language`
    /// among the offered ones, else the brand's default. `de-AT` matches an offered `de`.
    pub fn pick_locale(&self, explicit: Option<&str>, accept_language: Option<&str>) -> &str {
        let offered = |tag: &str| -> Option<&str> {
            let tag = tag.trim().to_ascii_lowercase();
            let primary = tag.split(['-', '_']).next().unwrap_or_default().to_owned();
            self.locales
                .iter()
                .find(|l| **l == tag || **l == primary)
                .map(String::as_str)
        };
        if let Some(locale) = explicit.and_then(offered) {
            return locale;
        }
        if let Some(header) = accept_language {
            let mut ranges: Vec<(f32, &str)> = header
                .split(',')
                .filter_map(|part| {
                    let mut pieces = part.split(';');
                    let tag = pieces.next()?.trim();
                    let quality = pieces
                        .find_map(|p| {
                            p.trim()
                                .strip_prefix("q=")
                                .and_then(|q| q.parse::<f32>().ok())
                        })
                        .unwrap_or(1.0);
                    (!tag.is_empty() && tag != "*" && quality > 0.0).then_some((quality, tag))
                })
                .collect();
            ranges.sort_by(|a, b| b.0.total_cmp(&a.0));
            if let Some(locale) = ranges.iter().find_map(|(_, tag)| offered(tag)) {
                return locale;
            }
        }
        &self.default_locale
    }

    /// The copy of an offered locale (the default locale's for any other).
    pub fn catalog(&self, locale: &str) -> &serde_json::Value {
        self.catalogs
            .get(locale)
            .or_else(|| self.catalogs.get(&self.default_locale))
            .unwrap_or(&serde_json::Value::Null)
    }

    /// One text of a locale by dotted key, e.g. `sms.text`.
    pub fn text(&self, locale: &str, key: &str) -> &str {
        key.split('.')
            .fold(self.catalog(locale), |value, part| &value[part])
            .as_str()
            .unwrap_or_default()
    }

    /// Renders `page` with `model`. Templates were checked at load, so errors are unexpected.
    pub fn render(&self, page: Page, model: &PageModel) -> Result<String, handlebars::RenderError> {
        self.templates.render(page.template(), model)
    }

    pub fn asset(&self, name: &str) -> Option<&Asset> {
        self.assets.get(name)
    }

    /// The theme as CSS custom properties, served as `/assets/<brand>/theme.css`.
    pub fn theme_css(&self) -> String {
        let t = &self.theme;
        format!(
            ":root {{\n  --og-primary: {};\n  --og-on-primary: {};\n  --og-background: {};\n  --og-surface: {};\n  \
             --og-text: {};\n  --og-muted: {};\n  --og-accent: {};\n  --og-error: {};\n  --og-font: {};\n  --og-radius: {};\n}}\n",
            t.primary,
            t.on_primary,
            t.background,
            t.surface,
            t.text,
            t.muted,
            t.accent,
            t.error,
            t.font,
            t.radius
        )
    }
}

#[derive(Debug, Clone)]
struct ApiKey {
    brand: BrandId,
    label: String,
    dev_only: bool,
}

/// All brands and their API keys, swapped as a whole.
#[derive(Default)]
struct Snapshot {
    brands: BTreeMap<BrandId, Arc<Brand>>,
    keys: HashMap<[u8; 32], ApiKey>,
}

/// What a reload did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ReloadReport {
    pub applied: Vec<String>,
    /// Brand (or `_base`) and its problems; the last good version keeps serving.
    pub rejected: Vec<(String, Vec<String>)>,
    pub removed: Vec<String>,
}

/// The brands the service serves.
pub struct BrandRegistry {
    dir: PathBuf,
    snapshot: RwLock<Arc<Snapshot>>,
    /// The neutral look of `_base`, for pages of no known verification.
    fallback: RwLock<Option<Arc<Brand>>>,
    accept_dev_keys: bool,
    /// Fingerprints of the folders as last loaded, to reload only what changed.
    seen: Mutex<BTreeMap<String, String>>,
}

impl std::fmt::Debug for BrandRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BrandRegistry")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

/// Hashes an API key the way `brand.toml` stores it.
pub fn api_key_hash(key: &str) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(key.as_bytes())))
}

impl BrandRegistry {
    /// Loads every brand under `dir`. Fails with every problem found.
    pub fn load(dir: &Path, accept_dev_keys: bool) -> anyhow::Result<Self> {
        let problems = check(dir);
        if !problems.is_empty() {
            anyhow::bail!(
                "invalid brands in {}:\n  - {}",
                dir.display(),
                problems.join("\n  - ")
            );
        }
        let registry = Self {
            dir: dir.to_owned(),
            snapshot: RwLock::new(Arc::new(Snapshot::default())),
            fallback: RwLock::new(None),
            accept_dev_keys,
            seen: Mutex::new(BTreeMap::new()),
        };
        let report = registry.reload();
        anyhow::ensure!(
            report.rejected.is_empty(),
            "invalid brands: {:?}",
            report.rejected
        );
        anyhow::ensure!(
            !registry.is_empty(),
            "{}: no brand folders next to {BASE_DIR}",
            dir.display()
        );
        Ok(registry)
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

    /// The brand `id`, or the neutral `_base` look for `_base` or an unknown id.
    pub fn get_or_fallback(&self, id: &str) -> Option<Arc<Brand>> {
        self.get(id).or_else(|| {
            self.fallback
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .clone()
        })
    }

    pub fn len(&self) -> usize {
        self.current().brands.len()
    }

    /// Every brand loaded now.
    pub fn all(&self) -> Vec<Arc<Brand>> {
        self.current().brands.values().cloned().collect()
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

    /// Reloads what changed on disk since the last load: each changed or new brand is
    /// validated and swapped in; an invalid one is refused and its last good version stays.
    pub fn reload(&self) -> ReloadReport {
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        let now = load::fingerprints(&self.dir);
        if *seen == now {
            return ReloadReport::default();
        }
        let mut report = ReloadReport::default();
        let base_changed = seen.get(BASE_DIR) != now.get(BASE_DIR);
        let base = match load::load_base(&self.dir) {
            Ok(base) => base,
            Err(problems) => {
                report.rejected.push((BASE_DIR.to_owned(), problems));
                return report;
            }
        };
        if base_changed {
            match load::load_brand(&self.dir, &base, BASE_DIR) {
                Ok(fallback) => {
                    *self.fallback.write().unwrap_or_else(|e| e.into_inner()) =
                        Some(Arc::new(fallback))
                }
                Err(problems) => {
                    report.rejected.push((BASE_DIR.to_owned(), problems));
                    return report;
                }
            }
        }
        let current = self.current();
        let mut brands = current.brands.clone();
        for (name, print) in &now {
            if name == BASE_DIR || (!base_changed && seen.get(name) == Some(print)) {
                continue;
            }
            match load::load_brand(&self.dir, &base, name) {
                Ok(mut brand) => {
                    if !self.accept_dev_keys {
                        // Loopback frame origins are for development only.
                        brand
                            .frame_origins
                            .retain(|origin| !load::is_loopback_origin(origin));
                    }
                    // A key must authenticate exactly one brand.
                    let taken: Vec<String> = brands
                        .values()
                        .filter(|other| other.id != brand.id)
                        .filter(|other| {
                            other
                                .api_keys
                                .iter()
                                .any(|k| brand.api_keys.iter().any(|b| b.digest == k.digest))
                        })
                        .map(|other| {
                            format!(
                                "{name}/brand.toml: api_keys: a key is also used by brand {}",
                                other.id
                            )
                        })
                        .collect();
                    if taken.is_empty() {
                        brands.insert(brand.id.clone(), Arc::new(brand));
                        report.applied.push(name.clone());
                    } else {
                        report.rejected.push((name.clone(), taken));
                    }
                }
                Err(problems) => report.rejected.push((name.clone(), problems)),
            }
        }
        for id in current.brands.keys() {
            if !now.contains_key(id.as_str()) {
                brands.remove(id);
                report.removed.push(id.to_string());
            }
        }
        let mut keys = HashMap::new();
        for brand in brands.values() {
            for key in &brand.api_keys {
                keys.insert(
                    key.digest,
                    ApiKey {
                        brand: brand.id.clone(),
                        label: key.label.clone(),
                        dev_only: key.dev_only,
                    },
                );
            }
        }
        *self.snapshot.write().unwrap_or_else(|e| e.into_inner()) =
            Arc::new(Snapshot { brands, keys });
        // A rejected folder is remembered as seen only once it loads; until then it is retried.
        let rejected: Vec<&String> = report.rejected.iter().map(|(name, _)| name).collect();
        *seen = now
            .into_iter()
            .filter(|(name, _)| !rejected.contains(&name))
            .collect();
        report
    }
}

#[cfg(test)]
mod tests;
