//! Browser tests in headless Chromium: a shop page on another loopback origin embeds the code
//! page in an iframe; the buyer types the code from the dev inbox; the shop hears the outcome.
//! Screenshots of each brand's page land in `test-output/` (not committed).

use serde_json::{Value, json};

use crate::helpers::{Backend, DEV_KEY, TestApp, spawn_app_with, start_body};
use crate::webdriver::Browser;

/// The Swedish example brand's development key, as printed in the README.
const FJALLNET_KEY: &str = "og_dev_fjallnet_8d3a6c1e5f2b7094";

/// A shop checkout page on its own origin, embedding a code page and listing the messages it
/// receives from the service's origin.
struct Shop {
    origin: String,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Shop {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn attribute(value: &str) -> String {
    value
        .replace('&', "&amp;")
        .replace('"', "&quot;")
        .replace('<', "&lt;")
}

#[derive(serde::Deserialize)]
struct CheckoutQuery {
    src: String,
    service: String,
}

impl Shop {
    async fn start() -> Self {
        let handler = |axum::extract::Query(q): axum::extract::Query<CheckoutQuery>| async move {
            axum::response::Html(format!(
                r#"<!doctype html><html lang="en"><head><meta charset="utf-8"><title>Example shop</title>
<style>body{{font-family:sans-serif;margin:0;padding:16px;background:#fafafa}}iframe{{width:480px;height:660px;border:1px solid #bbb}}</style></head>
<body><h1>Example shop: checkout</h1><iframe id="og" src="{src}" title="Confirm your purchase" onload="document.body.dataset.frame='loaded'"></iframe><ol id="events"></ol>
<script>
window.addEventListener("message", function (event) {{
  if (event.origin !== "{service}") return;
  var item = document.createElement("li");
  item.textContent = event.data.type + " " + event.data.verification_id;
  document.getElementById("events").appendChild(item);
}});
</script></body></html>"#,
                src = attribute(&q.src),
                service = attribute(&q.service),
            ))
        };
        let router = axum::Router::new().route("/checkout", axum::routing::get(handler));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind shop");
        let origin = format!(
            "http://127.0.0.1:{}",
            listener.local_addr().expect("addr").port()
        );
        let task = tokio::spawn(async move {
            axum::serve(listener, router).await.expect("shop serves");
        });
        Self { origin, task }
    }

    /// The checkout page embedding `widget_url` (with this shop as the parent).
    fn checkout(&self, widget_url: &str, service_origin: &str) -> String {
        let encode =
            |s: &str| url::form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
        let src = format!("{widget_url}&parent={}", encode(&self.origin));
        format!(
            "{}/checkout?src={}&service={}",
            self.origin,
            encode(&src),
            encode(service_origin)
        )
    }
}

/// An app whose example brands allow `shop` to frame their code page.
async fn app_allowing(shop: &Shop) -> TestApp {
    let origin = shop.origin.clone();
    spawn_app_with(Backend::Sqlite, move |settings| {
        for brand in ["nordwind", "fjallnet"] {
            let path = settings.brands_dir.join(brand).join("brand.toml");
            let text = std::fs::read_to_string(&path).expect("brand.toml");
            std::fs::write(
                &path,
                text.replacen(
                    "frame_origins = [",
                    &format!("frame_origins = [\"{origin}\", "),
                    1,
                ),
            )
            .expect("write brand.toml");
        }
    })
    .await
}

/// The service's origin as the browser sees it (the public URL).
fn service_origin(widget_url: &str) -> String {
    let url = url::Url::parse(widget_url).expect("widget url");
    url.origin().ascii_serialization()
}

struct Example {
    brand: &'static str,
    /// The buyer's language, as the shop passes it (the browser itself asks for English).
    locale: &'static str,
    key: &'static str,
    phone: &'static str,
    currency: &'static str,
    wrong: &'static str,
    resent: &'static str,
    approved: &'static str,
}

const EXAMPLES: [Example; 2] = [
    Example {
        brand: "nordwind",
        locale: "de",
        key: DEV_KEY,
        phone: "+4915123456789",
        currency: "EUR",
        wrong: "Verbleibende Versuche: 4",
        resent: "Ein neuer Code ist unterwegs.",
        approved: "Kauf bestätigt",
    },
    Example {
        brand: "fjallnet",
        locale: "sv",
        key: FJALLNET_KEY,
        phone: "+46701234567",
        currency: "SEK",
        wrong: "Försök kvar: 4",
        resent: "En ny kod är på väg.",
        approved: "Köpet är bekräftat",
    },
];

async fn start_for(app: &TestApp, example: &Example) -> (String, String) {
    let mut body = start_body();
    body["phone"] = json!(example.phone);
    body["currency"] = json!(example.currency);
    crate::helpers::must_not_be_logged(example.phone);
    let answer = app.post("/v1/verifications", example.key, &body).await;
    assert_eq!(answer.status, 201, "{answer:#?}");
    let id = answer.body["id"].as_str().expect("id").to_owned();
    let widget = answer.body["widget_url"].as_str().expect("widget_url");
    (id, format!("{widget}&locale={}", example.locale))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_brand_approves_inside_a_shop_iframe_and_tells_the_shop() {
    let shop = Shop::start().await;
    let app = app_allowing(&shop).await;
    let browser = Browser::start(true).await;
    for example in &EXAMPLES {
        let (id, widget) = start_for(&app, example).await;
        // The page on its own, for the look of the brand.
        browser.goto(&widget).await;
        browser.wait_for("#og-code").await;
        browser
            .screenshot(&format!("{}-code-page", example.brand))
            .await;

        browser
            .goto(&shop.checkout(&widget, &service_origin(&widget)))
            .await;
        let frame = browser.wait_for("iframe#og").await;
        browser.enter_frame(&frame).await;
        let input = browser.wait_for("#og-code").await;
        browser
            .screenshot(&format!("{}-in-shop", example.brand))
            .await;

        let wrong = app.wrong_code(&id).await;
        browser.type_into(&input, &wrong).await;
        browser
            .click(&browser.wait_for("[data-og-confirm]").await)
            .await;
        browser.wait_for_text("#og-message", example.wrong).await;

        app.travel(&id, 31_000).await;
        browser
            .click(&browser.wait_for("[data-og-resend]").await)
            .await;
        browser.wait_for_text("#og-message", example.resent).await;
        assert_eq!(app.codes(&id).await.len(), 2, "a second SMS was sent");

        let code = app.latest_code(&id).await;
        let input = browser.wait_for("#og-code").await;
        browser.type_into(&input, &code).await;
        browser
            .click(&browser.wait_for("[data-og-confirm]").await)
            .await;
        browser
            .wait_for_text(".og-result-approved", example.approved)
            .await;
        browser
            .screenshot(&format!("{}-approved", example.brand))
            .await;

        browser.leave_frame().await;
        browser
            .wait_for_text("#events", &format!("orderguard.approved {id}"))
            .await;
        let status = app
            .get(&format!("/v1/verifications/{id}"), example.key)
            .await;
        assert_eq!(status.body["status"], "approved");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_and_lock_tell_the_shop_aborted_and_failed() {
    let shop = Shop::start().await;
    let app = app_allowing(&shop).await;
    let browser = Browser::start(true).await;
    let example = &EXAMPLES[0];

    let (aborted, widget) = start_for(&app, example).await;
    browser
        .goto(&shop.checkout(&widget, &service_origin(&widget)))
        .await;
    browser
        .enter_frame(&browser.wait_for("iframe#og").await)
        .await;
    browser
        .click(&browser.wait_for("[data-og-cancel]").await)
        .await;
    browser
        .wait_for_text(".og-result-aborted", "Kauf abgebrochen")
        .await;
    browser.leave_frame().await;
    browser
        .wait_for_text("#events", &format!("orderguard.aborted {aborted}"))
        .await;

    let (locked, widget) = start_for(&app, example).await;
    let wrong = app.wrong_code(&locked).await;
    browser
        .goto(&shop.checkout(&widget, &service_origin(&widget)))
        .await;
    browser
        .enter_frame(&browser.wait_for("iframe#og").await)
        .await;
    for _ in 0..5 {
        let input = browser.wait_for("#og-code").await;
        browser.type_into(&input, &wrong).await;
        browser
            .click(&browser.wait_for("[data-og-confirm]").await)
            .await;
        // Each answer replaces the page; wait for it before the next try.
        browser
            .wait_for("[data-og-confirm], .og-result-locked")
            .await;
        tokio::time::sleep(std::time::Duration::from_millis(150)).await;
    }
    browser
        .wait_for_text(".og-result-locked", "Kauf gestoppt")
        .await;
    browser.leave_frame().await;
    browser
        .wait_for_text("#events", &format!("orderguard.failed {locked}"))
        .await;
    let events = browser.text(&browser.wait_for("#events").await).await;
    assert!(!events.contains("approved"), "{events}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_code_page_works_without_javascript() {
    let shop = Shop::start().await;
    let app = app_allowing(&shop).await;
    let browser = Browser::start(false).await;
    let (id, widget) = start_for(&app, &EXAMPLES[1]).await;
    browser.goto(&widget).await;
    let input = browser.wait_for("#og-code").await;
    let wrong = app.wrong_code(&id).await;
    browser.type_into(&input, &wrong).await;
    browser
        .click(&browser.wait_for("[data-og-confirm]").await)
        .await;
    browser.wait_for_text("#og-message", "Försök kvar: 4").await;
    let input = browser.wait_for("#og-code").await;
    browser.type_into(&input, &app.latest_code(&id).await).await;
    browser
        .click(&browser.wait_for("[data-og-confirm]").await)
        .await;
    browser
        .wait_for_text(".og-result-approved", "Köpet är bekräftat")
        .await;
    let status = app
        .get(&format!("/v1/verifications/{id}"), EXAMPLES[1].key)
        .await;
    assert_eq!(status.body["status"], "approved");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shop_on_an_origin_not_allowed_cannot_frame_the_page() {
    let allowed = Shop::start().await;
    let intruder = Shop::start().await;
    let app = app_allowing(&allowed).await;
    let browser = Browser::start(true).await;
    let (id, widget) = start_for(&app, &EXAMPLES[0]).await;

    browser
        .goto(&intruder.checkout(&widget, &service_origin(&widget)))
        .await;
    // The frame's navigation has ended (its load event fires for the error page Chromium
    // shows in place of a refused frame): only then is "no code field" a finding.
    browser.wait_for("body[data-frame=loaded]").await;
    browser
        .enter_frame(&browser.wait_for("iframe#og").await)
        .await;
    assert!(
        browser.find("#og-code").await.is_none(),
        "the code page must not render in a foreign frame"
    );
    browser.leave_frame().await;
    browser.screenshot("not-allowed-origin").await;

    // The allowed shop, same link: it renders.
    browser
        .goto(&allowed.checkout(&widget, &service_origin(&widget)))
        .await;
    browser
        .enter_frame(&browser.wait_for("iframe#og").await)
        .await;
    browser.wait_for("#og-code").await;
    assert_eq!(app.status(&id).await.body["status"], "pending");
}

/// The pages' layout in every brand's every offered locale, at a desktop and a phone width:
/// no sideways scrolling on the demo or in the code page, the demo's iframe sized by the code
/// page's `orderguard.resize` message so that every button is inside it, and a screenshot of
/// each (`test-output/<brand>-<locale>-<width>x<height>.png`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_brand_and_locale_fits_a_phone_and_a_desktop() {
    let app = spawn_app_with(Backend::Sqlite, |_| {}).await;
    let registry = orderguard::brands::BrandRegistry::load(
        &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("brands"),
        true,
    )
    .expect("brands");
    let browser = Browser::start(true).await;
    // What the current frame's document measures.
    let measure = "var d = document.documentElement;
        var buttons = Array.prototype.map.call(document.querySelectorAll('button'),
          function (b) { return b.getBoundingClientRect().bottom; });
        return {scroll_width: d.scrollWidth, inner_width: window.innerWidth,
                scroll_height: d.scrollHeight, inner_height: window.innerHeight,
                lowest_button: Math.max.apply(null, buttons.concat([0])), buttons: buttons.length};";
    let mut shots = 0;
    for brand in ["nordwind", "fjallnet"] {
        let locales = registry.get(brand).expect("brand").locales.clone();
        for locale in &locales {
            for (width, height) in [(1280, 900), (390, 844)] {
                browser.set_viewport(width, height).await;
                // At the public URL (http://localhost:<port>), the origin the page's
                // messages are addressed to.
                browser
                    .goto(
                        &app.url(&format!("/demo/{brand}?locale={locale}"))
                            .replace("127.0.0.1", "localhost"),
                    )
                    .await;
                let frame = browser.wait_for(".og-demo-frame").await;
                // The code page reported its height and the demo applied it.
                let mut sized = Value::Null;
                crate::helpers::eventually("the iframe sized by orderguard.resize", 20, async || {
                    sized = browser
                        .execute(
                            "var f = document.querySelector('.og-demo-frame');
                             return {style: f.style.height, height: f.getBoundingClientRect().height};",
                            json!([]),
                        )
                        .await;
                    sized["style"].as_str().is_some_and(|s| s.ends_with("px"))
                })
                .await;
                let demo = browser.execute(measure, json!([])).await;
                let at = format!("{brand} {locale} {width}x{height}");
                assert!(
                    demo["scroll_width"].as_i64() <= demo["inner_width"].as_i64(),
                    "{at}: the demo scrolls sideways: {demo}"
                );
                browser.enter_frame(&frame).await;
                browser.wait_for("#og-code").await;
                let page = browser.execute(measure, json!([])).await;
                assert!(
                    page["scroll_width"].as_i64() <= page["inner_width"].as_i64(),
                    "{at}: the code page scrolls sideways: {page}"
                );
                assert!(
                    page["scroll_height"].as_i64() <= page["inner_height"].as_i64(),
                    "{at}: the iframe ({sized}) is shorter than the code page: {page}"
                );
                assert!(
                    page["buttons"].as_i64() >= Some(3)
                        && page["lowest_button"].as_f64() <= page["inner_height"].as_f64(),
                    "{at}: a button is outside the iframe: {page}"
                );
                browser.leave_frame().await;
                browser
                    .screenshot(&format!("{brand}-{locale}-{width}x{height}"))
                    .await;
                shots += 1;
            }
        }
    }
    assert!(
        shots >= 6,
        "every brand's every locale at both widths: {shots}"
    );

    // Without JavaScript (no resize message), the code page fits the 3-D Secure challenge
    // window a shop reserves, 390 × 600, in every locale.
    let plain = Browser::start(false).await;
    plain.set_viewport(390, 600).await;
    for (brand, key) in [("nordwind", DEV_KEY), ("fjallnet", FJALLNET_KEY)] {
        for locale in &registry.get(brand).expect("brand").locales.clone() {
            let mut body = start_body();
            if brand == "fjallnet" {
                body["phone"] = json!("+46701234567");
                body["currency"] = json!("SEK");
            }
            let answer = app.post("/v1/verifications", key, &body).await;
            assert_eq!(answer.status, 201, "{answer:#?}");
            let widget = answer.body["widget_url"].as_str().expect("widget_url");
            plain.goto(&format!("{widget}&locale={locale}")).await;
            plain.wait_for("#og-code").await;
            // Layout is measured by the browser, not by page script: WebDriver's script runs
            // with the page's own JavaScript off.
            let page = plain.execute(measure, json!([])).await;
            assert!(
                page["scroll_width"].as_i64() <= page["inner_width"].as_i64()
                    && page["scroll_height"].as_i64() <= page["inner_height"].as_i64(),
                "{brand} {locale} without JavaScript at 390x600: {page}"
            );
        }
    }
}

/// axe-core in Chromium finds no WCAG 2.1 A/AA violation on the code page in any state
/// (entry, wrong code, locked, expired, approved, aborted) nor on the demo, for each brand.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_state_of_the_code_page_and_the_demo_pass_axe() {
    let app = spawn_app_with(Backend::Sqlite, |_| {}).await;
    let browser = Browser::start(true).await;
    let mut checked = Vec::new();
    let mut failures = Vec::new();
    for example in &EXAMPLES {
        let mut check = async |state: &str| {
            let violations = browser.axe_violations().await;
            checked.push(format!("{} {state}", example.brand));
            if !violations.is_empty() {
                failures.push(format!("{} {state}: {violations:#?}", example.brand));
            }
        };
        // Entry, a wrong code, then locked.
        let (id, widget) = start_for(&app, example).await;
        browser.goto(&widget).await;
        browser.wait_for("#og-code").await;
        check("entry").await;
        let wrong = app.wrong_code(&id).await;
        browser.submit_code(&wrong).await;
        browser.wait_for_text("#og-message", example.wrong).await;
        check("wrong code").await;
        while browser.find(".og-result-locked").await.is_none() {
            browser.wait_for("#og-code, .og-result-locked").await;
            if browser.find(".og-result-locked").await.is_some() {
                break;
            }
            browser.submit_code(&wrong).await;
            // Each answer replaces the page; wait for it before the next try.
            browser
                .wait_for("[data-og-confirm], .og-result-locked")
                .await;
            tokio::time::sleep(std::time::Duration::from_millis(150)).await;
        }
        check("locked").await;
        // Approved.
        let (id, widget) = start_for(&app, example).await;
        browser.goto(&widget).await;
        browser.submit_code(&app.latest_code(&id).await).await;
        browser
            .wait_for_text(".og-result-approved", example.approved)
            .await;
        check("approved").await;
        // Aborted.
        let (_, widget) = start_for(&app, example).await;
        browser.goto(&widget).await;
        browser
            .click(&browser.wait_for("[data-og-cancel]").await)
            .await;
        browser.wait_for(".og-result-aborted").await;
        check("aborted").await;
        // Expired.
        let (id, widget) = start_for(&app, example).await;
        app.travel(&id, 3_600_000).await;
        browser.goto(&widget).await;
        browser.wait_for(".og-result-expired").await;
        check("expired").await;
        // The demo.
        browser
            .goto(
                &app.url(&format!(
                    "/demo/{}?locale={}",
                    example.brand, example.locale
                ))
                .replace("127.0.0.1", "localhost"),
            )
            .await;
        browser.wait_for(".og-demo-frame").await;
        check("demo").await;
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert_eq!(checked.len(), 14, "{checked:?}");
}
