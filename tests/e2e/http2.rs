//! HTTP/2 and connection limits against the real binary, with clients that
//! break them: a connection of more than the allowed streams, a header
//! list over the limit, a flood of streams the server must reset (frames
//! written by hand, as an attacker's client would), connections beyond
//! `MAX_CONNECTIONS`, and a connection past its maximum age.

use std::time::{Duration, Instant};

use shop_testkit::{Backend, Spec, Stack};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _, ReadHalf, WriteHalf},
    net::TcpStream,
};
use tonic::{Code, transport::Channel};
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

use crate::USERS;

/// A health check request naming `service`, with metadata `x-pad` of
/// `pad` bytes.
fn check_padded(pad: usize) -> tonic::Request<HealthCheckRequest> {
    let mut request = tonic::Request::new(HealthCheckRequest {
        service: String::new(),
    });
    request
        .metadata_mut()
        .insert("x-pad", "p".repeat(pad).parse().unwrap());
    request
}

async fn connected(stack: &Stack) -> Channel {
    Channel::from_shared(format!("http://{}", stack.service(USERS).addr))
        .unwrap()
        .connect()
        .await
        .expect("connects")
}

#[tokio::test]
async fn a_connection_carries_at_most_a_hundred_calls_at_once() {
    // Stream caps raised so that only the per-connection limit is met.
    let stack = Stack::start(
        Backend::Sqlite,
        &[Spec::new(USERS).envs(&[
            ("STREAM_MAX_PER_PRINCIPAL", "1000"),
            ("STREAM_MAX_PER_ADDRESS", "1000"),
        ])],
    )
    .await;
    // One tonic channel to one address is one HTTP/2 connection.
    let mut health = HealthClient::new(connected(&stack).await);
    let mut open = Vec::new();
    for _ in 0..100 {
        let mut watch = health
            .watch(HealthCheckRequest {
                service: String::new(),
            })
            .await
            .expect("a watch within the connection's limit")
            .into_inner();
        watch.message().await.unwrap().expect("the current status");
        open.push(watch);
    }
    // The 101st waits for a free stream: the server allows no more.
    let mut waiting = Box::pin(health.watch(HealthCheckRequest {
        service: String::new(),
    }));
    assert!(
        tokio::time::timeout(Duration::from_millis(500), &mut waiting)
            .await
            .is_err(),
        "a 101st concurrent call on one connection was let in"
    );
    drop(open.pop());
    let mut watch = tokio::time::timeout(Duration::from_secs(10), waiting)
        .await
        .expect("the waiting call gets the freed stream")
        .expect("answered")
        .into_inner();
    watch.message().await.unwrap().expect("the current status");
}

#[tokio::test]
async fn a_header_list_over_the_limit_is_refused() {
    let stack = Stack::start(
        Backend::Sqlite,
        &[Spec::new(USERS).env("HTTP2_MAX_HEADER_LIST_SIZE", "8192")],
    )
    .await;
    let mut health = HealthClient::new(connected(&stack).await);
    health
        .check(check_padded(4 * 1024))
        .await
        .expect("4 KiB of metadata is within 8 KiB");
    let refused = health.check(check_padded(12 * 1024)).await.unwrap_err();
    assert_ne!(refused.code(), Code::Ok);
    assert!(
        refused.message().contains("431"),
        "refused as Request Header Fields Too Large: {refused:?}"
    );
    // The connection is fine for the next call.
    health
        .check(check_padded(0))
        .await
        .expect("a normal call after the refused one");

    // The default (16 KiB) is set too.
    let defaults = Stack::start(Backend::Sqlite, &[Spec::new(USERS)]).await;
    let mut health = HealthClient::new(connected(&defaults).await);
    health
        .check(check_padded(8 * 1024))
        .await
        .expect("8 KiB of metadata is within the default");
    let refused = health.check(check_padded(20 * 1024)).await.unwrap_err();
    assert!(refused.message().contains("431"), "{refused:?}");
}

/// HTTP/2 frames written and read by hand: a client that does what tonic
/// never would.
mod raw {
    use super::*;

