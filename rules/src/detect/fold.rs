//! Text folding for the injection detector.
//!
//! Folding makes one canonical lowercase ASCII-leaning view of a text: NFKC, invisible
//! characters dropped (Unicode tags turned back into the ASCII they hide), diacritics
//! removed (`précédentes` reads `precedentes`), Cyrillic and Greek look-alikes mapped to
//! the Latin letters they imitate, whitespace collapsed. The squeezed view
//! ([`super::squeeze`]) and the decoding layers ([`super::decode`]) build on it.
//!
//! Prompts are mostly ASCII, so every pass here walks bytes and only decodes the
//! characters that are not.

use unicode_normalization::char::decompose_canonical;
use unicode_normalization::UnicodeNormalization;

/// NFKC plus removal of zero-width, bidi and other invisible format characters.
///
/// Only the non-ASCII runs go through NFKC, each with the ASCII character before it (a
/// combining mark may compose with it): ASCII is already NFKC, is its own starter and
/// never composes with what precedes it, so the result is the same as normalizing the
/// whole text, at a fraction of the cost on mostly-ASCII prompts.
pub(crate) fn strip_invisible(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    strip_invisible_into(text, &mut out);
    out
}

/// [`strip_invisible`] appending to `out`.
pub(crate) fn strip_invisible_into(text: &str, out: &mut String) {
    let bytes = text.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let Some(off) = bytes[i..].iter().position(|b| !b.is_ascii()) else {
            out.push_str(&text[i..]);
            return;
        };
        let first = i + off;
        // The starter before the run goes through NFKC with it.
        let start = if first > i { first - 1 } else { first };
        out.push_str(&text[i..start]);
        let end = bytes[first..]
            .iter()
            .position(u8::is_ascii)
            .map_or(bytes.len(), |n| first + n);
        // invariant: `start` and `end` sit next to ASCII bytes, so on char boundaries.
        push_nfkc_stripped(&text[start..end], out);
        i = end;
    }
}

fn push_nfkc_stripped(run: &str, out: &mut String) {
    for c in run.nfkc() {
        let code = u32::from(c);
        if (0xE0020..=0xE007E).contains(&code) {
            // Unicode tag characters mirror ASCII and render as nothing.
            if let Some(ascii) = char::from_u32(code - 0xE0000) {
                out.push(ascii);
            }
            continue;
        }
        if is_invisible(c) {
            continue;
        }
        out.push(match c {
            '\u{2018}' | '\u{2019}' | '\u{201B}' | '\u{2032}' | '\u{02BC}' => '\'',
            '\u{201C}' | '\u{201D}' | '\u{201F}' | '\u{2033}' | '\u{00AB}' | '\u{00BB}'
            | '\u{201E}' => '"',
            other => other,
        });
    }
}

fn is_invisible(c: char) -> bool {
    matches!(
        c,
        '\u{00AD}'
            | '\u{034F}'
            | '\u{061C}'
            | '\u{115F}'
            | '\u{1160}'
            | '\u{17B4}'
            | '\u{17B5}'
            | '\u{180B}'..='\u{180F}'
            | '\u{200B}'..='\u{200F}'
            | '\u{202A}'..='\u{202E}'
            | '\u{2060}'..='\u{206F}'
            | '\u{3164}'
            | '\u{FE00}'..='\u{FE0F}'
            | '\u{FEFF}'
            | '\u{FFA0}'
            | '\u{E0000}'..='\u{E007F}'
            | '\u{E0100}'..='\u{E01EF}'
    )
}

/// A Cyrillic or Greek letter that renders like a Latin one, as that Latin letter.
pub(crate) fn confusable(c: char) -> Option<char> {
    Some(match c {
        'а' | 'α' => 'a',
        'в' | 'β' => 'b',
        'с' | 'ϲ' => 'c',
        'ԁ' => 'd',
        'е' | 'ё' | 'ε' => 'e',
        'һ' => 'h',
        'і' | 'ї' | 'ι' | 'ı' => 'i',
        'ј' => 'j',
        'к' | 'κ' => 'k',
        'м' => 'm',
        'п' | 'η' => 'n',
        'о' | 'ο' | 'σ' => 'o',
        'р' | 'ρ' => 'p',
        'ԛ' => 'q',
        'ѕ' => 's',
        'т' | 'τ' => 't',
        'υ' => 'u',
        'ѵ' | 'ν' => 'v',
        'ԝ' | 'ω' => 'w',
        'х' | 'χ' => 'x',
        'у' | 'γ' => 'y',
        'ɡ' => 'g',
        'ɑ' => 'a',
        _ => return None,
    })
}

