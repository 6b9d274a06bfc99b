//! The shell patterns of `${v#p}`, `${v%p}` and `${v/p/r}`.
//!
//! BuildKit turns a pattern into a Go regular expression (`*` becomes `.*` or
//! `.*?`, `?` becomes `.`, everything else literal) and uses Go's leftmost-first
//! matching. This module matches the same language directly: a backtracking
//! search in the same priority order, memoised so it stays polynomial. Like
//! Go's `.`, the wildcards never match a newline. There are no bracket
//! expressions: `[` and `]` are literal characters, as in BuildKit.

use crate::chars::{is_go_digit, is_go_letter};
use crate::error::{ErrorKind, PatternError};

/// The most states (pattern positions × text positions, both plus one) one
/// match may explore: the memo of explored states is one `u32` per state,
/// so this bounds it to 64 MiB (untouched pages cost nothing).
pub(crate) const MAX_STATES: usize = 1 << 24;

/// The most steps one trim or substitution may take over all its matches
/// (about a second of work): a guard against patterns like `*a*a*a...b`
/// replaced over a long value, which no real Dockerfile writes.
pub(crate) const MAX_STEPS: u64 = 1 << 27;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Token {
    Literal(char),
    /// `?`: one character other than a newline.
    Any,
    /// `*`: any run of characters other than newlines.
    Star,
}

/// A compiled pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Pattern {
    tokens: Vec<Token>,
    /// `*` prefers the longest run (`.*`) instead of the shortest (`.*?`).
    greedy: bool,
    /// Only match at the start of the text (`^`).
    anchored: bool,
}

impl Pattern {
    /// Compiles `pattern`. Valid escapes are `\*`, `\?` and `\\`; a backslash
    /// before `}` or `/` is dropped (it only kept the delimiter out of the
    /// way); any other escape is an error.
    pub(crate) fn compile(
        pattern: &str,
        greedy: bool,
        anchored: bool,
    ) -> Result<Pattern, PatternError> {
        let mut tokens = Vec::new();
        let mut chars = pattern.chars().peekable();
        while let Some(ch) = chars.next() {
            let token = match ch {
                '*' => Token::Star,
                '?' => Token::Any,
                '\\' => match chars.peek().copied() {
                    Some('}' | '/') => continue,
                    Some(next @ ('*' | '?' | '\\')) => {
                        chars.next();
                        Token::Literal(next)
                    }
                    Some(next) => return Err(PatternError::InvalidEscape(next)),
                    None => return Err(PatternError::TrailingEscape),
                },
                other => Token::Literal(other),
            };
            tokens.push(token);
        }
        Ok(Pattern {
            tokens,
            greedy,
            anchored,
        })
    }

    /// The leftmost-first match in `text` starting at or after `from`, as
    /// `(start, end)` character indices.
    fn find_from(
        &self,
        text: &[char],
        from: usize,
        memo: &mut Memo,
    ) -> Result<Option<(usize, usize)>, ErrorKind> {
        let last_start = if self.anchored {
            if from > 0 {
                return Ok(None);
            }
            0
        } else {
            text.len()
        };
        for start in from..=last_start {
            if let Some(end) = self.match_at(text, start, memo)? {
                memo.forget();
                return Ok(Some((start, end)));
            }
        }
        Ok(None)
    }

    /// The end of the preferred match that starts exactly at `start`.
    ///
    /// Depth-first search over states (token index, text index), trying the
    /// alternatives in the order a backtracking engine would. Every transition
    /// moves forward, so a state popped a second time was already explored
    /// without success; `memo` remembers those (until a match is found).
    fn match_at(
        &self,
        text: &[char],
        start: usize,
        memo: &mut Memo,
    ) -> Result<Option<usize>, ErrorKind> {
        let mut stack = vec![(0usize, start)];
        while let Some((ti, si)) = stack.pop() {
            if !memo.visit(ti, si)? {
                continue;
            }
            let Some(token) = self.tokens.get(ti) else {
                return Ok(Some(si));
            };
            let current = text.get(si).copied();
            match *token {
                Token::Literal(want) => {
                    if current == Some(want) {
                        stack.push((ti + 1, si + 1));
                    }
                }
                Token::Any => {
                    if current.is_some_and(|c| c != '\n') {
                        stack.push((ti + 1, si + 1));
                    }
                }
                Token::Star => {
                    let can_take = current.is_some_and(|c| c != '\n');
                    // The stack pops last-pushed first: push the less preferred
                    // alternative first.
                    if self.greedy {
                        stack.push((ti + 1, si));
                        if can_take {
                            stack.push((ti, si + 1));
                        }
                    } else {
                        if can_take {
                            stack.push((ti, si + 1));
                        }
                        stack.push((ti + 1, si));
                    }
                }
            }
        }
        Ok(None)
    }

