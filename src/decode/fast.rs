//! A specialised pass for the common flat message: a top-level object of scalars and one `values`
//! object of numbers and nulls, with strings free of escapes. It fills the same [`Scan`] the serde pass
//! does, or gives up (`false`) on anything else — an escape, a nested container outside `values`, an
//! EgizCore key, a number outside the exactly-rounded fast path, any syntax error — and the caller
//! reads the message again with the serde pass. So every message it accepts decodes exactly as the
//! serde pass would decode it, and every malformed one keeps the serde pass's reason and detail.
//!
//! Why: the serde visitor spent most of the decoding time in per-byte dispatch, key matching and the
//! general float path; this pass reads a flat message in one forward scan, reuses the previous
//! message's sensor names when the keys repeat (they almost always do), and converts decimal numbers
//! with at most 15-16 significant digits by one exact multiplication or division.

use super::flat::name_bucket;
use super::scan::{upsert, Field, Num, Scalar, Scan, Shape};
use crate::event::{same_bytes, Name};
use std::borrow::Cow;

/// `10^0 ..= 10^22`: the powers of ten that are exact in an f64.
const POW10: [f64; 23] = [
    1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15, 1e16,
    1e17, 1e18, 1e19, 1e20, 1e21, 1e22,
];

/// Largest significand converted exactly by the fast path (2^53).
const MAX_EXACT: u64 = 1 << 53;

/// Equipment types whose sensor names [`NameCache`] remembers at most.
const MAX_TEMPLATES: usize = 32;

/// The sensor names of the last message of each equipment type read by the pass, in order: a fleet's
/// messages interleave types (an oven's reading, then a mixer's), and each type's keys repeat. Every
/// name held is free of `"`, `\` and control characters, so a key whose bytes equal it followed by
/// `"` is that name.
#[derive(Default)]
pub(crate) struct NameCache {
    templates: Vec<Template>,
}

/// The sensor names of one equipment type's last message.
struct Template {
    /// The `equipment_type` string's raw bytes; messages without an equipment type before `values`
    /// share the empty key.
    etype: Box<[u8]>,
    names: Vec<Name>,
    /// Whether `names` has no name twice; None: not known since they last changed.
    distinct: Option<bool>,
}

impl NameCache {
    /// The template for messages whose `equipment_type` string (raw bytes) is `key`.
    #[inline]
    fn template(&mut self, key: &[u8]) -> &mut Template {
        let i = match self.templates.iter().position(|t| *t.etype == *key) {
            Some(i) => i,
            None if self.templates.len() < MAX_TEMPLATES => {
                self.templates.push(Template {
                    etype: key.into(),
                    names: Vec::new(),
                    distinct: Some(true),
                });
                self.templates.len() - 1
            }
            None => {
                // Full (an unusual fleet): the last slot serves every further type.
                let last = self.templates.len() - 1;
                self.templates[last].etype = key.into();
                last
            }
        };
        &mut self.templates[i]
    }
}

/// Reads a flat message into `scan` (a fresh one), reusing and updating the sensor names `names`
/// remembers. False means "not handled here": `scan` is then in an unspecified state and the caller
/// must use the serde pass.
pub(crate) fn scan_flat<'de>(raw: &'de [u8], scan: &mut Scan<'de>, names: &mut NameCache) -> bool {
    let mut p = Parser {
        b: raw,
        i: 0,
        etype: b"",
    };
    p.object(scan, names).is_some()
}

struct Parser<'a> {
    b: &'a [u8],
    i: usize,
    /// The raw bytes of the `equipment_type` string read so far (empty: none): selects the names
    /// template for `values`.
    etype: &'a [u8],
}

/// Byte classes inside a string: 0 plain ASCII, 1 the closing quote, 2 an escape or a control
/// character (left to the serde pass), 3 a byte of a multi-byte UTF-8 sequence.
static STRING_CLASS: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut c = 0;
    while c < 256 {
        t[c] = if c < 0x20 || c == b'\\' as usize {
            2
        } else if c == b'"' as usize {
            1
        } else if c >= 0x80 {
            3
        } else {
            0
        };
        c += 1;
    }
    t
};

