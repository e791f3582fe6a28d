//! Logging: `tracing` to stdout, pretty in dev and JSON in production.
//! Phone numbers are masked where they are logged, codes never are.

use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

use crate::settings::{LogFormat, Settings};

/// Drops the debug and trace output of libraries that log the data they handle, whatever
/// filter the operator sets: handlebars logs every helper's parameters while rendering (the
/// order reference, the amount, the masked number of each page model).
pub fn pii_guard() -> tracing_subscriber::filter::FilterFn<fn(&tracing::Metadata<'_>) -> bool> {
    fn keep(metadata: &tracing::Metadata<'_>) -> bool {
        !(metadata.target().starts_with("handlebars") && *metadata.level() > tracing::Level::INFO)
    }
    tracing_subscriber::filter::filter_fn(keep)
}

/// Installs the global subscriber. `RUST_LOG` wins over `log.filter`.
pub fn init(settings: &Settings) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&settings.log.filter));
    let registry = tracing_subscriber::registry()
        .with(filter)
        .with(pii_guard());
    let result = match settings.log_format() {
        LogFormat::Json => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_current_span(true),
            )
            .try_init(),
        LogFormat::Pretty => registry
            .with(tracing_subscriber::fmt::layer().compact())
            .try_init(),
    };
    if result.is_err() {
        tracing::debug!("a tracing subscriber was already installed");
    }
}
