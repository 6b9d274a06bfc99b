use std::collections::BTreeSet;

use crate::chars::{is_go_digit, is_go_letter, is_go_space};
use crate::env::Env;
use crate::error::{Error, ErrorKind};
use crate::pattern::{reverse_pattern, Bounded, Pattern};

/// How deep `${...}` expansions (and the quotes inside them) may nest.
const MAX_DEPTH: usize = 200;

/// The default bound on one expanded word, in bytes (1 MiB): far above any
/// real Dockerfile word (BuildKit reads a Dockerfile line of at most
/// 64 KiB), far below what hurts a shared builder. See
/// [`Lexer::with_max_len`].
pub const MAX_WORD_LEN: usize = 1 << 20;

/// Variables a word referred to, from [`Lexer::process_word_with_matches`].
///
/// BuildKit uses these to report build args that were never used and
/// variables that were referenced without being defined.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Matches {
    /// Names that were referenced and defined (possibly empty).
    pub used: BTreeSet<String>,
    /// Names that were referenced but not defined.
    pub unmatched: BTreeSet<String>,
}

/// BuildKit's Dockerfile word lexer (`shell.Lex`).
///
/// Build one per escape character and reuse it; it is `Copy` and holds no
/// state between words. The `with_*` options are BuildKit's `Lex` fields;
/// instructions are expanded with all of them off:
///
/// | option | BuildKit field | where BuildKit turns it on |
/// |---|---|---|
/// | [`with_raw_quotes`](Lexer::with_raw_quotes) | `RawQuotes` | the progress name of `RUN` (with `skip_unset_env`); heredoc detection in the parser |
/// | [`with_raw_escapes`](Lexer::with_raw_escapes) | `RawEscapes` | heredoc detection in the parser (with `raw_quotes` and `skip_unset_env`) |
/// | [`with_skip_unset_env`](Lexer::with_skip_unset_env) | `SkipUnsetEnv` | the progress name of `RUN`; heredoc detection |
/// | [`with_skip_process_quotes`](Lexer::with_skip_process_quotes) | `SkipProcessQuotes` | heredoc bodies BuildKit expands itself (`COPY <<EOF`; not `<<'EOF'`, not `RUN`, whose shell expands), always with escape `\` whatever `# escape=` says |
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lexer {
    escape: char,
    raw_quotes: bool,
    raw_escapes: bool,
    skip_unset_env: bool,
    skip_process_quotes: bool,
    max_len: usize,
}

impl Default for Lexer {
    /// The default escape character, `\`.
    fn default() -> Lexer {
        Lexer::new('\\')
    }
}

impl Lexer {
    /// A lexer for the escape character of the Dockerfile: `\` by default,
    /// `` ` `` after `# escape=``.
    pub fn new(escape: char) -> Lexer {
        Lexer {
            escape,
            raw_quotes: false,
            raw_escapes: false,
            skip_unset_env: false,
            skip_process_quotes: false,
            max_len: MAX_WORD_LEN,
        }
    }

    /// Bounds every expanded word, and every piece expanded inside it (the
    /// word of `${v:-word}`, a pattern, a replacement), to `max_len` bytes
    /// ([`MAX_WORD_LEN`] by default). The bound is checked before the text
    /// grows, so `${v//a/aaaaaaaa}` nested a few times fails with
    /// [`ErrorKind::TooLong`] instead of allocating gigabytes. Values read
    /// from the environment count once they are copied into the word.
    pub fn with_max_len(mut self, max_len: usize) -> Lexer {
        self.max_len = max_len;
        self
    }

    /// The bound on an expanded word, in bytes.
    pub fn max_len(&self) -> usize {
        self.max_len
    }

    /// The escape character.
    pub fn escape(&self) -> char {
        self.escape
    }

    /// Keep quote characters in the output (`'a'` stays `'a'`); what is
    /// inside still follows the quoting rules.
    pub fn with_raw_quotes(mut self, on: bool) -> Lexer {
        self.raw_quotes = on;
        self
    }

