//! Which address a request comes from, for per-address limits.
//!
//! The socket peer, unless the peer is one of the configured trusted proxies (a load balancer
//! or CDN in front of us): then the forwarding headers are read from the right, skipping
//! trusted hops, and the first untrusted address is the client. `Forwarded` (RFC 7239) wins
//! over `X-Forwarded-For` when both are present. Headers from anyone else change nothing, so a
//! visitor cannot pick the address its limits are counted under.

use ipnet::IpNet;
use std::net::IpAddr;

/// The client address of a request from `peer` carrying these forwarding headers.
pub fn client_ip(
    peer: IpAddr,
    forwarded: Option<&str>,
    x_forwarded_for: Option<&str>,
    trusted: &[IpNet],
) -> IpAddr {
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|net| net.contains(&canonical(*ip)));
    let peer = canonical(peer);
    if !is_trusted(&peer) {
        return peer;
    }
    let hops: Vec<Option<IpAddr>> = match (forwarded, x_forwarded_for) {
        (Some(header), _) => forwarded_for(header),
        (None, Some(header)) => header.split(',').map(parse_node).collect(),
        (None, None) => return peer,
    };
    let mut client = peer;
    for hop in hops.iter().rev() {
        match hop {
            // A hop we cannot read (obfuscated, "unknown", garbage) ends the trusted chain:
            // count the request under the last address we know.
            None => return client,
            Some(ip) => {
                client = canonical(*ip);
                if !is_trusted(&client) {
                    return client;
                }
            }
        }
    }
    client
}

/// How the access log names a request's client: the socket peer with its port
/// (`203.0.113.9:51234`) when the client is the peer, or the forwarded client address and the
/// proxy it came through (`198.51.100.7 via=10.0.0.2:40312`).
pub fn for_log(client: Option<IpAddr>, peer: Option<std::net::SocketAddr>) -> String {
    match (client, peer) {
        (Some(client), Some(peer)) if client != canonical(peer.ip()) => {
            format!("{client} via={peer}")
        }
        (_, Some(peer)) => peer.to_string(),
        (Some(client), None) => client.to_string(),
        (None, None) => "-".to_string(),
    }
}

/// IPv4-mapped IPv6 addresses (`::ffff:1.2.3.4`) as the IPv4 address they are.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    }
}

/// The `for=` addresses of a `Forwarded` header, in order (`None` where unreadable).
fn forwarded_for(header: &str) -> Vec<Option<IpAddr>> {
    header
        .split(',')
        .filter_map(|element| {
            element.split(';').find_map(|pair| {
                let (name, value) = pair.split_once('=')?;
                name.trim()
                    .eq_ignore_ascii_case("for")
                    .then(|| parse_node(value.trim().trim_matches('"')))
            })
        })
        .collect()
}

/// An address with an optional port: `1.2.3.4`, `1.2.3.4:80`, `[::1]`, `[::1]:80`, `::1`.
fn parse_node(text: &str) -> Option<IpAddr> {
    let text = text.trim();
    if let Ok(ip) = text.parse() {
        return Some(ip);
    }
    if let Some(rest) = text.strip_prefix('[') {
        return rest.split_once(']')?.0.parse().ok();
    }
    let (host, port) = text.rsplit_once(':')?;
    port.parse::<u16>().ok()?;
    host.parse::<std::net::Ipv4Addr>().ok().map(IpAddr::V4)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn nets(list: &[&str]) -> Vec<IpNet> {
        list.iter().map(|s| s.parse().unwrap()).collect()
    }

    #[test]
    fn an_untrusted_peer_is_the_client_whatever_it_claims() {
        let trusted = nets(&["10.0.0.0/8"]);
        assert_eq!(
            client_ip(
                ip("203.0.113.9"),
                Some("for=1.1.1.1"),
                Some("2.2.2.2"),
                &trusted
            ),
            ip("203.0.113.9")
        );
        assert_eq!(
            client_ip(ip("203.0.113.9"), None, Some("2.2.2.2"), &[]),
            ip("203.0.113.9")
        );
    }

    #[test]
    fn behind_trusted_proxies_the_rightmost_untrusted_address_counts() {
        let trusted = nets(&["10.0.0.0/8", "192.0.2.0/24"]);
        // The visitor prepends a fake address; the proxies append what they saw.
        let xff = "6.6.6.6, 198.51.100.7, 192.0.2.10";
        assert_eq!(
            client_ip(ip("10.1.2.3"), None, Some(xff), &trusted),
            ip("198.51.100.7")
        );
    }

    #[test]
    fn forwarded_wins_and_its_syntax_is_read() {
        let trusted = nets(&["10.0.0.0/8"]);
        let fwd = r#"for=6.6.6.6, for="[2001:db8::1]:4711";proto=https, For=10.0.0.2:80"#;
        assert_eq!(
            client_ip(ip("10.0.0.1"), Some(fwd), Some("7.7.7.7"), &trusted),
            ip("2001:db8::1")
        );
    }

    #[test]
    fn an_unreadable_hop_stops_at_the_last_known_address() {
        let trusted = nets(&["10.0.0.0/8"]);
        assert_eq!(
            client_ip(
                ip("10.0.0.1"),
                Some("for=_hidden, for=10.0.0.5"),
                None,
                &trusted
            ),
            ip("10.0.0.5")
        );
        assert_eq!(
            client_ip(ip("10.0.0.1"), None, Some("garbage"), &trusted),
            ip("10.0.0.1")
        );
    }

    #[test]
    fn an_all_trusted_chain_ends_at_its_leftmost_address() {
        let trusted = nets(&["10.0.0.0/8"]);
        assert_eq!(
            client_ip(ip("10.0.0.1"), None, Some("10.0.0.7, 10.0.0.8"), &trusted),
            ip("10.0.0.7")
        );
        assert_eq!(
            client_ip(ip("10.0.0.1"), None, None, &trusted),
            ip("10.0.0.1")
        );
    }

    #[test]
    fn the_log_names_the_peer_with_its_port_or_the_client_via_the_proxy() {
        let peer = |s: &str| Some(s.parse::<std::net::SocketAddr>().unwrap());
        assert_eq!(
            for_log(Some(ip("203.0.113.9")), peer("203.0.113.9:51234")),
            "203.0.113.9:51234"
        );
        assert_eq!(
            for_log(Some(ip("198.51.100.7")), peer("127.0.0.1:40312")),
            "198.51.100.7 via=127.0.0.1:40312"
        );
        assert_eq!(
            for_log(Some(ip("127.0.0.1")), peer("[::ffff:127.0.0.1]:80")),
            "[::ffff:127.0.0.1]:80",
            "a mapped peer is the client it maps"
        );
        assert_eq!(for_log(None, peer("[::1]:9")), "[::1]:9");
        assert_eq!(for_log(None, None), "-");
    }

    #[test]
    fn mapped_ipv4_peers_match_ipv4_networks() {
        let trusted = nets(&["127.0.0.0/8"]);
        assert_eq!(
            client_ip(ip("::ffff:127.0.0.1"), None, Some("198.51.100.7"), &trusted),
            ip("198.51.100.7")
        );
    }
}
