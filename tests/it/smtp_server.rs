//! A small SMTP server for tests, on 127.0.0.1 in plain text.
//!
//! It speaks just enough of the protocol for a real client: EHLO (advertising
//! `AUTH PLAIN LOGIN`, no STARTTLS), HELO, AUTH PLAIN and LOGIN (any credentials accepted
//! and recorded), MAIL FROM, RCPT TO, DATA (dot-unstuffed), RSET, NOOP and QUIT. Every
//! accepted message is recorded as a [`Received`], and the commands of every session (verbs
//! only) in [`SmtpServer::sessions`]. A test can make it refuse MAIL FROM with a given reply,
//! delay its answer to the end of DATA, advertise STARTTLS but fail it (it has no TLS), or
//! stop it and start it again on the same port (connections are then refused in between).
//!
//! It runs on its own threads, so it works the same under any test runtime.

// Each test binary that includes this module uses a different part of it.

use std::io::{self, BufRead, BufReader, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::Duration;

/// One message the server accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    /// The user and password of the session's AUTH, if any.
    pub auth: Option<(String, String)>,
    /// The MAIL FROM address, without angle brackets.
    pub mail_from: String,
    /// The RCPT TO addresses, in order, without angle brackets.
    pub rcpt_to: Vec<String>,
    /// The message as sent after DATA (dot-unstuffed), lines ending in CRLF.
    pub data: String,
}

impl Received {
    /// A header's value (continuation lines unfolded), by case-insensitive name.
    pub fn header(&self, name: &str) -> Option<String> {
        let (head, _) = self.data.split_once("\r\n\r\n")?;
        let mut found: Option<String> = None;
        for line in head.split("\r\n") {
            if line.starts_with([' ', '\t']) {
                if let Some(value) = &mut found {
                    value.push_str(line);
                }
                continue;
            }
            if found.is_some() {
                break;
            }
            if let Some((key, value)) = line.split_once(':') {
                if key.eq_ignore_ascii_case(name) {
                    found = Some(value.trim().to_string());
                }
            }
        }
        found
    }

    /// The body: everything after the blank line that ends the headers.
    pub fn body(&self) -> &str {
        self.data
            .split_once("\r\n\r\n")
            .map_or("", |(_, body)| body)
    }
}

/// What the server does besides accepting mail.
#[derive(Debug, Default)]
struct Behaviour {
    /// The reply to MAIL FROM instead of `250`, e.g. `451 4.3.0 Try again later`.
    refuse_mail: Option<String>,
    /// How long to wait before answering the end of DATA.
    data_delay: Duration,
    /// Advertise STARTTLS in EHLO (and answer the command `454`: there is no TLS here).
    offer_starttls: bool,
}

#[derive(Debug, Default)]
struct Shared {
    received: Mutex<Vec<Received>>,
    behaviour: Mutex<Behaviour>,
    /// The command verbs of every session, in order, upper-case.
    sessions: Mutex<Vec<Vec<String>>>,
}

/// The accept loop of a started server.
struct Running {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<()>,
}

/// A test SMTP server; stopped when dropped.
pub struct SmtpServer {
    port: u16,
    shared: Arc<Shared>,
    running: Option<Running>,
}

impl SmtpServer {
    /// Starts a server on a free port of 127.0.0.1.
    pub fn start() -> SmtpServer {
        let listener =
            TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind the test SMTP server");
        let port = listener.local_addr().unwrap().port();
        // Tests run in parallel: while stopped, the port must not go to another test's process.
        crate::harness::keep_port(port);
        let mut server = SmtpServer {
            port,
            shared: Arc::default(),
            running: None,
        };
        server.run(listener);
        server
    }

    /// The port it listens on (the same after a restart).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Stops accepting connections: new ones are refused until [`SmtpServer::restart`].
    /// Sessions already open finish on their own.
    pub fn stop(&mut self) {
        if let Some(running) = self.running.take() {
            running.stop.store(true, Ordering::SeqCst);
            // Wake the blocking accept so the loop sees the flag and drops the listener.
            let _ = TcpStream::connect((Ipv4Addr::LOCALHOST, self.port));
            running
                .thread
                .join()
                .expect("the accept loop ended cleanly");
        }
    }

