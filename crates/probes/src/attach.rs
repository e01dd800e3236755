//! Attaching probes to one function: at its entry, or on its prologue's stack-check jump (an
//! instruction the kernel emulates, an order of magnitude cheaper than one it single-steps),
//! and at each RET, as one uprobe_multi link where the kernel has it (6.6+), else one uprobe
//! per RET.

use std::path::{Path, PathBuf};

use libbpf_rs::{Link, ProgramMut, UprobeMultiOpts};

use crate::{Error, FunctionPlan, Placement};

/// The live probes of one instrumentation on one executable. Dropping it detaches them.
pub struct Attached {
    pub instrumentation: &'static str,
    pub executable: PathBuf,
    /// Where each probe sits, for the start-up report ("ServeHTTP: entry on the stack-check
    /// jump, exit at 1 RET").
    pub probes: Vec<String>,
    /// True when each function's RETs share one uprobe_multi link.
    pub multi: bool,
    pub(crate) links: Vec<Link>,
}

impl std::fmt::Debug for Attached {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Attached")
            .field("instrumentation", &self.instrumentation)
            .field("executable", &self.executable)
            .field("probes", &self.probes)
            .field("links", &self.links.len())
            .finish()
    }
}

impl Attached {
    pub(crate) fn new(instrumentation: &'static str, executable: &Path) -> Self {
        Attached {
            instrumentation,
            executable: executable.to_path_buf(),
            probes: Vec::new(),
            multi: true,
            links: Vec::new(),
        }
    }

    fn error(&self, what: String) -> impl FnOnce(libbpf_rs::Error) -> Error {
        let what = format!("{what} ({}, {})", self.instrumentation, self.executable.display());
        move |source| Error::Bpf { what, source }
    }

    /// A uprobe where `function` starts: on its stack-check jump when `placement` allows and
    /// the function has one, else on its first instruction. Returns how it was placed.
    pub(crate) fn entry(
        &mut self,
        path: &Path,
        function: &FunctionPlan,
        prog: &ProgramMut<'_>,
        placement: Placement,
    ) -> Result<&'static str, Error> {
        let (offset, how) = match (placement, function.stack_check) {
            (Placement::Emulated, Some(jump)) => (jump, "the stack-check jump"),
            _ => (function.function.file_offset, "the first instruction"),
        };
        let name = &function.function.name;
        let link = prog
            .attach_uprobe(false, -1, path, usize::try_from(offset).unwrap_or(usize::MAX))
            .map_err(self.error(format!("attach uprobe at {name} ({how})")))?;
        self.links.push(link);
        Ok(how)
    }

    /// Uprobes on every RET of `function`.
    pub(crate) fn returns(
        &mut self,
        path: &Path,
        function: &FunctionPlan,
        ret_multi: &ProgramMut<'_>,
        ret_single: &ProgramMut<'_>,
        uprobe_multi: bool,
    ) -> Result<(), Error> {
        let name = &function.function.name;
        let offsets: Vec<usize> = function
            .return_offsets
            .iter()
            .map(|&o| usize::try_from(o).unwrap_or(usize::MAX))
            .collect();
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
                        .map_err(self.error(format!("attach uprobe at {name} RET {off:#x}")))?;
                    self.links.push(link);
                }
            }
        }
        Ok(())
    }

    /// Entry and every RET of `function`, reported as one line.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn function(
        &mut self,
        path: &Path,
        function: &FunctionPlan,
        enter: &ProgramMut<'_>,
        ret_multi: &ProgramMut<'_>,
        ret_single: &ProgramMut<'_>,
        options: &crate::AttachOptions,
    ) -> Result<(), Error> {
        let how = self.entry(path, function, enter, options.placement)?;
        self.returns(path, function, ret_multi, ret_single, options.uprobe_multi)?;
        self.probes.push(format!(
            "{}: entry on {how}, exit at {} RET(s)",
            function.function.name,
            function.return_offsets.len()
        ));
        Ok(())
    }
}
