//! The command line: every command, flag and environment variable.

use std::{path::PathBuf, time::Duration};

use clap::{Args, Parser, Subcommand, ValueEnum};

/// Exit codes, shown in --help.
pub(crate) const EXIT_CODES: &str = "\
Exit codes:
  0   success
  1   failure outside gRPC (I/O, no session, malformed input)
  2   usage error (bad flags)
  10 + the gRPC status code the server answered:
      11 CANCELLED           13 INVALID_ARGUMENT    14 DEADLINE_EXCEEDED
      15 NOT_FOUND           16 ALREADY_EXISTS      17 PERMISSION_DENIED
      18 RESOURCE_EXHAUSTED  19 FAILED_PRECONDITION 23 INTERNAL
      24 UNAVAILABLE         26 UNAUTHENTICATED
stderr says which status it was and why.";

/// shopctl: the shop stack from the command line.
#[derive(Debug, Parser)]
#[command(name = "shopctl", version, about, after_help = EXIT_CODES)]
pub(crate) struct Cli {
    /// user-service address.
    #[arg(
        long,
        global = true,
        env = "SHOPCTL_USER_ADDR",
        default_value = "http://127.0.0.1:50051"
    )]
    pub(crate) user_addr: String,

    /// order-service address.
    #[arg(
        long,
        global = true,
        env = "SHOPCTL_ORDER_ADDR",
        default_value = "http://127.0.0.1:50052"
    )]
    pub(crate) order_addr: String,

    /// inventory-service address.
    #[arg(
        long,
        global = true,
        env = "SHOPCTL_INVENTORY_ADDR",
        default_value = "http://127.0.0.1:50053"
    )]
    pub(crate) inventory_addr: String,

    /// How results are printed: aligned columns, or one JSON object per
    /// line.
    #[arg(
        long,
        short,
        global = true,
        env = "SHOPCTL_OUTPUT",
        value_enum,
        default_value = "table"
    )]
    pub(crate) output: Output,

    /// Access token to use instead of the one stored by `shopctl login`.
    #[arg(long, global = true, env = "SHOPCTL_TOKEN", hide_env_values = true)]
    pub(crate) token: Option<String>,

    /// Where `login` keeps the session (default: $XDG_CONFIG_HOME/shopctl
    /// or ~/.config/shopctl).
    #[arg(long, global = true, env = "SHOPCTL_CONFIG_DIR")]
    pub(crate) config_dir: Option<PathBuf>,

    /// Deadline of each call (streams: of opening them).
    #[arg(long, global = true, env = "SHOPCTL_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub(crate) timeout: Duration,

    #[command(subcommand)]
    pub(crate) command: Command,
}

/// Output formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum Output {
    /// Aligned columns.
    Table,
    /// One JSON object per line.
    Json,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Create an account.
    Signup(Signup),
    /// Log in and store the session for the next commands.
    Login(Login),
    /// Revoke the stored session and forget it.
    Logout,
    /// Accounts.
    #[command(subcommand)]
    Users(UsersCommand),
    /// Orders.
    #[command(subcommand)]
    Orders(OrdersCommand),
    /// The catalogue: products and their prices.
    #[command(subcommand)]
    Products(ProductsCommand),
    /// Stock: what is on hand, reserved and available.
    #[command(subcommand)]
    Stock(StockCommand),
}

