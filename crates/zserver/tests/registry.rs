//! Feature `registry`: a server built with `registry_service` is the
//! dispatcher; a member joined through it reports its load (open
//! connections) by itself, and a `FailoverClient` follows the least loaded.
#![cfg(feature = "registry")]

use std::sync::Arc;
use std::time::{Duration, Instant};

use zserver::cluster::{Embedded, EmbeddedConfig, Remote, ServiceRegistry};
use zserver::{join_cluster, ClientBuilder, FailoverClient, Member, ServerBuilder};

fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let end = Instant::now() + Duration::from_secs(10);
    while !f() {
        assert!(Instant::now() < end, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn members_report_load_and_clients_follow_the_least_loaded() {
    let dir = tempfile::tempdir().unwrap();
    let vfs = Arc::new(zserver::db::DirVfs::new(dir.path()).unwrap());
    let embedded = Embedded::open(vfs, "registry", EmbeddedConfig::default()).unwrap();
    let dispatcher = ServerBuilder::new()
        .addr("127.0.0.1:0".parse().unwrap())
        .registry_service(embedded)
        .start()
        .unwrap();
    let (addr, fp) = (dispatcher.local_addr(), dispatcher.fingerprint().unwrap());
    let reg: Arc<dyn ServiceRegistry> = Arc::new(Remote::new(
        move |cmds| {
            ClientBuilder::new(addr)
                .fingerprint(fp)
                .registry(cmds)
                .connect()
                .map_err(|e| zserver::Error::ConnectionLost(e.to_string()))
        },
        Duration::from_secs(5),
    ));

    let mut members = Vec::new();
    for name in ["a", "b"] {
        let server = Arc::new(
            ServerBuilder::new()
                .addr("127.0.0.1:0".parse().unwrap())
                .commands(move |r| {
                    r.console("whoami", move |_, _| Ok(name.to_owned()));
                })
                .start()
                .unwrap(),
        );
        let mut m = Member::new("game", name);
        m.ttl = Duration::from_millis(600);
        m.load = zserver::LoadSource::Connections { max: 10 };
        let keeper = join_cluster(&server, reg.clone(), m).unwrap();
        members.push((server, keeper));
    }
    assert_eq!(reg.list(Some("game")).unwrap().instances.len(), 2);

    // three connections to `a`: its load is re-reported by itself
    let a = &members[0].0;
    let held: Vec<_> = (0..3)
        .map(|_| {
            ClientBuilder::new(a.local_addr())
                .fingerprint(a.fingerprint().unwrap())
                .connect()
                .unwrap()
        })
        .collect();
    wait_until("a's load report", || {
        reg.list(Some("game"))
            .unwrap()
            .instances
            .iter()
            .any(|i| i.id == "a" && i.load.current == 3 && i.load.max == 10)
    });
    // so every pick goes to `b`
    let game = FailoverClient::new(reg.clone(), "game");
    for _ in 0..3 {
        assert_eq!(game.call("whoami", "").unwrap(), "b");
        let _ = reg.pick("game").unwrap();
    }
    // `b` dies without leaving (its lease just stops being renewed)
    let (b_server, b_keeper) = members.pop().unwrap();
    b_server.shutdown();
    b_keeper.abandon(); // no revoke, no renewals: like a crashed process
    wait_until("failover to a", || {
        game.call("whoami", "").ok().as_deref() == Some("a")
    });
    drop(held);
}
