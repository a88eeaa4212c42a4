//! A kind tested with the test kit (`perennial::testing`, feature `testing`): first its
//! handler run step by step without a runtime, checking what each step scheduled and told;
//! then the whole flow on a test runtime whose clock the test moves, across a kill -9.
//!
//! `cargo run -p perennial --example tested --features testing`; in a crate of your own the
//! same checks go in `#[test]` functions.

use std::time::Duration;

use perennial::testing::{Handler, TestRuntime};
use perennial::{Ctx, Process, TimerId};
use serde::{Deserialize, Serialize};

/// A bid of an auction, which closes a minute after it opens and tells the winner.
#[derive(Default, Serialize, Deserialize)]
struct Auction {
    best: Option<(String, u64)>,
    closes: Option<TimerId>,
    closed: bool,
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
enum AuctionMsg {
    Open,
    Bid { bidder: String, cents: u64 },
    Close,
}

/// The bidder's inbox: `Some` is a new message, `None` reads them.
#[derive(Default, Serialize, Deserialize)]
struct Inbox(Vec<String>);

impl Process for Inbox {
    const KIND: &'static str = "inbox";
    type Msg = Option<String>;
    type Reply = Vec<String>;
    type Error = std::convert::Infallible;

    fn handle(
        &mut self,
        msg: Option<String>,
        _: &mut Ctx<'_, Self>,
    ) -> Result<Vec<String>, Self::Error> {
        self.0.extend(msg);
        Ok(self.0.clone())
    }
}

impl Process for Auction {
    const KIND: &'static str = "auction";
    type Msg = AuctionMsg;
    type Reply = Option<u64>;
    type Error = std::convert::Infallible;

    fn handle(
        &mut self,
        msg: AuctionMsg,
        ctx: &mut Ctx<'_, Self>,
    ) -> Result<Option<u64>, Self::Error> {
        match msg {
            AuctionMsg::Open => {
                self.closes = Some(ctx.schedule(Duration::from_secs(60), AuctionMsg::Close));
            }
            AuctionMsg::Bid { bidder, cents } => {
                if !self.closed && self.best.as_ref().is_none_or(|(_, best)| cents > *best) {
                    self.best = Some((bidder, cents));
                }
            }
            AuctionMsg::Close => {
                self.closed = true;
                if let Some((winner, cents)) = &self.best {
                    ctx.tell::<Inbox>(winner, Some(format!("you won at {cents} cents")));
                }
            }
        }
        Ok(self.best.as_ref().map(|(_, cents)| *cents))
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    steps_without_a_runtime();
    the_whole_flow_on_a_moved_clock().await
}

/// `Handler`: one step at a time, no runtime, nothing stored or delivered.
fn steps_without_a_runtime() {
    let (mut auction, mut handler) = (Auction::default(), Handler::<Auction>::new("lot-9"));

    let opened = handler.handle(&mut auction, AuctionMsg::Open);
    let close = &opened.timers()[0];
    assert_eq!(close.at, handler.now() + Duration::from_secs(60));
    assert_eq!(close.msg, AuctionMsg::Close);

    for (bidder, cents) in [("ann", 500), ("bo", 700), ("cy", 600)] {
        let bid = AuctionMsg::Bid {
            bidder: bidder.into(),
            cents,
        };
        handler.handle(&mut auction, bid);
    }
    // A minute later the timer's message comes; the winner is told.
    handler.advance(Duration::from_secs(60));
    let closed = handler.handle(&mut auction, AuctionMsg::Close);
    let told = closed.told::<Inbox>();
    assert_eq!(told.len(), 1);
    assert_eq!(told[0].0.as_str(), "bo");
    assert_eq!(told[0].1.as_deref(), Some("you won at 700 cents"));
    println!("the auction's steps do what they should: bo won, at 700 cents");
}

/// `TestRuntime`: the timer fires when the test moves the clock past it, the message to the
/// winner is delivered, and a kill -9 in between loses nothing acknowledged.
async fn the_whole_flow_on_a_moved_clock() -> Result<(), Box<dyn std::error::Error>> {
    let mut rt = TestRuntime::start(|b| {
        b.register_snapshot::<Auction>()
            .register_snapshot::<Inbox>()
    })
    .await?;
    rt.get::<Auction>("lot-9").call(AuctionMsg::Open).await?;
    for (bidder, cents) in [("ann", 500), ("bo", 700)] {
        let bid = AuctionMsg::Bid {
            bidder: bidder.into(),
            cents,
        };
        rt.get::<Auction>("lot-9").call(bid).await?;
    }
    rt.advance(Duration::from_secs(59)).await;
    assert!(
        rt.get::<Inbox>("bo").call(None).await?.is_empty(),
        "still open"
    );

    rt.restart().await?;
    rt.advance(Duration::from_secs(1)).await;
    let inbox = rt.get::<Inbox>("bo").call(None).await?;
    assert_eq!(inbox, ["you won at 700 cents"]);
    println!("on a test runtime, across a kill -9: the auction closed at its minute, bo was told");
    Ok(())
}
