//! The per-section checks of a brand's `brand.toml`, each returning its problems as
//! `file: key: what is wrong`. `load.rs` reads the folder and runs them in order.

use super::load::{BrandFile, is_colour, is_font_stack, is_origin, is_radius};
use super::{ApiKeyEntry, DirectoryConfig, Theme};

/// Countries, sender, SMS budget, limits and the origins allowed to frame the code page.
pub(super) fn identity_problems(parsed: &BrandFile, file: &str) -> Vec<String> {
    let mut problems = Vec::new();
    let at = |key: &str, what: String| format!("{file}: {key}: {what}");
    problems.extend(
        parsed
            .limits
            .problems()
            .into_iter()
            .map(|p| at("limits", p)),
    );
    for country in &parsed.allowed_countries {
        if country.len() != 2 || !country.bytes().all(|b| b.is_ascii_uppercase()) {
            problems.push(at(
                "allowed_countries",
                format!("{country:?} is not an ISO 3166 alpha-2 code"),
            ));
        }
    }
    if let Some(country) = &parsed.default_country {
        if country.len() != 2 || !country.bytes().all(|b| b.is_ascii_uppercase()) {
            problems.push(at(
                "default_country",
                format!("{country:?} is not an ISO 3166 alpha-2 code"),
            ));
        }
    }
    if parsed.sms_sender.is_empty()
        || (parsed.sms_sender.len() > 11 && !parsed.sms_sender.starts_with('+'))
    {
        problems.push(at(
            "sms_sender",
            "must be 1–11 characters (or a phone number)".to_owned(),
        ));
    }
    if !(1..=10).contains(&parsed.sms.max_segments) {
        problems.push(at(
            "sms.max_segments",
            format!("must be between 1 and 10, not {}", parsed.sms.max_segments),
        ));
    }
    for origin in &parsed.frame_origins {
        if !is_origin(origin) {
            problems.push(at(
                "frame_origins",
                format!("{origin:?} is not an origin like \"https://shop.example.com\" (no path; http only for localhost)"),
            ));
        }
    }
    problems
}

/// The fraud rules and the webhook host allow-list.
pub(super) fn fraud_and_webhook_problems(parsed: &BrandFile, file: &str) -> Vec<String> {
    let mut problems = Vec::new();
    let at = |key: &str, what: String| format!("{file}: {key}: {what}");
    problems.extend(
        parsed
            .fraud
            .problems()
            .into_iter()
            .map(|p| format!("{file}: {p}")),
    );
    for host in &parsed.webhooks.hosts {
        let name = host.strip_prefix("*.").unwrap_or(host);
        let valid = !name.is_empty()
            && name.len() <= 253
            && name.split('.').all(|label| {
                !label.is_empty()
                    && label.len() <= 63
                    && label
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-')
            });
        if !valid {
            problems.push(at(
                "webhooks.hosts",
                format!(
                    "{host:?} is not a host name like \"hooks.shop.example\" or \"*.shop.example\""
                ),
            ));
        }
    }
    problems
}

/// The upstream order API and the customer directory.
pub(super) fn integration_problems(parsed: &BrandFile, file: &str) -> Vec<String> {
    let mut problems = Vec::new();
    let at = |key: &str, what: String| format!("{file}: {key}: {what}");
    let is_http_url =
        |value: &str| url::Url::parse(value).is_ok_and(|u| matches!(u.scheme(), "http" | "https"));
    if let Some(upstream) = &parsed.upstream {
        if !is_http_url(&upstream.url) {
            problems.push(at(
                "upstream.url",
                format!("{:?} is not an http(s) URL", upstream.url),
            ));
        }
        if upstream.auth_header.is_some() != upstream.auth_secret.is_some() {
            problems.push(at(
                "upstream",
                "set both auth_header and auth_secret, or neither".to_owned(),
            ));
        }
    }
    if let Some(DirectoryConfig::Http {
        url,
        phone_pointer,
        auth_header,
        auth_secret,
        ..
    }) = &parsed.customer_directory
    {
        if !is_http_url(&url.replace("{customer_reference}", "x"))
            || !url.contains("{customer_reference}")
        {
            problems.push(at(
                "customer_directory.url",
                format!("{url:?} must be an http(s) URL containing {{customer_reference}}"),
            ));
        }
        if !phone_pointer.starts_with('/') {
            problems.push(at(
                "customer_directory.phone_pointer",
                format!("{phone_pointer:?} is not a JSON pointer like \"/phone\""),
            ));
        }
        if auth_header.is_some() != auth_secret.is_some() {
            problems.push(at(
                "customer_directory",
                "set both auth_header and auth_secret, or neither".to_owned(),
            ));
        }
    }
    problems
}

