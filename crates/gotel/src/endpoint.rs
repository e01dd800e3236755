//! gotel's own HTTP endpoints (/metrics, /status, /healthz): a small HTTP/1.1 server with hard
//! limits, because whatever reaches the port can talk to it (a DaemonSet binds it beyond
//! loopback for Prometheus). A request head over 8 KiB gets 431, a client that stalls is
//! dropped, at most 8 connections are served at once (more are closed at accept), only GET and
//! HEAD are answered, and every response closes its connection. Nothing a client sends is
//! kept past its request.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What a path answers.
pub struct Response {
    pub body: String,
    pub content_type: &'static str,
}

#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_head: usize,
    pub max_connections: usize,
    /// How long a client may take to send its request, and to take the response.
    pub timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { max_head: 8 * 1024, max_connections: 8, timeout: Duration::from_secs(10) }
    }
}

/// Serves `route` (a request's path, without its query, to a response or None for 404) on
/// `addr` from a thread called `name`; returns once the port is bound.
pub fn serve(
    addr: SocketAddr,
    name: &str,
    limits: Limits,
    route: impl Fn(&str) -> Option<Response> + Send + Sync + 'static,
) -> anyhow::Result<SocketAddr> {
    let listener =
        TcpListener::bind(addr).map_err(|e| anyhow::anyhow!("serving {name} on {addr}: {e}"))?;
    let bound = listener.local_addr()?;
    let route = Arc::new(route);
    let active = Arc::new(AtomicUsize::new(0));
    let thread_name = name.to_string();
    std::thread::Builder::new().name(thread_name.clone()).spawn(move || {
        for conn in listener.incoming() {
            let Ok(conn) = conn else { continue };
            if active.fetch_add(1, Ordering::AcqRel) >= limits.max_connections {
                active.fetch_sub(1, Ordering::AcqRel);
                continue; // dropped: closed before a byte is read
            }
            let (route, done) = (Arc::clone(&route), Arc::clone(&active));
            let spawned = std::thread::Builder::new().name(thread_name.clone()).spawn(move || {
                let _ = answer(conn, limits, &*route);
                done.fetch_sub(1, Ordering::AcqRel);
            });
            if spawned.is_err() {
                active.fetch_sub(1, Ordering::AcqRel);
            }
        }
    })?;
    Ok(bound)
}

fn answer(
    mut conn: TcpStream,
    limits: Limits,
    route: &dyn Fn(&str) -> Option<Response>,
) -> std::io::Result<()> {
    conn.set_write_timeout(Some(limits.timeout))?;
    let deadline = Instant::now() + limits.timeout;
    let Some(head) = read_head(&mut conn, limits.max_head, deadline)? else {
        respond(&mut conn, "431 Request Header Fields Too Large", None, false)?;
        return linger(conn);
    };
    let mut request_line = head.lines().next().unwrap_or_default().split(' ');
    let (method, target) = (request_line.next(), request_line.next().unwrap_or_default());
    let head_only = match method {
        Some("GET") => false,
        Some("HEAD") => true,
        _ => {
            respond(&mut conn, "405 Method Not Allowed", None, false)?;
            return linger(conn);
        }
    };
    let path = target.split('?').next().unwrap_or_default();
    match route(path) {
        Some(response) => {
            respond(&mut conn, "200 OK", Some(&response), head_only)?;
            drop(response);
            // An exposition of many series is megabytes: hand them back now.
            crate::memory::release_freed();
            Ok(())
        }
        None => respond(&mut conn, "404 Not Found", None, head_only),
    }
}

/// The request's head (up to its blank line), or None when it is longer than `max`. The whole
/// head must arrive by `deadline`: a client trickling a byte at a time is cut off all the same.
fn read_head(
    conn: &mut TcpStream,
    max: usize,
    deadline: Instant,
) -> std::io::Result<Option<String>> {
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0u8; 1024];
    loop {
        let n = read_by(conn, &mut buf, deadline)?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        head.extend_from_slice(&buf[..n]);
        if let Some(end) = head.windows(4).position(|w| w == b"\r\n\r\n") {
            head.truncate(end);
            return Ok(Some(String::from_utf8_lossy(&head).into_owned()));
        }
        if head.len() > max {
            return Ok(None);
        }
    }
}

