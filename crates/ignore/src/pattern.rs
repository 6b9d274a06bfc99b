use crate::error::PatternErrorKind;

/// One compiled piece of a pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    /// This character.
    Literal(char),
    /// `?`: one character other than `/`.
    AnyChar,
    /// `*`: any run of characters other than `/`.
    Star,
    /// `**` with more pattern after it: nothing, or any text ending in `/`
    /// (BuildKit compiles it to `(.*/)?`, so no newline).
    DirStar,
    /// `**` ending the pattern: any text. BuildKit compares a literal
    /// `foo/**` with a string prefix test (newlines allowed) and otherwise
    /// uses `.*` (no newline); `newline` records which.
    Rest { newline: bool },
    /// `[...]`: one character in (or with `^`, not in) the ranges. As in
    /// BuildKit, which hands classes to a regular expression, a class can
    /// match `/`.
    Class {
        negated: bool,
        ranges: Vec<(char, char)>,
    },
}

/// How a pattern is compared, following BuildKit's match types.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Compiled {
    /// Exact, prefix and general patterns: a token sequence.
    Tokens(Vec<Token>),
    /// `**` followed only by literal text (`**/foo`, `**.log`): the path ends
    /// with the text after `**`, or equals it without its leading `/`.
    Suffix(String),
}

/// One `.dockerignore` line after cleaning: a glob that excludes what it
/// matches, or with a leading `!` (an exception) re-includes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pattern {
    text: String,
    exception: bool,
    line: usize,
    compiled: Compiled,
}

impl Pattern {
    pub(crate) fn new(
        text: String,
        exception: bool,
        line: usize,
    ) -> Result<Pattern, PatternErrorKind> {
        let compiled = compile(&text)?;
        Ok(Pattern {
            text,
            exception,
            line,
            compiled,
        })
    }

    /// The cleaned pattern without its `!`: `**/*.log`, `build`.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Whether this is an exception (`!pattern`), re-including what it
    /// matches.
    pub fn is_exception(&self) -> bool {
        self.exception
    }

    /// The 1-based line of the ignore file this pattern came from.
    pub fn line(&self) -> usize {
        self.line
    }

    /// Whether the pattern matches `path` itself (no parent directories).
    pub(crate) fn matches(&self, path: &str) -> bool {
        match &self.compiled {
            Compiled::Suffix(suffix) => {
                path.ends_with(suffix.as_str()) || suffix.strip_prefix('/') == Some(path)
            }
            Compiled::Tokens(tokens) => {
                let mut states = States::start(tokens);
                for c in path.chars() {
                    states = states.advance(tokens, c);
                    if states.is_empty() {
                        return false;
                    }
                }
                states.accepts(tokens)
            }
        }
    }

    /// Whether some path starting with `prefix` might match. May answer
    /// `true` when none does; never `false` when one does.
    pub(crate) fn may_match_with_prefix(&self, prefix: &str) -> bool {
        match &self.compiled {
            Compiled::Suffix(_) => true,
            Compiled::Tokens(tokens) => {
                let mut states = States::start(tokens);
                for c in prefix.chars() {
                    states = states.advance(tokens, c);
                    if states.is_empty() {
                        return false;
                    }
                }
                true
            }
        }
    }
}

/// BuildKit's match types while compiling; only `Suffix` changes how the
/// result is compared, `Exact` vs the rest decides how a trailing `**`
/// treats newlines.
#[derive(PartialEq, Eq, Clone, Copy)]
enum Mode {
    Exact,
    Prefix,
    Suffix,
    General,
}

fn compile(text: &str) -> Result<Compiled, PatternErrorKind> {
    let chars: Vec<char> = text.chars().collect();
    let mut tokens = Vec::new();
    let mut mode = Mode::Exact;
    let mut pos = 0;
    let mut first = true;
    while let Some(&c) = chars.get(pos) {
        pos += 1;
        match c {
            '*' if chars.get(pos) == Some(&'*') => {
                pos += 1;
                if chars.get(pos) == Some(&'/') {
                    pos += 1; // `**/` is `**`
                }
                if pos == chars.len() {
                    let newline = mode == Mode::Exact;
                    tokens.push(Token::Rest { newline });
                    mode = if newline { Mode::Prefix } else { Mode::General };
                } else {
                    tokens.push(Token::DirStar);
                    mode = Mode::General;
                }
                if first {
                    mode = Mode::Suffix;
                }
            }
            '*' => {
                tokens.push(Token::Star);
                mode = Mode::General;
            }
            '?' => {
                tokens.push(Token::AnyChar);
                mode = Mode::General;
            }
            '\\' => {
                let escaped = chars.get(pos).ok_or(PatternErrorKind::TrailingBackslash)?;
                pos += 1;
                tokens.push(Token::Literal(*escaped));
                mode = Mode::General;
            }
            '[' => {
                let (token, next) = class(&chars, pos)?;
                tokens.push(token);
                pos = next;
                mode = Mode::General;
            }
            ']' => {
                tokens.push(Token::Literal(']'));
                mode = Mode::General;
            }
            other => tokens.push(Token::Literal(other)),
        }
        first = false;
    }
    if mode == Mode::Suffix {
        // The pattern starts with the two ASCII bytes `**`.
        return Ok(Compiled::Suffix(text[2..].to_string()));
    }
    Ok(Compiled::Tokens(tokens))
}

