//! Explicit limits: a connection over `connections_max` is refused with
//! `ServerOverloaded` and the connections inside the limit keep working; an idle
//! connection is closed after `idle_timeout_secs`.

use std::io::Read;
use std::net::TcpStream;
use std::time::Duration;

use tidelog_e2e::Server;

#[test]
fn connections_over_the_limit_are_refused_with_an_error() {
    let server = Server::start_with(&["--connections-max", "2"]);
    let a = server.client();
    let b = server.client();
    let mut third = TcpStream::connect(server.addr).expect("tcp connect succeeds");
    third
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut bytes = Vec::new();
    third.read_to_end(&mut bytes).expect("the server closes it");
    assert!(bytes.len() >= 18, "an error frame before the close");
    assert_eq!(bytes[7], 0x03, "RESPONSE|ERROR");
    assert_eq!(
        u16::from_le_bytes([bytes[16], bytes[17]]),
        50,
        "ServerOverloaded"
    );
    a.ping().expect("first connection still served");
    b.ping().expect("second connection still served");
    drop(a);
    // A slot frees up once a client leaves.
    let mut retry = None;
    for _ in 0..250 {
        if let Ok(c) = tidelog_client::Client::connect(server.addr, Default::default()) {
            retry = Some(c);
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    retry
        .expect("a connection is accepted again")
        .ping()
        .expect("ping");
    server.stop();
}

#[test]
fn idle_connections_are_closed() {
    let server = Server::start_with(&["--idle-timeout-secs", "1"]);
    let mut idle = TcpStream::connect(server.addr).expect("connect");
    idle.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut bytes = Vec::new();
    let n = idle
        .read_to_end(&mut bytes)
        .expect("closed by the server, not timed out here");
    assert_eq!(n, 0);
    server.stop();
}
