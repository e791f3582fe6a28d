//! Building and running the application.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use secrecy::ExposeSecret;
use tokio::net::TcpListener;

use crate::approval::ApprovalSigner;
use crate::brands::BrandRegistry;
use crate::domain::CodeHasher;
use crate::events::clickhouse::ClickHouseSink;
use crate::events::jsonl::JsonLinesSink;
use crate::events::relay::{EventSink, Relay, RelaySettings};
use crate::events::{EventFactory, Pseudonymizer};
use crate::gate::forwarder::Forwarder;
use crate::gate::webhooks::WebhookSender;
use crate::http::{AppState, HttpLimits};
use crate::metrics::Metrics;
use crate::settings::{Mode, ProviderSettings, Settings};
use crate::sms::{DevInbox, ProviderContext, ReceiptRoutes, SmsSender};
use crate::store::{SqlStore, Store};
use crate::verifier::Verifier;

/// A built application: listener bound, database migrated, brands loaded.
pub struct Application {
    listener: TcpListener,
    port: u16,
    /// `http.admin_port`'s listener, when set.
    admin: Option<(TcpListener, u16)>,
    state: AppState,
    limits: HttpLimits,
    sweep_interval: Duration,
    brands_reload: Duration,
    relay: Arc<Relay>,
    forwarder: Arc<Forwarder>,
    webhooks: Arc<WebhookSender>,
}

/// The event sink the settings ask for: ClickHouse when `clickhouse.url` is set (its
/// migrations tried now; if ClickHouse is down they are retried before the first insert),
/// else the JSON-lines file.
pub async fn event_sink(settings: &Settings) -> anyhow::Result<Arc<dyn EventSink>> {
    let Some(url) = &settings.clickhouse.url else {
        return Ok(Arc::new(JsonLinesSink::new(
            settings.jsonl_path(),
            settings.events.jsonl_rotate_bytes,
        )?));
    };
    let sink = ClickHouseSink::new(url, &settings.clickhouse);
    if let Err(error) = sink.ensure_migrated().await {
        tracing::warn!(error = %format!("{error:#}"), "ClickHouse is not ready; events wait in the outbox");
    }
    Ok(Arc::new(sink))
}

/// The relay's batching and retry settings.
pub fn relay_settings(settings: &Settings) -> RelaySettings {
    let events = &settings.events;
    RelaySettings {
        batch_rows: events.batch_rows,
        batch_bytes: events.batch_bytes,
        period: events.period(),
        lease: events.lease(),
        retry_initial: events.retry_initial(),
        retry_max: events.retry_max(),
    }
}

/// Connects to the configured database and applies its migrations.
pub async fn connect_store(settings: &Settings) -> anyhow::Result<SqlStore> {
    let store =
        SqlStore::connect(&settings.database_url(), settings.database.max_connections).await?;
    store.migrate().await?;
    Ok(store)
}

impl Application {
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        settings.validate()?;
        settings.check_production()?;
        let dev = settings.mode == Mode::Dev;
        let code_key = crate::keys::code_key(&settings)?;
        let brands = BrandRegistry::load(&settings.brands_dir, dev)?;
        let store: Arc<dyn Store> = Arc::new(connect_store(&settings).await?);
        let metrics = Arc::new(Metrics::new()?);
        let inbox = dev.then(|| Arc::new(DevInbox::default()));
        let providers = if settings.sms.providers.is_empty() && dev {
            vec![ProviderSettings::Log {
                name: "log".to_owned(),
            }]
        } else {
            settings.sms.providers.clone()
        };

        let address = settings.bind_address()?;
        let listener = TcpListener::bind(address)
            .await
            .with_context(|| format!("binding {address}"))?;
        let port = listener.local_addr()?.port();
        let admin = match settings.http.admin_port {
            Some(admin_port) => {
                let address = std::net::SocketAddr::new(address.ip(), admin_port);
                let listener = TcpListener::bind(address)
                    .await
                    .with_context(|| format!("binding the admin listener {address}"))?;
                let port = listener.local_addr()?.port();
                Some((listener, port))
            }
            None => None,
        };
        let public_url = settings.public_url(port);
        let otp_host = otp_host(&public_url)?;
        let (receipts_in, receipts_out) = tokio::sync::mpsc::unbounded_channel();
        let sms = Arc::new(SmsSender::from_settings(
            &providers,
            &ProviderContext {
                inbox: inbox.clone(),
                public_url: public_url.clone(),
                receipts: receipts_in,
            },
            metrics.clone(),
        )?);
        let brand_ids: Vec<String> = brands.all().iter().map(|b| b.id.to_string()).collect();
        metrics.declare(
            &brand_ids.iter().map(String::as_str).collect::<Vec<_>>(),
            &sms.provider_names(),
        );
        let receipts = Arc::new(ReceiptRoutes::from_settings(
            &providers,
            settings.sms.receipt_secret.as_ref(),
            &public_url,
        ));

