//! Kind `cart`: a shopping cart whose state has changed shape twice, to show state versions
//! (`Snapshot`). Carts stored by older releases are migrated when they are read, and
//! written back at version 3 by their next step or by `perennial migrate`.
//!
//! - Version 1: `{"items": {"tea": 2.5}}`: quantities of one, prices in dollars by SKU.
//! - Version 2: `{"lines": [{"sku": "tea", "qty": 1, "price": 2.5}]}`: lines in order.
//! - Version 3 (now): `{"lines": [{"sku", "qty", "cents"}], "currency": "USD"}`.
//!
//! Messages, as JSON: `{"add": {"sku": "tea", "qty": 2, "cents": 250}}`,
//! `{"remove": "tea"}`, `"view"`. All answer the cart and its total in cents.

use perennial_core::{Ctx, Migration, MigrationError, Process, Rejection};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// The state of a cart (schema version 3).
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Cart {
    /// What is in it, in the order it was added.
    pub lines: Vec<Line>,
    /// The currency of every price (`USD` for carts from before currencies).
    pub currency: String,
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
}

impl Rejection for CartError {
    fn code(&self) -> &str {
        match self {
            Self::NoQuantity => "no_quantity",
            Self::NotInCart(_) => "not_in_cart",
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
    const MIGRATIONS: &'static [Migration] = &[items_to_lines, dollars_to_cents];
    type Msg = CartMsg;
    type Reply = CartView;
    type Error = CartError;

    fn init(&mut self, _ctx: &mut Ctx<'_, Self>) {
        self.currency = "USD".into();
    }

    fn handle(&mut self, msg: CartMsg, _ctx: &mut Ctx<'_, Self>) -> Result<CartView, CartError> {
        match msg {
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
            CartMsg::View => {}
        }
        Ok(self.view())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_old_shape_migrates_to_the_current_one() {
        let v1 = json!({"items": {"tea": 2.5, "jam": 4}});
        let v3 = dollars_to_cents(items_to_lines(v1).unwrap()).unwrap();
        let cart: Cart = serde_json::from_value(v3).unwrap();
        assert_eq!(cart.currency, "USD");
        let cents: Vec<(String, u64)> = cart.lines.into_iter().map(|l| (l.sku, l.cents)).collect();
        assert_eq!(cents, [("jam".into(), 400), ("tea".into(), 250)]);
        assert!(dollars_to_cents(json!({"lines": [{"sku": "x", "qty": 1, "price": -1}]})).is_err());
        assert!(items_to_lines(json!({"lines": []})).is_err());
    }
}
