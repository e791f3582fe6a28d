//! The code page over plain HTTP (no JavaScript): looks, headers, links, form posts, locales,
//! assets, hot reload and the demo checkout.

use serde_json::json;

use crate::both_backends;
use crate::helpers::{Backend, PHONE, TestApp, spawn_app, spawn_app_with, start_body};

both_backends!(
    the_code_page_shows_the_order_in_the_brands_look,
    a_missing_forged_or_expired_link_gets_a_themed_page_without_buyer_data,
    an_attacker_who_knows_only_the_id_cannot_cancel_by_guessing_a_short_tag,
    the_form_posts_work_without_javascript,
    the_page_language_is_the_parameter_then_accept_language_then_the_default,
);

/// Starts a verification; returns its id and code page URL.
async fn started(app: &TestApp) -> (String, String) {
    let answer = app.start(&start_body()).await;
    assert_eq!(answer.status, 201, "{answer:#?}");
    let id = answer.body["id"].as_str().expect("id").to_owned();
    let url = answer.body["widget_url"]
        .as_str()
        .expect("widget_url")
        .to_owned();
    (id, url)
}

fn token(url: &str) -> String {
    url.split("t=")
        .nth(1)
        .expect("t")
        .split('&')
        .next()
        .expect("token")
        .to_owned()
}

async fn the_code_page_shows_the_order_in_the_brands_look(backend: Backend) {
    let app = spawn_app(backend).await;
    let (id, url) = started(&app).await;
    let (status, headers, html) = app.page(&url).await;
    assert_eq!(status, 200, "{html}");
    for expected in [
        "<html lang=\"de\">",
        "Ihren Nordwind-Kauf bestätigen",
        "/assets/nordwind/nordwind.svg",
        "alt=\"Nordwind Mobil\"",
        "A-1001",
        "49,90\u{a0}€",
        "+491********89",
        "autocomplete=\"one-time-code\"",
        "inputmode=\"numeric\"",
        "<label class=\"og-label\" for=\"og-code\">Bestätigungscode</label>",
        "Kauf abbrechen",
        "Neuen Code senden",
    ] {
        assert!(html.contains(expected), "missing {expected:?} in\n{html}");
    }
    assert!(
        !html.contains(PHONE) && !html.contains(&PHONE[3..]),
        "the full number is never shown"
    );
    assert!(
        !html.contains(&app.latest_code(&id).await),
        "the code is never on the page"
    );

    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    let csp = header("content-security-policy");
    assert!(
        csp.contains(
            "frame-ancestors https://shop.nordwind-mobil.example http://localhost:3000 'self'"
        ),
        "{csp}"
    );
    for directive in [
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "form-action 'self'",
    ] {
        assert!(csp.contains(directive), "{directive} missing: {csp}");
    }
    assert!(
        !csp.contains("https://cdn") && !csp.contains('*'),
        "no third-party sources: {csp}"
    );
    assert_eq!(header("referrer-policy"), "no-referrer");
    assert_eq!(header("cache-control"), "no-store");
    assert!(headers.get("set-cookie").is_none(), "no cookies at all");
}

