//! `orderguard brands new ID`: a brand folder that passes `orderguard brands check`.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use rand::TryRngCore;

use super::{BrandId, api_key_hash, check};

/// What was created, with the new API key (shown once; only its hash is stored).
pub struct Scaffolded {
    pub folder: PathBuf,
    pub api_key: String,
}

/// Creates `dir/<id>/brand.toml` (inheriting everything else from `_base`) and checks it.
pub fn new_brand(dir: &Path, id: &str) -> anyhow::Result<Scaffolded> {
    let id = BrandId::parse(id).map_err(anyhow::Error::msg)?;
    let folder = dir.join(id.as_str());
    if folder.exists() {
        bail!("{} already exists", folder.display());
    }
    let mut secret = [0u8; 24];
    rand::rngs::OsRng
        .try_fill_bytes(&mut secret)
        .context("reading the OS random generator")?;
    let api_key = format!(
        "og_{}_{}",
        id.as_str().replace('-', ""),
        hex::encode(secret)
    );
    let text = format!(
        r##"# Brand {id}. Everything not set here comes from ../_base/brand.toml; copy keys from there
# to override them. Copy and change ../_base/locales/*.toml keys in locales/, templates in
# templates/, and put a logo in assets/. Check with: orderguard brands check {dir}

display_name = "{name}"
sms_sender = "{sender}"
# Countries whose mobile numbers are accepted (ISO 3166 alpha-2).
allowed_countries = ["DE"]
# Shop origins allowed to embed the code page and receive its postMessage events.
frame_origins = ["https://shop.example.com"]
default_locale = "en"
locales = ["en"]

[theme]
primary = "#1f4e79"
accent = "#f2a541"
# No logo yet: the header shows display_name as text. Put one in assets/ and name it here.
logo = ""

[[api_keys]]
id = "main"
hash = "{hash}"
"##,
        name = title(id.as_str()),
        sender = title(id.as_str())
            .replace(' ', "")
            .chars()
            .take(11)
            .collect::<String>(),
        hash = api_key_hash(&api_key),
        dir = dir.display(),
    );
    std::fs::create_dir_all(&folder).with_context(|| format!("creating {}", folder.display()))?;
    std::fs::write(folder.join("brand.toml"), text).context("writing brand.toml")?;
    let problems: Vec<String> = check(dir)
        .into_iter()
        .filter(|p| p.starts_with(&format!("{id}/")))
        .collect();
    if !problems.is_empty() {
        let _ = std::fs::remove_dir_all(&folder);
        bail!(
            "the new brand does not pass the check:\n  - {}",
            problems.join("\n  - ")
        );
    }
    Ok(Scaffolded { folder, api_key })
}

/// `fjall-net` → `Fjall Net`.
fn title(id: &str) -> String {
    id.split('-')
        .map(|word| {
            let mut chars = word.chars();
            chars
                .next()
                .map(|c| c.to_ascii_uppercase().to_string() + chars.as_str())
                .unwrap_or_default()
        })
        .collect::<Vec<_>>()
        .join(" ")
}
