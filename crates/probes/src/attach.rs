//! Attaching one function's probes: a uprobe at its entry and one at each RET, as a single
//! uprobe_multi link where the kernel has it (6.6+), else one uprobe per RET.

use std::path::{Path, PathBuf};

use goinfo::Function;
use libbpf_rs::{Link, ProgramMut, UprobeMultiOpts};

use crate::Error;

/// The live probes of one instrumentation on one executable. Dropping it detaches them.
pub struct Attached {
    pub instrumentation: &'static str,
    pub executable: PathBuf,
    /// The probed functions, with their RET counts.
    pub functions: Vec<(String, usize)>,
    /// True when each function's RETs share one uprobe_multi link.
    pub multi: bool,
    links: Vec<Link>,
}

impl std::fmt::Debug for Attached {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Attached")
            .field("instrumentation", &self.instrumentation)
            .field("executable", &self.executable)
            .field("multi", &self.multi)
            .field("links", &self.links.len())
            .finish()
    }
}

impl Attached {
    pub(crate) fn new(instrumentation: &'static str, executable: &Path) -> Self {
        Attached {
            instrumentation,
            executable: executable.to_path_buf(),
            functions: Vec::new(),
            multi: true,
            links: Vec::new(),
        }
    }

    /// Attaches `enter` at the entry of `function` only.
    pub(crate) fn entry(
        &mut self,
        path: &Path,
        function: &Function,
        enter: &ProgramMut<'_>,
    ) -> Result<(), Error> {
        let offset = usize::try_from(function.file_offset).unwrap_or(usize::MAX);
        let link = enter.attach_uprobe(false, -1, path, offset).map_err(|source| Error::Bpf {
            what: format!(
                "attach uprobe at {} entry ({}, {})",
                function.name,
                self.instrumentation,
                self.executable.display()
            ),
            source,
        })?;
        self.links.push(link);
        self.functions.push((function.name.clone(), 0));
        Ok(())
    }

    /// Attaches `enter` at the entry of `function` and `ret_multi` (or `ret_single` per RET)
    /// at each of `return_offsets`, in the file at `path`, for every process (pid filtering is
    /// the programs' own).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn function(
        &mut self,
        path: &Path,
        function: &Function,
        return_offsets: &[u64],
        enter: &ProgramMut<'_>,
        ret_multi: &ProgramMut<'_>,
        ret_single: &ProgramMut<'_>,
        uprobe_multi: bool,
    ) -> Result<(), Error> {
        let name = &function.name;
        let bpf = |what: String| {
            let what = format!("{what} ({}, {})", self.instrumentation, self.executable.display());
            move |source| Error::Bpf { what, source }
        };
        let entry = usize::try_from(function.file_offset).unwrap_or(usize::MAX);
        let link = enter
            .attach_uprobe(false, -1, path, entry)
            .map_err(bpf(format!("attach uprobe at {name} entry")))?;
        self.links.push(link);
        let offsets: Vec<usize> =
            return_offsets.iter().map(|&o| usize::try_from(o).unwrap_or(usize::MAX)).collect();
        let multi_link = if uprobe_multi {
            let opts = UprobeMultiOpts { offsets: offsets.clone(), ..Default::default() };
            ret_multi.attach_uprobe_multi_with_opts(-1, path, "", opts)
        } else {
            Err(libbpf_rs::Error::from(std::io::Error::other("turned off by --no-uprobe-multi")))
        };
        match multi_link {
            Ok(link) => self.links.push(link),
            Err(e) => {
                tracing::debug!(error = %e, "{name}: no uprobe_multi link, one uprobe per RET");
                self.multi = false;
                for &off in &offsets {
                    let link = ret_single
                        .attach_uprobe(false, -1, path, off)
                        .map_err(bpf(format!("attach uprobe at {name} RET {off:#x}")))?;
                    self.links.push(link);
                }
            }
        }
        self.functions.push((name.clone(), return_offsets.len()));
        Ok(())
    }
}