async fn a_missing_forged_or_expired_link_gets_a_themed_page_without_buyer_data(backend: Backend) {
    let app = spawn_app(backend).await;
    let (id, url) = started(&app).await;
    let base = url.split('?').next().expect("base").to_owned();
    let good = token(&url);
    let forged = format!(
        "{}{}",
        &good[..good.len() - 1],
        if good.ends_with('0') { '1' } else { '0' }
    );
    let key =
        std::fs::read_to_string(app.data_dir.join("keys/widget.key")).expect("dev widget key");
    let signer = orderguard::widget::WidgetSigner::new(&hex::decode(key.trim()).expect("hex"));
    let expired = signer.token(
        &id.parse().expect("id"),
        orderguard::domain::now_millis() - 1_000,
    );
    let other = started(&app).await;
    let (expiry, tag) = good.split_once('.').expect("expiry.tag");
    let later: i64 = expiry.parse::<i64>().expect("expiry") + 86_400_000;
    let cases = [
        ("missing", base.clone()),
        ("forged", format!("{base}?t={forged}")),
        (
            "truncated to one byte",
            format!("{base}?t={expiry}.{}", &tag[..2]),
        ),
        (
            "truncated to 15 bytes",
            format!("{base}?t={expiry}.{}", &tag[..30]),
        ),
        ("extended", format!("{base}?t={good}00")),
        ("re-dated", format!("{base}?t={later}.{tag}")),
        ("expired", format!("{base}?t={expired}")),
        (
            "another verification's",
            format!("{base}?t={}", token(&other.1)),
        ),
    ];
    for (case, link) in cases {
        let (status, _, html) = app.page(&link).await;
        assert_eq!(status, 403, "{case} link");
        assert!(
            html.contains("Dieser Link funktioniert nicht"),
            "{case}: themed in the brand's language:\n{html}"
        );
        assert!(
            html.contains("/assets/nordwind/nordwind.svg"),
            "{case}: the brand's look"
        );
        for secret in ["A-1001", "+491********89", "49,90"] {
            assert!(!html.contains(secret), "{case} link shows {secret:?}");
        }
    }
    let (status, _, html) = app
        .page(&format!("/w/{}?t={good}", uuid::Uuid::now_v7()))
        .await;
    assert_eq!(status, 403);
    assert!(
        html.contains("/assets/_base/logo.svg") && !html.contains("nordwind"),
        "an unknown id reveals no brand"
    );
}

/// The round-1 attack: with only a verification id (it is in approval tokens, webhooks and
/// postMessage data), pick a far expiry and try every one-byte tag on the cancel form.
async fn an_attacker_who_knows_only_the_id_cannot_cancel_by_guessing_a_short_tag(backend: Backend) {
    let app = spawn_app(backend).await;
    let (id, _) = started(&app).await;
    let mut accepted = 0;
    for byte in 0..=255u8 {
        let forged = format!("9999999999999.{byte:02x}");
        let (status, _) = app
            .post_form(&format!("/w/{id}/cancel"), &[("t", &forged)])
            .await;
        if status != 403 {
            accepted += 1;
        }
    }
    assert_eq!(accepted, 0, "forged one-byte tags accepted");
    assert_eq!(app.status(&id).await.body["status"], "pending");
}

async fn the_form_posts_work_without_javascript(backend: Backend) {
    let app = spawn_app(backend).await;
    let (id, url) = started(&app).await;
    let t = token(&url);
    let path = |action: &str| format!("/w/{id}/{action}");
    let wrong = app.wrong_code(&id).await;

    let (status, html) = app
        .post_form(&path("check"), &[("t", &t), ("code", &wrong)])
        .await;
    assert_eq!(status, 200);
    assert!(
        html.contains("Dieser Code ist nicht richtig. Verbleibende Versuche: 4"),
        "{html}"
    );
    assert!(
        html.contains("role=\"alert\"") && html.contains("aria-invalid=\"true\""),
        "the error is announced"
    );

    let (_, html) = app.post_form(&path("resend"), &[("t", &t)]).await;
    assert!(html.contains("Bitte warten Sie kurz"), "cooldown: {html}");
    app.travel(&id, 31_000).await;
    let (_, html) = app.post_form(&path("resend"), &[("t", &t)]).await;
    assert!(html.contains("Ein neuer Code ist unterwegs."), "{html}");
    assert_eq!(app.codes(&id).await.len(), 2);

    let code = app.latest_code(&id).await;
    let (_, html) = app
        .post_form(&path("check"), &[("t", &t), ("code", &code)])
        .await;
    assert!(
        html.contains("data-outcome=\"approved\"") && html.contains("Kauf bestätigt"),
        "{html}"
    );
    assert_eq!(app.status(&id).await.body["status"], "approved");

    let (aborted, url) = started(&app).await;
    let (_, html) = app
        .post_form(&format!("/w/{aborted}/cancel"), &[("t", &token(&url))])
        .await;
    assert!(
        html.contains("data-outcome=\"aborted\"") && html.contains("Kauf abgebrochen"),
        "{html}"
    );

    let (locked, url) = started(&app).await;
    let wrong = app.wrong_code(&locked).await;
    let mut html = String::new();
    for _ in 0..5 {
        html = app
            .post_form(
                &format!("/w/{locked}/check"),
                &[("t", &token(&url)), ("code", &wrong)],
            )
            .await
            .1;
    }
    assert!(
        html.contains("data-outcome=\"failed\"") && html.contains("Kauf gestoppt"),
        "{html}"
    );

    let forged = app
        .post_form(&path("check"), &[("t", "1.00"), ("code", &code)])
        .await;
    assert_eq!(forged.0, 403, "a form post needs the signed link too");
}

