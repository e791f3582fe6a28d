//! The store's atomic operations, called directly and in parallel on both backends.

use std::future::Future;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use futures_util::future::join_all;
use orderguard::brands::BrandId;
use orderguard::domain::{
    Limits, Money, NewOrder, NewVerification, OrderId, PhoneNumber, VerificationId, now_millis,
};
use orderguard::store::{
    CheckCount, CheckDecision, CounterHit, FraudStore, IdempotencyClaim, IdempotencyStore,
    OutboxStore, SendReservation, SqlStore, VerificationStore,
};

use crate::both_backends;
use crate::helpers::{Backend, PHONE, fresh_postgres_database};

both_backends!(
    parallel_check_counts_never_exceed_the_limit,
    parallel_resends_reserve_one_send,
    two_sweepers_expire_each_verification_once,
    writes_broken_off_half_way_leave_nothing_behind,
    a_bad_write_among_many_at_once_fails_alone,
    an_idempotency_key_is_held_for_its_lease_then_taken_over_once,
    parallel_counter_hits_each_see_their_own_count,
);

async fn database(backend: Backend, dir: &std::path::Path) -> String {
    match backend {
        Backend::Sqlite => format!("sqlite://{}?mode=rwc", dir.join("store.db").display()),
        Backend::Postgres => fresh_postgres_database().await,
    }
}

async fn open(url: &str) -> Arc<SqlStore> {
    let store = SqlStore::connect(url, 25).await.expect("connect");
    store.migrate().await.expect("migrate");
    Arc::new(store)
}

fn brand() -> BrandId {
    BrandId::parse("nordwind").expect("id")
}

async fn insert(store: &SqlStore, now: i64) -> VerificationId {
    let new = new_verification(now);
    store.insert_verification(&new, &[]).await.expect("insert");
    new.id
}

/// An order held with a stored verification: holding it again breaks its key.
async fn taken_order(store: &SqlStore) -> NewOrder {
    let order = NewOrder {
        id: OrderId::new(),
        payload: "{}".to_owned(),
        callback_url: None,
    };
    let mut first = new_verification(now_millis());
    first.order = Some(order.clone());
    store
        .insert_verification(&first, &[])
        .await
        .expect("the first order");
    order
}

fn new_verification(now: i64) -> NewVerification {
    let id = VerificationId::new();
    NewVerification {
        id,
        brand: brand(),
        phone: PhoneNumber::parse(PHONE, None, &[]).expect("phone"),
        order_reference: "A-1".to_owned(),
        amount: Money::parse("1.00", "EUR").expect("money"),
        locale: None,
        code_hash: vec![1; 32],
        limits: Limits::default(),
        now,
        phone_pseudonym: "p".repeat(32),
        number_prefix: "+49151".to_owned(),
        customer_pseudonym: String::new(),
        ip_pseudonym: String::new(),
        ip_range_pseudonym: String::new(),
        user_agent_family: String::new(),
        order: None,
    }
}

async fn parallel_check_counts_never_exceed_the_limit(backend: Backend) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(&database(backend, dir.path()).await).await;
    let id = insert(&store, now_millis()).await;

    let brand = brand();
    // A decision that never finishes: only the database's limit can stop the counting.
    let undecided = |_: &orderguard::domain::VerificationRecord, _: &[u8]| CheckDecision {
        finish: None,
        events: vec![],
        approval: None,
    };
    let results =
        join_all((0..50).map(|_| store.check_code(&brand, &id, now_millis(), &undecided))).await;
    let counted: Vec<u32> = results
        .into_iter()
        .filter_map(|r| match r.expect("count") {
            CheckCount::Counted(record) => Some(record.checks_used),
            _ => None,
        })
        .collect();
    let mut sorted = counted.clone();
    sorted.sort_unstable();
    assert_eq!(
        sorted,
        vec![1, 2, 3, 4, 5],
        "each of the 5 allowed checks counted once"
    );
    let other = BrandId::parse("otherbrand").expect("id");
    assert!(matches!(
        store
            .check_code(&other, &id, now_millis(), &undecided)
            .await
            .expect("count"),
        CheckCount::NotFound
    ));
}