    /// Keep the escape character in front of what it escapes (`\$x` stays
    /// `\$x`, a trailing `\` stays). As in BuildKit this does not reach into
    /// the word of `${v:-word}`/`${v+word}`/`${v?word}`, which are always
    /// processed with escapes removed.
    pub fn with_raw_escapes(mut self, on: bool) -> Lexer {
        self.raw_escapes = on;
        self
    }

    /// Leave references to unset variables as they were written (`$v`,
    /// `${v}`, `${v:-word}` with `word` processed) instead of expanding
    /// them; `${v?msg}` then does not fail either.
    pub fn with_skip_unset_env(mut self, on: bool) -> Lexer {
        self.skip_unset_env = on;
        self
    }

    /// Treat `'` and `"` as ordinary characters: only `$` expansions and
    /// escapes are processed.
    pub fn with_skip_process_quotes(mut self, on: bool) -> Lexer {
        self.skip_process_quotes = on;
        self
    }

    /// Expands `word` into one string (BuildKit's `ProcessWord`): quotes are
    /// removed, escapes applied, variables expanded; whitespace is kept.
    pub fn process_word<E: Env + ?Sized>(&self, word: &str, env: &E) -> Result<String, Error> {
        self.run(word, env, false, false).map(|done| done.result)
    }

    /// [`process_word`](Lexer::process_word) that also reports which
    /// variables the word referenced (BuildKit's `ProcessWordWithMatches`).
    pub fn process_word_with_matches<E: Env + ?Sized>(
        &self,
        word: &str,
        env: &E,
    ) -> Result<(String, Matches), Error> {
        self.run(word, env, false, true)
            .map(|done| (done.result, done.matches))
    }

    /// Expands `word` and splits it into fields (BuildKit's `ProcessWords`):
    /// unquoted whitespace, including whitespace that comes from an unquoted
    /// expansion, separates fields; quoted and escaped whitespace does not.
    /// Empty fields are dropped, so `""` alone gives no field at all.
    pub fn process_words<E: Env + ?Sized>(
        &self,
        word: &str,
        env: &E,
    ) -> Result<Vec<String>, Error> {
        self.run(word, env, true, false).map(|done| done.fields)
    }

    /// Expands `word`; `fields` and `matches` are only filled when asked for
    /// (collecting them costs allocations most callers do not need).
    fn run<E: Env + ?Sized>(
        &self,
        word: &str,
        env: &E,
        want_fields: bool,
        want_matches: bool,
    ) -> Result<Done, Error> {
        // Nothing to expand, unquote or unescape: the word is its own result
        // (most Dockerfile words), and whitespace alone splits the fields.
        let escape = self.escape;
        let plain = !word.starts_with('\u{feff}')
            && !word
                .chars()
                .any(|c| c == '$' || c == '\'' || c == '"' || c == escape);
        if plain {
            if word.len() > self.max_len {
                return Err(Error::new(
                    word,
                    ErrorKind::TooLong {
                        limit: self.max_len,
                    },
                ));
            }
            let fields = if want_fields {
                word.split(is_go_space)
                    .filter(|f| !f.is_empty())
                    .map(str::to_string)
                    .collect()
            } else {
                Vec::new()
            };
            return Ok(Done {
                result: word.to_string(),
                fields,
                matches: Matches::default(),
            });
        }
        let env: &dyn EnvRef = &EnvAdapter(env);
        // Sized up front: collecting `chars()` grows the vector step by step.
        let mut chars: Vec<char> = Vec::with_capacity(word.len());
        chars.extend(word.chars());
        // Go's text/scanner drops a byte order mark at the very start.
        if chars.first() == Some(&'\u{feff}') {
            chars.remove(0);
        }
        let mut scan = Scan {
            chars,
            pos: 0,
            env,
            lexer: *self,
            raw_escapes: self.raw_escapes,
            depth: 0,
            matches: Matches::default(),
            want_fields,
            want_matches,
        };
        let raw_escapes = self.raw_escapes;
        match scan.process_stop_on(None, raw_escapes) {
            Ok((result, fields)) => Ok(Done {
                result,
                fields,
                matches: scan.matches,
            }),
            Err(kind) => Err(Error::new(word, kind)),
        }
    }
}

