//! The socket side of the edge, on real loopback sockets: a PROXY header taken off
//! exactly however it arrives, a ClientHello peeked whole and left for the server, and
//! the reasons given when either is missing. The parsers have their own tests.

use std::sync::Arc;

use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;

use super::*;

/// A connected pair: (the client's end, gatehouse's end).
async fn pair() -> (TcpStream, TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let client = TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
    let (accepted, _) = listener.accept().await.unwrap();
    (client, accepted)
}

/// Writes `parts` one by one, each after gatehouse's end has had time to peek the last.
fn write_in_parts(mut client: TcpStream, parts: Vec<Vec<u8>>, close: bool) -> tokio::task::JoinHandle<TcpStream> {
    tokio::spawn(async move {
        for part in parts {
            client.write_all(&part).await.unwrap();
            client.flush().await.unwrap();
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if close {
            client.shutdown().await.unwrap();
        }
        client
    })
}

/// The first flight of a real TLS client (rustls) connecting to `name`.
fn client_hello(name: &str) -> Vec<u8> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
    let server_name = rustls::pki_types::ServerName::try_from(name.to_owned()).unwrap();
    let mut conn = rustls::ClientConnection::new(Arc::new(config), server_name).unwrap();
    let mut out = Vec::new();
    while conn.wants_write() {
        conn.write_tls(&mut out).unwrap();
    }
    out
}

const SECOND: Duration = Duration::from_secs(5);

#[tokio::test]
async fn a_proxy_header_in_pieces_is_taken_off_exactly() {
    let (client, mut server) = pair().await;
    let header = b"PROXY TCP4 203.0.113.9 192.0.2.1 4444 443\r\n".to_vec();
    let parts = vec![
        header[..10].to_vec(),
        header[10..].iter().chain(b"GET /").copied().collect(),
    ];
    let writer = write_in_parts(client, parts, true);
    let carried = read_proxy_header(&mut server, SECOND).await.expect("a whole header");
    assert_eq!(carried.source, Some("203.0.113.9:4444".parse().unwrap()));
    assert_eq!(carried.dest, Some("192.0.2.1:443".parse().unwrap()));
    let mut rest = Vec::new();
    server.read_to_end(&mut rest).await.unwrap();
    assert_eq!(rest, b"GET /", "what follows the header is left for the server");
    drop(writer.await.unwrap());
}

#[tokio::test]
async fn a_missing_or_cut_header_is_refused_with_its_reason() {
    let (client, mut server) = pair().await;
    let writer = write_in_parts(client, vec![], true);
    let refusal = read_proxy_header(&mut server, SECOND).await.unwrap_err();
    assert!(matches!(refusal, ProxyRefusal::Missing), "{refusal:?}");
    assert_eq!(refusal.reason(), "proxy_header_missing");
    drop(writer.await.unwrap());

    let (client, mut server) = pair().await;
    let writer = write_in_parts(client, vec![b"PROXY TCP4 ".to_vec(), b"203.0".to_vec()], true);
    let refusal = read_proxy_header(&mut server, SECOND).await.unwrap_err();
    assert!(matches!(refusal, ProxyRefusal::Truncated(16)), "{refusal:?}");
    assert_eq!(refusal.reason(), "proxy_header_truncated");
    drop(writer.await.unwrap());

    let (client, mut server) = pair().await;
    let writer = write_in_parts(client, vec![b"PROXY".to_vec()], false);
    let refusal = read_proxy_header(&mut server, Duration::from_millis(200))
        .await
        .unwrap_err();
    assert_eq!(refusal.reason(), "proxy_timeout");
    drop(writer.await.unwrap());

    assert_eq!(ProxyRefusal::Untrusted.reason(), "proxy_untrusted");
    let io = ProxyRefusal::Io(io::Error::other("x"));
    assert_eq!(io.reason(), "proxy_read_error");
    for r in [ProxyRefusal::Untrusted.reason(), io.reason()] {
        assert!(PROXY_REFUSAL_REASONS.contains(&r), "{r} has a metric handle");
    }
}

#[tokio::test]
async fn a_client_hello_in_pieces_is_peeked_whole_and_left_in_the_socket() {
    let (client, mut server) = pair().await;
    let hello = client_hello("api.example.com");
    let parts = hello.chunks(40).map(<[u8]>::to_vec).collect();
    let writer = write_in_parts(client, parts, true);
    assert_eq!(
        peek_server_name(&server, SECOND).await,
        Ok("api.example.com".to_string())
    );
    let mut all = Vec::new();
    server.read_to_end(&mut all).await.unwrap();
    assert_eq!(all, hello, "nothing of the ClientHello was taken");
    drop(writer.await.unwrap());
}

#[tokio::test]
async fn without_a_name_the_peek_says_why() {
    let (client, server) = pair().await;
    let writer = write_in_parts(client, vec![b"GET / HTTP/1.1\r\n\r\n".to_vec()], false);
    let why = peek_server_name(&server, SECOND).await.unwrap_err();
    let NoName::Parsed(reason) = why else {
        panic!("a stream that is not TLS: {why:?}")
    };
    assert!(reason.starts_with("sni_"), "{reason}");
    assert_eq!(why.as_str(), reason);
    drop(writer.await.unwrap());

    let (client, server) = pair().await;
    let hello = client_hello("api.example.com");
    let writer = write_in_parts(client, vec![hello[..30].to_vec()], true);
    assert_eq!(peek_server_name(&server, SECOND).await, Err(NoName::Closed));
    drop(writer.await.unwrap());

    let (client, server) = pair().await;
    let writer = write_in_parts(client, vec![hello[..30].to_vec()], false);
    assert_eq!(
        peek_server_name(&server, Duration::from_millis(200)).await,
        Err(NoName::Timeout)
    );
    drop(writer.await.unwrap());

    let words = [NoName::Timeout, NoName::Closed, NoName::Error].map(NoName::as_str);
    assert_eq!(words, ["sni_timeout", "sni_closed", "sni_error"]);
}

/// A connection the client reset: gatehouse's end reads ECONNRESET.
async fn reset_pair() -> TcpStream {
    let (client, server) = pair().await;
    socket2::SockRef::from(&client)
        .set_linger(Some(Duration::ZERO))
        .unwrap();
    drop(client);
    // The reset has arrived once the socket reads as ready.
    server.readable().await.unwrap();
    server
}

#[tokio::test]
async fn a_reset_connection_is_a_read_error_not_a_wait() {
    let mut server = reset_pair().await;
    let refusal = read_proxy_header(&mut server, SECOND).await.unwrap_err();
    assert_eq!(refusal.reason(), "proxy_read_error", "{refusal:?}");
    let server = reset_pair().await;
    assert_eq!(peek_server_name(&server, SECOND).await, Err(NoName::Error));
}