async fn parallel_resends_reserve_one_send(backend: Backend) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(&database(backend, dir.path()).await).await;
    let start = now_millis() - 31_000;
    let id = insert(&store, start).await;

    let now = now_millis();
    let no_events = |_: &orderguard::domain::VerificationRecord| vec![];
    let brand = brand();
    let results =
        join_all((0..10).map(|_| store.reserve_send(&brand, &id, &[2; 32], 6, now, &no_events)))
            .await;
    let reserved = results
        .into_iter()
        .filter(|r| matches!(r.as_ref().expect("reserve"), SendReservation::Reserved(_)))
        .count();
    assert_eq!(reserved, 1, "the cooldown admits one resend");
}

async fn two_sweepers_expire_each_verification_once(backend: Backend) {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = database(backend, dir.path()).await;
    let (first, second) = (open(&url).await, open(&url).await);
    let long_ago = now_millis() - 600_000;
    for _ in 0..40 {
        insert(&first, long_ago).await;
    }
    let fresh = insert(&first, now_millis()).await;

    let now = now_millis();
    let no_events = |_: &orderguard::domain::VerificationRecord| vec![];
    let (a, b) = tokio::join!(
        async {
            let mut all = Vec::new();
            for _ in 0..4 {
                all.extend(first.expire_due(now, 7, &no_events).await.expect("sweep"));
            }
            all
        },
        async {
            let mut all = Vec::new();
            for _ in 0..4 {
                all.extend(second.expire_due(now, 7, &no_events).await.expect("sweep"));
            }
            all
        },
    );
    let mut rest = first.expire_due(now, 500, &no_events).await.expect("sweep");
    rest.extend(a);
    rest.extend(b);
    let mut ids: Vec<String> = rest.iter().map(|record| record.id.to_string()).collect();
    let total = ids.len();
    ids.sort();
    ids.dedup();
    assert_eq!(
        (total, ids.len()),
        (40, 40),
        "every overdue verification expired exactly once"
    );
    assert!(
        !ids.contains(&fresh.to_string()),
        "an unexpired verification is left alone"
    );
}