impl<'a> Parser<'a> {
    #[inline]
    fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }

    /// Skips JSON whitespace (the four characters serde_json accepts).
    #[inline]
    fn ws(&mut self) {
        while let Some(&c) = self.b.get(self.i) {
            // Most bytes are above the space: one comparison.
            if c > b' ' || !matches!(c, b' ' | b'\n' | b'\t' | b'\r') {
                break;
            }
            self.i += 1;
        }
    }

    #[inline]
    fn eat(&mut self, c: u8) -> Option<()> {
        if self.peek() == Some(c) {
            self.i += 1;
            Some(())
        } else {
            None
        }
    }

    fn object(&mut self, scan: &mut Scan<'a>, names: &mut NameCache) -> Option<()> {
        self.ws();
        self.eat(b'{')?;
        self.ws();
        if self.eat(b'}').is_none() {
            loop {
                // Known keys are ASCII by construction; any other key is checked for UTF-8 below.
                let key = self.string_bytes()?;
                self.colon()?;
                match Field::of_key_bytes(key) {
                    Field::ThingId => scan.thing_id = Some(self.scalar()?),
                    Field::EquipmentType => {
                        let start = self.i;
                        let v = self.scalar()?;
                        if let Scalar::Str(_) = v {
                            self.etype = &self.b[start + 1..self.i - 1];
                        }
                        scan.equipment_type = Some(v);
                    }
                    Field::Ts => scan.ts = Some(self.scalar()?),
                    Field::Timestamp => scan.timestamp = Some(self.scalar()?),
                    Field::Label => scan.label = Some(self.scalar()?),
                    Field::Values => {
                        self.values(scan, names.template(self.etype))?;
                        scan.values_shape = Shape::Object;
                    }
                    // EgizCore: the serde pass (it streams the nested features).
                    Field::Event | Field::Features => return None,
                    Field::Other => {
                        if !key.is_ascii() {
                            std::str::from_utf8(key).ok()?;
                        }
                        self.scalar()?;
                    }
                }
                if !self.next_member()? {
                    break;
                }
            }
        }
        self.ws();
        (self.i == self.b.len()).then_some(())
    }

    /// The `values` object: numbers are kept, nulls skipped; anything else is left to the serde pass
    /// (which records the bad value with its detail).
    fn values(&mut self, scan: &mut Scan<'a>, t: &mut Template) -> Option<()> {
        self.eat(b'{')?;
        scan.values.clear();
        scan.bad_value = None;
        if scan.values.capacity() == 0 {
            // One allocation of the expected size (cheaper than `reserve`'s growth path): as many
            // values as the last message of this equipment type had (types of one fleet differ).
            let expected = if t.names.is_empty() {
                scan.values_hint
            } else {
                t.names.len()
            };
            scan.values = Vec::with_capacity(expected.max(4));
        }
        self.ws();
        if self.eat(b'}').is_some() {
            return Some(());
        }
        // A repeated key must replace the earlier value. While every key so far is the template's at
        // its position and the template has no name twice, none can repeat; from the first other key
        // on, the same 64-bit filter of names seen as the serde pass (see `flat::ValuesSeed`).
        let mut filtering = t.distinct != Some(true);
        let mut seen = 0u64;
        let mut k = 0;
        loop {
            let (name, hit) = self.name(&mut t.names, k)?;
            if !hit {
                t.distinct = None;
                if !filtering {
                    filtering = true;
                    for (n, _) in &scan.values {
                        seen |= 1u64 << name_bucket(n);
                    }
                }
            }
            k += 1;
            self.colon()?;
            match self.peek()? {
                b'n' => self.literal(b"null")?,
                b'-' | b'0'..=b'9' => {
                    let v = self.value_number()?;
                    if !filtering {
                        scan.values.push((name, v));
                    } else {
                        let bit = 1u64 << name_bucket(&name);
                        if seen & bit == 0 {
                            seen |= bit;
                            scan.values.push((name, v));
                        } else {
                            upsert(&mut scan.values, name, v);
                        }
                    }
                }
                _ => return None,
            }
            if !self.next_member()? {
                break;
            }
        }
        if t.distinct.is_none() {
            let n = &t.names;
            t.distinct = Some((1..n.len()).all(|i| !n[..i].contains(&n[i])));
        }
        Some(())
    }

    /// After a member's value: `,` (true: another member follows, whitespace after it skipped) or `}`
    /// (false: the object ends), each possibly after whitespace; anything else is None.
    #[inline]
    fn next_member(&mut self) -> Option<bool> {
        let mut c = self.peek()?;
        if !matches!(c, b',' | b'}') {
            self.ws();
            c = self.peek()?;
        }
        self.i += 1;
        match c {
            b',' => {
                self.ws();
                Some(true)
            }
            b'}' => Some(false),
            _ => None,
        }
    }

    /// The `:` after a key, with any whitespace around it.
    #[inline]
    fn colon(&mut self) -> Option<()> {
        if self.peek() == Some(b':') {
            self.i += 1;
        } else {
            self.ws();
            self.eat(b':')?;
        }
        self.ws();
        Some(())
    }

    /// The `k`-th key of `values`: the previous message's `k`-th name when the bytes match (true), else
    /// read (and remembered in its place; false).
    #[inline]
    fn name(&mut self, names: &mut Vec<Name>, k: usize) -> Option<(Name, bool)> {
        if let Some(prev) = names.get(k) {
            let n = prev.len();
            let start = self.i + 1;
            if self.peek() == Some(b'"')
                && self
                    .b
                    .get(start..start + n)
                    .is_some_and(|key| same_bytes(key, prev.as_bytes()))
                && self.b.get(start + n) == Some(&b'"')
            {
                self.i = start + n + 1;
                return Some((prev.clone(), true));
            }
        }
        let name = Name::from(self.string()?);
        if k < names.len() {
            names[k] = name.clone();
        } else if k == names.len() {
            names.push(name.clone());
        }
        Some((name, false))
    }

    /// A string without escapes or control characters (else None: the serde pass decodes or rejects
    /// it), borrowed from the input. Only a string with a non-ASCII byte is checked for UTF-8.
    #[inline]
    fn string(&mut self) -> Option<&'a str> {
        let (bytes, ascii) = self.string_bytes_ascii()?;
        if ascii {
            // Safety: every byte is below 0x80, so this is ASCII and therefore UTF-8.
            Some(unsafe { std::str::from_utf8_unchecked(bytes) })
        } else {
            std::str::from_utf8(bytes).ok()
        }
    }

    /// The bytes of a string without escapes or control characters (not checked for UTF-8).
    #[inline]
    fn string_bytes(&mut self) -> Option<&'a [u8]> {
        self.string_bytes_ascii().map(|(b, _)| b)
    }

    /// [`Parser::string_bytes`], and whether they are all ASCII.
    #[inline]
    fn string_bytes_ascii(&mut self) -> Option<(&'a [u8], bool)> {
        self.eat(b'"')?;
        let start = self.i;
        let b = self.b;
        let mut j = start;
        let mut high = false;
        loop {
            // Eight bytes at a time up to the first one that may end the plain run.
            if let Some(v) = load8(b, j) {
                let special = special_bytes(v);
                if special == 0 {
                    j += 8;
                    continue;
                }
                j += (special.trailing_zeros() / 8) as usize;
            }
            match STRING_CLASS[*b.get(j)? as usize] {
                0 => {}
                1 => break,
                2 => return None,
                _ => high = true,
            }
            j += 1;
        }
        self.i = j + 1;
        Some((&b[start..j], !high))
    }

    #[inline]
    fn literal(&mut self, word: &[u8]) -> Option<()> {
        if self.b.get(self.i..self.i + word.len()) == Some(word) {
            self.i += word.len();
            Some(())
        } else {
            None
        }
    }

    /// A scalar value (containers: None).
    fn scalar(&mut self) -> Option<Scalar<'a>> {
        Some(match self.peek()? {
            b'"' => Scalar::Str(Cow::Borrowed(self.string()?)),
            b'n' => {
                self.literal(b"null")?;
                Scalar::Null
            }
            b't' => {
                self.literal(b"true")?;
                Scalar::Bool(true)
            }
            b'f' => {
                self.literal(b"false")?;
                Scalar::Bool(false)
            }
            b'-' | b'0'..=b'9' => Scalar::Num(self.number()?),
            _ => return None,
        })
    }

    /// A number of `values` as [`Parser::number`] then [`Num::as_f64`] read it (the same value, the
    /// same end): the usual form by [`Parser::usual_number`], anything else by `number`.
    #[inline]
    fn value_number(&mut self) -> Option<f64> {
        match self.usual_number() {
            Some((x, end)) => {
                self.i = end;
                Some(x)
            }
            None => self.number().map(Num::as_f64),
        }
    }

    /// The value and end of a number of the usual form: an optional minus, 1-7 integer digits
    /// without a leading zero, optionally `.` and 1-7 fraction digits, no exponent. At most 14 digits
    /// make `m < 2^53` and the scale is at most `10^7`, so `m / 10^scale` is the correctly rounded
    /// value, as in [`Parser::number`]. None for any other form.
    #[inline]
    fn usual_number(&self) -> Option<(f64, usize)> {
        let b = self.b;
        let neg = b.get(self.i) == Some(&b'-');
        let int_at = self.i + usize::from(neg);
        let mut m = 0;
        let mut end = digits(b, int_at, &mut m);
        let k = end - int_at;
        if !(1..8).contains(&k) || (b[int_at] == b'0' && k > 1) {
            return None;
        }
        let mut scale = 0;
        if b.get(end) == Some(&b'.') {
            let frac_at = end + 1;
            end = digits(b, frac_at, &mut m);
            scale = end - frac_at;
            if !(1..8).contains(&scale) {
                return None;
            }
        }
        if matches!(b.get(end), Some(b'e' | b'E')) {
            return None;
        }
        let x = if scale == 0 {
            m as f64
        } else if m == 0 {
            0.0
        } else {
            m as f64 / POW10[scale]
        };
        Some((if neg { -x } else { x }, end))
    }

    /// A JSON number as serde_json reports it (`U`/`I` for integers, `F` otherwise, `-0` as `F(-0.0)`),
    /// when it has at most 19 digits and, if not an integer, its value `m * 10^e` has `m <= 2^53` and
    /// `|e| <= 22`: then both factors are exact and one IEEE operation rounds the exact value correctly,
    /// as serde_json's `float_roundtrip` parser does. Else None.
    #[inline]
    fn number(&mut self) -> Option<Num> {
        let b = self.b;
        let mut i = self.i;
        let neg = b.get(i) == Some(&b'-');
        if neg {
            i += 1;
        }
        let mut m: u64 = 0;
        let int_start = i;
        match b.get(i) {
            Some(b'0') => {
                i += 1;
                if let Some(b'0'..=b'9') = b.get(i) {
                    return None;
                }
            }
            Some(b'1'..=b'9') => i = digits(b, i, &mut m),
            _ => return None,
        }
        let mut n_digits = i - int_start;
        let mut exp: i32 = 0;
        let mut is_float = false;
        if b.get(i) == Some(&b'.') {
            is_float = true;
            let frac_start = i + 1;
            i = digits(b, frac_start, &mut m);
            if i == frac_start {
                return None;
            }
            n_digits += i - frac_start;
            exp = -((i - frac_start).min(1000) as i32);
        }
        // More digits than a u64 surely holds (`m` wrapped): the serde pass.
        if n_digits > 19 {
            return None;
        }
        if let Some(b'e' | b'E') = b.get(i) {
            is_float = true;
            i += 1;
            let negative_exp = match b.get(i) {
                Some(b'-') => {
                    i += 1;
                    true
                }
                Some(b'+') => {
                    i += 1;
                    false
                }
                _ => false,
            };
            let exp_start = i;
            let mut e: u64 = 0;
            i = digits(b, exp_start, &mut e);
            if i == exp_start || i - exp_start > 4 {
                return None;
            }
            exp += if negative_exp { -(e as i32) } else { e as i32 };
        }
        let n = if !is_float {
            if !neg {
                Num::U(m)
            } else {
                // serde_json: `-0` and magnitudes beyond i64 become floats.
                let v = (m as i64).wrapping_neg();
                if v >= 0 {
                    Num::F(-(m as f64))
                } else {
                    Num::I(v)
                }
            }
        } else {
            let f = if m == 0 {
                0.0
            } else if m > MAX_EXACT || exp.unsigned_abs() > 22 {
                return None;
            } else if exp >= 0 {
                m as f64 * POW10[exp as usize]
            } else {
                m as f64 / POW10[(-exp) as usize]
            };
            Num::F(if neg { -f } else { f })
        };
        self.i = i;
        Some(n)
    }
}

