//! Phone numbers: parsed with libphonenumber's metadata, normalised to E.164, typed.

use std::fmt;

use phonenumber::{Type, country};

/// A valid mobile phone number in E.164 form (`+4915123456789`).
///
/// `Debug` and `Display` show the masked form; the full number is only reachable through
/// [`PhoneNumber::e164`], which the SMS sender and the store use.
#[derive(Clone, PartialEq, Eq)]
pub struct PhoneNumber {
    e164: String,
    country: String,
    calling_code: u16,
}

/// Why a phone number was refused. Each cause has its own problem type at the HTTP edge.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PhoneError {
    #[error("the phone number could not be parsed as a valid number")]
    Invalid,
    #[error("numbers from {0} are not accepted for this brand")]
    CountryNotAllowed(String),
    #[error("premium-rate numbers cannot receive codes")]
    PremiumRate,
    #[error("shared-cost numbers cannot receive codes")]
    SharedCost,
    #[error("VoIP numbers cannot receive codes")]
    Voip,
    #[error("fixed-line numbers cannot receive SMS codes")]
    FixedLine,
    #[error("only mobile numbers can receive codes (this is a {0} number)")]
    NotMobile(&'static str),
}

impl PhoneError {
    /// The stable name of the cause: the problem type at the HTTP edge and the rule name in
    /// `verification_blocked` events.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Invalid => "invalid_phone",
            Self::CountryNotAllowed(_) => "country_not_allowed",
            Self::PremiumRate => "premium_rate_number",
            Self::SharedCost => "shared_cost_number",
            Self::Voip => "voip_number",
            Self::FixedLine => "fixed_line_number",
            Self::NotMobile(_) => "non_mobile_number",
        }
    }
}

impl PhoneNumber {
    /// Parses `input` (E.164, or national with a `default_country` hint such as `"DE"`) and
    /// accepts it only if valid, mobile, and from one of `allowed_countries` (empty = any).
    pub fn parse(
        input: &str,
        default_country: Option<&str>,
        allowed_countries: &[String],
    ) -> Result<Self, PhoneError> {
        let (number, number_type) = Self::parse_valid(input, default_country)?;
        if !allowed_countries.is_empty() && !allowed_countries.contains(&number.country) {
            return Err(PhoneError::CountryNotAllowed(number.country));
        }
        match number_type {
            Type::Mobile | Type::FixedLineOrMobile => Ok(number),
            Type::PremiumRate => Err(PhoneError::PremiumRate),
            Type::SharedCost => Err(PhoneError::SharedCost),
            Type::Voip => Err(PhoneError::Voip),
            Type::FixedLine => Err(PhoneError::FixedLine),
            Type::TollFree => Err(PhoneError::NotMobile("toll-free")),
            Type::Pager => Err(PhoneError::NotMobile("pager")),
            Type::PersonalNumber => Err(PhoneError::NotMobile("personal")),
            Type::Uan => Err(PhoneError::NotMobile("universal access")),
            _ => Err(PhoneError::NotMobile("non-mobile")),
        }
    }

    /// Any valid number with its type, before the brand's rules: what a refused number was
    /// (its country and prefix describe a blocked start).
    pub fn parse_valid(
        input: &str,
        default_country: Option<&str>,
    ) -> Result<(Self, Type), PhoneError> {
        if input.len() > 32 || !is_plain_number(input) {
            return Err(PhoneError::Invalid);
        }
        let hint = default_country.and_then(|c| c.parse::<country::Id>().ok());
        let number = phonenumber::parse(hint, input).map_err(|_| PhoneError::Invalid)?;
        // `phonenumber::is_valid` is "its type is known": it classifies the number against
        // every type's pattern, as `number_type` does again. Classified once here (each
        // pattern match takes the crate's global regex-cache lock, and the two passes were a
        // sixth of a refused start's CPU). The two differ only for a national number with
        // leading zeros (`number_type` drops them), where `is_valid` still decides.
        let number_type = classify(&number);
        let valid = number_type != Type::Unknown
            && (number.national().zeros() == 0 || phonenumber::is_valid(&number));
        if !valid || number.extension().is_some() {
            return Err(PhoneError::Invalid);
        }
        let country = number
            .country()
            .id()
            .map(|id| id.as_ref().to_owned())
            .ok_or(PhoneError::Invalid)?;
        // What the crate's E.164 formatter writes, without the national format it looks up
        // first by matching the region's format patterns, unused in E.164 (a twentieth of a
        // refused start's CPU).
        let e164 = format!("+{}{}", number.country().code(), number.national());
        Ok((
            Self {
                e164,
                country,
                calling_code: number.country().code(),
            },
            number_type,
        ))
    }

