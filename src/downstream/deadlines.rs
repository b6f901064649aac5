//! The deadlines of one browser connection, as a pure state machine (no I/O, no clock of its
//! own: every call is given `now`), so every rule is unit-tested.
//!
//! A connection alternates between three phases:
//! - **idle**: waiting for the first byte of the next request, at most the keep-alive timeout;
//! - **header**: from the first byte of a request until the blank line that ends its header,
//!   at most the header timeout in total (a client that sends one byte a second does not
//!   reset it);
//! - **busy**: the request is being answered; reads (the body, a close check) have no deadline
//!   here, the request body has its own total deadline in the request handler.
//!
//! Writes have one rule in every phase: a write that makes no progress (the client stopped
//! reading and the socket buffers are full) for longer than the stalled-reader limit fails.

use std::time::Duration;
use tokio::time::Instant;

/// How long a connection may wait in each phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// Longest wait for the first byte of a request on an open connection.
    pub keepalive: Duration,
    /// Longest time from a request's first byte to the end of its header.
    pub header: Duration,
    /// Longest time a write may make no progress.
    pub stalled_reader: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            keepalive: Duration::from_secs(60),
            header: Duration::from_secs(10),
            stalled_reader: Duration::from_secs(30),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Idle { since: Instant },
    Header { first_byte: Instant },
    Busy,
}

/// The read side's phase and deadline.
#[derive(Debug, Clone)]
pub struct ReadClock {
    timeouts: Timeouts,
    phase: Phase,
    end: HeaderEnd,
}

impl ReadClock {
    /// A new connection: idle since `now`.
    pub fn new(timeouts: Timeouts, now: Instant) -> Self {
        ReadClock {
            timeouts,
            phase: Phase::Idle { since: now },
            end: HeaderEnd::default(),
        }
    }

    /// The previous request was answered: wait for the next one from `now`.
    pub fn next_request(&mut self, now: Instant) {
        self.phase = Phase::Idle { since: now };
        self.end = HeaderEnd::default();
    }

    /// Bytes were read at `now`.
    pub fn on_bytes(&mut self, now: Instant, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        if let Phase::Idle { .. } = self.phase {
            self.phase = Phase::Header { first_byte: now };
        }
        if let Phase::Header { .. } = self.phase {
            if self.end.scan(bytes) {
                self.phase = Phase::Busy;
            }
        }
    }

    /// When reading must have moved on (`None`: no deadline now).
    pub fn deadline(&self) -> Option<Instant> {
        match self.phase {
            Phase::Idle { since } => Some(since + self.timeouts.keepalive),
            Phase::Header { first_byte } => Some(first_byte + self.timeouts.header),
            Phase::Busy => None,
        }
    }

    /// Whether the header of the current request has been read.
    #[cfg(test)]
    pub fn header_done(&self) -> bool {
        self.phase == Phase::Busy
    }

    /// Whether a request header has started and not ended yet.
    pub fn reading_header(&self) -> bool {
        matches!(self.phase, Phase::Header { .. })
    }
}

/// Finds the blank line that ends an HTTP/1 header, across reads: `\r\n\r\n` or `\n\n` (the
/// parser accepts both). Blank lines before the request line (which the parser skips) do not
/// count, or a client could open with one and then trickle its header with no deadline.
#[derive(Debug, Clone, Copy, Default)]
struct HeaderEnd {
    /// Something other than CR and LF was seen: the request line has started.
    started: bool,
    /// At the start of a line (just after `\n`).
    line_start: bool,
    /// At the start of a line, after a `\r`.
    line_start_cr: bool,
}

impl HeaderEnd {
    /// Feed bytes; `true` once the header's end has been seen.
    fn scan(&mut self, bytes: &[u8]) -> bool {
        for &b in bytes {
            match b {
                b'\n' => {
                    if self.started && (self.line_start || self.line_start_cr) {
                        return true;
                    }
                    self.line_start = true;
                    self.line_start_cr = false;
                }
                b'\r' => {
                    self.line_start_cr = self.line_start;
                    self.line_start = false;
                }
                _ => {
                    self.started = true;
                    self.line_start = false;
                    self.line_start_cr = false;
                }
            }
        }
        false
    }
}

