//! Kind `cart`: a shopping cart whose state has changed shape three times, to show state
//! versions (`Snapshot`), and whose checkout asks the [`Inventory`] of each line to reserve
//! it, to show asks between entities. Carts stored by older releases are migrated when they
//! are read, and written back at version 4 by their next step or by `perennial migrate`.
//!
//! - Version 1: `{"items": {"tea": 2.5}}`: quantities of one, prices in dollars by SKU.
//! - Version 2: `{"lines": [{"sku": "tea", "qty": 1, "price": 2.5}]}`: lines in order.
//! - Version 3: `{"lines": [{"sku", "qty", "cents"}], "currency": "USD"}`.
//! - Version 4 (now): version 3 with `"checkout": null` or the checkout in progress or done.
//!
//! Messages, as JSON: `{"add": {"sku": "tea", "qty": 2, "cents": 250}}`,
//! `{"remove": "tea"}`, `"checkout"`, `"view"`. All answer the cart and its total in cents.
//!
//! `"checkout"` asks the inventory of each line (by SKU) to reserve the line's quantity, and
//! answers at once with the checkout `reserving`; each inventory's answer comes back as a
//! message of the cart's own (`reserved`), and once every line is answered the checkout is
//! `reserved`, or `failed` with each refusal, in which case the lines that were reserved are
//! released. A cart being checked out or reserved refuses changes (`checked_out`).

use std::collections::BTreeMap;
use std::time::Duration;

use perennial_core::{AskId, Asked, Ctx, Migration, MigrationError, Process, Rejection};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::inventory::{Inventory, InventoryMsg};

/// How long a checkout waits for an inventory's answer.
pub const RESERVE_WITHIN: Duration = Duration::from_secs(10);

/// The state of a cart (schema version 4).
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Cart {
    /// What is in it, in the order it was added.
    pub lines: Vec<Line>,
    /// The currency of every price (`USD` for carts from before currencies).
    pub currency: String,
    /// The latest checkout, if any.
    pub checkout: Option<Checkout>,
}

/// A checkout: the cart asked the inventory of each line to reserve it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Checkout {
    /// Where it is.
    pub status: CheckoutStatus,
    /// The lines whose inventory has not answered yet, with the ask each answer carries.
    pub waiting: BTreeMap<String, AskId>,
    /// The lines reserved.
    pub reserved: Vec<String>,
    /// The lines that could not be, with why.
    pub refused: BTreeMap<String, String>,
}

/// Where a checkout is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CheckoutStatus {
    /// Waiting for inventories' answers.
    Reserving,
    /// Every line is reserved.
    Reserved,
    /// A line could not be reserved; the others were released.
    Failed,
}

/// One line of a cart.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Line {
    /// The product.
    pub sku: String,
    /// How many.
    pub qty: u32,
    /// The price of one, in cents.
    pub cents: u64,
}

/// A message to a cart.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CartMsg {
    /// Adds a line (or more of a product already in the cart).
    Add {
        /// The product.
        sku: String,
        /// How many (at least 1).
        qty: u32,
        /// The price of one, in cents.
        cents: u64,
    },
    /// Removes a product.
    Remove(String),
    /// Asks the inventory of each line to reserve it.
    Checkout,
    /// An inventory's answer to a checkout (sent by the runtime, not by clients).
    Reserved {
        /// The line's product.
        sku: String,
        /// The inventory's answer.
        answer: Asked<Inventory>,
    },
    /// Reads the cart.
    View,
}

/// What a cart answers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CartView {
    /// The cart.
    pub cart: Cart,
    /// The sum of its lines, in cents.
    pub total_cents: u64,
}

/// Why a cart refused a message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CartError {
    /// A line of no items.
    #[error("a quantity must be at least 1")]
    NoQuantity,
    /// The product is not in the cart.
    #[error("{0:?} is not in the cart")]
    NotInCart(String),
    /// A checkout of an empty cart.
    #[error("the cart is empty")]
    Empty,
    /// The cart is being checked out, or was: it can no longer change.
    #[error("the cart is checked out")]
    CheckedOut,
}

impl Rejection for CartError {
    fn code(&self) -> &str {
        match self {
            Self::NoQuantity => "no_quantity",
            Self::NotInCart(_) => "not_in_cart",
            Self::Empty => "empty",
            Self::CheckedOut => "checked_out",
        }
    }
}

