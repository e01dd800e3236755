//! Helpers for the semantic conventions more than one library's spans follow.

/// Splits "host:port", "[v6]:port", "host" into (host, port): server.address and server.port
/// from what a URL, a Host header or a gRPC target says.
pub(crate) fn split_host_port(s: &str) -> (&str, Option<u16>) {
    if let Some(rest) = s.strip_prefix('[') {
        if let Some((host, tail)) = rest.split_once(']') {
            return (host, tail.strip_prefix(':').and_then(|p| p.parse().ok()));
        }
    }
    match s.rsplit_once(':') {
        Some((host, port)) if !host.contains(':') => (host, port.parse().ok()),
        _ => (s, None),
    }
}

/// `split_host_port` of an owned string, the host kept in the string's own allocation: a span
/// takes it as is, with no copy.
pub(crate) fn into_host_port(mut s: String) -> (String, Option<u16>) {
    let (host, port) = split_host_port(&s);
    let start = host.as_ptr() as usize - s.as_ptr() as usize;
    let end = start + host.len();
    s.truncate(end);
    s.drain(..start);
    (s, port)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owned_host_port_forms() {
        let owned = |s: &str| into_host_port(s.to_string());
        assert_eq!(owned("a.b:80"), ("a.b".to_string(), Some(80)));
        assert_eq!(owned("[::1]:9"), ("::1".to_string(), Some(9)));
        assert_eq!(owned("::1"), ("::1".to_string(), None));
        assert_eq!(owned(""), (String::new(), None));
    }

    #[test]
    fn host_port_forms() {
        assert_eq!(split_host_port("a.b:80"), ("a.b", Some(80)));
        assert_eq!(split_host_port("a.b"), ("a.b", None));
        assert_eq!(split_host_port("[::1]:9"), ("::1", Some(9)));
        assert_eq!(split_host_port("::1"), ("::1", None));
    }
}
