//! The HTTP scenarios: virtual buyers go through the same dependent flow a real buyer does —
//! the shop starts a verification (or holds an order), the buyer waits for the SMS, reads the
//! code and types it.
//!
//! Closed model: a fixed number of buyers, each starting its next flow when the last ends.
//! Open model: flows start at a fixed rate whatever the service does, and the first call's
//! latency counts from the intended start, so a stalled server cannot hide its queue.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::ensure;
use clap::{Args, ValueEnum};
use serde::Serialize;
use serde_json::{Value, json};

use super::load_report::usage;
pub use super::load_report::{LoadReport, PumpReport, ServiceUsage};
use super::sink::{SmsSink, Upstream};
use super::stats::{Recorder, sample};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Model {
    /// A fixed number of concurrent buyers.
    Closed,
    /// A fixed arrival rate of flows.
    Open,
}

/// Which flow the buyers go through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Flow {
    /// start → SMS → check: every flow approved.
    Verify,
    /// hold an order → SMS → check; every order forwarded to the tool's upstream.
    Gate,
    /// A share of wrong codes, resends, aborts and abandoned (expiring) verifications.
    Mixed,
    /// Verify flows of normal buyers beside SMS pumping: starts to one prefix at
    /// `--pump-rate`, never checking a code.
    Attack,
}

#[derive(Debug, Clone, Args)]
pub struct LoadOptions {
    /// The service's base URL; loopback only.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    pub target: String,
    /// An API key of the brand to use (its limits must allow the scenario: mixed needs
    /// resend_cooldown_seconds = 0).
    #[arg(long)]
    pub key: String,
    /// Where the tool's SMS sink listens. Point the service's http SMS provider at
    /// `http://<this>/sms`.
    #[arg(long, default_value = "127.0.0.1:9100")]
    pub sms_sink: String,
    /// Gate: where the tool's upstream order API listens (the brand's `[upstream] url` is
    /// `http://<this>/orders`).
    #[arg(long, default_value = "127.0.0.1:9101")]
    pub upstream: String,
    #[arg(long, value_enum, default_value = "closed")]
    pub model: Model,
    /// Closed model: concurrent buyers (1 to 1024).
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
    /// Open model: flows started per second (0.1 to 20,000).
    #[arg(long, default_value_t = 600.0)]
    pub rate: f64,
    /// How long to start flows, in seconds (1 to 600).
    #[arg(long, default_value_t = 20)]
    pub duration: u64,
    /// Start at most this many flows (0 = as many as the duration allows).
    #[arg(long, default_value_t = 0)]
    pub flows: u64,
    /// Generated numbers start with this (each flow gets its own number).
    #[arg(long, default_value = "+49151")]
    pub phone_prefix: String,
    /// The service's process id, for its CPU time and peak memory.
    #[arg(long)]
    pub pid: Option<u32>,
    /// Mixed: after the run, wait this many seconds and check that abandoned verifications
    /// expired (their TTL must be shorter). 0 skips the check.
    #[arg(long, default_value_t = 0)]
    pub expiry_wait: u64,
    /// Attack: pumping starts per second beside the normal buyers (0 to 20,000).
    #[arg(long, default_value_t = 200.0)]
    pub pump_rate: f64,
    /// Attack: the prefix the pumper walks (its numbers never confirm).
    #[arg(long, default_value = "+49159")]
    pub pump_prefix: String,
    /// Attack: instead of `--pump-rate`, this many pumpers each starting again as soon as
    /// the last start was answered (closed model): the service saturated with pumping, so
    /// that a start's cost is measured as a served flow's is.
    #[arg(long, default_value_t = 0)]
    pub pump_concurrency: u64,
    /// Attack: the pumper's numbers spread over the prefix as buyers' are, not a walk: against
    /// a brand whose rules let them through, what a served start costs beside a refused one.
    #[arg(long)]
    pub pump_spread: bool,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// Row names are few and static per run; leaking them keeps `Report` simple.
pub(super) fn leak(name: String) -> &'static str {
    Box::leak(name.into_boxed_str())
}

