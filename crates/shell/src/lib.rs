//! `kbuild-shell` is BuildKit's Dockerfile word lexer
//! (`frontend/dockerfile/shell`), re-implemented so that a word in a
//! Dockerfile means here exactly what it means to `docker buildx build`:
//! quoting, escapes, `$v`/`${v...}` expansion and word splitting. It owns no
//! I/O; the Dockerfile crate calls it for every word BuildKit expands.
//!
//! ```
//! use std::collections::BTreeMap;
//! use kbuild_shell::Lexer;
//!
//! let env = BTreeMap::from([("VERSION".to_string(), "1.2".to_string())]);
//! let lexer = Lexer::new('\\');
//! assert_eq!(lexer.process_word("app-${VERSION}.tar", &env).unwrap(), "app-1.2.tar");
//! assert_eq!(lexer.process_word(r"\$VERSION '$VERSION'", &env).unwrap(), "$VERSION $VERSION");
//! assert_eq!(lexer.process_words(r#"a "b c" d\ e"#, &env).unwrap(), ["a", "b c", "d e"]);
//! let err = lexer.process_word("${NAME:?is required}", &env).unwrap_err();
//! assert_eq!(err.to_string(), r#"failed to process "${NAME:?is required}": NAME: is required"#);
//! ```
//!
//! # Grammar
//!
//! * `'...'`: literal; no escapes inside, so a `'` cannot be quoted in it.
//! * `"..."`: `$` expands; the escape character escapes `"`, `$` and itself
//!   and is kept before anything else (`"a\tb"` stays `a\tb`).
//! * Outside quotes the escape character makes the next character literal
//!   and is removed (`a\tb` is `atb`); at the very end of the word it is
//!   dropped. The escape character is `\` or, after `# escape=``, a
//!   backtick; then `\` is an ordinary character.
//! * `$name`, `${name}`: a name is letters, digits and `_` (Unicode letters
//!   and decimal digits count, as in Go). A name starting with a digit is the
//!   run of digits (`$12x` is `${12}x`). `@ * # ? - $ ! 0` are one-character
//!   special parameters; they are looked up like names and are normally
//!   unset, so expand to nothing. A `$` before anything else stays literal
//!   (`$.`, `$/`, a trailing `$`).
//! * `${v:-w}` / `${v-w}`: `w` if `v` is unset or empty / unset.
//!   `${v:+w}` / `${v+w}`: `w` if `v` is set and non-empty / set, else empty.
//!   `${v:?w}` / `${v?w}`: error `v: w` (or `v: is not allowed to be unset`,
//!   `v: is not allowed to be empty`) if `v` is unset or empty / unset.
//!   The word `w` is itself processed: quotes, escapes and nested `${...}`.
//! * `${v#p}` `${v##p}` `${v%p}` `${v%%p}`: drop the shortest/longest
//!   prefix/suffix matching the pattern `p`. `${v/p/r}` replaces the first
//!   match of `p` (longest at the leftmost position), `${v//p/r}` every match.
//!   Patterns know `*` and `?` (never matching a newline) and the escapes
//!   `\*`, `\?`, `\\`; `[...]` is literal, and `${v/#p/r}`, `${v/%p/r}` have no
//!   anchor meaning (the `#`/`%` is part of the pattern), all as in BuildKit.
//!   Escapes stay in patterns and replacements: `${v//\//\/}` replaces `/`
//!   with `\/`. In `${v//p/r}` (not in `${v/p/r}`) a `$0` or `${0}` left in
//!   `r` stands for the match, as Go's regexp templates do.
//! * Errors: unsupported modifiers (`${v:=w}`, `${v=w}`, `${v:#p}`, `${#v}`,
//!   `${v:1:2}`, ...), `${}`, `${:...}`, a missing `}` or closing quote, a
//!   missing `/` in `${v/p}`, an invalid pattern escape.
//!
//! [`Lexer::process_words`] splits the expansion into fields on whitespace
//! that is neither quoted nor escaped, including whitespace produced by an
//! unquoted `$v`. Empty fields are dropped (`a "" b` gives `a`, `b`).
//!
//! Differences from BuildKit, deliberately: expansions nested more than 200
//! levels deep are an error ([`ErrorKind::TooDeep`]) instead of growing the
//! stack; the text of the error for `${v` at the end of the word is
//! "missing '}'".
//!
//! # Limits
//!
//! A word expands to at most [`MAX_WORD_LEN`] bytes (1 MiB; see
//! [`Lexer::with_max_len`]). Every piece is checked before it is appended,
//! so a "billion laughs" word such as `${A//a/aaaaaaaaaa}` nested a few
//! times fails with [`ErrorKind::TooLong`] before anything large is
//! allocated. Matching a pattern explores at most 16M states and takes at
//! most 2^27 steps per trim or substitution
//! ([`ErrorKind::PatternTooCostly`]). No real Dockerfile comes near either.
//!
//! # Fuzzing
//!
//! `fuzz/` holds a cargo-fuzz target outside the workspace
//! (`scripts/fuzz.sh shell`); it needs a nightly toolchain. The always-run guard
//! against panics is the proptest in `tests/no_panic.rs`, and the inputs the
//! fuzzer found are regression tests in `tests/limits.rs`.

#![deny(missing_docs)]

mod chars;
mod env;
mod error;
mod lexer;
mod pattern;

pub use env::Env;
pub use error::{Error, ErrorKind, PatternError};
pub use lexer::{Lexer, Matches, MAX_WORD_LEN};
