//! Which of the upstream's addresses a request tries, in what order.
//!
//! A host name may have several addresses, of both families, and not all of them need be
//! reachable from where the proxy runs (an IPv4-only container cannot reach the AAAA ones).
//! A request tries its candidates one after the other until one connects. Resolved addresses
//! come in Happy Eyeballs order (RFC 8305, section 4): the families alternate, starting with
//! the resolver's first choice, so a dead family costs one attempt, not half of them. Static
//! addresses (`[upstream] resolve`) keep the operator's order.
//!
//! The address that last connected is remembered and tried first, followed by the others in
//! their cyclic order after it: when it fails, the next one is tried, and whichever connects
//! becomes the new first. When a fresh DNS answer no longer holds it, the first address of its
//! family leads instead. Pure functions, plus a small shared memory.

use std::net::SocketAddr;
use std::sync::Mutex;

/// `addrs` with the two families alternating, starting with the family of the first address;
/// each family keeps its own order. The longer family's surplus comes last.
pub fn interleave_families(addrs: &[SocketAddr]) -> Vec<SocketAddr> {
    let Some(first) = addrs.first() else {
        return Vec::new();
    };
    let (mut lead, mut other) = (Vec::new(), Vec::new());
    for addr in addrs {
        if addr.is_ipv4() == first.is_ipv4() {
            lead.push(*addr);
        } else {
            other.push(*addr);
        }
    }
    let mut out = Vec::with_capacity(addrs.len());
    let (mut lead, mut other) = (lead.into_iter(), other.into_iter());
    loop {
        match (lead.next(), other.next()) {
            (None, None) => return out,
            (a, b) => out.extend(a.into_iter().chain(b)),
        }
    }
}

/// The order in which a request tries `candidates`: from `preferred` (the address that last
/// connected) if it is among them, else from the first one of its family, else from the
/// start; then round the list.
pub fn attempt_order(candidates: &[SocketAddr], preferred: Option<SocketAddr>) -> Vec<SocketAddr> {
    let start = preferred
        .and_then(|p| {
            let same = candidates.iter().position(|a| *a == p);
            same.or_else(|| candidates.iter().position(|a| a.is_ipv4() == p.is_ipv4()))
        })
        .unwrap_or(0);
    candidates[start..]
        .iter()
        .chain(&candidates[..start])
        .copied()
        .collect()
}

/// The address that last connected, shared by all requests.
#[derive(Default)]
pub struct Preferred(Mutex<Option<SocketAddr>>);

