//! The process heap: glibc's malloc, except for small over-aligned allocations, which
//! come from pools of equal slots.
//!
//! tokio aligns each task and each socket registration to 128 bytes, and glibc's
//! `memalign` pays for an alignment above its own 16 bytes with a head of up to 128
//! bytes in front of the allocation and a tail behind it, free chunks too small for
//! anything an idle connection later asks for. That was three heads and tails per
//! connection, a fifth of the memory an idle one costs. Here a layout whose alignment is
//! above 16 bytes and whose size is at most [`MAX_SLOT`] gets a slot from the pool of its
//! size rounded up to its alignment. A pool cuts its slots one after another from an
//! anonymous mapping, so each slot is aligned with nothing in front of it, and takes a
//! freed slot back for the next allocation of that size. Like glibc's free lists, a pool
//! keeps what a burst left: the slots wait for the next burst rather than go back to the
//! kernel.
//!
//! Every other layout goes to [`System`], as if this module were not there.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};

/// The alignment glibc's malloc gives every allocation on 64-bit Linux.
const MALLOC_ALIGN: usize = 16;
/// The largest slot: a bigger layout is rare enough for `memalign`'s head not to count.
pub const MAX_SLOT: usize = 4096;
/// Slot sizes are multiples of this (the smallest alignment above malloc's).
const GRAIN: usize = 2 * MALLOC_ALIGN;
const POOLS: usize = MAX_SLOT / GRAIN;
/// Bytes a pool maps at once. Untouched pages cost no memory, so this only bounds how
/// often a pool asks the kernel.
const CHUNK: usize = 256 * 1024;

/// Untouched pages of a pool are not counted against the commit limit.
#[cfg(target_os = "linux")]
const NORESERVE: libc::c_int = libc::MAP_NORESERVE;
#[cfg(not(target_os = "linux"))]
const NORESERVE: libc::c_int = 0;

/// The global allocator of the `gatehouse` binary (`#[global_allocator]` in `main.rs`).
pub struct Heap;

/// Bytes mapped for pools so far, for tests and diagnostics.
static MAPPED: AtomicUsize = AtomicUsize::new(0);

/// One pool: slots freed (a list threaded through the slots themselves) and the rest
/// of the current mapping, not yet cut. Addresses, not pointers, so that it is `Send`.
struct Pool {
    free: usize,
    next: usize,
    end: usize,
}

static POOL: [Mutex<Pool>; POOLS] = [const {
    Mutex::new(Pool {
        free: 0,
        next: 0,
        end: 0,
    })
}; POOLS];

/// The slot size for `layout`, or `None` when the layout is the system's.
fn slot_size(layout: Layout) -> Option<usize> {
    let align = layout.align();
    if align <= MALLOC_ALIGN {
        return None;
    }
    let size = layout.size().max(1).next_multiple_of(align);
    (size <= MAX_SLOT).then_some(size)
}

fn pool(slot: usize) -> MutexGuard<'static, Pool> {
    // A panic never happens while a pool is locked, but a poisoned lock would still hold
    // a consistent pool: take it.
    POOL[slot / GRAIN - 1].lock().unwrap_or_else(|e| e.into_inner())
}

impl Pool {
    /// A slot of `slot` bytes. Slots are cut at multiples of `slot` from page-aligned
    /// mappings, so each is aligned to the largest power of two dividing `slot`, which
    /// is at least the alignment of every layout that rounds up to it.
    fn take(&mut self, slot: usize) -> *mut u8 {
        if self.free != 0 {
            let p = self.free as *mut usize;
            // SAFETY: `free` heads a list of slots of this pool, each holding the
            // address of the next in its first word (written by `give`).
            self.free = unsafe { p.read() };
            return p.cast();
        }
        if self.end - self.next < slot {
            // SAFETY: an anonymous private mapping; no memory is aliased.
            let map = unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    CHUNK,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | NORESERVE,
                    -1,
                    0,
                )
            };
            if map == libc::MAP_FAILED {
                return std::ptr::null_mut();
            }
            MAPPED.fetch_add(CHUNK, Ordering::Relaxed);
            // The rest of the previous mapping (less than one slot) stays unused.
            self.next = map as usize;
            self.end = self.next + CHUNK;
        }
        let p = self.next;
        self.next += slot;
        p as *mut u8
    }

    /// Takes back a slot of this pool.
    fn give(&mut self, p: *mut u8) {
        // SAFETY: `p` is a slot of this pool that its owner gave up; slots are at least
        // 32 bytes and aligned, so its first word is ours to write.
        unsafe { p.cast::<usize>().write(self.free) };
        self.free = p as usize;
    }
}

