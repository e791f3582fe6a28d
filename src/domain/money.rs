//! Amounts in a currency's minor units, parsed from and shown as decimal strings.

use std::fmt;

/// An amount of money: minor units (cents, öre) and an ISO 4217 currency code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Money {
    minor: i64,
    currency: String,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MoneyError {
    #[error("currency must be an ISO 4217 code of three capital letters")]
    Currency,
    #[error(
        "amount must be a non-negative decimal with at most {0} decimal places, like \"49.90\""
    )]
    Amount(u32),
}

/// Decimal places of a currency; ISO 4217 lists 0 and 3 for a few, 2 for nearly all others.
fn exponent(currency: &str) -> u32 {
    match currency {
        "BIF" | "CLP" | "DJF" | "GNF" | "ISK" | "JPY" | "KMF" | "KRW" | "PYG" | "RWF" | "UGX"
        | "VND" | "VUV" | "XAF" | "XOF" | "XPF" => 0,
        "BHD" | "IQD" | "JOD" | "KWD" | "LYD" | "OMR" | "TND" => 3,
        _ => 2,
    }
}

impl Money {
    /// Parses `"49.90"` in `"EUR"`. Fewer decimals than the currency has are accepted (`"49.9"`).
    pub fn parse(amount: &str, currency: &str) -> Result<Self, MoneyError> {
        if currency.len() != 3 || !currency.bytes().all(|b| b.is_ascii_uppercase()) {
            return Err(MoneyError::Currency);
        }
        let exp = exponent(currency);
        let error = || MoneyError::Amount(exp);
        let (whole, fraction) = amount.split_once('.').unwrap_or((amount, ""));
        let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
        if whole.is_empty() || whole.len() > 12 || !digits(whole) || !digits(fraction) {
            return Err(error());
        }
        if fraction.len() > exp as usize || (amount.contains('.') && fraction.is_empty()) {
            return Err(error());
        }
        let whole: i64 = whole.parse().map_err(|_| error())?;
        let padded = format!("{fraction:0<width$}", width = exp as usize);
        let fraction: i64 = if padded.is_empty() {
            0
        } else {
            padded.parse().map_err(|_| error())?
        };
        Ok(Self {
            minor: whole * 10i64.pow(exp) + fraction,
            currency: currency.to_owned(),
        })
    }

    /// Rebuilds an amount read back from storage.
    pub fn from_minor(minor: i64, currency: String) -> Self {
        Self { minor, currency }
    }

    pub fn minor(&self) -> i64 {
        self.minor
    }

    pub fn currency(&self) -> &str {
        &self.currency
    }

    /// The decimal amount without the currency, e.g. `"49.90"`.
    pub fn decimal(&self) -> String {
        let exp = exponent(&self.currency);
        if exp == 0 {
            return self.minor.to_string();
        }
        let scale = 10i64.pow(exp);
        format!(
            "{}.{:0width$}",
            self.minor / scale,
            self.minor % scale,
            width = exp as usize
        )
    }
}

impl Money {
    /// The amount as a buyer of `locale` reads it: `49,90 €` (de), `€49.90` (en),
    /// `49,90 kr` (sv, SEK). Digits are grouped in thousands.
    pub fn localized(&self, locale: &str) -> String {
        let language = locale.split(['-', '_']).next().unwrap_or_default();
        let (group, decimal_mark) = match language {
            "de" | "da" | "nl" | "es" | "it" | "pt" => (".", ","),
            "sv" | "fi" | "fr" | "nb" | "no" | "pl" | "cs" => ("\u{a0}", ","),
            _ => (",", "."),
        };
        let decimal = self.decimal();
        let (whole, fraction) = decimal.split_once('.').unwrap_or((&decimal, ""));
        let mut grouped = String::new();
        for (index, digit) in whole.chars().enumerate() {
            if index > 0 && (whole.len() - index) % 3 == 0 {
                grouped.push_str(group);
            }
            grouped.push(digit);
        }
        let number = if fraction.is_empty() {
            grouped
        } else {
            format!("{grouped}{decimal_mark}{fraction}")
        };
        let symbol = match self.currency.as_str() {
            "EUR" => "€",
            "USD" => "$",
            "GBP" => "£",
            "SEK" | "NOK" | "DKK" if matches!(language, "sv" | "nb" | "no" | "da") => "kr",
            other => other,
        };
        match language {
            "en" if symbol.chars().count() == 1 => format!("{symbol}{number}"),
            "en" => format!("{symbol}\u{a0}{number}"),
            _ => format!("{number}\u{a0}{symbol}"),
        }
    }
}

impl fmt::Display for Money {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.decimal(), self.currency)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amounts_round_trip_through_minor_units() {
        let cases = [
            ("49.90", "EUR", 4990, "49.90"),
            ("49.9", "EUR", 4990, "49.90"),
            ("5", "SEK", 500, "5.00"),
            ("1200", "JPY", 1200, "1200"),
            ("1.005", "KWD", 1005, "1.005"),
        ];
        for (input, currency, minor, shown) in cases {
            let money = Money::parse(input, currency).unwrap_or_else(|e| panic!("{input}: {e}"));
            assert_eq!(money.minor(), minor, "{input} {currency}");
            assert_eq!(money.decimal(), shown, "{input} {currency}");
        }
    }

    #[test]
    fn amounts_are_shown_in_the_buyers_locale() {
        let eur = Money::parse("1234.5", "EUR").expect("valid");
        assert_eq!(eur.localized("de"), "1.234,50\u{a0}€");
        assert_eq!(eur.localized("en"), "€1,234.50");
        assert_eq!(eur.localized("sv"), "1\u{a0}234,50\u{a0}€");
        let sek = Money::parse("49.9", "SEK").expect("valid");
        assert_eq!(sek.localized("sv-SE"), "49,90\u{a0}kr");
        assert_eq!(sek.localized("en"), "SEK\u{a0}49.90");
        assert_eq!(
            Money::parse("1200", "JPY").expect("valid").localized("en"),
            "JPY\u{a0}1,200"
        );
    }

    #[test]
    fn malformed_amounts_and_currencies_are_refused() {
        for (input, currency) in [
            ("-1", "EUR"),
            ("1.999", "EUR"),
            ("1.", "EUR"),
            ("", "EUR"),
            ("1e3", "EUR"),
            ("1.5", "JPY"),
            ("10", "eur"),
            ("10", "EURO"),
            ("9999999999999", "EUR"),
        ] {
            assert!(
                Money::parse(input, currency).is_err(),
                "{input} {currency} should fail"
            );
        }
    }
}