/// Version 1 to 2: the map of SKUs to prices becomes a list of lines of one each.
pub fn items_to_lines(mut v1: Value) -> Result<Value, MigrationError> {
    let items = v1["items"].take();
    let items = items
        .as_object()
        .ok_or_else(|| MigrationError::new("a version 1 cart has an `items` object"))?;
    let lines: Vec<Value> = items
        .iter()
        .map(|(sku, price)| json!({"sku": sku, "qty": 1, "price": price}))
        .collect();
    Ok(json!({ "lines": lines }))
}

/// Version 2 to 3: prices in dollars become cents, and carts get a currency.
pub fn dollars_to_cents(mut v2: Value) -> Result<Value, MigrationError> {
    let lines = v2["lines"]
        .as_array_mut()
        .ok_or_else(|| MigrationError::new("a version 2 cart has a `lines` array"))?;
    for line in lines {
        let price = line["price"].take();
        let dollars = price
            .as_f64()
            .filter(|d| d.is_finite() && *d >= 0.0)
            .ok_or_else(|| MigrationError::new(format!("{price} is not a price")))?;
        let object = line
            .as_object_mut()
            .ok_or_else(|| MigrationError::new("a line is an object"))?;
        object.remove("price");
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let cents = (dollars * 100.0).round() as u64;
        object.insert("cents".into(), json!(cents));
    }
    v2["currency"] = json!("USD");
    Ok(v2)
}

/// Version 3 to 4: carts get a checkout, none yet.
pub fn add_checkout(mut v3: Value) -> Result<Value, MigrationError> {
    let cart = v3
        .as_object_mut()
        .ok_or_else(|| MigrationError::new("a version 3 cart is an object"))?;
    cart.insert("checkout".into(), Value::Null);
    Ok(v3)
}

impl Cart {
    fn view(&self) -> CartView {
        let total_cents = self
            .lines
            .iter()
            .map(|l| u64::from(l.qty).saturating_mul(l.cents))
            .fold(0u64, u64::saturating_add);
        CartView {
            cart: self.clone(),
            total_cents,
        }
    }
}

impl Process for Cart {
    const KIND: &'static str = "cart";
    const MIGRATIONS: &'static [Migration] = &[items_to_lines, dollars_to_cents, add_checkout];
    type Msg = CartMsg;
    type Reply = CartView;
    type Error = CartError;

    fn init(&mut self, _ctx: &mut Ctx<'_, Self>) {
        self.currency = "USD".into();
    }

    fn handle(&mut self, msg: CartMsg, ctx: &mut Ctx<'_, Self>) -> Result<CartView, CartError> {
        let locked = self
            .checkout
            .as_ref()
            .is_some_and(|c| c.status != CheckoutStatus::Failed);
        match msg {
            CartMsg::Add { .. } | CartMsg::Remove(_) | CartMsg::Checkout if locked => {
                return Err(CartError::CheckedOut);
            }
            CartMsg::Add { sku, qty, cents } => {
                if qty == 0 {
                    return Err(CartError::NoQuantity);
                }
                match self.lines.iter_mut().find(|l| l.sku == sku) {
                    Some(line) => {
                        line.qty = line.qty.saturating_add(qty);
                        line.cents = cents;
                    }
                    None => self.lines.push(Line { sku, qty, cents }),
                }
            }
            CartMsg::Remove(sku) => {
                let before = self.lines.len();
                self.lines.retain(|l| l.sku != sku);
                if self.lines.len() == before {
                    return Err(CartError::NotInCart(sku));
                }
            }
            CartMsg::Checkout => self.checkout(ctx)?,
            CartMsg::Reserved { sku, answer } => self.reserved(ctx, &sku, answer),
            CartMsg::View => {}
        }
        Ok(self.view())
    }
}

impl Cart {
    /// Asks each line's inventory to reserve it; the answers come as `Reserved`.
    fn checkout(&mut self, ctx: &mut Ctx<'_, Self>) -> Result<(), CartError> {
        if self.lines.is_empty() {
            return Err(CartError::Empty);
        }
        let cart = ctx.id().to_string();
        let mut waiting = BTreeMap::new();
        for line in &self.lines {
            let reserve = InventoryMsg::Reserve {
                cart: cart.clone(),
                qty: line.qty,
            };
            let sku = line.sku.clone();
            let ask = ctx.ask_within::<Inventory>(&line.sku, reserve, RESERVE_WITHIN, |answer| {
                CartMsg::Reserved { sku, answer }
            });
            waiting.insert(line.sku.clone(), ask);
        }
        self.checkout = Some(Checkout {
            status: CheckoutStatus::Reserving,
            waiting,
            reserved: Vec::new(),
            refused: BTreeMap::new(),
        });
        Ok(())
    }

