//! Brand loading: inheritance, validation messages, locales and reloads.

use std::path::Path;

use super::*;

const ACME: &str = r#"display_name = "Acme"
sms_sender = "Acme"
allowed_countries = ["DE"]
frame_origins = ["https://shop.acme.example"]
default_locale = "en"
locales = ["en", "de"]

[[api_keys]]
id = "main"
hash = "sha256:6d3a2e7f1bbf5ab2c2e3e5ba8a4b8f2b1e9d0c7a6b5f4e3d2c1b0a9f8e7d6c5b"
"#;

/// A brands folder with the shipped `_base` and one valid brand, `acme`.
fn fixture() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    copy(
        &Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("brands")
            .join(BASE_DIR),
        &dir.path().join(BASE_DIR),
    );
    write(dir.path(), "acme/brand.toml", ACME);
    dir
}

fn copy(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for entry in std::fs::read_dir(from).expect("read").flatten() {
        if entry.path().is_dir() {
            copy(&entry.path(), &to.join(entry.file_name()));
        } else {
            std::fs::copy(entry.path(), to.join(entry.file_name())).expect("copy");
        }
    }
}

fn write(dir: &Path, relative: &str, text: &str) {
    let path = dir.join(relative);
    std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
    std::fs::write(path, text).expect("write");
}

fn base_locale(locale: &str) -> String {
    std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("brands/_base/locales/{locale}.toml")),
    )
    .expect("base locale")
}

#[test]
fn the_shipped_brands_pass_the_check() {
    let problems = check(&Path::new(env!("CARGO_MANIFEST_DIR")).join("brands"));
    assert!(problems.is_empty(), "{problems:#?}");
}

#[test]
fn the_fixture_is_valid() {
    let dir = fixture();
    assert_eq!(check(dir.path()), Vec::<String>::new());
}

/// A case: what it breaks, the files written over the fixture, the one problem expected.
type Case<'a> = (&'a str, Vec<(&'a str, String)>, &'a str);

