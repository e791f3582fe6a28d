//! The store's atomic operations, called directly and in parallel on both backends.

use std::sync::Arc;

use futures_util::future::join_all;
use orderguard::brands::BrandId;
use orderguard::domain::{Limits, Money, PhoneNumber, VerificationId, now_millis};
use orderguard::store::{
    CheckCount, CheckDecision, NewVerification, SendReservation, SqlStore, Store,
};

use crate::both_backends;
use crate::helpers::{Backend, PHONE, fresh_postgres_database};

both_backends!(
    parallel_check_counts_never_exceed_the_limit,
    parallel_resends_reserve_one_send,
    two_sweepers_expire_each_verification_once,
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
    let id = VerificationId::new();
    let new = NewVerification {
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
    };
    store.insert_verification(&new, &[]).await.expect("insert");
    id
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
