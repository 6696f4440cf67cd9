//! What each command does: build the request, call, print.

use std::path::PathBuf;

use anyhow::{Context as _, bail};
use shop_core::context::Propagate;
use shop_proto::{
    auth::v1::{
        LoginRequest, LogoutRequest, RefreshTokenRequest, auth_service_client::AuthServiceClient,
    },
    inventory::v1::inventory_service_client::InventoryServiceClient,
    order::v1::{
        CancelOrderRequest, CreateOrderRequest, GetOrderRequest, ListOrdersRequest, OrderItem,
        ProcessOrderRequest, WatchOrderRequest, order_service_client::OrderServiceClient,
    },
    user::v1::{
        CreateUserRequest, DeleteUserRequest, GetUserRequest, ListUsersRequest, UpdateUserRequest,
        get_user_request::Identifier, user_service_client::UserServiceClient,
    },
};
use tokio::io::{AsyncBufReadExt as _, BufReader};
use tonic::{Request, transport::Channel};

/// The channel every shopctl client uses.
pub(crate) type Client = Propagate<Channel>;

use crate::{
    cli::{Cli, Command, OrdersCommand, UsersCommand},
    render::{self, Printer},
    session::{Session, UnverifiedClaims, default_dir},
};

/// The global settings every command uses.
pub(crate) struct Ctx {
    cli: Cli,
    pub(crate) printer: Printer,
}

impl Ctx {
    /// A channel through the shop client layer (which, among other things,
    /// reports an expired deadline as DEADLINE_EXCEEDED, not CANCELLED).
    fn channel(addr: &str) -> anyhow::Result<Client> {
        Ok(Propagate::new(
            tonic::transport::Endpoint::from_shared(addr.to_owned())
                .with_context(|| format!("{addr:?} is not a valid address"))?
                .connect_lazy(),
        ))
    }

    fn users(&self) -> anyhow::Result<UserServiceClient<Client>> {
        Ok(UserServiceClient::new(Ctx::channel(&self.cli.user_addr)?))
    }

    fn auth(&self) -> anyhow::Result<AuthServiceClient<Client>> {
        Ok(AuthServiceClient::new(Ctx::channel(&self.cli.user_addr)?))
    }

    fn orders(&self) -> anyhow::Result<OrderServiceClient<Client>> {
        Ok(OrderServiceClient::new(Ctx::channel(&self.cli.order_addr)?))
    }

    pub(crate) fn inventory(&self) -> anyhow::Result<InventoryServiceClient<Client>> {
        Ok(InventoryServiceClient::new(Ctx::channel(
            &self.cli.inventory_addr,
        )?))
    }

    fn config_dir(&self) -> anyhow::Result<PathBuf> {
        match &self.cli.config_dir {
            Some(dir) => Ok(dir.clone()),
            None => default_dir(),
        }
    }

    /// The access token: `--token`, or the stored session's, refreshed
    /// first when it expires within 30 seconds.
    pub(crate) async fn token(&self) -> anyhow::Result<String> {
        if let Some(token) = &self.cli.token {
            return Ok(token.clone());
        }
        let dir = self.config_dir()?;
        let session = Session::load(&dir)?;
        let expiring = UnverifiedClaims::of(&session.access_token)
            .map(|c| c.expires_within(30))
            .unwrap_or(true);
        if !expiring {
            return Ok(session.access_token);
        }
        let pair = self
            .auth()?
            .refresh_token(self.request(
                RefreshTokenRequest {
                    refresh_token: session.refresh_token,
                },
                None,
            ))
            .await?
            .into_inner();
        Session {
            access_token: pair.access_token.clone(),
            refresh_token: pair.refresh_token,
        }
        .store(&dir)?;
        Ok(pair.access_token)
    }

    /// The caller's own user id, from the token.
    async fn me(&self) -> anyhow::Result<(String, String)> {
        let token = self.token().await?;
        let me = UnverifiedClaims::of(&token)?.sub;
        Ok((me, token))
    }

    pub(crate) fn request<T>(&self, message: T, token: Option<&str>) -> Request<T> {
        let mut request = Request::new(message);
        request.set_timeout(self.cli.timeout);
        if let Some(token) = token
            && let Ok(value) = format!("Bearer {token}").parse()
        {
            request.metadata_mut().insert("authorization", value);
        }
        request
    }

    /// A streaming request: the deadline bounds opening it, not its life.
    pub(crate) fn stream_request<T>(&self, message: T, token: &str) -> Request<T> {
        let mut request = Request::new(message);
        if let Ok(value) = format!("Bearer {token}").parse() {
            request.metadata_mut().insert("authorization", value);
        }
        request
    }
}

