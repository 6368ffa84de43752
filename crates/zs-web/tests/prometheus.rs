//! A real Prometheus (Debian `prometheus`) scrapes the gateway's `/metrics`,
//! and its HTTP API answers a query for one of our series.
// Linux only: these tests run on the epoll backend and start real programs.
#![cfg(target_os = "linux")]

mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

struct Kill(Child);
impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn prometheus_scrapes_our_series() {
    let Some(bin) = tool("prometheus") else {
        return;
    };
    let rig = rig(zs_web::Config::default());
    // Traffic, so the per-command series exist.
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let mut ws = ws(&rig.ws_url()).await;
        for i in 0..3 {
            send(
                &mut ws,
                &format!(r#"{{"id":{i},"call":"echo","text":"p"}}"#),
            )
            .await;
            recv(&mut ws).await;
        }
        drop(ws);
    });
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let cfg = dir.path().join("prometheus.yml");
    std::fs::write(
        &cfg,
        format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n  - job_name: zs\n    static_configs:\n      - targets: ['{}']\n",
            rig.http()
        ),
    )
    .unwrap();
    let _prom = Kill(
        Command::new(bin)
            .arg(format!("--config.file={}", cfg.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let query = "zs_command_calls_total{command=%22echo%22}";
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let r = std::panic::catch_unwind(|| {
            raw_http(
                format!("127.0.0.1:{port}").parse().unwrap(),
                format!("GET /api/v1/query?query={query} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
            )
        })
        .unwrap_or_default();
        if let Some((_, body)) = r.split_once("\r\n\r\n") {
            // Chunked or not, the JSON object is in there.
            if let Some(start) = body.find('{') {
                let end = body.rfind('}').unwrap();
                if let Ok(v) = serde_json::from_str::<serde_json::Value>(&body[start..=end]) {
                    let res = &v["data"]["result"];
                    if let Some(first) = res.as_array().and_then(|a| a.first()) {
                        assert_eq!(first["metric"]["job"], "zs");
                        assert_eq!(first["metric"]["kind"], "console");
                        assert_eq!(first["value"][1], "3");
                        return;
                    }
                }
            }
        }
        assert!(
            Instant::now() < deadline,
            "Prometheus never had our series; last answer: {r}"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
}