/// Lowercase, diacritics removed, look-alikes mapped, whitespace collapsed, other
/// control characters dropped. Expects [`strip_invisible`] output.
pub(crate) fn fold(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    fold_into(text, &mut out);
    out
}

/// [`fold`] appending to `out`. ASCII bytes take a byte loop; only other characters pay
/// for case mapping and decomposition.
pub(crate) fn fold_into(text: &str, out: &mut String) {
    let mut buf = std::mem::take(out).into_bytes();
    fold_bytes(text, &mut buf);
    *out = String::from_utf8(buf).unwrap_or_else(|e| {
        // invariant: only whole UTF-8 sequences are pushed; never taken.
        String::from_utf8_lossy(e.as_bytes()).into_owned()
    });
}

fn fold_bytes(text: &str, out: &mut Vec<u8>) {
    let base = out.len();
    let mut space = false;
    // Cyrillic text stays Cyrillic: mapping look-alikes only pays inside Latin words.
    let latin_context = text.is_ascii() || {
        let (ascii_letters, other_letters) = letter_counts(text);
        ascii_letters * 5 >= ascii_letters + other_letters
    };
    let bytes = text.as_bytes();
    let mut i = 0;
    let mut utf8 = String::new();
    while i < bytes.len() {
        let b = bytes[i];
        if b.is_ascii() {
            i += 1;
            // `char::is_whitespace` on ASCII: space, \t, \n, \x0B, \x0C, \r.
            if matches!(b, b' ' | b'\t' | b'\n' | 0x0B | 0x0C | b'\r') {
                space = true;
                continue;
            }
            if b.is_ascii_control() {
                continue;
            }
            if space && out.len() > base {
                out.push(b' ');
            }
            space = false;
            out.push(b.to_ascii_lowercase());
            continue;
        }
        // invariant: `i` is on a char boundary (ASCII bytes are whole chars).
        let Some(c) = text[i..].chars().next() else {
            break;
        };
        i += c.len_utf8();
        if c.is_whitespace() {
            space = true;
            continue;
        }
        if c.is_control() {
            continue;
        }
        utf8.clear();
        for lower in c.to_lowercase() {
            push_folded(&mut utf8, lower, latin_context);
        }
        if utf8.is_empty() {
            // A dropped mark: a space before it waits for the next visible character, so
            // that folding folded text changes nothing.
            continue;
        }
        if space && out.len() > base {
            out.push(b' ');
        }
        space = false;
        out.extend_from_slice(utf8.as_bytes());
    }
}

/// Latin letters (ASCII, or ASCII with diacritics such as `é`, and `ß`) and other letters,
/// decoding only the non-ASCII characters. An accented letter counts as Latin because
/// folding makes it ASCII: the context then reads the same before and after folding.
fn letter_counts(text: &str) -> (usize, usize) {
    let bytes = text.as_bytes();
    let (mut ascii, mut other) = (0, 0);
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i].is_ascii() {
            ascii += usize::from(bytes[i].is_ascii_alphabetic());
            i += 1;
            continue;
        }
        // invariant: `i` is on a char boundary (ASCII bytes are whole chars).
        let Some(c) = text[i..].chars().next() else {
            break;
        };
        if is_accented_latin(c) {
            ascii += 1;
        } else {
            other += usize::from(c.is_alphabetic());
        }
        i += c.len_utf8();
    }
    (ascii, other)
}

/// `é`, `Ü`, `ß`: a letter whose canonical decomposition starts with an ASCII letter.
fn is_accented_latin(c: char) -> bool {
    if c == 'ß' {
        return true;
    }
    let mut base = None;
    decompose_canonical(c, |d| {
        base.get_or_insert(d);
    });
    base.is_some_and(|b| b.is_ascii_alphabetic())
}