/// Runs the command `cli` names.
pub(crate) async fn run(mut cli: Cli) -> anyhow::Result<()> {
    let command = std::mem::replace(&mut cli.command, Command::Logout);
    let ctx = Ctx {
        printer: Printer::new(cli.output),
        cli,
    };
    match command {
        Command::Signup(args) => {
            let password = password(args.password).await?;
            let user = ctx
                .users()?
                .create_user(ctx.request(
                    CreateUserRequest {
                        email: args.email,
                        username: args.username,
                        password,
                        first_name: args.first_name,
                        last_name: args.last_name,
                    },
                    None,
                ))
                .await?
                .into_inner();
            ctx.printer.table(&[render::user(&user)], None);
        }
        Command::Login(args) => {
            let password = password(args.password).await?;
            let pair = ctx
                .auth()?
                .login(ctx.request(
                    LoginRequest {
                        identifier: args.identifier,
                        password,
                    },
                    None,
                ))
                .await?
                .into_inner();
            let dir = ctx.config_dir()?;
            Session {
                access_token: pair.access_token.clone(),
                refresh_token: pair.refresh_token,
            }
            .store(&dir)?;
            let me = UnverifiedClaims::of(&pair.access_token)?;
            ctx.printer.table(
                &[render::message(
                    "logged_in",
                    format!("{} (session in {})", me.sub, Session::path(&dir).display()),
                )],
                None,
            );
        }
        Command::Logout => {
            let dir = ctx.config_dir()?;
            if let Ok(session) = Session::load(&dir) {
                ctx.auth()?
                    .logout(ctx.request(
                        LogoutRequest {
                            refresh_token: session.refresh_token,
                        },
                        None,
                    ))
                    .await?;
            }
            Session::remove(&dir)?;
            ctx.printer
                .table(&[render::message("logged_out", "session removed")], None);
        }
        Command::Users(command) => users(&ctx, command).await?,
        Command::Orders(command) => orders(&ctx, command).await?,
        Command::Products(command) => crate::catalogue::products(&ctx, command).await?,
        Command::Stock(command) => crate::catalogue::stock(&ctx, command).await?,
    }
    Ok(())
}

async fn users(ctx: &Ctx, command: UsersCommand) -> anyhow::Result<()> {
    let (me, token) = ctx.me().await?;
    let mut client = ctx.users()?;
    match command {
        UsersCommand::Get {
            id,
            email,
            username,
        } => {
            let identifier = match (id, email, username) {
                (_, Some(email), _) => Identifier::Email(email),
                (_, _, Some(username)) => Identifier::Username(username),
                (Some(id), _, _) => Identifier::UserId(id),
                (None, None, None) => Identifier::UserId(me),
            };
            let user = client
                .get_user(ctx.request(
                    GetUserRequest {
                        identifier: Some(identifier),
                    },
                    Some(&token),
                ))
                .await?
                .into_inner();
            ctx.printer.table(&[render::user(&user)], None);
        }
        UsersCommand::List {
            page_size,
            page_token,
            status,
            search,
        } => {
            let status = status
                .as_deref()
                .map(render::parse_user_status)
                .transpose()?;
            let page = client
                .list_users(ctx.request(
                    ListUsersRequest {
                        page_size,
                        page_token,
                        status: status.unwrap_or(0),
                        search,
                    },
                    Some(&token),
                ))
                .await?
                .into_inner();
            let records: Vec<_> = page.users.iter().map(render::user).collect();
            ctx.printer
                .table(&records, Some(("next_page_token", page.next_page_token)));
        }
        UsersCommand::Update {
            id,
            username,
            first_name,
            last_name,
            bio,
            status,
        } => {
            let status = status
                .as_deref()
                .map(render::parse_user_status)
                .transpose()?;
            let user = client
                .update_user(ctx.request(
                    UpdateUserRequest {
                        user_id: id,
                        username,
                        first_name,
                        last_name,
                        bio,
                        status,
                        roles: None,
                    },
                    Some(&token),
                ))
                .await?
                .into_inner();
            ctx.printer.table(&[render::user(&user)], None);
        }
        UsersCommand::Delete { id } => {
            client
                .delete_user(ctx.request(
                    DeleteUserRequest {
                        user_id: id.clone(),
                    },
                    Some(&token),
                ))
                .await?;
            ctx.printer.table(&[render::message("deleted", id)], None);
        }
    }
    Ok(())
}

fn parse_item(spec: &str) -> anyhow::Result<OrderItem> {
    let parts: Vec<&str> = spec.split(':').collect();
    let (product, quantity, price) = match parts.as_slice() {
        [product, quantity] => (*product, *quantity, None),
        [product, quantity, price] => (*product, *quantity, Some(*price)),
        _ => bail!("item {spec:?} is not SKU:QUANTITY or SKU:QUANTITY:UNIT_PRICE_CENTS"),
    };
    Ok(OrderItem {
        product_id: product.to_owned(),
        quantity: quantity
            .parse()
            .with_context(|| format!("quantity in {spec:?}"))?,
        // 0: the catalogue's price.
        unit_price_cents: price
            .map(|p| p.parse().with_context(|| format!("price in {spec:?}")))
            .transpose()?
            .unwrap_or(0),
    })
}

