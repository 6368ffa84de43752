//! Access rules tied to the accounts service: not logged in (401), the wrong
//! user (403), rights given and taken over the network, and a right revoked while a query, a FastPost stream and a watch run.
// Linux only: these tests run on the epoll backend.
#![cfg(target_os = "linux")]

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::code;
use zs_core::{Peer, Registry, Server};
use zs_db::Kind;
use zs_db_service::proto::errcode;
use zs_db_service::{
    Access, DbClient, DbService, Durability, EndStatus, Identity, QuerySpec, ServiceConfig, User,
};
use zs_services::{Accounts, Services, ServicesConfig};
use zs_wire::DataFrame;

/// The accounts service as the DB service's identity (what the facade plugs in).
struct Logins(Accounts);

impl Identity for Logins {
    fn user(&self, peer: &Peer) -> Option<User> {
        let uid = self.0.user_of(peer)?;
        Some(User {
            name: self.0.name_of(uid)?,
            admin: self.0.is_admin(uid),
        })
    }
}

struct Fx {
    _dir: tempfile::TempDir,
    service: DbService,
    server: Server,
    backend: Arc<dyn zs_io::Backend>,
    accounts: Accounts,
}

fn start() -> Fx {
    let dir = tempfile::tempdir().unwrap();
    let service = DbService::open_dir(dir.path(), ServiceConfig::default()).unwrap();
    let env = zs_db::Env::with_vfs(Arc::new(zs_db::MemVfs::new()));
    let services = Services::open(&env, ServicesConfig::cheap_for_tests()).unwrap();
    for (name, admin) in [("root", true), ("ann", false), ("bob", false)] {
        services
            .accounts
            .create_user(name, "pw-of-someone", admin)
            .unwrap();
    }
    service.set_identity(Arc::new(Logins(services.accounts.clone())));
    let mut reg = Registry::new();
    service.register(&mut reg);
    services.register(&mut reg);
    let backend = common::backend();
    let server = Server::start(
        backend.clone(),
        reg,
        zs_core::Options::default(),
        "127.0.0.1:0".parse().unwrap(),
    )
    .unwrap();
    Fx {
        _dir: dir,
        service,
        server,
        backend,
        accounts: services.accounts.clone(),
    }
}

impl Fx {
    fn anonymous(&self) -> DbClient {
        common::connect(
            self.backend.clone(),
            Arc::new(std::sync::Mutex::new(self.server.local_addr())),
        )
    }

    fn as_user(&self, name: &str) -> DbClient {
        let c = self.anonymous();
        c.connection()
            .call_stream(
                "user.login",
                DataFrame::new().with(name).with("pw-of-someone"),
            )
            .wait()
            .unwrap();
        c
    }
}