    pub(super) const HEADERS: u8 = 0x1;
    pub(super) const DATA: u8 = 0x0;
    pub(super) const SETTINGS: u8 = 0x4;
    pub(super) const GOAWAY: u8 = 0x7;
    pub(super) const WINDOW_UPDATE: u8 = 0x8;
    pub(super) const END_STREAM: u8 = 0x1;
    pub(super) const END_HEADERS: u8 = 0x4;
    /// GOAWAY's error code for a peer that misbehaves.
    pub(super) const ENHANCE_YOUR_CALM: u32 = 0xb;

    /// A connection after the client preface and an empty SETTINGS (when
    /// the server let them through).
    pub(super) async fn connect(
        addr: std::net::SocketAddr,
    ) -> (ReadHalf<TcpStream>, WriteHalf<TcpStream>) {
        let mut tcp = TcpStream::connect(addr).await.unwrap();
        // A server that closes at once makes this fail; the reader sees it.
        let mut preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        preface.extend(frame(SETTINGS, 0, 0, &[]));
        let _ = tcp.write_all(&preface).await;
        tokio::io::split(tcp)
    }

    pub(super) fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let len = u32::try_from(payload.len()).unwrap().to_be_bytes();
        let mut out = vec![len[1], len[2], len[3], kind, flags];
        out.extend_from_slice(&stream.to_be_bytes());
        out.extend_from_slice(payload);
        out
    }

    /// An HPACK string literal, without Huffman coding (shorter than 127).
    fn string(out: &mut Vec<u8>, s: &str) {
        out.push(u8::try_from(s.len()).unwrap());
        out.extend_from_slice(s.as_bytes());
    }

    /// The header block of a gRPC call of `path`.
    pub(super) fn request_headers(path: &str) -> Vec<u8> {
        let mut block = vec![0x83, 0x86]; // :method POST, :scheme http
        block.push(0x04); // :path, literal value
        string(&mut block, path);
        block.push(0x01); // :authority, literal value
        string(&mut block, "localhost");
        block.extend_from_slice(&[0x0f, 0x10]); // content-type, literal value
        string(&mut block, "application/grpc");
        block.push(0x00); // a new name: te
        string(&mut block, "te");
        string(&mut block, "trailers");
        block
    }

    /// What the server did to the connection, and when.
    #[derive(Debug)]
    pub(super) enum Event {
        GoAway { code: u32, at: Instant },
        Closed { at: Instant },
    }

    /// Reads frames until the connection closes (or `within` passes),
    /// recording each GOAWAY and the close.
    pub(super) async fn watch(mut read: ReadHalf<TcpStream>, within: Duration) -> Vec<Event> {
        let mut events = Vec::new();
        let until = Instant::now() + within;
        let mut head = [0u8; 9];
        loop {
            let left = until.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, read.read_exact(&mut head)).await {
                Err(_) => return events,
                Ok(Err(_)) => {
                    events.push(Event::Closed { at: Instant::now() });
                    return events;
                }
                Ok(Ok(_)) => {}
            }
            let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
            let mut payload = vec![0u8; len];
            if read.read_exact(&mut payload).await.is_err() {
                events.push(Event::Closed { at: Instant::now() });
                return events;
            }
            if head[3] == GOAWAY && len >= 8 {
                let code = u32::from_be_bytes(payload[4..8].try_into().unwrap());
                events.push(Event::GoAway {
                    code,
                    at: Instant::now(),
                });
            }
        }
    }
}

#[tokio::test]
async fn a_flood_of_streams_the_server_must_reset_closes_the_connection() {
    let stack = Stack::start(Backend::Sqlite, &[Spec::new(USERS)]).await;
    let (read, mut write) = raw::connect(stack.service(USERS).addr).await;
    let events = tokio::spawn(raw::watch(read, Duration::from_secs(20)));
    // "MadeYouReset": each stream is opened, then given a window update
    // that overflows its window, so the server must reset it. Past the
    // default limit of 1,024 such resets the server closes the
    // connection instead of resetting on.
    let headers = raw::request_headers("/grpc.health.v1.Health/Check");
    let overflow = 0x7fff_ffffu32.to_be_bytes();
    for i in 0..1200u32 {
        let stream = 2 * i + 1;
        let mut frames = raw::frame(raw::HEADERS, raw::END_HEADERS, stream, &headers);
        frames.extend(raw::frame(raw::WINDOW_UPDATE, 0, stream, &overflow));
        if write.write_all(&frames).await.is_err() {
            break; // closed under us: what the test waits for
        }
    }
    let events = events.await.unwrap();
    assert!(
        events.iter().any(
            |e| matches!(e, raw::Event::GoAway { code, .. } if *code == raw::ENHANCE_YOUR_CALM)
        ),
        "the server went on resetting streams: {events:?}"
    );
    // Other connections are served.
    HealthClient::new(connected(&stack).await)
        .check(check_padded(0))
        .await
        .expect("a new connection is served");
}

