//! The thread pool and the grid helper (DESIGN.md "grid model").
//!
//! An op splits its work into independent blocks and the grid runs the kernel
//! once per block range on the pool. Blocks never share outputs and each
//! block's arithmetic is fixed, so results do not depend on the thread count.

use std::ops::Range;
use std::sync::{Arc, RwLock};

use rayon::prelude::*;
use rayon::{ThreadPool, ThreadPoolBuilder};

use crate::error::{bail, Result};

static POOL: RwLock<Option<Arc<ThreadPool>>> = RwLock::new(None);

fn default_threads() -> usize {
    std::env::var("XPU_OPS_NUM_THREADS")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .filter(|&n| n > 0)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

fn build_pool(n: usize) -> Result<Arc<ThreadPool>> {
    match ThreadPoolBuilder::new()
        .num_threads(n)
        .thread_name(|i| format!("xpu-ops-{i}"))
        .build()
    {
        Ok(p) => Ok(Arc::new(p)),
        Err(e) => bail!(Internal, "could not start a pool of {n} threads: {e}"),
    }
}

fn pool() -> Arc<ThreadPool> {
    if let Some(p) = POOL.read().unwrap_or_else(|e| e.into_inner()).as_ref() {
        return p.clone();
    }
    let mut slot = POOL.write().unwrap_or_else(|e| e.into_inner());
    slot.get_or_insert_with(|| {
        build_pool(default_threads()).expect("the default thread pool starts")
    })
    .clone()
}

/// Sets the number of worker threads ops use (default: `XPU_OPS_NUM_THREADS`,
/// else the number of CPUs).
pub fn set_num_threads(n: usize) -> Result<()> {
    if n == 0 {
        bail!(InvalidArgument, "num_threads must be at least 1, got 0");
    }
    let p = build_pool(n)?;
    *POOL.write().unwrap_or_else(|e| e.into_inner()) = Some(p);
    Ok(())
}

/// The number of worker threads ops use from this thread: the enclosing rayon
/// pool's size when called inside one, else the library pool's.
pub fn num_threads() -> usize {
    if rayon::current_thread_index().is_some() {
        rayon::current_num_threads()
    } else {
        pool().current_num_threads()
    }
}

/// Runs `body` over `0..n` split into ranges of at least `min_chunk` items.
/// Small grids, and every grid when the pool has one thread, run inline on
/// the caller (no pool hand-off). Inside a caller's rayon pool the grid uses
/// that pool.
pub(crate) fn grid(n: usize, min_chunk: usize, body: impl Fn(Range<usize>) + Sync) {
    if n == 0 {
        return;
    }
    let min_chunk = min_chunk.max(1);
    if n <= min_chunk {
        body(0..n);
        return;
    }
    let run = |threads: usize| {
        // A few chunks per thread balance uneven blocks without tiny tasks.
        let chunks = (n / min_chunk).clamp(1, threads * 4);
        let chunk = n.div_ceil(chunks);
        (0..n.div_ceil(chunk))
            .into_par_iter()
            .for_each(|c| body(c * chunk..((c + 1) * chunk).min(n)));
    };
    if rayon::current_thread_index().is_some() {
        run(rayon::current_num_threads());
        return;
    }
    let p = pool();
    if p.current_num_threads() == 1 {
        // One thread: the caller does the work itself. Handing it to the
        // pool's thread costs a wake-up (microseconds when it sleeps), which
        // is most of a decode-sized call; chunking never changes results.
        body(0..n);
    } else {
        p.install(|| run(p.current_num_threads()));
    }
}

/// A value shared with grid workers. Kernel argument structs hold raw
/// pointers into distinct output regions per block; the launcher guarantees
/// blocks never write the same element.
pub(crate) struct Shared<T>(pub T);
// SAFETY: see above; the pointed-to memory outlives the grid call.
unsafe impl<T> Sync for Shared<T> {}

impl<T> Shared<T> {
    /// Access through a method, so closures capture the whole wrapper (and its
    /// Sync) rather than the raw-pointer field.
    pub fn get(&self) -> &T {
        &self.0
    }
}
