//! What membership in the injection sockhash does to a socket's receive side on the running
//! kernel, measured on a loopback pair of the agent's own rather than guessed from the version.
//! Kernels with the sockmap receive change of early 2026 (reported for 6.6.128+, 6.12.75+,
//! 6.18.14+ and 6.19+) answer ioctl(FIONREAD) with 0 for a member socket without a verdict
//! program, and are reported to miss readiness wakeups. A no-op verdict program mends FIONREAD
//! there, but measured here it left connections with data stuck unread once the agent detached,
//! so gotel does not attach one.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::{AsFd, AsRawFd};
use std::time::Duration;

use libbpf_rs::{MapCore, MapFlags, MapHandle};

/// What a member socket was seen to get.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SockhashCheck {
    /// ioctl(FIONREAD) answered the bytes waiting.
    pub fionread_right: bool,
    /// A poll() waiting for data woke when the data arrived.
    pub woken: bool,
}

/// The key the check's socket is filed under: no connection has family 0xffffffff.
const CHECK_KEY: [u8; 40] = {
    let mut k = [0u8; 40];
    k[36] = 0xff;
    k[37] = 0xff;
    k[38] = 0xff;
    k[39] = 0xff;
    k
};
const PAYLOAD: &[u8] = b"gotel sockhash check";
const WAKE_WITHIN: Duration = Duration::from_secs(1);

/// Files one end of a loopback pair in `sockets` and watches it receive: a wakeup for data
/// sent while it waits, then FIONREAD for data waiting. The socket leaves the map after.
pub fn check(sockets: &MapHandle) -> std::io::Result<SockhashCheck> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let member = TcpStream::connect(listener.local_addr()?)?;
    let (mut peer, _) = listener.accept()?;
    let fd = member.as_fd().as_raw_fd() as u32;
    sockets
        .update(&CHECK_KEY, &fd.to_ne_bytes(), MapFlags::ANY)
        .map_err(|e| std::io::Error::other(format!("file a socket in the sockhash: {e}")))?;
    let result = watch(&member, &mut peer);
    let _ = sockets.delete(&CHECK_KEY);
    result
}

fn watch(member: &TcpStream, peer: &mut TcpStream) -> std::io::Result<SockhashCheck> {
    let woken = std::thread::scope(|s| {
        let writer = s.spawn(|| {
            std::thread::sleep(Duration::from_millis(50));
            peer.write_all(PAYLOAD)
        });
        let woken = poll_readable(member, WAKE_WITHIN + Duration::from_millis(50));
        writer.join().expect("the check's writer does not panic").map(|()| woken)
    })?;
    drain(member, PAYLOAD.len())?;
    // Data waiting, as poll() sees it: FIONREAD should say how much.
    peer.write_all(PAYLOAD)?;
    poll_readable(member, WAKE_WITHIN);
    std::thread::sleep(Duration::from_millis(5)); // the whole payload, not its first segment
    let waiting = fionread(member)?;
    drain(member, PAYLOAD.len())?;
    Ok(SockhashCheck { fionread_right: waiting == PAYLOAD.len(), woken })
}

fn poll_readable(s: &TcpStream, timeout: Duration) -> bool {
    let mut fds = libc::pollfd { fd: s.as_raw_fd(), events: libc::POLLIN, revents: 0 };
    // SAFETY: one valid pollfd, for the duration of the call.
    let n = unsafe { libc::poll(&mut fds, 1, timeout.as_millis() as libc::c_int) };
    n == 1 && fds.revents & libc::POLLIN != 0
}

fn fionread(s: &TcpStream) -> std::io::Result<usize> {
    let mut n: libc::c_int = 0;
    // SAFETY: FIONREAD writes one int to the pointer given.
    if unsafe { libc::ioctl(s.as_raw_fd(), libc::FIONREAD, &mut n) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(n.max(0) as usize)
}

fn drain(mut s: &TcpStream, len: usize) -> std::io::Result<()> {
    s.set_read_timeout(Some(WAKE_WITHIN))?;
    let mut buf = vec![0u8; len];
    s.read_exact(&mut buf)
}