    /// The memo for matching this pattern against `chars` characters, or
    /// the error when that could explore more than [`MAX_STATES`] states.
    fn memo(&self, chars: usize) -> Result<Memo, ErrorKind> {
        let too_costly = || ErrorKind::PatternTooCostly {
            parts: self.tokens.len(),
            chars,
        };
        match (self.tokens.len() + 1).checked_mul(chars.saturating_add(1)) {
            Some(states) if states <= MAX_STATES => Ok(Memo::new(states, chars + 1, too_costly())),
            _ => Err(too_costly()),
        }
    }

    /// The first match in `text`, as character indices.
    pub(crate) fn find(&self, text: &[char]) -> Result<Option<(usize, usize)>, ErrorKind> {
        let mut memo = self.memo(text.len())?;
        self.find_from(text, 0, &mut memo)
    }

    /// Replaces every match like Go's `Regexp.ReplaceAllString`: an empty
    /// match right after a previous match is skipped, and `template` is
    /// expanded per match (`$0`/`${0}` is the match, `$$` a dollar, other
    /// valid references are empty, a malformed `$` is literal).
    ///
    /// The result may not grow beyond `max_len` bytes: the length is checked
    /// before each piece is appended, so an expansion like `${v//a/aaaa}`
    /// nested a few times fails instead of allocating gigabytes.
    pub(crate) fn replace_all(
        &self,
        text: &str,
        template: &str,
        max_len: usize,
    ) -> Result<String, ErrorKind> {
        let chars: Vec<char> = text.chars().collect();
        let mut memo = self.memo(chars.len())?;
        let mut out = Bounded::new(max_len);
        let mut last_end = 0;
        let mut search = 0;
        while search <= chars.len() {
            let Some((start, end)) = self.find_from(&chars, search, &mut memo)? else {
                break;
            };
            out.push_chars(&chars[last_end..start])?;
            if end > last_end || start == 0 {
                let matched: String = chars[start..end].iter().collect();
                expand_template(&mut out, template, &matched)?;
            }
            last_end = end;
            search = if end > search { end } else { search + 1 };
        }
        out.push_chars(&chars[last_end..])?;
        Ok(out.text)
    }
}

/// A string that refuses to grow beyond a limit, checked before appending.
pub(crate) struct Bounded {
    text: String,
    max_len: usize,
}

impl Bounded {
    pub(crate) fn new(max_len: usize) -> Bounded {
        Bounded {
            text: String::new(),
            max_len,
        }
    }

    fn room(&self, more: usize) -> Result<(), ErrorKind> {
        if self.text.len().saturating_add(more) > self.max_len {
            return Err(ErrorKind::TooLong {
                limit: self.max_len,
            });
        }
        Ok(())
    }

    pub(crate) fn push_str(&mut self, piece: &str) -> Result<(), ErrorKind> {
        self.room(piece.len())?;
        self.text.push_str(piece);
        Ok(())
    }

    pub(crate) fn push(&mut self, ch: char) -> Result<(), ErrorKind> {
        self.room(ch.len_utf8())?;
        self.text.push(ch);
        Ok(())
    }

    pub(crate) fn push_chars(&mut self, chars: &[char]) -> Result<(), ErrorKind> {
        self.room(chars.iter().map(|c| c.len_utf8()).sum())?;
        self.text.extend(chars);
        Ok(())
    }

    pub(crate) fn into_string(self) -> String {
        self.text
    }
}

/// States already explored without a match, in the current search, and the
/// steps taken so far by the whole operation.
struct Memo {
    stamps: Vec<u32>,
    width: usize,
    generation: u32,
    steps: u64,
    /// The error to return once the steps run out.
    too_costly: ErrorKind,
}

impl Memo {
    /// `states` is at most [`MAX_STATES`] (checked by `Pattern::memo`).
    fn new(states: usize, width: usize, too_costly: ErrorKind) -> Memo {
        Memo {
            stamps: vec![0; states],
            width,
            generation: 1,
            steps: 0,
            too_costly,
        }
    }

