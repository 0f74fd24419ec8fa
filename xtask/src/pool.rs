//! A bounded parallel map on scoped threads: the Vault seed's writes and
//! reads, the Azure CLI calls and the benchmark's ceiling client. Blocking
//! I/O on a handful of threads needs no async runtime, and keeps the build
//! small.

use std::sync::Mutex;

/// Runs `f` over `items` on at most `limit` threads and returns the results
/// in the order of `items`. Threads take the next item as they finish one,
/// so a slow item never holds up the rest.
pub fn bounded<T: Send, R: Send>(items: Vec<T>, limit: usize, f: impl Fn(T) -> R + Sync) -> Vec<R> {
    let n = items.len();
    let queue = Mutex::new(items.into_iter().enumerate());
    let done = Mutex::new(Vec::with_capacity(n));
    std::thread::scope(|s| {
        for _ in 0..limit.max(1).min(n) {
            s.spawn(|| loop {
                let next = queue.lock().unwrap_or_else(|e| e.into_inner()).next();
                let Some((i, item)) = next else { break };
                let r = f(item);
                done.lock().unwrap_or_else(|e| e.into_inner()).push((i, r));
            });
        }
    });
    let mut done = done.into_inner().unwrap_or_else(|e| e.into_inner());
    done.sort_by_key(|(i, _)| *i);
    done.into_iter().map(|(_, r)| r).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn keeps_order_and_the_bound() {
        let live = AtomicUsize::new(0);
        let peak = AtomicUsize::new(0);
        let out = bounded((0..200).collect(), 7, |i: u32| {
            let now = live.fetch_add(1, Ordering::SeqCst) + 1;
            peak.fetch_max(now, Ordering::SeqCst);
            std::thread::sleep(std::time::Duration::from_micros(200));
            live.fetch_sub(1, Ordering::SeqCst);
            i * 2
        });
        assert_eq!(out, (0..200).map(|i| i * 2).collect::<Vec<_>>());
        let peak = peak.load(Ordering::SeqCst);
        assert!((2..=7).contains(&peak), "peak {peak}");
        assert!(bounded(Vec::<u32>::new(), 4, |i| i).is_empty());
    }
}
