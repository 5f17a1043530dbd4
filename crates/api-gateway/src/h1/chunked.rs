//! A scanner following a chunked body (RFC 9112 §7.1) as it is relayed.
//! Strict as hyper's decoder is: every line ends with CRLF, a size line
//! is hex digits, optional whitespace and `;` extensions, and anything
//! else is malformed (a body one reader would end elsewhere than another).
//! Trailer fields are not relayed, as hyper's path relays none: an upstream
//! cannot slip header fields past the gateway's response rules in them.

/// Where a relayed chunked body is (RFC 9112 §7.1), to know where it ends.
#[derive(Debug, Default)]
pub(super) struct Chunks {
    state: ChunkState,
    size: u64,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum ChunkState {
    #[default]
    Size,
    SizeDigits,
    /// Whitespace after the size digits.
    SizeSpace,
    Extension,
    SizeLf,
    Data,
    DataCr,
    DataLf,
    /// In the trailer section; `true` at the start of a line.
    Trailer(bool),
    TrailerLf(bool),
    Done,
}

impl Chunks {
    pub fn done(&self) -> bool {
        self.state == ChunkState::Done
    }

    /// Follows `bytes`, copying what is relayed (all but trailer fields) to
    /// `out`; returns how many belong to the body (all of them until it
    /// ends), `None` if the framing is malformed.
    pub fn scan(&mut self, bytes: &[u8], out: &mut Vec<u8>) -> Option<usize> {
        use ChunkState::*;
        // Where the bytes not yet copied start, unless in the trailers.
        let mut kept_from = (!self.in_trailers()).then_some(0);
        let mut i = 0;
        while i < bytes.len() {
            let b = bytes[i];
            self.state = match self.state {
                Size | SizeDigits if b.is_ascii_hexdigit() => {
                    let digit = (b as char).to_digit(16).map(u64::from)?;
                    self.size = self.size.checked_mul(16)?.checked_add(digit)?;
                    SizeDigits
                }
                SizeDigits | SizeSpace if b == b' ' || b == b'\t' => SizeSpace,
                SizeDigits | SizeSpace if b == b';' => Extension,
                SizeDigits | SizeSpace | Extension if b == b'\r' => SizeLf,
                Extension if b != b'\n' => Extension,
                SizeLf if b == b'\n' => self.after_size(),
                Data => {
                    let taken = (bytes.len() - i).min(usize::try_from(self.size).unwrap_or(usize::MAX));
                    self.size -= taken as u64;
                    i += taken;
                    if self.size == 0 {
                        self.state = DataCr;
                    }
                    continue;
                }
                DataCr if b == b'\r' => DataLf,
                DataLf if b == b'\n' => Size,
                Trailer(start) if b == b'\r' => TrailerLf(start),
                TrailerLf(true) if b == b'\n' => Done,
                TrailerLf(false) if b == b'\n' => Trailer(true),
                Trailer(_) if b != b'\n' => Trailer(false),
                Done => return Some(i),
                _ => return None,
            };
            i += 1;
            if let Some(from) = kept_from.filter(|_| self.in_trailers()) {
                // The last chunk's line goes; the trailer fields after it do not.
                out.extend_from_slice(&bytes[from..i]);
                kept_from = None;
            }
            if self.state == Done {
                out.extend_from_slice(b"\r\n");
                return Some(i);
            }
        }
        if let Some(from) = kept_from {
            out.extend_from_slice(&bytes[from..i]);
        }
        Some(i)
    }

    fn in_trailers(&self) -> bool {
        matches!(self.state, ChunkState::Trailer(_) | ChunkState::TrailerLf(_))
    }

    fn after_size(&mut self) -> ChunkState {
        if self.size == 0 { ChunkState::Trailer(true) } else { ChunkState::Data }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// How many bytes of `body` belong to it, scanned in pieces of `step`,
    /// and whether it ended; `None` when malformed.
    fn scan(body: &[u8], step: usize) -> Option<(usize, bool)> {
        relay(body, step).map(|(taken, done, _)| (taken, done))
    }

    /// [`scan`], with the bytes relayed.
    fn relay(body: &[u8], step: usize) -> Option<(usize, bool, Vec<u8>)> {
        let mut chunks = Chunks::default();
        let (mut taken, mut out) = (0, Vec::new());
        for piece in body.chunks(step) {
            taken += chunks.scan(piece, &mut out)?;
            if chunks.done() {
                break;
            }
        }
        Some((taken, chunks.done(), out))
    }

    #[test]
    fn trailer_fields_are_not_relayed_and_everything_else_is() {
        let cases: [(&[u8], &[u8]); 3] = [
            (b"5;x=1\r\nhello\r\n0\r\nset-cookie: a=1\r\nx: y\r\n\r\n", b"5;x=1\r\nhello\r\n0\r\n\r\n"),
            (b"5\r\nhello\r\n0\r\n\r\n", b"5\r\nhello\r\n0\r\n\r\n"),
            (b"0\r\nx-trailer: t\r\n\r\n", b"0\r\n\r\n"),
        ];
        for (body, relayed) in cases {
            for step in [1, 2, 5, body.len()] {
                let (taken, done, out) = relay(body, step).unwrap();
                assert_eq!((taken, done), (body.len(), true));
                assert_eq!(String::from_utf8_lossy(&out), String::from_utf8_lossy(relayed), "by {step}");
            }
        }
    }

    #[test]
    fn well_formed_bodies_end_where_they_end_however_they_arrive() {
        let cases: [&[u8]; 5] = [
            b"5\r\nhello\r\n0\r\n\r\n",
            b"5;name=value\r\nhello\r\n0\r\n\r\n",
            b"5 \t;ext\r\nhello\r\nA\r\n0123456789\r\n0\r\n\r\n",
            b"0\r\nx-trailer: yes\r\nx-other: 1\r\n\r\n",
            b"00005\r\nhello\r\n000\r\n\r\n",
        ];
        for body in cases {
            let mut with_more = body.to_vec();
            with_more.extend_from_slice(b"HTTP/1.1 200 OK\r\n");
            for step in [1, 2, 3, 7, body.len()] {
                assert_eq!(
                    scan(&with_more, step),
                    Some((body.len(), true)),
                    "{:?} by {step}",
                    String::from_utf8_lossy(body)
                );
            }
        }
    }

    #[test]
    fn bare_line_feeds_and_malformed_size_lines_are_refused() {
        let cases: [&[u8]; 10] = [
            b"5\nhello\r\n0\r\n\r\n",
            b"5\r\nhello\n0\r\n\r\n",
            b"5\r\nhelloXY0\r\n\r\n",
            b"0\r\n\n",
            b"0\r\nx-trailer: yes\n\r\n",
            b"5;ext\nhello\r\n",
            b"5 x\r\nhello\r\n",
            b"\r\nhello\r\n",
            b"zz\r\n",
            b"fffffffffffffffff\r\n",
        ];
        for body in cases {
            assert_eq!(scan(body, 1), None, "{:?}", String::from_utf8_lossy(body));
            assert_eq!(scan(body, body.len()), None, "{:?}", String::from_utf8_lossy(body));
        }
    }
}
