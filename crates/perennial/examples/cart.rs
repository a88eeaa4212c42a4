//! A shopping cart with an expiry timer and an idle timeout that depend on its state.
//!
//! `cargo run -p perennial --example cart`: the cart empties itself 300 ms after its last
//! change, by a durable timer (stored with the step, so it fires after a restart too), and
//! leaves memory soon once empty.

use std::time::Duration;

use perennial::{Ctx, MemoryStore, Process, Runtime, TimerId};
use serde::{Deserialize, Serialize};

/// How long a cart keeps its items after its last change (an hour in a real shop).
const EXPIRES_AFTER: Duration = Duration::from_millis(300);

#[derive(Default, Serialize, Deserialize)]
struct Cart {
    items: Vec<String>,
    /// The pending expiry, to move it when the cart changes.
    expiry: Option<TimerId>,
}

#[derive(Debug, Serialize, Deserialize)]
enum CartMsg {
    Add(String),
    View,
    /// Sent by the cart's own timer.
    Expire,
}

impl Process for Cart {
    const KIND: &'static str = "cart";
    type Msg = CartMsg;
    type Reply = Vec<String>;
    type Error = std::convert::Infallible;

    fn handle(
        &mut self,
        msg: CartMsg,
        ctx: &mut Ctx<'_, Self>,
    ) -> Result<Vec<String>, Self::Error> {
        match msg {
            CartMsg::Add(item) => {
                self.items.push(item);
                // Move the expiry: cancel the old timer, set a new one.
                if let Some(old) = self.expiry.take() {
                    ctx.cancel(old);
                }
                self.expiry = Some(ctx.schedule(EXPIRES_AFTER, CartMsg::Expire));
            }
            CartMsg::View => {}
            CartMsg::Expire => {
                self.items.clear();
                self.expiry = None;
            }
        }
        Ok(self.items.clone())
    }

    /// A cart with items stays in memory for a while; an empty one leaves soon.
    fn idle_timeout(&self) -> Duration {
        if self.items.is_empty() {
            Duration::from_millis(100)
        } else {
            Duration::from_secs(60)
        }
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let rt = Runtime::builder()
        .store(MemoryStore::new())
        .register_snapshot::<Cart>()
        .start()
        .await?;
    let cart = rt.get::<Cart>("user-7");
    cart.call(CartMsg::Add("tea".into())).await?;
    tokio::time::sleep(EXPIRES_AFTER / 2).await;
    let items = cart.call(CartMsg::Add("jam".into())).await?;
    println!("in the cart: {items:?}");
    // The first expiry was moved by the second add; wait past the second one.
    tokio::time::sleep(EXPIRES_AFTER * 2).await;
    let items = cart.call(CartMsg::View).await?;
    println!("after {EXPIRES_AFTER:?} without a change: {items:?}");
    assert!(items.is_empty(), "the expiry timer emptied the cart");
    rt.shutdown().await;
    Ok(())
}
