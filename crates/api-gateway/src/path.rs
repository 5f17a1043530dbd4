//! The canonical form of a request path: the path routes are matched
//! against and the path the upstream receives, so that what the gateway
//! authorises is what the upstream serves.
//!
//! Upstreams decode paths; routing on the raw form would let
//! `/api/%61dmin`, `//api/admin` or `/api/./admin` reach a route's upstream
//! around the route. So percent-encoded unreserved characters are decoded,
//! repeated slashes merged and hex digits upper-cased (RFC 3986 §6.2.2),
//! and what cannot be made unambiguous is refused: encoded `/` or `\`, a
//! raw `\`, `;` path parameters (plain or encoded), encoded `%` (double
//! encoding), encoded control characters, bytes outside RFC 3986's `pchar`,
//! and `.`/`..` segments in any spelling.

use std::borrow::Cow;

/// Why a path has no canonical form.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathError {
    /// Not an origin-form path (`/…`).
    NotAbsolute,
    /// A byte no path may hold as it is (space, `\`, `"`, non-ASCII…).
    Byte,
    /// A `;` (path parameters, `..;` tricks), plain or encoded.
    Parameter,
    /// `%` not followed by two hex digits.
    Encoding,
    /// An encoded character an upstream could read two ways: `/`, `\`,
    /// `%` (double encoding), control characters.
    Ambiguous,
    /// A `.` or `..` segment.
    DotSegment,
}

/// The canonical form of `path`, borrowed when it already is canonical
/// (the usual case, which costs one pass over the bytes).
pub fn canonical(path: &str) -> Result<Cow<'_, str>, PathError> {
    let bytes = path.as_bytes();
    if bytes.first() != Some(&b'/') {
        return Err(PathError::NotAbsolute);
    }
    let mut changes = false;
    let mut previous = 0u8;
    for (i, &b) in bytes.iter().enumerate() {
        match class(b) {
            Class::Plain => {}
            Class::Slash if previous == b'/' => changes = true,
            Class::Slash => {}
            Class::Dot if dot_segment_at(bytes, i) => return Err(PathError::DotSegment),
            Class::Dot => {}
            Class::Percent => changes |= !canonical_encoding(&bytes[i + 1..])?,
            Class::Semicolon => return Err(PathError::Parameter),
            Class::Refused => return Err(PathError::Byte),
        }
        previous = b;
    }
    let canonical = if changes { Cow::Owned(rebuild(bytes)?) } else { Cow::Borrowed(path) };
    if canonical.contains('%') && CASE_MAPS_TO_ASCII.iter().any(|c| canonical.contains(c)) {
        return Err(PathError::Ambiguous);
    }
    Ok(canonical)
}

/// Characters, as canonical encodings, that Unicode upper- or lower-casing
/// turns into ASCII letters: dotless i, dotted capital I, long s, Kelvin sign.
const CASE_MAPS_TO_ASCII: [&str; 4] = ["%C4%B1", "%C4%B0", "%C5%BF", "%E2%84%AA"];

/// Whether the encoding after a `%` (at the start of `rest`) stays as it
/// is: two upper-case hex digits of a character that is not unreserved.
fn canonical_encoding(rest: &[u8]) -> Result<bool, PathError> {
    let pair = rest.get(..2).ok_or(PathError::Encoding)?;
    let value = decoded(hex_pair(pair).ok_or(PathError::Encoding)?)?;
    Ok(!unreserved(value) && !pair.iter().any(u8::is_ascii_lowercase))
}