#[test]
fn each_broken_folder_fails_with_its_message() {
    let long = "x".repeat(140);
    let cases: Vec<Case<'_>> = vec![
        ("unknown key", vec![("acme/brand.toml", format!("colour = \"red\"\n{ACME}"))], "acme/brand.toml: colour: unknown key"),
        (
            "unknown nested key",
            vec![("acme/brand.toml", format!("{ACME}[theme]\nshade = 2\n"))],
            "acme/brand.toml: theme.shade: unknown key",
        ),
        (
            "malformed colour",
            vec![("acme/brand.toml", format!("{ACME}[theme]\nprimary = \"#12\"\n"))],
            r##"acme/brand.toml: theme.primary: "#12" is not a colour (#rgb or #rrggbb)"##,
        ),
        (
            "origin with a path",
            vec![("acme/brand.toml", ACME.replace("https://shop.acme.example", "https://shop.acme.example/checkout"))],
            r#"acme/brand.toml: frame_origins: "https://shop.acme.example/checkout" is not an origin like "https://shop.example.com" (no path; http only for localhost)"#,
        ),
        (
            "plain http origin",
            vec![("acme/brand.toml", ACME.replace("https://shop.acme.example", "http://shop.acme.example"))],
            r#"acme/brand.toml: frame_origins: "http://shop.acme.example" is not an origin like "https://shop.example.com" (no path; http only for localhost)"#,
        ),
        (
            "webhook host with a scheme",
            vec![("acme/brand.toml", format!("{ACME}[webhooks]\nhosts = [\"https://hooks.acme.example\"]\n"))],
            r#"acme/brand.toml: webhooks.hosts: "https://hooks.acme.example" is not a host name like "hooks.shop.example" or "*.shop.example""#,
        ),
        (
            "unknown country",
            vec![("acme/brand.toml", ACME.replace("[\"DE\"]", "[\"Germany\"]"))],
            r#"acme/brand.toml: allowed_countries: "Germany" is not an ISO 3166 alpha-2 code"#,
        ),
        (
            "limit out of range",
            vec![("acme/brand.toml", format!("{ACME}[limits]\ncode_length = 3\n"))],
            "acme/brand.toml: limits: code_length: must be between 4 and 10, not 3",
        ),
        (
            "missing logo asset",
            vec![("acme/brand.toml", format!("{ACME}[theme]\nlogo = \"missing.svg\"\n"))],
            r#"acme/brand.toml: theme.logo: "missing.svg" is not in acme/assets or _base/assets"#,
        ),
        (
            "default locale not offered",
            vec![("acme/brand.toml", ACME.replace("default_locale = \"en\"", "default_locale = \"sv\""))],
            r#"acme/brand.toml: default_locale: "sv" is not among locales"#,
        ),
        (
            "offered locale without a file",
            vec![("acme/brand.toml", ACME.replace("[\"en\", \"de\"]", "[\"en\", \"fi\"]"))],
            r#"acme/brand.toml: locales: no locale file for "fi" in acme/locales or _base/locales"#,
        ),
        (
            "locale key not in _base",
            vec![("acme/locales/de.toml", "[page]\ntitel = \"Kaufen\"\n".to_owned())],
            "acme/locales/de.toml: page.titel: unknown key (not in _base/locales)",
        ),
        (
            "new locale missing a key",
            vec![
                ("acme/brand.toml", ACME.replace("[\"en\", \"de\"]", "[\"en\", \"fi\"]")),
                ("acme/locales/fi.toml", base_locale("en").replace("cancel = \"Abort purchase\"\n", "")),
            ],
            "acme/locales/fi.toml: page.cancel: missing (every locale needs every key of _base/locales)",
        ),
        (
            "SMS text without the code",
            vec![("acme/locales/en.toml", "[sms]\ntext = \"{brand}: your order {order_reference}\"\n".to_owned())],
            "acme/locales/en.toml: sms.text: must contain the {code} placeholder",
        ),
        (
            "SMS over its GSM-7 budget",
            vec![("acme/locales/en.toml", format!("[sms]\ntext = \"{{code}} {long}\"\n"))],
            "acme/locales/en.toml: sms.text: 2 segments in GSM-7 (178 septets) exceed the budget of 1 (sms.max_segments)",
        ),
        (
            "SMS needing UCS-2",
            vec![("acme/locales/en.toml", "[sms]\ntext = \"{brand}: kod {code} potwierdza zamówienie {order_reference} ({amount}). Ważny {minutes} min.\"\n".to_owned())],
            "acme/locales/en.toml: sms.text: 2 segments in UCS-2 (108 UTF-16 code units, because of 'ó') exceed the budget of 1 (sms.max_segments)",
        ),
        (
            "template that does not compile",
            vec![("acme/templates/code.hbs", "{{#if verification}}open".to_owned())],
            "acme/templates/code.hbs: line 1, column 25: invalid Handlebars syntax (a {{…}} or a block is not closed properly)",
        ),
        (
            "template using an unknown variable",
            vec![("acme/templates/result.hbs", "{{#> layout}}<p>{{verification.colour}}</p>{{/layout}}".to_owned())],
            "acme/templates/result.hbs: line 1, column 17: unknown variable `verification.colour` (locale en)",
        ),
        (
            "malformed API key hash",
            vec![("acme/brand.toml", ACME.replace("sha256:6d3a", "sha256:zz3a"))],
            "acme/brand.toml: api_keys: main: hash must be sha256:<64 hex digits>",
        ),
        (
            "a key shared by two brands",
            vec![("acme2/brand.toml", ACME.to_owned())],
            "acme2/brand.toml: api_keys: main: the key is also used by brand acme",
        ),
        (
            "not TOML",
            vec![("acme/brand.toml", format!("{ACME}display_name = \n"))],
            "acme/brand.toml: not valid TOML: invalid string; expected `\"`, `'` (line 11)",
        ),
        (
            "wrong type",
            vec![("acme/brand.toml", ACME.replace("display_name = \"Acme\"", "display_name = 5"))],
            "acme/brand.toml: display_name: invalid type: integer `5`, expected a string",
        ),
        ("folder name", vec![("Acme/brand.toml", ACME.to_owned())], r#"Acme: brand id "Acme" must be 2–40 lower-case letters, digits or dashes"#),
    ];
    for (case, files, expected) in cases {
        let dir = fixture();
        for (path, text) in &files {
            write(dir.path(), path, text);
        }
        let problems = check(dir.path());
        assert_eq!(problems, vec![expected.to_owned()], "case: {case}");
    }
}