    /// Rebuilds a number read back from storage, where it was stored already validated.
    pub fn from_stored(e164: String, country: String) -> Self {
        let calling_code = phonenumber::metadata::DATABASE
            .by_id(country.as_str())
            .map_or(0, |metadata| metadata.country_code());
        Self {
            e164,
            country,
            calling_code,
        }
    }

    /// Digits in the country calling code (`49` → 2).
    pub fn calling_code_len(&self) -> usize {
        self.calling_code.to_string().len()
    }

    /// The full number. Only for the SMS provider and the store; never for logs or responses.
    pub fn e164(&self) -> &str {
        &self.e164
    }

    /// ISO 3166 alpha-2 country of the number.
    pub fn country(&self) -> &str {
        &self.country
    }

    /// The number with all but the first four and last two digits hidden: `+491*******89`.
    pub fn masked(&self) -> String {
        mask(&self.e164)
    }
}

/// One number-type pattern of a region's metadata, compiled once and anchored at the start:
/// the crate's `Descriptor::is_match` (the possible lengths, then a match from the first
/// digit) without its global regex cache, whose lock and pattern hashing were most of a
/// refused start's number parsing.
struct Pattern {
    lengths: Vec<u16>,
    regex: regex::Regex,
}

impl Pattern {
    fn new(descriptor: &phonenumber::metadata::Descriptor) -> Option<Self> {
        // `^(?:p)` matches iff some match of `p` starts at 0, which is when the crate's
        // leftmost `find` starts at 0. The metadata's patterns are laid out over several
        // lines: the crate compiles them ignoring whitespace, and so does this.
        let source = format!("^(?:{}\n)", descriptor.national_number().as_str());
        let regex = regex::RegexBuilder::new(&source)
            .ignore_whitespace(true)
            .build()
            .ok()?;
        Some(Self {
            lengths: descriptor.possible_length().to_vec(),
            regex,
        })
    }

    fn is_match(&self, national: &str) -> bool {
        (self.lengths.is_empty() || self.lengths.contains(&(national.len() as u16)))
            && self.regex.is_match(national)
    }
}

/// A region's number types in the order `phonenumber::validator::number_type` tries them.
struct Patterns {
    general: Pattern,
    /// Premium rate, toll free, shared cost, VoIP, personal, pager, UAN, voicemail.
    special: Vec<(Type, Pattern)>,
    fixed_line: Option<Pattern>,
    mobile: Option<Pattern>,
    /// The region's fixed-line and mobile patterns are the same text.
    fixed_is_mobile: bool,
}

impl Patterns {
    /// The region's patterns, or `None` if one does not compile here (the crate compiled it,
    /// so this should not happen): a type left out would let, say, a premium-rate number pass
    /// as mobile, so such a region is typed by the crate instead.
    fn new(meta: &phonenumber::metadata::Metadata) -> Option<Self> {
        let d = meta.descriptors();
        // `Some(None)` for a type the region lacks, `None` for a pattern that did not compile.
        let compiled = |descriptor: Option<&phonenumber::metadata::Descriptor>| match descriptor {
            None => Some(None),
            Some(descriptor) => Pattern::new(descriptor).map(Some),
        };
        let mut special = Vec::new();
        for (kind, descriptor) in [
            (Type::PremiumRate, d.premium_rate()),
            (Type::TollFree, d.toll_free()),
            (Type::SharedCost, d.shared_cost()),
            (Type::Voip, d.voip()),
            (Type::PersonalNumber, d.personal_number()),
            (Type::Pager, d.pager()),
            (Type::Uan, d.uan()),
            (Type::Voicemail, d.voicemail()),
        ] {
            if let Some(pattern) = compiled(descriptor)? {
                special.push((kind, pattern));
            }
        }
        let text = |descriptor: Option<&phonenumber::metadata::Descriptor>| {
            descriptor.map(|d| d.national_number().as_str().to_owned())
        };
        Some(Self {
            general: Pattern::new(d.general())?,
            special,
            fixed_line: compiled(d.fixed_line())?,
            mobile: compiled(d.mobile())?,
            fixed_is_mobile: text(d.fixed_line()) == text(d.mobile()),
        })
    }