#[test]
fn who_may_do_what() {
    let f = start();
    let root = f.as_user("root");
    root.open("notes", true).unwrap();
    let id = root
        .insert("notes", Kind::Raw, b"secret", Durability::Durable)
        .unwrap();

    // not logged in: 401 everywhere, also on the event-loop GET path
    let anon = f.anonymous();
    assert_eq!(code(anon.get("notes", id)), errcode::UNAUTHORIZED);
    assert_eq!(code(anon.open("notes", false)), errcode::UNAUTHORIZED);
    assert_eq!(code(anon.list()), errcode::UNAUTHORIZED);
    assert_eq!(code(anon.stats("notes")), errcode::UNAUTHORIZED);
    assert_eq!(
        code(anon.query(QuerySpec::new("notes"))),
        errcode::UNAUTHORIZED
    );
    assert_eq!(
        code(anon.fastpost("notes", Default::default())),
        errcode::UNAUTHORIZED
    );

    // the wrong user: 403, and the database is not even listed
    let ann = f.as_user("ann");
    let bob = f.as_user("bob");
    assert_eq!(code(bob.get("notes", id)), errcode::FORBIDDEN);
    // stats under the read rule: the same refusal as a GET, also for a name
    // that does not exist (no probing which databases exist)
    assert_eq!(code(bob.stats("notes")), errcode::FORBIDDEN);
    assert_eq!(code(bob.stats("nope")), errcode::FORBIDDEN);
    assert_eq!(
        code(bob.insert("notes", Kind::Raw, b"x", Durability::Written)),
        errcode::FORBIDDEN
    );
    assert_eq!(code(bob.watch("notes", 1, u64::MAX)), errcode::FORBIDDEN);
    assert!(bob.list().unwrap().is_empty());
    // nobody but an admin creates databases or changes rules
    assert_eq!(code(bob.open("mine", true)), errcode::FORBIDDEN);
    assert_eq!(
        code(bob.grant("notes", "bob", Access::Admin)),
        errcode::FORBIDDEN
    );
    assert_eq!(
        code(bob.grant("*", "bob", Access::Admin)),
        errcode::FORBIDDEN
    );

    // read access: read, but not write
    root.grant("notes", "ANN", Access::Read).unwrap(); // names are case-insensitive
    assert_eq!(ann.get("notes", id).unwrap().unwrap().data, b"secret");
    assert_eq!(ann.list().unwrap(), vec!["notes".to_string()]);
    assert_eq!(ann.stats("notes").unwrap().records, 1);
    assert_eq!(
        code(ann.insert("notes", Kind::Raw, b"x", Durability::Written)),
        errcode::FORBIDDEN
    );
    assert_eq!(code(ann.remove("notes")), errcode::FORBIDDEN);
    assert_eq!(code(ann.compact("notes")), errcode::FORBIDDEN);
    assert_eq!(code(ann.copy("notes", "stolen")), errcode::FORBIDDEN);
    // a rule for every user of every database, and admin on one
    root.grant("*", "*", Access::Read).unwrap();
    assert_eq!(bob.get("notes", id).unwrap().unwrap().data, b"secret");
    root.grant("notes", "bob", Access::Admin).unwrap();
    bob.grant("notes", "ann", Access::Write).unwrap();
    ann.insert("notes", Kind::Raw, b"by ann", Durability::Written)
        .unwrap();
    bob.compact("notes").unwrap();
    // hostile names and levels
    assert_eq!(
        code(root.grant("../x", "ann", Access::Read)),
        errcode::BAD_REQUEST
    );
    assert_eq!(
        code(root.grant("notes", "", Access::Read)),
        errcode::BAD_REQUEST
    );

    // logging out takes the rights away at once
    ann.connection()
        .call_stream("user.logout", DataFrame::new())
        .wait()
        .unwrap();
    assert_eq!(code(ann.get("notes", id)), errcode::UNAUTHORIZED);

    // the rules are stored: a new service on the same directory has them
    let expected = vec![
        ("*".to_string(), "*".to_string(), Access::Read),
        ("notes".to_string(), "ann".to_string(), Access::Write),
        ("notes".to_string(), "bob".to_string(), Access::Admin),
    ];
    assert_eq!(f.service.rules("notes"), expected);
    // and lists them over the network to an admin of the database only
    assert_eq!(root.rules("notes").unwrap(), expected);
    assert_eq!(bob.rules("notes").unwrap(), expected);
    assert_eq!(code(ann.rules("notes")), errcode::UNAUTHORIZED); // logged out
    let ann = f.as_user("ann");
    assert_eq!(code(ann.rules("notes")), errcode::FORBIDDEN);
    assert_eq!(code(bob.rules("*")), errcode::FORBIDDEN);
    assert_eq!(root.rules("*").unwrap(), expected);
    assert_eq!(code(root.rules("../x")), errcode::BAD_REQUEST);
}