/// The paths of the mixed scenario, chosen by flow number: 60 % straight, 15 % a wrong code
/// first, 10 % a resend, 10 % aborted, 5 % abandoned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Path {
    Straight,
    WrongFirst,
    Resend,
    Abort,
    Abandon,
}

impl Path {
    fn of(scenario: Flow, n: u64) -> Self {
        if scenario != Flow::Mixed {
            return Self::Straight;
        }
        match n % 20 {
            0..=11 => Self::Straight,
            12..=14 => Self::WrongFirst,
            15 | 16 => Self::Resend,
            17 | 18 => Self::Abort,
            _ => Self::Abandon,
        }
    }
}

struct Context {
    scenario: Flow,
    target: String,
    key: String,
    phone_prefix: String,
    client: reqwest::Client,
    sink: SmsSink,
    recorder: Recorder,
    outcomes: std::sync::Mutex<BTreeMap<String, u64>>,
    abandoned: std::sync::Mutex<Vec<String>>,
    completed: AtomicU64,
    /// This run's id, in its order references.
    run: String,
}

/// Why a flow did not complete as intended.
type FlowError = String;

impl Context {
    fn outcome(&self, path: &str) {
        *self
            .outcomes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(path.to_owned())
            .or_default() += 1;
    }

    /// One call: the answer's status and JSON, its latency recorded (from `since`).
    async fn call(
        &self,
        name: &'static str,
        path: &str,
        body: Value,
        since: Instant,
    ) -> Result<(u16, Value), FlowError> {
        let response = self
            .client
            .post(format!("{}{path}", self.target))
            .bearer_auth(&self.key)
            .json(&body)
            .send()
            .await
            .map_err(|e| {
                if e.is_timeout() {
                    "timeout".to_owned()
                } else {
                    "transport".to_owned()
                }
            })?;
        let status = response.status().as_u16();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        self.recorder.record(name, since.elapsed());
        Ok((status, body))
    }

    async fn expect(
        &self,
        name: &'static str,
        path: &str,
        body: Value,
        since: Instant,
        status: u16,
    ) -> Result<Value, FlowError> {
        let (got, answer) = self.call(name, path, body, since).await?;
        if got == status {
            return Ok(answer);
        }
        let kind = answer["type"]
            .as_str()
            .map_or("", |t| t.rsplit(':').next().unwrap_or(t))
            .to_owned();
        Err(format!("{name}: {got} {kind}"))
    }

    async fn wait_for_code(
        &self,
        sms: tokio::sync::oneshot::Receiver<String>,
    ) -> Result<String, FlowError> {
        match tokio::time::timeout(Duration::from_secs(10), sms).await {
            Ok(Ok(code)) => Ok(code),
            _ => Err("no SMS within 10 s".to_owned()),
        }
    }

