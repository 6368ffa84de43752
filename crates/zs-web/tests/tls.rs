//! `Config::tls`: HTTPS and WSS through rustls; a plain-text client gets nothing.
// Linux only: these tests run on the epoll backend and start real programs.
#![cfg(target_os = "linux")]

mod common;

use common::*;
use futures::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wss_and_https_with_rustls() {
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let cert = ck.cert.der().clone();
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(ck.signing_key.serialize_der().into());
    let server_tls = zs_crypto::tls::server_config(vec![cert.clone()], key).unwrap();
    let rig = rig(zs_web::Config {
        tls: Some(server_tls),
        ..Default::default()
    });
    let connector =
        tokio_rustls::TlsConnector::from(zs_crypto::tls::client_config(&[cert]).unwrap());
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();

    // WSS: a call through the TLS listener.
    let tcp = tokio::net::TcpStream::connect(rig.http()).await.unwrap();
    let tls = connector.connect(name.clone(), tcp).await.unwrap();
    let (mut ws, _) = tokio_tungstenite::client_async("wss://localhost/ws", tls)
        .await
        .unwrap();
    ws.send(Message::Text(
        r#"{"id":1,"call":"echo","text":"secret"}"#.into(),
    ))
    .await
    .unwrap();
    let m = ws.next().await.unwrap().unwrap();
    assert_eq!(
        m.into_text().unwrap().as_str(),
        r#"{"id":1,"text":"secret"}"#
    );

    // HTTPS: /healthz.
    let tcp = tokio::net::TcpStream::connect(rig.http()).await.unwrap();
    let mut tls = connector.connect(name, tcp).await.unwrap();
    tls.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut out = Vec::new();
    let _ = tls.read_to_end(&mut out).await;
    let out = String::from_utf8_lossy(&out);
    assert!(
        out.starts_with("HTTP/1.1 200") && out.ends_with("ok\n"),
        "{out}"
    );

    // Plain HTTP on the TLS port: no HTTP answer.
    let r = tokio::task::spawn_blocking({
        let a = rig.http();
        move || raw_http(a, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    })
    .await
    .unwrap();
    assert!(!r.contains("200 OK"), "{r}");
}
