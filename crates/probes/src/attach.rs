//! Attaching probes to one function: at its entry, or on its prologue's stack-check jump (an
//! instruction the kernel emulates, an order of magnitude cheaper than one it single-steps),
//! and at each RET, as one uprobe_multi link where the kernel has it (6.6+), else one uprobe
//! per RET. Where the kernel has uprobe_multi links every probe is one, single places too: a
//! uprobe perf event needs CAP_SYS_ADMIN on some kernels (this project's 6.18 among them), a
//! uprobe_multi link only CAP_BPF and CAP_PERFMON.

use std::path::PathBuf;
use std::sync::OnceLock;

use libbpf_rs::{Link, ProgramAttachType, ProgramMut, UprobeMultiOpts};

use goinfo::OkExit;

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

    /// A uprobe at file offset `offset`; `what` names the place in errors. A program loaded
    /// for uprobe_multi links (`load`) gets a link of one place.
    pub(crate) fn at(
        &mut self,
        offset: u64,
        prog: &ProgramMut<'_>,
        what: &str,
    ) -> Result<(), Error> {
        let offset = usize::try_from(offset).unwrap_or(usize::MAX);
        let link = if matches!(prog.attach_type(), ProgramAttachType::TraceUprobeMulti) {
            let opts = UprobeMultiOpts { offsets: vec![offset], ..Default::default() };
            prog.attach_uprobe_multi_with_opts(-1, &self.executable, "", opts)
        } else {
            prog.attach_uprobe(false, -1, &self.executable, offset)
        };
        self.links.push(link.map_err(self.error(format!("attach uprobe at {what}")))?);
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
        self.rets(&function.function.name, &function.return_offsets, ret_multi, ret_single)
    }

    /// Uprobes on the RETs at `offsets` of the function `name`: one uprobe_multi link, or
    /// one uprobe each.
    fn rets(
        &mut self,
        name: &str,
        offsets: &[u64],
        ret_multi: &ProgramMut<'_>,
        ret_single: &ProgramMut<'_>,
    ) -> Result<(), Error> {
        let multi_link = if self.uprobe_multi {
            let offsets = offsets.iter().map(|&o| usize::try_from(o).unwrap_or(usize::MAX));
            let opts = UprobeMultiOpts { offsets: offsets.collect(), ..Default::default() };
            ret_multi.attach_uprobe_multi_with_opts(-1, &self.executable, "", opts)
        } else {
            Err(libbpf_rs::Error::from(std::io::Error::other("turned off by --no-uprobe-multi")))
        };
        match multi_link {
            Ok(link) => self.links.push(link),
            Err(e) => {
                tracing::debug!(error = %e, "{name}: no uprobe_multi link, one uprobe per RET");
                self.multi = false;
                for &off in offsets {
                    self.at(off, ret_single, &format!("{name} RET {off:#x}"))?;
                }
            }
        }
        Ok(())
    }

    /// Entry of `function` and its exits as `exit` found them: the jump on its callee's
    /// error (`ok`, where a successful call ends) and the RETs of the error paths; every RET
    /// where there is no such jump or the placement is entry-ret. Reported as one line.
    pub(crate) fn function_ok_exit(
        &mut self,
        function: &FunctionPlan,
        exit: Option<&OkExit>,
        enter: &ProgramMut<'_>,
        ok: &ProgramMut<'_>,
        ret_multi: &ProgramMut<'_>,
        ret_single: &ProgramMut<'_>,
    ) -> Result<(), Error> {
        let Some(exit) = exit.filter(|_| self.placement == Placement::Emulated) else {
            return self.function(function, enter, ret_multi, ret_single);
        };
        let name = &function.function.name;
        let how = self.entry(function, enter)?;
        self.at(exit.branch, ok, &format!("{name} jump on its callee's error"))?;
        if !exit.other_rets.is_empty() {
            self.rets(name, &exit.other_rets, ret_multi, ret_single)?;
        }
        self.probes.push(format!(
            "{name}: entry on {how}, exit on the jump testing its call's error and at the {} \
             RET(s) of error paths ({} RET(s) behind the jump carry no probe)",
            exit.other_rets.len(),
            exit.rets_behind.len()
        ));
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

/// Whether this kernel makes uprobe_multi links (Linux 6.6+), asked once as libbpf's own
/// feature probe asks: a link of a trivial program to "/" fails with EBADF (not a regular
/// file) where the link type exists, with EINVAL where it does not.
pub(crate) fn uprobe_multi_supported() -> bool {
    static SUPPORTED: OnceLock<bool> = OnceLock::new();
    *SUPPORTED.get_or_init(|| {
        use libbpf_rs::libbpf_sys as sys;
        // r0 = 0; exit
        let insns: [u64; 2] = [0xb7, 0x95];
        // SAFETY: the options are zeroed C structs with their sizes set, the instructions
        // outlive the calls, and the descriptors made are closed here.
        unsafe {
            let mut load: sys::bpf_prog_load_opts = std::mem::zeroed();
            load.sz = std::mem::size_of::<sys::bpf_prog_load_opts>() as _;
            load.expected_attach_type = sys::BPF_TRACE_UPROBE_MULTI;
            let prog = sys::bpf_prog_load(
                sys::BPF_PROG_TYPE_KPROBE,
                c"gotel_probe".as_ptr(),
                c"GPL".as_ptr(),
                insns.as_ptr().cast(),
                2,
                &mut load,
            );
            if prog < 0 {
                return false;
            }
            let offset: std::os::raw::c_ulong = 0;
            let mut link: sys::bpf_link_create_opts = std::mem::zeroed();
            link.sz = std::mem::size_of::<sys::bpf_link_create_opts>() as _;
            link.__bindgen_anon_1.uprobe_multi.path = c"/".as_ptr();
            link.__bindgen_anon_1.uprobe_multi.offsets = &offset;
            link.__bindgen_anon_1.uprobe_multi.cnt = 1;
            let fd = sys::bpf_link_create(prog, -1, sys::BPF_TRACE_UPROBE_MULTI, &link);
            if fd >= 0 {
                libc::close(fd);
            }
            libc::close(prog);
            fd == -libc::EBADF
        }
    })
}
