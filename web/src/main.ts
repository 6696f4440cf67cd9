// The shop's page: sign in, pick products, place an order, follow it live
// and cancel it, all over gRPC-Web (Connect-ES) against the services'
// own gRPC ports. The token lives in memory only: a reload signs out.
//
// Where the services are comes from /config.json (served by devstack next
// to this page): their ports, on the host the page came from.

import { Code, ConnectError, createClient, type Interceptor } from "@connectrpc/connect";
import { createGrpcWebTransport } from "@connectrpc/connect-web";
import { AuthService } from "./gen/shop/auth/v1/auth_pb";
import { InventoryService, type Product } from "./gen/shop/inventory/v1/inventory_pb";
import { type Order, OrderService, OrderStatus } from "./gen/shop/order/v1/order_pb";
import { UserService } from "./gen/shop/user/v1/user_pb";

type Ports = Record<"user-service" | "order-service" | "inventory-service", number>;

/** Every unary call's deadline (sent as grpc-timeout). */
const CALL_TIMEOUT_MS = 5000;

const $ = <T extends HTMLElement>(selector: string) => document.querySelector<T>(selector)!;

let token = "";
let userId = "";
let products: Product[] = [];
let watching: AbortController | undefined;

const withToken: Interceptor = (next) => async (request) => {
  if (token) request.header.set("authorization", `Bearer ${token}`);
  return next(request);
};

function client<T extends Parameters<typeof createClient>[0]>(service: T, port: number) {
  const transport = createGrpcWebTransport({
    baseUrl: `${location.protocol}//${location.hostname}:${port}`,
    interceptors: [withToken],
  });
  return createClient(service, transport);
}

/** What a failed call means to the person using the page. */
function describe(error: unknown): string {
  const e = ConnectError.from(error);
  const unreachable =
    e.code === Code.Unavailable || (e.code === Code.Unknown && e.cause instanceof TypeError);
  if (unreachable) return "The shop cannot be reached right now. Is the stack running?";
  switch (e.code) {
    case Code.Unauthenticated:
      return token ? "Your session has ended: sign in again." : "Wrong email, username or password.";
    case Code.DeadlineExceeded:
      return "The shop took too long to answer. Try again.";
    case Code.ResourceExhausted:
      return "Too many requests: wait a moment and try again.";
    default:
      return e.rawMessage || Code[e.code];
  }
}

function show(text: string, kind: "error" | "info" = "error") {
  const message = $("#message");
  message.textContent = text;
  message.className = kind;
  message.hidden = false;
}

function clearMessage() {
  $("#message").hidden = true;
}

function money(cents: bigint, currency: string): string {
  return new Intl.NumberFormat(undefined, { style: "currency", currency }).format(
    Number(cents) / 100,
  );
}

async function main() {
  let ports: Ports;
  try {
    ports = await (await fetch("/config.json")).json();
  } catch (error) {
    show(`The page's configuration could not be read (${String(error)}).`);
    return;
  }
  const auth = client(AuthService, ports["user-service"]);
  const users = client(UserService, ports["user-service"]);
  const inventory = client(InventoryService, ports["inventory-service"]);
  const orders = client(OrderService, ports["order-service"]);

  $("#sign-in").addEventListener("submit", async (event) => {
    event.preventDefault();
    const form = new FormData(event.target as HTMLFormElement);
    const identifier = String(form.get("identifier"));
    try {
      const tokens = await auth.login(
        { identifier, password: String(form.get("password")) },
        { timeoutMs: CALL_TIMEOUT_MS },
      );
      token = tokens.accessToken;
      const isEmail = identifier.includes("@");
      const me = await users.getUser(
        { identifier: isEmail ? { case: "email", value: identifier } : { case: "username", value: identifier } },
        { timeoutMs: CALL_TIMEOUT_MS },
      );
      userId = me.id;
      $("#who").textContent = `Signed in as ${me.username}`;
      $("#sign-out").hidden = false;
      $("#sign-in").hidden = true;
      clearMessage();
      await loadProducts();
    } catch (error) {
      token = "";
      show(describe(error));
    }
  });

  $("#sign-out").addEventListener("click", () => {
    watching?.abort();
    token = userId = "";
    $("#who").textContent = "";
    $("#sign-out").hidden = true;
    $("#shop").hidden = $("#order").hidden = true;
    $("#sign-in").hidden = false;
  });

  async function loadProducts() {
    const page = await inventory.listProducts(
      { pageSize: 50, activeOnly: true },
      { timeoutMs: CALL_TIMEOUT_MS },
    );
    products = page.products;
    const body = $("#products tbody");
    body.replaceChildren(
      ...products.map((p) => {
        const row = document.createElement("tr");
        const cells = [p.name, money(p.unitPriceCents, p.currencyCode), p.available.toString()];
        for (const text of cells) {
          const cell = document.createElement("td");
          cell.textContent = text;
          row.append(cell);
        }
        const quantity = document.createElement("input");
        quantity.type = "number";
        quantity.min = "0";
        quantity.max = "100";
        quantity.value = "0";
        quantity.name = p.sku;
        quantity.setAttribute("aria-label", `Quantity of ${p.name}`);
        const cell = document.createElement("td");
        cell.append(quantity);
        row.append(cell);
        return row;
      }),
    );
    $("#shop").hidden = false;
  }

  $("#place-order").addEventListener("click", async () => {
    const items = products
      .map((p) => ({
        productId: p.sku,
        quantity: Number($<HTMLInputElement>(`input[name="${CSS.escape(p.sku)}"]`).value) || 0,
      }))
      .filter((item) => item.quantity > 0);
    if (items.length === 0) {
      show("Choose a quantity for at least one product.", "info");
      return;
    }
    const button = $<HTMLButtonElement>("#place-order");
    button.disabled = true;
    try {
      const order = await orders.createOrder(
        { userId, items, requestId: crypto.randomUUID() },
        { timeoutMs: CALL_TIMEOUT_MS },
      );
      clearMessage();
      showOrder(order);
      void watch(order.id);
      // What is available changed with the reservation.
      await loadProducts();
    } catch (error) {
      show(describe(error));
    } finally {
      button.disabled = false;
    }
  });

  $("#cancel-order").addEventListener("click", async () => {
    const orderId = $("#order-id").textContent ?? "";
    try {
      showOrder(await orders.cancelOrder({ orderId, reason: "cancelled on the web page" }, { timeoutMs: CALL_TIMEOUT_MS }));
    } catch (error) {
      show(describe(error));
    }
  });

  function showOrder(order: Order) {
    $("#order").hidden = false;
    $("#order-id").textContent = order.id;
    $("#order-total").textContent = money(order.totalCents, order.currencyCode);
    $("#order-status").textContent = OrderStatus[order.status];
    const open = order.status === OrderStatus.PENDING || order.status === OrderStatus.CONFIRMED;
    $<HTMLButtonElement>("#cancel-order").disabled = !open;
  }

  /** Follows one order (one stream: a browser has few connections per host). */
  async function watch(orderId: string) {
    watching?.abort();
    const stop = new AbortController();
    watching = stop;
    $("#live").textContent = "● live";
    try {
      for await (const update of orders.watchOrder({ orderId }, { signal: stop.signal })) {
        if (update.order) showOrder(update.order);
      }
      $("#live").textContent = "(final)";
    } catch (error) {
      if (stop.signal.aborted) return;
      $("#live").textContent = "";
      show(`Live updates stopped: ${describe(error)}`);
    }
  }
}

void main();
