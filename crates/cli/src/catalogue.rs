//! `shopctl products` and `shopctl stock`: the catalogue and the stock at
//! inventory-service.

use shop_proto::inventory::v1::{
    AdjustStockRequest, GetProductRequest, ListProductsRequest, PutProductRequest,
    WatchStockRequest,
};

use crate::{
    cli::{ProductsCommand, StockCommand},
    commands::Ctx,
    render,
};

pub(crate) async fn products(ctx: &Ctx, command: ProductsCommand) -> anyhow::Result<()> {
    let token = ctx.token().await?;
    let mut client = ctx.inventory()?;
    match command {
        ProductsCommand::List {
            page_size,
            page_token,
            active_only,
        } => {
            let page = client
                .list_products(ctx.request(
                    ListProductsRequest {
                        page_size,
                        page_token,
                        active_only,
                    },
                    Some(&token),
                ))
                .await?
                .into_inner();
            let rows: Vec<_> = page.products.iter().map(render::product).collect();
            let next = (!page.next_page_token.is_empty())
                .then_some(("next_page_token", page.next_page_token));
            ctx.printer.table(&rows, next);
        }
        ProductsCommand::Get { sku } => {
            let product = client
                .get_product(ctx.request(GetProductRequest { sku }, Some(&token)))
                .await?
                .into_inner();
            ctx.printer.table(&[render::product(&product)], None);
        }
        ProductsCommand::Put {
            sku,
            name,
            price,
            currency,
            inactive,
        } => {
            let product = client
                .put_product(ctx.request(
                    PutProductRequest {
                        sku,
                        name,
                        unit_price_cents: price,
                        currency_code: currency,
                        active: !inactive,
                    },
                    Some(&token),
                ))
                .await?
                .into_inner();
            ctx.printer.table(&[render::product(&product)], None);
        }
    }
    Ok(())
}

pub(crate) async fn stock(ctx: &Ctx, command: StockCommand) -> anyhow::Result<()> {
    let token = ctx.token().await?;
    let mut client = ctx.inventory()?;
    match command {
        StockCommand::Adjust {
            sku,
            delta,
            reason,
            request_id,
        } => {
            let product = client
                .adjust_stock(
                    ctx.request(
                        AdjustStockRequest {
                            sku,
                            delta,
                            reason,
                            request_id: request_id
                                .unwrap_or_else(|| format!("shopctl-{}", uuid::Uuid::new_v4())),
                        },
                        Some(&token),
                    ),
                )
                .await?
                .into_inner();
            ctx.printer.table(&[render::product(&product)], None);
        }
        StockCommand::Watch { skus } => {
            let mut updates = client
                .watch_stock(ctx.stream_request(WatchStockRequest { skus }, &token))
                .await?
                .into_inner();
            while let Some(update) = updates.message().await? {
                ctx.printer.line(&render::stock_update(&update));
            }
        }
    }
    Ok(())
}