struct Done {
    result: String,
    fields: Vec<String>,
    matches: Matches,
}

/// Object-safe view of any `Env`, so the scanner is not generic.
trait EnvRef {
    fn lookup(&self, name: &str) -> Option<String>;
}

struct EnvAdapter<'a, E: ?Sized>(&'a E);

impl<E: Env + ?Sized> EnvRef for EnvAdapter<'_, E> {
    fn lookup(&self, name: &str) -> Option<String> {
        self.0.get(name)
    }
}

/// BuildKit's fields collector (`wordsStruct`).
#[derive(Default)]
struct Fields {
    /// Off: every method does nothing and no field is collected.
    on: bool,
    word: String,
    words: Vec<String>,
    in_word: bool,
}

impl Fields {
    fn add_char(&mut self, ch: char) {
        if !self.on {
            return;
        }
        if is_go_space(ch) {
            if self.in_word && !self.word.is_empty() {
                self.words.push(std::mem::take(&mut self.word));
                self.in_word = false;
            }
        } else {
            self.add_raw_char(ch);
        }
    }

    fn add_raw_char(&mut self, ch: char) {
        if !self.on {
            return;
        }
        self.word.push(ch);
        self.in_word = true;
    }

    fn add_string(&mut self, text: &str) {
        if !self.on {
            return;
        }
        for ch in text.chars() {
            self.add_char(ch);
        }
    }

    fn add_raw_string(&mut self, text: &str) {
        if !self.on {
            return;
        }
        self.word.push_str(text);
        self.in_word = true;
    }

    fn finish(mut self) -> Vec<String> {
        if !self.word.is_empty() {
            self.words.push(self.word);
        }
        self.words
    }
}

/// One pass over one word (BuildKit's `shellWord`).
struct Scan<'a> {
    chars: Vec<char>,
    pos: usize,
    env: &'a dyn EnvRef,
    lexer: Lexer,
    /// The current escape mode: the lexer's, overridden inside `${...}`.
    raw_escapes: bool,
    depth: usize,
    matches: Matches,
    /// Collect the fields of the top-level word (`process_words`).
    want_fields: bool,
    /// Record referenced names in `matches` (`process_word_with_matches`).
    want_matches: bool,
}

