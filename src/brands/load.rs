//! Reading and validating brand folders. Every problem is reported, each as
//! `file: key: what is wrong`, with paths relative to the brands folder.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;
use std::sync::Arc;

use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::pages::{self, Page, PageModel, TEMPLATES};
use super::schema::{locale_keys, lookup, unknown_brand_keys};
use super::validate::{
    api_keys, fraud_and_webhook_problems, identity_problems, integration_problems, theme_problems,
};
use super::{
    Asset, BASE_DIR, Brand, BrandId, DirectoryConfig, Theme, UpstreamConfig, WebhookConfig,
};
use crate::domain::{Limits, Money};
use crate::sms::segments::{self, Encoding};

/// Largest asset served from a brand folder.
const MAX_ASSET_BYTES: usize = 1024 * 1024;

/// What every brand inherits.
pub(super) struct Base {
    table: toml::Table,
    locales: BTreeMap<String, toml::Table>,
    /// Union of the keys of every `_base` locale: what every locale must have.
    keys: BTreeSet<String>,
    templates: BTreeMap<String, String>,
    assets: BTreeMap<String, Vec<u8>>,
}

/// `brand.toml` after merging `_base` and the brand's own file. Unknown keys were reported
/// and removed before this is read.
#[derive(Debug, Deserialize)]
pub(super) struct BrandFile {
    pub(super) display_name: String,
    pub(super) sms_sender: String,
    #[serde(default)]
    pub(super) allowed_countries: Vec<String>,
    #[serde(default)]
    pub(super) default_country: Option<String>,
    #[serde(default)]
    pub(super) frame_origins: Vec<String>,
    pub(super) default_locale: String,
    pub(super) locales: Vec<String>,
    pub(super) theme: Theme,
    pub(super) limits: Limits,
    pub(super) sms: SmsFile,
    #[serde(default)]
    pub(super) upstream: Option<UpstreamConfig>,
    #[serde(default)]
    pub(super) customer_directory: Option<DirectoryConfig>,
    #[serde(default)]
    pub(super) webhooks: WebhookConfig,
    #[serde(default)]
    pub(super) api_keys: Vec<ApiKeyFile>,
    pub(super) fraud: crate::fraud::FraudConfig,
}

#[derive(Debug, Deserialize)]
pub(super) struct SmsFile {
    /// The most SMS segments the code message may take.
    pub(super) max_segments: u8,
}

#[derive(Debug, Deserialize)]
pub(super) struct ApiKeyFile {
    pub(super) id: String,
    pub(super) hash: String,
    #[serde(default)]
    pub(super) dev_only: bool,
}

/// Every problem of the brands folder `dir`: `_base`, each brand, and keys shared by brands.
pub fn check(dir: &Path) -> Vec<String> {
    let base = match load_base(dir) {
        Ok(base) => base,
        Err(problems) => return problems,
    };
    let mut problems = Vec::new();
    let mut owners: HashMap<[u8; 32], String> = HashMap::new();
    let names: Vec<String> = fingerprints(dir)
        .into_keys()
        .filter(|n| n != BASE_DIR)
        .collect();
    if names.is_empty() {
        problems.push(format!("{BASE_DIR}: no brand folders next to it"));
    }
    for name in names {
        match load_brand(dir, &base, &name) {
            Ok(brand) => {
                for key in &brand.api_keys {
                    if let Some(other) = owners.insert(key.digest, name.clone()) {
                        problems.push(format!("{name}/brand.toml: api_keys: {}: the key is also used by brand {other}", key.label));
                    }
                }
            }
            Err(brand_problems) => problems.extend(brand_problems),
        }
    }
    problems
}

/// A hash of every file's path and content under `path`.
pub fn fingerprint(path: &Path) -> String {
    let mut files = Vec::new();
    collect_files(path, path, &mut files);
    files.sort();
    let mut hasher = Sha256::new();
    for (relative, full) in files {
        hasher.update(relative.as_bytes());
        hasher.update([0]);
        hasher.update(std::fs::read(full).unwrap_or_default());
        hasher.update([0]);
    }
    hex::encode(&hasher.finalize()[..8])
}

fn collect_files(root: &Path, dir: &Path, out: &mut Vec<(String, std::path::PathBuf)>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            collect_files(root, &path, out);
        } else {
            let relative = path
                .strip_prefix(root)
                .unwrap_or(&path)
                .display()
                .to_string();
            out.push((relative, path));
        }
    }
}