/// Bytes mapped for the pools of over-aligned slots since the start.
pub fn pool_bytes_mapped() -> usize {
    MAPPED.load(Ordering::Relaxed)
}

// SAFETY: every pointer handed out is either the system allocator's (and goes back to
// it: `slot_size` decides by the layout alone, which the caller repeats on free) or a
// slot of `slot_size(layout)` bytes aligned as the layout asks, owned by no one else
// until it is freed.
unsafe impl GlobalAlloc for Heap {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        match slot_size(layout) {
            Some(slot) => pool(slot).take(slot),
            // SAFETY: the caller's contract, passed on.
            None => unsafe { System.alloc(layout) },
        }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        match slot_size(layout) {
            Some(slot) => {
                let p = pool(slot).take(slot);
                if !p.is_null() {
                    // SAFETY: `p` is a fresh slot of at least `layout.size()` bytes.
                    unsafe { p.write_bytes(0, layout.size()) };
                }
                p
            }
            // SAFETY: the caller's contract, passed on.
            None => unsafe { System.alloc_zeroed(layout) },
        }
    }

    unsafe fn dealloc(&self, p: *mut u8, layout: Layout) {
        match slot_size(layout) {
            Some(slot) => pool(slot).give(p),
            // SAFETY: `p` came from `System` with this layout (see `alloc`).
            None => unsafe { System.dealloc(p, layout) },
        }
    }

    unsafe fn realloc(&self, p: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: the caller guarantees `new_size` with `layout.align()` is a valid layout.
        let new = unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
        match (slot_size(layout), slot_size(new)) {
            // SAFETY: both sides are the system's: its realloc, under the caller's contract.
            (None, None) => unsafe { System.realloc(p, layout, new_size) },
            (Some(a), Some(b)) if a == b => p,
            _ => {
                // SAFETY: a fresh block of the new layout, the old one's bytes copied
                // (as many as both hold), then the old one freed with its own layout.
                unsafe {
                    let q = self.alloc(new);
                    if !q.is_null() {
                        q.copy_from_nonoverlapping(p, layout.size().min(new_size));
                        self.dealloc(p, layout);
                    }
                    q
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_small_over_aligned_layouts_get_a_slot() {
        let l = |size, align| Layout::from_size_align(size, align).unwrap();
        assert_eq!(slot_size(l(768, 16)), None, "malloc's own alignment");
        assert_eq!(slot_size(l(24, 8)), None);
        assert_eq!(slot_size(l(768, 128)), Some(768));
        assert_eq!(slot_size(l(130, 128)), Some(256));
        assert_eq!(
            slot_size(l(8, 64)),
            Some(64),
            "a slot is never smaller than its alignment"
        );
        assert_eq!(slot_size(l(4096, 4096)), Some(4096));
        assert_eq!(slot_size(l(4097, 128)), None, "larger than a slot");
        assert_eq!(slot_size(l(64, 8192)), None, "aligned beyond a page");
    }

    /// Random allocations of every kind, each filled with its own byte and checked on
    /// free: a slot handed out twice, or one that overlaps another, shows as a wrong byte.
    #[test]
    fn slots_are_aligned_disjoint_and_reused() {
        let mut rng = 0x2545_f491_4f6c_dd1du64;
        let mut next = move || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        let layouts: Vec<Layout> = [
            (768, 128),
            (256, 128),
            (100, 32),
            (40, 64),
            (1500, 512),
            (3000, 4096),
            (48, 16),
            (5000, 128),
        ]
        .iter()
        .map(|&(s, a)| Layout::from_size_align(s, a).unwrap())
        .collect();
        let mut live: Vec<(*mut u8, Layout, u8)> = Vec::new();
        let check = |(p, l, b): (*mut u8, Layout, u8)| {
            // SAFETY: `p` is live, of `l.size()` bytes, written below.
            let bytes = unsafe { std::slice::from_raw_parts(p, l.size()) };
            assert!(bytes.iter().all(|&x| x == b), "a block of {l:?} was overwritten");
            // SAFETY: allocated by `Heap` with this layout.
            unsafe { Heap.dealloc(p, l) };
        };
        for i in 0..20_000u32 {
            if live.len() > 500 || (!live.is_empty() && next() % 3 == 0) {
                let at = (next() as usize) % live.len();
                check(live.swap_remove(at));
            } else {
                let l = layouts[(next() as usize) % layouts.len()];
                // SAFETY: a non-zero layout.
                let p = unsafe {
                    if i % 5 == 0 {
                        Heap.alloc_zeroed(l)
                    } else {
                        Heap.alloc(l)
                    }
                };
                assert!(!p.is_null());
                assert_eq!(p as usize % l.align(), 0, "{l:?} misaligned");
                if i % 5 == 0 {
                    // SAFETY: just allocated, `l.size()` bytes.
                    assert!(unsafe { std::slice::from_raw_parts(p, l.size()) }
                        .iter()
                        .all(|&x| x == 0));
                }
                let b = (i % 251) as u8;
                // SAFETY: just allocated, `l.size()` bytes.
                unsafe { p.write_bytes(b, l.size()) };
                live.push((p, l, b));
            }
        }
        live.into_iter().for_each(check);
    }

    #[test]
    fn a_freed_slot_is_the_next_one_given() {
        let l = Layout::from_size_align(736, 128).unwrap(); // a size no other test uses
                                                            // SAFETY: a non-zero layout; freed with it.
        unsafe {
            let a = Heap.alloc(l);
            Heap.dealloc(a, l);
            let b = Heap.alloc(l);
            assert_eq!(a, b);
            Heap.dealloc(b, l);
        }
    }

    #[test]
    fn realloc_keeps_the_bytes_across_the_two_heaps() {
        // SAFETY: layouts are non-zero; each block is freed with the layout it has then.
        unsafe {
            let l = Layout::from_size_align(200, 64).unwrap();
            let p = Heap.alloc(l);
            p.write_bytes(7, 200);
            let q = Heap.realloc(p, l, 6000); // a slot to the system
            assert_eq!(q as usize % 64, 0);
            assert!(std::slice::from_raw_parts(q, 200).iter().all(|&x| x == 7));
            let big = Layout::from_size_align(6000, 64).unwrap();
            let r = Heap.realloc(q, big, 100); // and back
            assert!(std::slice::from_raw_parts(r, 100).iter().all(|&x| x == 7));
            Heap.dealloc(r, Layout::from_size_align(100, 64).unwrap());
        }
    }

    #[test]
    fn threads_share_the_pools_safely() {
        let l = Layout::from_size_align(256, 128).unwrap();
        let workers: Vec<_> = (0..4u8)
            .map(|t| {
                std::thread::spawn(move || {
                    for round in 0..200 {
                        // SAFETY: a non-zero layout; each block freed with it.
                        let blocks: Vec<*mut u8> = (0..50).map(|_| unsafe { Heap.alloc(l) }).collect();
                        for &p in &blocks {
                            unsafe { p.write_bytes(t ^ round as u8, 256) };
                        }
                        for p in blocks {
                            let ok = unsafe { std::slice::from_raw_parts(p, 256) }
                                .iter()
                                .all(|&x| x == t ^ round as u8);
                            assert!(ok, "a slot was shared between threads");
                            unsafe { Heap.dealloc(p, l) };
                        }
                    }
                })
            })
            .collect();
        for w in workers {
            w.join().unwrap();
        }
        assert!(pool_bytes_mapped() > 0);
    }
}