impl Scan<'_> {
    fn peek(&self) -> Option<char> {
        self.chars.get(self.pos).copied()
    }

    fn next(&mut self) -> Option<char> {
        let ch = self.peek();
        if ch.is_some() {
            self.pos += 1;
        }
        ch
    }

    fn get_env(&mut self, name: &str) -> Option<String> {
        let value = self.env.lookup(name);
        if !self.want_matches {
            return value;
        }
        let set = if value.is_some() {
            &mut self.matches.used
        } else {
            &mut self.matches.unmatched
        };
        if !set.contains(name) {
            set.insert(name.to_string());
        }
        value
    }

    /// Processes up to `stop` (consumed) or the end of the input when `stop`
    /// is `None`; returns the text and its fields.
    fn process_stop_on(
        &mut self,
        stop: Option<char>,
        raw_escapes: bool,
    ) -> Result<(String, Vec<String>), ErrorKind> {
        let saved = self.raw_escapes;
        self.raw_escapes = raw_escapes;
        let outcome = self.process_stop_on_inner(stop);
        self.raw_escapes = saved;
        outcome
    }

    fn process_stop_on_inner(
        &mut self,
        stop: Option<char>,
    ) -> Result<(String, Vec<String>), ErrorKind> {
        // The top-level result is usually about as long as the input.
        let mut result = String::with_capacity(match stop {
            None => (self.chars.len() - self.pos).min(self.lexer.max_len),
            Some(_) => 0,
        });
        // Only the top-level word's fields are used.
        let mut fields = Fields {
            on: stop.is_none() && self.want_fields,
            ..Fields::default()
        };
        let quotes = !self.lexer.skip_process_quotes;
        while let Some(ch) = self.peek() {
            if stop == Some(ch) {
                self.next();
                return Ok((result, fields.finish()));
            }
            if ch == '$' {
                let value = self.process_dollar()?;
                self.room(&result, value.len())?;
                result.push_str(&value);
                fields.add_string(&value);
            } else if quotes && ch == '\'' {
                let value = self.process_single_quote()?;
                self.room(&result, value.len())?;
                result.push_str(&value);
                fields.add_raw_string(&value);
            } else if quotes && ch == '"' {
                let value = self.process_double_quote()?;
                self.room(&result, value.len())?;
                result.push_str(&value);
                fields.add_raw_string(&value);
            } else {
                self.next();
                if ch == self.lexer.escape {
                    if self.raw_escapes {
                        self.room(&result, ch.len_utf8())?;
                        fields.add_raw_char(ch);
                        result.push(ch);
                    }
                    // An escape at the very end is dropped.
                    let Some(escaped) = self.next() else {
                        break;
                    };
                    self.room(&result, escaped.len_utf8())?;
                    fields.add_raw_char(escaped);
                    result.push(escaped);
                } else {
                    self.room(&result, ch.len_utf8())?;
                    fields.add_char(ch);
                    result.push(ch);
                }
            }
        }
        match stop {
            Some('/') => Err(ErrorKind::MissingSlash),
            Some(_) => Err(ErrorKind::MissingBrace),
            None => Ok((result, fields.finish())),
        }
    }

    /// `'...'`: everything literal up to the next `'`; no escapes at all.
    fn process_single_quote(&mut self) -> Result<String, ErrorKind> {
        let mut result = String::new();
        let open = self.next();
        if self.lexer.raw_quotes {
            result.extend(open);
        }
        loop {
            match self.next() {
                None => return Err(ErrorKind::UnterminatedSingleQuote),
                Some('\'') => {
                    if self.lexer.raw_quotes {
                        result.push('\'');
                    }
                    return Ok(result);
                }
                Some(ch) => result.push(ch),
            }
        }
    }

    /// `"..."`: `$` expands; the escape character escapes only `"`, `$` and
    /// itself and is kept literally before anything else.
    fn process_double_quote(&mut self) -> Result<String, ErrorKind> {
        let mut result = Bounded::new(self.lexer.max_len);
        let open = self.next();
        if self.lexer.raw_quotes {
            result.push('"')?;
        }
        debug_assert_eq!(open, Some('"'));
        loop {
            match self.peek() {
                None => return Err(ErrorKind::UnterminatedDoubleQuote),
                Some('"') => {
                    self.next();
                    if self.lexer.raw_quotes {
                        result.push('"')?;
                    }
                    return Ok(result.into_string());
                }
                Some('$') => {
                    let value = self.process_dollar()?;
                    result.push_str(&value)?;
                }
                Some(ch) => {
                    self.next();
                    if ch != self.lexer.escape {
                        result.push(ch)?;
                        continue;
                    }
                    match self.peek() {
                        // An escape right before the end: dropped (the
                        // missing closing quote is reported next).
                        None => {}
                        Some(next) if next == '"' || next == '$' || next == self.lexer.escape => {
                            self.next();
                            if self.raw_escapes {
                                result.push(ch)?;
                            }
                            result.push(next)?;
                        }
                        Some(_) => result.push(ch)?,
                    }
                }
            }
        }
    }

    /// Fails when `more` bytes would take `text` beyond the lexer's bound.
    fn room(&self, text: &str, more: usize) -> Result<(), ErrorKind> {
        if text.len().saturating_add(more) > self.lexer.max_len {
            return Err(ErrorKind::TooLong {
                limit: self.lexer.max_len,
            });
        }
        Ok(())
    }

    fn process_dollar(&mut self) -> Result<String, ErrorKind> {
        if self.depth >= MAX_DEPTH {
            return Err(ErrorKind::TooDeep(MAX_DEPTH));
        }
        self.depth += 1;
        let outcome = self.process_dollar_inner();
        self.depth -= 1;
        outcome
    }

    fn process_dollar_inner(&mut self) -> Result<String, ErrorKind> {
        self.next(); // the '$'
        if self.peek() != Some('{') {
            let name = self.process_name();
            if name.is_empty() {
                return Ok("$".to_string());
            }
            return Ok(match self.get_env(&name) {
                Some(value) => value,
                None if self.lexer.skip_unset_env => format!("${name}"),
                None => String::new(),
            });
        }
        self.next(); // the '{'
        match self.peek() {
            None => return Err(ErrorKind::MissingBrace),
            Some('{' | '}' | ':') => return Err(ErrorKind::BadSubstitution),
            Some(_) => {}
        }
        let name = self.process_name();
        match self.next() {
            None => Err(ErrorKind::MissingBrace),
            Some('}') => Ok(match self.get_env(&name) {
                Some(value) => value,
                None if self.lexer.skip_unset_env => format!("${{{name}}}"),
                None => String::new(),
            }),
            Some(first @ (':' | '+' | '-' | '?' | '#' | '%')) => self.process_modifier(name, first),
            Some('/') => self.process_replace(name),
            Some(other) => Err(ErrorKind::UnsupportedModifier(other.to_string())),
        }
    }

    /// `${name<op>word}` after `<op>`'s first character.
    fn process_modifier(&mut self, name: String, first: char) -> Result<String, ErrorKind> {
        let mut modifier = String::from(first);
        let mut op = Some(first);
        let null_is_unset = first == ':';
        if null_is_unset {
            op = self.next();
            // Go renders end-of-input as U+FFFD here.
            modifier.push(op.unwrap_or('\u{fffd}'));
        }
        let trims = matches!(op, Some('#' | '%'));
        if null_is_unset && trims {
            return Err(ErrorKind::UnsupportedModifier(modifier));
        }
        let word = self.process_word_until_brace(trims)?;
        let value = self.get_env(&name);
        if self.lexer.skip_unset_env && value.is_none() {
            self.room(&word, name.len() + modifier.len() + 3)?;
            return Ok(format!("${{{name}{modifier}{word}}}"));
        }
        let empty = value.as_deref().map_or(true, str::is_empty);
        match op {
            Some('-') => Ok(match value {
                Some(value) if !(null_is_unset && value.is_empty()) => value,
                _ => word,
            }),
            Some('+') => Ok(if value.is_none() || (null_is_unset && empty) {
                String::new()
            } else {
                word
            }),
            Some('?') => match value {
                None => Err(required(name, word, "is not allowed to be unset")),
                Some(value) if null_is_unset && value.is_empty() => {
                    Err(required(name, word, "is not allowed to be empty"))
                }
                Some(value) => Ok(value),
            },
            Some(op @ ('#' | '%')) => {
                let value = value.unwrap_or_default();
                let (greedy, pattern) = match word.strip_prefix(op) {
                    Some(rest) => (true, rest.to_string()),
                    None => (false, word),
                };
                if op == '#' {
                    trim_prefix(&pattern, &value, greedy)
                } else {
                    trim_suffix(&pattern, &value, greedy)
                }
            }
            _ => Err(ErrorKind::UnsupportedModifier(modifier)),
        }
    }

    /// The word of a modifier, up to its `}`. Any failure at the end of the
    /// input is reported as the missing `}`.
    fn process_word_until_brace(&mut self, raw_escapes: bool) -> Result<String, ErrorKind> {
        match self.process_stop_on(Some('}'), raw_escapes) {
            Ok((word, _)) => Ok(word),
            Err(_) if self.peek().is_none() => Err(ErrorKind::MissingBrace),
            Err(err) => Err(err),
        }
    }

    /// `${name/pattern/replacement}` and `${name//pattern/replacement}` after
    /// the first `/`.
    fn process_replace(&mut self, name: String) -> Result<String, ErrorKind> {
        let all = self.peek() == Some('/');
        if all {
            self.next();
        }
        let pattern = match self.process_stop_on(Some('/'), true) {
            Ok((pattern, _)) => pattern,
            Err(_) if self.peek().is_none() => return Err(ErrorKind::MissingSlash),
            Err(err) => return Err(err),
        };
        let replacement = self.process_word_until_brace(true)?;
        let value = self.get_env(&name);
        if self.lexer.skip_unset_env && value.is_none() {
            let slashes = if all { "//" } else { "/" };
            self.room(&pattern, replacement.len() + name.len() + 6)?;
            return Ok(format!("${{{name}{slashes}{pattern}/{replacement}}}"));
        }
        substitute(
            &pattern,
            value.as_deref().unwrap_or(""),
            &replacement,
            all,
            self.lexer.max_len,
        )
    }

    /// A variable name: a run of digits (positional parameter), one special
    /// parameter character, or letters, digits and `_`.
    fn process_name(&mut self) -> String {
        // Find the name's extent first, then copy it in one allocation.
        let start = self.pos;
        while let Some(ch) = self.peek() {
            if self.pos == start && is_go_digit(ch) {
                while self.peek().is_some_and(is_go_digit) {
                    self.next();
                }
                break;
            }
            if self.pos == start && is_special_parameter(ch) {
                self.next();
                break;
            }
            if !is_go_letter(ch) && !is_go_digit(ch) && ch != '_' {
                break;
            }
            self.next();
        }
        self.chars[start..self.pos].iter().collect()
    }
}

