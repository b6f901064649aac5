//! The framing of an upstream response body (RFC 9112, section 6): a `Content-Length`, chunked
//! transfer coding, or until the connection closes. A pure decoder over byte slices: bytes
//! are fed as they are read, the payload comes out, and the decoder says when the body has
//! ended and whether bytes were left over behind it (then the connection is not reused).
//!
//! It keeps no buffer: a chunk's size line, its data and the trailer may each be split
//! anywhere between two reads, and the decoder only remembers where it is (a few words). This
//! is what lets a held stream cost no read buffer between two events (see `upstream`).

use std::fmt;

/// Longest chunk extension (after `;`) or trailer line accepted, in bytes.
const MAX_LINE: usize = 4096;
/// Most hex digits of a chunk size (a `u64`).
const MAX_SIZE_DIGITS: u8 = 16;

/// The body framing a response header announced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// Exactly this many bytes (`Content-Length`, or none at all for 204/304).
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
    /// Everything until the upstream closes the connection.
    UntilClose,
}

/// Why a body is malformed or incomplete.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BodyError {
    /// A chunk size line, a chunk's end or the trailer is not what chunked coding allows.
    BadChunk(&'static str),
    /// The connection closed before the body's end.
    Truncated,
}

impl fmt::Display for BodyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BodyError::BadChunk(why) => write!(f, "bad chunked coding: {why}"),
            BodyError::Truncated => f.write_str("the connection closed before the body's end"),
        }
    }
}

/// Where a chunked body's decoding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    /// In the hex digits of a chunk size.
    Size { size: u64, digits: u8 },
    /// Behind the size: optional whitespace and extensions up to the CR.
    Extension { size: u64, len: usize },
    /// The CR of the size line seen; its LF expected.
    SizeLf { size: u64 },
    /// In a chunk's data, this many bytes left.
    Data { left: u64 },
    /// The CR behind a chunk's data expected.
    DataCr,
    /// The LF behind a chunk's data expected.
    DataLf,
    /// At the start of a trailer line (or of the final empty line).
    TrailerStart,
    /// In a trailer field line.
    TrailerLine { len: usize },
    /// The CR of a trailer line seen; its LF expected.
    TrailerLf,
    /// The CR of the final empty line seen; its LF expected.
    EndLf,
    /// The body has ended.
    Done,
}

/// The decoder of one body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BodyDecoder {
    state: State,
    /// Bytes were fed after the body's end.
    overread: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Length { left: u64 },
    Chunked(Chunk),
    UntilClose,
}

impl BodyDecoder {
    pub fn new(framing: Framing) -> Self {
        let state = match framing {
            Framing::Length(n) => State::Length { left: n },
            Framing::Chunked => State::Chunked(Chunk::Size { size: 0, digits: 0 }),
            Framing::UntilClose => State::UntilClose,
        };
        BodyDecoder {
            state,
            overread: false,
        }
    }

    /// Whether the body has ended (by its framing; a close-delimited one ends at [`Self::eof`]).
    pub fn is_done(&self) -> bool {
        matches!(
            self.state,
            State::Length { left: 0 } | State::Chunked(Chunk::Done)
        )
    }

    /// Whether the body ended by its framing with nothing behind it: the connection can carry
    /// another request.
    pub fn reusable(&self) -> bool {
        self.is_done() && !self.overread
    }

    /// Decode `input`, the next bytes read: every payload byte in it is passed to `data` (in
    /// one or more slices of `input`, in order). Bytes behind the body's end are dropped and
    /// remembered (the connection is then not reused).
    pub fn feed(&mut self, input: &[u8], mut data: impl FnMut(&[u8])) -> Result<(), BodyError> {
        let mut rest = input;
        while !rest.is_empty() {
            match &mut self.state {
                State::UntilClose => {
                    data(rest);
                    return Ok(());
                }
                State::Length { left: 0 } | State::Chunked(Chunk::Done) => {
                    self.overread = true;
                    return Ok(());
                }
                State::Length { left } => {
                    let n = (*left).min(rest.len() as u64) as usize;
                    data(&rest[..n]);
                    *left -= n as u64;
                    rest = &rest[n..];
                }
                State::Chunked(chunk) => {
                    if let Chunk::Data { left } = chunk {
                        let n = (*left).min(rest.len() as u64) as usize;
                        data(&rest[..n]);
                        *left -= n as u64;
                        if *left == 0 {
                            *chunk = Chunk::DataCr;
                        }
                        rest = &rest[n..];
                    } else {
                        *chunk = step(*chunk, rest[0])?;
                        rest = &rest[1..];
                    }
                }
            }
        }
        Ok(())
    }

