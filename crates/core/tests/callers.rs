//! Who is calling: `ctx.caller()` is the caller a call came from, recorded with a journaled
//! step so replay sees the same; nothing else has one; idempotency keys are per caller; a
//! refusal says whether the caller is unknown or not allowed.

use perennial_core::{
    AdminError, CallError, Caller, Ctx, Process, Refusal, Rejection, Runtime, Snapshots,
};
use perennial_storage::MemoryStore;
use serde::{Deserialize, Serialize};

/// A guest book: who signed it, in order. Anonymous calls may only read it.
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
struct GuestBook {
    signed: Vec<String>,
    /// What each timer saw as its caller (`None` is right: timers have none).
    timers_saw: Vec<Option<String>>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum BookMsg {
    Sign,
    Read,
    /// Sets a timer whose message reports its caller.
    Later,
    Fired,
}

#[derive(Debug, thiserror::Error)]
#[error("sign in to sign the book")]
struct SignIn;

impl Rejection for SignIn {
    fn code(&self) -> &str {
        "sign_in"
    }

    fn refusal(&self) -> Refusal {
        Refusal::Unauthenticated
    }
}

impl Process for GuestBook {
    const KIND: &'static str = "guest_book";
    type Msg = BookMsg;
    type Reply = Vec<String>;
    type Error = SignIn;

    fn handle(&mut self, msg: BookMsg, ctx: &mut Ctx<'_, Self>) -> Result<Vec<String>, SignIn> {
        let caller = ctx.caller().map(|c| c.subject().to_owned());
        match msg {
            BookMsg::Sign => self.signed.push(caller.ok_or(SignIn)?),
            BookMsg::Read => {}
            BookMsg::Later => {
                ctx.schedule(std::time::Duration::ZERO, BookMsg::Fired);
            }
            BookMsg::Fired => self.timers_saw.push(caller),
        }
        Ok(self.signed.clone())
    }

    fn is_read_only(msg: &BookMsg) -> bool {
        matches!(msg, BookMsg::Read)
    }
}

async fn started(store: &MemoryStore) -> Runtime {
    Runtime::builder()
        .store(store.clone())
        .register_journal_with_snapshots::<GuestBook>(Snapshots::every(1_000))
        .start()
        .await
        .unwrap()
}

#[tokio::test]
async fn handlers_see_the_caller_and_replay_sees_the_same() {
    let store = MemoryStore::new();
    let rt = started(&store).await;
    let book = rt.get::<GuestBook>("b1");
    let refused = book.call(BookMsg::Sign).await;
    let Err(CallError::Rejected(e)) = refused else {
        panic!("an anonymous signature is refused: {refused:?}");
    };
    assert_eq!(e.refusal(), Refusal::Unauthenticated);
    for name in ["alice", "bob \"the builder\""] {
        book.as_caller(Caller::new(name))
            .call(BookMsg::Sign)
            .await
            .unwrap();
    }
    assert_eq!(book.caller(), None, "as_caller makes a new address");
    let history = rt.admin().history("guest_book", "b1", 0, 10).await.unwrap();
    assert_eq!(history[1].recorded["caller"], "bob \"the builder\"");
    rt.shutdown().await;
    // A restart replays the journal: the same callers, in the same order.
    let rt = started(&store).await;
    let signed = rt.get::<GuestBook>("b1").call(BookMsg::Read).await.unwrap();
    assert_eq!(signed, ["alice", "bob \"the builder\""]);
    // By name, as the gateway calls, with the error's refusal carried.
    let by_name = rt.call_json("guest_book", "b1", br#""sign""#).await;
    let Err(CallError::Rejected(e)) = by_name else {
        panic!("{by_name:?}");
    };
    assert_eq!(
        (e.code.as_str(), e.refusal),
        ("sign_in", Refusal::Unauthenticated)
    );
    let carol = Caller::new("carol");
    let reply = rt
        .call_json_as(Some(&carol), "guest_book", "b1", None, br#""sign""#)
        .await
        .unwrap();
    assert_eq!(reply, r#"["alice","bob \"the builder\"","carol"]"#);
    rt.shutdown().await;
}

#[tokio::test]
async fn messages_that_are_not_calls_have_no_caller() {
    let store = MemoryStore::new();
    let rt = started(&store).await;
    let book = rt.get::<GuestBook>("b2").as_caller(Caller::new("alice"));
    book.call(BookMsg::Later).await.unwrap();
    let started = std::time::Instant::now();
    let state = loop {
        assert!(
            started.elapsed() < std::time::Duration::from_secs(10),
            "the timer never fired"
        );
        let state = rt.admin().durable_state("guest_book", "b2").await.unwrap();
        let state: GuestBook = serde_json::from_str(&state).unwrap();
        if !state.timers_saw.is_empty() {
            break state;
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    };
    assert_eq!(
        state.timers_saw,
        [None],
        "a timer set by alice is not alice"
    );
    rt.shutdown().await;
}

#[tokio::test]
async fn idempotency_keys_are_each_callers_own() {
    let store = MemoryStore::new();
    let rt = started(&store).await;
    let book = rt.get::<GuestBook>("b3");
    let alice = book.as_caller(Caller::new("alice"));
    let bob = book.as_caller(Caller::new("bob"));
    assert_eq!(
        alice.call_idempotent("k", BookMsg::Sign).await.unwrap(),
        ["alice"]
    );
    // Bob's "k" is not alice's: his signature is applied, and he does not get her reply.
    assert_eq!(
        bob.call_idempotent("k", BookMsg::Sign).await.unwrap(),
        ["alice", "bob"]
    );
    // Alice's retry gets her first reply, and signs nothing again.
    assert_eq!(
        alice.call_idempotent("k", BookMsg::Sign).await.unwrap(),
        ["alice"]
    );
    let too_long = "k".repeat(257);
    let refused = alice.call_idempotent(&too_long, BookMsg::Sign).await;
    assert!(
        matches!(refused, Err(CallError::InvalidIdempotencyKey(_))),
        "{refused:?}"
    );
    let signed = book.call(BookMsg::Read).await.unwrap();
    assert_eq!(signed, ["alice", "bob"]);
    let missing = rt.admin().durable_state("guest_book", "nobody").await;
    assert!(matches!(missing, Err(AdminError::NoSuchEntity(_))));
    rt.shutdown().await;
}
