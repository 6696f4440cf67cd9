//! The requests of each scenario, the accounts they run as, and idle
//! WatchOrder streams.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use anyhow::anyhow;
use shop_proto::{
    auth::v1::{LoginRequest, auth_service_client::AuthServiceClient},
    inventory::v1::{GetProductRequest, inventory_service_client::InventoryServiceClient},
    order::v1::{
        CancelOrderRequest, CreateOrderRequest, GetOrderRequest, ListOrdersRequest, OrderItem,
        OrderStatus, WatchOrderRequest, order_service_client::OrderServiceClient,
    },
    user::v1::{
        CreateUserRequest, GetUserRequest, get_user_request::Identifier,
        user_service_client::UserServiceClient,
    },
};
use tokio_stream::StreamExt as _;
use tonic::{Code, Request, Streaming, metadata::MetadataValue};

use shop_client::connection::Connection;

use crate::{config::Scenario, drive::Outcome, transport};

/// A few HTTP/2 connections to one service; calls are spread over them.
#[derive(Clone)]
pub struct Connections(Arc<Vec<Connection>>);

impl Connections {
    /// `n` lazily made connections to `url`.
    pub fn new(url: &str, n: usize) -> anyhow::Result<Connections> {
        let connections = (0..n.max(1))
            .map(|_| transport::connection(url, Duration::from_secs(5)))
            .collect::<anyhow::Result<_>>()?;
        Ok(Connections(Arc::new(connections)))
    }

    /// The connection for request `seq`.
    pub fn pick(&self, seq: u64) -> Connection {
        self.0[(seq % self.0.len() as u64) as usize].clone()
    }
}

/// An account the load runs as.
pub struct VirtualUser {
    /// Its user id.
    pub id: String,
    bearer: MetadataValue<tonic::metadata::Ascii>,
    /// Its orders still PENDING (cancellable), newest last.
    pending: Mutex<Vec<String>>,
    /// Some of its orders, for GetOrder.
    known: Mutex<Vec<String>>,
}

impl VirtualUser {
    /// The `authorization` header value of its requests.
    pub fn authorization(&self) -> &str {
        self.bearer.to_str().unwrap_or_default()
    }

    /// `message` with this user's token and `timeout`.
    pub fn request<T>(&self, message: T, timeout: Duration) -> Request<T> {
        let mut request = Request::new(message);
        request
            .metadata_mut()
            .insert("authorization", self.bearer.clone());
        request.set_timeout(timeout);
        request
    }
}

/// The password of every load account (they are throwaway accounts on a
/// throwaway stack).
const PASSWORD: &str = "loadgen-password-1";

/// Longest [`patiently`] keeps asking.
const PATIENCE: Duration = Duration::from_secs(60);

