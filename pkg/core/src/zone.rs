//! Per-bucket memory zones: the cached documents of one bucket are
//! allocated together, so a bucket given away gives its memory back whole.
//!
//! A monitor that held more than its share for a while (it started first,
//! it took over a dead peer's buckets) drops the documents of the buckets
//! it gives away. With one heap those entries were interleaved with the
//! ones it keeps, and glibc cannot return a page that still holds one live
//! entry, even after `malloc_trim`: such a monitor kept most of its
//! surplus (`share_memory` in docs/performance.md: 113–158 MB for a share
//! that costs 85).
//!
//! [`ZoneAlloc`] is a global allocator that sends every other allocation
//! to the system allocator. Inside [`within`]`(bucket, ..)` it places small
//! allocations (up to [`MAX_ZONED`] bytes, alignment up to 16) in that
//! bucket's zone: a fixed range of address space reserved once
//! (`MAP_NORESERVE`, no memory until touched), carved by a bump pointer
//! into size classes with one free list each. When the last allocation of
//! a zone is freed, its pages are given back (`MADV_DONTNEED`) and the zone
//! starts empty. A zone that is full, a larger block, or a failed
//! reservation falls back to the system allocator: zones only ever decide
//! where memory goes, never whether an allocation succeeds.
//!
//! The reflector builds a cluster's entry inside its bucket's zone
//! (`feed::Reflector`); without the allocator installed (the library's
//! tests, tools) [`within`] changes nothing.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

/// One zone per bucket.
pub const ZONES: usize = 256;
/// Address space per zone: 64 MiB, ~40,000 entries with their credentials
/// (a bucket holds ~4,000 at a million clusters). 16 GiB reserved in all,
/// none of it backed until used.
pub const ZONE_BYTES: usize = 64 << 20;
/// Larger allocations go to the system allocator.
pub const MAX_ZONED: usize = 32 << 10;
/// Size classes: 16-byte steps to 2 KiB, 64-byte steps to 8 KiB, 256-byte
/// steps to 32 KiB (a class wastes at most what glibc's chunk header and
/// rounding do up to 2 KiB, under 3% above).
const CLASSES: usize = 128 + 96 + 96;
const NO_ZONE: u16 = u16::MAX;
/// `base` before the reservation is tried.
const UNRESERVED: usize = 0;
/// `base` after a failed reservation: every allocation goes to the system.
const NO_RESERVATION: usize = 1;

thread_local! {
    static CURRENT: Cell<u16> = const { Cell::new(NO_ZONE) };
}

/// Runs `f` with this thread's small allocations placed in `bucket`'s zone
/// (when [`ZoneAlloc`] is the global allocator). `f` must not keep
/// allocations that outlive the bucket's documents beyond what they own.
pub fn within<R>(bucket: u8, f: impl FnOnce() -> R) -> R {
    in_zone(u16::from(bucket), f)
}

/// Runs `f` with this thread's allocations going to the system allocator,
/// even inside [`within`]: for what outlives the entry being built (a
/// lazily built global), which would keep its zone from being given back.
pub fn outside<R>(f: impl FnOnce() -> R) -> R {
    in_zone(NO_ZONE, f)
}

/// Runs `f` with this thread's zone set to `zone`, restored after (also
/// on unwind).
fn in_zone<R>(zone: u16, f: impl FnOnce() -> R) -> R {
    struct Restore(u16);
    impl Drop for Restore {
        fn drop(&mut self) {
            CURRENT.with(|c| c.set(self.0));
        }
    }
    let _restore = Restore(CURRENT.with(|c| c.replace(zone)));
    f()
}

/// The zones of the process: [`Global`] allocates from them.
static PROCESS: ZoneAlloc = ZoneAlloc::new();

/// The global allocator a binary installs (`#[global_allocator]`): the
/// process's zones, whose occupancy [`stats`] reads.
pub struct Global;