    /// Starts accepting again on the same port (recorded messages are kept).
    pub fn restart(&mut self) {
        self.stop();
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, self.port))
            .expect("bind the test SMTP server's port again");
        self.run(listener);
    }

    /// Answers MAIL FROM with `reply` (e.g. `451 4.3.0 Try again later` or
    /// `554 5.7.1 Rejected`) instead of accepting it.
    pub fn refuse_mail(&self, reply: &str) {
        self.behaviour().refuse_mail = Some(reply.to_string());
    }

    /// Accepts MAIL FROM again.
    pub fn accept_mail(&self) {
        self.behaviour().refuse_mail = None;
    }

    /// Waits `delay` before answering the end of DATA (the message is recorded after it).
    pub fn delay_data_reply(&self, delay: Duration) {
        self.behaviour().data_delay = delay;
    }

    /// Advertises STARTTLS in its EHLO answer, and answers the STARTTLS command with
    /// `454 4.7.0 TLS not available` (the server has no TLS).
    pub fn offer_broken_starttls(&self) {
        self.behaviour().offer_starttls = true;
    }

    /// The messages accepted so far.
    pub fn received(&self) -> Vec<Received> {
        self.shared.received.lock().unwrap().clone()
    }

    /// The command verbs (upper-case, without arguments) of every session so far, one list
    /// per connection in the order they were accepted.
    pub fn sessions(&self) -> Vec<Vec<String>> {
        self.shared.sessions.lock().unwrap().clone()
    }

    fn behaviour(&self) -> std::sync::MutexGuard<'_, Behaviour> {
        self.shared.behaviour.lock().unwrap()
    }

    fn run(&mut self, listener: TcpListener) {
        let stop = Arc::new(AtomicBool::new(false));
        let shared = Arc::clone(&self.shared);
        let thread = {
            let stop = Arc::clone(&stop);
            thread::spawn(move || accept_loop(listener, &stop, &shared))
        };
        self.running = Some(Running { stop, thread });
    }
}

impl Drop for SmtpServer {
    fn drop(&mut self) {
        self.stop();
    }
}

fn accept_loop(listener: TcpListener, stop: &AtomicBool, shared: &Arc<Shared>) {
    for stream in listener.incoming() {
        if stop.load(Ordering::SeqCst) {
            return;
        }
        let Ok(stream) = stream else { continue };
        let shared = Arc::clone(shared);
        thread::spawn(move || {
            let _ = Session::new(&shared).serve(stream);
        });
    }
}

/// One SMTP session: the state of the transaction under way.
struct Session<'a> {
    shared: &'a Shared,
    /// This session's index in `shared.sessions`.
    index: usize,
    auth: Option<(String, String)>,
    mail_from: Option<String>,
    rcpt_to: Vec<String>,
}

impl<'a> Session<'a> {
    fn new(shared: &'a Shared) -> Self {
        let index = {
            let mut sessions = shared.sessions.lock().unwrap();
            sessions.push(Vec::new());
            sessions.len() - 1
        };
        Session {
            shared,
            index,
            auth: None,
            mail_from: None,
            rcpt_to: Vec::new(),
        }
    }

    fn serve(mut self, stream: TcpStream) -> io::Result<()> {
        stream.set_read_timeout(Some(Duration::from_secs(30)))?;
        let mut input = BufReader::new(stream.try_clone()?);
        let mut output = stream;
        send(&mut output, "220 smtp.test ESMTP ready")?;
        while let Some(line) = read_line(&mut input)? {
            let (verb, rest) = line.split_once(' ').unwrap_or((&line, ""));
            let verb = verb.to_ascii_uppercase();
            self.shared.sessions.lock().unwrap()[self.index].push(verb.clone());
            let offer_starttls = self.shared.behaviour.lock().unwrap().offer_starttls;
            match verb.as_str() {
                "EHLO" if offer_starttls => send(
                    &mut output,
                    "250-smtp.test\r\n250-STARTTLS\r\n250 AUTH PLAIN LOGIN",
                )?,
                "EHLO" => send(&mut output, "250-smtp.test\r\n250 AUTH PLAIN LOGIN")?,
                "STARTTLS" if offer_starttls => {
                    send(&mut output, "454 4.7.0 TLS not available")?;
                }
                "HELO" => send(&mut output, "250 smtp.test")?,
                "AUTH" => self.auth(rest, &mut input, &mut output)?,
                "MAIL" => self.mail(rest, &mut output)?,
                "RCPT" => self.rcpt(rest, &mut output)?,
                "DATA" => self.data(&mut input, &mut output)?,
                "RSET" => {
                    self.reset();
                    send(&mut output, "250 2.0.0 OK")?;
                }
                "NOOP" => send(&mut output, "250 2.0.0 OK")?,
                "QUIT" => return send(&mut output, "221 2.0.0 Bye"),
                _ => send(&mut output, "502 5.5.2 Command not recognised")?,
            }
        }
        Ok(())
    }

