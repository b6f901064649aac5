//! `chatbot-proxy --health-check [PORT|ADDR]`, the container health check of images without a
//! shell: exit 0 when a proxy answers `GET /healthz` with 200, non-zero otherwise.

use crate::harness::*;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::process::{Command, Output};

fn health_check(args: &[&str], port_env: Option<u16>) -> Output {
    let mut cmd = Command::new(BIN);
    cmd.arg("--health-check").args(args).env_remove("PORT");
    if let Some(port) = port_env {
        cmd.env("PORT", port.to_string());
    }
    cmd.output().expect("run chatbot-proxy --health-check")
}

#[test]
fn passes_against_a_running_proxy() {
    let (_stub, proxy) = start_pair();
    let port = proxy.port.to_string();
    for args in [vec![port.as_str()], vec![&format!("127.0.0.1:{port}")]] {
        let out = health_check(&args, None);
        assert!(out.status.success(), "{args:?}: {out:?}");
    }
    // No value: the port comes from PORT, as in env mode.
    let out = health_check(&[], Some(proxy.port));
    assert!(out.status.success(), "PORT={port}: {out:?}");
}

#[test]
fn fails_when_nothing_listens() {
    let port = free_port();
    let out = health_check(&[&port.to_string()], None);
    assert!(!out.status.success(), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(&format!("127.0.0.1:{port}")), "{stderr}");
}

#[test]
fn fails_when_the_answer_is_not_200() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = std::thread::spawn(move || {
        let (mut conn, _) = listener.accept().unwrap();
        let mut buf = [0u8; 512];
        let _ = conn.read(&mut buf);
        let _ = conn.write_all(b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\n\r\n");
    });
    let out = health_check(&[&port.to_string()], None);
    server.join().unwrap();
    assert!(!out.status.success(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("503"),
        "{out:?}"
    );
}

#[test]
fn rejects_a_target_that_is_no_port_or_address() {
    let out = health_check(&["not-a-port"], None);
    assert!(!out.status.success(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not-a-port"),
        "{out:?}"
    );
}
