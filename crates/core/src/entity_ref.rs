//! [`EntityRef`]: a cheap, typed address of one entity, and its calls.

use std::fmt;
use std::sync::Arc;

use perennial_types::EntityId;

use crate::dyn_kind::DynKind;
use crate::entity;
use crate::kind::KindRt;
use crate::{CallError, Caller, Process};

/// The kind and entity id of an [`EntityRef`], borrowed.
type Target<'a, K> = (&'a Arc<KindRt<K>>, &'a EntityId);

/// A cheap, cloneable address of one entity of kind `K`. See [`Runtime::get`](crate::Runtime::get).
pub struct EntityRef<K: Process> {
    target: Result<(Arc<KindRt<K>>, EntityId), CallError>,
    /// Who its calls come from (see [`as_caller`](EntityRef::as_caller)).
    caller: Option<Caller>,
}

impl<K: Process> EntityRef<K> {
    /// A handle to `target`, or one whose calls fail with why there is none.
    pub(crate) fn new(target: Result<(Arc<KindRt<K>>, EntityId), CallError>) -> Self {
        Self {
            target,
            caller: None,
        }
    }
}

impl<K: Process> Clone for EntityRef<K> {
    fn clone(&self) -> Self {
        Self {
            target: self.target.clone(),
            caller: self.caller.clone(),
        }
    }
}

impl<K: Process> fmt::Debug for EntityRef<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("EntityRef");
        d.field("kind", &K::KIND);
        match &self.target {
            Ok((_, id)) => d.field("id", id),
            Err(e) => d.field("error", e),
        };
        if let Some(caller) = &self.caller {
            d.field("caller", caller);
        }
        d.finish()
    }
}

impl<K: Process> EntityRef<K> {
    /// Watches the entity: [`Watch::next`](crate::Watch::next) gives each change of its
    /// state (as JSON, with its version) once the step that made it is durable, never
    /// before. Steps that leave the state as it was give none.
    ///
    /// ```
    /// # use perennial_core::{Ctx, Process, Runtime};
    /// # use perennial_storage::MemoryStore;
    /// # #[derive(Default, serde::Serialize, serde::Deserialize)]
    /// # struct Counter { value: i64 }
    /// # impl Process for Counter {
    /// #     const KIND: &'static str = "counter";
    /// #     type Msg = i64;
    /// #     type Reply = i64;
    /// #     type Error = std::convert::Infallible;
    /// #     fn handle(&mut self, n: i64, _: &mut Ctx<'_, Self>) -> Result<i64, Self::Error> {
    /// #         self.value += n;
    /// #         Ok(self.value)
    /// #     }
    /// # }
    /// # #[tokio::main]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let rt = Runtime::builder().store(MemoryStore::new()).register_snapshot::<Counter>().start().await?;
    /// let counter = rt.get::<Counter>("c1");
    /// let mut changes = counter.watch()?;
    /// counter.call(5).await?;
    /// let change = changes.next().await.unwrap();
    /// assert_eq!(&*change.state, r#"{"value":5}"#);
    /// # Ok(())
    /// # }
    /// ```
    pub fn watch(&self) -> Result<crate::Watch, CallError> {
        let (kind, id) = self.target.as_ref().map_err(Clone::clone)?;
        if !DynKind::watchable(&**kind) {
            return Err(CallError::NotWatchable(K::KIND.to_owned()));
        }
        let key = perennial_types::EntityKey::new(K::KIND, id.clone());
        let changes = kind.engine.watchers.subscribe(key);
        Ok(crate::Watch::new(changes, K::WATCH_SHOWS_STATE))
    }

    /// The entity's id, if it is valid.
    pub fn id(&self) -> Option<&EntityId> {
        self.target.as_ref().ok().map(|(_, id)| id)
    }

    /// Sends `msg` and waits for the reply, which leaves the entity only once the step that
    /// produced it is durable.
    pub async fn call(&self, msg: K::Msg) -> Result<K::Reply, CallError<K::Error>> {
        let (kind, id) = self.target()?;
        let via = entity::Via::Call;
        entity::call(kind, id, (msg, self.caller.clone()), via).await
    }