/// Parses a class whose `[` is just before `pos` with Go's `filepath.Match`
/// rules (which BuildKit uses to reject bad patterns): optional `^`, then one
/// or more `c` or `lo-hi` items, each character possibly `\`-escaped, and an
/// unescaped `-` or `]` cannot start an item. Returns the token and the
/// position after `]`.
fn class(chars: &[char], mut pos: usize) -> Result<(Token, usize), PatternErrorKind> {
    let negated = chars.get(pos) == Some(&'^');
    if negated {
        pos += 1;
    }
    let mut ranges = Vec::new();
    loop {
        if chars.get(pos) == Some(&']') && !ranges.is_empty() {
            pos += 1;
            break;
        }
        let lo = class_char(chars, &mut pos)?;
        let mut hi = lo;
        if chars.get(pos) == Some(&'-') {
            pos += 1;
            hi = class_char(chars, &mut pos)?;
        }
        if lo > hi {
            return Err(PatternErrorKind::ReversedRange(lo, hi));
        }
        ranges.push((lo, hi));
    }
    Ok((Token::Class { negated, ranges }, pos))
}

fn class_char(chars: &[char], pos: &mut usize) -> Result<char, PatternErrorKind> {
    let mut c = *chars.get(*pos).ok_or(PatternErrorKind::UnclosedClass)?;
    if c == '-' || c == ']' {
        return Err(PatternErrorKind::BadClassItem(c));
    }
    if c == '\\' {
        *pos += 1;
        c = *chars.get(*pos).ok_or(PatternErrorKind::UnclosedClass)?;
    }
    *pos += 1;
    if *pos >= chars.len() {
        return Err(PatternErrorKind::UnclosedClass);
    }
    Ok(c)
}

/// The set of token positions a simulation can be in. Position `i` means
/// tokens `..i` are satisfied; `inner[i]` means inside a `**` that has
/// consumed text not yet ending in `/` (so it cannot be skipped yet).
struct States {
    at: Vec<bool>,
    inner: Vec<bool>,
}

impl States {
    fn start(tokens: &[Token]) -> States {
        let mut states = States {
            at: vec![false; tokens.len() + 1],
            inner: vec![false; tokens.len() + 1],
        };
        states.at[0] = true;
        states.close(tokens);
        states
    }

    fn is_empty(&self) -> bool {
        !self.at.iter().chain(&self.inner).any(|s| *s)
    }

    fn accepts(&self, tokens: &[Token]) -> bool {
        self.at[tokens.len()]
    }

    /// Follows the empty matches of `*`, `**` forward.
    fn close(&mut self, tokens: &[Token]) {
        for (i, token) in tokens.iter().enumerate() {
            let skippable = matches!(token, Token::Star | Token::DirStar | Token::Rest { .. });
            if self.at[i] && skippable {
                self.at[i + 1] = true;
            }
        }
    }

    fn advance(&self, tokens: &[Token], c: char) -> States {
        let mut next = States {
            at: vec![false; tokens.len() + 1],
            inner: vec![false; tokens.len() + 1],
        };
        for (i, token) in tokens.iter().enumerate() {
            let (at, inner) = (self.at[i], self.inner[i]);
            if !at && !inner {
                continue;
            }
            match token {
                Token::Literal(l) if at && c == *l => next.at[i + 1] = true,
                Token::AnyChar if at && c != '/' => next.at[i + 1] = true,
                Token::Class { negated, ranges } if at => {
                    let inside = ranges.iter().any(|(lo, hi)| (*lo..=*hi).contains(&c));
                    if inside != *negated {
                        next.at[i + 1] = true;
                    }
                }
                Token::Star if c != '/' => next.at[i] = true,
                Token::Rest { newline } if *newline || c != '\n' => next.at[i] = true,
                Token::DirStar if c != '\n' => {
                    next.inner[i] = true;
                    if c == '/' {
                        next.at[i + 1] = true;
                    }
                }
                _ => {}
            }
        }
        next.close(tokens);
        next
    }
}
