//! Process starts as they happen (`execs.bpf.c`): the daemon scans /proc when one is
//! reported instead of waiting for its next periodic scan.

use std::cell::RefCell;
use std::mem::MaybeUninit;
use std::rc::Rc;

use libbpf_rs::skel::{OpenSkel, Skel, SkelBuilder};
use libbpf_rs::{Link, MapHandle, OpenObject, RingBuffer, RingBufferBuilder};

use crate::Error;
use skel::ExecsSkelBuilder;

crate::load::bpf_object!("execs");

/// The attached program and its ring buffer of pids.
pub struct ExecWatch {
    execs: MapHandle,
    _link: Link,
}

fn bpf_error(what: &str) -> impl FnOnce(libbpf_rs::Error) -> Error {
    crate::bpf_error("exec watch", std::path::Path::new("sched_process_exec"), what)
}

impl ExecWatch {
    pub fn start() -> Result<ExecWatch, Error> {
        let mut storage = MaybeUninit::<OpenObject>::uninit();
        let open = ExecsSkelBuilder::default().open(&mut storage).map_err(bpf_error("open"))?;
        let mut skel = open.load().map_err(bpf_error("load"))?;
        skel.attach().map_err(bpf_error("attach tp_btf/sched_process_exec"))?;
        let link =
            skel.links.on_exec.take().ok_or_else(|| Error::Internal {
                what: "exec watch: no link after attach".into(),
            })?;
        // Our own handle on the map: the skeleton can go, the link keeps the program.
        let execs = MapHandle::try_from(&skel.maps.execs).map_err(bpf_error("keep the map"))?;
        Ok(ExecWatch { execs, _link: link })
    }

    /// A reader that appends the pid of each exec it sees to `pids`; poll it with a zero
    /// timeout.
    pub fn reader(&self, pids: Rc<RefCell<Vec<u32>>>) -> Result<RingBuffer<'_>, Error> {
        let mut builder = RingBufferBuilder::new();
        builder
            .add(&self.execs, move |bytes: &[u8]| {
                if let Some(pid) = bytes.get(..4).and_then(|b| b.try_into().ok()) {
                    pids.borrow_mut().push(u32::from_ne_bytes(pid));
                }
                0
            })
            .map_err(bpf_error("read the execs ring buffer"))?;
        builder.build().map_err(bpf_error("read the execs ring buffer"))
    }
}
