//! A bounded parallel map on scoped threads: blocking I/O on a handful of threads
//! needs no async runtime, and keeps the build small.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

/// Most threads one map starts, whatever `--concurrency` asks: a seed stays
/// within 64 (`tests/it/threads.rs`).
pub(crate) const MAX_THREADS: usize = 48;

/// Runs `f` over `items` on at most `limit` (and [`MAX_THREADS`]) threads; results
/// in the order of `items`. An atomic counter hands out items and each has its own
/// slot, so threads never wait on one another (a shared queue lock cost futex waits).
pub(crate) fn bounded<T: Send, R: Send>(
    items: Vec<T>,
    limit: usize,
    f: impl Fn(T) -> R + Sync,
) -> Vec<R> {
    let n = items.len();
    // Each slot is taken exactly once, so its lock is never contended.
    let items: Vec<Mutex<Option<T>>> = items.into_iter().map(|t| Mutex::new(Some(t))).collect();
    let done: Vec<Mutex<Option<R>>> = (0..n).map(|_| Mutex::new(None)).collect();
    let next = AtomicUsize::new(0);
    std::thread::scope(|s| {
        for _ in 0..limit.clamp(1, MAX_THREADS).min(n) {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(slot) = items.get(i) else { break };
                let item = slot.lock().unwrap_or_else(|e| e.into_inner()).take();
                if let Some(item) = item {
                    let r = f(item);
                    *done[i].lock().unwrap_or_else(|e| e.into_inner()) = Some(r);
                }
            });
        }
    });
    done.into_iter()
        .map(|r| r.into_inner().unwrap_or_else(|e| e.into_inner()).expect("every item ran"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_order_and_the_bound() {
        for (items, limit, most) in [(200, 7, 7), (400, 256, MAX_THREADS)] {
            let (live, peak) = (AtomicUsize::new(0), AtomicUsize::new(0));
            let out = bounded((0..items).collect(), limit, |i: u32| {
                peak.fetch_max(live.fetch_add(1, Ordering::SeqCst) + 1, Ordering::SeqCst);
                std::thread::sleep(std::time::Duration::from_millis(2));
                live.fetch_sub(1, Ordering::SeqCst);
                i * 2
            });
            assert_eq!(out, (0..items).map(|i| i * 2).collect::<Vec<_>>());
            let peak = peak.load(Ordering::SeqCst);
            assert!((2..=most).contains(&peak), "peak {peak}");
        }
        assert!(bounded(Vec::<u32>::new(), 4, |i| i).is_empty());
    }
}
