//! How many SMS segments a text takes: GSM-7 (with its extension table) when every character
//! fits, else UCS-2.

/// The GSM 03.38 basic character set (one septet each).
const GSM7_BASIC: &str = "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞ\u{1b}ÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?\
¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà";
/// The extension table (two septets each: escape + character).
const GSM7_EXTENSION: &str = "^{}\\[~]|€\u{0c}";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    Gsm7,
    Ucs2,
}

/// The encoding, its length in septets (GSM-7) or UTF-16 code units (UCS-2), and the segments.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentCount {
    pub encoding: Encoding,
    pub units: usize,
    pub segments: usize,
}

/// Whether `c` fits GSM-7 (basic or extension table).
pub fn is_gsm7(c: char) -> bool {
    GSM7_BASIC.contains(c) || GSM7_EXTENSION.contains(c)
}

/// Counts segments: 160 septets or 70 UCS-2 units fit one SMS; longer texts are split into
/// parts of 153 septets or 67 units (the rest holds the concatenation header).
pub fn count(text: &str) -> SegmentCount {
    let mut septets = 0;
    for c in text.chars() {
        if GSM7_BASIC.contains(c) {
            septets += 1;
        } else if GSM7_EXTENSION.contains(c) {
            septets += 2;
        } else {
            let units = text.encode_utf16().count();
            return SegmentCount {
                encoding: Encoding::Ucs2,
                units,
                segments: parts(units, 70, 67),
            };
        }
    }
    SegmentCount {
        encoding: Encoding::Gsm7,
        units: septets,
        segments: parts(septets, 160, 153),
    }
}

fn parts(units: usize, single: usize, multi: usize) -> usize {
    match units {
        0 => 0,
        n if n <= single => 1,
        n => n.div_ceil(multi),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_follow_gsm7_and_ucs2_limits() {
        let cases = [
            ("a".repeat(160), Encoding::Gsm7, 160, 1),
            ("a".repeat(161), Encoding::Gsm7, 161, 2),
            ("€".repeat(80), Encoding::Gsm7, 160, 1),
            (
                "Köp för 49,90 kr: kod 123456".to_owned(),
                Encoding::Gsm7,
                28,
                1,
            ),
            ("ł".repeat(70), Encoding::Ucs2, 70, 1),
            ("ł".repeat(71), Encoding::Ucs2, 71, 2),
            ("😀".to_owned(), Encoding::Ucs2, 2, 1),
        ];
        for (text, encoding, units, segments) in cases {
            assert_eq!(
                count(&text),
                SegmentCount {
                    encoding,
                    units,
                    segments
                },
                "{text:?}"
            );
        }
    }
}