// SAFETY: forwards to a `ZoneAlloc`, which is a sound allocator.
unsafe impl GlobalAlloc for Global {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded as given.
        unsafe { PROCESS.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded as given.
        unsafe { PROCESS.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: forwarded as given.
        unsafe { PROCESS.realloc(ptr, layout, new_size) }
    }
}

/// Occupancy of the process's zones (all zero unless [`Global`] is the
/// global allocator).
pub fn stats() -> ZoneStats {
    PROCESS.stats()
}

/// The bucket whose zone holds the block at `ptr`, if a zone does.
pub fn bucket_of(ptr: *const u8) -> Option<u8> {
    PROCESS.zone_of(ptr.cast_mut()).map(|(z, _)| z as u8)
}

fn current() -> u16 {
    // During a thread's teardown the slot may be gone: no zone then.
    CURRENT.try_with(Cell::get).unwrap_or(NO_ZONE)
}

/// The size class of `size` bytes: its index and its size.
fn class_of(size: usize) -> Option<(usize, usize)> {
    let size = size.max(1);
    if size <= 2048 {
        let i = size.div_ceil(16) - 1;
        Some((i, (i + 1) * 16))
    } else if size <= 8192 {
        let k = (size - 2048).div_ceil(64);
        Some((127 + k, 2048 + k * 64))
    } else if size <= MAX_ZONED {
        let k = (size - 8192).div_ceil(256);
        Some((223 + k, 8192 + k * 256))
    } else {
        None
    }
}

struct Zone {
    /// Bytes carved so far from the zone's start.
    used: usize,
    /// Allocations not freed yet.
    live: usize,
    /// Per class: offset + 1 of the first free block (0: none); each free
    /// block holds the next one's the same way.
    free: [usize; CLASSES],
}

impl Zone {
    const EMPTY: Zone = Zone {
        used: 0,
        live: 0,
        free: [0; CLASSES],
    };
}

/// Occupancy of the zones, for operators and tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ZoneStats {
    /// Zones holding at least one allocation.
    pub zones: usize,
    /// Allocations in zones.
    pub live: usize,
    /// Bytes carved from zones (live, or free for reuse in their zone).
    pub carved: usize,
}

/// The global allocator: see the module's documentation.
pub struct ZoneAlloc {
    /// Start of the reserved range, or [`UNRESERVED`] / [`NO_RESERVATION`].
    base: AtomicUsize,
    zones: [Mutex<Zone>; ZONES],
}

impl Default for ZoneAlloc {
    fn default() -> Self {
        Self::new()
    }
}

impl ZoneAlloc {
    pub const fn new() -> Self {
        Self {
            base: AtomicUsize::new(UNRESERVED),
            zones: [const { Mutex::new(Zone::EMPTY) }; ZONES],
        }
    }

    fn lock(&self, z: usize) -> std::sync::MutexGuard<'_, Zone> {
        // Nothing panics while a zone is locked; a poisoned lock is as good.
        self.zones[z].lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The reserved range's start, reserving it on first use; `None` if it
    /// cannot be reserved.
    fn base(&self) -> Option<usize> {
        match self.base.load(Ordering::Acquire) {
            NO_RESERVATION => None,
            UNRESERVED => {
                let b = reserve().unwrap_or(NO_RESERVATION);
                match self
                    .base
                    .compare_exchange(UNRESERVED, b, Ordering::AcqRel, Ordering::Acquire)
                {
                    Ok(_) => (b != NO_RESERVATION).then_some(b),
                    Err(won) => {
                        if b != NO_RESERVATION {
                            unreserve(b);
                        }
                        (won != NO_RESERVATION).then_some(won)
                    }
                }
            }
            b => Some(b),
        }
    }

    /// The zone holding `ptr`, and `ptr`'s offset in it.
    fn zone_of(&self, ptr: *mut u8) -> Option<(usize, usize)> {
        let base = self.base.load(Ordering::Acquire);
        let a = ptr as usize;
        if base <= NO_RESERVATION || a < base || a >= base + ZONES * ZONE_BYTES {
            return None;
        }
        let off = a - base;
        Some((off / ZONE_BYTES, off % ZONE_BYTES))
    }

    /// A block of class `(ci, size)` in zone `z`, or null when it is full.
    ///
    /// # Safety
    /// `base` is the reserved range's start.
    unsafe fn take(&self, base: usize, z: usize, ci: usize, size: usize) -> *mut u8 {
        let start = base + z * ZONE_BYTES;
        let mut zone = self.lock(z);
        let off = match zone.free[ci] {
            0 if zone.used + size <= ZONE_BYTES => {
                let off = zone.used;
                zone.used += size;
                off
            }
            0 => return std::ptr::null_mut(),
            head => {
                let off = head - 1;
                // SAFETY: a free block of this zone holds the next one's link.
                zone.free[ci] = unsafe { ((start + off) as *const usize).read() };
                off
            }
        };
        zone.live += 1;
        (start + off) as *mut u8
    }