#[test]
fn the_locale_is_the_explicit_one_then_accept_language_then_the_default() {
    let dir = fixture();
    let registry = BrandRegistry::load(dir.path(), true).expect("loads");
    let acme = registry.get("acme").expect("acme");
    assert_eq!(acme.locales, vec!["en", "de"], "the default first");
    let cases = [
        (Some("de"), None, "de"),
        (Some("de-AT"), None, "de"),
        (Some("fr"), Some("de-DE,de;q=0.9"), "de"),
        (None, Some("fr-FR, sv;q=0.8, de;q=0.5"), "de"),
        (None, Some("de;q=0.2, en;q=0.9"), "en"),
        (None, Some("fr, sv"), "en"),
        (None, None, "en"),
    ];
    for (explicit, header, expected) in cases {
        assert_eq!(
            acme.pick_locale(explicit, header),
            expected,
            "{explicit:?} {header:?}"
        );
    }
    assert_eq!(acme.text("de", "page.cancel"), "Kauf abbrechen");
}

#[test]
fn a_changed_brand_is_swapped_in_and_a_broken_change_keeps_the_last_good_version() {
    let dir = fixture();
    let registry = BrandRegistry::load(dir.path(), true).expect("loads");
    assert_eq!(
        registry.reload(),
        ReloadReport::default(),
        "nothing changed"
    );

    write(
        dir.path(),
        "acme/brand.toml",
        &format!("{ACME}[theme]\nprimary = \"#aa0000\"\n"),
    );
    let report = registry.reload();
    assert_eq!(report.applied, vec!["acme"]);
    assert_eq!(registry.get("acme").expect("acme").theme.primary, "#aa0000");

    write(dir.path(), "acme/templates/code.hbs", "{{#if}}");
    let report = registry.reload();
    assert_eq!(report.rejected.len(), 1, "{report:?}");
    assert_eq!(report.rejected[0].0, "acme");
    assert!(
        report.rejected[0].1[0].starts_with("acme/templates/code.hbs: "),
        "{report:?}"
    );
    let serving = registry
        .get("acme")
        .expect("the last good version still serves");
    assert_eq!(serving.theme.primary, "#aa0000");
    assert!(
        serving
            .render(
                Page::Code,
                &PageModel::sample(Page::Code, serving.catalog("en").clone())
            )
            .is_ok()
    );

    std::fs::remove_file(dir.path().join("acme/templates/code.hbs")).expect("remove");
    assert_eq!(
        registry.reload().applied,
        vec!["acme"],
        "the fixed brand is applied"
    );
}

#[test]
fn a_new_brand_folder_is_added_with_its_key_and_a_removed_one_goes() {
    let dir = fixture();
    let registry = BrandRegistry::load(dir.path(), false).expect("loads");
    let key = "og_newbrand_key_0123456789";
    let beta = ACME.replace(
        "sha256:6d3a2e7f1bbf5ab2c2e3e5ba8a4b8f2b1e9d0c7a6b5f4e3d2c1b0a9f8e7d6c5b",
        &api_key_hash(key),
    );
    write(dir.path(), "beta/brand.toml", &beta);
    assert!(registry.authenticate(key).is_none());
    assert_eq!(registry.reload().applied, vec!["beta"]);
    assert_eq!(
        registry.authenticate(key).map(|(b, _)| b.id.to_string()),
        Some("beta".to_owned())
    );

    std::fs::remove_dir_all(dir.path().join("beta")).expect("remove");
    assert_eq!(registry.reload().removed, vec!["beta"]);
    assert!(
        registry.authenticate(key).is_none(),
        "a removed brand's key stops working"
    );
}