/// The write side: since when the client has not taken any byte.
#[derive(Debug, Clone, Copy)]
pub struct WriteClock {
    limit: Duration,
    blocked_since: Option<Instant>,
}

impl WriteClock {
    pub fn new(limit: Duration) -> Self {
        WriteClock {
            limit,
            blocked_since: None,
        }
    }

    /// A write could not proceed at `now`: the deadline by which it must.
    pub fn blocked(&mut self, now: Instant) -> Instant {
        *self.blocked_since.get_or_insert(now) + self.limit
    }

    /// The client took bytes.
    pub fn progressed(&mut self) {
        self.blocked_since = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    fn clock() -> (ReadClock, Instant) {
        let t0 = Instant::now();
        let timeouts = Timeouts {
            keepalive: secs(60),
            header: secs(10),
            stalled_reader: secs(30),
        };
        (ReadClock::new(timeouts, t0), t0)
    }

    #[test]
    fn a_new_connection_waits_the_keepalive_timeout_for_its_first_byte() {
        let (clock, t0) = clock();
        assert_eq!(clock.deadline(), Some(t0 + secs(60)));
    }

    #[test]
    fn the_header_deadline_counts_from_the_first_byte_not_from_each_read() {
        let (mut clock, t0) = clock();
        clock.on_bytes(t0 + secs(5), b"GET / HT");
        assert_eq!(clock.deadline(), Some(t0 + secs(15)));
        clock.on_bytes(t0 + secs(9), b"TP/1.1\r\nHost: a\r\n");
        assert_eq!(
            clock.deadline(),
            Some(t0 + secs(15)),
            "a trickle does not reset it"
        );
        clock.on_bytes(t0 + secs(10), b"\r\n");
        assert!(clock.header_done());
        assert_eq!(clock.deadline(), None, "the body has its own deadline");
    }

    #[test]
    fn the_header_end_is_found_across_reads_in_any_split() {
        let request = b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\nhi";
        let end = request.len() - 2;
        for split in 1..request.len() {
            let (mut clock, t0) = clock();
            clock.on_bytes(t0, &request[..split]);
            assert_eq!(clock.header_done(), split >= end, "split at {split}");
            clock.on_bytes(t0, &request[split..]);
            assert!(clock.header_done(), "split at {split}");
        }
    }

    #[test]
    fn bare_line_feeds_end_a_header_too() {
        let (mut clock, t0) = clock();
        clock.on_bytes(t0, b"GET / HTTP/1.1\nHost: a\n\n");
        assert!(clock.header_done());
    }

    #[test]
    fn blank_lines_before_the_request_line_do_not_end_the_header() {
        let (mut clock, t0) = clock();
        clock.on_bytes(t0, b"\r\n\r\n\n\n");
        assert!(!clock.header_done());
        assert_eq!(clock.deadline(), Some(t0 + secs(10)));
        clock.on_bytes(t0, b"GET / HTTP/1.1\r\n\r\n");
        assert!(clock.header_done());
    }

    #[test]
    fn a_line_ending_in_cr_alone_is_not_a_blank_line() {
        let (mut clock, t0) = clock();
        clock.on_bytes(t0, b"GET / HTTP/1.1\r\nX: a\rb\r\n");
        assert!(!clock.header_done());
    }

    #[test]
    fn the_next_request_starts_idle_again() {
        let (mut clock, t0) = clock();
        clock.on_bytes(t0, b"GET / HTTP/1.1\r\n\r\n");
        clock.next_request(t0 + secs(3));
        assert!(!clock.header_done());
        assert_eq!(clock.deadline(), Some(t0 + secs(63)));
        clock.on_bytes(t0 + secs(4), b"G");
        assert_eq!(clock.deadline(), Some(t0 + secs(14)));
    }

    #[test]
    fn a_write_fails_after_the_limit_without_progress_and_progress_resets_it() {
        let t0 = Instant::now();
        let mut writes = WriteClock::new(secs(30));
        assert_eq!(writes.blocked(t0), t0 + secs(30));
        assert_eq!(
            writes.blocked(t0 + secs(20)),
            t0 + secs(30),
            "still the first block"
        );
        writes.progressed();
        assert_eq!(writes.blocked(t0 + secs(25)), t0 + secs(55));
    }
}