    fn auth(
        &mut self,
        rest: &str,
        input: &mut impl BufRead,
        output: &mut impl Write,
    ) -> io::Result<()> {
        let (mechanism, initial) = rest.split_once(' ').unwrap_or((rest, ""));
        let credentials = match mechanism.to_ascii_uppercase().as_str() {
            "PLAIN" => {
                let response = if initial.is_empty() {
                    send(output, "334 ")?;
                    read_line(input)?.unwrap_or_default()
                } else {
                    initial.to_string()
                };
                // authorization identity NUL user NUL password
                let decoded = base64_text(&response);
                let mut parts = decoded.split('\0').skip(1);
                parts
                    .next()
                    .zip(parts.next())
                    .map(|(user, password)| (user.to_string(), password.to_string()))
            }
            "LOGIN" => {
                send(output, "334 VXNlcm5hbWU6")?; // "Username:"
                let user = base64_text(&read_line(input)?.unwrap_or_default());
                send(output, "334 UGFzc3dvcmQ6")?; // "Password:"
                let password = base64_text(&read_line(input)?.unwrap_or_default());
                Some((user, password))
            }
            _ => return send(output, "504 5.5.4 Unrecognised authentication type"),
        };
        match credentials {
            Some(credentials) => {
                self.auth = Some(credentials);
                send(output, "235 2.7.0 Authentication successful")
            }
            None => send(output, "501 5.5.2 Malformed credentials"),
        }
    }

    fn mail(&mut self, rest: &str, output: &mut impl Write) -> io::Result<()> {
        let refusal = self.shared.behaviour.lock().unwrap().refuse_mail.clone();
        if let Some(reply) = refusal {
            return send(output, &reply);
        }
        self.reset();
        self.mail_from = Some(angle_address(rest));
        send(output, "250 2.1.0 OK")
    }

    fn rcpt(&mut self, rest: &str, output: &mut impl Write) -> io::Result<()> {
        if self.mail_from.is_none() {
            return send(output, "503 5.5.1 MAIL first");
        }
        self.rcpt_to.push(angle_address(rest));
        send(output, "250 2.1.5 OK")
    }

    fn data(&mut self, input: &mut impl BufRead, output: &mut impl Write) -> io::Result<()> {
        if self.rcpt_to.is_empty() {
            return send(output, "503 5.5.1 RCPT first");
        }
        send(output, "354 End data with <CR><LF>.<CR><LF>")?;
        let mut data = String::new();
        loop {
            let Some(line) = read_line(input)? else {
                return Ok(()); // the client went away mid-message: nothing is accepted
            };
            if line == "." {
                break;
            }
            data.push_str(line.strip_prefix('.').unwrap_or(&line));
            data.push_str("\r\n");
        }
        let delay = self.shared.behaviour.lock().unwrap().data_delay;
        thread::sleep(delay);
        self.shared.received.lock().unwrap().push(Received {
            auth: self.auth.clone(),
            mail_from: self.mail_from.take().unwrap_or_default(),
            rcpt_to: std::mem::take(&mut self.rcpt_to),
            data,
        });
        send(output, "250 2.0.0 Queued")
    }

    fn reset(&mut self) {
        self.mail_from = None;
        self.rcpt_to.clear();
    }
}

/// Writes one reply (which may hold several CRLF-separated lines).
fn send(output: &mut impl Write, reply: &str) -> io::Result<()> {
    output.write_all(reply.as_bytes())?;
    output.write_all(b"\r\n")?;
    output.flush()
}

/// One line without its line end; `None` at the end of the stream.
fn read_line(input: &mut impl BufRead) -> io::Result<Option<String>> {
    let mut bytes = Vec::new();
    if input.read_until(b'\n', &mut bytes)? == 0 {
        return Ok(None);
    }
    while bytes.last().is_some_and(|&b| b == b'\n' || b == b'\r') {
        bytes.pop();
    }
    Ok(Some(String::from_utf8_lossy(&bytes).into_owned()))
}

/// The address in `FROM:<a@b> PARAMS` or `TO:<a@b>`.
fn angle_address(argument: &str) -> String {
    let start = argument.find('<').map_or(0, |i| i + 1);
    let end = argument[start..]
        .find('>')
        .map_or(argument.len(), |i| start + i);
    argument[start..end].to_string()
}

/// Decodes standard base64 (padding optional) into text; invalid input gives "".
fn base64_text(encoded: &str) -> String {
    let mut bytes = Vec::new();
    let mut bits = 0u32;
    let mut count = 0;
    for c in encoded.trim().bytes().take_while(|&c| c != b'=') {
        let value = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return String::new(),
        };
        bits = (bits << 6) | u32::from(value);
        count += 6;
        if count >= 8 {
            count -= 8;
            bytes.push((bits >> count) as u8);
            bits &= (1 << count) - 1;
        }
    }
    String::from_utf8_lossy(&bytes).into_owned()
}