impl Preferred {
    pub fn get(&self) -> Option<SocketAddr> {
        *self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `addr` connected; returns the address it replaces, if another one.
    pub fn worked(&self, addr: SocketAddr) -> Option<SocketAddr> {
        let mut slot = self.0.lock().unwrap_or_else(|p| p.into_inner());
        slot.replace(addr).filter(|old| *old != addr)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addrs(list: &[&str]) -> Vec<SocketAddr> {
        list.iter().map(|a| a.parse().unwrap()).collect()
    }

    #[test]
    fn families_alternate_starting_with_the_first_answer() {
        let dns = addrs(&[
            "[2001:db8::1]:443",
            "[2001:db8::2]:443",
            "[2001:db8::3]:443",
            "192.0.2.1:443",
            "192.0.2.2:443",
        ]);
        assert_eq!(
            interleave_families(&dns),
            addrs(&[
                "[2001:db8::1]:443",
                "192.0.2.1:443",
                "[2001:db8::2]:443",
                "192.0.2.2:443",
                "[2001:db8::3]:443",
            ])
        );
        let v4_first = addrs(&["192.0.2.1:443", "[2001:db8::1]:443", "192.0.2.2:443"]);
        assert_eq!(
            interleave_families(&v4_first),
            addrs(&["192.0.2.1:443", "[2001:db8::1]:443", "192.0.2.2:443"])
        );
    }

    #[test]
    fn one_family_or_none_is_left_as_it_is() {
        let v4 = addrs(&["192.0.2.2:443", "192.0.2.1:443"]);
        assert_eq!(interleave_families(&v4), v4);
        assert!(interleave_families(&[]).is_empty());
    }

    #[test]
    fn without_a_preference_the_list_order_holds() {
        let list = addrs(&["[::1]:80", "127.0.0.1:80"]);
        assert_eq!(attempt_order(&list, None), list);
    }

    #[test]
    fn the_address_that_worked_comes_first_and_the_rest_follow_round_the_list() {
        let list = addrs(&["[2001:db8::1]:443", "192.0.2.1:443", "[2001:db8::2]:443"]);
        let b = list[1];
        assert_eq!(
            attempt_order(&list, Some(b)),
            addrs(&["192.0.2.1:443", "[2001:db8::2]:443", "[2001:db8::1]:443"])
        );
        // Every address is tried exactly once, whatever is preferred.
        for p in &list {
            let mut order = attempt_order(&list, Some(*p));
            assert_eq!(order[0], *p);
            order.sort();
            let mut all = list.clone();
            all.sort();
            assert_eq!(order, all);
        }
    }

    #[test]
    fn a_vanished_preference_still_picks_its_family() {
        // The IPv4 address that worked is gone from the new DNS answer: start with IPv4.
        let list = addrs(&["[2001:db8::1]:443", "192.0.2.7:443", "[2001:db8::2]:443"]);
        let gone: SocketAddr = "192.0.2.1:443".parse().unwrap();
        assert_eq!(attempt_order(&list, Some(gone))[0], list[1]);
        // No address of its family left: the list order.
        let v6 = addrs(&["[2001:db8::1]:443", "[2001:db8::2]:443"]);
        assert_eq!(attempt_order(&v6, Some(gone)), v6);
    }

    /// The addresses that `requests` successive requests attempt when only `up` accept
    /// connections, with the memory in between.
    fn attempts(list: &[SocketAddr], up: &[SocketAddr], requests: usize) -> Vec<Vec<SocketAddr>> {
        let memory = Preferred::default();
        (0..requests)
            .map(|_| {
                let mut tried = Vec::new();
                for addr in attempt_order(list, memory.get()) {
                    tried.push(addr);
                    if up.contains(&addr) {
                        memory.worked(addr);
                        break;
                    }
                }
                tried
            })
            .collect()
    }

    #[test]
    fn a_dead_family_costs_the_first_request_one_attempt_and_later_ones_none() {
        // An IPv4-only host, a name with AAAA records first.
        let dns = interleave_families(&addrs(&[
            "[2001:db8::1]:443",
            "[2001:db8::2]:443",
            "192.0.2.1:443",
            "192.0.2.2:443",
        ]));
        let up = addrs(&["192.0.2.1:443", "192.0.2.2:443"]);
        let tried = attempts(&dns, &up, 4);
        assert_eq!(tried[0], addrs(&["[2001:db8::1]:443", "192.0.2.1:443"]));
        for later in &tried[1..] {
            assert_eq!(later, &addrs(&["192.0.2.1:443"]));
        }
    }

    #[test]
    fn when_the_remembered_address_dies_the_next_one_takes_over() {
        let list = addrs(&["10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80"]);
        let memory = Preferred::default();
        memory.worked(list[1]);
        // 10.0.0.2 is down now, 10.0.0.3 is up: tried in that order, then 10.0.0.3 leads.
        let order = attempt_order(&list, memory.get());
        assert_eq!(&order[..2], &[list[1], list[2]]);
        assert_eq!(memory.worked(list[2]), Some(list[1]));
        assert_eq!(attempt_order(&list, memory.get())[0], list[2]);
    }

    #[test]
    fn the_memory_keeps_the_last_address_that_worked() {
        let memory = Preferred::default();
        let (a, b): (SocketAddr, SocketAddr) =
            ("[::1]:80".parse().unwrap(), "127.0.0.1:80".parse().unwrap());
        assert_eq!(memory.get(), None);
        assert_eq!(memory.worked(a), None);
        assert_eq!(
            memory.worked(a),
            None,
            "the same address again is no change"
        );
        assert_eq!(memory.get(), Some(a));
        assert_eq!(memory.worked(b), Some(a));
        assert_eq!(memory.get(), Some(b));
    }
}
