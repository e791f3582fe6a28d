//! The pages a brand renders (code entry, results, invalid link, demo shop) and the model
//! every template sees. Validation renders each template with [`PageModel::sample`] in strict
//! mode, so a template using a variable the model does not have fails `brands check`, not a
//! buyer's checkout.

use handlebars::Handlebars;
use serde::Serialize;

/// The templates every brand has (from `_base`, or its own override).
pub const TEMPLATES: &[&str] = &["layout", "code", "result", "error", "demo"];

/// The pages, each rendered by the template of the same name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Page {
    Code,
    Result,
    Error,
    Demo,
}

impl Page {
    pub fn template(self) -> &'static str {
        match self {
            Self::Code => "code",
            Self::Result => "result",
            Self::Error => "error",
            Self::Demo => "demo",
        }
    }
}

/// Everything a template can use. Every field is always present (strict mode).
#[derive(Debug, Clone, Serialize)]
pub struct PageModel {
    pub brand: BrandView,
    /// The locale's copy, as nested tables: `{{t.page.title}}`.
    pub t: serde_json::Value,
    pub lang: String,
    pub page: Page,
    pub verification: Option<VerificationView>,
    /// `pending`, `wrong_code`, `resent`, `cooldown`, `approved`, `locked`, `expired`,
    /// `aborted`, `invalid_link`.
    pub outcome: String,
    /// What the parent page is told: `approved`, `aborted`, `failed`, or empty.
    pub notify: String,
    /// The localized heading of a result or error page, or empty.
    pub heading: String,
    /// The localized message for the outcome, or empty.
    pub message: String,
    /// Whether `message` reports a problem (announced as an alert).
    pub message_is_error: bool,
    pub form: FormView,
    /// The origin `postMessage` may target (one of the brand's allowed origins), or empty.
    pub parent_origin: String,
    pub script_url: String,
    pub demo: Option<DemoView>,
}

#[derive(Debug, Clone, Serialize)]
pub struct BrandView {
    pub id: String,
    pub name: String,
    pub logo_url: String,
    pub stylesheet_url: String,
    pub theme_url: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct VerificationView {
    pub id: String,
    pub masked_phone: String,
    pub order_reference: String,
    /// The amount in the page's locale, e.g. `49,90 €`.
    pub amount: String,
    pub code_length: u8,
    pub attempts_remaining: u32,
    pub sends_remaining: u32,
    /// Seconds until a new code can be requested (0 = now).
    pub resend_wait_seconds: i64,
    pub can_resend: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct FormView {
    pub check_url: String,
    pub resend_url: String,
    pub cancel_url: String,
    pub token: String,
    pub locale: String,
    pub parent: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct DemoView {
    pub widget_url: String,
    pub sms_text: String,
    pub sms_to: String,
    pub inbox_url: String,
    pub amount: String,
    pub order_reference: String,
    /// The brand's offered locales, the one shown marked `current`.
    pub locales: Vec<DemoLocale>,
}

#[derive(Debug, Clone, Serialize)]
pub struct DemoLocale {
    pub code: String,
    pub url: String,
    pub current: bool,
}

impl PageModel {
    /// A model with every field filled, for validating templates.
    pub fn sample(page: Page, t: serde_json::Value) -> Self {
        Self {
            brand: BrandView {
                id: "sample".into(),
                name: "Sample Brand".into(),
                logo_url: "/assets/sample/logo.svg".into(),
                stylesheet_url: "/assets/sample/style.css".into(),
                theme_url: "/assets/sample/theme.css".into(),
            },
            t,
            lang: "en".into(),
            page,
            verification: Some(VerificationView {
                id: "00000000-0000-7000-8000-000000000000".into(),
                masked_phone: "+491********89".into(),
                order_reference: "A-1001".into(),
                amount: "€49.90".into(),
                code_length: 6,
                attempts_remaining: 5,
                sends_remaining: 2,
                resend_wait_seconds: 30,
                can_resend: false,
            }),
            outcome: "pending".into(),
            notify: String::new(),
            heading: "Sample heading".into(),
            message: "Sample message".into(),
            message_is_error: true,
            form: FormView {
                check_url: "/w/x/check".into(),
                resend_url: "/w/x/resend".into(),
                cancel_url: "/w/x/cancel".into(),
                token: "token".into(),
                locale: "en".into(),
                parent: "https://shop.example".into(),
            },
            parent_origin: "https://shop.example".into(),
            script_url: "/assets/sample/widget.js".into(),
            demo: Some(DemoView {
                widget_url: "/w/x?t=token".into(),
                sms_text: "Sample SMS".into(),
                sms_to: "+00 000 0000000".into(),
                inbox_url: "/dev/inbox".into(),
                amount: "€49.90".into(),
                order_reference: "A-1001".into(),
                locales: vec![
                    DemoLocale {
                        code: "en".into(),
                        url: "?locale=en".into(),
                        current: true,
                    },
                    DemoLocale {
                        code: "de".into(),
                        url: "?locale=de".into(),
                        current: false,
                    },
                ],
            }),
        }
    }
}

/// A strict Handlebars registry of `templates` (name → source). Errors name the template.
pub fn registry(
    templates: &[(String, String)],
) -> Result<Handlebars<'static>, Vec<(String, String)>> {
    let mut registry = Handlebars::new();
    registry.set_strict_mode(true);
    registry.set_dev_mode(false);
    let mut problems = Vec::new();
    for (name, source) in templates {
        if let Err(error) = registry.register_template_string(name, source) {
            problems.push((name.clone(), compile_error(&error)));
        }
    }
    if problems.is_empty() {
        Ok(registry)
    } else {
        Err(problems)
    }
}

fn position(line: Option<usize>, column: Option<usize>) -> String {
    match (line, column) {
        (Some(line), Some(column)) => format!("line {line}, column {column}: "),
        (Some(line), None) => format!("line {line}: "),
        _ => String::new(),
    }
}

/// A short message for a template that does not compile.
pub fn compile_error(error: &handlebars::TemplateError) -> String {
    use handlebars::TemplateErrorReason as Reason;
    let (line, column) = error
        .pos()
        .map_or((None, None), |(l, c)| (Some(l), Some(c)));
    let reason = match error.reason() {
        // Handlebars lists every token it could have expected; say what a person can act on.
        Reason::InvalidSyntax(_) => {
            "invalid Handlebars syntax (a {{…}} or a block is not closed properly)".to_owned()
        }
        other => other.to_string(),
    };
    format!("{}{reason}", position(line, column))
}

/// A short message for a template that fails to render with a page's model.
pub fn render_error(error: &handlebars::RenderError) -> String {
    use handlebars::RenderErrorReason as Reason;
    let reason = match error.reason() {
        Reason::MissingVariable(Some(name)) => format!("unknown variable `{name}`"),
        Reason::PartialNotFound(name) => format!("unknown partial `{name}`"),
        Reason::HelperNotFound(name) => format!("unknown helper `{name}`"),
        other => other.to_string(),
    };
    format!("{}{reason}", position(error.line_no, error.column_no))
}
