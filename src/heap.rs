//! The process heap: glibc's malloc, except for small over-aligned allocations, which
//! come from pools of equal slots.
//!
//! tokio aligns each task and each socket registration to 128 bytes, and glibc's
//! `memalign` pays for an alignment above its own 16 bytes with a head of up to 128
//! bytes in front of the allocation and a tail behind it, free pieces too small for
//! anything an idle connection later asks for. That was three heads and tails per
//! connection, a fifth of the memory an idle one costs. Here a layout whose alignment is
//! above 16 bytes and whose size is at most [`MAX_SLOT`] gets a slot from the pool of its
//! size rounded up to its alignment. A pool cuts its slots one after another from
//! anonymous mappings of 128 KiB (chunks), so each slot is aligned with nothing in front
//! of it, and takes a freed slot back for the next allocation of that size. A chunk in
//! which nothing is in use any more goes back to the kernel (each pool keeps one as a
//! spare): after a burst, the memory returns as its connections close.
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
/// Bytes a pool maps at once, and gives back once none of its slots is in use. Untouched
/// pages cost no memory.
const CHUNK: usize = 128 * 1024;

/// Untouched pages of a pool are not counted against the commit limit.
#[cfg(target_os = "linux")]
const NORESERVE: libc::c_int = libc::MAP_NORESERVE;
#[cfg(not(target_os = "linux"))]
const NORESERVE: libc::c_int = 0;

/// The global allocator of the `gatehouse` binary (`#[global_allocator]` in `main.rs`).
pub struct Heap;

/// Bytes the pools have mapped now.
static MAPPED: AtomicUsize = AtomicUsize::new(0);

/// The head of a chunk, in its first slot (32 bytes: the smallest slot). Addresses, not
/// pointers, so that pools are `Send`.
#[repr(C)]
struct Chunk {
    /// Freed slots of this chunk: a list threaded through their first words.
    free: usize,
    /// Offset of the first slot never handed out.
    bump: u32,
    /// Slots handed out and not freed.
    used: u32,
    /// Neighbours in the pool's list of chunks with room.
    prev: usize,
    next: usize,
}

/// One pool: its chunks, each [`CHUNK`] bytes aligned to its size, so that a slot's
/// chunk is its address rounded down.
struct Pool {
    /// Chunks with a slot to give, the one that last got room first.
    room: usize,
    /// One chunk with nothing in use, kept so that a pool at the edge of a chunk does
    /// not map and unmap in turn; another chunk that empties goes back to the kernel.
    spare: usize,
    /// Chunks mapped (the spare included).
    chunks: usize,
}