    /// Records an inventory's answer; once every line is answered, the checkout is reserved,
    /// or failed (and what was reserved is released). An answer to no ask of the current
    /// checkout (a client sending `reserved` itself) changes nothing.
    fn reserved(&mut self, ctx: &mut Ctx<'_, Self>, sku: &str, answer: Asked<Inventory>) {
        let Some(checkout) = &mut self.checkout else {
            return;
        };
        if checkout.waiting.get(sku) != Some(&answer.id) {
            return;
        }
        checkout.waiting.remove(sku);
        match answer.result {
            Ok(_) => checkout.reserved.push(sku.to_owned()),
            Err(e) => {
                checkout.refused.insert(sku.to_owned(), e.to_string());
            }
        }
        if !checkout.waiting.is_empty() {
            return;
        }
        if checkout.refused.is_empty() {
            checkout.status = CheckoutStatus::Reserved;
            return;
        }
        checkout.status = CheckoutStatus::Failed;
        let cart = ctx.id().to_string();
        for sku in checkout.reserved.drain(..) {
            ctx.tell::<Inventory>(sku, InventoryMsg::Release(cart.clone()));
        }
    }
}

#[cfg(test)]
mod tests {
    use perennial_core::AskError;
    use perennial_core::testing::Handler;

    use super::*;

    fn add(sku: &str, qty: u32) -> CartMsg {
        CartMsg::Add {
            sku: sku.into(),
            qty,
            cents: 100,
        }
    }

    /// A checkout asks each line's inventory; one refusal fails it and releases the others.
    #[test]
    fn a_refused_line_fails_the_checkout_and_releases_the_reserved_ones() {
        let (mut cart, mut handler) = (Cart::default(), Handler::<Cart>::new("c1"));
        handler.handle(&mut cart, add("tea", 2)).reply.unwrap();
        handler.handle(&mut cart, add("jam", 1)).reply.unwrap();
        let checkout = handler.handle(&mut cart, CartMsg::Checkout);
        let asks = checkout.asked::<Inventory>();
        let asked: Vec<(&str, &InventoryMsg)> =
            asks.iter().map(|(_, id, msg)| (id.as_str(), msg)).collect();
        let reserve = |qty| InventoryMsg::Reserve {
            cart: "c1".into(),
            qty,
        };
        assert_eq!(asked, [("tea", &reserve(2)), ("jam", &reserve(1))]);
        let (tea, jam) = (asks[0].0, asks[1].0);
        // Tea is reserved; jam is refused. Each answer is a step of the cart.
        let stock = Inventory {
            available: 8,
            reserved: [("c1".to_owned(), 2)].into(),
        };
        let reserved = checkout.answer::<Inventory>(tea, Ok(stock));
        let step = handler.handle(&mut cart, reserved);
        assert!(step.told::<Inventory>().is_empty(), "still waiting for jam");
        let refusal = AskError::Refused {
            code: "sold_out".into(),
            message: "only 0 available".into(),
        };
        let refused = checkout.answer::<Inventory>(jam, Err(refusal));
        let step = handler.handle(&mut cart, refused);
        let released: Vec<(String, InventoryMsg)> = step
            .told::<Inventory>()
            .into_iter()
            .map(|(id, msg)| (id.to_string(), msg))
            .collect();
        assert_eq!(
            released,
            [("tea".into(), InventoryMsg::Release("c1".into()))]
        );
    }

    #[test]
    fn every_old_shape_migrates_to_the_current_one() {
        let v1 = json!({"items": {"tea": 2.5, "jam": 4}});
        let v3 = dollars_to_cents(items_to_lines(v1).unwrap()).unwrap();
        let cart: Cart = serde_json::from_value(add_checkout(v3).unwrap()).unwrap();
        assert_eq!(cart.currency, "USD");
        let cents: Vec<(String, u64)> = cart.lines.into_iter().map(|l| (l.sku, l.cents)).collect();
        assert_eq!(cents, [("jam".into(), 400), ("tea".into(), 250)]);
        assert!(dollars_to_cents(json!({"lines": [{"sku": "x", "qty": 1, "price": -1}]})).is_err());
        assert!(items_to_lines(json!({"lines": []})).is_err());
    }
}