#[test]
fn a_right_revoked_while_a_query_a_fastpost_and_a_watch_run_stops_them() {
    let f = start();
    let root = f.as_user("root");
    root.open("big", true).unwrap();
    let mut fp = root.fastpost("big", Default::default()).unwrap();
    for i in 0..3000u64 {
        fp.post(Kind::Raw, &i.to_le_bytes()).unwrap();
    }
    fp.flush().unwrap();
    root.grant("big", "ann", Access::Write).unwrap();

    let ann = f.as_user("ann");
    let mut w = ann.watch("big", 1, u64::MAX).unwrap();
    let mut spec = QuerySpec::new("big");
    spec.batch_bytes = 1024;
    spec.window = 1;
    let mut q = ann.query(spec).unwrap();
    let first = q.next_batch().unwrap().unwrap();
    assert!(!first.is_empty());
    let mut writer = ann.fastpost("big", Default::default()).unwrap();
    writer.post(Kind::Raw, b"allowed").unwrap();
    writer.flush().unwrap();
    assert!(w.next_timeout(Duration::from_secs(5)).unwrap().is_some());

    // the admin takes every right away while all three run
    root.grant("big", "ann", Access::None).unwrap();

    // the query ends with a refusal instead of delivering the rest
    let mut got = first.len();
    let mut failure = None;
    while let Some(b) = q.next_batch() {
        match b {
            Ok(b) => got += b.len(),
            Err(e) => failure = Some(e.to_string()),
        }
    }
    assert!(got < 3000, "the query went on after the revocation: {got}");
    assert_eq!(q.end().map(|e| e.0), Some(EndStatus::Failed));
    let failure = failure.expect("a failure");
    assert!(failure.contains("403"), "{failure}");

    // the FastPost stream is refused
    writer.post(Kind::Raw, b"refused").unwrap();
    let err = writer.flush().unwrap_err();
    assert!(err.to_string().contains("403"), "{err}");

    // the watch sees no more changes
    root.insert("big", Kind::Raw, b"after", Durability::Durable)
        .unwrap();
    assert!(w
        .next_timeout(Duration::from_millis(300))
        .unwrap()
        .is_none());
    // and new requests are refused
    assert_eq!(code(ann.get("big", 1)), errcode::FORBIDDEN);
    assert_eq!(
        root.get("big", 3002).unwrap().map(|r| r.data),
        Some(b"after".to_vec()),
        "the refused record was not stored"
    );
}

/// The accounts service keeps the `Peer` of every logged-in session, a peer
/// reaches its connection's registry, and the registry the DB service's
/// commands: with a strong reference there, a service with an identity was
/// never freed, and its directory stayed locked ("`__zs_access` is locked")
/// after the server shut down. FastPost streams and watches hold peers too.
#[test]
fn a_service_is_freed_after_shutdown_although_sessions_outlive_it_and_its_directory_reopens() {
    let f = start();
    let root = f.as_user("root");
    root.open("notes", true).unwrap();
    root.insert("notes", Kind::Raw, b"kept", Durability::Durable)
        .unwrap();
    let _watch = root.watch("notes", 1, u64::MAX).unwrap();
    let mut fp = root.fastpost("notes", Default::default()).unwrap();
    fp.post(Kind::Raw, b"posted").unwrap();
    fp.flush().unwrap();
    let Fx {
        _dir: dir,
        service,
        server,
        accounts,
        ..
    } = f;
    // what the accounts service keeps of the logged-in session (held here too,
    // in case a shutdown logs sessions out)
    let held = accounts.online_peers();
    assert!(!held.is_empty());
    server.shutdown();
    drop(service);
    // a query thread or a FastPost writer may hold the service a moment longer
    let deadline = Instant::now() + Duration::from_secs(20);
    let again = loop {
        match DbService::open_dir(dir.path(), ServiceConfig::default()) {
            Ok(s) => break s,
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => panic!("the directory did not reopen: {e}"),
        }
    };
    let db = again.env().db("notes").unwrap();
    assert_eq!(db.len(), 2, "both acknowledged records are there");
    drop((held, accounts));
}