    /// The connection closed: fine for a body that has ended or runs until the close, an error
    /// for one cut short.
    pub fn eof(&mut self) -> Result<(), BodyError> {
        match self.state {
            State::UntilClose => Ok(()),
            _ if self.is_done() => Ok(()),
            _ => Err(BodyError::Truncated),
        }
    }
}

/// One framing byte of a chunked body (never in a chunk's data).
fn step(state: Chunk, b: u8) -> Result<Chunk, BodyError> {
    use Chunk::*;
    let bad = |why| Err(BodyError::BadChunk(why));
    Ok(match state {
        Size { size, digits } => match hex(b) {
            Some(_) if digits == MAX_SIZE_DIGITS => return bad("chunk size too large"),
            Some(v) => Size {
                size: (size << 4) | u64::from(v),
                digits: digits + 1,
            },
            None if digits == 0 => return bad("chunk size expected"),
            None => after_size(size, 0, b)?,
        },
        Extension { len, .. } if len >= MAX_LINE => return bad("chunk extension too long"),
        Extension { size, len } => after_size(size, len + 1, b)?,
        SizeLf { size } if b == b'\n' => match size {
            0 => TrailerStart,
            size => Data { left: size },
        },
        SizeLf { .. } => return bad("LF expected after the chunk size"),
        Data { .. } => unreachable!("data is taken in bulk"),
        DataCr if b == b'\r' => DataLf,
        DataCr => return bad("CR expected after the chunk data"),
        DataLf if b == b'\n' => Size { size: 0, digits: 0 },
        DataLf => return bad("LF expected after the chunk data"),
        TrailerStart if b == b'\r' => EndLf,
        TrailerStart => TrailerLine { len: 1 },
        TrailerLine { len } if len >= MAX_LINE => return bad("trailer line too long"),
        TrailerLine { .. } if b == b'\r' => TrailerLf,
        TrailerLine { len } => TrailerLine { len: len + 1 },
        TrailerLf if b == b'\n' => TrailerStart,
        TrailerLf => return bad("LF expected after a trailer line"),
        EndLf if b == b'\n' => Done,
        EndLf => return bad("LF expected at the end of the body"),
        Done => unreachable!("nothing is decoded after the end"),
    })
}