#[derive(Debug, Subcommand)]
pub(crate) enum ProductsCommand {
    /// List products by sku.
    List {
        /// Products per page (at most 100).
        #[arg(long, default_value_t = 50)]
        page_size: i32,
        /// Token of the page to show.
        #[arg(long, default_value = "")]
        page_token: String,
        /// Only products that can be ordered.
        #[arg(long)]
        active_only: bool,
    },
    /// Show one product with its stock.
    Get {
        /// The product's sku.
        sku: String,
    },
    /// Create a product or change its name, price or currency (admins).
    Put {
        /// The product's sku (1 to 64 of A-Z a-z 0-9 . _ -).
        sku: String,
        /// What customers see.
        #[arg(long)]
        name: String,
        /// Price of one unit in minor units (cents).
        #[arg(long)]
        price: i64,
        /// ISO 4217 currency code.
        #[arg(long, default_value = "EUR")]
        currency: String,
        /// Not for sale (cannot be ordered).
        #[arg(long)]
        inactive: bool,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum StockCommand {
    /// Add units on hand (a positive DELTA) or remove them (negative;
    /// never below what is reserved) (admins).
    Adjust {
        /// The product's sku.
        sku: String,
        /// Units to add or remove, e.g. 50 or -3.
        #[arg(allow_hyphen_values = true)]
        delta: i64,
        /// Why, for the record.
        #[arg(long, default_value = "")]
        reason: String,
        /// Idempotency key; repeating it changes nothing. A fresh one is
        /// generated when omitted.
        #[arg(long)]
        request_id: Option<String>,
    },
    /// Print the availability of products, then every change, until
    /// interrupted.
    Watch {
        /// The products' skus.
        #[arg(required = true)]
        skus: Vec<String>,
    },
}

#[derive(Debug, Args)]
pub(crate) struct Signup {
    /// Email address.
    #[arg(long)]
    pub(crate) email: String,
    /// Username (3 to 32 of a-z 0-9 _ . -, starting with a letter).
    #[arg(long)]
    pub(crate) username: String,
    /// Password; read from stdin when not given.
    #[arg(long, env = "SHOPCTL_PASSWORD", hide_env_values = true)]
    pub(crate) password: Option<String>,
    /// Given name.
    #[arg(long)]
    pub(crate) first_name: String,
    /// Family name.
    #[arg(long)]
    pub(crate) last_name: String,
}

#[derive(Debug, Args)]
pub(crate) struct Login {
    /// Email address or username.
    pub(crate) identifier: String,
    /// Password; read from stdin when not given.
    #[arg(long, env = "SHOPCTL_PASSWORD", hide_env_values = true)]
    pub(crate) password: Option<String>,
}

#[derive(Debug, Subcommand)]
pub(crate) enum UsersCommand {
    /// Show one user (yourself by default).
    Get {
        /// User id; yourself when omitted.
        id: Option<String>,
        /// Find by email instead.
        #[arg(long, conflicts_with_all = ["id", "username"])]
        email: Option<String>,
        /// Find by username instead.
        #[arg(long, conflicts_with = "id")]
        username: Option<String>,
    },
    /// List users (admins).
    List {
        /// Users per page (at most 100).
        #[arg(long, default_value_t = 50)]
        page_size: i32,
        /// Token of the page to show.
        #[arg(long, default_value = "")]
        page_token: String,
        /// Only this status: active, inactive, suspended, deleted.
        #[arg(long)]
        status: Option<String>,
        /// Case-insensitive substring of email, username or names.
        #[arg(long, default_value = "")]
        search: String,
    },
    /// Change some fields of a user.
    Update {
        /// User id.
        id: String,
        /// New username.
        #[arg(long)]
        username: Option<String>,
        /// New given name.
        #[arg(long)]
        first_name: Option<String>,
        /// New family name.
        #[arg(long)]
        last_name: Option<String>,
        /// New bio ("" clears it).
        #[arg(long)]
        bio: Option<String>,
        /// New status (admins): active, inactive, suspended.
        #[arg(long)]
        status: Option<String>,
    },
    /// Delete a user (soft).
    Delete {
        /// User id.
        id: String,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum OrdersCommand {
    /// Place an order.
    Create {
        /// Items as SKU:QUANTITY, repeatable; prices come from the
        /// catalogue. SKU:QUANTITY:UNIT_PRICE_CENTS also checks the price
        /// (refused as "price changed" when it is not the catalogue's).
        #[arg(long = "item", required = true)]
        items: Vec<String>,
        /// ISO 4217 currency code the order must be in (the catalogue's
        /// when omitted).
        #[arg(long, default_value = "")]
        currency: String,
        /// Whose order; yourself when omitted (admins may name anyone).
        #[arg(long)]
        user_id: Option<String>,
        /// Idempotency key; repeating it returns the first order. A fresh
        /// one is generated when omitted.
        #[arg(long)]
        request_id: Option<String>,
    },
    /// Show one order.
    Get {
        /// Order id.
        id: String,
    },
    /// List orders, newest first.
    List {
        /// Whose orders; yours when omitted.
        #[arg(long)]
        user_id: Option<String>,
        /// Orders per page (at most 100).
        #[arg(long, default_value_t = 50)]
        page_size: i32,
        /// Token of the page to show.
        #[arg(long, default_value = "")]
        page_token: String,
        /// Only this status: pending, confirmed, shipped, delivered, cancelled.
        #[arg(long)]
        status: Option<String>,
    },
    /// Cancel an order.
    Cancel {
        /// Order id.
        id: String,
        /// Why.
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Follow an order: its state now, then every change, until it is
    /// delivered or cancelled.
    Watch {
        /// Order id.
        id: String,
    },
    /// Move orders through their states (admins). Reads lines of
    /// `ORDER_ID STATUS` from stdin and prints one result per line.
    Process,
}