fn push_folded(out: &mut String, c: char, latin_context: bool) {
    if c == 'ß' {
        out.push_str("ss");
        return;
    }
    if latin_context {
        if let Some(latin) = confusable(c) {
            out.push(latin);
            return;
        }
    }
    // Diacritics: keep the base letter of a Latin letter with marks.
    let mut base = None;
    let mut marks_only = true;
    decompose_canonical(c, |d| {
        if base.is_none() {
            base = Some(d);
        } else if !is_combining(d) {
            marks_only = false;
        }
    });
    match base {
        Some(b) if b.is_ascii() && marks_only => out.push(b),
        _ if is_combining(c) => {}
        _ => out.push(c),
    }
}

fn is_combining(c: char) -> bool {
    matches!(c, '\u{0300}'..='\u{036F}' | '\u{1AB0}'..='\u{1AFF}' | '\u{1DC0}'..='\u{1DFF}' | '\u{20D0}'..='\u{20FF}')
}

/// The UTF-8 lead bytes of every character [`shape_signals`] counts: tag characters,
/// invisibles ([`is_invisible`]) and the Cyrillic, Greek and IPA look-alikes
/// ([`confusable`]). Text without any (ASCII, most accented Latin) has no signal.
static SHAPE_LEADS: [bool; 256] = {
    let mut t = [false; 256];
    let leads: [u8; 17] = [
        0xC2, 0xC4, 0xC9, 0xCD, 0xCE, 0xCF, 0xD0, 0xD1, 0xD2, 0xD3, 0xD4, 0xD8, 0xE1, 0xE2, 0xE3,
        0xEA, 0xEF,
    ];
    let mut i = 0;
    while i < leads.len() {
        t[leads[i] as usize] = true;
        i += 1;
    }
    t[0xF3] = true;
    t
};