async fn the_page_language_is_the_parameter_then_accept_language_then_the_default(
    backend: Backend,
) {
    let app = spawn_app(backend).await;
    let (_, url) = started(&app).await;
    let get = |url: String, language: &'static str| {
        let client = app.client.clone();
        async move {
            let response = client
                .get(url)
                .header("accept-language", language)
                .send()
                .await
                .expect("page");
            response.text().await.expect("html")
        }
    };
    let english = get(format!("{url}&locale=en"), "de").await;
    assert!(
        english.contains("<html lang=\"en\">")
            && english.contains("Confirm your purchase")
            && english.contains("€49.90")
    );
    let accepted = get(url.clone(), "sv-SE, en-GB;q=0.8").await;
    assert!(
        accepted.contains("<html lang=\"en\">"),
        "sv is not offered by Nordwind; en-GB matches en"
    );
    let fallback = get(url.clone(), "fr").await;
    assert!(fallback.contains("<html lang=\"de\">"), "the brand default");
    let parent = get(format!("{url}&parent=https%3A%2F%2Fevil.example"), "de").await;
    assert!(
        parent.contains("data-parent-origin=\"https://shop.nordwind-mobil.example\""),
        "an unlisted parent is ignored"
    );
    let listed = get(format!("{url}&parent=http%3A%2F%2Flocalhost%3A3000"), "de").await;
    assert!(listed.contains("data-parent-origin=\"http://localhost:3000\""));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn assets_and_the_theme_are_served_per_brand() {
    let app = spawn_app(Backend::Sqlite).await;
    let (status, headers, css) = app.page("/assets/nordwind/theme.css").await;
    assert_eq!(status, 200);
    assert!(
        headers["content-type"]
            .to_str()
            .expect("ct")
            .starts_with("text/css")
    );
    assert!(
        css.contains("--og-primary: #0b2545;") && css.contains("--og-radius: 2px;"),
        "{css}"
    );
    let (_, _, fjall) = app.page("/assets/fjallnet/theme.css").await;
    assert!(
        fjall.contains("--og-primary: #1b5e40;") && fjall.contains("Georgia"),
        "{fjall}"
    );
    let (status, headers, _) = app.page("/assets/nordwind/nordwind.svg").await;
    assert_eq!(
        (status, headers["content-type"].to_str().expect("ct")),
        (200, "image/svg+xml")
    );
    let (status, _, _) = app.page("/assets/nordwind/style.css").await;
    assert_eq!(status, 200, "inherited from _base");
    for missing in [
        "/assets/nordwind/secret.toml",
        "/assets/nordwind/..%2Fbrand.toml",
        "/assets/nobrand/style.css",
    ] {
        assert_eq!(app.page(missing).await.0, 404, "{missing}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn brand_changes_are_hot_reloaded_and_broken_ones_refused() {
    let app = spawn_app_with(Backend::Sqlite, |s| s.brands_reload_interval_ms = 100).await;
    let nordwind = app.brands_dir.join("nordwind/brand.toml");
    let original = std::fs::read_to_string(&nordwind).expect("brand.toml");

    std::fs::write(&nordwind, original.replace("#0b2545", "#7a1fa2")).expect("write");
    crate::helpers::eventually("the new colour", 10, async || {
        app.page("/assets/nordwind/theme.css")
            .await
            .2
            .contains("#7a1fa2")
    })
    .await;

    let (_, url) = started(&app).await;
    std::fs::create_dir_all(app.brands_dir.join("nordwind/templates")).expect("mkdir");
    std::fs::write(
        app.brands_dir.join("nordwind/templates/code.hbs"),
        "{{#if}}broken",
    )
    .expect("write");
    crate::helpers::eventually("the rejection", 10, async || {
        app.metrics()
            .await
            .contains(r#"orderguard_brand_reload_total{result="rejected"}"#)
    })
    .await;
    let (status, _, html) = app.page(&url).await;
    assert_eq!(status, 200, "the last good version keeps serving");
    assert!(
        html.contains("autocomplete=\"one-time-code\""),
        "the page still renders: {html}"
    );
    assert!(
        app.page("/assets/nordwind/theme.css")
            .await
            .2
            .contains("#7a1fa2")
    );

    let key = "og_added_brand_key_1234567890";
    let folder = app.brands_dir.join("addedbrand");
    std::fs::create_dir_all(&folder).expect("mkdir");
    std::fs::write(
        folder.join("brand.toml"),
        format!(
            "display_name = \"Added\"\nsms_sender = \"Added\"\nallowed_countries = [\"DE\"]\n[[api_keys]]\nid = \"k\"\nhash = \"{}\"\n",
            orderguard::brands::api_key_hash(key)
        ),
    )
    .expect("write");
    crate::helpers::eventually("the new brand", 10, async || {
        app.post("/v1/verifications", key, &start_body())
            .await
            .status
            == 201
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_checkout_embeds_a_fresh_code_page_with_its_sms() {
    let app = spawn_app(Backend::Sqlite).await;
    let (status, headers, html) = app.page("/demo/fjallnet").await;
    assert_eq!(status, 200, "{html}");
    assert!(
        html.contains("Demokassa") && html.contains("<iframe"),
        "{html}"
    );
    assert!(
        html.contains("Fjällnät: kod "),
        "the SMS as the buyer got it: {html}"
    );
    let csp = headers["content-security-policy"].to_str().expect("csp");
    assert!(
        csp.contains("frame-src 'self'") && csp.contains("frame-ancestors 'none'"),
        "{csp}"
    );
    let (status, _, page) = app.page(&demo_frame_src(&html)).await;
    assert_eq!(status, 200);
    assert!(
        page.contains("Bekräfta ditt köp") && page.contains("kr"),
        "{page}"
    );
    assert_eq!(app.page("/demo/nobrand").await.0, 404);
    // It says which locale it shows and links the brand's others; the events list is not empty.
    assert!(
        html.contains("Visas: <strong>sv</strong>")
            && html.contains(r#"href="/demo/fjallnet?locale&#x3D;en" hreflang="en""#)
            && !html.contains("hreflang=\"sv\""),
        "{html}"
    );
    assert!(html.contains("Inga än"), "{html}");
    let (_, _, english) = app.page("/demo/fjallnet?locale=en").await;
    assert!(
        english.contains("Showing: <strong>en</strong>") && english.contains("None yet"),
        "{english}"
    );
    let _ = json!({});
}

/// The code page URL the demo's iframe loads (attribute values are HTML-escaped; a browser
/// decodes them).
fn demo_frame_src(html: &str) -> String {
    html.split("src=\"")
        .find(|s| s.starts_with("http"))
        .expect("iframe src")
        .split('"')
        .next()
        .expect("src")
        .replace("&amp;", "&")
        .replace("&#x3D;", "=")
}

/// `brands new` makes a brand whose pages show its own name, not orderguard's logo.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_brand_shows_its_name_as_a_text_wordmark() {
    let app = spawn_app_with(Backend::Sqlite, |s| {
        orderguard::brands::scaffold::new_brand(&s.brands_dir, "acme-tel").expect("scaffolded");
    })
    .await;
    let (status, _, html) = app.page("/demo/acme-tel").await;
    assert_eq!(status, 200, "{html}");
    assert!(
        html.contains(r#"<span class="og-wordmark">Acme Tel</span>"#),
        "{html}"
    );
    assert!(!html.contains("logo.svg"), "no orderguard logo: {html}");
    let (_, _, page) = app.page(&demo_frame_src(&html)).await;
    assert!(
        page.contains(r#"<span class="og-wordmark">Acme Tel</span>"#) && !page.contains("logo.svg"),
        "{page}"
    );
}