/// A raw client, for the server's own tests.
fn chat(port: u16, lines: &[&str]) -> Vec<String> {
    let stream = TcpStream::connect(SocketAddr::from((Ipv4Addr::LOCALHOST, port))).unwrap();
    let mut input = BufReader::new(stream.try_clone().unwrap());
    let mut output = stream;
    let mut replies = vec![read_line(&mut input).unwrap().unwrap()];
    for line in lines {
        output.write_all(format!("{line}\r\n").as_bytes()).unwrap();
        // Lines inside DATA get no reply, except the final dot.
        let expects_reply = !replies.last().unwrap().starts_with("354") || *line == ".";
        if expects_reply {
            let mut reply = read_line(&mut input).unwrap().unwrap();
            while reply.as_bytes().get(3) == Some(&b'-') {
                reply = read_line(&mut input).unwrap().unwrap();
            }
            replies.push(reply);
        }
    }
    replies
}

#[test]
fn the_test_server_records_a_session() {
    let server = SmtpServer::start();
    let replies = chat(
        server.port(),
        &[
            "EHLO client",
            "AUTH PLAIN AGJvdEBleGFtcGxlLmNvbQBzM2NyZXQ=", // \0bot@example.com\0s3cret
            "MAIL FROM:<bot@example.com> BODY=8BITMIME",
            "RCPT TO:<a@example.com>",
            "RCPT TO:<b@example.com>",
            "DATA",
            "Subject: hi",
            "",
            "..leading dot",
            ".",
            "QUIT",
        ],
    );
    let codes: Vec<&str> = replies.iter().map(|r| &r[..3]).collect();
    assert_eq!(
        codes,
        ["220", "250", "235", "250", "250", "250", "354", "250", "221"]
    );
    assert_eq!(
        server.received(),
        [Received {
            auth: Some(("bot@example.com".into(), "s3cret".into())),
            mail_from: "bot@example.com".into(),
            rcpt_to: vec!["a@example.com".into(), "b@example.com".into()],
            data: "Subject: hi\r\n\r\n.leading dot\r\n".into(),
        }]
    );
    assert_eq!(
        server.sessions(),
        [["EHLO", "AUTH", "MAIL", "RCPT", "RCPT", "DATA", "QUIT"]]
    );
}

#[test]
fn the_test_server_can_offer_starttls_and_fail_it() {
    let server = SmtpServer::start();
    let plain = chat(server.port(), &["EHLO c", "STARTTLS", "QUIT"]);
    assert_eq!(&plain[2][..3], "502", "no STARTTLS by default");
    server.offer_broken_starttls();
    let stream = TcpStream::connect((Ipv4Addr::LOCALHOST, server.port())).unwrap();
    let mut input = BufReader::new(stream.try_clone().unwrap());
    let mut output = stream;
    read_line(&mut input).unwrap();
    send(&mut output, "EHLO c").unwrap();
    let mut ehlo = Vec::new();
    loop {
        let line = read_line(&mut input).unwrap().unwrap();
        let last = line.as_bytes().get(3) == Some(&b' ');
        ehlo.push(line);
        if last {
            break;
        }
    }
    assert!(ehlo.contains(&"250-STARTTLS".to_string()), "{ehlo:?}");
    send(&mut output, "STARTTLS").unwrap();
    assert_eq!(
        read_line(&mut input).unwrap().unwrap(),
        "454 4.7.0 TLS not available"
    );
    assert_eq!(
        server.sessions(),
        [vec!["EHLO", "STARTTLS", "QUIT"], vec!["EHLO", "STARTTLS"]]
    );
}

#[test]
fn the_test_server_can_refuse_and_restart() {
    let mut server = SmtpServer::start();
    server.refuse_mail("451 4.3.0 Try again later");
    let replies = chat(
        server.port(),
        &["HELO c", "MAIL FROM:<x@y.z>", "RSET", "QUIT"],
    );
    assert_eq!(replies[2], "451 4.3.0 Try again later");

    server.stop();
    assert!(TcpStream::connect((Ipv4Addr::LOCALHOST, server.port())).is_err());
    server.restart();
    server.accept_mail();
    let replies = chat(server.port(), &["HELO c", "MAIL FROM:<x@y.z>", "QUIT"]);
    assert_eq!(&replies[2][..3], "250");
}