#[test]
fn dev_keys_work_in_dev_mode_only() {
    let dir = fixture();
    let key = "og_dev_key_for_acme";
    write(
        dir.path(),
        "acme/brand.toml",
        &ACME.replace(
            "hash = \"sha256:6d3a2e7f1bbf5ab2c2e3e5ba8a4b8f2b1e9d0c7a6b5f4e3d2c1b0a9f8e7d6c5b\"",
            &format!("hash = \"{}\"\ndev_only = true", api_key_hash(key)),
        ),
    );
    assert!(
        BrandRegistry::load(dir.path(), true)
            .expect("loads")
            .authenticate(key)
            .is_some()
    );
    assert!(
        BrandRegistry::load(dir.path(), false)
            .expect("loads")
            .authenticate(key)
            .is_none()
    );
}

#[test]
fn brands_new_scaffolds_a_folder_that_passes_the_check() {
    let dir = fixture();
    let created = scaffold::new_brand(dir.path(), "fjord-tel").expect("scaffolded");
    assert!(created.folder.join("brand.toml").exists());
    assert_eq!(check(dir.path()), Vec::<String>::new());
    let registry = BrandRegistry::load(dir.path(), false).expect("loads");
    let (brand, _) = registry
        .authenticate(&created.api_key)
        .expect("the printed key works");
    assert_eq!(
        (brand.id.as_str(), brand.display_name.as_str()),
        ("fjord-tel", "Fjord Tel")
    );
    let text = std::fs::read_to_string(created.folder.join("brand.toml")).expect("read");
    assert!(!text.contains(&created.api_key), "only the hash is stored");
    assert!(
        scaffold::new_brand(dir.path(), "fjord-tel").is_err(),
        "an existing folder is not overwritten"
    );
    assert!(scaffold::new_brand(dir.path(), "Bad Id").is_err());
}

#[test]
fn loopback_frame_origins_are_honoured_only_in_dev_mode() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("brands");
    let dev = super::BrandRegistry::load(&dir, true).expect("dev");
    let production = super::BrandRegistry::load(&dir, false).expect("production");
    for brand in ["nordwind", "fjallnet"] {
        let origins = |registry: &super::BrandRegistry| {
            registry.get(brand).expect("brand").frame_origins.clone()
        };
        assert!(
            origins(&dev).iter().any(|o| o == "http://localhost:3000"),
            "{brand}: dev keeps the demo shop's origin"
        );
        assert!(
            origins(&production)
                .iter()
                .all(|o| o.starts_with("https://") && !super::load::is_loopback_origin(o)),
            "{brand}: {:?}",
            origins(&production)
        );
        assert!(!origins(&production).is_empty(), "{brand}: the shop stays");
    }
    for (origin, loopback) in [
        ("http://localhost:3000", true),
        ("http://127.0.0.1", true),
        ("https://[::1]:8443", true),
        ("https://localhost.evil.example", false),
        ("https://shop.example", false),
    ] {
        assert_eq!(
            super::load::is_loopback_origin(origin),
            loopback,
            "{origin}"
        );
    }
}

#[test]
fn theme_pairs_under_wcag_aa_are_reported_with_their_ratio() {
    // WCAG's own extremes, and a grey on white just under and just over 4.5:1.
    let ratio = |a, b| super::validate::contrast_ratio(a, b).expect("colours");
    assert!((ratio("#000", "#fff") - 21.0).abs() < 1e-9);
    assert!((ratio("#777777", "#777") - 1.0).abs() < 1e-9);
    assert!(ratio("#777777", "#ffffff") < 4.5 && ratio("#767676", "#ffffff") >= 4.5);

    let dir = fixture();
    write(
        dir.path(),
        "acme/brand.toml",
        &format!(
            "{ACME}[theme]\nprimary = \"#0b2545\"\nmuted = \"#9aa0aa\"\non_primary = \"#1f2a44\"\n"
        ),
    );
    let problems = check(dir.path());
    assert_eq!(
        problems,
        [
            "acme/brand.toml: theme.muted: #9aa0aa on theme.surface #ffffff has a contrast of 2.63:1, under WCAG AA's 4.5:1 for text",
            "acme/brand.toml: theme.muted: #9aa0aa on theme.background #f3f5f8 has a contrast of 2.41:1, under WCAG AA's 4.5:1 for text",
            "acme/brand.toml: theme.on_primary: #1f2a44 on theme.primary #0b2545 has a contrast of 1.08:1, under WCAG AA's 4.5:1 for text",
        ],
        "{problems:#?}"
    );
}
