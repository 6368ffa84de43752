//! A web connection logged in through the accounts service (zs-services) is
//! the same user as on the binary protocol: `user.login` over the WebSocket,
//! handlers read the user id with `Accounts::user_of`, the login is throttled
//! under the browser's address, and a second login on the binary protocol
//! kicks the web session (signal, then close), as it would a binary one.
// Linux only: these tests run on the epoll backend.
#![cfg(target_os = "linux")]

mod common;

use std::sync::Arc;

use common::{recv, recv_until_close, send, ws};
use zs_core::{Client, Options, Registry, Server};
use zs_crypto::{ClientConfig, ServerConfig, ServerIdentity, ZsSecurity};
use zs_services::{Services, ServicesClient, ServicesConfig};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_web_login_is_the_same_user_as_on_the_binary_protocol() {
    let (identity, _) = ServerIdentity::generate(&ring::rand::SystemRandom::new()).unwrap();
    let fp = identity.fingerprint();
    let provider = Arc::new(ZsSecurity::new(
        Some(Arc::new(ClientConfig::pinned(fp))),
        Some(Arc::new(ServerConfig::with_identity(Arc::new(identity)))),
    ));
    let backend = zs_secure::compose::secure(
        Arc::new(
            zs_io_epoll::EpollBackend::new(zs_io::Config {
                loops: 1,
                ..Default::default()
            })
            .unwrap(),
        ),
        provider,
    );
    let env = zs_db::Env::with_vfs(Arc::new(zs_db::MemVfs::new()));
    let services = Services::open(&env, ServicesConfig::cheap_for_tests()).unwrap();
    let mut commands = Registry::new();
    services.register(&mut commands);
    // An application command that reads who is calling.
    let accounts = services.accounts.clone();
    commands.console("me", move |peer, _| {
        Ok(accounts
            .user_of(peer)
            .map_or("nobody".to_string(), |u| u.to_string()))
    });
    let server = Arc::new(
        Server::start(
            backend.clone(),
            commands,
            Options::default(),
            "127.0.0.1:0".parse().unwrap(),
        )
        .unwrap(),
    );
    let gateway = zs_web::Gateway::start(
        zs_web::Config {
            addr: "127.0.0.1:0".parse().unwrap(),
            ..Default::default()
        },
        zs_web::Upstream::in_process(&server),
    )
    .unwrap();

    // ann registers on the binary protocol.
    let (b, a) = (backend.clone(), server.local_addr());
    let binary = tokio::task::spawn_blocking(move || {
        let c =
            ServicesClient::new(Client::connect(b, Registry::new(), Options::client(), a).unwrap());
        let uid = c.register("ann", "correct horse").unwrap();
        (c, uid)
    });
    let (binary, uid) = binary.await.unwrap();

    // She logs in from a browser.
    let mut ws = ws(&format!("ws://{}/ws", gateway.local_addr())).await;
    let mine = match ws.get_ref() {
        tokio_tungstenite::MaybeTlsStream::Plain(t) => t.local_addr().unwrap(),
        _ => unreachable!(),
    };
    send(&mut ws, r#"{"id":1,"call":"me"}"#).await;
    assert_eq!(recv(&mut ws).await["text"], "nobody");
    send(
        &mut ws,
        r#"{"id":2,"stream":"user.login","data":[{"t":"str","v":"ann"},{"t":"str","v":"wrong pass"}]}"#,
    )
    .await;
    let e = recv(&mut ws).await;
    assert!(e["error"]["code"].as_u64().is_some(), "{e}");
    send(
        &mut ws,
        r#"{"id":3,"stream":"user.login","data":[{"t":"str","v":"ANN"},{"t":"str","v":"correct horse"}]}"#,
    )
    .await;
    let r = recv(&mut ws).await;
    assert_eq!(r["id"], 3, "{r}");
    assert_eq!(r["data"][0], serde_json::json!({"t":"u64","v":uid}), "{r}");
    // Handlers, the service's own commands and its online table all see
    // the same user, on the browser's connection and address.
    send(&mut ws, r#"{"id":4,"call":"me"}"#).await;
    assert_eq!(recv(&mut ws).await["text"], uid.to_string());
    send(&mut ws, r#"{"id":5,"stream":"user.whoami"}"#).await;
    let r = recv(&mut ws).await;
    assert_eq!(
        r["data"][1],
        serde_json::json!({"t":"str","v":"ann"}),
        "{r}"
    );
    let online = services.accounts.online_peer(uid).expect("online");
    assert_eq!(online.addr(), Some(mine));

    // Logging in on the binary protocol kicks the web session, which hears
    // why before it closes.
    let info = tokio::task::spawn_blocking(move || {
        let i = binary.login("ann", "correct horse").unwrap();
        (i, binary)
    })
    .await
    .unwrap();
    let got = recv_until_close(&mut ws).await;
    assert!(
        got.contains(&serde_json::json!({"signal":"user.kicked","code":uid})),
        "{got:?}"
    );
    assert_eq!(got.last().unwrap()["close"], 1000, "{got:?}");
    assert_ne!(
        services.accounts.online_peer(uid).unwrap().addr(),
        Some(mine)
    );
    assert!(info.0.kicked);
    drop(info);
    gateway.shutdown();
}
