//! Ring-buffer samples, as the agent turns them into spans (`Assembler::assemble`), whatever
//! their length and content. The first byte picks the layout: below 0x80, the n-th
//! instrumentation's event of exactly its size, its bytes the rest of the input (padded with
//! zeros), so every decoder is reached from the start; else the rest of the input as it is
//! (short, unknown kind, longer).
#![no_main]

use std::cell::RefCell;

use probes::{instrumentations::ALL, Assembler, Events, SpanOptions};
use trace::{AgentIdentity, ResourceCache};

thread_local! {
    /// One per db.query.text mode; resources come from an empty /proc, so nothing is read of
    /// this host's processes.
    static ASSEMBLERS: [RefCell<Assembler>; 2] = [false, true].map(|raw_db_queries| {
        let resources = ResourceCache::with_proc_root(AgentIdentity::from_env(None), "/nonexistent");
        RefCell::new(Assembler::new(resources, SpanOptions { raw_db_queries }))
    });
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else { return };
    let kinds: Vec<Events> = ALL.iter().filter_map(|i| i.events()).collect();
    let mut sample = rest.to_vec();
    if mode < 0x80 {
        let events = kinds[usize::from(mode) % kinds.len()];
        sample.resize(events.size, 0);
        if let Some(kind) = sample.get_mut(..4) {
            let flags = u32::from_le_bytes([kind[0], kind[1], kind[2], kind[3]]) & 0x8000_0000;
            kind.copy_from_slice(&(events.kind | flags).to_le_bytes());
        }
    }
    ASSEMBLERS.with(|a| {
        let mut assembler = a[usize::from(mode & 1)].borrow_mut();
        if let Ok(assembled) = assembler.assemble(&sample) {
            let pid = assembled.resource.pid;
            assembler.resources().forget(pid);
        }
    });
});