async fn orders(ctx: &Ctx, command: OrdersCommand) -> anyhow::Result<()> {
    let (me, token) = ctx.me().await?;
    let mut client = ctx.orders()?;
    match command {
        OrdersCommand::Create {
            items,
            currency,
            user_id,
            request_id,
        } => {
            let items = items
                .iter()
                .map(|s| parse_item(s))
                .collect::<anyhow::Result<Vec<_>>>()?;
            let order = client
                .create_order(
                    ctx.request(
                        CreateOrderRequest {
                            user_id: user_id.unwrap_or(me),
                            items,
                            currency_code: currency,
                            request_id: request_id
                                .unwrap_or_else(|| format!("shopctl-{}", uuid::Uuid::new_v4())),
                        },
                        Some(&token),
                    ),
                )
                .await?
                .into_inner();
            ctx.printer.table(&[render::order(&order)], None);
        }
        OrdersCommand::Get { id } => {
            let order = client
                .get_order(ctx.request(GetOrderRequest { order_id: id }, Some(&token)))
                .await?
                .into_inner();
            ctx.printer.table(&[render::order(&order)], None);
        }
        OrdersCommand::List {
            user_id,
            page_size,
            page_token,
            status,
        } => {
            let status = status
                .as_deref()
                .map(render::parse_order_status)
                .transpose()?;
            let page = client
                .list_orders(ctx.request(
                    ListOrdersRequest {
                        user_id: user_id.unwrap_or(me),
                        page_size,
                        page_token,
                        status: status.unwrap_or(0),
                    },
                    Some(&token),
                ))
                .await?
                .into_inner();
            let records: Vec<_> = page.orders.iter().map(render::order).collect();
            ctx.printer
                .table(&records, Some(("next_page_token", page.next_page_token)));
        }
        OrdersCommand::Cancel { id, reason } => {
            let order = client
                .cancel_order(ctx.request(
                    CancelOrderRequest {
                        order_id: id,
                        reason,
                    },
                    Some(&token),
                ))
                .await?
                .into_inner();
            ctx.printer.table(&[render::order(&order)], None);
        }
        OrdersCommand::Watch { id } => {
            let mut updates = client
                .watch_order(ctx.stream_request(WatchOrderRequest { order_id: id }, &token))
                .await?
                .into_inner();
            while let Some(update) = updates.message().await? {
                ctx.printer.line(&render::order_update(&update));
            }
        }
        OrdersCommand::Process => {
            let (tx, rx) = tokio::sync::mpsc::channel::<ProcessOrderRequest>(16);
            let reader = tokio::spawn(async move {
                let mut lines = BufReader::new(tokio::io::stdin()).lines();
                while let Some(line) = lines.next_line().await? {
                    let line = line.trim();
                    if line.is_empty() || line.starts_with('#') {
                        continue;
                    }
                    let Some((order_id, status)) = line.split_once(char::is_whitespace) else {
                        bail!("line {line:?} is not `ORDER_ID STATUS`");
                    };
                    let request = ProcessOrderRequest {
                        order_id: order_id.to_owned(),
                        new_status: render::parse_order_status(status.trim())?,
                    };
                    if tx.send(request).await.is_err() {
                        break;
                    }
                }
                Ok(())
            });
            let mut responses = client
                .process_orders(
                    ctx.stream_request(tokio_stream::wrappers::ReceiverStream::new(rx), &token),
                )
                .await?
                .into_inner();
            let mut refused = 0;
            while let Some(response) = responses.message().await? {
                if !response.success {
                    refused += 1;
                }
                ctx.printer.line(&render::processed(&response));
            }
            reader.await.context("reading stdin")??;
            if refused > 0 {
                bail!("{refused} of the moves were refused");
            }
        }
    }
    Ok(())
}

/// The password from the flag or environment, else the first line of
/// stdin (so that it stays out of shell history and `ps`).
async fn password(given: Option<String>) -> anyhow::Result<String> {
    if let Some(password) = given {
        return Ok(password);
    }
    let mut line = String::new();
    BufReader::new(tokio::io::stdin())
        .read_line(&mut line)
        .await
        .context("reading the password from stdin")?;
    let password = line.trim_end_matches(['\n', '\r']).to_owned();
    if password.is_empty() {
        bail!("no password: pass --password, set SHOPCTL_PASSWORD or write it on stdin");
    }
    Ok(password)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn items_parse_from_the_command_line() {
        let item = parse_item("sku-1:3:250").unwrap();
        assert_eq!(item.product_id, "sku-1");
        assert_eq!((item.quantity, item.unit_price_cents), (3, 250));
        let item = parse_item("sku-1:2").unwrap();
        assert_eq!(
            (item.quantity, item.unit_price_cents),
            (2, 0),
            "catalogue price"
        );
        assert!(parse_item("sku").is_err());
        assert!(parse_item("sku:x").is_err());
        assert!(parse_item("a:1:2:3").is_err());
    }
}