/// A byte behind a chunk size's digits: the CR, or whitespace and extensions (ignored).
fn after_size(size: u64, len: usize, b: u8) -> Result<Chunk, BodyError> {
    match b {
        b'\r' => Ok(Chunk::SizeLf { size }),
        b'\n' => Err(BodyError::BadChunk("CR expected after the chunk size")),
        b';' | b' ' | b'\t' => Ok(Chunk::Extension { size, len }),
        _ if len > 0 && b != 0x7f && (b >= 0x20 || b == b'\t') => {
            Ok(Chunk::Extension { size, len })
        }
        _ => Err(BodyError::BadChunk("bad byte after the chunk size")),
    }
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `wire` fed in pieces of `step` bytes: the payload, and the decoder after.
    fn decode(
        framing: Framing,
        wire: &[u8],
        step: usize,
    ) -> (Result<Vec<u8>, BodyError>, BodyDecoder) {
        let mut decoder = BodyDecoder::new(framing);
        let mut out = Vec::new();
        for piece in wire.chunks(step.max(1)) {
            if let Err(e) = decoder.feed(piece, |d| out.extend_from_slice(d)) {
                return (Err(e), decoder);
            }
        }
        (Ok(out), decoder)
    }

    /// The same result at every way of splitting `wire` into equal pieces.
    fn decode_all_splits(
        framing: Framing,
        wire: &[u8],
    ) -> (Result<Vec<u8>, BodyError>, BodyDecoder) {
        let whole = decode(framing, wire, wire.len());
        for step in 1..wire.len() {
            let split = decode(framing, wire, step);
            assert_eq!(split.0, whole.0, "split every {step} bytes");
            assert_eq!(split.1, whole.1, "split every {step} bytes");
        }
        whole
    }

    #[test]
    fn chunks_are_joined_wherever_the_reads_split_them() {
        let wire = b"3\r\nabc\r\n10\r\n0123456789abcdef\r\n0\r\n\r\n";
        let (out, decoder) = decode_all_splits(Framing::Chunked, wire);
        assert_eq!(out.unwrap(), b"abc0123456789abcdef");
        assert!(decoder.is_done() && decoder.reusable());
    }

    #[test]
    fn extensions_whitespace_and_trailers_are_skipped() {
        let wire = b"3;name=value\r\nabc\r\n2 \r\nde\r\n0\r\nX-Trailer: 1\r\nY: 2\r\n\r\n";
        let (out, decoder) = decode_all_splits(Framing::Chunked, wire);
        assert_eq!(out.unwrap(), b"abcde");
        assert!(decoder.reusable());
    }

    #[test]
    fn upper_case_hex_and_leading_zeros_are_sizes() {
        let (out, _) = decode_all_splits(Framing::Chunked, b"00A\r\n0123456789\r\n0\r\n\r\n");
        assert_eq!(out.unwrap(), b"0123456789");
    }

    #[test]
    fn bytes_behind_the_end_make_the_connection_unusable() {
        let (out, decoder) = decode(Framing::Chunked, b"1\r\na\r\n0\r\n\r\nHTTP/1.1", 64);
        assert_eq!(out.unwrap(), b"a");
        assert!(decoder.is_done());
        assert!(!decoder.reusable());
        let (out, decoder) = decode(Framing::Length(2), b"abcd", 64);
        assert_eq!(out.unwrap(), b"ab");
        assert!(decoder.is_done() && !decoder.reusable());
    }

    #[test]
    fn a_body_not_ended_is_not_done_and_truncated_at_the_close() {
        for wire in [
            &b"3\r\nab"[..],
            b"3\r\nabc\r\n",
            b"3\r\nabc\r\n0\r\n",
            b"0\r\n\r",
        ] {
            let (out, mut decoder) = decode(Framing::Chunked, wire, 1);
            assert!(out.is_ok(), "{wire:?}");
            assert!(!decoder.is_done(), "{wire:?}");
            assert_eq!(decoder.eof(), Err(BodyError::Truncated), "{wire:?}");
        }
        let (_, mut decoder) = decode(Framing::Length(5), b"abc", 1);
        assert!(!decoder.is_done());
        assert_eq!(decoder.eof(), Err(BodyError::Truncated));
    }

    #[test]
    fn malformed_chunked_coding_is_an_error() {
        for wire in [
            &b"x\r\n"[..],
            b"\r\n",
            b"3\nabc",
            b"3\r\rabc",
            b"3\r\nabcX\r\n",
            b"3\r\nabc\rX",
            b"11111111111111111\r\n",
            b"0\r\nX: 1\rX",
            b"0\r\n\rX",
        ] {
            let (out, _) = decode(Framing::Chunked, wire, 64);
            assert!(
                matches!(out, Err(BodyError::BadChunk(_))),
                "{wire:?}: {out:?}"
            );
        }
        let long_extension = [&b"1;"[..], &[b'x'; MAX_LINE + 1], b"\r\n"].concat();
        assert!(decode(Framing::Chunked, &long_extension, 64).0.is_err());
    }

    #[test]
    fn a_huge_chunk_size_is_counted_not_allocated() {
        let mut decoder = BodyDecoder::new(Framing::Chunked);
        let mut n = 0;
        decoder
            .feed(b"ffffffffffffffff\r\nabc", |d| n += d.len())
            .unwrap();
        assert_eq!(n, 3);
        assert!(!decoder.is_done());
    }

    #[test]
    fn a_length_body_ends_at_its_length() {
        let (out, decoder) = decode_all_splits(Framing::Length(5), b"hello");
        assert_eq!(out.unwrap(), b"hello");
        assert!(decoder.reusable());
        let mut empty = BodyDecoder::new(Framing::Length(0));
        assert!(empty.reusable());
        assert_eq!(empty.eof(), Ok(()));
    }

    #[test]
    fn a_close_delimited_body_takes_everything_and_is_never_reused() {
        let (out, mut decoder) = decode_all_splits(Framing::UntilClose, b"0\r\n\r\nall of it");
        assert_eq!(out.unwrap(), b"0\r\n\r\nall of it");
        assert!(!decoder.is_done() && !decoder.reusable());
        assert_eq!(decoder.eof(), Ok(()));
    }
}