/// The theme's colours, radius and font stack (the logo is checked with the assets).
pub(super) fn theme_problems(theme: &Theme, file: &str) -> Vec<String> {
    let mut problems = Vec::new();
    let at = |key: &str, what: String| format!("{file}: {key}: {what}");
    for (key, value) in [
        ("primary", &theme.primary),
        ("on_primary", &theme.on_primary),
        ("background", &theme.background),
        ("surface", &theme.surface),
        ("text", &theme.text),
        ("muted", &theme.muted),
        ("accent", &theme.accent),
        ("error", &theme.error),
    ] {
        if !is_colour(value) {
            problems.push(at(
                &format!("theme.{key}"),
                format!("{value:?} is not a colour (#rgb or #rrggbb)"),
            ));
        }
    }
    problems.extend(contrast_problems(theme, file));
    if !is_radius(&theme.radius) {
        problems.push(at(
            "theme.radius",
            format!(
                "{:?} is not a length like \"8px\" or \"0.5rem\"",
                theme.radius
            ),
        ));
    }
    if !is_font_stack(&theme.font) {
        problems.push(at(
            "theme.font",
            "must be a font stack of names, quotes, commas and spaces".to_owned(),
        ));
    }

    problems
}

/// The text/background pairs the pages draw, each held to WCAG 2.1 AA's 4.5:1 for text
/// (success criterion 1.4.3): body text and secondary text on the card and the page, button
/// labels on the primary colour, headings and links in the primary colour, errors on the card.
const TEXT_PAIRS: [(&str, &str); 8] = [
    ("text", "surface"),
    ("text", "background"),
    ("muted", "surface"),
    ("muted", "background"),
    ("on_primary", "primary"),
    ("primary", "surface"),
    ("primary", "background"),
    ("error", "surface"),
];

/// Every text/background pair of the theme under 4.5:1, with its ratio.
fn contrast_problems(theme: &Theme, file: &str) -> Vec<String> {
    let colour = |key: &str| match key {
        "primary" => &theme.primary,
        "on_primary" => &theme.on_primary,
        "background" => &theme.background,
        "surface" => &theme.surface,
        "text" => &theme.text,
        "muted" => &theme.muted,
        _ => &theme.error,
    };
    TEXT_PAIRS
        .iter()
        .filter_map(|(text, on)| {
            let ratio = contrast_ratio(colour(text), colour(on))?;
            (ratio < 4.5).then(|| {
                format!(
                    "{file}: theme.{text}: {} on theme.{on} {} has a contrast of {ratio:.2}:1, under WCAG AA's 4.5:1 for text",
                    colour(text),
                    colour(on)
                )
            })
        })
        .collect()
}

/// WCAG 2.1's contrast ratio of two `#rgb` / `#rrggbb` colours; `None` if one is malformed
/// (reported by the colour check).
pub(super) fn contrast_ratio(a: &str, b: &str) -> Option<f64> {
    let (a, b) = (relative_luminance(a)?, relative_luminance(b)?);
    Some((a.max(b) + 0.05) / (a.min(b) + 0.05))
}

/// <https://www.w3.org/TR/WCAG21/#dfn-relative-luminance>
fn relative_luminance(colour: &str) -> Option<f64> {
    let hex = colour.strip_prefix('#')?;
    let hex: String = match hex.len() {
        3 => hex.chars().flat_map(|c| [c, c]).collect(),
        6 => hex.to_owned(),
        _ => return None,
    };
    let channel = |at: usize| -> Option<f64> {
        let value = f64::from(u8::from_str_radix(hex.get(at..at + 2)?, 16).ok()?) / 255.0;
        Some(if value <= 0.03928 {
            value / 12.92
        } else {
            ((value + 0.055) / 1.055).powf(2.4)
        })
    };
    Some(0.2126 * channel(0)? + 0.7152 * channel(2)? + 0.0722 * channel(4)?)
}

/// The API keys: each hash must be `sha256:` and 64 hex digits.
pub(super) fn api_keys(
    keys: &[super::load::ApiKeyFile],
    file: &str,
) -> Result<Vec<ApiKeyEntry>, Vec<String>> {
    let mut problems = Vec::new();
    let at = |key: &str, what: String| format!("{file}: {key}: {what}");
    let mut api_keys = Vec::new();
    for key in keys {
        match key
            .hash
            .strip_prefix("sha256:")
            .and_then(|h| hex::decode(h).ok())
        {
            Some(bytes) if bytes.len() == 32 => {
                let mut digest = [0u8; 32];
                digest.copy_from_slice(&bytes);
                api_keys.push(ApiKeyEntry {
                    digest,
                    label: key.id.clone(),
                    dev_only: key.dev_only,
                });
            }
            _ => problems.push(at(
                "api_keys",
                format!("{}: hash must be sha256:<64 hex digits>", key.id),
            )),
        }
    }

    if problems.is_empty() {
        Ok(api_keys)
    } else {
        Err(problems)
    }
}