/// Fingerprints of `_base` and every brand folder, by folder name.
pub(super) fn fingerprints(dir: &Path) -> BTreeMap<String, String> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return BTreeMap::new();
    };
    entries
        .flatten()
        .filter(|e| e.path().is_dir())
        .filter_map(|e| {
            let name = e.file_name().to_str()?.to_owned();
            (!name.starts_with('.')).then(|| (name, fingerprint(&e.path())))
        })
        .collect()
}

fn read_toml(dir: &Path, relative: &str, problems: &mut Vec<String>) -> Option<toml::Table> {
    let text = match std::fs::read_to_string(dir.join(relative)) {
        Ok(text) => text,
        Err(error) => {
            problems.push(format!("{relative}: cannot be read ({error})"));
            return None;
        }
    };
    match toml::from_str::<toml::Table>(&text) {
        Ok(table) => Some(table),
        Err(error) => {
            let line = error
                .span()
                .map(|span| text[..span.start].lines().count().max(1));
            let at = line.map(|l| format!(" (line {l})")).unwrap_or_default();
            let message = error.message().trim().replace('\n', "; ");
            problems.push(format!("{relative}: not valid TOML: {message}{at}"));
            None
        }
    }
}

/// The files of `dir` with extension `ext` (or every file), by name.
fn files(dir: &Path, ext: Option<&str>) -> BTreeMap<String, std::path::PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return BTreeMap::new();
    };
    entries
        .flatten()
        .filter(|e| e.path().is_file())
        .filter(|e| ext.is_none_or(|ext| e.path().extension().is_some_and(|x| x == ext)))
        .filter_map(|e| Some((e.file_name().to_str()?.to_owned(), e.path())))
        .collect()
}

fn read_locales(
    dir: &Path,
    folder: &str,
    problems: &mut Vec<String>,
) -> BTreeMap<String, toml::Table> {
    files(&dir.join(folder).join("locales"), Some("toml"))
        .into_keys()
        .filter_map(|file| {
            let locale = file.trim_end_matches(".toml").to_owned();
            read_toml(dir, &format!("{folder}/locales/{file}"), problems)
                .map(|table| (locale, table))
        })
        .collect()
}

fn read_templates(
    dir: &Path,
    folder: &str,
    problems: &mut Vec<String>,
) -> BTreeMap<String, String> {
    files(&dir.join(folder).join("templates"), Some("hbs"))
        .into_iter()
        .filter_map(|(file, path)| match std::fs::read_to_string(&path) {
            Ok(source) => Some((file.trim_end_matches(".hbs").to_owned(), source)),
            Err(error) => {
                problems.push(format!(
                    "{folder}/templates/{file}: cannot be read ({error})"
                ));
                None
            }
        })
        .collect()
}

fn read_assets(dir: &Path, folder: &str, problems: &mut Vec<String>) -> BTreeMap<String, Vec<u8>> {
    files(&dir.join(folder).join("assets"), None)
        .into_iter()
        .filter_map(|(file, path)| match std::fs::read(&path) {
            Ok(bytes) if bytes.len() <= MAX_ASSET_BYTES => Some((file, bytes)),
            Ok(_) => {
                problems.push(format!("{folder}/assets/{file}: larger than 1 MiB"));
                None
            }
            Err(error) => {
                problems.push(format!("{folder}/assets/{file}: cannot be read ({error})"));
                None
            }
        })
        .collect()
}

pub(super) fn load_base(dir: &Path) -> Result<Base, Vec<String>> {
    let mut problems = Vec::new();
    let table =
        read_toml(dir, &format!("{BASE_DIR}/brand.toml"), &mut problems).unwrap_or_default();
    for key in unknown_brand_keys(&table) {
        problems.push(format!("{BASE_DIR}/brand.toml: {key}: unknown key"));
    }
    let locales = read_locales(dir, BASE_DIR, &mut problems);
    if locales.is_empty() {
        problems.push(format!("{BASE_DIR}/locales: no locale files"));
    }
    let keys: BTreeSet<String> = locales.values().flat_map(locale_keys).collect();
    for (locale, catalog) in &locales {
        for missing in keys.difference(&locale_keys(catalog)) {
            problems.push(format!(
                "{BASE_DIR}/locales/{locale}.toml: {missing}: missing (another _base locale has it)"
            ));
        }
    }
    let templates = read_templates(dir, BASE_DIR, &mut problems);
    for name in TEMPLATES {
        if !templates.contains_key(*name) {
            problems.push(format!("{BASE_DIR}/templates/{name}.hbs: missing"));
        }
    }
    let assets = read_assets(dir, BASE_DIR, &mut problems);
    if problems.is_empty() {
        Ok(Base {
            table,
            locales,
            keys,
            templates,
            assets,
        })
    } else {
        Err(problems)
    }
}

