//! What a brand folder may contain: the keys of `brand.toml`, and helpers over TOML tables.

use std::collections::BTreeSet;

/// Every key `brand.toml` accepts, as dotted paths; `api_keys[]` entries are tables.
const BRAND_KEYS: &[&str] = &[
    "display_name",
    "sms_sender",
    "allowed_countries",
    "default_country",
    "frame_origins",
    "default_locale",
    "locales",
    "theme",
    "theme.primary",
    "theme.on_primary",
    "theme.background",
    "theme.surface",
    "theme.text",
    "theme.muted",
    "theme.accent",
    "theme.error",
    "theme.font",
    "theme.radius",
    "theme.logo",
    "limits",
    "limits.code_length",
    "limits.ttl_seconds",
    "limits.max_checks",
    "limits.max_sends",
    "limits.resend_cooldown_seconds",
    "sms",
    "sms.max_segments",
    "upstream",
    "upstream.url",
    "upstream.auth_header",
    "upstream.auth_secret",
    "upstream.timeout_ms",
    "customer_directory",
    "customer_directory.kind",
    "customer_directory.url",
    "customer_directory.phone_pointer",
    "customer_directory.timeout_ms",
    "customer_directory.auth_header",
    "customer_directory.auth_secret",
    "webhooks",
    "webhooks.secret",
    "webhooks.hosts",
    "fraud",
    "fraud.allow_numbers",
    "fraud.allow_prefixes",
    "fraud.deny_prefixes",
    "fraud.known_good_days",
    "fraud.rate_limits",
    "fraud.rate_limits.mode",
    "fraud.rate_limits.phone",
    "fraud.rate_limits.customer",
    "fraud.rate_limits.ip",
    "fraud.rate_limits.ip_range",
    "fraud.rate_limits.order_reference",
    "fraud.rate_limits.brand",
    "fraud.pumping",
    "fraud.pumping.mode",
    "fraud.pumping.window_seconds",
    "fraud.pumping.min_starts",
    "fraud.pumping.min_approval_ratio",
    "fraud.pumping.cooldown_seconds",
    "fraud.pumping.max_cooldown_seconds",
    "fraud.pumping.brand_min_starts",
    "fraud.pumping.brand_min_approval_ratio",
    "fraud.pumping.new_prefix_budget",
    "fraud.pumping.new_prefix_min_approvals",
    "fraud.pumping.new_prefix_recent_approvals",
    "fraud.pumping.range_min_starts",
    "fraud.sim_swap",
    "fraud.sim_swap.base_url",
    "fraud.sim_swap.token_secret",
    "fraud.sim_swap.token_url",
    "fraud.sim_swap.client_id",
    "fraud.sim_swap.client_secret",
    "fraud.sim_swap.max_age_hours",
    "fraud.sim_swap.on_swap",
    "fraud.sim_swap.on_error",
    "fraud.sim_swap.timeout_ms",
    "fraud.sim_swap.mode",
    "api_keys",
    "api_keys[].id",
    "api_keys[].hash",
    "api_keys[].dev_only",
];

/// Every key of `table` (dotted, arrays of tables as `name[]`) that `brand.toml` does not know.
pub fn unknown_brand_keys(table: &toml::Table) -> Vec<String> {
    let mut unknown = Vec::new();
    walk(table, "", &mut |path| {
        let schema_path = path.to_owned();
        if !BRAND_KEYS.contains(&schema_path.as_str()) {
            unknown.push(path.replace("[]", ""));
            false
        } else {
            true
        }
    });
    unknown
}

/// Visits every key path; `visit` returns whether to descend into a table value.
fn walk(table: &toml::Table, prefix: &str, visit: &mut dyn FnMut(&str) -> bool) {
    for (key, value) in table {
        let path = if prefix.is_empty() {
            key.clone()
        } else {
            format!("{prefix}.{key}")
        };
        if !visit(&path) {
            continue;
        }
        match value {
            toml::Value::Table(inner) => walk(inner, &path, visit),
            toml::Value::Array(items) => {
                for item in items {
                    if let toml::Value::Table(inner) = item {
                        walk(inner, &format!("{path}[]"), visit);
                    }
                }
            }
            _ => {}
        }
    }
}

/// The dotted paths of every string leaf of a locale table.
pub fn locale_keys(table: &toml::Table) -> BTreeSet<String> {
    let mut keys = BTreeSet::new();
    fn collect(table: &toml::Table, prefix: &str, keys: &mut BTreeSet<String>) {
        for (key, value) in table {
            let path = if prefix.is_empty() {
                key.clone()
            } else {
                format!("{prefix}.{key}")
            };
            match value {
                toml::Value::Table(inner) => collect(inner, &path, keys),
                _ => {
                    keys.insert(path);
                }
            }
        }
    }
    collect(table, "", &mut keys);
    keys
}

/// The value at a dotted path of a locale table.
pub fn lookup<'a>(table: &'a toml::Table, path: &str) -> Option<&'a toml::Value> {
    let mut parts = path.split('.');
    let mut value = table.get(parts.next()?)?;
    for part in parts {
        value = value.as_table()?.get(part)?;
    }
    Some(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_keys_are_named_with_their_path() {
        let table: toml::Table = toml::from_str(
            "display_name = \"x\"\ncolour = 1\n[theme]\nprimary = \"#fff\"\nshade = 2\n[[api_keys]]\nid = \"a\"\nsecret = \"b\"\n",
        )
        .expect("toml");
        assert_eq!(
            unknown_brand_keys(&table),
            vec!["api_keys.secret", "colour", "theme.shade"]
        );
    }

    #[test]
    fn locale_keys_are_dotted_leaves() {
        let table: toml::Table =
            toml::from_str("[page]\ntitle = \"a\"\n[sms]\ntext = \"b\"\n").expect("toml");
        let keys: Vec<String> = locale_keys(&table).into_iter().collect();
        assert_eq!(keys, vec!["page.title", "sms.text"]);
        assert_eq!(
            lookup(&table, "sms.text").and_then(|v| v.as_str()),
            Some("b")
        );
    }
}
