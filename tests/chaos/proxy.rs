//! A TCP proxy in front of PostgreSQL that a test can cut and heal, so that one instance
//! loses its database while the others (and the broker) stay reachable.
//!
//! It runs on a thread and runtime of its own, so a test that blocks its own runtime
//! (a `rabbitmqctl` call) does not stall the connections it forwards.

use std::net::SocketAddr;
use std::thread::JoinHandle;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::helpers::{admin_url, Names};

/// The state of the link between the proxy's clients and PostgreSQL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Link {
    /// Bytes flow both ways.
    Up,
    /// Every open connection is closed; new ones are reset as soon as they are accepted.
    Reset,
    /// Nothing flows, nothing is closed: statements in flight hang, and new connections
    /// are accepted but never answered. On heal the bytes held meanwhile are delivered,
    /// late, as a healed network delivers retransmitted segments.
    BlackHole,
    /// The proxy is going away.
    Shutdown,
}

/// The proxy: listening on `127.0.0.1:<port>`, forwarding to the tests' PostgreSQL.
pub struct Proxy {
    /// The port it listens on.
    pub port: u16,
    state: watch::Sender<Link>,
    thread: Option<JoinHandle<()>>,
}

/// `host:port` of the tests' PostgreSQL, from `SAGA_TEST_DATABASE_URL`.
fn upstream_authority() -> String {
    let url = admin_url();
    let after_at = url
        .rsplit_once('@')
        .map(|(_, r)| r)
        .unwrap_or("127.0.0.1:5432");
    after_at
        .split('/')
        .next()
        .unwrap_or("127.0.0.1:5432")
        .to_string()
}

impl Proxy {
    /// Starts a proxy to the tests' PostgreSQL.
    pub fn start() -> Proxy {
        let upstream: SocketAddr = upstream_authority()
            .parse()
            .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 5432)));
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind the proxy");
        listener
            .set_nonblocking(true)
            .expect("a non-blocking listener");
        let port = listener.local_addr().expect("the proxy's address").port();
        let (state, rx) = watch::channel(Link::Up);
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("the proxy's runtime");
            rt.block_on(serve(listener, upstream, rx));
        });
        Proxy {
            port,
            state,
            thread: Some(thread),
        }
    }

    /// The test database's URL through this proxy.
    pub fn db_url(&self, names: &Names) -> String {
        names.db_url().replacen(
            &upstream_authority(),
            &format!("127.0.0.1:{}", self.port),
            1,
        )
    }

    /// Cuts the link: [`Link::Reset`] or [`Link::BlackHole`].
    pub fn cut(&self, how: Link) {
        self.state.send_replace(how);
    }

    /// Lets bytes flow again.
    pub fn heal(&self) {
        self.state.send_replace(Link::Up);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.state.send_replace(Link::Shutdown);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

async fn serve(
    listener: std::net::TcpListener,
    upstream: SocketAddr,
    mut state: watch::Receiver<Link>,
) {
    let Ok(listener) = TcpListener::from_std(listener) else {
        return;
    };
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((client, _)) = accepted else { continue };
                match *state.borrow() {
                    Link::Shutdown => return,
                    Link::Reset => {
                        // RST rather than FIN: the client sees its connection refused. A
                        // zero linger never blocks the thread (the deprecation's concern).
                        #[allow(deprecated)]
                        let _ = client.set_linger(Some(Duration::ZERO));
                        drop(client);
                    }
                    Link::Up | Link::BlackHole => {
                        tokio::spawn(pipe(client, upstream, state.clone()));
                    }
                }
            }
            changed = state.changed() => {
                if changed.is_err() || *state.borrow() == Link::Shutdown {
                    // Returning drops the runtime, and with it every connection.
                    return;
                }
            }
        }
    }
}

/// Forwards one client connection until either side closes or the link is reset.
async fn pipe(client: TcpStream, upstream: SocketAddr, mut state: watch::Receiver<Link>) {
    // A connection opened during a black hole gets no answer until the heal.
    if !passable(&mut state).await {
        return;
    }
    let Ok(server) = TcpStream::connect(upstream).await else {
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (client_read, client_write) = client.into_split();
    let (server_read, server_write) = server.into_split();
    tokio::select! {
        _ = copy(client_read, server_write, state.clone()) => {}
        _ = copy(server_read, client_write, state.clone()) => {}
    }
}

/// Waits while the link is black-holed; false once it is reset or shut down.
async fn passable(state: &mut watch::Receiver<Link>) -> bool {
    loop {
        match *state.borrow_and_update() {
            Link::Up => return true,
            Link::Reset | Link::Shutdown => return false,
            Link::BlackHole => {}
        }
        if state.changed().await.is_err() {
            return false;
        }
    }
}

/// Resolves once the link is reset or shut down.
async fn severed(state: &mut watch::Receiver<Link>) {
    loop {
        if matches!(*state.borrow_and_update(), Link::Reset | Link::Shutdown) {
            return;
        }
        if state.changed().await.is_err() {
            return;
        }
    }
}

async fn copy(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, mut state: watch::Receiver<Link>) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = tokio::select! {
            read = from.read(&mut buf) => match read {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            },
            _ = severed(&mut state) => return,
        };
        // Held here while black-holed; TCP back-pressure stalls the sender beyond this.
        if !passable(&mut state).await {
            return;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

#[actix_web::test]
async fn the_proxy_forwards_resets_and_black_holes_postgres_connections() {
    use crate::helpers::create_database;
    // Its connection goes to the real PostgreSQL, which the outage tests stop: one at a
    // time with them, or a restart closes it mid-test (seen once in CI: `Closed`).
    let _serial = crate::SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let names = Names::new();
    create_database(&names).await;
    let proxy = Proxy::start();
    let url = proxy.db_url(&names);
    let connect = || async {
        let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await?;
        tokio::spawn(conn);
        Ok::<_, tokio_postgres::Error>(client)
    };
    let within = |d: u64| Duration::from_millis(d);
    let client = connect().await.expect("a connection through the proxy");
    assert_eq!(
        client
            .query_one("SELECT 1::int", &[])
            .await
            .expect("forwarded")
            .get::<_, i32>(0),
        1
    );
    proxy.cut(Link::BlackHole);
    let hung = tokio::time::timeout(within(800), client.query_one("SELECT 2::int", &[])).await;
    assert!(hung.is_err(), "a statement hangs in the black hole");
    let pending = tokio::time::timeout(within(800), connect()).await;
    assert!(
        pending.is_err(),
        "a new connection is never answered in the black hole"
    );
    proxy.heal();
    let late = tokio::time::timeout(within(5_000), client.query_one("SELECT 3::int", &[]))
        .await
        .expect("answered after the heal")
        .expect("the connection survived the black hole");
    assert_eq!(late.get::<_, i32>(0), 3);
    proxy.cut(Link::Reset);
    let closed = tokio::time::timeout(within(5_000), client.query_one("SELECT 4::int", &[]))
        .await
        .expect("fails at once, not hangs");
    assert!(closed.is_err(), "an open connection is closed by a reset");
    let refused = tokio::time::timeout(within(5_000), connect())
        .await
        .expect("refused at once");
    assert!(refused.is_err(), "a new connection is refused");
    proxy.heal();
    let again = connect().await.expect("connects after the heal");
    assert!(again.query_one("SELECT 5::int", &[]).await.is_ok());
    drop(again);
    drop(client);
    drop(proxy);
    crate::helpers::drop_resources(&names).await;
}
