//! HAProxy's tokenizer: a configuration's text cut into lines of words, as HAProxy's
//! own parser cuts it (configuration.txt, 2.2 and 2.3).
//!
//! Owns comments (`#` outside quotes), backslash escapes (`\ `, `\#`, `\\`, `\'`, `\"`,
//! `\r`, `\n`, `\t`, `\xNN`), weak (`"…"`) and strong (`'…'`) quoting, and environment
//! variables (`$NAME`, `${NAME}`, `${NAME-default}`, `${NAME[*]}`), which HAProxy expands
//! inside double quotes only. Every expansion is recorded so the report can name it.
//! HAProxy has no line continuation: a line ending in `\` is refused here, as HAProxy
//! refuses it, rather than silently read as a word. Words are separated by any blank C
//! calls a space (space, tab, vertical tab, form feed), and a carriage return ends a
//! line wherever it is, as in HAProxy's `parse_line`. What the words mean is not this
//! module's concern.

use std::fmt;

/// The number of the file's last line when it does not end with a line feed (and holds
/// more than blanks): HAProxy refuses such a file ("Missing LF on last line, file might
/// have been truncated").
pub fn missing_final_newline(text: &str) -> Option<usize> {
    let last = text.rsplit('\n').next()?;
    (!last.trim().is_empty()).then(|| text.matches('\n').count() + 1)
}

/// One non-empty line: its number (from 1), its words, and the text as written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    pub number: usize,
    pub words: Vec<String>,
    /// The line without its comment and surrounding blanks, for reports and comments.
    pub text: String,
    pub expansions: Vec<Expansion>,
}

/// One `${NAME}` expanded while reading a line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expansion {
    pub name: String,
    /// The value used: the variable's, the default's, or empty when neither is set.
    pub value: String,
    pub source: ExpansionSource,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExpansionSource {
    Environment,
    Default,
    /// Neither set: HAProxy expands it to nothing.
    Unset,
}

impl Line {
    /// The first word (a line has at least one).
    pub fn keyword(&self) -> &str {
        self.words.first().map_or("", String::as_str)
    }
}

/// A line HAProxy would refuse to read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LexError {
    pub line: usize,
    pub message: String,
}

impl fmt::Display for LexError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: {}", self.line, self.message)
    }
}

