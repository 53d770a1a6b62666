//! Feature-name patterns: a small glob (`*`, `?`, `[0-9]`, `[!a-c]`) compiled once when rules load, so
//! the hot path only walks tokens.

use std::fmt;

#[derive(Clone, Debug, PartialEq)]
enum Tok {
    Char(char),
    /// `?`: exactly one character.
    One,
    /// `*`: any run of characters, including none.
    Star,
    /// `[...]`: one character in (or, negated, not in) the ranges.
    Class {
        negate: bool,
        ranges: Vec<(char, char)>,
    },
}

impl Tok {
    fn matches(&self, c: char) -> bool {
        match self {
            Tok::Char(x) => *x == c,
            Tok::One => true,
            Tok::Star => true,
            Tok::Class { negate, ranges } => {
                ranges.iter().any(|&(lo, hi)| lo <= c && c <= hi) != *negate
            }
        }
    }
}

/// A feature name or a glob over feature names.
///
/// `*` matches any run of characters, `?` one character, `[0-9]` one character of a class (`[!...]`
/// negates). `temp_zone_[0-9]*` matches `temp_zone_1` and `temp_zone_12` but not the derived
/// `temp_zone_spread`, which `temp_zone_*` would match.
#[derive(Clone, PartialEq)]
pub struct Pattern {
    text: String,
    /// The literal characters before the first wildcard: most names are rejected by this prefix alone,
    /// which matters because patterns are matched against every feature of every reading.
    prefix_len: usize,
    /// `None` for a literal name (no wildcard), which is looked up directly.
    toks: Option<Vec<Tok>>,
}

impl fmt::Debug for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.text)
    }
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl Pattern {
    /// Compiles a pattern; the error says what is wrong with it.
    pub fn new(text: &str) -> Result<Pattern, String> {
        if text.is_empty() {
            return Err("feature name must not be empty".into());
        }
        if let Some(c) = text.chars().find(|c| c.is_whitespace()) {
            return Err(format!(
                "feature name `{text}` must not contain whitespace ({c:?})"
            ));
        }
        if !text.contains(['*', '?', '[']) {
            return Ok(Pattern {
                text: text.to_string(),
                prefix_len: text.len(),
                toks: None,
            });
        }
        let mut toks = Vec::new();
        let mut chars = text.chars().peekable();
        while let Some(c) = chars.next() {
            match c {
                '*' => {
                    // `**` is the same as `*`; collapsing keeps backtracking linear.
                    if toks.last() != Some(&Tok::Star) {
                        toks.push(Tok::Star);
                    }
                }
                '?' => toks.push(Tok::One),
                '[' => {
                    let negate = chars.next_if_eq(&'!').is_some();
                    let mut ranges = Vec::new();
                    let mut closed = false;
                    while let Some(lo) = chars.next() {
                        if lo == ']' && !ranges.is_empty() {
                            closed = true;
                            break;
                        }
                        if chars.peek() == Some(&'-') {
                            chars.next();
                            match chars.next() {
                                Some(']') | None => {
                                    return Err(format!(
                                        "pattern `{text}`: unterminated range in `[...]`"
                                    ))
                                }
                                Some(hi) if hi < lo => {
                                    return Err(format!(
                                        "pattern `{text}`: empty range `{lo}-{hi}`"
                                    ))
                                }
                                Some(hi) => ranges.push((lo, hi)),
                            }
                        } else {
                            ranges.push((lo, lo));
                        }
                    }
                    if !closed {
                        return Err(format!("pattern `{text}`: missing `]`"));
                    }
                    toks.push(Tok::Class { negate, ranges });
                }
                c => toks.push(Tok::Char(c)),
            }
        }
        Ok(Pattern {
            text: text.to_string(),
            prefix_len: text.find(['*', '?', '[']).unwrap_or(text.len()),
            toks: Some(toks),
        })
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// True when the pattern has wildcards (otherwise it names exactly one feature).
    pub fn is_glob(&self) -> bool {
        self.toks.is_some()
    }

    /// Whether `name` matches (a literal pattern matches only itself).
    pub fn matches(&self, name: &str) -> bool {
        match &self.toks {
            None => self.text == name,
            Some(toks) => {
                name.as_bytes()
                    .starts_with(&self.text.as_bytes()[..self.prefix_len])
                    && glob_match(toks, name)
            }
        }
    }
}

/// Iterative wildcard matching: on a mismatch, retry from the last `*` one character further on. With
/// consecutive stars collapsed this is O(pattern * name) at worst and linear in practice.
fn glob_match(toks: &[Tok], s: &str) -> bool {
    let (mut ti, mut si) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None;
    loop {
        if let Some(tok) = toks.get(ti) {
            if *tok == Tok::Star {
                star = Some((ti + 1, si));
                ti += 1;
                continue;
            }
            if let Some(c) = s[si..].chars().next() {
                if tok.matches(c) {
                    ti += 1;
                    si += c.len_utf8();
                    continue;
                }
            }
        } else if si == s.len() {
            return true;
        }
        match star {
            Some((after, from)) => match s[from..].chars().next() {
                Some(c) => {
                    let next = from + c.len_utf8();
                    star = Some((after, next));
                    ti = after;
                    si = next;
                }
                None => return false,
            },
            None => return false,
        }
    }
}