static POOL: [Mutex<Pool>; POOLS] = [const {
    Mutex::new(Pool {
        room: 0,
        spare: 0,
        chunks: 0,
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

fn head(chunk: usize) -> *mut Chunk {
    chunk as *mut Chunk
}

/// A fresh chunk aligned to its size (twice the size mapped, the overhang unmapped), or
/// `None` when the kernel has no memory to give.
fn map_chunk() -> Option<usize> {
    // SAFETY: an anonymous private mapping; no memory is aliased.
    let map = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            2 * CHUNK,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | NORESERVE,
            -1,
            0,
        )
    };
    if map == libc::MAP_FAILED {
        return None;
    }
    let start = map as usize;
    let chunk = start.next_multiple_of(CHUNK);
    // SAFETY: both ranges are the overhang of the mapping just made, page-aligned.
    unsafe {
        if chunk > start {
            libc::munmap(map, chunk - start);
        }
        let end = start + 2 * CHUNK;
        if end > chunk + CHUNK {
            libc::munmap((chunk + CHUNK) as *mut libc::c_void, end - chunk - CHUNK);
        }
    }
    MAPPED.fetch_add(CHUNK, Ordering::Relaxed);
    Some(chunk)
}

impl Pool {
    /// A slot of `slot` bytes, or null when no memory can be had. Slots sit at multiples
    /// of `slot` in chunks aligned to their size (the first one holds the chunk's head),
    /// so each is aligned to the largest power of two dividing `slot`, which is at least
    /// the alignment of every layout that rounds up to it.
    fn take(&mut self, slot: usize) -> *mut u8 {
        // SAFETY: every chunk address below is a mapped chunk of this pool, whose head
        // this pool alone reads and writes, under its lock.
        unsafe {
            if self.room == 0 {
                let chunk = match std::mem::take(&mut self.spare) {
                    0 => match map_chunk() {
                        Some(c) => {
                            self.chunks += 1;
                            c
                        }
                        None => return std::ptr::null_mut(),
                    },
                    spare => spare,
                };
                head(chunk).write(Chunk {
                    free: 0,
                    bump: slot as u32,
                    used: 0,
                    prev: 0,
                    next: 0,
                });
                self.link(chunk);
            }
            let chunk = self.room;
            let h = head(chunk);
            let p = if (*h).free != 0 {
                let p = (*h).free;
                (*h).free = (p as *const usize).read();
                p
            } else {
                let p = chunk + (*h).bump as usize;
                (*h).bump += slot as u32;
                p
            };
            (*h).used += 1;
            if Self::full(h, slot) {
                self.unlink(chunk);
            }
            p as *mut u8
        }
    }

    /// Takes back a slot of this pool; its chunk goes back to the kernel once nothing in
    /// it is in use, unless it is kept as the spare.
    fn give(&mut self, p: *mut u8, slot: usize) {
        let chunk = p as usize & !(CHUNK - 1);
        // SAFETY: `p` is a slot of this pool that its owner gave up (slots are at least
        // 32 bytes and aligned: its first word is ours to write), in a mapped chunk of
        // this pool, whose head this pool alone reads and writes, under its lock.
        unsafe {
            let h = head(chunk);
            let was_full = Self::full(h, slot);
            p.cast::<usize>().write((*h).free);
            (*h).free = p as usize;
            (*h).used -= 1;
            if was_full {
                self.link(chunk);
            }
            if (*h).used == 0 {
                self.unlink(chunk);
                if self.spare == 0 {
                    self.spare = chunk;
                } else {
                    libc::munmap(chunk as *mut libc::c_void, CHUNK);
                    MAPPED.fetch_sub(CHUNK, Ordering::Relaxed);
                    self.chunks -= 1;
                }
            }
        }
    }

    /// No freed slot and no room left to cut one.
    unsafe fn full(h: *const Chunk, slot: usize) -> bool {
        // SAFETY: the caller's: `h` is a live chunk head.
        unsafe { (*h).free == 0 && (*h).bump as usize + slot > CHUNK }
    }

    /// Puts a chunk that is in no list at the front of the list of chunks with room.
    unsafe fn link(&mut self, chunk: usize) {
        // SAFETY: the caller's: `chunk` and the list's chunks are live chunks of this pool.
        unsafe {
            let h = head(chunk);
            (*h).prev = 0;
            (*h).next = self.room;
            if self.room != 0 {
                (*head(self.room)).prev = chunk;
            }
            self.room = chunk;
        }
    }

    /// Takes a chunk that is in the list of chunks with room out of it.
    unsafe fn unlink(&mut self, chunk: usize) {
        // SAFETY: the caller's: `chunk` is in the list, of live chunks of this pool.
        unsafe {
            let h = head(chunk);
            let (prev, next) = ((*h).prev, (*h).next);
            if prev == 0 {
                self.room = next;
            } else {
                (*head(prev)).next = next;
            }
            if next != 0 {
                (*head(next)).prev = prev;
            }
            (*h).prev = 0;
            (*h).next = 0;
        }
    }
}

/// Bytes the pools of over-aligned slots have mapped now.
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
            Some(slot) => pool(slot).give(p, slot),
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
        // A slot no other test uses.
        let l = Layout::from_size_align(704, 64).unwrap();
        // SAFETY: a non-zero layout; each block freed with it.
        unsafe {
            let a = Heap.alloc(l);
            let b = Heap.alloc(l);
            Heap.dealloc(a, l);
            assert_eq!(Heap.alloc(l), a, "the freed slot, not a new one");
            Heap.dealloc(a, l);
            Heap.dealloc(b, l);
        }
    }

    #[test]
    fn chunks_go_back_to_the_kernel_once_empty_but_one() {
        // A slot no other test uses.
        let l = Layout::from_size_align(2976, 32).unwrap();
        let slot = slot_size(l).unwrap();
        let per_chunk = CHUNK / slot - 1;
        // SAFETY: a non-zero layout; each block freed with it.
        let blocks: Vec<*mut u8> = (0..per_chunk * 3 + 1).map(|_| unsafe { Heap.alloc(l) }).collect();
        assert_eq!(pool(slot).chunks, 4, "{per_chunk} slots a chunk");
        let mut chunks: Vec<usize> = blocks.iter().map(|&p| p as usize & !(CHUNK - 1)).collect();
        chunks.dedup();
        assert_eq!(chunks.len(), 4, "slots are cut in order, chunk by chunk");
        // Free all but one slot of the first chunk, out of order: three chunks empty.
        let (keep, rest) = blocks.split_first().unwrap();
        for &p in rest.iter().rev() {
            unsafe { Heap.dealloc(p, l) };
        }
        assert_eq!(pool(slot).chunks, 2, "the first chunk, still in use, and one spare");
        // The kept chunk has room again: the next slots come from it, then the spare.
        let again: Vec<*mut u8> = (0..per_chunk).map(|_| unsafe { Heap.alloc(l) }).collect();
        assert!(again
            .iter()
            .take(per_chunk - 1)
            .all(|&p| p as usize & !(CHUNK - 1) == chunks[0]));
        assert_eq!(pool(slot).chunks, 2);
        for p in again.into_iter().chain([*keep]) {
            unsafe { Heap.dealloc(p, l) };
        }
        assert_eq!(pool(slot).chunks, 1, "only the spare is left");
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
