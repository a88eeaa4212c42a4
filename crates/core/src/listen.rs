//! Typed listeners of a kind's committed steps ([`Builder::listen`](crate::Builder::listen)).
//!
//! A kind with listeners copies its state before each step and after it, and the message; the
//! copies ride with the step's held reply, and when the commit pipeline reports the step
//! durable they are handed to each listener's queue, in step order per entity. A step that is
//! rolled back, or whose batch fails or is fenced, never releases its held reply as durable,
//! so no listener hears of it. Each listener drains its own bounded queue on a task of its
//! own: a slow listener loses changes (counted) instead of slowing commits.

use std::any::Any;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};

use perennial_types::EntityId;
use tokio::sync::mpsc;

use crate::Process;
use crate::guard::guard;

/// One committed step of an entity, as a listener receives it: the entity, the step's number,
/// the message, and the state before and after the step.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Change<K: Process> {
    /// The entity.
    pub id: EntityId,
    /// The step's number (its version): increasing per entity.
    pub step: u64,
    /// The message the step handled; `None` for an operator's deletion, which has none.
    pub msg: Option<K::Msg>,
    /// The state before the step.
    pub before: K,
    /// The state after it; `None` if the step deleted the entity.
    pub after: Option<K>,
}

/// How many changes a listener's queue holds before it drops new ones.
pub(crate) const QUEUE: usize = 4096;

/// A kind's listeners, once the runtime started: the queues, and how to copy what they get.
pub(crate) struct Listeners<K: Process> {
    queues: Vec<mpsc::Sender<Box<Change<K>>>>,
    pub(crate) clone_state: fn(&K) -> K,
    pub(crate) clone_msg: fn(&K::Msg) -> K::Msg,
    dropped: AtomicU64,
}

impl<K: Process> Listeners<K> {
    /// Hands a committed change to every listener (a copy to each but the last); a full
    /// queue drops it (counted).
    pub(crate) fn publish(&self, change: Box<Change<K>>) {
        let Some((last, others)) = self.queues.split_last() else {
            return;
        };
        for queue in others {
            let copy = guard(|| Change {
                id: change.id.clone(),
                step: change.step,
                msg: change.msg.as_ref().map(self.clone_msg),
                before: (self.clone_state)(&change.before),
                after: change.after.as_ref().map(self.clone_state),
            });
            if copy
                .map(|copy| queue.try_send(Box::new(copy)))
                .map_or(true, |sent| sent.is_err())
            {
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
        if last.try_send(change).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Changes dropped because a listener's queue was full, since the start.
    pub(crate) fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Changes waiting in the listeners' queues now.
    pub(crate) fn queued(&self) -> u64 {
        self.queues
            .iter()
            .map(|q| (q.max_capacity() - q.capacity()) as u64)
            .sum()
    }
}

/// A listener, as the builder keeps it.
pub(crate) type Listener<K> = Box<dyn FnMut(&Change<K>) + Send>;

/// The listeners given to a builder for one kind, before the runtime starts.
pub(crate) struct Pending<K: Process> {
    listeners: Vec<Listener<K>>,
    clone_state: fn(&K) -> K,
    clone_msg: fn(&K::Msg) -> K::Msg,
}

impl<K: Process> Pending<K> {
    pub(crate) fn new(clone_state: fn(&K) -> K, clone_msg: fn(&K::Msg) -> K::Msg) -> Self {
        Self {
            listeners: Vec::new(),
            clone_state,
            clone_msg,
        }
    }

    pub(crate) fn push(&mut self, listener: Listener<K>) {
        self.listeners.push(listener);
    }

    /// Starts a task per listener, draining its queue (in the async runtime the caller runs
    /// in); a listener that panics is logged and goes on with the next change.
    pub(crate) fn start(self) -> Listeners<K> {
        let mut queues = Vec::with_capacity(self.listeners.len());
        for mut listener in self.listeners {
            let (tx, mut rx) = mpsc::channel::<Box<Change<K>>>(QUEUE);
            queues.push(tx);
            crate::task::spawn(async move {
                while let Some(change) = rx.recv().await {
                    if let Err(panic) = guard(|| listener(&change)) {
                        tracing::error!(kind = K::KIND, id = %change.id, step = change.step,
                            %panic, "a listener panicked; it goes on with the next change");
                    }
                }
            });
        }
        Listeners {
            queues,
            clone_state: self.clone_state,
            clone_msg: self.clone_msg,
            dropped: AtomicU64::new(0),
        }
    }
}

/// The builder's listeners, by kind name, each a `Pending<K>` for its kind's type.
pub(crate) type ByKind = HashMap<&'static str, Box<dyn Any + Send>>;
