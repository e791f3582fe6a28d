//! The store's atomic operations, called directly and in parallel on both backends.

use std::future::Future;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use futures_util::future::join_all;
use orderguard::brands::BrandId;
use orderguard::domain::{Limits, Money, OrderId, PhoneNumber, VerificationId, now_millis};
use orderguard::store::{
    CheckCount, CheckDecision, NewOrder, NewVerification, SendReservation, SqlStore, Store,
};

use crate::both_backends;
use crate::helpers::{Backend, PHONE, fresh_postgres_database};

both_backends!(
    parallel_check_counts_never_exceed_the_limit,
    parallel_resends_reserve_one_send,
    two_sweepers_expire_each_verification_once,
    writes_broken_off_half_way_leave_nothing_behind,
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
        customer_pseudonym: String::new(),
        ip_pseudonym: String::new(),
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
    let undecided = |_: &orderguard::store::VerificationRecord, _: &[u8]| CheckDecision {
        finish: None,
        events: vec![],
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
    let no_events = |_: &orderguard::store::VerificationRecord| vec![];
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
    let no_events = |_: &orderguard::store::VerificationRecord| vec![];
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

/// A write that fails half-way (its second statement breaks a key), or whose caller goes away
/// at any point, leaves neither the change nor its events, and the store keeps working: on
/// SQLite a transaction's BEGIN and COMMIT travel with its statements, so this is where a
/// transaction left open would show.
async fn writes_broken_off_half_way_leave_nothing_behind(backend: Backend) {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = database(backend, dir.path()).await;
    let store = open(&url).await;
    let event = |new: &NewVerification| {
        let mut event = crate::events::synthetic_event("verification_started", new.now);
        event.verification_id = *new.id.as_uuid();
        event
    };

    // The order id is taken: the verification row goes in, the held order breaks the key.
    let order = NewOrder {
        id: OrderId::new(),
        payload: "{}".to_owned(),
        callback_url: None,
    };
    let mut first = new_verification(now_millis());
    first.order = Some(order.clone());
    store
        .insert_verification(&first, &[event(&first)])
        .await
        .expect("the first order");
    let mut clash = new_verification(now_millis());
    clash.order = Some(order);
    store
        .insert_verification(&clash, &[event(&clash)])
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

    // Callers that go away part-way: the write is polled 1, 2, 3, … times, 30 µs apart, and
    // dropped. On PostgreSQL a statement already sent still runs to its end on the server, so
    // what was written is counted once all is quiet.
    let mut attempted = vec![first.id];
    for step in 0..60u64 {
        let new = new_verification(now_millis());
        let events = [event(&new)];
        let mut write = std::pin::pin!(store.insert_verification(&new, &events));
        for _ in 0..=step {
            let polled = std::future::poll_fn(|cx| Poll::Ready(write.as_mut().poll(cx))).await;
            if let Poll::Ready(result) = polled {
                result.expect("a write that was let finish");
                break;
            }
            std::thread::sleep(Duration::from_micros(30));
        }
        attempted.push(new.id);
    }
    let after = insert(&store, now_millis()).await;
    assert!(
        store
            .find_verification(&after)
            .await
            .expect("find")
            .is_some(),
        "the store works after broken-off writes"
    );
    let mut counts = (0, -1);
    for _ in 0..50 {
        let mut written = 0;
        for id in &attempted {
            written += i64::from(store.find_verification(id).await.expect("find").is_some());
        }
        counts = (written, store.outbox_stats().await.expect("stats").pending);
        if counts.0 == counts.1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (written, pending) = counts;
    assert_eq!(
        pending, written,
        "one started event for each verification that was written, none for the others"
    );
    // On PostgreSQL the write is one statement, whole once sent; on SQLite the spread of
    // polls breaks transactions off between their messages.
    if backend == Backend::Sqlite {
        assert!(
            written > 1 && written < 61,
            "some writes were broken off and some finished ({written} of 61 written)"
        );
    }
}