/// `0x01` in every byte.
const ONES: u64 = 0x0101_0101_0101_0101;
/// The high bit of every byte.
const HIGH: u64 = 0x8080_8080_8080_8080;

/// The 8 bytes of `b` from `i` as a little-endian word (the first byte lowest), if there are 8.
#[inline]
fn load8(b: &[u8], i: usize) -> Option<u64> {
    let chunk = b.get(i..)?.first_chunk::<8>()?;
    Some(u64::from_le_bytes(*chunk))
}

/// The bytes of `v` (eight string bytes, see [`load8`]) that may end a plain run of a string: `"`, `\`,
/// control characters and non-ASCII bytes get their high bit set. The lowest flagged byte is the first
/// such byte (a borrow can only flag bytes above a flagged one).
#[inline]
fn special_bytes(v: u64) -> u64 {
    let has_zero = |x: u64| x.wrapping_sub(ONES) & !x;
    let quote = has_zero(v ^ (ONES * b'"' as u64));
    let backslash = has_zero(v ^ (ONES * b'\\' as u64));
    let control = v.wrapping_sub(ONES * 0x20) & !v;
    (quote | backslash | control | v) & HIGH
}

/// Reads ASCII digits from `b[i..]` into `m` (`m = 10 m + digit`, wrapping: the caller bounds the count)
/// and returns the index after them.
///
/// Eight bytes at a time while eight remain: a message's numbers are runs of a few digits ("230" and
/// "0339" in 230.0339; a millisecond timestamp is 8 + 5), so one word-wide step reads a whole run
/// where a byte loop takes a compare, a multiply and a data-dependent exit branch per digit.
#[inline]
fn digits(b: &[u8], mut i: usize, m: &mut u64) -> usize {
    while let Some(v) = load8(b, i) {
        let k = leading_digits(v);
        if k == 0 {
            return i;
        }
        // The k digits, as the last k of an eight-digit number whose first 8 - k digits are 0.
        let x = (v ^ (ONES * b'0' as u64)) << (8 * (8 - k));
        *m = m.wrapping_mul(POW10_U64[k]).wrapping_add(eight_digits(x));
        i += k;
        if k < 8 {
            return i;
        }
    }
    while let Some(&c) = b.get(i) {
        let d = c.wrapping_sub(b'0');
        if d > 9 {
            break;
        }
        *m = m.wrapping_mul(10).wrapping_add(d as u64);
        i += 1;
    }
    i
}

