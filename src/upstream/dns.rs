//! Host-name resolution for the upstream, off Pingora's runtime threads, with a cache.
//!
//! `HttpPeer::new` with a host name resolves with a blocking call on whatever thread runs it.
//! Here names are resolved with `tokio::net::lookup_host` (which runs the system resolver on
//! tokio's blocking pool) and cached for a short time. A lookup yields all the addresses of the
//! name, families interleaved (see `addresses`), for the caller to try in turn. When a refresh
//! fails, the last good answer keeps serving so a resolver hiccup does not take the proxy down.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::addresses::interleave_families;

/// How long a resolved address list is trusted.
const TTL: Duration = Duration::from_secs(60);

struct Entry {
    addrs: Arc<[SocketAddr]>,
    fetched: Instant,
}

/// A caching resolver for one or a few upstream hosts.
#[derive(Default)]
pub struct Resolver {
    cache: Mutex<HashMap<(String, u16), Entry>>,
}

impl Resolver {
    pub fn new() -> Self {
        Self::default()
    }

    /// The addresses of `host:port`, never empty: an IP literal as it is, a name's from the
    /// cache or a fresh lookup, in Happy Eyeballs order.
    pub async fn resolve(&self, host: &str, port: u16) -> io::Result<Arc<[SocketAddr]>> {
        if let Ok(ip) = host.parse::<IpAddr>() {
            return Ok(Arc::new([SocketAddr::new(ip, port)]));
        }
        let key = (host.to_string(), port);
        let cached = {
            let cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
            cache
                .get(&key)
                .map(|e| (e.addrs.clone(), e.fetched.elapsed() < TTL))
        };
        let addrs = match cached {
            Some((addrs, true)) => addrs,
            stale => match tokio::net::lookup_host((host, port)).await {
                Ok(found) => {
                    let found: Vec<SocketAddr> = found.collect();
                    let addrs: Arc<[SocketAddr]> = interleave_families(&found).into();
                    if addrs.is_empty() {
                        return Err(io::Error::new(
                            io::ErrorKind::NotFound,
                            format!("{host} has no addresses"),
                        ));
                    }
                    let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
                    cache.insert(
                        key,
                        Entry {
                            addrs: addrs.clone(),
                            fetched: Instant::now(),
                        },
                    );
                    addrs
                }
                Err(e) => match stale {
                    Some((addrs, _)) => {
                        log::warn!("resolving {host} failed ({e}); using the last known addresses");
                        addrs
                    }
                    None => return Err(e),
                },
            },
        };
        Ok(addrs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn ip_literals_need_no_lookup() {
        let r = Resolver::new();
        assert_eq!(
            *r.resolve("127.0.0.1", 8080).await.unwrap(),
            ["127.0.0.1:8080".parse().unwrap()]
        );
        assert_eq!(
            *r.resolve("::1", 443).await.unwrap(),
            ["[::1]:443".parse().unwrap()]
        );
    }

    #[tokio::test]
    async fn names_are_resolved_and_cached() {
        let r = Resolver::new();
        let all = r.resolve("localhost", 9).await.unwrap();
        assert!(!all.is_empty());
        for a in all.iter() {
            assert!(a.ip().is_loopback());
            assert_eq!(a.port(), 9);
        }
        assert_eq!(r.cache.lock().unwrap().len(), 1);
        r.resolve("localhost", 9).await.unwrap();
        assert_eq!(r.cache.lock().unwrap().len(), 1);
    }

    #[tokio::test]
    async fn unknown_names_are_errors() {
        let r = Resolver::new();
        assert!(r.resolve("no-such-host.invalid", 443).await.is_err());
    }
}
