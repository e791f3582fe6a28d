//! orderguard: a checkout 2FA gate for telecom e-shops.
//!
//! The binary is a thin wrapper around [`cli`]; [`startup::Application`] builds and runs the
//! service from [`settings::Settings`].

pub mod approval;
pub mod backoff;
pub mod bench;
pub mod brands;
pub mod cli;
pub mod clock;
pub mod directory;
pub mod domain;
pub mod events;
pub mod fraud;
pub mod gate;
pub mod http;
pub mod keys;
pub mod metrics;
pub mod privacy;
pub mod pseudonym;
pub mod settings;
pub mod signature;
pub mod sms;
pub mod startup;
pub mod store;
pub mod supervisor;
pub mod sweeper;
pub mod telemetry;
pub mod verifier;
pub mod widget;

/// Deep-merges `overlay` into `base`: tables key by key, everything else replaced.
/// Shared by configuration layering and brand inheritance.
pub(crate) fn toml_merge(base: &mut toml::Value, overlay: toml::Value) {
    match (base, overlay) {
        (toml::Value::Table(base), toml::Value::Table(overlay)) => {
            for (key, value) in overlay {
                match base.get_mut(&key) {
                    Some(existing) => toml_merge(existing, value),
                    None => {
                        base.insert(key, value);
                    }
                }
            }
        }
        (base, overlay) => *base = overlay,
    }
}