    /// Marks the state; false when it was already marked. Fails once the
    /// operation has taken [`MAX_STEPS`] steps.
    fn visit(&mut self, token: usize, position: usize) -> Result<bool, ErrorKind> {
        self.steps += 1;
        if self.steps > MAX_STEPS {
            return Err(self.too_costly.clone());
        }
        Ok(match self.stamps.get_mut(token * self.width + position) {
            Some(stamp) if *stamp == self.generation => false,
            Some(stamp) => {
                *stamp = self.generation;
                true
            }
            None => true,
        })
    }

    /// After a match the marks no longer mean "fails": start afresh.
    fn forget(&mut self) {
        if self.generation == u32::MAX {
            self.stamps.iter_mut().for_each(|s| *s = 0);
            self.generation = 1;
        } else {
            self.generation += 1;
        }
    }
}

/// Appends `template` with Go's `Regexp.Expand` rules for a regexp without
/// capture groups.
fn expand_template(out: &mut Bounded, template: &str, matched: &str) -> Result<(), ErrorKind> {
    let mut rest = template;
    while let Some(dollar) = rest.find('$') {
        out.push_str(&rest[..dollar])?;
        rest = &rest[dollar + 1..];
        if let Some(after) = rest.strip_prefix('$') {
            out.push('$')?;
            rest = after;
            continue;
        }
        match template_reference(rest) {
            Some((group, after)) => {
                if group == Some(0) {
                    out.push_str(matched)?;
                }
                rest = after;
            }
            None => out.push('$')?,
        }
    }
    out.push_str(rest)
}

/// Parses `name`, `{name}` after a `$`: the group number (None for a name
/// that is not a number) and the rest of the template.
fn template_reference(text: &str) -> Option<(Option<u32>, &str)> {
    let (braced, body) = match text.strip_prefix('{') {
        Some(body) => (true, body),
        None => (false, text),
    };
    let end = body
        .char_indices()
        .find(|&(_, c)| !(is_go_letter(c) || is_go_digit(c) || c == '_'))
        .map_or(body.len(), |(i, _)| i);
    if end == 0 {
        return None;
    }
    let name = &body[..end];
    let mut rest = &body[end..];
    if braced {
        rest = rest.strip_prefix('}')?;
    }
    let mut number: Option<u32> = Some(0);
    for byte in name.bytes() {
        number = match number {
            Some(n) if byte.is_ascii_digit() && n < 100_000_000 => {
                Some(n * 10 + u32::from(byte - b'0'))
            }
            _ => None,
        };
    }
    if name.len() > 1 && name.starts_with('0') {
        number = None;
    }
    Some((number, rest))
}