/// An encoded character, unless it is one an upstream could read two ways.
fn decoded(value: u8) -> Result<u8, PathError> {
    match value {
        b'/' | b'\\' | b'%' | 0x00..=0x1f | 0x7f => Err(PathError::Ambiguous),
        b';' => Err(PathError::Parameter),
        value => Ok(value),
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Class {
    Plain,
    Slash,
    Dot,
    Percent,
    Semicolon,
    Refused,
}

/// RFC 3986 `pchar` and `/`, sorted by what canonicalisation does with them.
fn class(b: u8) -> Class {
    match b {
        b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'~' => Class::Plain,
        b'!' | b'$' | b'&' | b'\'' | b'(' | b')' | b'*' | b'+' | b',' | b'=' | b':' | b'@' => Class::Plain,
        b'/' => Class::Slash,
        b'.' => Class::Dot,
        b'%' => Class::Percent,
        b';' => Class::Semicolon,
        _ => Class::Refused,
    }
}

/// Whether the `.` at `i` of a path without encodings starts a `.` or `..` segment.
fn dot_segment_at(bytes: &[u8], i: usize) -> bool {
    if bytes[i - 1] != b'/' {
        return false;
    }
    let rest = &bytes[i..];
    let segment = rest.iter().position(|b| *b == b'/').map_or(rest, |end| &rest[..end]);
    segment == b"." || segment == b".."
}

/// The canonical path of `bytes`, which hold encodings or repeated slashes.
fn rebuild(bytes: &[u8]) -> Result<String, PathError> {
    let mut out = String::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'%' {
            let value = bytes.get(i + 1..i + 3).and_then(hex_pair).ok_or(PathError::Encoding)?;
            match decoded(value)? {
                v if unreserved(v) => out.push(char::from(v)),
                v => {
                    out.push('%');
                    out.push(char::from(HEX[usize::from(v >> 4)]));
                    out.push(char::from(HEX[usize::from(v & 0xf)]));
                }
            }
            i += 3;
            continue;
        }
        match class(b) {
            Class::Slash if out.ends_with('/') => {}
            Class::Semicolon => return Err(PathError::Parameter),
            Class::Refused => return Err(PathError::Byte),
            _ => out.push(char::from(b)),
        }
        i += 1;
    }
    if has_dot_segment(&out) {
        return Err(PathError::DotSegment);
    }
    Ok(out)
}

const HEX: &[u8; 16] = b"0123456789ABCDEF";

fn hex_pair(pair: &[u8]) -> Option<u8> {
    let digit = |b: u8| char::from(b).to_digit(16);
    u8::try_from(digit(pair[0])? * 16 + digit(pair[1])?).ok()
}

/// RFC 3986 §2.3.
fn unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// Whether a decoded path has a `.` or `..` segment.
fn has_dot_segment(path: &str) -> bool {
    path.split('/').any(|segment| segment == "." || segment == "..")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_paths_are_borrowed_as_they_are() {
        for path in ["/", "/api/notes", "/a/b.js", "/a/..b/c", "/a/...", "/x/~u/a-b_c", "/a/b/", "/a:b@c!$&'()*+,="] {
            assert!(matches!(canonical(path), Ok(Cow::Borrowed(p)) if p == path), "{path}");
        }
    }

    #[test]
    fn encodings_of_unreserved_characters_and_repeated_slashes_are_undone() {
        let cases = [
            ("/api/%61dmin/users", "/api/admin/users"),
            ("//api/admin", "/api/admin"),
            ("/api///admin//", "/api/admin/"),
            ("/a/%7euser", "/a/~user"),
            ("/a/%2dx%5f", "/a/-x_"),
            ("/a/%20b", "/a/%20b"),
            ("/a/%c3%a9", "/a/%C3%A9"),
            ("/a/%3f%23", "/a/%3F%23"),
            ("/a/%2e%2e%2e", "/a/..."),
        ];
        for (path, want) in cases {
            assert_eq!(canonical(path).as_deref(), Ok(want), "{path}");
        }
    }

    #[test]
    fn what_an_upstream_could_read_two_ways_is_refused() {
        let cases = [
            ("api", PathError::NotAbsolute),
            ("", PathError::NotAbsolute),
            ("*", PathError::NotAbsolute),
            ("/api%2fadmin", PathError::Ambiguous),
            ("/api%2Fadmin", PathError::Ambiguous),
            ("/api%5cadmin", PathError::Ambiguous),
            ("/api\\admin", PathError::Byte),
            ("/a%00b", PathError::Ambiguous),
            ("/a%0d%0a", PathError::Ambiguous),
            ("/a/%252e%252e/b", PathError::Ambiguous),
            ("/api;x=1/admin", PathError::Parameter),
            ("/api/..;/admin", PathError::Parameter),
            ("/api/x;/admin", PathError::Parameter),
            ("/api/%3b/admin", PathError::Parameter),
            ("/a/%zz", PathError::Encoding),
            ("/a/%4", PathError::Encoding),
            ("/a/%", PathError::Encoding),
            ("/a b", PathError::Byte),
            ("/a\"b", PathError::Byte),
            ("/a/é", PathError::Byte),
            ("/a/../b", PathError::DotSegment),
            ("/a/./b", PathError::DotSegment),
            ("/a/..", PathError::DotSegment),
            ("/..", PathError::DotSegment),
            ("/a/%2e%2E/b", PathError::DotSegment),
            ("/a/.%2e", PathError::DotSegment),
            ("/a/%2e", PathError::DotSegment),
            ("//..//b", PathError::DotSegment),
            ("/api/adm%C4%B1n", PathError::Ambiguous),
            ("/api/adm%c4%b1n", PathError::Ambiguous),
            ("/api/%C4%B0d", PathError::Ambiguous),
            ("/api/cla%C5%BF%C5%BF", PathError::Ambiguous),
            ("/api/%E2%84%AAey", PathError::Ambiguous),
        ];
        for (path, want) in cases {
            assert_eq!(canonical(path), Err(want), "{path}");
        }
    }

    #[test]
    fn a_canonical_path_is_its_own_canonical_form() {
        for path in ["/api/%61dmin/users", "//a//b", "/a/%c3%a9/%7e", "/x/%2e%2e%2e/%41"] {
            let once = canonical(path).unwrap().into_owned();
            assert_eq!(canonical(&once).as_deref(), Ok(once.as_str()), "{path}");
            assert!(matches!(canonical(&once), Ok(Cow::Borrowed(_))), "{path}");
        }
    }
}