#[tokio::test]
async fn connections_beyond_max_connections_are_closed_and_places_come_back() {
    let stack = Stack::start(
        Backend::Sqlite,
        &[Spec::new(USERS).env("MAX_CONNECTIONS", "3")],
    )
    .await;
    // Connections are taken until one is refused (the harness may hold
    // one of the three itself).
    let mut held = Vec::new();
    loop {
        let channel = connected(&stack).await;
        match HealthClient::new(channel.clone())
            .check(check_padded(0))
            .await
        {
            Ok(_) => held.push(channel),
            Err(_) => break,
        }
        assert!(
            held.len() <= 3,
            "more than MAX_CONNECTIONS connections served"
        );
    }
    assert!(!held.is_empty(), "no connection was served");
    // One more is closed at once, whatever it sends.
    let (read, mut write) = raw::connect(stack.service(USERS).addr).await;
    let _ = write
        .write_all(&raw::frame(
            raw::HEADERS,
            raw::END_HEADERS | raw::END_STREAM,
            1,
            &raw::request_headers("/grpc.health.v1.Health/Check"),
        ))
        .await;
    let events = raw::watch(read, Duration::from_secs(5)).await;
    assert!(
        matches!(events.as_slice(), [raw::Event::Closed { .. }]),
        "a connection over the limit was served: {events:?}"
    );
    // The held connections still work.
    for channel in &held {
        HealthClient::new(channel.clone())
            .check(check_padded(0))
            .await
            .expect("a held connection still works");
    }
    // One closed connection makes room for a new one.
    drop(held.pop());
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let attempt = async {
            HealthClient::new(connected(&stack).await)
                .check(check_padded(0))
                .await
        };
        match attempt.await {
            Ok(_) => break,
            Err(status) => {
                assert!(Instant::now() < deadline, "no place came back: {status:?}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

#[tokio::test]
async fn a_connection_past_its_maximum_age_is_asked_to_go_then_closed() {
    let stack = Stack::start(
        Backend::Sqlite,
        &[Spec::new(USERS).envs(&[
            ("MAX_CONNECTION_AGE", "1s"),
            ("MAX_CONNECTION_AGE_GRACE", "1s"),
        ])],
    )
    .await;
    let opened = Instant::now();
    let (read, mut write) = raw::connect(stack.service(USERS).addr).await;
    // A Watch that stays open: the grace does not wait for it forever.
    write
        .write_all(&raw::frame(
            raw::HEADERS,
            raw::END_HEADERS,
            1,
            &raw::request_headers("/grpc.health.v1.Health/Watch"),
        ))
        .await
        .unwrap();
    write
        .write_all(&raw::frame(raw::DATA, raw::END_STREAM, 1, &[0, 0, 0, 0, 0]))
        .await
        .unwrap();
    let events = raw::watch(read, Duration::from_secs(20)).await;
    let asked = events
        .iter()
        .find_map(|e| match e {
            raw::Event::GoAway { code: 0, at } => Some(*at),
            _ => None,
        })
        .unwrap_or_else(|| panic!("no GOAWAY: {events:?}"));
    let closed = events
        .iter()
        .find_map(|e| match e {
            raw::Event::Closed { at } => Some(*at),
            _ => None,
        })
        .unwrap_or_else(|| panic!("the connection stayed open: {events:?}"));
    assert!(
        asked.duration_since(opened) >= Duration::from_millis(900),
        "asked to go before its age: {:?}",
        asked.duration_since(opened)
    );
    assert!(closed >= asked, "{events:?}");
}
