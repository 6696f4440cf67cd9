//! The small catalogue devstack starts with (`SEED_CATALOGUE`), so that the
//! README tour can order `sku-1` without setting anything up. Products that
//! exist are left as they are; stock is added once (idempotent request ids).

use shop_core::currency::CurrencyCode;

use super::{AppError, Inventory};
use crate::domain::{ProductDraft, Sku, StockChange};

/// sku, name, unit price (EUR cents).
const CATALOGUE: &[(&str, &str, i64)] = &[
    ("sku-1", "Espresso beans, 250 g", 499),
    ("sku-2", "Ceramic mug", 1250),
    ("sku-3", "Paper filters, 100", 350),
];

impl Inventory {
    /// Adds the development catalogue: each product that does not exist
    /// yet, with `units` on hand.
    pub async fn seed_catalogue(&self, units: i64) -> Result<(), AppError> {
        let eur = CurrencyCode::parse("EUR").map_err(AppError::internal)?;
        for &(sku, name, price) in CATALOGUE {
            let sku = Sku::parse(sku).map_err(AppError::internal)?;
            match self.get_product(&sku).await {
                Ok(_) => continue,
                Err(AppError::NotFound(_)) => {}
                Err(other) => return Err(other),
            }
            self.put_product(&ProductDraft {
                sku: sku.clone(),
                name: name.to_owned(),
                unit_price_cents: price,
                currency: eur,
                active: true,
            })
            .await?;
            self.adjust_stock(&StockChange {
                request_id: format!("seed-{}", sku.as_str()),
                sku,
                delta: units,
                reason: "development catalogue".into(),
            })
            .await?;
        }
        Ok(())
    }
}
