//! The server on a real listener on 127.0.0.1: header, body and idle timeouts, the connection cap, and
//! graceful shutdown. Small limits (a second) so each test takes seconds; the bounds below only say how
//! long a test waits before calling a connection stuck, they never measure the server.

mod common;

use std::time::Duration;

use common::{Backend, TestApp};
use prefloop::http::{AppState, HttpConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::oneshot;

/// How long a test waits for something that should happen after a one-second limit.
const BOUND: Duration = Duration::from_secs(10);

struct Server {
    addr: std::net::SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
    _app: TestApp,
}

async fn start(config: HttpConfig) -> Server {
    let app = TestApp::new(Backend::Sqlite).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let state = AppState::new(app.store.clone(), config);
    let task = tokio::spawn(prefloop::http::serve_with_shutdown(
        listener,
        state,
        async move {
            let _ = stopped.await;
        },
    ));
    Server {
        addr,
        stop: Some(stop),
        task,
        _app: app,
    }
}

fn small_limits() -> HttpConfig {
    HttpConfig {
        header_timeout: Duration::from_secs(1),
        body_timeout: Duration::from_secs(1),
        idle_timeout: Duration::from_secs(1),
        ..HttpConfig::default()
    }
}

/// Reads until the server closes the connection: what it sent, or `None` if still open after `BOUND`.
async fn read_to_close(stream: &mut TcpStream) -> Option<Vec<u8>> {
    tokio::time::timeout(BOUND, async {
        let mut all = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return all,
                Ok(n) => all.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await
    .ok()
}

/// Sends a keep-alive GET /healthz and reads its answer, leaving the connection open.
async fn healthz(stream: &mut TcpStream) -> String {
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        .await
        .unwrap();
    let mut all = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&all).contains("\"ok\"}") {
        let n = stream.read(&mut buf).await.unwrap();
        assert!(
            n > 0,
            "closed before answering: {}",
            String::from_utf8_lossy(&all)
        );
        all.extend_from_slice(&buf[..n]);
    }
    String::from_utf8(all).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_sent_headers_are_cut_off() {
    let server = start(small_limits()).await;
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        .await
        .unwrap();
    assert!(
        read_to_close(&mut stream).await.is_some(),
        "a header that never ends keeps its connection"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_are_closed() {
    let server = start(small_limits()).await;
    // One that never sends a byte, and one that goes quiet after a request.
    let mut silent = TcpStream::connect(server.addr).await.unwrap();
    let mut kept = TcpStream::connect(server.addr).await.unwrap();
    assert!(healthz(&mut kept).await.starts_with("HTTP/1.1 200"));
    assert!(
        read_to_close(&mut silent).await.is_some(),
        "silent connection kept"
    );
    assert!(
        read_to_close(&mut kept).await.is_some(),
        "idle keep-alive kept"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_bodies_are_cut_off() {
    let server = start(small_limits()).await;
    let stream = TcpStream::connect(server.addr).await.unwrap();
    let (mut read, mut write) = stream.into_split();
    write
        .write_all(
            b"POST /login HTTP/1.1\r\nHost: 127.0.0.1\r\n\
              Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 1000\r\n\r\n",
        )
        .await
        .unwrap();
    // One byte every 200 ms: never idle, but the body would take 200 s.
    let trickle = tokio::spawn(async move {
        for _ in 0..1000 {
            if write.write_all(b"t").await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    let closed = tokio::time::timeout(BOUND, async {
        let mut buf = [0u8; 4096];
        loop {
            match read.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    trickle.abort();
    assert!(
        closed.is_ok(),
        "a 1-byte-per-200-ms body kept its connection"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_the_cap_wait_for_a_free_slot() {
    let server = start(HttpConfig {
        max_connections: 2,
        ..HttpConfig::default()
    })
    .await;
    let mut a = TcpStream::connect(server.addr).await.unwrap();
    let mut b = TcpStream::connect(server.addr).await.unwrap();
    assert!(healthz(&mut a).await.starts_with("HTTP/1.1 200"));
    assert!(healthz(&mut b).await.starts_with("HTTP/1.1 200"));
    // A third waits (in the listen backlog) while both slots are held...
    let mut c = TcpStream::connect(server.addr).await.unwrap();
    c.write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 1024];
    let early = tokio::time::timeout(Duration::from_millis(500), c.read(&mut buf)).await;
    assert!(
        early.is_err(),
        "a third connection was served over the cap of two"
    );
    // ...and is answered once one closes.
    drop(a);
    let n = tokio::time::timeout(BOUND, c.read(&mut buf))
        .await
        .expect("served once a slot is free")
        .unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    drop(b);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_closes_idle_connections_and_returns() {
    let mut server = start(HttpConfig::default()).await;
    let mut kept = TcpStream::connect(server.addr).await.unwrap();
    assert!(healthz(&mut kept).await.starts_with("HTTP/1.1 200"));
    server.stop.take().unwrap().send(()).unwrap();
    let done = tokio::time::timeout(BOUND, &mut server.task).await;
    assert!(done.expect("serve returns after shutdown").unwrap().is_ok());
    assert!(read_to_close(&mut kept).await.is_some());
}
