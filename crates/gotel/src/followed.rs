//! `attach --exe` follows its path, not just the file it named at start: a deployment that
//! renames a new binary over the old one gets the new file instrumented too, and the old
//! file's probes go once no process runs it any more. Processes that exit (or exec another
//! program) have what their requests left in the shared maps removed, as the daemon does.

use std::collections::{HashMap, HashSet};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use probes::{AttachOptions, SharedMaps};

use crate::agent::{instrument, Instrumented, Pipeline};

const CHECK_EVERY: Duration = Duration::from_secs(1);

/// A file by identity: device and inode.
type FileId = (u64, u64);

fn file_id(path: &Path) -> Option<FileId> {
    std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

pub struct FollowedPath {
    path: PathBuf,
    options: AttachOptions,
    /// Every file the path has named that may still run, the newest last.
    files: Vec<(FileId, Instrumented)>,
    /// A file that could not be instrumented, not tried again.
    refused: Option<FileId>,
    /// The processes that ran one of `files` at the last check.
    running: HashSet<u32>,
    next_check: Instant,
}

impl FollowedPath {
    pub fn new(path: &Path, options: AttachOptions, first: Instrumented) -> FollowedPath {
        let id = file_id(path).unwrap_or_default();
        FollowedPath {
            path: path.to_path_buf(),
            options,
            files: vec![(id, first)],
            refused: None,
            running: HashSet::new(),
            next_check: Instant::now() + CHECK_EVERY,
        }
    }

    /// Instruments the file the path names now, if it is new, lets go of older files nothing
    /// runs, and clears what processes that ended left behind. Cheap when called often: it
    /// looks once a second.
    pub fn check(&mut self, shared: &SharedMaps, pipeline: &mut Pipeline) {
        let now = Instant::now();
        if now < self.next_check {
            return;
        }
        self.next_check = now + CHECK_EVERY;
        let path = self.path.display();
        if let Some(id) = file_id(&self.path) {
            let known = self.files.iter().any(|(f, _)| *f == id) || self.refused == Some(id);
            if !known {
                match instrument(&self.path, &self.path, shared, self.options) {
                    Ok(new) => {
                        tracing::info!("{path} was replaced: the new file is traced too");
                        pipeline.resources().add_executable(&self.path, &new.go_version);
                        self.files.push((id, new));
                    }
                    Err(e) => {
                        tracing::warn!("{path} was replaced by a file gotel cannot trace: {e:#}");
                        self.refused = Some(id);
                    }
                }
            }
        }
        let running = running_files();
        let ours: HashSet<u32> = running
            .iter()
            .filter(|(_, file)| self.files.iter().any(|(id, _)| id == *file))
            .map(|(pid, _)| *pid)
            .collect();
        for &pid in ours.difference(&self.running) {
            tracing::info!("tracing pid {pid} ({path})");
        }
        for &pid in self.running.difference(&ours) {
            let left = shared.untrace_pid(pid);
            tracing::info!(
                "pid {pid} exited or ran another program ({left} map entries it left removed)"
            );
        }
        self.running = ours;
        if self.files.len() > 1 {
            let newest = self.files.last().map(|(id, _)| *id);
            let in_use: HashSet<FileId> = running.into_values().collect();
            self.files.retain(|(id, _)| Some(*id) == newest || in_use.contains(id));
        }
    }
}

/// The file every process on the host runs (what /proc/PID/exe names), by pid.
fn running_files() -> HashMap<u32, FileId> {
    let Ok(dir) = std::fs::read_dir("/proc") else { return Default::default() };
    dir.map_while(Result::ok)
        .filter_map(|e| {
            let pid = e.file_name().to_str()?.parse().ok()?;
            Some((pid, file_id(&e.path().join("exe"))?))
        })
        .collect()
}
