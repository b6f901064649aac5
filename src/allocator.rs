//! Memory the allocator gives back: settings of mimalloc (the global allocator, see `main.rs`)
//! for a process that holds thousands of streams at a peak and then goes quiet.
//!
//! - No transparent huge pages. mimalloc asks for them on its arenas by default, and the
//!   kernel then backs a whole 2 MiB page as soon as one of its bytes is touched: with a few
//!   thousand streams' buffers spread over the heap, that doubled the resident memory per
//!   stream. The `no_thp` build feature keeps mimalloc from asking (`madvise`), and
//!   [`tune`] turns them off for the process (`PR_SET_THP_DISABLE`), for kernels that use
//!   them everywhere (`/sys/kernel/mm/transparent_hugepage/enabled` = `always`).
//! - Freed memory goes back to the system after 10 ms ([`PURGE_DELAY_MS`]) instead of
//!   mimalloc's 1 s. mimalloc purges only while it is called: memory freed less than the delay
//!   before the process goes idle (the end of a burst of streams) stays resident until the
//!   next burst, so the delay bounds what an idle proxy keeps.
//!
//! Either setting can still be changed from the environment (`MIMALLOC_PURGE_DELAY`,
//! `MIMALLOC_ALLOW_THP=1`, read when the process starts).

use std::ffi::{c_int, c_long};

/// How long freed memory stays with the allocator before it is returned, in milliseconds.
pub const PURGE_DELAY_MS: c_long = 10;

/// `mi_option_purge_delay` in the `mi_option_t` enum of mimalloc 3.x (`mimalloc.h`; the
/// `libmimalloc-sys` crate names only the options of mimalloc 2). [`tune`] checks the
/// version before using it.
const MI_OPTION_PURGE_DELAY: c_int = 15;
/// The major version whose option numbers these are.
const MIMALLOC_MAJOR: c_int = 3;

extern "C" {
    // mimalloc's C API, linked in by the `mimalloc` crate.
    fn mi_version() -> c_int;
    #[cfg(test)]
    fn mi_option_get(option: c_int) -> c_long;
    fn mi_option_set(option: c_int, value: c_long);
}

/// Apply the settings above. Call it first thing in `main`, before any thread starts.
pub fn tune() {
    if std::env::var_os("MIMALLOC_ALLOW_THP").is_none() {
        // SAFETY: prctl with PR_SET_THP_DISABLE only sets a flag of this process.
        unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) };
    }
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() && major_version() == MIMALLOC_MAJOR {
        // SAFETY: a valid option number of this mimalloc version (checked above); setting an
        // option is thread-safe.
        unsafe { mi_option_set(MI_OPTION_PURGE_DELAY, PURGE_DELAY_MS) };
    }
}

/// The major version of the linked mimalloc (`30302` is 3.3.2).
fn major_version() -> c_int {
    // SAFETY: no arguments, no state.
    (unsafe { mi_version() }) / 10_000
}

/// mimalloc's purge delay now, in milliseconds.
#[cfg(test)]
fn purge_delay() -> c_long {
    // SAFETY: a valid option number (see `MI_OPTION_PURGE_DELAY`).
    unsafe { mi_option_get(MI_OPTION_PURGE_DELAY) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_option_numbers_are_those_of_the_linked_mimalloc() {
        // A new major version may number its options differently: check them, then update.
        assert_eq!(major_version(), MIMALLOC_MAJOR);
    }

    #[test]
    fn tune_sets_the_purge_delay_and_turns_huge_pages_off() {
        if std::env::var_os("MIMALLOC_PURGE_DELAY").is_some()
            || std::env::var_os("MIMALLOC_ALLOW_THP").is_some()
        {
            return; // the environment decides; nothing of ours to check
        }
        tune();
        assert_eq!(purge_delay(), PURGE_DELAY_MS);
        // SAFETY: reads a flag of this process.
        assert_eq!(
            unsafe { libc::prctl(libc::PR_GET_THP_DISABLE, 0, 0, 0, 0) },
            1
        );
    }
}