        let instance = settings.instance();
        let pepper = crate::keys::event_pepper(&settings)?;
        let prefixes = crate::events::PrefixScheme {
            national_digits: usize::from(settings.prefix.national_digits),
            by_country: settings
                .prefix
                .by_country
                .iter()
                .map(|(country, digits)| (country.clone(), usize::from(*digits)))
                .collect(),
        };
        let events = EventFactory::new(Pseudonymizer::new(&pepper), prefixes, instance.clone());
        let secrets: crate::directory::BrandSecrets = Arc::new(settings.brand_secrets.clone());
        let directory = Arc::new(crate::directory::Directory::new(secrets.clone())?);
        let wake = Arc::new(tokio::sync::Notify::new());
        let clock = Arc::new(crate::clock::Clock::with_offset(
            settings.testing.clock_offset_ms,
        ));
        let fraud = Arc::new(crate::fraud::Fraud::new(
            store.clone(),
            crate::fraud::sim_swap::SimSwapClient::new(secrets.clone())?,
            metrics.clone(),
            events.clone(),
            clock.clone(),
        ));
        let verifier = Arc::new(Verifier::new(crate::verifier::VerifierDeps {
            store: store.clone(),
            sms: sms.clone(),
            hasher: CodeHasher::new(&code_key),
            events: events.clone(),
            metrics: metrics.clone(),
            otp_host,
            directory,
            on_approval: wake.clone(),
            fraud: fraud.clone(),
        }));
        tokio::spawn(verifier.clone().apply_smpp_receipts(receipts_out));
        let approval = Arc::new(ApprovalSigner::new(
            crate::keys::approval_keys(&settings)?,
            public_url.clone(),
            i64::from(settings.approval.ttl_seconds),
        )?);
        let brands = Arc::new(brands);
        let worker_owner = format!("{instance}:{}", uuid::Uuid::now_v7());
        let http_client = reqwest::Client::builder()
            .build()
            .context("building the HTTP client")?;
        let forwarder = Forwarder {
            store: store.clone(),
            brands: brands.clone(),
            approval: approval.clone(),
            secrets: secrets.clone(),
            events: events.clone(),
            metrics: metrics.clone(),
            settings: settings.gate.clone(),
            owner: worker_owner.clone(),
            wake,
            client: http_client.clone(),
            clock: clock.clone(),
        };
        let webhooks = WebhookSender {
            store: store.clone(),
            brands: brands.clone(),
            secrets,
            metrics: metrics.clone(),
            settings: settings.gate.clone(),
            owner: worker_owner,
            policy: settings.callback_policy(),
            client: settings.callback_policy().client()?,
            clock: clock.clone(),
        };
        let sink = event_sink(&settings).await?;
        let mut peppers = vec![Pseudonymizer::new(&pepper)];
        peppers.extend(
            settings
                .secrets
                .retired_event_peppers
                .iter()
                .map(|retired| Pseudonymizer::new(retired.expose_secret().as_bytes())),
        );
        let privacy = Arc::new(crate::privacy::Privacy {
            store: store.clone(),
            sink: sink.clone(),
            peppers,
            events: events.clone(),
            brands: brands.clone(),
            metrics: metrics.clone(),
            clock: clock.clone(),
            retention: settings.privacy.retention(),
        });
        let relay = Relay::new(
            store.clone(),
            sink,
            metrics.clone(),
            relay_settings(&settings),
            format!("{instance}:{}", uuid::Uuid::now_v7()),
        )
        .with_clock(clock);
        let state = AppState::new(crate::http::Shared {
            verifier,
            store,
            brands,
            metrics,
            inbox,
            receipts,
            sms,
            widget: Arc::new(crate::widget::WidgetSigner::new(&crate::keys::widget_key(
                &settings,
            )?)),
            public_url: public_url.clone(),
            approval,
            hold: crate::gate::hold::HoldPolicy {
                payload_limit_bytes: settings.gate.payload_limit_bytes,
                callbacks: settings.callback_policy(),
            },
            fraud,
            privacy,
            operators: Arc::new(crate::http::Operators::from_settings(&settings.admin)?),
            workers: Arc::new(crate::supervisor::WorkerHealth::default()),
            request_timeout: Duration::from_millis(settings.http.request_timeout_ms),
            trusted_proxies: crate::http::TrustedProxies::parse(&settings.http.trusted_proxies)
                .map_err(anyhow::Error::msg)?,
        });
        let limits = HttpLimits {
            body_limit_bytes: settings.http.body_limit_bytes,
            request_timeout: Duration::from_millis(settings.http.request_timeout_ms),
            max_in_flight: settings.http.max_in_flight,
            hsts: settings.mode == Mode::Production,
            admin_separate: admin.is_some(),
        };
        tracing::info!(%address, port, %public_url, mode = ?settings.mode, backend = state.store.backend().as_str(), "orderguard built");
        Ok(Self {
            listener,
            port,
            admin,
            state,
            limits,
            sweep_interval: Duration::from_millis(settings.sweeper.interval_ms),
            brands_reload: Duration::from_millis(settings.brands_reload_interval_ms),
            forwarder: Arc::new(forwarder),
            webhooks: Arc::new(webhooks),
            relay: Arc::new(relay),
        })
    }

    /// The port actually bound (useful with port 0).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The admin listener's port, when `http.admin_port` is set.
    pub fn admin_port(&self) -> Option<u16> {
        self.admin.as_ref().map(|(_, port)| *port)
    }

    /// The clock the fraud rules read; tests move it forward.
    pub fn fraud_clock(&self) -> Arc<crate::fraud::Clock> {
        self.state.fraud.clock().clone()
    }

    /// Serves until `shutdown` completes, then drains requests and stops the sweeper.
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        // Loaded before `/readyz` says ready, so no buyer's first start pays for it.
        tokio::task::spawn_blocking(crate::domain::phone::load_metadata);
        let mut workers = crate::supervisor::Supervisor::new(
            self.state.workers.clone(),
            self.state.metrics.clone(),
        );
        let (verifier, sweep_interval) = (self.state.verifier.clone(), self.sweep_interval);
        workers.spawn("sweeper", move |stop| {
            Box::pin(crate::sweeper::run(verifier.clone(), sweep_interval, stop))
        });
        let relay = self.relay.clone();
        workers.spawn("relay", move |stop| Box::pin(relay.clone().run(stop)));
        let forwarder = self.forwarder.clone();
        workers.spawn("forwarder", move |stop| {
            Box::pin(forwarder.clone().run(stop))
        });
        let webhooks = self.webhooks.clone();
        workers.spawn("webhooks", move |stop| Box::pin(webhooks.clone().run(stop)));
        let privacy = self.state.privacy.clone();
        workers.spawn("privacy", move |stop| Box::pin(privacy.clone().run(stop)));
        if !self.brands_reload.is_zero() {
            let (brands, metrics, every) = (
                self.state.brands.clone(),
                self.state.metrics.clone(),
                self.brands_reload,
            );
            workers.spawn("brand_watcher", move |stop| {
                Box::pin(crate::brands::watch::run(
                    brands.clone(),
                    metrics.clone(),
                    every,
                    stop,
                ))
            });
        }
        let (stopping_tx, stopping) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            shutdown.await;
            tracing::info!("shutting down: draining requests");
            let _ = stopping_tx.send(true);
        });
        let stopped = |mut stopping: tokio::sync::watch::Receiver<bool>| async move {
            let _ = stopping.wait_for(|stop| *stop).await;
        };
        let admin_server = self.admin.map(|(listener, _)| {
            let router = crate::http::admin_router(self.state.clone(), self.limits);
            tokio::spawn(
                axum::serve(listener, router)
                    .with_graceful_shutdown(stopped(stopping.clone()))
                    .into_future(),
            )
        });
        let router = crate::http::router(self.state, self.limits);
        // The peer address reaches the handlers: the code page counts the buyer's.
        let served = axum::serve(
            self.listener,
            router.into_make_service_with_connect_info::<std::net::SocketAddr>(),
        )
        .with_graceful_shutdown(stopped(stopping))
        .await;
        if let Some(admin_server) = admin_server {
            admin_server
                .await
                .context("admin listener task")?
                .context("serving the admin listener")?;
        }
        // Workers stop after the last request: its events are in the outbox, and the relay
        // ships what it has claimed before stopping (the rest waits for the next start).
        workers.shutdown().await;
        served.context("serving HTTP")
    }
}

/// The host of the public URL, for the WebOTP line.
fn otp_host(public_url: &str) -> anyhow::Result<String> {
    let without_scheme = public_url
        .split_once("://")
        .map_or(public_url, |(_, rest)| rest);
    let authority = without_scheme.split('/').next().unwrap_or_default();
    let host = authority
        .rsplit_once(':')
        .map_or(authority, |(host, _)| host);
    anyhow::ensure!(
        !host.is_empty(),
        "http.public_url {public_url:?} has no host"
    );
    Ok(host.to_owned())
}

/// Completes on SIGTERM or Ctrl-C.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(error) = tokio::signal::ctrl_c().await {
            tracing::error!(%error, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(error) => {
                tracing::error!(%error, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => tracing::info!("Ctrl-C received"),
        () = terminate => tracing::info!("SIGTERM received"),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_otp_host_is_the_public_urls_host_without_port() {
        assert_eq!(
            super::otp_host("https://pay.example.com/base").expect("host"),
            "pay.example.com"
        );
        assert_eq!(
            super::otp_host("http://localhost:8080").expect("host"),
            "localhost"
        );
    }
}