/// A write that fails half-way (its second statement breaks a key), or a check whose caller
/// goes away at any point — even while its `BEGIN` is under way — leaves neither the change
/// nor its events, and no transaction open on a connection the next caller gets: that caller's
/// writes would silently never commit.
async fn writes_broken_off_half_way_leave_nothing_behind(backend: Backend) {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = database(backend, dir.path()).await;
    let store = open(&url).await;

    // The order id is taken: the verification row goes in, the held order breaks the key.
    let mut clash = new_verification(now_millis());
    clash.order = Some(taken_order(&store).await);
    let started = crate::events::synthetic_event("verification_started", clash.now);
    store
        .insert_verification(&clash, &[started])
        .await
        .expect_err("a taken order id is refused");
    assert!(
        store
            .find_verification(&clash.id)
            .await
            .expect("find")
            .is_none(),
        "the refused write left its verification behind"
    );
    assert_eq!(
        store.outbox_stats().await.expect("stats").pending,
        0,
        "the refused write left its event behind"
    );

    // Checks whose callers go away part-way: each is polled 1 to 8 times, 30 µs apart, and
    // dropped if it has not finished, until 30 were dropped. A check counts the attempt and
    // writes its event in one transaction. On PostgreSQL a statement already sent still runs
    // to its end on the server, so what was written is counted once all is quiet.
    let brand = brand();
    let checked = |record: &orderguard::domain::VerificationRecord, _: &[u8]| {
        let mut event = crate::events::synthetic_event("code_checked", now_millis());
        event.verification_id = *record.id.as_uuid();
        CheckDecision {
            finish: None,
            events: vec![event],
            approval: None,
        }
    };
    let (mut ids, mut dropped) = (Vec::new(), 0);
    for step in 0..300 {
        let id = insert(&store, now_millis()).await;
        ids.push(id);
        let mut check = std::pin::pin!(store.check_code(&brand, &id, now_millis(), &checked));
        let mut finished = false;
        for _ in 0..=step % 8 {
            let polled = std::future::poll_fn(|cx| Poll::Ready(check.as_mut().poll(cx))).await;
            if let Poll::Ready(result) = polled {
                result.expect("a check that was let finish");
                finished = true;
                break;
            }
            std::thread::sleep(Duration::from_micros(30));
        }
        dropped += usize::from(!finished);
        if dropped == 30 {
            break;
        }
    }
    assert_eq!(dropped, 30, "30 checks were dropped part-way");
    let after = insert(&store, now_millis()).await;
    assert!(
        store
            .find_verification(&after)
            .await
            .expect("find")
            .is_some(),
        "the store works after broken-off checks"
    );
    let mut counts = (0, -1);
    for _ in 0..50 {
        let mut counted = 0;
        for id in &ids {
            let record = store
                .find_verification(id)
                .await
                .expect("find")
                .expect("row");
            counted += i64::from(record.checks_used);
        }
        counts = (counted, store.outbox_stats().await.expect("stats").pending);
        if counts.0 == counts.1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (counted, pending) = counts;
    assert_eq!(
        pending, counted,
        "one event for each check that was counted, none for the others"
    );
}

/// Writes arriving together (committed as groups) each get their own
/// outcome: the one whose held order breaks a key fails, the others are all written.
async fn a_bad_write_among_many_at_once_fails_alone(backend: Backend) {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = database(backend, dir.path()).await;
    let store = open(&url).await;
    let order = taken_order(&store).await;
    let mut writes: Vec<NewVerification> =
        (0..40).map(|_| new_verification(now_millis())).collect();
    writes[17].order = Some(order);
    let events: Vec<_> = writes
        .iter()
        .map(|new| {
            let mut event = crate::events::synthetic_event("verification_started", new.now);
            event.verification_id = *new.id.as_uuid();
            [event]
        })
        .collect();
    let results = join_all(
        writes
            .iter()
            .zip(&events)
            .map(|(new, events)| store.insert_verification(new, events)),
    )
    .await;
    for (i, (new, result)) in writes.iter().zip(&results).enumerate() {
        let found = store.find_verification(&new.id).await.expect("find");
        if i == 17 {
            assert!(result.is_err(), "the clashing write is refused");
            assert!(found.is_none(), "the clashing write left nothing");
        } else {
            result.as_ref().expect("every other write succeeds");
            assert!(found.is_some(), "write {i} is stored");
        }
    }
    assert_eq!(
        store.outbox_stats().await.expect("stats").pending,
        39,
        "one event for each write that succeeded"
    );
}

/// Lookups by key are planned onto primary keys even where PostgreSQL knows nothing about the
/// tables yet (a fresh database before its first ANALYZE, or autovacuum off), for generic and
/// custom plans alike. An index they could be planned onto instead made every check scan all
/// of a brand's rows, slower with every verification, as long as the plan stayed cached.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lookups_by_key_use_primary_keys_on_tables_never_analyzed() {
    use sqlx::{Connection, Row};
    let url = fresh_postgres_database().await;
    open(&url).await;
    let mut conn = sqlx::PgConnection::connect(&url).await.expect("connect");
    // The WHERE clauses of the check, the resend, a record and an order lookup.
    let lookups = [
        (
            "verification_pkey",
            "SELECT 1 FROM verification WHERE verification_id = $1 AND brand_id = $2 \
             AND status = 'pending' AND expires_at > $3 AND checks_used < max_checks",
        ),
        (
            "verification_pkey",
            "SELECT 1 FROM verification WHERE verification_id = $1 AND brand_id = $2 \
             AND status = 'pending' AND expires_at > $3 AND sends < max_sends \
             AND (last_sent_at IS NULL OR last_sent_at + resend_cooldown_ms <= $3)",
        ),
        (
            "held_order_pkey",
            "SELECT 1 FROM held_order WHERE order_id = $1 AND brand_id = $2 AND $3 > 0",
        ),
    ];
    for mode in ["force_generic_plan", "force_custom_plan"] {
        sqlx::query(&format!("SET plan_cache_mode = {mode}"))
            .execute(&mut conn)
            .await
            .expect("set");
        for (i, (index, lookup)) in lookups.iter().enumerate() {
            let name = format!("lookup_{mode}_{i}");
            sqlx::query(&format!("PREPARE {name} (text, text, bigint) AS {lookup}"))
                .execute(&mut conn)
                .await
                .expect("prepare");
            let plan: Vec<String> = sqlx::query(&format!(
                "EXPLAIN EXECUTE {name} ('x', 'nordwind', 1795000000000)"
            ))
            .fetch_all(&mut conn)
            .await
            .expect("explain")
            .iter()
            .map(|row| row.get::<String, _>(0))
            .collect();
            let plan = plan.join("\n");
            assert!(plan.contains(index), "{mode}: {lookup}\n{plan}");
        }
    }
}

