//! Starting a program held before its first instruction, so probes are attached before it
//! can serve anything. gotel re-executes itself as a small trampoline that waits on a pipe and
//! then execs the program: the pid is known (and filtered on) before the program exists.

use std::ffi::OsString;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};

/// argv[1] that turns gotel into the trampoline.
pub const TRAMPOLINE_ARG: &str = "__held-exec";
const HOLD_FD_ENV: &str = "GOTEL_HOLD_FD";

pub struct HeldChild {
    child: Child,
    release: std::fs::File,
}

impl HeldChild {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Lets the program start.
    pub fn release(mut self) -> std::io::Result<Child> {
        self.release.write_all(b"go")?;
        Ok(self.child)
    }
}

/// Finds `program` as a shell would: a path if it has a slash, else the first match in PATH.
pub fn resolve_program(program: &str) -> Option<PathBuf> {
    if program.contains('/') {
        return Some(PathBuf::from(program));
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths).map(|dir| dir.join(program)).find(|p| p.is_file())
    })
}

fn pipe() -> std::io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0i32; 2];
    // SAFETY: pipe2 writes two fds into the array we own; O_CLOEXEC keeps them out of anything
    // else we spawn.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: both fds were just created and are owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Spawns the trampoline for `program` with `args`; `argv0` is what the program sees as its name.
pub fn spawn_held(program: &Path, argv0: &str, args: &[String]) -> std::io::Result<HeldChild> {
    let (read_end, write_end) = pipe()?;
    let read_fd = read_end.as_raw_fd();
    let mut cmd = Command::new("/proc/self/exe");
    cmd.arg(TRAMPOLINE_ARG)
        .arg(program)
        .arg(argv0)
        .args(args)
        .env(HOLD_FD_ENV, read_fd.to_string());
    // SAFETY: runs in the forked child before exec; fcntl is async-signal-safe and only clears
    // close-on-exec on the read end so the trampoline inherits it.
    unsafe {
        cmd.pre_exec(move || {
            if libc::fcntl(read_fd, libc::F_SETFD, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd.spawn()?;
    drop(read_end);
    Ok(HeldChild { child, release: std::fs::File::from(write_end) })
}

/// The trampoline: wait for gotel's word, then become the program. Never returns on success.
pub fn trampoline(args: Vec<OsString>) -> ! {
    let fail = |msg: String| -> ! {
        eprintln!("gotel: {msg}");
        std::process::exit(127)
    };
    let (Some(program), Some(argv0)) = (args.first(), args.get(1)) else {
        fail("internal: trampoline needs a program".into())
    };
    let fd: i32 = std::env::var(HOLD_FD_ENV)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| fail(format!("internal: {HOLD_FD_ENV} missing")));
    // SAFETY: the fd was inherited from gotel for exactly this purpose and nothing else owns it.
    let mut hold = unsafe { std::fs::File::from_raw_fd(fd) };
    let mut word = [0u8; 2];
    if hold.read_exact(&mut word).is_err() {
        fail("gotel stopped before the program could start; not running it uninstrumented".into())
    }
    drop(hold);
    let err = Command::new(program).arg0(argv0).args(&args[2..]).env_remove(HOLD_FD_ENV).exec();
    fail(format!("cannot run {}: {err}", program.to_string_lossy()))
}
