//! Parallel requests cannot beat the attempt limit or approve twice.

use std::collections::BTreeMap;

use futures_util::future::join_all;

use crate::both_backends;
use crate::helpers::{Backend, TestApp, spawn_app_with};

/// Enough connections that parallel requests really race in the database.
async fn spawn_wide_app(backend: Backend) -> TestApp {
    spawn_app_with(backend, |s| s.database.max_connections = 25).await
}

both_backends!(
    fifty_parallel_wrong_guesses_count_exactly_five_checks_and_lock,
    parallel_correct_checks_approve_exactly_once,
);

async fn fifty_parallel_wrong_guesses_count_exactly_five_checks_and_lock(backend: Backend) {
    let app = spawn_wide_app(backend).await;
    let id = app.start_ok().await;
    let right = app.latest_code(&id).await;
    let wrong = app.wrong_code(&id).await;

    let guesses = (0..50).map(|_| app.check(&id, &wrong));
    let answers = join_all(guesses).await;
    let mut outcomes: BTreeMap<String, usize> = BTreeMap::new();
    for answer in &answers {
        *outcomes
            .entry(format!("{} {}", answer.status, answer.problem()))
            .or_default() += 1;
    }
    assert_eq!(outcomes.get("422 invalid_code"), Some(&4), "{outcomes:?}");
    assert_eq!(
        outcomes.get("409 verification_locked"),
        Some(&46),
        "{outcomes:?}"
    );

    sqlx::any::install_default_drivers();
    let mut connection = <sqlx::AnyConnection as sqlx::Connection>::connect(&app.database_url)
        .await
        .expect("connect");
    let (checks, status): (i64, String) =
        sqlx::query_as("SELECT checks_used, status FROM verification WHERE verification_id = $1")
            .bind(&id)
            .fetch_one(&mut connection)
            .await
            .expect("row");
    assert_eq!((checks, status.as_str()), (5, "locked"));
    app.check(&id, &right)
        .await
        .assert_problem(409, "verification_locked");
}

async fn parallel_correct_checks_approve_exactly_once(backend: Backend) {
    let app = spawn_wide_app(backend).await;
    let id = app.start_ok().await;
    let right = app.latest_code(&id).await;

    let answers = join_all((0..5).map(|_| app.check(&id, &right))).await;
    let approved = answers.iter().filter(|a| a.status == 200).count();
    let refused = answers
        .iter()
        .filter(|a| a.problem() == "verification_already_approved")
        .count();
    assert_eq!((approved, refused), (1, 4), "{answers:#?}");

    let metrics = app.metrics().await;
    assert!(
        metrics.contains(
            r#"orderguard_verifications_finished_total{brand="nordwind",status="approved"} 1"#
        ),
        "approval counted once:\n{metrics}"
    );
}