    /// One buyer's flow number `n`; `intended` is when it was meant to start.
    async fn flow(&self, n: u64, intended: Instant) -> Result<(), FlowError> {
        let path = Path::of(self.scenario, n);
        let phone = format!("{}{:08}", self.phone_prefix, spread(n));
        let sms = self.sink.expect(&phone);
        // Unique across runs too: a shop never reuses an order reference, and the fraud rules
        // limit starts per reference.
        let reference = format!("B-{}-{n}", self.run);
        // The buyer's address, as a shop passes it: the IP and range limits and the range
        // guard run (and cost) as they do for a real shop.
        let ip = buyer_ip(n);
        let verification = match self.scenario {
            Flow::Gate => {
                let body = json!({"payload": {"sku": "SIM-1", "flow": n}, "order_reference": reference,
                                  "amount": "9.90", "currency": "EUR", "phone": phone, "client_ip": ip});
                let order = self
                    .expect("hold_order", "/v1/orders", body, intended, 202)
                    .await?;
                order["verification_id"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned()
            }
            _ => {
                let body = json!({"phone": phone, "order_reference": reference, "amount": "9.90",
                                  "currency": "EUR", "client_ip": ip});
                let started = self
                    .expect("start", "/v1/verifications", body, intended, 201)
                    .await?;
                started["id"].as_str().unwrap_or_default().to_owned()
            }
        };
        let code = self.wait_for_code(sms).await?;
        let base = format!("/v1/verifications/{verification}");
        let check = |code: String| {
            let path = format!("{base}/check");
            async move {
                self.expect("check", &path, json!({"code": code}), Instant::now(), 200)
                    .await
            }
        };
        let name = match path {
            Path::Straight => {
                check(code).await?;
                "approved"
            }
            Path::WrongFirst => {
                let wrong = if code.starts_with('0') {
                    code.replacen('0', "1", 1)
                } else {
                    format!("0{}", &code[1..])
                };
                self.expect(
                    "check",
                    &format!("{base}/check"),
                    json!({"code": wrong}),
                    Instant::now(),
                    422,
                )
                .await?;
                check(code).await?;
                "wrong_then_approved"
            }
            Path::Resend => {
                let again = self.sink.expect(&phone);
                self.expect(
                    "resend",
                    &format!("{base}/resend"),
                    json!({}),
                    Instant::now(),
                    200,
                )
                .await?;
                let code = self.wait_for_code(again).await?;
                check(code).await?;
                "resent_then_approved"
            }
            Path::Abort => {
                self.expect(
                    "cancel",
                    &format!("{base}/cancel"),
                    json!({}),
                    Instant::now(),
                    200,
                )
                .await?;
                "aborted"
            }
            Path::Abandon => {
                self.abandoned
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(verification);
                "abandoned"
            }
        };
        self.recorder.record("flow", intended.elapsed());
        self.outcome(name);
        Ok(())
    }

    async fn run_flow(&self, n: u64, intended: Instant) {
        match self.flow(n, intended).await {
            Ok(()) => {
                self.completed.fetch_add(1, Ordering::Relaxed);
            }
            Err(error) => self.recorder.error(error),
        }
    }
}

fn require_loopback(target: &str) -> anyhow::Result<()> {
    let url = url::Url::parse(target)?;
    let host = url.host_str().unwrap_or_default();
    ensure!(
        matches!(host, "localhost" | "[::1]") || host.starts_with("127."),
        "the load tool only targets loopback; {target} is not"
    );
    Ok(())
}

/// Runs `scenario` with its own SMS sink (and upstream, for gate) bound from the options.
pub async fn run(scenario: Flow, options: LoadOptions) -> anyhow::Result<LoadReport> {
    let sink = SmsSink::bind(&options.sms_sink).await?;
    let upstream = match scenario {
        Flow::Gate => Some(Upstream::bind(&options.upstream).await?),
        _ => None,
    };
    run_with(scenario, options, sink, upstream).await
}

/// Runs `scenario` with a sink (and upstream) the caller bound first, e.g. to point a service
/// at them before it starts.
pub async fn run_with(
    scenario: Flow,
    options: LoadOptions,
    sink: SmsSink,
    upstream: Option<Upstream>,
) -> anyhow::Result<LoadReport> {
    require_loopback(&options.target)?;
    ensure!(
        (1..=600).contains(&options.duration),
        "--duration must be 1 to 600 seconds"
    );
    ensure!(
        (1..=1024).contains(&options.concurrency),
        "--concurrency must be 1 to 1024"
    );
    ensure!(
        (0.1..=20_000.0).contains(&options.rate),
        "--rate must be 0.1 to 20,000 flows/s"
    );
    ensure!(
        scenario != Flow::Gate || upstream.is_some(),
        "gate needs the tool's upstream"
    );
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .pool_max_idle_per_host(options.concurrency.max(64))
        .build()?;
    let context = Arc::new(Context {
        scenario,
        target: options.target.trim_end_matches('/').to_owned(),
        key: options.key.clone(),
        phone_prefix: options.phone_prefix.clone(),
        client,
        sink: sink.clone(),
        recorder: Recorder::default(),
        outcomes: Default::default(),
        abandoned: Default::default(),
        completed: AtomicU64::new(0),
        run: uuid::Uuid::now_v7().simple().to_string()[20..].to_owned(),
    });
    let before = options.pid.and_then(sample);
    let limit = if options.flows == 0 {
        u64::MAX
    } else {
        options.flows
    };
    let started_flows = Arc::new(AtomicU64::new(0));
    let begin = Instant::now();
    let deadline = begin + Duration::from_secs(options.duration);
    let pumping =
        scenario == Flow::Attack && (options.pump_rate > 0.0 || options.pump_concurrency > 0);
    let pumper = pumping.then(|| {
        tokio::spawn(pump(
            context.clone(),
            (options.pump_prefix.clone(), options.pump_spread),
            (options.pump_rate, options.pump_concurrency),
            begin,
            deadline,
        ))
    });
    match options.model {
        Model::Closed => {
            let buyers = (0..options.concurrency).map(|_| {
                let (context, started_flows) = (context.clone(), started_flows.clone());
                tokio::spawn(async move {
                    while Instant::now() < deadline {
                        let n = started_flows.fetch_add(1, Ordering::Relaxed);
                        if n >= limit {
                            break;
                        }
                        context.run_flow(n, Instant::now()).await;
                    }
                })
            });
            for buyer in futures_util::future::join_all(buyers).await {
                buyer?;
            }
        }
        Model::Open => {
            let interval = Duration::from_secs_f64(1.0 / options.rate);
            let mut flows = Vec::new();
            let mut n = 0u64;
            loop {
                let intended = begin + interval.mul_f64(n as f64);
                if intended >= deadline || n >= limit {
                    break;
                }
                tokio::time::sleep_until(intended.into()).await;
                let context = context.clone();
                started_flows.fetch_add(1, Ordering::Relaxed);
                // Each flow is its own task: a slow answer never delays the next arrival.
                flows.push(tokio::spawn(
                    async move { context.run_flow(n, intended).await },
                ));
                n += 1;
            }
            for flow in futures_util::future::join_all(flows).await {
                flow?;
            }
        }
    }
    let pumping = match pumper {
        Some(pumper) => Some(pumper.await?),
        None => None,
    };
    let seconds = begin.elapsed().as_secs_f64();
    let after = options.pid.and_then(sample);
    let flows_started = started_flows.load(Ordering::Relaxed).min(limit);

    if scenario == Flow::Mixed && options.expiry_wait > 0 {
        tokio::time::sleep(Duration::from_secs(options.expiry_wait)).await;
        let abandoned = context
            .abandoned
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        for id in abandoned {
            let response = context
                .client
                .get(format!("{}/v1/verifications/{id}", context.target))
                .bearer_auth(&context.key)
                .send()
                .await;
            let status = match response {
                Ok(response) => response
                    .json::<Value>()
                    .await
                    .ok()
                    .and_then(|v| v["status"].as_str().map(str::to_owned)),
                Err(_) => None,
            };
            if status.as_deref() == Some("expired") {
                context.outcome("expired");
            } else {
                context.recorder.error(format!(
                    "abandoned verification is {}",
                    status.unwrap_or_else(|| "unreadable".to_owned())
                ));
            }
        }
    }
    let completed = context.completed.load(Ordering::Relaxed);
    let orders_forwarded = match &upstream {
        Some(upstream) => {
            // Forwarding happens after approval: wait (bounded) until every order arrived.
            let until = Instant::now() + Duration::from_secs(30);
            while (upstream.orders() as u64) < completed && Instant::now() < until {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            if (upstream.orders() as u64) < completed {
                context.recorder.error(format!(
                    "{} approved orders not forwarded",
                    completed - upstream.orders() as u64
                ));
            }
            Some(upstream.orders() as u64)
        }
        None => None,
    };
    let service = match (before, after) {
        (Some(before), Some(after)) => Some(usage(before, after, seconds)),
        _ => None,
    };
    let outcomes = context
        .outcomes
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    Ok(LoadReport {
        scenario,
        model: options.model,
        concurrency: (options.model == Model::Closed).then_some(options.concurrency),
        rate: (options.model == Model::Open).then_some(options.rate),
        seconds,
        flows_started,
        flows_completed: completed,
        flows_per_second: completed as f64 / seconds,
        outcomes,
        calls: context.recorder.latencies(),
        errors: context.recorder.errors(),
        sms_received: sink.received.load(Ordering::Relaxed),
        orders_forwarded,
        pumping: pumping.map(|mut pump| {
            pump.sent_share = pump.sent as f64 / pump.starts.max(1) as f64;
            pump.refused_per_second = pump.refused as f64 / seconds;
            pump
        }),
        service,
    })
}

/// Buyer `n`'s number in its prefix: distinct for 10^8 buyers and spread over the prefix as
/// real buyers' numbers are (golden-ratio steps: no two of the next hundred buyers within
/// 10,000 of each other), never a walk through the range as the pumper's are.
fn spread(n: u64) -> u64 {
    n.wrapping_mul(61_803_399) % 100_000_000
}

/// Buyer `n`'s address, as many buyers' are: spread over the /24 ranges of 100.0.0.0 to
/// 223.255.255.255, consecutive buyers far apart, two buyers in one range rarely.
fn buyer_ip(n: u64) -> String {
    let range = n.wrapping_mul(2_654_435_761) % (1 << 24);
    let host = 1 + (n >> 24) % 250;
    format!(
        "{}.{}.{}.{host}",
        100 + (range >> 16) % 124,
        (range >> 8) % 256,
        range % 256
    )
}

/// The pumper: starts to `prefix` until `deadline`, never checking a code. Open model at
/// `rate` (a slow answer never delays the next start), or closed with `concurrency` pumpers
/// (each starts again once answered). Its numbers walk the range, or are spread over it.
async fn pump(
    context: Arc<Context>,
    (prefix, spread_out): (String, bool),
    (rate, concurrency): (f64, u64),
    begin: Instant,
    deadline: Instant,
) -> PumpReport {
    let started = Arc::new(AtomicU64::new(0));
    let start = move |context: Arc<Context>, prefix: Arc<str>, n: u64, intended: Instant| async move {
        // A walk through the range, number after number, unless spread out.
        let number = if spread_out {
            spread(n)
        } else {
            n % 100_000_000
        };
        let phone = format!("{prefix}{number:08}");
        let body = json!({"phone": phone, "order_reference": format!("P-{}-{n}", context.run),
                          "amount": "9.90", "currency": "EUR"});
        context
            .call("pump_start", "/v1/verifications", body, intended)
            .await
            .map(|(status, _)| status)
    };
    let prefix: Arc<str> = prefix.into();
    let mut tasks = Vec::new();
    if concurrency > 0 {
        for _ in 0..concurrency {
            let (context, prefix, started) = (context.clone(), prefix.clone(), started.clone());
            tasks.push(tokio::spawn(async move {
                let mut answers = Vec::new();
                while Instant::now() < deadline {
                    let n = started.fetch_add(1, Ordering::Relaxed);
                    answers.push(start(context.clone(), prefix.clone(), n, Instant::now()).await);
                }
                answers
            }));
        }
    } else {
        let interval = Duration::from_secs_f64(1.0 / rate.clamp(0.1, 20_000.0));
        for n in 0.. {
            let intended = begin + interval.mul_f64(n as f64);
            if intended >= deadline {
                break;
            }
            tokio::time::sleep_until(intended.into()).await;
            let answer = start(context.clone(), prefix.clone(), n, intended);
            tasks.push(tokio::spawn(async move { vec![answer.await] }));
        }
    }
    let mut report = PumpReport::default();
    for task in futures_util::future::join_all(tasks).await {
        let Ok(answers) = task else {
            report.errors += 1;
            continue;
        };
        for answer in answers {
            report.starts += 1;
            match answer {
                Ok(201) => report.sent += 1,
                Ok(403 | 429) => report.refused += 1,
                Ok(status) => {
                    report.errors += 1;
                    context.recorder.error(format!("pump_start: {status}"));
                }
                Err(error) => {
                    report.errors += 1;
                    context.recorder.error(format!("pump_start: {error}"));
                }
            }
        }
    }
    report
}

#[cfg(test)]
mod tests {
    use super::spread;

    #[test]
    fn buyers_numbers_are_distinct_and_never_close() {
        let numbers: Vec<u64> = (0..20_000).map(spread).collect();
        let mut sorted = numbers.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), numbers.len(), "distinct");
        for window in numbers.windows(100) {
            for (i, a) in window.iter().enumerate() {
                for b in &window[i + 1..] {
                    assert!(a.abs_diff(*b) > 10_000, "{a} and {b}");
                }
            }
        }
    }
}