/// Closes a connection whose client may still be sending (a head cut short, a body never
/// read): closed with unread bytes, the kernel would reset it and the client might lose the
/// answer. Reads on until the client closes its side, for at most a second and 1 MiB.
fn linger(mut conn: TcpStream) -> std::io::Result<()> {
    conn.shutdown(Shutdown::Write)?;
    let deadline = Instant::now() + Duration::from_secs(1);
    let (mut buf, mut left) = ([0u8; 4096], 1usize << 20);
    while left > 0 {
        match read_by(&mut conn, &mut buf, deadline) {
            Ok(0) | Err(_) => break,
            Ok(n) => left = left.saturating_sub(n),
        }
    }
    Ok(())
}

/// One read that must end by `deadline`: TimedOut once it has passed.
fn read_by(conn: &mut TcpStream, buf: &mut [u8], deadline: Instant) -> std::io::Result<usize> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return Err(std::io::ErrorKind::TimedOut.into());
    }
    conn.set_read_timeout(Some(left))?;
    conn.read(buf)
}

fn respond(
    conn: &mut TcpStream,
    status: &str,
    response: Option<&Response>,
    head_only: bool,
) -> std::io::Result<()> {
    let (body, content_type) = response.map_or(("", "text/plain"), |r| (&r.body, r.content_type));
    let mut out = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n",
        body.len()
    );
    if status.starts_with("405") {
        out.insert_str(out.len() - 2, "Allow: GET, HEAD\r\n");
    }
    conn.write_all(out.as_bytes())?;
    if !head_only {
        conn.write_all(body.as_bytes())?;
    }
    conn.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server(limits: Limits) -> SocketAddr {
        let addr = "127.0.0.1:0".parse().unwrap();
        serve(addr, "test-endpoint", limits, |path| {
            (path == "/status").then(|| Response { body: "{}\n".into(), content_type: "x/y" })
        })
        .unwrap()
    }

    fn exchange(addr: SocketAddr, request: &[u8]) -> String {
        let mut conn = TcpStream::connect(addr).unwrap();
        conn.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let _ = conn.write_all(request);
        let mut out = String::new();
        let _ = conn.read_to_string(&mut out);
        out
    }

    #[test]
    fn answers_its_paths_and_404_the_rest() {
        let addr = server(Limits::default());
        let ok = exchange(addr, b"GET /status?pretty HTTP/1.1\r\nHost: x\r\n\r\n");
        assert!(ok.starts_with("HTTP/1.1 200 OK\r\n") && ok.ends_with("\r\n\r\n{}\n"), "{ok}");
        assert!(ok.contains("Content-Type: x/y\r\nContent-Length: 3\r\n"), "{ok}");
        let head = exchange(addr, b"HEAD /status HTTP/1.1\r\n\r\n");
        assert!(head.starts_with("HTTP/1.1 200 OK") && head.ends_with("\r\n\r\n"), "{head}");
        assert!(exchange(addr, b"GET /other HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 404"));
    }

    #[test]
    fn refuses_other_methods_and_long_heads() {
        let addr = server(Limits::default());
        let post = exchange(addr, b"POST /status HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}");
        assert!(post.starts_with("HTTP/1.1 405") && post.contains("Allow: GET, HEAD\r\n"));
        let mut long = b"GET /status HTTP/1.1\r\nX-Big: ".to_vec();
        long.extend(std::iter::repeat_n(b'a', 1 << 20));
        assert!(exchange(addr, &long).starts_with("HTTP/1.1 431"), "1 MiB head refused");
    }

    #[test]
    fn drops_stalled_clients_and_connections_past_the_limit() {
        let limits =
            Limits { timeout: Duration::from_millis(300), max_connections: 2, ..Limits::default() };
        let addr = server(limits);
        let stalled: Vec<TcpStream> = (0..2).map(|_| TcpStream::connect(addr).unwrap()).collect();
        std::thread::sleep(Duration::from_millis(100));
        assert_eq!(exchange(addr, b"GET /status HTTP/1.1\r\n\r\n"), "", "past the limit: closed");
        std::thread::sleep(Duration::from_millis(500));
        for mut s in stalled {
            let mut buf = [0u8; 16];
            assert_eq!(s.read(&mut buf).unwrap_or(0), 0, "a stalled client is dropped");
        }
        // A byte every 50 ms never waits out one read's timeout: the head's deadline ends it.
        let mut trickling = TcpStream::connect(addr).unwrap();
        let started = Instant::now();
        while trickling.write_all(b"a").is_ok() && started.elapsed() < Duration::from_secs(3) {
            std::thread::sleep(Duration::from_millis(50));
        }
        assert!(started.elapsed() < Duration::from_secs(2), "a trickling client is cut off");
        assert!(exchange(addr, b"GET /status HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 200"));
    }
}
