//! A typed listener: every committed step of a kind, in order per entity, with the message
//! and the state before and after (never a step that was rolled back).
//!
//! `cargo run -p perennial --example listener`

use std::sync::mpsc;
use std::time::Duration;

use perennial::{Ctx, MemoryStore, Process, Rejection, Runtime};
use serde::{Deserialize, Serialize};

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
struct Account {
    balance: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
enum AccountMsg {
    Deposit(i64),
    Withdraw(i64),
}

#[derive(Debug, thiserror::Error)]
#[error("not enough money")]
struct Overdrawn;

impl Rejection for Overdrawn {
    fn code(&self) -> &str {
        "overdrawn"
    }
}

impl Process for Account {
    const KIND: &'static str = "account";
    type Msg = AccountMsg;
    type Reply = i64;
    type Error = Overdrawn;

    fn handle(&mut self, msg: AccountMsg, _ctx: &mut Ctx<'_, Self>) -> Result<i64, Overdrawn> {
        match msg {
            AccountMsg::Deposit(n) => self.balance += n,
            AccountMsg::Withdraw(n) if n > self.balance => return Err(Overdrawn),
            AccountMsg::Withdraw(n) => self.balance -= n,
        }
        Ok(self.balance)
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let (changes, seen) = mpsc::channel();
    let rt = Runtime::builder()
        .store(MemoryStore::new())
        .register_snapshot::<Account>()
        // Called on a task of its own once each step is durable; a slow listener never
        // holds up commits (its queue is bounded, and what it drops is counted).
        .listen::<Account>(move |change| {
            let line = format!(
                "{} step {}: {:?}: {} -> {:?}",
                change.id,
                change.step,
                change.msg,
                change.before.balance,
                change.after.as_ref().map(|a| a.balance)
            );
            let _ = changes.send(line);
        })
        .start()
        .await?;
    let account = rt.get::<Account>("acc-1");
    account.call(AccountMsg::Deposit(100)).await?;
    let refused = account.call(AccountMsg::Withdraw(500)).await;
    println!(
        "withdraw 500: {}",
        refused.map_or_else(|e| e.to_string(), |b| b.to_string())
    );
    account.call(AccountMsg::Withdraw(30)).await?;
    // Two steps were committed; the refused one was rolled back and is not heard of.
    for _ in 0..2 {
        println!("{}", seen.recv_timeout(Duration::from_secs(5))?);
    }
    rt.shutdown().await;
    Ok(())
}