/// Removes `paths` (dotted; array entries included) from `table`.
fn remove_paths(table: &mut toml::Table, paths: &[String]) {
    for path in paths {
        let parts: Vec<&str> = path.split('.').collect();
        remove_path(table, &parts);
    }
}

fn remove_path(table: &mut toml::Table, parts: &[&str]) {
    match parts {
        [] => {}
        [last] => {
            table.remove(*last);
        }
        [first, rest @ ..] => match table.get_mut(*first) {
            Some(toml::Value::Table(inner)) => remove_path(inner, rest),
            Some(toml::Value::Array(items)) => {
                for item in items {
                    if let toml::Value::Table(inner) = item {
                        remove_path(inner, rest);
                    }
                }
            }
            _ => {}
        },
    }
}

pub(super) fn is_colour(value: &str) -> bool {
    let hex = value.strip_prefix('#').unwrap_or("");
    matches!(hex.len(), 3 | 6) && hex.bytes().all(|b| b.is_ascii_hexdigit())
}

/// `https://host[:port]`, or `http://` for loopback hosts (development and tests).
/// Whether `origin` is on this machine (`localhost`, `127.0.0.1`, `[::1]`): such frame origins
/// serve local development and are honoured only in dev mode, like `dev_only` API keys.
pub fn is_loopback_origin(origin: &str) -> bool {
    url::Url::parse(origin).is_ok_and(|url| match url.host() {
        Some(url::Host::Domain(name)) => name.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    })
}

pub fn is_origin(value: &str) -> bool {
    let Some((scheme, rest)) = value.split_once("://") else {
        return false;
    };
    let (host, port) = match rest.rsplit_once(':') {
        Some((host, port)) if !host.ends_with(']') || rest.starts_with('[') => (host, Some(port)),
        _ => (rest, None),
    };
    let host_ok = !host.is_empty()
        && host.len() <= 253
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'[' | b']' | b':'));
    let port_ok = port.is_none_or(|p| !p.is_empty() && p.parse::<u16>().is_ok());
    let loopback = matches!(host, "localhost" | "127.0.0.1" | "[::1]");
    host_ok && port_ok && (scheme == "https" || (scheme == "http" && loopback))
}

pub(super) fn is_radius(value: &str) -> bool {
    let number = value
        .trim_end_matches("px")
        .trim_end_matches("rem")
        .trim_end_matches("em");
    value == "0"
        || (number.len() < value.len()
            && !number.is_empty()
            && number.len() <= 4
            && number.parse::<f32>().is_ok())
}

pub(super) fn is_font_stack(value: &str) -> bool {
    !value.trim().is_empty()
        && value.len() <= 200
        && value
            .chars()
            .all(|c| c.is_alphanumeric() || matches!(c, ' ' | ',' | '-' | '\'' | '"' | '_'))
}

fn is_asset_name(value: &str) -> bool {
    !value.is_empty()
        && !value.starts_with('.')
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
}

/// The content type served for an asset file name.
pub fn content_type(name: &str) -> &'static str {
    match name.rsplit('.').next().unwrap_or_default() {
        "css" => "text/css; charset=utf-8",
        "js" => "text/javascript; charset=utf-8",
        "svg" => "image/svg+xml",
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "webp" => "image/webp",
        "gif" => "image/gif",
        "ico" => "image/x-icon",
        "woff2" => "font/woff2",
        "woff" => "font/woff",
        _ => "application/octet-stream",
    }
}

/// The SMS as a buyer would get it, with the longest values a brand can expect, for the
/// segment budget: brand name, a four-digit amount, a 12-character order reference, the full
/// code length, and a WebOTP line for a 20-character host.
fn sample_sms(text: &str, display_name: &str, locale: &str, limits: &Limits) -> String {
    let amount = Money::parse("1234.56", "EUR")
        .map(|m| m.localized(locale))
        .unwrap_or_default();
    let code = "0".repeat(usize::from(limits.code_length));
    let sample = crate::sms::CodeSms {
        brand: display_name,
        amount: &amount,
        order_reference: "ORDER-123456",
        minutes: i64::from(limits.ttl_seconds / 60).max(1),
        code: &code,
        otp_host: "checkout.example.com",
    };
    crate::sms::compose(text, &sample)
}