    /// Frees a block of zone `z` at `off`, of `size` bytes as allocated.
    ///
    /// # Safety
    /// The block was taken from this zone with that size and is not used.
    unsafe fn give(&self, z: usize, off: usize, size: usize) {
        let Some((ci, _)) = class_of(size) else {
            return;
        };
        let start = self.base.load(Ordering::Acquire) + z * ZONE_BYTES;
        let mut zone = self.lock(z);
        zone.live -= 1;
        if zone.live == 0 {
            // The bucket's last allocation: the whole zone goes back.
            discard(start, zone.used);
            *zone = Zone::EMPTY;
            return;
        }
        // SAFETY: the block is at least 16 bytes, aligned, and free.
        unsafe { ((start + off) as *mut usize).write(zone.free[ci]) };
        zone.free[ci] = off + 1;
    }

    /// Occupancy of the zones now.
    pub fn stats(&self) -> ZoneStats {
        let mut s = ZoneStats::default();
        for z in 0..ZONES {
            let zone = self.lock(z);
            if zone.live > 0 {
                s.zones += 1;
                s.live += zone.live;
                s.carved += zone.used;
            }
        }
        s
    }
}

// SAFETY: every block handed out is either the system allocator's or a
// block of a zone that no other live allocation overlaps: blocks are carved
// once from a zone's bump pointer, handed out again only after being freed,
// and a zone is reset only when none of its blocks is live. Blocks are
// 16-byte aligned (classes are multiples of 16 from a page-aligned start)
// and larger alignments go to the system allocator.
unsafe impl GlobalAlloc for ZoneAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let z = current();
        if z != NO_ZONE && layout.align() <= 16 {
            if let (Some((ci, size)), Some(base)) = (class_of(layout.size()), self.base()) {
                // SAFETY: `base` is the reservation.
                let p = unsafe { self.take(base, usize::from(z), ci, size) };
                if !p.is_null() {
                    return p;
                }
            }
        }
        // SAFETY: forwarded as given.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        match self.zone_of(ptr) {
            // SAFETY: `ptr` is a live block of that zone, of this layout.
            Some((z, off)) => unsafe { self.give(z, off, layout.size()) },
            // SAFETY: not a zone's: the system allocator's.
            None => unsafe { System.dealloc(ptr, layout) },
        }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let Some((z, off)) = self.zone_of(ptr) else {
            // SAFETY: the system allocator's block, forwarded.
            return unsafe { System.realloc(ptr, layout, new_size) };
        };
        let old = class_of(layout.size());
        let new = class_of(new_size);
        if new.is_some() && new.map(|c| c.0) == old.map(|c| c.0) {
            return ptr;
        }
        // A zone's block stays in its zone while it fits a class.
        let base = self.base.load(Ordering::Acquire);
        let mut p = match new {
            // SAFETY: the reservation exists since `ptr` is in it.
            Some((ci, size)) => unsafe { self.take(base, z, ci, size) },
            None => std::ptr::null_mut(),
        };
        if p.is_null() {
            // SAFETY: `new_size` is non-zero and, rounded to `layout`'s
            // alignment, does not overflow (`realloc`'s contract).
            p = unsafe {
                System.alloc(Layout::from_size_align_unchecked(new_size, layout.align()))
            };
            if p.is_null() {
                return p;
            }
        }
        // SAFETY: both blocks are at least this long and do not overlap.
        unsafe {
            std::ptr::copy_nonoverlapping(ptr, p, layout.size().min(new_size));
            self.give(z, off, layout.size());
        }
        p
    }
}

fn reserve() -> Option<usize> {
    #[cfg(target_os = "linux")]
    {
        let len = ZONES * ZONE_BYTES;
        // SAFETY: a fresh anonymous private mapping; nothing else refers
        // to the range. MAP_NORESERVE: no memory is committed until a page
        // is touched.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return None;
        }
        // SAFETY: advice on the range just mapped. No huge pages (a 2 MiB
        // page for each zone's first entry would cost 512 MiB); not in
        // core dumps (16 GiB of mostly zeros).
        unsafe {
            libc::madvise(p, len, libc::MADV_NOHUGEPAGE);
            libc::madvise(p, len, libc::MADV_DONTDUMP);
        }
        Some(p as usize)
    }
    #[cfg(not(target_os = "linux"))]
    None
}

fn unreserve(base: usize) {
    #[cfg(target_os = "linux")]
    // SAFETY: the range was reserved by `reserve` and never handed out.
    unsafe {
        libc::munmap(base as *mut libc::c_void, ZONES * ZONE_BYTES);
    }
    #[cfg(not(target_os = "linux"))]
    let _ = base;
}

