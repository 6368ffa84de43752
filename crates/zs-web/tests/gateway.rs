//! The gateway against a real zs-core server over real sockets: the JSON
//! mapping, many calls in flight, binary DataFrames, pushes, broadcasts,
//! per-connection state, typed errors, and `/metrics`.
// Linux only: these tests run on the epoll backend and start real programs.
#![cfg(target_os = "linux")]

mod common;

use common::*;
use futures::SinkExt;
use tokio_tungstenite::tungstenite::Message;
use zs_wire::DataFrame;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_call_and_many_in_flight_out_of_order() {
    for mode in MODES {
        let rig = rig_in(mode, zs_web::Config::default());
        let mut ws = ws(&rig.ws_url()).await;
        send(&mut ws, r#"{"id":1,"call":"echo","text":"hello"}"#).await;
        assert_eq!(
            recv(&mut ws).await,
            serde_json::json!({"id":1,"text":"hello"})
        );

        // A slow call first, then 20 fast ones: the fast answers overtake it.
        send(&mut ws, r#"{"id":100,"call":"slow","text":"400"}"#).await;
        for i in 0..20 {
            send(
                &mut ws,
                &format!(r#"{{"id":{i},"call":"ECHO","text":"m{i}"}}"#),
            )
            .await;
        }
        let mut got = Vec::new();
        for _ in 0..21 {
            got.push(recv(&mut ws).await);
        }
        assert_eq!(
            got.last().unwrap(),
            &serde_json::json!({"id":100,"text":"slept 400"})
        );
        for i in 0..20 {
            assert!(
                got.contains(&serde_json::json!({"id":i,"text":format!("m{i}")})),
                "answer {i}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_calls_json_and_binary() {
    for mode in MODES {
        let rig = rig_in(mode, zs_web::Config::default());
        let mut ws = ws(&rig.ws_url()).await;
        send(
            &mut ws,
            r#"{"id":5,"stream":"sum","data":[{"t":"u32","v":40},{"t":"u32","v":2}]}"#,
        )
        .await;
        assert_eq!(
            recv(&mut ws).await,
            serde_json::json!({"id":5,"data":[{"t":"u64","v":42}]})
        );

        let req = zs_web::json::binary_message(
            zs_web::json::op::CALL_STREAM,
            6,
            "sum",
            &DataFrame::new().with(1u32).with(2u32),
        );
        ws.send(Message::Binary(req)).await.unwrap();
        let b = recv(&mut ws).await;
        let bytes: Vec<u8> = serde_json::from_value(b["binary"].clone()).unwrap();
        assert_eq!(bytes[0], 0x81);
        assert_eq!(u64::from_le_bytes(bytes[1..9].try_into().unwrap()), 6);
        assert_eq!(bytes[9], 0);
        let df = DataFrame::decode(
            &bytes::Bytes::copy_from_slice(&bytes[10..]),
            &Default::default(),
        )
        .unwrap();
        assert_eq!(df, DataFrame::new().with(3u64));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushes_direct_commands_and_broadcasts() {
    for mode in MODES {
        let rig = rig_in(mode, zs_web::Config::default());
        let mut a = ws(&rig.ws_url()).await;
        let mut b = ws(&rig.ws_url()).await;
        // A push from a handler, before its answer.
        send(&mut a, r#"{"id":1,"call":"pushme","text":"ding"}"#).await;
        assert_eq!(
            recv(&mut a).await,
            serde_json::json!({"push":"push","text":"ding"})
        );
        assert_eq!(recv(&mut a).await, serde_json::json!({"id":1,"text":"ok"}));
        // A direct command (no answer) whose handler pushes back.
        send(&mut a, r#"{"send":"note","text":"x"}"#).await;
        assert_eq!(
            recv(&mut a).await,
            serde_json::json!({"push":"push","text":"noted:x"})
        );
        // Make sure b's session is open, then broadcast from a: both get it.
        send(&mut b, r#"{"id":1,"call":"echo","text":""}"#).await;
        recv(&mut b).await;
        send(&mut a, r#"{"id":2,"call":"bcast","text":"hi all"}"#).await;
        let mut seen_a = Vec::new();
        for _ in 0..2 {
            seen_a.push(recv(&mut a).await);
        }
        assert!(
            seen_a.contains(&serde_json::json!({"push":"news","text":"hi all"})),
            "{seen_a:?}"
        );
        assert!(seen_a
            .iter()
            .any(|m| m["id"] == 2 && m["text"].as_str().unwrap().parse::<u64>().unwrap() >= 2));
        assert_eq!(
            recv(&mut b).await,
            serde_json::json!({"push":"news","text":"hi all"})
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_connection_user_state_is_per_websocket() {
    for mode in MODES {
        let rig = rig_in(mode, zs_web::Config::default());
        let mut a = ws(&rig.ws_url()).await;
        let mut b = ws(&rig.ws_url()).await;
        for i in 1..=3 {
            send(&mut a, &format!(r#"{{"id":{i},"call":"count"}}"#)).await;
            assert_eq!(recv(&mut a).await["text"], i.to_string());
        }
        send(&mut b, r#"{"id":1,"call":"count"}"#).await;
        assert_eq!(recv(&mut b).await["text"], "1");
        // Each WebSocket is one server peer, and a stable one.
        send(&mut a, r#"{"id":9,"call":"whoami"}"#).await;
        let ida = recv(&mut a).await["text"].clone();
        send(&mut b, r#"{"id":9,"call":"whoami"}"#).await;
        assert_ne!(recv(&mut b).await["text"], ida);
        send(&mut a, r#"{"id":10,"call":"whoami"}"#).await;
        assert_eq!(recv(&mut a).await["text"], ida);
        assert_eq!(rig.server.connection_count(), 2);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typed_errors() {
    for mode in MODES {
        let rig = rig_in(mode, zs_web::Config::default());
        let mut ws = ws(&rig.ws_url()).await;
        send(&mut ws, r#"{"id":1,"call":"nope"}"#).await;
        let e = recv(&mut ws).await;
        assert_eq!(e["id"], 1);
        assert_eq!(e["error"]["code"], 404);
        assert_eq!(e["error"]["type"], "unknown_command");
        send(&mut ws, r#"{"id":2,"call":"fail"}"#).await;
        let e = recv(&mut ws).await;
        assert_eq!(
            (e["error"]["code"].as_u64(), e["error"]["type"].as_str()),
            (Some(500), Some("handler_failed"))
        );
        assert_eq!(e["error"]["message"], "it failed");
        send(
            &mut ws,
            r#"{"id":3,"stream":"sum","data":[{"t":"str","v":"x"}]}"#,
        )
        .await;
        let e = recv(&mut ws).await;
        assert_eq!(e["error"]["code"], 400);
        // The session carries on.
        send(&mut ws, r#"{"id":4,"call":"echo","text":"still"}"#).await;
        assert_eq!(recv(&mut ws).await["text"], "still");
        assert!(rig.server.stats().unknown_commands >= 1);
    }
}

#[test]
fn metrics_and_stats_endpoints() {
    let rig = rig(zs_web::Config::default());
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let mut ws = ws(&rig.ws_url()).await;
        for i in 0..5 {
            send(
                &mut ws,
                &format!(r#"{{"id":{i},"call":"echo","text":"x"}}"#),
            )
            .await;
            recv(&mut ws).await;
        }
    });
    let m = get(rig.http(), "/metrics");
    for needle in [
        "# TYPE zs_connections_opened counter",
        "zs_connections_opened_total ",
        "zs_command_calls_total{command=\"echo\",kind=\"console\"} 5",
        "zs_command_latency_seconds{command=\"echo\",kind=\"console\",quantile=\"0.99\"}",
        "# TYPE zs_web_call_duration_seconds histogram",
        "zs_web_call_duration_seconds_count{command=\"echo\"} 5",
        "zs_web_call_duration_seconds_bucket{le=\"+Inf\",command=\"echo\"} 5",
        "zs_web_connections_opened_total 1",
        "zs_stable_sessions_total 0",
        "# EOF",
    ] {
        assert!(m.contains(needle), "/metrics lacks {needle:?}:\n{m}");
    }
    let s: serde_json::Value = serde_json::from_str(&get(rig.http(), "/api/stats")).unwrap();
    let echo = s["server"]["commands"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "echo")
        .unwrap();
    assert_eq!(echo["calls"], 5);
    assert_eq!(s["web"]["opened"], 1);
    // The static files.
    assert!(get(rig.http(), "/").contains("<title>zserver dashboard</title>"));
    assert!(get(rig.http(), "/zs.js").contains("export class ZsClient"));
    assert!(get(rig.http(), "/vendor/uPlot.iife.min.js").len() > 40_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_websocket_keeps_its_server_session() {
    // The server drops connections idle for 600 ms; the bridge's keepalive
    // (on by default; 150 ms here) keeps a quiet browser's session, and its
    // state, alive.
    let fp = zs_crypto::ServerIdentity::generate(&ring::rand::SystemRandom::new())
        .unwrap()
        .0
        .fingerprint();
    let mut default = zs_web::Upstream::pinned("127.0.0.1:1".parse().unwrap(), fp).unwrap();
    assert!(default.remote_mut().unwrap().options.keepalive.is_some());
    let opts = zs_core::Options {
        idle_timeout: Some(std::time::Duration::from_millis(600)),
        ..Default::default()
    };
    // In process there is no transport to idle out at all.
    for mode in MODES {
        let rig = rig_with(zs_web::Config::default(), opts.clone(), mode, |up| {
            if let Some(r) = up.remote_mut() {
                r.options.keepalive = Some(std::time::Duration::from_millis(150));
            }
        });
        let mut ws = ws(&rig.ws_url()).await;
        send(&mut ws, r#"{"id":1,"call":"count"}"#).await;
        assert_eq!(recv(&mut ws).await["text"], "1");
        tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
        send(&mut ws, r#"{"id":2,"call":"count"}"#).await;
        assert_eq!(recv(&mut ws).await["text"], "2", "{mode:?}");
        assert_eq!(rig.server.stats().connections_opened, 1);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pings_keep_a_quiet_client_and_its_session() {
    for mode in MODES {
        let rig = rig_in(
            mode,
            zs_web::Config {
                ping_interval: Some(std::time::Duration::from_millis(100)),
                pong_timeout: std::time::Duration::from_millis(150),
                ..Default::default()
            },
        );
        let mut ws = ws(&rig.ws_url()).await;
        send(&mut ws, r#"{"id":1,"call":"count"}"#).await;
        assert_eq!(recv(&mut ws).await["text"], "1");
        // Quiet for 1.2 s, only reading (tungstenite answers the pings).
        let mut pings = 0;
        let until = tokio::time::Instant::now() + std::time::Duration::from_millis(1200);
        while let Ok(m) = tokio::time::timeout_at(until, futures::StreamExt::next(&mut ws)).await {
            match m.unwrap().unwrap() {
                Message::Ping(p) => {
                    assert_eq!(&p[..], b"zs");
                    pings += 1;
                }
                other => panic!("{mode:?}: unexpected {other:?}"),
            }
        }
        assert!(pings >= 3, "{mode:?}: {pings} pings");
        send(&mut ws, r#"{"id":2,"call":"count"}"#).await;
        assert_eq!(recv(&mut ws).await["text"], "2", "{mode:?}");
        let st = rig.gateway.stats();
        assert_eq!((st.dead_peers, st.open), (0, 1), "{mode:?}: {st:?}");
        assert!(st.pings >= 3);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handlers_see_the_browsers_address_in_process() {
    let rig = rig(zs_web::Config::default());
    let mut ws = ws(&rig.ws_url()).await;
    let mine = match ws.get_ref() {
        tokio_tungstenite::MaybeTlsStream::Plain(t) => t.local_addr().unwrap(),
        _ => unreachable!("plain ws://"),
    };
    send(&mut ws, r#"{"id":1,"call":"addr"}"#).await;
    assert_eq!(recv(&mut ws).await["text"], mine.to_string());
    // The server's connection map has it under that address too.
    let peers = rig.server.peers();
    assert_eq!(peers.len(), 1);
    assert_eq!(peers[0].addr(), Some(mine));
    assert!(peers[0].id() >= zs_core::LOCAL_ID_BASE);
    let st = rig.server.stats();
    assert_eq!((st.connections_opened, st.connections_open), (1, 1));
    drop(ws);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while rig.server.connection_count() > 0 {
        assert!(std::time::Instant::now() < deadline, "peer kept");
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert_eq!(rig.server.stats().connections_open, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_side_close_sends_its_signal_then_closes() {
    for mode in MODES {
        let rig = rig_in(mode, zs_web::Config::default());
        let mut ws = ws(&rig.ws_url()).await;
        send(&mut ws, r#"{"id":1,"call":"kickme"}"#).await;
        let got = recv_until_close(&mut ws).await;
        assert!(
            got.contains(&serde_json::json!({"signal":"user.kicked","code":7})),
            "{mode:?}: {got:?}"
        );
        // In process the server's own close reaches the browser (1000);
        // remote, the bridge reports the lost session (1012).
        let code = got.last().unwrap()["close"].as_u64().unwrap();
        assert!(code == 1000 || code == 1012, "{mode:?}: {got:?}");
    }
}

#[test]
fn extra_panels_reach_the_dashboard_data_bounded() {
    let rig = rig_with(
        zs_web::Config::default(),
        Default::default(),
        Mode::InProcess,
        |up| {
            up.panels = Some(std::sync::Arc::new(|| {
                let mut v = vec![zs_web::Panel {
                    title: "XNat mappings".into(),
                    columns: vec!["mapping".into(), "visitors".into()],
                    rows: vec![vec!["web".into(), "3".into()]],
                }];
                // A runaway source is cut to the limits.
                v.extend((0..40).map(|i| zs_web::Panel {
                    title: format!("big {i}"),
                    columns: vec!["x".into()],
                    rows: (0..500).map(|_| vec!["y".repeat(1000)]).collect(),
                }));
                v
            }));
        },
    );
    let s: serde_json::Value = serde_json::from_str(&get(rig.http(), "/api/stats")).unwrap();
    let p = s["panels"].as_array().unwrap();
    let (max_panels, max_rows, max_cell) = zs_web::PANEL_LIMITS;
    assert_eq!(p.len(), max_panels);
    assert_eq!(
        p[0],
        serde_json::json!({"title":"XNat mappings","columns":["mapping","visitors"],"rows":[["web","3"]]})
    );
    assert_eq!(p[1]["rows"].as_array().unwrap().len(), max_rows);
    assert_eq!(p[1]["rows"][0][0].as_str().unwrap().len(), max_cell);
    // Without a source: an empty list.
    let plain = common::rig(zs_web::Config::default());
    let s: serde_json::Value = serde_json::from_str(&get(plain.http(), "/api/stats")).unwrap();
    assert_eq!(s["panels"], serde_json::json!([]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_paused_at_the_in_flight_cap_is_not_taken_for_dead() {
    // Reading pauses at the cap, so the client's pongs wait unread: that
    // silence must not count against it.
    let rig = rig(zs_web::Config {
        max_in_flight: 1,
        ping_interval: Some(std::time::Duration::from_millis(100)),
        pong_timeout: std::time::Duration::from_millis(100),
        ..Default::default()
    });
    let mut ws = ws(&rig.ws_url()).await;
    send(&mut ws, r#"{"id":1,"call":"slow","text":"700"}"#).await;
    send(&mut ws, r#"{"id":2,"call":"echo","text":"after"}"#).await;
    assert_eq!(recv(&mut ws).await["text"], "slept 700");
    assert_eq!(recv(&mut ws).await["text"], "after");
    assert_eq!(rig.gateway.stats().dead_peers, 0);
}