pub(super) fn load_brand(dir: &Path, base: &Base, name: &str) -> Result<Brand, Vec<String>> {
    let mut problems = Vec::new();
    let file = format!("{name}/brand.toml");
    let at = |key: &str, what: String| format!("{file}: {key}: {what}");
    // `_base` alone makes the neutral brand of pages that belong to no known verification.
    let fallback = name == BASE_DIR;
    let (id, own) = if fallback {
        (BrandId(BASE_DIR.to_owned()), toml::Table::new())
    } else {
        let id = BrandId::parse(name).map_err(|e| vec![format!("{name}: {e}")])?;
        (
            id,
            read_toml(dir, &file, &mut problems).ok_or_else(|| problems.clone())?,
        )
    };
    let unknown = unknown_brand_keys(&own);
    for key in &unknown {
        problems.push(at(key, "unknown key".to_owned()));
    }
    let mut merged = toml::Value::Table(base.table.clone());
    let mut own = own;
    remove_paths(&mut own, &unknown);
    crate::toml_merge(&mut merged, toml::Value::Table(own));
    // serde_path_to_error names the key a type error is about.
    let parsed: BrandFile = match serde_path_to_error::deserialize(merged) {
        Ok(parsed) => parsed,
        Err(error) => {
            let key = error.path().to_string();
            let message = error.into_inner().message().trim().replace('\n', "; ");
            problems.push(format!("{file}: {key}: {message}"));
            return Err(problems);
        }
    };

    problems.extend(identity_problems(&parsed, &file));
    problems.extend(fraud_and_webhook_problems(&parsed, &file));
    problems.extend(integration_problems(&parsed, &file));
    problems.extend(theme_problems(&parsed.theme, &file));
    let theme = &parsed.theme;
    // Assets: the brand's own files replace _base's of the same name.
    let mut assets = base.assets.clone();
    if !fallback {
        assets.extend(read_assets(dir, name, &mut problems));
    }
    // An empty logo is the brand's name as a text wordmark.
    if !theme.logo.is_empty() && (!is_asset_name(&theme.logo) || !assets.contains_key(&theme.logo))
    {
        problems.push(at(
            "theme.logo",
            format!(
                "{:?} is not in {name}/assets or {BASE_DIR}/assets",
                theme.logo
            ),
        ));
    }

    // Locales: every offered one needs every key of _base; brand files only override.
    let own_locales = if fallback {
        BTreeMap::new()
    } else {
        read_locales(dir, name, &mut problems)
    };
    for (locale, catalog) in &own_locales {
        for key in locale_keys(catalog).difference(&base.keys) {
            problems.push(format!(
                "{name}/locales/{locale}.toml: {key}: unknown key (not in {BASE_DIR}/locales)"
            ));
        }
    }
    let mut locales = vec![parsed.default_locale.clone()];
    locales.extend(
        parsed
            .locales
            .iter()
            .filter(|l| **l != parsed.default_locale)
            .cloned(),
    );
    if !parsed.locales.contains(&parsed.default_locale) {
        problems.push(at(
            "default_locale",
            format!("{:?} is not among locales", parsed.default_locale),
        ));
    }
    let mut catalogs = HashMap::new();
    // Locales missing keys are reported once, not again through every template using them.
    let mut incomplete = BTreeSet::new();
    for locale in &locales {
        let (base_catalog, own_catalog) = (base.locales.get(locale), own_locales.get(locale));
        if base_catalog.is_none() && own_catalog.is_none() {
            problems.push(at(
                "locales",
                format!("no locale file for {locale:?} in {name}/locales or {BASE_DIR}/locales"),
            ));
            continue;
        }
        let mut merged = toml::Value::Table(base_catalog.cloned().unwrap_or_default());
        if let Some(own) = own_catalog {
            crate::toml_merge(&mut merged, toml::Value::Table(own.clone()));
        }
        let toml::Value::Table(catalog) = merged else {
            continue;
        };
        let locale_file = if own_catalog.is_some() {
            format!("{name}/locales/{locale}.toml")
        } else {
            format!("{BASE_DIR}/locales/{locale}.toml")
        };
        for missing in base.keys.difference(&locale_keys(&catalog)) {
            problems.push(format!("{locale_file}: {missing}: missing (every locale needs every key of {BASE_DIR}/locales)"));
            incomplete.insert(locale.clone());
        }
        let sms_file = if own_catalog.is_some_and(|c| lookup(c, "sms.text").is_some()) {
            format!("{name}/locales/{locale}.toml")
        } else {
            format!("{BASE_DIR}/locales/{locale}.toml")
        };
        if let Some(text) = lookup(&catalog, "sms.text").and_then(toml::Value::as_str) {
            if !text.contains("{code}") {
                problems.push(format!(
                    "{sms_file}: sms.text: must contain the {{code}} placeholder"
                ));
            }
            let sample = sample_sms(text, &parsed.display_name, locale, &parsed.limits);
            let count = segments::count(&sample);
            if count.segments > usize::from(parsed.sms.max_segments) {
                let (encoding, units) = match count.encoding {
                    Encoding::Gsm7 => ("GSM-7", "septets"),
                    Encoding::Ucs2 => ("UCS-2", "UTF-16 code units"),
                };
                let why = match (
                    count.encoding,
                    sample.chars().find(|c| !segments::is_gsm7(*c)),
                ) {
                    (Encoding::Ucs2, Some(c)) => format!(", because of {c:?}"),
                    _ => String::new(),
                };
                problems.push(format!(
                    "{sms_file}: sms.text: {} segments in {encoding} ({} {units}{why}) exceed the budget of {} (sms.max_segments)",
                    count.segments, count.units, parsed.sms.max_segments
                ));
            }
        }
        catalogs.insert(
            locale.clone(),
            serde_json::to_value(&catalog).unwrap_or_default(),
        );
    }

    // Templates: the brand's own replace _base's; each must compile and render in strict
    // mode with every variable a page can have, in every offered locale.
    let own_templates = if fallback {
        BTreeMap::new()
    } else {
        read_templates(dir, name, &mut problems)
    };
    let template_file = |template: &str| {
        if own_templates.contains_key(template) {
            format!("{name}/templates/{template}.hbs")
        } else {
            format!("{BASE_DIR}/templates/{template}.hbs")
        }
    };
    let mut sources = base.templates.clone();
    sources.extend(own_templates.clone());
    let sources: Vec<(String, String)> = sources.into_iter().collect();
    let registry = match pages::registry(&sources) {
        Ok(registry) => Some(registry),
        Err(errors) => {
            for (template, error) in errors {
                problems.push(format!("{}: {error}", template_file(&template)));
            }
            None
        }
    };
    if let Some(registry) = &registry {
        for page in [Page::Code, Page::Result, Page::Error, Page::Demo] {
            // In the brand's order of locales, so the report is the same on every run.
            let complete = locales.iter().filter(|l| !incomplete.contains(*l));
            for (locale, catalog) in complete.filter_map(|l| catalogs.get(l).map(|c| (l, c))) {
                if let Err(error) =
                    registry.render(page.template(), &PageModel::sample(page, catalog.clone()))
                {
                    let template = error
                        .template_name
                        .clone()
                        .unwrap_or_else(|| page.template().to_owned());
                    problems.push(format!(
                        "{}: {} (locale {locale})",
                        template_file(&template),
                        pages::render_error(&error)
                    ));
                    break;
                }
            }
        }
    }

    let api_keys = match api_keys(&parsed.api_keys, &file) {
        Ok(keys) => keys,
        Err(found) => {
            problems.extend(found);
            Vec::new()
        }
    };

    let Some(templates) = registry.filter(|_| problems.is_empty()) else {
        problems.dedup();
        return Err(problems);
    };
    let default_country = parsed
        .default_country
        .or_else(|| parsed.allowed_countries.first().cloned());
    let assets = assets
        .into_iter()
        .map(|(file, bytes)| {
            let content_type = content_type(&file);
            (
                file,
                Asset {
                    bytes: Arc::from(bytes),
                    content_type,
                },
            )
        })
        .collect();
    Ok(Brand {
        id,
        display_name: parsed.display_name,
        allowed_countries: parsed.allowed_countries,
        default_country,
        sms_sender: parsed.sms_sender,
        limits: parsed.limits,
        frame_origins: parsed.frame_origins,
        default_locale: parsed.default_locale,
        locales,
        theme: parsed.theme,
        sms_max_segments: parsed.sms.max_segments,
        upstream: parsed.upstream,
        customer_directory: parsed.customer_directory.unwrap_or(DirectoryConfig::None),
        webhooks: parsed.webhooks,
        fraud: parsed.fraud,
        catalogs,
        templates,
        assets,
        api_keys,
        version: format!(
            "{}{}",
            fingerprint(&dir.join(BASE_DIR)),
            fingerprint(&dir.join(name))
        ),
    })
}