/// `10^0 ..= 10^8` as integers (the scale of a run of up to eight digits).
const POW10_U64: [u64; 9] = [
    1,
    10,
    100,
    1_000,
    10_000,
    100_000,
    1_000_000,
    10_000_000,
    100_000_000,
];

/// How many of the eight bytes of `v` (see [`load8`]) are ASCII digits before the first other byte.
#[inline]
fn leading_digits(v: u64) -> usize {
    // Byte x = c ^ '0' is a digit's value (0-9) exactly when its high nibble and that of x + 6 are
    // both 0. The add carries into the next byte only from a byte >= 0xfa, itself not a digit, so the
    // bytes before the first non-digit read true.
    let x = v ^ (ONES * b'0' as u64);
    let not_digit = (x | x.wrapping_add(ONES * 6)) & (ONES * 0xf0);
    (not_digit.trailing_zeros() / 8) as usize
}

/// The number whose eight decimal digits (first digit in the lowest byte) are the bytes of `x`, each
/// 0-9: pairs, then quads, then the eight (the SWAR method of simdjson and fast_float).
#[inline]
fn eight_digits(x: u64) -> u64 {
    const MASK: u64 = 0x0000_00ff_0000_00ff;
    const MUL1: u64 = 100 + (1_000_000 << 32);
    const MUL2: u64 = 1 + (10_000 << 32);
    let pairs = x.wrapping_mul(10).wrapping_add(x >> 8);
    ((pairs & MASK)
        .wrapping_mul(MUL1)
        .wrapping_add(((pairs >> 16) & MASK).wrapping_mul(MUL2)))
        >> 32
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::SmallRng;
    use rand::{Rng, SeedableRng};

    /// Bytes that matter to [`special_bytes`]: string specials (`"`, `\`, controls) and the bytes
    /// beside them (space, DEL), non-ASCII, digits and JSON punctuation, and arbitrary ones.
    fn interesting(rng: &mut SmallRng) -> u8 {
        const PICKS: &[u8] = b"0123456789/:.-eE\"\\\x00\x1f\x20\x7f";
        match rng.random_range(0..4) {
            0 | 1 => PICKS[rng.random_range(0..PICKS.len())],
            2 => rng.random_range(0x80..=0xff),
            _ => rng.random(),
        }
    }

    /// A random JSON-ish number: sign, integer digits (a leading zero sometimes), fraction,
    /// exponent, then what may follow it in a message, or the end.
    fn number_text(rng: &mut SmallRng) -> Vec<u8> {
        let mut t = Vec::new();
        let digits = |rng: &mut SmallRng, t: &mut Vec<u8>, n: usize| {
            for _ in 0..n {
                t.push(rng.random_range(b'0'..=b'9'));
            }
        };
        if rng.random_range(0..3) == 0 {
            t.push(b'-');
        }
        let int_len = rng.random_range(0..10);
        digits(rng, &mut t, int_len);
        if rng.random_range(0..4) != 0 {
            t.push(b'.');
            let frac_len = rng.random_range(0..10);
            digits(rng, &mut t, frac_len);
        }
        if rng.random_range(0..6) == 0 {
            t.push(if rng.random() { b'e' } else { b'E' });
            if rng.random() {
                t.push(if rng.random() { b'-' } else { b'+' });
            }
            let exp_len = rng.random_range(0..4);
            digits(rng, &mut t, exp_len);
        }
        let tail = rng.random_range(0..12);
        for _ in 0..tail {
            t.push(match rng.random_range(0..3) {
                0 => interesting(rng),
                1 => b",}"[rng.random_range(0..2)],
                _ => rng.random(),
            });
        }
        t
    }

    #[test]
    fn value_number_reads_as_number_does() {
        let mut rng = SmallRng::seed_from_u64(0x7a1e);
        let mut fast = 0;
        for _ in 0..300_000 {
            let text = number_text(&mut rng);
            let mut a = Parser {
                b: &text,
                i: 0,
                etype: b"",
            };
            let mut b = Parser {
                b: &text,
                i: 0,
                etype: b"",
            };
            let got = a.value_number().map(f64::to_bits);
            let want = b.number().map(|n| n.as_f64().to_bits());
            assert_eq!(got, want, "{:?}", String::from_utf8_lossy(&text));
            if want.is_some() {
                assert_eq!(a.i, b.i, "end of {:?}", String::from_utf8_lossy(&text));
            }
            let usual = Parser {
                b: &text,
                i: 0,
                etype: b"",
            }
            .usual_number();
            fast += usize::from(usual.is_some());
        }
        assert!(
            fast > 50_000,
            "the fast form was exercised ({fast} numbers)"
        );
    }

    #[test]
    fn digits_reads_runs_as_the_byte_loop_does() {
        let mut rng = SmallRng::seed_from_u64(0xd161);
        for _ in 0..200_000 {
            let len = rng.random_range(0..24);
            let bytes: Vec<u8> = (0..len)
                .map(|_| match rng.random_range(0..5) {
                    0 => interesting(&mut rng),
                    _ => rng.random_range(b'0'..=b'9'),
                })
                .collect();
            let start = rng.random_range(0..=len);
            let m0 = rng.random_range(0..1_000_000u64);
            let (mut want_m, mut want_i) = (m0, start);
            while let Some(d) = bytes.get(want_i).filter(|c| c.is_ascii_digit()) {
                want_m = want_m.wrapping_mul(10).wrapping_add(u64::from(d - b'0'));
                want_i += 1;
            }
            let mut m = m0;
            let i = digits(&bytes, start, &mut m);
            assert_eq!((i, m), (want_i, want_m), "{:?} from {start}", bytes);
        }
    }

    #[test]
    fn special_bytes_finds_the_first_special_byte() {
        let mut rng = SmallRng::seed_from_u64(0x5b);
        for _ in 0..200_000 {
            let mut bytes = [0u8; 8];
            for b in bytes.iter_mut() {
                *b = if rng.random_range(0..3) == 0 {
                    interesting(&mut rng)
                } else {
                    rng.random_range(0x20..0x7f)
                };
            }
            let first = bytes.iter().position(|&c| STRING_CLASS[c as usize] != 0);
            let special = special_bytes(u64::from_le_bytes(bytes));
            let got = (special != 0).then(|| (special.trailing_zeros() / 8) as usize);
            assert_eq!(got, first, "{bytes:?}");
        }
    }
}
