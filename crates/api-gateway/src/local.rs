//! Per-thread state, so that the request path of one serving thread writes
//! no memory another thread writes.
//!
//! - [`thread_number`]: a small number per thread (pool ids, metric shards).
//! - [`PerThread`]: each thread's own state derived from a shared value (the
//!   verified-token cache from the key set, a copy of the route table). A
//!   thread remakes its state when the shared value's version has moved
//!   since; otherwise the only shared memory touched is that version,
//!   read-only. States of a dropped owner go when the thread next makes one.

use std::any::Any;
use std::cell::RefCell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};

/// This thread's number: 0, 1, 2… in the order threads first ask.
pub(crate) fn thread_number() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    thread_local! {
        static NUMBER: u64 = NEXT.fetch_add(1, Ordering::Relaxed);
    }
    NUMBER.with(|n| *n)
}

struct Slot {
    owner: Weak<()>,
    id: u64,
    version: u64,
    state: Box<dyn Any>,
}

thread_local! {
    static SLOTS: RefCell<Vec<Slot>> = const { RefCell::new(Vec::new()) };
}

/// The owner's handle on its per-thread states; see the module comment.
#[derive(Debug)]
pub(crate) struct PerThread {
    id: u64,
    alive: Arc<()>,
    version: AtomicU64,
}

impl PerThread {
    pub(crate) fn new() -> Self {
        static IDS: AtomicU64 = AtomicU64::new(0);
        Self { id: IDS.fetch_add(1, Ordering::Relaxed), alive: Arc::new(()), version: AtomicU64::new(0) }
    }

    /// The shared value changed (call after writing it): every thread
    /// remakes its state before its next use.
    pub(crate) fn changed(&self) {
        self.version.fetch_add(1, Ordering::Release);
    }

    /// Runs `f` on this thread's state, made first by `make` if the thread
    /// has none or the version moved; `None` when `make` has nothing to make
    /// from. `make` reads the shared value after the version was read, so
    /// a state is never older than the version it is kept under.
    pub(crate) fn with<S: 'static, R>(
        &self,
        make: impl FnOnce() -> Option<S>,
        f: impl FnOnce(&mut S) -> R,
    ) -> Option<R> {
        let version = self.version.load(Ordering::Acquire);
        SLOTS.with(|slots| {
            let mut slots = slots.borrow_mut();
            let index = match slots.iter().position(|s| s.id == self.id) {
                Some(i) if slots[i].version == version => i,
                Some(i) => {
                    slots[i].state = Box::new(make()?);
                    slots[i].version = version;
                    i
                }
                None => {
                    let state = Box::new(make()?);
                    slots.retain(|s| s.owner.strong_count() > 0);
                    slots.push(Slot { owner: Arc::downgrade(&self.alive), id: self.id, version, state });
                    slots.len() - 1
                }
            };
            slots[index].state.downcast_mut::<S>().map(f)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_is_per_thread_and_remade_when_the_version_moves() {
        let shared = PerThread::new();
        let made = std::cell::Cell::new(0);
        let make = || {
            made.set(made.get() + 1);
            Some(Vec::<u32>::new())
        };
        shared.with(make, |v| v.push(1));
        assert_eq!(shared.with(make, |v| v.len()), Some(1), "kept while the version stands");
        assert_eq!(made.get(), 1);
        std::thread::scope(|s| {
            s.spawn(|| {
                assert_eq!(shared.with(|| Some(Vec::<u32>::new()), |v| v.len()), Some(0), "another thread's own")
            });
        });
        shared.changed();
        assert_eq!(shared.with(make, |v| v.len()), Some(0), "remade after a change");
        assert_eq!(made.get(), 2);
        assert_eq!(PerThread::new().with(|| None::<u32>, |_| ()), None);
    }

    #[test]
    fn states_of_dropped_owners_go() {
        let old = PerThread::new();
        old.with(|| Some(0u8), |_| ());
        drop(old);
        let new = PerThread::new();
        new.with(|| Some(0u8), |_| ());
        SLOTS.with(|slots| assert!(slots.borrow().iter().all(|s| s.owner.strong_count() > 0)));
    }
}
