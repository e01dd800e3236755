//! The agent's memory held back from its resident high-water mark: the large blocks it frees
//! (an executable's DWARF after analysis, a Prometheus exposition after a scrape) go back to
//! the system.

/// Hands free heap memory back to the system.
pub fn release_freed() {
    // SAFETY: malloc_trim only releases free heap memory.
    unsafe { libc::malloc_trim(0) };
}

/// Allocations from this size on get pages of their own, given back when freed. glibc would
/// raise its threshold to the size of the first such block freed, and keep every later
/// exposition (megabytes) in the heap for good.
pub fn map_large_allocations() {
    // SAFETY: mallopt only changes the allocator's policy for later allocations.
    unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, 256 * 1024) };
}
