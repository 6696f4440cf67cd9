#!/usr/bin/env python3
"""Measures our messages on the wire in protobuf and in JSON, raw and
gzipped, from a running stack: each message is fetched twice from the same
service, once as REST/JSON (its body) and once over gRPC-Web on HTTP/1.1
(the length of its protobuf frame), so the two are the same message.

    payload-sizes.py USERS_URL ORDERS_URL INVENTORY_URL OUT.json

Signs up one account and places orders to have something to list. Python's
standard library only: the gRPC-Web requests are framed by hand (their
messages are one or two fields).
"""

import gzip
import json
import sys
import urllib.request
import uuid


def rest(url, method, path, body=None, token=None):
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url + path, data=data, method=method)
    request.add_header("content-type", "application/json")
    if token:
        request.add_header("authorization", f"Bearer {token}")
    with urllib.request.urlopen(request, timeout=10) as response:
        return response.read()


def field(number, value):
    """A protobuf length-delimited field (tag, length, bytes)."""
    raw = value.encode() if isinstance(value, str) else value
    out = bytes([number << 3 | 2])
    n = len(raw)
    while n >= 0x80:
        out += bytes([n & 0x7F | 0x80])
        n >>= 7
    return out + bytes([n]) + raw


def varint_field(number, value):
    out = bytes([number << 3])
    while value >= 0x80:
        out += bytes([value & 0x7F | 0x80])
        value >>= 7
    return out + bytes([value])


def grpc_web(url, path, message, token=None):
    """The protobuf bytes of the answer to `message` at `path`."""
    body = b"\x00" + len(message).to_bytes(4, "big") + message
    request = urllib.request.Request(url + path, data=body, method="POST")
    request.add_header("content-type", "application/grpc-web+proto")
    request.add_header("x-grpc-web", "1")
    if token:
        request.add_header("authorization", f"Bearer {token}")
    with urllib.request.urlopen(request, timeout=10) as response:
        data = response.read()
    # Frames: flag, length, bytes; the trailers frame has flag 0x80.
    i = 0
    while i + 5 <= len(data):
        flag, length = data[i], int.from_bytes(data[i + 1:i + 5], "big")
        frame = data[i + 5:i + 5 + length]
        i += 5 + length
        if flag == 0:
            return frame
        trailers = frame.decode(errors="replace")
        raise SystemExit(f"payload-sizes.py: {path} answered no message: {trailers}")
    raise SystemExit(f"payload-sizes.py: {path}: no frame in the answer")


def sizes(proto, json_body):
    return {
        "protobuf": len(proto),
        "protobuf_gzip": len(gzip.compress(proto, 6)),
        "json": len(json_body),
        "json_gzip": len(gzip.compress(json_body, 6)),
    }


def main():
    users, orders, inventory, out = sys.argv[1:5]
    name = "sizes" + uuid.uuid4().hex[:8]
    password = "correct horse battery"
    sign_up = {"email": f"{name}@example.com", "username": name, "password": password,
               "firstName": "Payload", "lastName": "Sizes"}
    user = json.loads(rest(users, "POST", "/v1/users", sign_up))
    tokens_json = rest(users, "POST", "/v1/auth/login", {"identifier": name, "password": password})
    token = json.loads(tokens_json)["accessToken"]
    login = field(1, name) + field(2, password)
    tokens_proto = grpc_web(users, "/shop.auth.v1.AuthService/Login", login)

    results = {}
    results["TokenPair (Login)"] = sizes(tokens_proto, tokens_json)
    results["User (GetUser)"] = sizes(
        grpc_web(users, "/shop.user.v1.UserService/GetUser", field(1, user["id"]), token),
        rest(users, "GET", f"/v1/users/{user['id']}", token=token))

    products_json = rest(inventory, "GET", "/v1/products?pageSize=50", token=token)
    results["ListProductsResponse (catalogue page)"] = sizes(
        grpc_web(inventory, "/shop.inventory.v1.InventoryService/ListProducts",
                 varint_field(1, 50), token),
        products_json)
    skus = [p["sku"] for p in json.loads(products_json)["products"]][:3]

    order_ids = []
    for i in range(20):
        order = {"userId": user["id"], "requestId": f"{name}-{i}",
                 "items": [{"productId": sku, "quantity": 1 + n} for n, sku in enumerate(skus)]}
        order_ids.append(json.loads(rest(orders, "POST", "/v1/orders", order, token))["id"])
    results[f"Order ({len(skus)} items, GetOrder)"] = sizes(
        grpc_web(orders, "/shop.order.v1.OrderService/GetOrder", field(1, order_ids[0]), token),
        rest(orders, "GET", f"/v1/orders/{order_ids[0]}", token=token))
    results["ListOrdersResponse (20 orders)"] = sizes(
        grpc_web(orders, "/shop.order.v1.OrderService/ListOrders", varint_field(2, 20), token),
        rest(orders, "GET", "/v1/orders?pageSize=20", token=token))

    with open(out, "w") as f:
        json.dump(results, f, indent=2)
        f.write("\n")
    for message, s in results.items():
        print(f"{message}: protobuf {s['protobuf']} B ({s['protobuf_gzip']} gzip), "
              f"JSON {s['json']} B ({s['json_gzip']} gzip)", file=sys.stderr)


if __name__ == "__main__":
    main()
