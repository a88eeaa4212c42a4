//! Kind `inventory`: one product's stock, by SKU (`Snapshot`). Carts ask it to reserve items
//! at checkout (see [`crate::cart`]), and release them when a checkout fails.
//!
//! Messages, as JSON: `{"restock": 10}`, `{"reserve": {"cart": "c1", "qty": 2}}`,
//! `{"release": "c1"}`, `"view"`. All answer the stock.

use std::collections::BTreeMap;

use perennial_core::{Ctx, Process, Rejection};
use serde::{Deserialize, Serialize};

/// One product's stock.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Inventory {
    /// Items on the shelf, not reserved.
    pub available: u32,
    /// Items reserved, by cart.
    pub reserved: BTreeMap<String, u32>,
}

/// A message to an inventory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InventoryMsg {
    /// Puts more items on the shelf.
    Restock(u32),
    /// Reserves items for a cart (more, if it holds some already).
    Reserve {
        /// The cart's id.
        cart: String,
        /// How many (at least 1).
        qty: u32,
    },
    /// Puts a cart's reserved items back on the shelf.
    Release(String),
    /// Reads the stock.
    View,
}

/// Why an inventory refused a message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InventoryError {
    /// Fewer items are available than asked for.
    #[error("only {available} available")]
    OutOfStock {
        /// How many are.
        available: u32,
    },
    /// A reservation of no items.
    #[error("a quantity must be at least 1")]
    NoQuantity,
}

impl Rejection for InventoryError {
    fn code(&self) -> &str {
        match self {
            Self::OutOfStock { .. } => "out_of_stock",
            Self::NoQuantity => "no_quantity",
        }
    }
}

impl Process for Inventory {
    const KIND: &'static str = "inventory";
    type Msg = InventoryMsg;
    type Reply = Inventory;
    type Error = InventoryError;

    fn handle(
        &mut self,
        msg: InventoryMsg,
        _ctx: &mut Ctx<'_, Self>,
    ) -> Result<Inventory, InventoryError> {
        match msg {
            InventoryMsg::Restock(n) => self.available = self.available.saturating_add(n),
            InventoryMsg::Reserve { cart, qty } => {
                if qty == 0 {
                    return Err(InventoryError::NoQuantity);
                }
                self.available =
                    self.available
                        .checked_sub(qty)
                        .ok_or(InventoryError::OutOfStock {
                            available: self.available,
                        })?;
                let held = self.reserved.entry(cart).or_default();
                *held = held.saturating_add(qty);
            }
            InventoryMsg::Release(cart) => {
                if let Some(held) = self.reserved.remove(&cart) {
                    self.available = self.available.saturating_add(held);
                }
            }
            InventoryMsg::View => {}
        }
        Ok(self.clone())
    }
}