/// `call`'s answer, asking again after the server's `RetryInfo` delay
/// (plus jitter) while it answers RESOURCE_EXHAUSTED: user-service refuses
/// sign-ups and logins at once when its password hashing is busy or an
/// address's quota is spent, and nothing was done then, so asking again
/// is safe. Gives up after [`PATIENCE`].
async fn patiently<T, F, Fut>(what: &str, mut call: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
{
    let give_up = tokio::time::Instant::now() + PATIENCE;
    loop {
        match call().await {
            Ok(answer) => return Ok(answer.into_inner()),
            Err(status)
                if status.code() == Code::ResourceExhausted
                    && tokio::time::Instant::now() < give_up =>
            {
                let wait =
                    shop_core::status::retry_after(&status).unwrap_or(Duration::from_millis(100));
                let jitter = wait.mul_f64(fastrand::f64());
                tokio::time::sleep(wait + jitter).await;
            }
            Err(status) => {
                return Err(anyhow!("{what}: {:?} {}", status.code(), status.message()));
            }
        }
    }
}

/// Signs up and logs in `n` accounts (named after this run, so runs do not
/// collide), `parallel` at a time (bcrypt makes this slow).
pub async fn virtual_users(users: &Connections, n: usize) -> anyhow::Result<Vec<Arc<VirtualUser>>> {
    let run = &uuid::Uuid::now_v7().simple().to_string()[..12];
    let mut created = Vec::with_capacity(n);
    let mut pending = Vec::new();
    for i in 0..n {
        let channel = users.pick(i as u64);
        let username = format!("lg{run}u{i}");
        pending.push(tokio::spawn(async move {
            let users = UserServiceClient::new(channel.clone());
            let user = patiently(&format!("sign-up of {username}"), || {
                let mut users = users.clone();
                let request = CreateUserRequest {
                    email: format!("{username}@loadgen.test"),
                    username: username.clone(),
                    password: PASSWORD.into(),
                    first_name: "Load".into(),
                    last_name: "Generator".into(),
                };
                async move { users.create_user(request).await }
            })
            .await?;
            let auth = AuthServiceClient::new(channel);
            let token = patiently(&format!("login of {username}"), || {
                let mut auth = auth.clone();
                let request = LoginRequest {
                    identifier: username.clone(),
                    password: PASSWORD.into(),
                };
                async move { auth.login(request).await }
            })
            .await?
            .access_token;
            anyhow::Ok(Arc::new(VirtualUser {
                id: user.id,
                bearer: format!("Bearer {token}").parse()?,
                pending: Mutex::new(Vec::new()),
                known: Mutex::new(Vec::new()),
            }))
        }));
        if pending.len() == 8 {
            for task in pending.drain(..) {
                created.push(task.await??);
            }
        }
    }
    for task in pending {
        created.push(task.await??);
    }
    Ok(created)
}

/// The shared state every request of a run uses.
pub struct Workload {
    /// Which scenario.
    pub scenario: Scenario,
    /// user-service connections (or the bare server's).
    pub users: Connections,
    /// order-service connections.
    pub orders: Connections,
    /// inventory-service connections.
    pub inventory: Connections,
    /// The accounts (empty for `echo`).
    pub accounts: Vec<Arc<VirtualUser>>,
    /// Deadline of each request.
    pub timeout: Duration,
    created: AtomicU64,
}

/// The user id the echo scenario asks the bare server for.
pub const ECHO_USER_ID: &str = "01a20000-0000-7000-8000-000000000000";

fn code_of<T>(result: Result<T, tonic::Status>) -> (Code, Option<T>) {
    match result {
        Ok(value) => (Code::Ok, Some(value)),
        Err(status) => (status.code(), None),
    }
}

fn an_order(user_id: &str, request_id: String) -> CreateOrderRequest {
    CreateOrderRequest {
        user_id: user_id.to_owned(),
        items: vec![OrderItem {
            // The development catalogue's (SEED_CATALOGUE), at its price.
            product_id: "sku-1".into(),
            quantity: 1 + fastrand::i32(0..3),
            unit_price_cents: 0,
        }],
        currency_code: String::new(),
        request_id,
    }
}

impl Workload {
    /// A workload of `scenario` over the given connections and accounts.
    pub fn new(
        scenario: Scenario,
        users: Connections,
        orders: Connections,
        inventory: Connections,
        accounts: Vec<Arc<VirtualUser>>,
        timeout: Duration,
    ) -> Arc<Workload> {
        Arc::new(Workload {
            scenario,
            users,
            orders,
            inventory,
            accounts,
            timeout,
            created: AtomicU64::new(0),
        })
    }

    fn account(&self, seq: u64) -> &Arc<VirtualUser> {
        &self.accounts[(seq % self.accounts.len() as u64) as usize]
    }

    /// Request number `seq`.
    pub async fn request(self: Arc<Self>, seq: u64) -> Outcome {
        match self.scenario {
            Scenario::Echo => self.echo(seq).await,
            Scenario::GetUser => self.get_user(seq).await,
            Scenario::CreateOrder => self.create_order(seq).await,
            Scenario::GetOrder => self.get_order(seq).await,
            Scenario::ListOrders => self.list_orders(seq).await,
            Scenario::GetProduct => self.get_product(seq).await,
            Scenario::Mixed | Scenario::WatchIdle => match fastrand::u8(0..100) {
                0..30 => self.get_user(seq).await,
                30..55 => self.get_order(seq).await,
                55..75 => self.create_order(seq).await,
                75..90 => self.list_orders(seq).await,
                _ => self.cancel_order(seq).await,
            },
            Scenario::MixedReads => match fastrand::u8(0..70) {
                0..30 => self.get_user(seq).await,
                30..55 => self.get_order(seq).await,
                _ => self.list_orders(seq).await,
            },
        }
    }

    async fn echo(&self, seq: u64) -> Outcome {
        let mut request = Request::new(GetUserRequest {
            identifier: Some(Identifier::UserId(ECHO_USER_ID.into())),
        });
        request.set_timeout(self.timeout);
        let result = UserServiceClient::new(self.users.pick(seq))
            .get_user(request)
            .await;
        ("GetUser", code_of(result).0)
    }

    async fn get_user(&self, seq: u64) -> Outcome {
        let account = self.account(seq);
        let request = account.request(
            GetUserRequest {
                identifier: Some(Identifier::UserId(account.id.clone())),
            },
            self.timeout,
        );
        let result = UserServiceClient::new(self.users.pick(seq))
            .get_user(request)
            .await;
        ("GetUser", code_of(result).0)
    }

    async fn create_order(&self, seq: u64) -> Outcome {
        let account = self.account(seq);
        let n = self.created.fetch_add(1, Ordering::Relaxed);
        let request_id = format!("lg-{}-{n}", &account.id[..8]);
        let request = account.request(an_order(&account.id, request_id), self.timeout);
        let (code, order) = code_of(
            OrderServiceClient::new(self.orders.pick(seq))
                .create_order(request)
                .await,
        );
        if let Some(order) = order {
            let id = order.into_inner().id;
            account.pending.lock().expect("lock").push(id.clone());
            let mut known = account.known.lock().expect("lock");
            if known.len() < 64 {
                known.push(id);
            } else {
                let slot = fastrand::usize(..known.len());
                known[slot] = id;
            }
        }
        ("CreateOrder", code)
    }

    async fn get_order(&self, seq: u64) -> Outcome {
        let account = self.account(seq);
        let known = {
            let known = account.known.lock().expect("lock");
            (!known.is_empty()).then(|| known[fastrand::usize(..known.len())].clone())
        };
        let Some(order_id) = known else {
            return self.create_order(seq).await;
        };
        let request = account.request(GetOrderRequest { order_id }, self.timeout);
        let result = OrderServiceClient::new(self.orders.pick(seq))
            .get_order(request)
            .await;
        ("GetOrder", code_of(result).0)
    }

    async fn get_product(&self, seq: u64) -> Outcome {
        // The development catalogue (SEED_CATALOGUE).
        const SKUS: [&str; 3] = ["sku-1", "sku-2", "sku-3"];
        let request = self.account(seq).request(
            GetProductRequest {
                sku: SKUS[(seq % SKUS.len() as u64) as usize].into(),
            },
            self.timeout,
        );
        let result = InventoryServiceClient::new(self.inventory.pick(seq))
            .get_product(request)
            .await;
        ("GetProduct", code_of(result).0)
    }

    async fn list_orders(&self, seq: u64) -> Outcome {
        let account = self.account(seq);
        let request = account.request(
            ListOrdersRequest {
                user_id: account.id.clone(),
                page_size: 20,
                ..Default::default()
            },
            self.timeout,
        );
        let result = OrderServiceClient::new(self.orders.pick(seq))
            .list_orders(request)
            .await;
        ("ListOrders", code_of(result).0)
    }

    async fn cancel_order(&self, seq: u64) -> Outcome {
        let account = self.account(seq);
        let Some(order_id) = account.pending.lock().expect("lock").pop() else {
            return self.create_order(seq).await;
        };
        let request = account.request(
            CancelOrderRequest {
                order_id,
                reason: "load test".into(),
            },
            self.timeout,
        );
        let result = OrderServiceClient::new(self.orders.pick(seq))
            .cancel_order(request)
            .await;
        ("CancelOrder", code_of(result).0)
    }

    /// Places one order for each account that has none to read, so that
    /// GetOrder reads from the first request on (the reads-only mix would
    /// otherwise place it, a write, inside the measurement).
    pub async fn place_orders_to_read(&self) -> anyhow::Result<()> {
        for seq in 0..self.accounts.len() as u64 {
            if self.account(seq).known.lock().expect("lock").is_empty() {
                let (method, code) = self.create_order(seq).await;
                anyhow::ensure!(code == Code::Ok, "{method} of an order to read: {code:?}");
            }
        }
        Ok(())
    }

    /// Creates one order per account (or `n`, if more), for streams to
    /// watch: (owner, order id).
    pub async fn orders_to_watch(
        &self,
        n: usize,
    ) -> anyhow::Result<Vec<(Arc<VirtualUser>, String)>> {
        let mut orders = Vec::with_capacity(n);
        for i in 0..n {
            let account = Arc::clone(self.account(i as u64));
            let request = account.request(
                an_order(
                    &account.id,
                    format!("lg-watch-{}-{i}", uuid::Uuid::now_v7().simple()),
                ),
                self.timeout,
            );
            let order = OrderServiceClient::new(self.orders.pick(i as u64))
                .create_order(request)
                .await
                .map_err(|s| anyhow!("creating an order to watch: {:?} {}", s.code(), s.message()))?
                .into_inner();
            orders.push((account, order.id));
        }
        Ok(orders)
    }

    /// Opens `n` WatchOrder streams over `orders` (stream i watches order
    /// i mod len), `parallel` opening at a time; each has received its
    /// first message (the current state). Streams that failed to open are
    /// counted, not fatal.
    pub async fn open_watches(
        &self,
        orders: &[(Arc<VirtualUser>, String)],
        n: usize,
    ) -> (
        Vec<(usize, Streaming<shop_proto::order::v1::OrderUpdate>)>,
        Vec<String>,
    ) {
        let mut open = Vec::with_capacity(n);
        let mut failures = Vec::new();
        let mut batch = Vec::new();
        for i in 0..n {
            let which = i % orders.len();
            let (account, order_id) = &orders[which];
            let mut request = Request::new(WatchOrderRequest {
                order_id: order_id.clone(),
            });
            request
                .metadata_mut()
                .insert("authorization", account.bearer.clone());
            let mut client = OrderServiceClient::new(self.orders.pick(i as u64));
            batch.push(tokio::spawn(async move {
                let mut stream = client.watch_order(request).await?.into_inner();
                match stream.next().await {
                    Some(Ok(_current)) => Ok((which, stream)),
                    Some(Err(status)) => Err(status),
                    None => Err(tonic::Status::unknown("stream ended at once")),
                }
            }));
            if batch.len() == 256 || i + 1 == n {
                for task in batch.drain(..) {
                    match task.await {
                        Ok(Ok(stream)) => open.push(stream),
                        Ok(Err(status)) => {
                            failures.push(format!("{:?}: {}", status.code(), status.message()))
                        }
                        Err(e) => failures.push(e.to_string()),
                    }
                }
            }
        }
        (open, failures)
    }

    /// Cancels every order in `orders` (their owners' right).
    pub async fn cancel_all(&self, orders: &[(Arc<VirtualUser>, String)]) -> anyhow::Result<()> {
        for (i, (account, order_id)) in orders.iter().enumerate() {
            let request = account.request(
                CancelOrderRequest {
                    order_id: order_id.clone(),
                    reason: "watch test".into(),
                },
                self.timeout,
            );
            OrderServiceClient::new(self.orders.pick(i as u64))
                .cancel_order(request)
                .await
                .map_err(|s| {
                    anyhow!("cancelling a watched order: {:?} {}", s.code(), s.message())
                })?;
        }
        Ok(())
    }
}

/// Waits (at most `within`) for the next message of every stream; counts
/// those that said CANCELLED.
pub async fn count_cancellations(
    streams: Vec<(usize, Streaming<shop_proto::order::v1::OrderUpdate>)>,
    within: Duration,
) -> usize {
    let waits: Vec<_> = streams
        .into_iter()
        .map(|(_, mut stream)| {
            tokio::spawn(async move {
                matches!(
                    tokio::time::timeout(within, stream.next()).await,
                    Ok(Some(Ok(update))) if update.order.as_ref().is_some_and(|o| o.status == OrderStatus::Cancelled as i32)
                )
            })
        })
        .collect();
    let mut updated = 0;
    for wait in waits {
        if wait.await.unwrap_or(false) {
            updated += 1;
        }
    }
    updated
}