    /// `phonenumber::validator::number_type`, step for step.
    fn number_type(&self, national: &str) -> Type {
        if !self.general.is_match(national) {
            return Type::Unknown;
        }
        if let Some((kind, _)) = self.special.iter().find(|(_, p)| p.is_match(national)) {
            return *kind;
        }
        let mobile = |national| self.mobile.as_ref().is_some_and(|p| p.is_match(national));
        if self
            .fixed_line
            .as_ref()
            .is_some_and(|p| p.is_match(national))
        {
            if self.fixed_is_mobile || mobile(national) {
                return Type::FixedLineOrMobile;
            }
            return Type::FixedLine;
        }
        if mobile(national) {
            return Type::Mobile;
        }
        Type::Unknown
    }
}

/// Compiled patterns by region, each compiled on the region's first number. Keyed by the
/// address of the region's metadata in the crate's static database, which lives as long as
/// the process (the id "001" names several non-geographic codes).
static PATTERNS: std::sync::LazyLock<
    std::sync::RwLock<std::collections::HashMap<usize, Option<std::sync::Arc<Patterns>>>>,
> = std::sync::LazyLock::new(Default::default);

/// The number's type as `phonenumber::PhoneNumber::number_type` gives it.
fn classify(number: &phonenumber::PhoneNumber) -> Type {
    let Some(meta) = number.metadata(&phonenumber::metadata::DATABASE) else {
        return Type::Unknown;
    };
    let key = std::ptr::from_ref(meta) as usize;
    let known = PATTERNS
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .get(&key)
        .cloned();
    let patterns = match known {
        Some(patterns) => patterns,
        None => PATTERNS
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .entry(key)
            .or_insert_with(|| Patterns::new(meta).map(std::sync::Arc::new))
            .clone(),
    };
    match patterns {
        Some(patterns) => patterns.number_type(&number.national().value().to_string()),
        None => number.number_type(&phonenumber::metadata::DATABASE),
    }
}

static METADATA_LOADED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Loads the phone-number metadata (the `phonenumber` crate parses it on first use, which
/// takes ≈ 0.1 s in release and up to a second in debug) so no buyer's first start pays it.
/// Blocking: run it off the async threads.
pub fn load_metadata() {
    let _ = phonenumber::parse(None, "+4915123456789");
    METADATA_LOADED.store(true, std::sync::atomic::Ordering::Release);
}

/// Whether [`load_metadata`] has finished; `/readyz` waits for it.
pub fn metadata_loaded() -> bool {
    METADATA_LOADED.load(std::sync::atomic::Ordering::Acquire)
}

/// Masks any phone-like string, keeping the leading `+` and three digits and the last two.
pub fn mask(number: &str) -> String {
    let chars: Vec<char> = number.chars().collect();
    let keep_head = 4.min(chars.len());
    let keep_tail = 2.min(chars.len().saturating_sub(keep_head));
    chars
        .iter()
        .enumerate()
        .map(|(i, c)| {
            if i < keep_head || i >= chars.len() - keep_tail {
                *c
            } else {
                '*'
            }
        })
        .collect()
}

impl fmt::Debug for PhoneNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PhoneNumber({})", self.masked())
    }
}

impl fmt::Display for PhoneNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.masked())
    }
}