/// Gives back the pages of `len` bytes from `start` (a zone emptied).
fn discard(start: usize, len: usize) {
    #[cfg(target_os = "linux")]
    if len > 0 {
        let len = len.next_multiple_of(4096);
        // SAFETY: the range is a zone's carved part, none of it live.
        unsafe {
            libc::madvise(start as *mut libc::c_void, len, libc::MADV_DONTNEED);
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (start, len);
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    static TEST: ZoneAlloc = ZoneAlloc::new();

    fn zone_stats(z: usize) -> (usize, usize) {
        let zone = TEST.lock(z);
        (zone.live, zone.used)
    }

    #[test]
    fn size_classes_hold_their_sizes_and_grow() {
        let mut last = class_of(0).unwrap();
        for size in 0..=MAX_ZONED {
            let (ci, cs) = class_of(size).unwrap();
            assert!(cs >= size.max(1) && cs % 16 == 0, "{size}: {cs}");
            assert!(ci < CLASSES);
            assert!(ci >= last.0 && cs >= last.1);
            if ci == last.0 {
                assert_eq!(cs, last.1);
            }
            // At most 16 bytes wasted to 2 KiB, then 1/32 of the size.
            assert!(cs - size.max(1) < 16.max(size / 32), "{size}: {cs}");
            last = (ci, cs);
        }
        assert_eq!(last.0, CLASSES - 1);
        assert_eq!(class_of(MAX_ZONED + 1), None);
    }

    #[test]
    fn outside_a_zone_allocations_are_the_systems() {
        let l = Layout::from_size_align(100, 8).unwrap();
        // SAFETY: allocated and freed with the same layout.
        unsafe {
            let p = TEST.alloc(l);
            assert!(!p.is_null());
            assert_eq!(TEST.zone_of(p), None);
            TEST.dealloc(p, l);
        }
    }

    #[test]
    fn a_zone_gives_its_pages_back_when_its_last_block_is_freed() {
        let z = 7u8;
        let l = Layout::from_size_align(200, 8).unwrap();
        // SAFETY: blocks allocated and freed with their layouts.
        unsafe {
            let ps: Vec<*mut u8> = within(z, || (0..1000).map(|_| TEST.alloc(l)).collect());
            for (i, p) in ps.iter().enumerate() {
                assert_eq!(TEST.zone_of(*p).map(|(zz, _)| zz), Some(7));
                p.write_bytes(i as u8, 200);
            }
            assert_eq!(zone_stats(7), (1000, 1000 * 208));
            // Freed blocks are reused before the zone grows.
            TEST.dealloc(ps[3], l);
            let again = within(z, || TEST.alloc(l));
            assert_eq!(again, ps[3]);
            assert_eq!(zone_stats(7).1, 1000 * 208);
            for (i, p) in ps.iter().enumerate() {
                if i != 3 {
                    assert_eq!(p.read(), i as u8);
                }
                TEST.dealloc(*p, l);
            }
            assert_eq!(zone_stats(7), (0, 0));
        }
    }

    #[test]
    fn large_or_overaligned_blocks_go_to_the_system() {
        // SAFETY: allocated and freed with the same layout.
        unsafe {
            for l in [
                Layout::from_size_align(MAX_ZONED + 1, 8).unwrap(),
                Layout::from_size_align(64, 64).unwrap(),
            ] {
                let p = within(9, || TEST.alloc(l));
                assert_eq!(TEST.zone_of(p), None);
                TEST.dealloc(p, l);
            }
        }
        assert_eq!(zone_stats(9), (0, 0));
    }

    #[test]
    fn a_full_zone_falls_back_to_the_system() {
        let l = Layout::from_size_align(MAX_ZONED, 16).unwrap();
        // SAFETY: blocks allocated and freed with their layout, never
        // written (carving a block touches no page).
        unsafe {
            let zoned: Vec<*mut u8> = within(11, || {
                (0..ZONE_BYTES / MAX_ZONED).map(|_| TEST.alloc(l)).collect()
            });
            assert!(zoned
                .iter()
                .all(|p| TEST.zone_of(*p).map(|z| z.0) == Some(11)));
            assert_eq!(zone_stats(11), (zoned.len(), ZONE_BYTES));
            let spill = within(11, || TEST.alloc(l));
            assert!(!spill.is_null());
            assert_eq!(TEST.zone_of(spill), None, "a full zone: the system's");
            TEST.dealloc(spill, l);
            for p in zoned {
                TEST.dealloc(p, l);
            }
        }
        assert_eq!(zone_stats(11), (0, 0));
    }

    #[test]
    fn without_a_reservation_everything_is_the_systems() {
        let a = Box::new(ZoneAlloc {
            base: AtomicUsize::new(NO_RESERVATION),
            zones: [const { Mutex::new(Zone::EMPTY) }; ZONES],
        });
        let l = Layout::from_size_align(64, 8).unwrap();
        // SAFETY: allocated and freed with the same layout.
        unsafe {
            let p = within(3, || a.alloc(l));
            assert!(!p.is_null());
            assert_eq!(a.zone_of(p), None);
            let q = a.realloc(p, l, 128);
            assert_eq!(a.zone_of(q), None);
            a.dealloc(q, Layout::from_size_align(128, 8).unwrap());
        }
        assert_eq!(a.stats(), ZoneStats::default());
    }

    #[test]
    fn within_restores_the_previous_zone() {
        within(1, || {
            assert_eq!(current(), 1);
            within(2, || assert_eq!(current(), 2));
            assert_eq!(current(), 1);
            outside(|| assert_eq!(current(), NO_ZONE));
            assert_eq!(current(), 1);
        });
        assert_eq!(current(), NO_ZONE);
    }

    #[derive(Debug, Clone)]
    enum Op {
        Alloc { zone: Option<u8>, size: usize },
        Free(usize),
        Grow(usize, usize),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            3 => (proptest::option::of(20u8..24), 1usize..40_000)
                .prop_map(|(zone, size)| Op::Alloc { zone, size }),
            2 => any::<usize>().prop_map(Op::Free),
            1 => (any::<usize>(), 1usize..40_000).prop_map(|(i, s)| Op::Grow(i, s)),
        ]
    }

    proptest! {
        // Against a model: blocks never overlap, keep their bytes through a
        // realloc, stay in their zone while they fit a class, and a zone
        // whose blocks are all freed is empty again.
        #[test]
        fn blocks_are_disjoint_and_keep_their_contents(ops in proptest::collection::vec(op(), 1..120)) {
            // (ptr, size, fill byte)
            let mut live: Vec<(*mut u8, usize, u8)> = Vec::new();
            let mut fill = 0u8;
            for op in ops {
                // SAFETY: every block is used within its size and freed once
                // with the layout it has.
                unsafe {
                    match op {
                        Op::Alloc { zone, size } => {
                            let l = Layout::from_size_align(size, 8).unwrap();
                            let p = match zone {
                                Some(z) => within(z, || TEST.alloc(l)),
                                None => TEST.alloc(l),
                            };
                            prop_assert!(!p.is_null());
                            let expect_zone = zone.filter(|_| size <= MAX_ZONED).map(usize::from);
                            prop_assert_eq!(TEST.zone_of(p).map(|z| z.0), expect_zone);
                            fill = fill.wrapping_add(1);
                            p.write_bytes(fill, size);
                            live.push((p, size, fill));
                        }
                        Op::Free(i) if !live.is_empty() => {
                            let (p, size, f) = live.swap_remove(i % live.len());
                            prop_assert!((0..size).all(|k| p.add(k).read() == f));
                            TEST.dealloc(p, Layout::from_size_align(size, 8).unwrap());
                        }
                        Op::Grow(i, new) if !live.is_empty() => {
                            let i = i % live.len();
                            let (p, size, f) = live[i];
                            let was = TEST.zone_of(p).map(|z| z.0);
                            let q = TEST.realloc(p, Layout::from_size_align(size, 8).unwrap(), new);
                            prop_assert!(!q.is_null());
                            prop_assert!((0..size.min(new)).all(|k| q.add(k).read() == f));
                            if was.is_some() && new <= MAX_ZONED {
                                prop_assert_eq!(TEST.zone_of(q).map(|z| z.0), was);
                            }
                            q.write_bytes(f, new);
                            live[i] = (q, new, f);
                        }
                        _ => {}
                    }
                }
                let mut spans: Vec<(usize, usize)> = live.iter().map(|&(p, s, _)| (p as usize, s)).collect();
                spans.sort_unstable();
                for w in spans.windows(2) {
                    prop_assert!(w[0].0 + w[0].1 <= w[1].0, "overlap");
                }
            }
            for (p, size, f) in live.drain(..) {
                // SAFETY: as above.
                unsafe {
                    prop_assert!((0..size).all(|k| p.add(k).read() == f));
                    TEST.dealloc(p, Layout::from_size_align(size, 8).unwrap());
                }
            }
            for z in 20..24 {
                prop_assert_eq!(zone_stats(z), (0, 0));
            }
        }
    }
}