/// Cuts `text` into lines of words; `env` looks environment variables up.
pub fn lex(text: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<Vec<Line>, LexError> {
    let mut lines = Vec::new();
    for (i, raw) in text.split('\n').enumerate() {
        let raw = raw.split('\r').next().unwrap_or(raw);
        let number = i + 1;
        let fail = |message: String| LexError { line: number, message };
        let mut lexer = LineLexer {
            chars: raw.char_indices().peekable(),
            env,
            words: Vec::new(),
            word: None,
            expansions: Vec::new(),
            end: raw.len(),
        };
        lexer.run().map_err(fail)?;
        if lexer.words.is_empty() {
            continue;
        }
        lines.push(Line {
            number,
            words: lexer.words,
            text: raw[..lexer.end].trim().to_string(),
            expansions: lexer.expansions,
        });
    }
    Ok(lines)
}

struct LineLexer<'a> {
    chars: std::iter::Peekable<std::str::CharIndices<'a>>,
    env: &'a dyn Fn(&str) -> Option<String>,
    words: Vec<String>,
    /// The word being built; `Some("")` after `""`, which is an (empty) word.
    word: Option<String>,
    expansions: Vec<Expansion>,
    /// Where the comment starts (or the line's length).
    end: usize,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Quote {
    None,
    Weak,
    Strong,
}

impl LineLexer<'_> {
    fn push(&mut self, c: char) {
        self.word.get_or_insert_with(String::new).push(c);
    }

    fn finish_word(&mut self) {
        if let Some(w) = self.word.take() {
            self.words.push(w);
        }
    }

    fn run(&mut self) -> Result<(), String> {
        let mut quote = Quote::None;
        while let Some((at, c)) = self.chars.next() {
            match (quote, c) {
                (Quote::Strong, '\'') => quote = Quote::None,
                (Quote::Strong, c) => self.push(c),
                (Quote::Weak, '"') => quote = Quote::None,
                (Quote::None, '"') => {
                    quote = Quote::Weak;
                    self.word.get_or_insert_with(String::new);
                }
                (Quote::None, '\'') => {
                    quote = Quote::Strong;
                    self.word.get_or_insert_with(String::new);
                }
                (_, '\\') => self.escape()?,
                (Quote::Weak, '$') => self.variable()?,
                (Quote::None, '#') => {
                    self.end = at;
                    break;
                }
                (Quote::None, ' ' | '\t' | '\x0b' | '\x0c') => self.finish_word(),
                (_, c) => self.push(c),
            }
        }
        match quote {
            Quote::Weak => return Err("unmatched double quote (\"): close it on the same line".into()),
            Quote::Strong => return Err("unmatched single quote ('): close it on the same line".into()),
            Quote::None => {}
        }
        self.finish_word();
        Ok(())
    }

    fn escape(&mut self) -> Result<(), String> {
        let Some((_, c)) = self.chars.next() else {
            return Err(
                "the line ends with '\\': HAProxy does not continue lines (it reads the '\\' \
                 as a word and refuses it); join the two lines"
                    .into(),
            );
        };
        match c {
            ' ' | '\t' | '#' | '\\' | '\'' | '"' | '$' => self.push(c),
            'n' => self.push('\n'),
            'r' => self.push('\r'),
            't' => self.push('\t'),
            'x' => {
                let hex: String = (0..2).filter_map(|_| self.chars.next().map(|(_, c)| c)).collect();
                match u8::from_str_radix(&hex, 16) {
                    Ok(b) if hex.len() == 2 => self.push(char::from(b)),
                    _ => return Err(format!("'\\x{hex}' is not an escape; write \\x and two hex digits")),
                }
            }
            // HAProxy keeps an unknown escape as written.
            other => {
                self.push('\\');
                self.push(other);
            }
        }
        Ok(())
    }

    /// `$NAME`, `${NAME}`, `${NAME-default}`, `${NAME[*]}` inside double quotes.
    fn variable(&mut self) -> Result<(), String> {
        let braced = self.chars.next_if(|&(_, c)| c == '{').is_some();
        let mut name = String::new();
        while let Some((_, c)) = self
            .chars
            .next_if(|&(_, c)| c.is_ascii_alphanumeric() || c == '_' || c == '.')
        {
            name.push(c);
        }
        if name.is_empty() {
            if braced {
                return Err("'${' without a variable name".into());
            }
            // A lone '$' stays a '$'.
            self.push('$');
            return Ok(());
        }
        let mut default = None;
        let mut split = false;
        if braced {
            let mut rest = String::new();
            loop {
                match self.chars.next() {
                    Some((_, '}')) => break,
                    Some((_, c)) => rest.push(c),
                    None => return Err(format!("'${{{name}' is not closed with '}}'")),
                }
            }
            if rest == "[*]" {
                split = true;
            } else if let Some(d) = rest.strip_prefix('-') {
                default = Some(d.to_string());
            } else if !rest.is_empty() {
                return Err(format!(
                    "'${{{name}{rest}}}': unexpected {rest:?} after the variable name"
                ));
            }
        }
        let (value, source) = match ((self.env)(&name), default) {
            (Some(v), _) => (v, ExpansionSource::Environment),
            (None, Some(d)) => (d, ExpansionSource::Default),
            (None, None) => (String::new(), ExpansionSource::Unset),
        };
        self.expansions.push(Expansion {
            name,
            value: value.clone(),
            source,
        });
        if split {
            let mut parts = value.split_whitespace().peekable();
            while let Some(p) = parts.next() {
                self.word.get_or_insert_with(String::new).push_str(p);
                if parts.peek().is_some() {
                    self.finish_word();
                }
            }
        } else {
            self.word.get_or_insert_with(String::new).push_str(&value);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(text: &str) -> Vec<Vec<String>> {
        let env = |n: &str| match n {
            "PORT" => Some("6443".to_string()),
            "LIST" => Some("a b".to_string()),
            _ => None,
        };
        lex(text, &env).unwrap().into_iter().map(|l| l.words).collect()
    }

    #[test]
    fn comments_and_blank_lines_are_not_lines() {
        let lines = lex("  # only a comment\n\n  bind *:80 # trailing\n", &|_| None).unwrap();
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert_eq!(lines[0].number, 3);
        assert_eq!(lines[0].words, ["bind", "*:80"]);
        assert_eq!(lines[0].text, "bind *:80");
    }

    #[test]
    fn quotes_and_escapes_join_words_as_haproxy_does() {
        assert_eq!(words(r#"a\ b "c d"'e f'g \#h"#), [["a b", "c de fg", "#h"]]);
        assert_eq!(words(r#"x "" '' \x41\t"#), [["x", "", "", "A\t"]]);
        assert_eq!(words(r#"'$PORT' $PORT "\$PORT""#), [["$PORT", "$PORT", "$PORT"]]);
        assert_eq!(words(r#"'a\b' "#), [["a\\b"]]);
    }

    #[test]
    fn environment_is_expanded_inside_double_quotes_only() {
        assert_eq!(
            words(r#"bind ":$PORT" "${PORT}0" "${NOPE-80}" "${NOPE}x""#),
            [["bind", ":6443", "64430", "80", "x"]]
        );
        assert_eq!(words(r#"w "${LIST[*]}""#), [["w", "a", "b"]]);
        let lines = lex(r#"bind ":${PORT}" "${NOPE-1}" "$UNSET""#, &|n| {
            (n == "PORT").then(|| "1".into())
        })
        .unwrap();
        let sources: Vec<_> = lines[0]
            .expansions
            .iter()
            .map(|e| (e.name.as_str(), e.source))
            .collect();
        assert_eq!(
            sources,
            [
                ("PORT", ExpansionSource::Environment),
                ("NOPE", ExpansionSource::Default),
                ("UNSET", ExpansionSource::Unset)
            ]
        );
    }

    #[test]
    fn unclosed_quotes_and_trailing_backslashes_are_refused_with_the_line() {
        for (text, needle) in [
            ("ok\nbind \"*:80\n", "double quote"),
            ("ok\nbind '*:80\n", "single quote"),
            ("ok\nbind *:80 \\\n  name x\n", "does not continue lines"),
            ("ok\nx \"${A\n", "not closed"),
            ("ok\nx \\xZZ\n", "hex"),
        ] {
            let e = lex(text, &|_| None).unwrap_err();
            assert_eq!(e.line, 2, "{text:?}: {e}");
            assert!(e.message.contains(needle), "{text:?}: {e}");
        }
    }

    #[test]
    fn crlf_line_ends_are_read_like_lf() {
        assert_eq!(words("a b\r\nc\r\n"), [vec!["a", "b"], vec!["c"]]);
    }

    #[test]
    fn blanks_are_what_haproxy_calls_spaces_and_a_carriage_return_ends_the_line() {
        assert_eq!(
            words("\t server\ta  \t10.0.0.1:80\x0bcheck\x0cweight 2 # comment\n"),
            [["server", "a", "10.0.0.1:80", "check", "weight", "2"]]
        );
        assert_eq!(words("bind :80\rignored words\n"), [["bind", ":80"]]);
    }

    #[test]
    fn a_last_line_without_a_line_feed_is_found() {
        assert_eq!(missing_final_newline("global\n  maxconn 10"), Some(2));
        assert_eq!(missing_final_newline("global\n  maxconn 10\n"), None);
        assert_eq!(
            missing_final_newline("global\n  \t"),
            None,
            "blanks only: nothing to read"
        );
        assert_eq!(missing_final_newline(""), None);
    }
}