/// Signs of smuggling in the raw text, before any folding: Unicode tag characters,
/// invisible characters between letters, and words that mix Latin with Cyrillic or Greek
/// look-alikes. Each is an evasion technique that benign text does not need.
pub(crate) fn shape_signals(text: &str) -> [bool; 3] {
    if !text.bytes().any(|b| SHAPE_LEADS[usize::from(b)]) {
        return [false; 3];
    }
    let mut tags = 0usize;
    let mut invisible_between = 0usize;
    let mut mixed_words = 0usize;
    let mut prev_letter = false;
    let mut pending_invisible = 0usize;
    let (mut word_latin, mut word_confusable) = (false, false);
    let bytes = text.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b.is_ascii() {
            // The same steps as below, without decoding a char.
            i += 1;
            if b.is_ascii_alphabetic() {
                invisible_between += pending_invisible;
                word_latin = true;
                prev_letter = true;
            } else {
                if word_latin && word_confusable {
                    mixed_words += 1;
                }
                word_latin = false;
                word_confusable = false;
                prev_letter = false;
            }
            pending_invisible = 0;
            continue;
        }
        // invariant: `i` is on a char boundary (ASCII bytes are whole chars).
        let Some(c) = text[i..].chars().next() else {
            break;
        };
        i += c.len_utf8();
        let code = u32::from(c);
        if (0xE0000..=0xE007F).contains(&code) {
            tags += 1;
            continue;
        }
        if is_invisible(c) {
            if prev_letter {
                pending_invisible += 1;
            }
            continue;
        }
        if c.is_alphabetic() {
            if pending_invisible > 0 {
                invisible_between += pending_invisible;
            }
            if c.is_ascii_alphabetic() {
                word_latin = true;
            } else if confusable(c).is_some()
                || confusable(c.to_lowercase().next().unwrap_or(c)).is_some()
            {
                word_confusable = true;
            }
        } else {
            if word_latin && word_confusable {
                mixed_words += 1;
            }
            word_latin = false;
            word_confusable = false;
        }
        pending_invisible = 0;
        prev_letter = c.is_alphabetic();
    }
    if word_latin && word_confusable {
        mixed_words += 1;
    }
    [tags >= 8, invisible_between >= 8, mixed_words >= 2]
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// NFKC over the whole text, then the same filtering: what [`strip_invisible`] did
    /// before it normalized only the non-ASCII runs.
    fn strip_invisible_whole(text: &str) -> String {
        let mut out = String::new();
        push_nfkc_stripped(text, &mut out);
        out
    }

    /// The char-by-char fold that [`fold_bytes`] speeds up.
    fn fold_by_chars(text: &str) -> String {
        let mut out = String::new();
        let mut space = false;
        let latin = |c: &char| c.is_ascii_alphabetic() || is_accented_latin(*c);
        let latin_context = text.chars().filter(latin).count() * 5
            >= text
                .chars()
                .filter(|c| latin(c) || c.is_alphabetic())
                .count();
        for c in text.chars() {
            if c.is_whitespace() {
                space = true;
                continue;
            }
            if c.is_control() {
                continue;
            }
            let mut folded = String::new();
            for lower in c.to_lowercase() {
                push_folded(&mut folded, lower, latin_context);
            }
            if folded.is_empty() {
                continue;
            }
            if space && !out.is_empty() {
                out.push(' ');
            }
            space = false;
            out.push_str(&folded);
        }
        out
    }

    /// Text mixing ASCII with the characters normalization has to get right: combining
    /// marks after ASCII letters, precomposed letters, compatibility forms, Hangul jamo,
    /// look-alikes, invisibles and tag characters.
    fn tricky_text() -> impl Strategy<Value = String> {
        let pieces = prop::sample::select(vec![
            "a",
            "E",
            "z",
            " ",
            "\n",
            "\t",
            "\r",
            "\x0B",
            "\x01",
            ".",
            "ignore",
            "1",
            "e\u{301}",
            "\u{301}",
            "\u{308}\u{323}",
            "\u{323}\u{308}",
            "é",
            "Ü",
            "ß",
            "ﬁ",
            "①",
            "Ｉ",
            "ｇ",
            "\u{1100}",
            "\u{1161}",
            "\u{11A8}",
            "가",
            "і",
            "о",
            "Σ",
            "ς",
            "\u{200B}",
            "\u{202E}",
            "\u{E0069}",
            "\u{E0041}",
            "\u{2019}",
            "\u{00A0}",
            "\u{3000}",
            "\u{85}",
            "ﾞ",
            "ｶ",
            "\u{FE0F}",
            "İ",
            "\u{1E9E}",
        ]);
        prop::collection::vec(pieces, 0..40).prop_map(|v| v.concat())
    }

    #[test]
    fn a_dropped_mark_after_a_space_leaves_no_trailing_space() {
        assert_eq!(fold(&strip_invisible("A\u{A8}")), "a");
        assert_eq!(fold(&strip_invisible("a \u{301}b")), "a b");
    }

    #[test]
    fn every_character_a_shape_signal_counts_has_its_lead_byte_in_the_prefilter() {
        for code in 0x80..=0x10_FFFFu32 {
            let Some(c) = char::from_u32(code) else {
                continue;
            };
            let lower = c.to_lowercase().next().unwrap_or(c);
            let counted = (0xE0000..=0xE007F).contains(&code)
                || is_invisible(c)
                || confusable(c).is_some()
                || confusable(lower).is_some();
            if counted {
                let mut buf = [0u8; 4];
                let lead = c.encode_utf8(&mut buf).as_bytes()[0];
                assert!(SHAPE_LEADS[usize::from(lead)], "{c:?} U+{code:04X}");
            }
        }
    }

    proptest! {
        #[test]
        fn normalizing_only_the_non_ascii_runs_matches_normalizing_everything(
            text in tricky_text()
        ) {
            prop_assert_eq!(strip_invisible(&text), strip_invisible_whole(&text));
        }

        #[test]
        fn the_byte_fold_matches_the_char_fold(text in tricky_text()) {
            let stripped = strip_invisible(&text);
            prop_assert_eq!(fold(&stripped), fold_by_chars(&stripped));
            prop_assert_eq!(fold(&text), fold_by_chars(&text));
        }
    }

    #[test]
    fn diacritics_and_look_alikes_fold_to_latin() {
        assert_eq!(
            fold(&strip_invisible("Précédentes ÜBER")),
            "precedentes uber"
        );
        assert_eq!(fold(&strip_invisible("іgnоre prevіous")), "ignore previous");
        // Russian stays Russian.
        assert_eq!(fold("Игнорируй"), "игнорируй");
    }
}