/// Reverses a pattern keeping each escape (`\x`) in front of its character,
/// so that matching a reversed pattern against a reversed text finds
/// suffixes.
pub(crate) fn reverse_pattern(pattern: &str) -> String {
    let mut units: Vec<String> = Vec::new();
    let mut chars = pattern.chars();
    while let Some(ch) = chars.next() {
        let mut unit = String::from(ch);
        if ch == '\\' {
            if let Some(next) = chars.next() {
                unit.push(next);
            }
        }
        units.push(unit);
    }
    units.into_iter().rev().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn find(pattern: &str, greedy: bool, anchored: bool, text: &str) -> Option<String> {
        let pattern = Pattern::compile(pattern, greedy, anchored).expect("valid pattern");
        let chars: Vec<char> = text.chars().collect();
        pattern
            .find(&chars)
            .expect("within the limits")
            .map(|(s, e)| chars[s..e].iter().collect())
    }

    #[test]
    fn lazy_and_greedy_star_at_the_start() {
        assert_eq!(find("*x", false, true, "axbxc").as_deref(), Some("ax"));
        assert_eq!(find("*x", true, true, "axbxc").as_deref(), Some("axbx"));
        assert_eq!(find("*", false, true, "abc").as_deref(), Some(""));
        assert_eq!(find("*", true, true, "abc").as_deref(), Some("abc"));
        assert_eq!(find("*x*y", false, true, "xxyy").as_deref(), Some("xxy"));
    }

    #[test]
    fn anchored_patterns_only_match_at_the_start() {
        assert_eq!(find("b", true, true, "abc"), None);
        assert_eq!(find("b", true, false, "abc").as_deref(), Some("b"));
        assert_eq!(find("a", true, true, "").as_deref(), None);
        assert_eq!(find("", true, true, "").as_deref(), Some(""));
    }

    #[test]
    fn unanchored_search_is_leftmost_then_preferred() {
        assert_eq!(find("b*", true, false, "abcbd").as_deref(), Some("bcbd"));
        assert_eq!(find("b*", false, false, "abcbd").as_deref(), Some("b"));
        assert_eq!(find("?b", true, false, "abab").as_deref(), Some("ab"));
    }

    #[test]
    fn wildcards_do_not_match_newlines() {
        assert_eq!(find("a*", true, true, "ab\ncd").as_deref(), Some("ab"));
        assert_eq!(find("a?c", true, true, "a\nc"), None);
        assert_eq!(find("\n", true, true, "\n").as_deref(), Some("\n"));
    }

    #[test]
    fn brackets_and_regex_metacharacters_are_literal() {
        assert_eq!(find("[ab]", true, true, "[ab]x").as_deref(), Some("[ab]"));
        assert_eq!(find("[ab]", true, true, "ax"), None);
        assert_eq!(
            find("().^$|+{", true, true, "().^$|+{").as_deref(),
            Some("().^$|+{")
        );
    }

    #[test]
    fn escapes() {
        assert_eq!(find(r"\*", true, true, "*x").as_deref(), Some("*"));
        assert_eq!(find(r"\*", true, true, "ax"), None);
        assert_eq!(find(r"\?\\", true, true, r"?\z").as_deref(), Some(r"?\"));
        assert_eq!(find(r"\}\/", true, true, "}/").as_deref(), Some("}/"));
        assert_eq!(
            Pattern::compile(r"\x", true, true),
            Err(PatternError::InvalidEscape('x'))
        );
        assert_eq!(
            Pattern::compile("\\", true, true),
            Err(PatternError::TrailingEscape)
        );
        assert_eq!(
            Pattern::compile(r"\\\", true, true),
            Err(PatternError::TrailingEscape)
        );
    }

    #[test]
    fn unicode_is_matched_by_character() {
        assert_eq!(find("?", true, true, "한국어").as_deref(), Some("한"));
        assert_eq!(
            find("*어", false, true, "한국어어").as_deref(),
            Some("한국어")
        );
    }

    #[test]
    fn reversing_keeps_escapes_in_front() {
        assert_eq!(reverse_pattern(r"a\*c"), r"c\*a");
        assert_eq!(reverse_pattern(r"\\\ab"), r"b\a\\");
        assert_eq!(reverse_pattern("ab\\"), r"\ba");
        assert_eq!(reverse_pattern("👽\\🚀🖖"), "🖖\\🚀👽");
        assert_eq!(reverse_pattern(r"\\b"), r"b\\");
    }

    fn replace_all(pattern: &str, text: &str, template: &str) -> String {
        Pattern::compile(pattern, true, false)
            .expect("valid pattern")
            .replace_all(text, template, usize::MAX)
            .expect("within the limits")
    }

    #[test]
    fn replace_all_follows_go() {
        assert_eq!(replace_all("a", "banana", "o"), "bonono");
        assert_eq!(replace_all("", "abc", "x"), "xaxbxcx");
        assert_eq!(replace_all("*", "abc", "x"), "x");
        assert_eq!(replace_all("b*", "abc", "x"), "ax");
        assert_eq!(replace_all("?", "", "x"), "");
        assert_eq!(replace_all("", "", "x"), "x");
        assert_eq!(replace_all("*", "a\nb", "x"), "x\nx");
    }

    #[test]
    fn replace_all_expands_templates() {
        assert_eq!(replace_all("a", "xay", "[$0]"), "x[a]y");
        assert_eq!(replace_all("a", "xay", "[${0}]"), "x[a]y");
        assert_eq!(replace_all("a", "xay", "$$"), "x$y");
        assert_eq!(replace_all("a", "xay", "$1"), "xy");
        assert_eq!(replace_all("a", "xay", "$name!"), "x!y");
        assert_eq!(replace_all("a", "xay", "$0b"), "xy");
        assert_eq!(replace_all("a", "xay", "${0}b"), "xaby");
        assert_eq!(replace_all("a", "xay", "$00"), "xy");
        assert_eq!(replace_all("a", "xay", "$"), "x$y");
        assert_eq!(replace_all("a", "xay", "$.{"), "x$.{y");
        assert_eq!(replace_all("a", "xay", "${0"), "x${0y");
        assert_eq!(replace_all("a", "xay", r"\/"), r"x\/y");
    }

    #[test]
    fn pathological_patterns_stay_fast() {
        let text = "a".repeat(3000);
        let pattern = "*a".repeat(40) + "b";
        let started = std::time::Instant::now();
        assert_eq!(find(&pattern, true, false, &text), None);
        assert_eq!(find(&pattern, false, true, &text), None);
        assert_eq!(replace_all(&pattern, &text, "x"), text);
        assert!(started.elapsed() < std::time::Duration::from_secs(20));
    }
}
