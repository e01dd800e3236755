//! Attaching probes to one function: at its entry, or on its prologue's stack-check jump (an
//! instruction the kernel emulates, an order of magnitude cheaper than one it single-steps),
//! and at each RET, as one uprobe_multi link where the kernel has it (6.6+), else one uprobe
//! per RET.

use std::path::PathBuf;

use libbpf_rs::{Link, ProgramMut, UprobeMultiOpts};

use crate::{AttachContext, CallReturn, Error, FunctionPlan, Placement};

/// The live probes of one instrumentation on one executable. Dropping it detaches them.
pub struct Attached {
    pub instrumentation: &'static str,
    pub executable: PathBuf,
    /// Where each probe sits, for the start-up report ("ServeHTTP: entry on the stack-check
    /// jump, exit at 1 RET").
    pub probes: Vec<String>,
    /// True when each function's RETs share one uprobe_multi link.
    pub multi: bool,
    placement: Placement,
    uprobe_multi: bool,
    links: Vec<Link>,
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
    /// No probes yet, on `to`'s executable. The links hold the programs, and the programs
    /// their maps: the loaded object itself need not be kept.
    pub(crate) fn new(to: &AttachContext<'_>) -> Self {
        Attached {
            instrumentation: to.instrumentation,
            executable: to.path.to_path_buf(),
            probes: Vec::new(),
            multi: true,
            placement: to.options.placement,
            uprobe_multi: to.options.uprobe_multi,
            links: Vec::new(),
        }
    }

    fn error(&self, what: String) -> impl FnOnce(libbpf_rs::Error) -> Error {
        let what = format!("{what} ({}, {})", self.instrumentation, self.executable.display());
        move |source| Error::Bpf { what, source }
    }

    /// A uprobe at file offset `offset`; `what` names the place in errors.
    pub(crate) fn at(
        &mut self,
        offset: u64,
        prog: &ProgramMut<'_>,
        what: &str,
    ) -> Result<(), Error> {
        let offset = usize::try_from(offset).unwrap_or(usize::MAX);
        let link = prog
            .attach_uprobe(false, -1, &self.executable, offset)
            .map_err(self.error(format!("attach uprobe at {what}")))?;
        self.links.push(link);
        Ok(())
    }

    /// A uprobe where `function` starts: on its stack-check jump when the placement allows and
    /// the function has one, else on its first instruction. Returns how it was placed.
    pub(crate) fn entry(
        &mut self,
        function: &FunctionPlan,
        prog: &ProgramMut<'_>,
    ) -> Result<&'static str, Error> {
        let (offset, _, how) = function.entry_point(self.placement);
        self.at(offset, prog, &format!("{} ({how})", function.function.name))?;
        Ok(how)
    }

    /// `entry`, reported as a line of its own.
    pub(crate) fn entry_line(
        &mut self,
        function: &FunctionPlan,
        prog: &ProgramMut<'_>,
    ) -> Result<(), Error> {
        let how = self.entry(function, prog)?;
        self.probes.push(format!("{}: entry on {how}", function.function.name));
        Ok(())
    }

    /// Uprobes on every RET of `function`.
    pub(crate) fn returns(
        &mut self,
        function: &FunctionPlan,
        ret_multi: &ProgramMut<'_>,
        ret_single: &ProgramMut<'_>,
    ) -> Result<(), Error> {
        let name = &function.function.name;
        let offsets: Vec<usize> = function
            .return_offsets
            .iter()
            .map(|&o| usize::try_from(o).unwrap_or(usize::MAX))
            .collect();
        let multi_link = if self.uprobe_multi {
            let opts = UprobeMultiOpts { offsets: offsets.clone(), ..Default::default() };
            ret_multi.attach_uprobe_multi_with_opts(-1, &self.executable, "", opts)
        } else {
            Err(libbpf_rs::Error::from(std::io::Error::other("turned off by --no-uprobe-multi")))
        };
        match multi_link {
            Ok(link) => self.links.push(link),
            Err(e) => {
                tracing::debug!(error = %e, "{name}: no uprobe_multi link, one uprobe per RET");
                self.multi = false;
                for &off in &function.return_offsets {
                    self.at(off, ret_single, &format!("{name} RET {off:#x}"))?;
                }
            }
        }
        Ok(())
    }

    /// Uprobes at each of `calls`' call sites (`at_call`) and where each returns
    /// (`returned`), reported as one line.
    pub(crate) fn call_returns(
        &mut self,
        calls: &CallReturn,
        at_call: &ProgramMut<'_>,
        returned: &ProgramMut<'_>,
    ) -> Result<(), Error> {
        let caller = &calls.caller.name;
        for &(call, after) in &calls.sites {
            self.at(call, at_call, &format!("{caller} call {call:#x}"))?;
            self.at(after, returned, &format!("{caller} after its call {call:#x}"))?;
        }
        self.probes.push(format!(
            "{caller}: at its {} call(s) to {} and where each returns",
            calls.sites.len(),
            calls.callee
        ));
        Ok(())
    }

    /// Entry and every RET of `function`, reported as one line.
    pub(crate) fn function(
        &mut self,
        function: &FunctionPlan,
        enter: &ProgramMut<'_>,
        ret_multi: &ProgramMut<'_>,
        ret_single: &ProgramMut<'_>,
    ) -> Result<(), Error> {
        let how = self.entry(function, enter)?;
        self.returns(function, ret_multi, ret_single)?;
        self.probes.push(format!(
            "{}: entry on {how}, exit at {} RET(s)",
            function.function.name,
            function.return_offsets.len()
        ));
        Ok(())
    }
}
