//! What /proc says about processes: which exist, which file each runs, and what it listens on.

use std::collections::HashSet;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// An executable file as the kernel knows it: uprobes attach to the inode, so processes that
/// run the same file share one attachment, and a file replaced in place is a new one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FileId {
    pub dev: u64,
    pub ino: u64,
}

/// A process, told apart from a later one that reuses its pid by its start time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ProcessId {
    pub pid: u32,
    /// Clock ticks after boot (field 22 of /proc/PID/stat).
    pub start_ticks: u64,
}

/// A user process seen in /proc.
#[derive(Debug, Clone)]
pub struct ProcessEntry {
    pub id: ProcessId,
    /// The file it runs (stat of /proc/PID/exe, which follows into its mount namespace).
    pub file: FileId,
    /// Its executable's path as the process sees it.
    pub exe: PathBuf,
    pub comm: String,
}

/// Reads /proc (or a stand-in for tests).
#[derive(Debug, Clone)]
pub struct Proc {
    root: PathBuf,
}

impl Default for Proc {
    fn default() -> Self {
        Proc { root: PathBuf::from("/proc") }
    }
}

impl Proc {
    pub fn at(root: impl Into<PathBuf>) -> Self {
        Proc { root: root.into() }
    }

    pub fn dir(&self, pid: u32) -> PathBuf {
        self.root.join(pid.to_string())
    }

    /// Every pid in /proc (processes, not threads).
    pub fn pids(&self) -> std::io::Result<Vec<u32>> {
        Ok(std::fs::read_dir(&self.root)?
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
            .collect())
    }

    /// Start time of `pid`, or None once it is gone.
    pub fn start_ticks(&self, pid: u32) -> Option<u64> {
        let stat = std::fs::read_to_string(self.dir(pid).join("stat")).ok()?;
        parse_start_ticks(&stat)
    }

    /// A process with an executable file; None for kernel threads, processes that have
    /// exited, and those whose exe link cannot be read.
    pub fn entry(&self, pid: u32) -> Option<ProcessEntry> {
        let dir = self.dir(pid);
        let start_ticks = self.start_ticks(pid)?;
        let meta = std::fs::metadata(dir.join("exe")).ok()?;
        let exe = std::fs::read_link(dir.join("exe")).ok()?;
        let exe = match exe.to_str().and_then(|s| s.strip_suffix(" (deleted)")) {
            Some(path) => PathBuf::from(path),
            None => exe,
        };
        let comm = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
        Some(ProcessEntry {
            id: ProcessId { pid, start_ticks },
            file: FileId { dev: meta.dev(), ino: meta.ino() },
            exe,
            comm: comm.trim_end().to_string(),
        })
    }

    /// The path through which the process's executable can be opened from here, whatever
    /// mount namespace it lives in.
    pub fn exe_link(&self, pid: u32) -> PathBuf {
        self.dir(pid).join("exe")
    }

    pub fn read(&self, pid: u32, file: &str) -> Option<String> {
        std::fs::read_to_string(self.dir(pid).join(file)).ok()
    }

    /// TCP ports `pid` listens on (IPv4 and IPv6), from its network namespace's socket table
    /// and its own file descriptors.
    pub fn listening_ports(&self, pid: u32) -> Vec<u16> {
        let dir = self.dir(pid);
        let mut listening: Vec<(u64, u16)> = Vec::new();
        for table in ["net/tcp", "net/tcp6"] {
            if let Ok(text) = std::fs::read_to_string(dir.join(table)) {
                listening.extend(parse_listening(&text));
            }
        }
        if listening.is_empty() {
            return Vec::new();
        }
        let owned = socket_inodes(&dir.join("fd"));
        let mut ports: Vec<u16> = listening
            .into_iter()
            .filter(|(inode, _)| owned.contains(inode))
            .map(|(_, port)| port)
            .collect();
        ports.sort_unstable();
        ports.dedup();
        ports
    }
}

/// Field 22 of /proc/PID/stat; the command name (field 2) may hold spaces and parentheses, so
/// count from the last ')'.
fn parse_start_ticks(stat: &str) -> Option<u64> {
    let after_comm = &stat[stat.rfind(')')? + 1..];
    after_comm.split_whitespace().nth(19)?.parse().ok()
}

/// (socket inode, local port) of every LISTEN row in a /proc/net/tcp{,6} table.
fn parse_listening(table: &str) -> impl Iterator<Item = (u64, u16)> + '_ {
    const TCP_LISTEN: &str = "0A";
    table.lines().skip(1).filter_map(|line| {
        let cols: Vec<&str> = line.split_whitespace().collect();
        if cols.get(3)? != &TCP_LISTEN {
            return None;
        }
        let port = u16::from_str_radix(cols.get(1)?.rsplit(':').next()?, 16).ok()?;
        let inode = cols.get(9)?.parse().ok()?;
        Some((inode, port))
    })
}

fn socket_inodes(fd_dir: &Path) -> HashSet<u64> {
    let Ok(entries) = std::fs::read_dir(fd_dir) else { return HashSet::new() };
    entries
        .filter_map(|e| {
            let target = std::fs::read_link(e.ok()?.path()).ok()?;
            let s = target.to_str()?;
            s.strip_prefix("socket:[")?.strip_suffix(']')?.parse().ok()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_time_survives_odd_command_names() {
        let stat = "4242 (my (odd) name) S 1 4242 4242 0 -1 4194560 120 0 0 0 1 0 0 0 20 0 \
                    5 0 987654 1234567 300 18446744073709551615";
        assert_eq!(parse_start_ticks(stat), Some(987654));
        assert_eq!(parse_start_ticks("garbage"), None);
    }

    #[test]
    fn listening_rows_of_a_tcp_table() {
        // Recorded from a host: one IPv4 listener on 8080, one established connection.
        let table = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
   0: 00000000:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 31337 1 0000000000000000 100 0 0 10 0\n\
   1: 0100007F:1F90 0100007F:D2F0 01 00000000:00000000 00:00000000 00000000     0        0 31338 1 0000000000000000 20 4 30 10 -1\n";
        assert_eq!(parse_listening(table).collect::<Vec<_>>(), vec![(31337, 8080)]);
    }

    #[test]
    fn this_process_is_seen() {
        let proc = Proc::default();
        let me = std::process::id();
        assert!(proc.pids().unwrap().contains(&me));
        let entry = proc.entry(me).expect("our own /proc entry");
        assert_eq!(entry.exe, std::env::current_exe().unwrap());
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        assert!(proc.listening_ports(me).contains(&port));
    }
}
