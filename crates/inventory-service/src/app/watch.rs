//! Following the availability of a set of skus: the current values first,
//! then each change, whichever replica made it.

use std::{collections::HashMap, sync::Arc};

use chrono::{DateTime, Utc};
use shop_storage::Notice;
use tokio::sync::broadcast::{self, error::RecvError};

use super::AppError;
use crate::{domain::Sku, repo::InventoryRepo};

/// The availability of one sku at one moment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Availability {
    /// The product.
    pub sku: String,
    /// on_hand - reserved.
    pub available: i64,
    /// When it last changed.
    pub updated_at: DateTime<Utc>,
}

/// A set of skus being watched.
pub struct StockWatch {
    store: Arc<dyn InventoryRepo>,
    notices: broadcast::Receiver<Notice>,
    skus: Vec<Sku>,
    last: HashMap<String, i64>,
    initial: Vec<Availability>,
}

impl StockWatch {
    /// Subscribes before reading, so that a change committed in between
    /// is not missed.
    pub(super) async fn start(
        store: Arc<dyn InventoryRepo>,
        skus: Vec<Sku>,
    ) -> Result<StockWatch, AppError> {
        let notices = store.changes();
        let mut watch = StockWatch {
            store,
            notices,
            skus,
            last: HashMap::new(),
            initial: Vec::new(),
        };
        let skus = watch.skus.clone();
        for sku in &skus {
            let current = watch
                .read(sku)
                .await?
                .ok_or(AppError::NotFound("product"))?;
            watch.initial.push(current);
        }
        Ok(watch)
    }

    /// The current availability of every watched sku, in request order.
    pub fn current(&mut self) -> Vec<Availability> {
        std::mem::take(&mut self.initial)
    }

    /// Waits for a notice about a watched sku (or a resync) and returns the
    /// availabilities that changed since last sent; empty when none did.
    pub async fn changes(&mut self) -> Result<Vec<Availability>, AppError> {
        let which: Vec<Sku> = loop {
            match self.notices.recv().await {
                Ok(Notice::Changed(sku)) => {
                    if let Some(found) = self.skus.iter().find(|s| s.as_str() == &*sku) {
                        break vec![found.clone()];
                    }
                }
                Ok(Notice::Resync) | Err(RecvError::Lagged(_)) => break self.skus.clone(),
                Err(RecvError::Closed) => {
                    return Err(AppError::Unavailable("the stock change feed closed".into()));
                }
            }
        };
        let mut changed = Vec::new();
        for sku in &which {
            let before = self.last.get(sku.as_str()).copied();
            if let Some(now) = self.read(sku).await?
                && Some(now.available) != before
            {
                changed.push(now);
            }
        }
        Ok(changed)
    }

    async fn read(&mut self, sku: &Sku) -> Result<Option<Availability>, AppError> {
        let Some(product) = self.store.get_product(sku).await? else {
            return Ok(None);
        };
        self.last.insert(product.sku.clone(), product.available());
        Ok(Some(Availability {
            available: product.available(),
            sku: product.sku,
            updated_at: product.updated_at,
        }))
    }
}
