//! The environment overlay: `ORDERGUARD_A__B=value` sets `a.b`, read as TOML unless the
//! setting is a string.

use anyhow::{Context, bail};

/// Whether `name` (after `ORDERGUARD_`) is one of the variables Kubernetes injects into every
/// pod for a Service named `orderguard`: `SERVICE_HOST`, `SERVICE_PORT`, `SERVICE_PORT_<port
/// name>`, `PORT`, `PORT_<n>_<TCP|UDP|SCTP>` and that with `_PROTO`, `_PORT` or `_ADDR`. Such a
/// variable is ignored, not refused, so the service starts in its own chart even where service
/// links are on; anything else unknown is still a typo and refused.
pub(super) fn is_service_link(name: &str) -> bool {
    if name.contains("__") {
        return false;
    }
    if let Some(rest) = name.strip_prefix("SERVICE_") {
        return rest == "HOST"
            || rest == "PORT"
            || rest.strip_prefix("PORT_").is_some_and(|port_name| {
                !port_name.is_empty()
                    && port_name
                        .bytes()
                        .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
            });
    }
    let Some(rest) = name.strip_prefix("PORT") else {
        return false;
    };
    if rest.is_empty() {
        return true;
    }
    let mut parts = rest.split('_');
    let (Some(""), Some(number), Some(protocol)) = (parts.next(), parts.next(), parts.next())
    else {
        return false;
    };
    let field = parts.next();
    !number.is_empty()
        && number.bytes().all(|b| b.is_ascii_digit())
        && matches!(protocol, "TCP" | "UDP" | "SCTP")
        && matches!(field, None | Some("PROTO" | "PORT" | "ADDR"))
        && parts.next().is_none()
}

pub(super) fn lookup<'a>(tree: &'a toml::Value, path: &[String]) -> Option<&'a toml::Value> {
    path.iter()
        .try_fold(tree, |node, key| node.get(key.as_str()))
}

/// Reads an environment value as TOML unless the setting is a string.
pub(super) fn env_value(raw: &str, default: Option<&toml::Value>) -> toml::Value {
    let parsed = toml::from_str::<toml::Table>(&format!("v = {raw}"))
        .ok()
        .and_then(|mut table| table.remove("v"));
    match (default, parsed) {
        (Some(toml::Value::String(_)), _) | (_, None) => toml::Value::String(raw.to_owned()),
        (Some(_), Some(value)) => value,
        // Unknown type (optional or list settings): structured values and quoted strings are
        // taken as TOML; bare words stay strings.
        (None, Some(value)) => value,
    }
}

/// Sets `path` in `tree`, creating tables, and indexing arrays with numeric segments.
pub(super) fn set_path(
    tree: &mut toml::Value,
    path: &[String],
    value: toml::Value,
) -> anyhow::Result<()> {
    let Some((last, parents)) = path.split_last() else {
        bail!("empty setting name");
    };
    let mut node = tree;
    for key in parents {
        node = child(node, key)?;
    }
    match node {
        toml::Value::Table(table) => {
            table.insert(last.clone(), value);
        }
        toml::Value::Array(items) => {
            let index = array_index(items, last)?;
            if index == items.len() {
                items.push(value);
            } else {
                items[index] = value;
            }
        }
        _ => bail!("{last} is not inside a table or list"),
    }
    Ok(())
}

pub(super) fn child<'a>(
    node: &'a mut toml::Value,
    key: &str,
) -> anyhow::Result<&'a mut toml::Value> {
    match node {
        toml::Value::Table(table) => Ok(table
            .entry(key.to_owned())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()))),
        toml::Value::Array(items) => {
            let index = array_index(items, key)?;
            if index == items.len() {
                items.push(toml::Value::Table(toml::Table::new()));
            }
            Ok(&mut items[index])
        }
        _ => bail!("{key}: the setting above it is not a table or list"),
    }
}

pub(super) fn array_index(items: &[toml::Value], key: &str) -> anyhow::Result<usize> {
    let index: usize = key
        .parse()
        .with_context(|| format!("{key} is not a list index"))?;
    if index > items.len() {
        bail!(
            "list index {index} skips entries (the list has {})",
            items.len()
        );
    }
    Ok(index)
}