/// Only what people write in a phone number: digits, spaces, `-`, `.`, `(`, `)`, and one `+`
/// in front. libphonenumber would read letters as keypad digits (`+49 151 2345678a` → …82) and
/// skip NUL, zero-width spaces or a second `+`: such input is refused, never "repaired".
fn is_plain_number(input: &str) -> bool {
    let trimmed = input.trim_matches(' ');
    let digits = trimmed.strip_prefix('+').unwrap_or(trimmed);
    digits.bytes().any(|b| b.is_ascii_digit())
        && digits
            .chars()
            .all(|c| c.is_ascii_digit() || matches!(c, ' ' | '-' | '.' | '(' | ')'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use phonenumber::Mode;

    fn any() -> Vec<String> {
        Vec::new()
    }

    #[test]
    fn validity_is_the_crates_is_valid_over_a_spread_of_numbers() {
        // Every length from 1 to 16 national digits over the prefixes of several countries
        // (codes with several regions, +1 and +7; +7 8…, whose national prefix is read as
        // leading zeros; the non-geographic +881), valid or not: classifying once must accept
        // exactly what `phonenumber::is_valid` accepts.
        let mut checked = 0;
        let mut valid = 0;
        let mut types = std::collections::BTreeSet::new();
        for code in ["1", "7", "33", "44", "46", "49", "358", "881", "979"] {
            for lead in [
                "1", "15", "151", "17", "2", "20", "212", "3", "4", "5", "6", "70", "76", "8",
                "800", "9", "900",
            ] {
                for len in 1..=16_usize {
                    let tail: String = "4738291056473829"
                        .chars()
                        .take(len.saturating_sub(lead.len()))
                        .collect();
                    let input = format!("+{code}{lead}{tail}");
                    // As before: valid, no extension, and of a country (not +881's "001").
                    let expected = phonenumber::parse(None, &input).is_ok_and(|number| {
                        phonenumber::is_valid(&number)
                            && number.extension().is_none()
                            && number.country().id().is_some()
                    });
                    let ours = PhoneNumber::parse_valid(&input, None);
                    assert_eq!(ours.is_ok(), expected, "{input}");
                    if let Ok((ours, _)) = ours {
                        let number = phonenumber::parse(None, &input).expect("parsed");
                        assert_eq!(ours.e164, number.format().mode(Mode::E164).to_string());
                    }
                    // Our compiled patterns type every number as the crate does.
                    if let Ok(number) = phonenumber::parse(None, &input) {
                        let theirs = number.number_type(&phonenumber::metadata::DATABASE);
                        assert_eq!(classify(&number), theirs, "{input}");
                        types.insert(format!("{theirs:?}"));
                    }
                    checked += 1;
                    valid += usize::from(expected);
                }
            }
        }
        assert!(
            valid > 50 && valid < checked / 2,
            "{valid} of {checked} valid: the table must hold both kinds"
        );
        // Mobile, fixed line, the special types and unknown all occur.
        assert!(types.len() >= 6, "{types:?}");
    }

    #[test]
    fn mobile_numbers_are_normalised_to_e164() {
        let cases = [
            ("+49 151 23456789", None, "+4915123456789", "DE"),
            ("0151 23456789", Some("DE"), "+4915123456789", "DE"),
            ("+46 70 123 45 67", None, "+46701234567", "SE"),
            ("070-123 45 67", Some("SE"), "+46701234567", "SE"),
            ("+49 (151) 234.567-89", None, "+4915123456789", "DE"),
            (" +49 151 23456789 ", None, "+4915123456789", "DE"),
        ];
        for (input, hint, e164, country) in cases {
            let number =
                PhoneNumber::parse(input, hint, &any()).unwrap_or_else(|e| panic!("{input}: {e}"));
            assert_eq!(number.e164(), e164, "{input}");
            assert_eq!(number.country(), country, "{input}");
        }
    }

    #[test]
    fn non_mobile_and_invalid_numbers_are_refused_with_their_cause() {
        let cases = [
            ("+49 900 1234567", PhoneError::PremiumRate),
            ("+49 180 1234567", PhoneError::SharedCost),
            ("+44 56 1234 5678", PhoneError::Voip),
            ("+49 30 12345678", PhoneError::FixedLine),
            ("+49 800 1234567", PhoneError::NotMobile("toll-free")),
            ("12345", PhoneError::Invalid),
            ("not a number", PhoneError::Invalid),
            ("+49 151 234", PhoneError::Invalid),
            // Letters are keypad digits to libphonenumber (…678a → …6782): refused.
            ("+49 151 2345678a", PhoneError::Invalid),
            ("+49 151 CALLME12", PhoneError::Invalid),
            ("+49 151 2345678\0", PhoneError::Invalid),
            ("+49 151\u{200b}23456789", PhoneError::Invalid),
            ("++49 151 23456789", PhoneError::Invalid),
            ("+49 +151 23456789", PhoneError::Invalid),
            ("+49/151/23456789", PhoneError::Invalid),
            ("\t+49 151 23456789", PhoneError::Invalid),
            ("+", PhoneError::Invalid),
        ];
        for (input, expected) in cases {
            assert_eq!(
                PhoneNumber::parse(input, None, &any()),
                Err(expected),
                "{input}"
            );
        }
    }

    #[test]
    fn numbers_outside_the_allowed_countries_are_refused() {
        let allowed = vec!["DE".to_owned(), "AT".to_owned()];
        assert_eq!(
            PhoneNumber::parse("+46701234567", None, &allowed),
            Err(PhoneError::CountryNotAllowed("SE".into()))
        );
        assert!(PhoneNumber::parse("+4915123456789", None, &allowed).is_ok());
    }

    #[test]
    fn masking_hides_the_middle_digits() {
        let number = PhoneNumber::parse("+4915123456789", None, &any()).expect("valid");
        assert_eq!(number.masked(), "+491********89");
        assert!(!format!("{number:?} {number}").contains("15123456789"));
    }
}
