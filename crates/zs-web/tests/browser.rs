//! Real headless Chromium (Debian `chromium` + `chromium-driver`): the
//! JavaScript client calls, receives pushes, gets typed errors and survives a
//! server restart; the dashboard loads, its charts draw, its numbers move under
//! load, and it fits a phone screen. Saves a screenshot of the dashboard under
//! load (test artifact; also docs/dashboard.png with ZS_UPDATE_SCREENSHOT=1).
// Linux only: these tests run on the epoll backend and start real programs.
#![cfg(target_os = "linux")]

mod common;
#[path = "common/webdriver.rs"]
mod webdriver;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use serde_json::json;

#[test]
fn js_client_and_dashboard_in_chromium() {
    let Some(driver) = tool("chromedriver") else {
        return;
    };
    if tool("chromium").is_none() {
        return;
    }
    let port = free_port();
    let cfg = || zs_web::Config {
        addr: format!("127.0.0.1:{port}").parse().unwrap(),
        ..Default::default()
    };
    let rig1 = rig(cfg());
    let base = format!("http://127.0.0.1:{port}");
    let b = webdriver::Browser::start(&driver, 1280, 1000);
    b.goto(&format!("{base}/"));

    // --- the JS client ---
    let v = b.run(
        r##"
        const { ZsClient, ZsError, df } = await import("/zs.js");
        const zs = await ZsClient.connect(`ws://${location.host}/ws`, { backoff: { initial: 50, max: 400 } });
        window.zs = zs;
        const pushes = [];
        zs.on("push", (m) => pushes.push(m.text));
        const echo = await zs.call("echo", "hello from chromium");
        const many = await Promise.all([...Array(20).keys()].map((i) => zs.call("echo", "m" + i)));
        const sum = await zs.callStream("sum", [df.u32(40), df.u32(2)]);
        await zs.call("pushme", "ding");
        zs.send("note", "x");
        while (pushes.length < 2) await new Promise((r) => setTimeout(r, 10));
        let err = null;
        try { await zs.call("nope"); } catch (e) { err = { isZs: e instanceof ZsError, code: e.code, type: e.type }; }
        return { echo, many: many.join(","), sum, pushes, err };
        "##,
    );
    assert_eq!(v["echo"], "hello from chromium");
    assert_eq!(
        v["many"],
        (0..20)
            .map(|i| format!("m{i}"))
            .collect::<Vec<_>>()
            .join(",")
    );
    assert_eq!(v["sum"], json!([{"t":"u64","v":42}]));
    assert_eq!(v["pushes"], json!(["ding", "noted:x"]));
    assert_eq!(
        v["err"],
        json!({"isZs": true, "code": 404, "type": "unknown_command"})
    );

    // --- server restart: the client reconnects by itself ---
    drop(rig1);
    let v = b.run(
        r##"
        while (window.zs.connected) await new Promise((r) => setTimeout(r, 10));
        let lost = null;
        try { await window.zs.call("echo", "x", { timeout: 200 }); } catch (e) { lost = e.type; }
        return { lost };
        "##,
    );
    assert_eq!(v["lost"], "timeout");
    // The restarted server's dashboard has an extra panel (as the facade
    // adds for an XNat relay or a DB service).
    let rig2 = rig_with(cfg(), Default::default(), Mode::InProcess, |up| {
        up.panels = Some(Arc::new(|| {
            vec![zs_web::Panel {
                title: "XNat mappings".into(),
                columns: vec!["mapping".into(), "public address".into()],
                rows: vec![vec!["web".into(), "127.0.0.1:9000".into()]],
            }]
        }));
    });
    let v = b.run(
        r##"
        const again = await window.zs.call("echo", "after restart", { timeout: 15000 });
        return { again, reconnects: window.zs.reconnects };
        "##,
    );
    assert_eq!(v["again"], "after restart");
    assert!(v["reconnects"].as_u64().unwrap() >= 1);

    // --- a signal, then a server-side close: on(name) hears it, the client
    // reconnects ---
    let v = b.run(
        r##"
        const kicked = [];
        window.zs.on("user.kicked", (m) => kicked.push(m));
        try { await window.zs.call("kickme", "", { timeout: 3000 }); } catch (e) {}
        while (kicked.length < 1) await new Promise((r) => setTimeout(r, 10));
        const back = await window.zs.call("echo", "back", { timeout: 15000 });
        return { kicked, back };
        "##,
    );
    assert_eq!(
        v["kicked"],
        json!([{"signal":"user.kicked","code":7}]),
        "{v}"
    );
    assert_eq!(v["back"], "back");

    // --- the dashboard under load ---
    b.goto(&format!("{base}/"));
    let stop = Arc::new(AtomicBool::new(false));
    let load = {
        let (stop, url) = (stop.clone(), rig2.ws_url());
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let mut a = ws(&url).await;
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    send(
                        &mut a,
                        &format!(r#"{{"id":{n},"call":"echo","text":"load {n}"}}"#),
                    )
                    .await;
                    recv(&mut a).await;
                    if n % 4 == 0 {
                        send(
                            &mut a,
                            &format!(
                                r#"{{"id":{n},"stream":"sum","data":[{{"t":"u32","v":{n}}}]}}"#
                            ),
                        )
                        .await;
                        recv(&mut a).await;
                    }
                    n += 1;
                    if n % 50 == 0 {
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                }
            });
        })
    };
    let v = b.run(
        r##"
        const d = () => window.zsDashboard;
        while (!d() || d().ticks < 2) await new Promise((r) => setTimeout(r, 50));
        const calls0 = d().calls;
        const kpi0 = document.getElementById("kpi-calls").textContent;
        const t0 = d().ticks;
        while (d().ticks < t0 + 3) await new Promise((r) => setTimeout(r, 50));
        // Charts drew: their canvases hold non-blank pixels.
        const drawn = {};
        for (const id of ["chart-conns", "chart-calls", "chart-bytes", "chart-lat"]) {
            const c = document.querySelector(`#${id} canvas`);
            if (!c) { drawn[id] = 0; continue; }
            const px = c.getContext("2d").getImageData(0, 0, c.width, c.height).data;
            let n = 0;
            for (let i = 3; i < px.length; i += 4) if (px[i] !== 0) n++;
            drawn[id] = n;
        }
        const rows = document.querySelectorAll("#latency tbody tr").length;
        const counters = document.querySelectorAll("#counters tbody tr").length;
        const panel = [...document.querySelectorAll("#panels .card")].map((c) => c.textContent);
        return { panel, calls0, calls1: d().calls, kpi0, kpi1: document.getElementById("kpi-calls").textContent,
                 rate: d().rate, drawn, rows, counters, ws: document.getElementById("kpi-ws").textContent };
        "##,
    );
    assert!(
        v["calls1"].as_u64().unwrap() > v["calls0"].as_u64().unwrap(),
        "{v}"
    );
    assert_ne!(v["kpi0"], v["kpi1"], "{v}");
    assert!(v["rate"].as_f64().unwrap() > 0.0, "{v}");
    for id in ["chart-conns", "chart-calls", "chart-bytes", "chart-lat"] {
        assert!(
            v["drawn"][id].as_u64().unwrap() > 500,
            "{id} not drawn: {v}"
        );
    }
    assert!(v["rows"].as_u64().unwrap() >= 2, "{v}");
    assert!(v["counters"].as_u64().unwrap() >= 10, "{v}");
    assert_eq!(
        v["panel"],
        serde_json::json!(["XNat mappingsmappingpublic addressweb127.0.0.1:9000"]),
        "{v}"
    );
    let png = b.screenshot();
    assert_eq!(&png[1..4], b"PNG");
    let out = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard.png");
    std::fs::write(&out, &png).unwrap();
    println!("screenshot: {}", out.display());
    if std::env::var_os("ZS_UPDATE_SCREENSHOT").is_some() {
        std::fs::write(
            concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/dashboard.png"),
            &png,
        )
        .unwrap();
    }

    // --- a phone screen: no horizontal scrolling, charts sized to it ---
    b.set_window(390, 844);
    let v = b.run(
        r##"
        await new Promise((r) => setTimeout(r, 1500));
        const c = document.querySelector("#chart-calls canvas");
        return { scroll: document.documentElement.scrollWidth, inner: window.innerWidth, chart: c.getBoundingClientRect().width };
        "##,
    );
    let inner = v["inner"].as_f64().unwrap();
    assert!(
        v["scroll"].as_f64().unwrap() <= inner + 1.0,
        "overflows a phone screen: {v}"
    );
    assert!(v["chart"].as_f64().unwrap() <= inner, "{v}");
    stop.store(true, Ordering::Relaxed);
    load.join().unwrap();
}
