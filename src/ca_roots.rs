//! Where the TLS connections to the upstream find their trusted root certificates.
//!
//! Without a file named, Pingora loads the platform's roots (`rustls-native-certs`), which on
//! Debian reads the bundle *and* every file under `/etc/ssl/certs`: hundreds of opens for each
//! connector, at start-up, before the proxy listens. Debian's (and distroless's) single bundle
//! holds the same roots, so the connectors are pointed at it when it exists. `SSL_CERT_FILE`
//! or `SSL_CERT_DIR` in the environment still choose, as they do for the platform loader.

use std::path::Path;

/// The bundle Debian's `ca-certificates` (and distroless's base images) install.
pub const SYSTEM_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// The CA file to give Pingora's connectors, or `None` to let them load the platform's roots.
pub fn bundle_file() -> Option<String> {
    choose(
        std::env::var_os("SSL_CERT_FILE").is_some() || std::env::var_os("SSL_CERT_DIR").is_some(),
        Path::new(SYSTEM_BUNDLE).is_file(),
    )
    .map(str::to_string)
}

/// The rule: the environment's choice wins; else the system bundle when it exists.
fn choose(environment_chooses: bool, bundle_exists: bool) -> Option<&'static str> {
    (!environment_chooses && bundle_exists).then_some(SYSTEM_BUNDLE)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_system_bundle_is_used_unless_the_environment_names_roots() {
        assert_eq!(choose(false, true), Some(SYSTEM_BUNDLE));
        assert_eq!(
            choose(true, true),
            None,
            "SSL_CERT_FILE/SSL_CERT_DIR are honoured"
        );
        assert_eq!(
            choose(false, false),
            None,
            "no bundle: the platform's roots"
        );
    }
}