    /// The same address, whose calls come from `caller`: the entity's handler sees it as
    /// [`Ctx::caller`](crate::Ctx::caller). For code that authenticates its users itself
    /// (your own web framework, a queue consumer) and calls entities in process; the HTTP
    /// gateway does the same for callers whose token it verified. Idempotency keys are per
    /// caller.
    ///
    /// ```
    /// # use perennial_core::{Caller, Ctx, Process, Runtime};
    /// # use perennial_storage::MemoryStore;
    /// #[derive(Default, Clone)]
    /// struct Greeter;
    ///
    /// impl Process for Greeter {
    ///     const KIND: &'static str = "greeter";
    ///     type Msg = ();
    ///     type Reply = String;
    ///     type Error = std::convert::Infallible;
    ///
    ///     fn handle(&mut self, _: (), ctx: &mut Ctx<'_, Self>) -> Result<String, Self::Error> {
    ///         Ok(match ctx.caller() {
    ///             Some(caller) => format!("hello, {caller}"),
    ///             None => "hello, stranger".to_owned(),
    ///         })
    ///     }
    /// }
    /// # #[tokio::main]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let rt = Runtime::builder().store(MemoryStore::new()).register_ephemeral::<Greeter>().start().await?;
    /// let greeter = rt.get::<Greeter>("g1");
    /// assert_eq!(greeter.call(()).await?, "hello, stranger");
    /// assert_eq!(greeter.as_caller(Caller::new("alice")).call(()).await?, "hello, alice");
    /// # Ok(())
    /// # }
    /// ```
    pub fn as_caller(&self, caller: Caller) -> Self {
        Self {
            target: self.target.clone(),
            caller: Some(caller),
        }
    }

    /// Who this address's calls come from, if [`as_caller`](Self::as_caller) set anyone.
    pub fn caller(&self) -> Option<&Caller> {
        self.caller.as_ref()
    }

    /// Sends `msg` with an idempotency key: the first call with `key` is applied and its reply
    /// kept; a retry with the same key (after a timeout, a lost connection, a crash of the
    /// node between the commit and the reply) gets that reply again, without applying the
    /// message a second time. Keys are per entity, 1 to 256 bytes, and kept for the
    /// runtime's [`idempotency_window`](crate::Builder::idempotency_window).
    ///
    /// Only applied calls are remembered: a call the handler refused (or that failed) was not
    /// applied, so a retry runs again.
    ///
    /// ```
    /// # use perennial_core::{Ctx, Process, Runtime};
    /// # use perennial_storage::MemoryStore;
    /// # #[derive(Default, serde::Serialize, serde::Deserialize)]
    /// # struct Counter { value: i64 }
    /// # impl Process for Counter {
    /// #     const KIND: &'static str = "counter";
    /// #     type Msg = i64;
    /// #     type Reply = i64;
    /// #     type Error = std::convert::Infallible;
    /// #     fn handle(&mut self, n: i64, _: &mut Ctx<'_, Self>) -> Result<i64, Self::Error> {
    /// #         self.value += n;
    /// #         Ok(self.value)
    /// #     }
    /// # }
    /// # #[tokio::main]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let rt = Runtime::builder().store(MemoryStore::new()).register_snapshot::<Counter>().start().await?;
    /// let c = rt.get::<Counter>("c1");
    /// assert_eq!(c.call_idempotent("payment-17", 5).await?, 5);
    /// assert_eq!(c.call_idempotent("payment-17", 5).await?, 5, "not applied twice");
    /// assert_eq!(c.call(1).await?, 6);
    /// # Ok(())
    /// # }
    /// ```
    pub async fn call_idempotent(
        &self,
        key: impl AsRef<str>,
        msg: K::Msg,
    ) -> Result<K::Reply, CallError<K::Error>> {
        let (kind, id) = self.target()?;
        let via = entity::Via::idempotent_for(key.as_ref(), self.caller.as_ref())
            .map_err(CallError::widen)?;
        entity::call(kind, id, (msg, self.caller.clone()), via).await
    }

    fn target(&self) -> Result<Target<'_, K>, CallError<K::Error>> {
        match &self.target {
            Ok((kind, id)) => Ok((kind, id)),
            Err(e) => Err(e.clone().widen()),
        }
    }
}