/// POSIX special parameters; BuildKit looks them up like any name (they are
/// normally unset, so they expand to nothing).
fn is_special_parameter(ch: char) -> bool {
    matches!(ch, '@' | '*' | '#' | '?' | '-' | '$' | '!' | '0')
}

fn required(name: String, word: String, default: &str) -> ErrorKind {
    let message = if word.is_empty() {
        default.to_string()
    } else {
        word
    };
    ErrorKind::Required { name, message }
}

fn invalid_pattern(pattern: &str, reason: crate::error::PatternError) -> ErrorKind {
    ErrorKind::InvalidPattern {
        pattern: pattern.to_string(),
        reason,
    }
}

/// `${v#p}` / `${v##p}`: drop the shortest / longest prefix matching `p`.
fn trim_prefix(pattern: &str, value: &str, greedy: bool) -> Result<String, ErrorKind> {
    let compiled =
        Pattern::compile(pattern, greedy, true).map_err(|e| invalid_pattern(pattern, e))?;
    let chars: Vec<char> = value.chars().collect();
    Ok(match compiled.find(&chars)? {
        Some((_, end)) => chars[end..].iter().collect(),
        None => value.to_string(),
    })
}

/// `${v%p}` / `${v%%p}`: like BuildKit, a prefix trim of the reversed value
/// with the reversed pattern.
fn trim_suffix(pattern: &str, value: &str, greedy: bool) -> Result<String, ErrorKind> {
    let reversed_pattern = reverse_pattern(pattern);
    let reversed_value: String = value.chars().rev().collect();
    let trimmed = trim_prefix(&reversed_pattern, &reversed_value, greedy)?;
    Ok(trimmed.chars().rev().collect())
}

/// `${v/p/r}` replaces the first match literally; `${v//p/r}` replaces all
/// matches with Go's template expansion of `r`. `*` is greedy in both. The
/// result is at most `max_len` bytes.
fn substitute(
    pattern: &str,
    value: &str,
    replacement: &str,
    all: bool,
    max_len: usize,
) -> Result<String, ErrorKind> {
    let compiled =
        Pattern::compile(pattern, true, false).map_err(|e| invalid_pattern(pattern, e))?;
    if all {
        return compiled.replace_all(value, replacement, max_len);
    }
    let chars: Vec<char> = value.chars().collect();
    Ok(match compiled.find(&chars)? {
        Some((start, end)) => {
            let mut out = Bounded::new(max_len);
            out.push_chars(&chars[..start])?;
            out.push_str(replacement)?;
            out.push_chars(&chars[end..])?;
            out.into_string()
        }
        None => value.to_string(),
    })
}