/// A claim holds its key until its lease ends; then one retry (of eight racing) takes it over,
/// with the resource the dead attempt stored, and a finished key is replayed, never taken.
async fn an_idempotency_key_is_held_for_its_lease_then_taken_over_once(backend: Backend) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(&database(backend, dir.path()).await).await;
    let (brand, hash) = (brand(), b"request".as_slice());
    let claimed = store
        .idempotency_claim(&brand, "k", hash, "first", 1_000, 2_000)
        .await
        .expect("claim");
    assert_eq!(
        claimed,
        IdempotencyClaim::Claimed {
            resource: "first".to_owned(),
            resumed: false
        }
    );
    let during = store
        .idempotency_claim(&brand, "k", hash, "second", 1_999, 3_000)
        .await
        .expect("claim");
    assert_eq!(during, IdempotencyClaim::InProgress, "the lease still runs");
    let other = store
        .idempotency_claim(&brand, "k", b"other", "second", 2_500, 3_500)
        .await
        .expect("claim");
    assert_eq!(other, IdempotencyClaim::Mismatch);

    let retries = (0..8).map(|n| {
        let store = store.clone();
        let brand = brand.clone();
        async move {
            store
                .idempotency_claim(&brand, "k", hash, &format!("retry-{n}"), 2_500, 9_000)
                .await
                .expect("claim")
        }
    });
    let outcomes = join_all(retries).await;
    let taken: Vec<_> = outcomes
        .iter()
        .filter(|claim| matches!(claim, IdempotencyClaim::Claimed { .. }))
        .collect();
    assert_eq!(
        taken,
        [&IdempotencyClaim::Claimed {
            resource: "first".to_owned(),
            resumed: true
        }],
        "{outcomes:?}"
    );
    store
        .idempotency_complete(&brand, "k", 201, "{}")
        .await
        .expect("complete");
    let after = store
        .idempotency_claim(&brand, "k", hash, "late", 99_000, 100_000)
        .await
        .expect("claim");
    assert_eq!(
        after,
        IdempotencyClaim::Replay {
            status: 201,
            body: "{}".to_owned()
        }
    );
}

/// Hits that arrive together are merged into one statement; each caller still gets the
/// counters as they were right after its own hit: 60 parallel hits of one counter (beside a
/// counter of their own each, and across two brands) see 1 to 60 exactly once, and the
/// shared rows end at exactly what was added.
async fn parallel_counter_hits_each_see_their_own_count(backend: Backend) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(&database(backend, dir.path()).await).await;
    let now = now_millis();
    let brands = [brand(), BrandId::parse("fjallnet").expect("id")];
    let hit = |bucket: String, count: i64| CounterHit {
        window2_ms: 0,
        bucket,
        window_ms: 600_000,
        count,
        approvals: 0,
    };
    let results = join_all((0..120).map(|n| {
        let store = store.clone();
        let brand = brands[n % 2].clone();
        async move {
            let hits = [hit(format!("own:{n}"), 1), hit("shared".to_owned(), 1)];
            store.hit_counters(&brand, &hits, now).await.expect("hit")
        }
    }))
    .await;
    for brand_index in 0..2 {
        let mut seen: Vec<i64> = results
            .iter()
            .enumerate()
            .filter(|(n, _)| n % 2 == brand_index)
            .map(|(n, states)| {
                assert_eq!(states.len(), 2, "hit {n}: {states:?}");
                assert_eq!(states[0].bucket, format!("own:{n}"));
                assert_eq!(states[0].hits, 1, "its own counter");
                assert_eq!(states[1].bucket, "shared");
                states[1].hits
            })
            .collect();
        seen.sort_unstable();
        assert_eq!(seen, (1..=60).collect::<Vec<i64>>(), "brand {brand_index}");
    }
    let read = store
        .hit_counters(&brands[1], &[hit("shared".to_owned(), 0)], now)
        .await
        .expect("read");
    assert_eq!(read[0].hits, 60);
}
