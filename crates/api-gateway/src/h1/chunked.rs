//! A scanner following a chunked body (RFC 9112 §7.1) as it is relayed.

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

    /// Follows `bytes`; returns how many belong to the body (all of them
    /// until it ends), `None` if the framing is malformed.
    pub fn scan(&mut self, bytes: &[u8]) -> Option<usize> {
        use ChunkState::*;
        let mut i = 0;
        while i < bytes.len() {
            let b = bytes[i];
            self.state = match self.state {
                Size | SizeDigits if b.is_ascii_hexdigit() => {
                    let digit = (b as char).to_digit(16).map(u64::from)?;
                    self.size = self.size.checked_mul(16)?.checked_add(digit)?;
                    SizeDigits
                }
                SizeDigits if b == b';' || b == b' ' || b == b'\t' => Extension,
                SizeDigits | Extension if b == b'\r' => SizeLf,
                Extension => Extension,
                SizeDigits | SizeLf if b == b'\n' => self.after_size(),
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
                DataCr | DataLf if b == b'\n' => Size,
                Trailer(start) if b == b'\r' => TrailerLf(start),
                Trailer(true) | TrailerLf(true) if b == b'\n' => Done,
                Trailer(false) | TrailerLf(false) if b == b'\n' => Trailer(true),
                Trailer(_) => Trailer(false),
                Done => return Some(i),
                _ => return None,
            };
            i += 1;
            if self.state == Done {
                return Some(i);
            }
        }
        Some(i)
    }

    fn after_size(&mut self) -> ChunkState {
        if self.size == 0 { ChunkState::Trailer(true) } else { ChunkState::Data }
    }
}
