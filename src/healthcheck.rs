//! `chatbot-proxy --health-check [PORT|ADDR]`: is a proxy on this machine answering
//! `GET /healthz` with 200? For container health checks in images without a shell or curl
//! (distroless). Exit 0 if so, 1 otherwise, with the reason on stderr.
//!
//! The target is the value given (a port, or an address such as `127.0.0.1:8080`), else the
//! `PORT` environment variable (env mode's listen port), else 3000. An unspecified address
//! (`0.0.0.0`, `::`) as written in a `listen` setting is probed on loopback. Blocking std I/O:
//! this runs in its own short-lived process, never on the proxy's runtime.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::process::ExitCode;
use std::time::Duration;

/// Connect, send and read are each bounded by this; well inside a container check's timeout.
const TIMEOUT: Duration = Duration::from_secs(2);
const DEFAULT_PORT: u16 = 3000;

/// Run the check against `target` (the flag's value; empty if none) and report it.
pub fn run(target: &str) -> ExitCode {
    let env_port = std::env::var("PORT").ok();
    let addr = match address(Some(target), env_port.as_deref()) {
        Ok(addr) => addr,
        Err(e) => {
            eprintln!("health check: {e}");
            return ExitCode::FAILURE;
        }
    };
    match probe(addr) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("health check of http://{addr}/healthz failed: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The address to probe: `target` if given, else `PORT`, else the default port, on loopback.
fn address(target: Option<&str>, env_port: Option<&str>) -> Result<SocketAddr, String> {
    let text = target.filter(|t| !t.is_empty()).or(env_port);
    let Some(text) = text.map(str::trim) else {
        return Ok(SocketAddr::from((Ipv4Addr::LOCALHOST, DEFAULT_PORT)));
    };
    if let Ok(port) = text.parse::<u16>() {
        return Ok(SocketAddr::from((Ipv4Addr::LOCALHOST, port)));
    }
    let mut addr: SocketAddr = text
        .parse()
        .map_err(|_| format!("`{text}` is neither a port nor an address like 127.0.0.1:3000"))?;
    if addr.ip().is_unspecified() {
        addr.set_ip(match addr.ip() {
            IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::LOCALHOST),
        });
    }
    Ok(addr)
}

/// One `GET /healthz`; Ok if the status line says 200.
fn probe(addr: SocketAddr) -> Result<(), String> {
    let mut conn = TcpStream::connect_timeout(&addr, TIMEOUT).map_err(|e| e.to_string())?;
    conn.set_read_timeout(Some(TIMEOUT))
        .map_err(|e| e.to_string())?;
    conn.set_write_timeout(Some(TIMEOUT))
        .map_err(|e| e.to_string())?;
    conn.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .map_err(|e| e.to_string())?;
    let mut head = [0u8; 64];
    let mut len = 0;
    while len < head.len() && !head[..len].contains(&b'\n') {
        match conn.read(&mut head[len..]).map_err(|e| e.to_string())? {
            0 => break,
            n => len += n,
        }
    }
    status_ok(&head[..len])
}

/// Whether a response starts with an HTTP/1.x 200 status line.
fn status_ok(head: &[u8]) -> Result<(), String> {
    let line = head.split(|&b| b == b'\n').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut words = line.split_whitespace();
    match (words.next(), words.next()) {
        (Some(v), Some("200")) if v.starts_with("HTTP/1.") => Ok(()),
        _ if line.trim().is_empty() => Err("no answer".into()),
        _ => Err(format!("answered `{}`", line.trim())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_target_is_the_value_then_port_then_3000_on_loopback() {
        let at = |t, e| address(t, e).unwrap().to_string();
        assert_eq!(at(Some("8080"), Some("9000")), "127.0.0.1:8080");
        assert_eq!(at(None, Some("9000")), "127.0.0.1:9000");
        assert_eq!(at(Some(""), Some("9000")), "127.0.0.1:9000");
        assert_eq!(at(None, None), "127.0.0.1:3000");
        assert_eq!(at(Some("0.0.0.0:3001"), None), "127.0.0.1:3001");
        assert_eq!(at(Some("[::]:3002"), None), "[::1]:3002");
        assert_eq!(at(Some("10.0.0.5:80"), None), "10.0.0.5:80");
        assert!(address(Some("localhost:80"), None).is_err());
        assert!(address(None, Some("80a")).is_err());
    }

    #[test]
    fn only_a_200_status_line_is_healthy() {
        assert!(status_ok(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n").is_ok());
        assert!(status_ok(b"HTTP/1.0 200 OK\r\n").is_ok());
        assert!(status_ok(b"HTTP/1.1 503 Service Unavailable\r\n").is_err());
        assert!(status_ok(b"HTTP/1.1 2000 OK\r\n").is_err());
        assert!(status_ok(b"SSH-2.0-OpenSSH\r\n").is_err());
        assert!(status_ok(b"").is_err());
    }
}
