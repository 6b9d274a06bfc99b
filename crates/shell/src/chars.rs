//! Go's `unicode` predicates, which decide what a variable name is and where
//! words split.

use unicode_general_category::{get_general_category, GeneralCategory};

/// Go's `unicode.IsLetter`: general category L (Lu, Ll, Lt, Lm, Lo).
pub(crate) fn is_go_letter(ch: char) -> bool {
    if ch.is_ascii() {
        return ch.is_ascii_alphabetic();
    }
    matches!(
        get_general_category(ch),
        GeneralCategory::UppercaseLetter
            | GeneralCategory::LowercaseLetter
            | GeneralCategory::TitlecaseLetter
            | GeneralCategory::ModifierLetter
            | GeneralCategory::OtherLetter
    )
}

/// Go's `unicode.IsDigit`: general category Nd.
pub(crate) fn is_go_digit(ch: char) -> bool {
    if ch.is_ascii() {
        return ch.is_ascii_digit();
    }
    get_general_category(ch) == GeneralCategory::DecimalNumber
}

/// Go's `unicode.IsSpace`: the Unicode White_Space property, which is what
/// `char::is_whitespace` implements.
pub(crate) fn is_go_space(ch: char) -> bool {
    ch.is_whitespace()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn letters_are_category_l_only() {
        assert!(is_go_letter('a') && is_go_letter('Z') && is_go_letter('한'));
        assert!(is_go_letter('ʰ')); // Lm
        assert!(!is_go_letter('_') && !is_go_letter('1'));
        assert!(!is_go_letter('\u{0301}')); // combining acute: Mn, alphabetic in std
        assert!(!is_go_letter('Ⅻ')); // Nl, alphabetic in std
    }

    #[test]
    fn digits_are_category_nd_only() {
        assert!(is_go_digit('0') && is_go_digit('٣')); // Arabic-Indic three
        assert!(!is_go_digit('²')); // No, numeric in std
        assert!(!is_go_digit('Ⅻ'));
    }

    #[test]
    fn spaces() {
        for ch in [
            ' ', '\t', '\n', '\u{b}', '\u{c}', '\r', '\u{85}', '\u{a0}', '\u{3000}',
        ] {
            assert!(is_go_space(ch), "{ch:?}");
        }
        assert!(!is_go_space('\u{200b}'));
        assert!(!is_go_space('x'));
    }
}
