//! zs-tx procedures called by remote clients of the DB service (request 0x50): the
//! answer comes after the commit, with arguments; and the attacks: an unknown
//! procedure, oversized arguments, a procedure that keeps conflicting until its
//! redo budget is spent, an aborting body, and more calls at once than allowed.

use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use zserver::tx::{Db, DbServiceTxExt, Options, ServiceError, TxError as Error};
use zserver::{connect_db, ClientBuilder, DbClient, DbService, ServerBuilder, ServiceConfig};

fn serve(
    db: &Db,
    cfg: ServiceConfig,
) -> (
    zserver::RunningServer,
    DbClient,
    DbService,
    tempfile::TempDir,
) {
    let dir = tempfile::tempdir().unwrap();
    let service = DbService::open_dir(dir.path(), cfg).unwrap();
    let accounts = db.table::<u32, u64>("accounts");
    // transfer: args = from u32 LE, to u32 LE, amount u64 LE; result = new balances
    service.tx_procedure("transfer", db.clone(), move |tx, args| {
        if args.len() != 16 {
            return Err(Error::Abort("args: from u32, to u32, amount u64".into()));
        }
        let from = u32::from_le_bytes(args[0..4].try_into().unwrap());
        let to = u32::from_le_bytes(args[4..8].try_into().unwrap());
        let amount = u64::from_le_bytes(args[8..16].try_into().unwrap());
        let a = accounts.get(tx, &from)?.unwrap_or(0);
        let Some(left) = a.checked_sub(amount) else {
            return Err(Error::Abort("insufficient funds".into()));
        };
        let b = accounts.get(tx, &to)?.unwrap_or(0) + amount;
        accounts.put(tx, &from, &left)?;
        accounts.put(tx, &to, &b)?;
        let mut out = left.to_le_bytes().to_vec();
        out.extend_from_slice(&b.to_le_bytes());
        Ok(out)
    });
    let server = ServerBuilder::new()
        .addr("127.0.0.1:0".parse().unwrap())
        .db_service(&service)
        .start()
        .unwrap();
    let (addr, fp) = (server.local_addr(), server.fingerprint().unwrap());
    let client = connect_db(move || ClientBuilder::new(addr).fingerprint(fp)).unwrap();
    (server, client, service, dir)
}

fn args(from: u32, to: u32, amount: u64) -> Vec<u8> {
    let mut a = from.to_le_bytes().to_vec();
    a.extend_from_slice(&to.to_le_bytes());
    a.extend_from_slice(&amount.to_le_bytes());
    a
}

fn refused(r: Result<Vec<u8>, ServiceError>) -> (u32, String) {
    match r {
        Err(ServiceError::Refused { code, message }) => (code, message),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[test]
fn remote_procedures_answer_after_commit() {
    let db = Db::in_memory(Options::default());
    let accounts = db.table::<u32, u64>("accounts");
    db.run(|tx| accounts.put(tx, &1, &100)).unwrap();
    let (_server, client, _service, _dir) = serve(&db, ServiceConfig::default());
    let out = client.call("transfer", &args(1, 2, 30)).unwrap();
    assert_eq!(out[..8], 70u64.to_le_bytes());
    assert_eq!(out[8..], 30u64.to_le_bytes());
    // the answer came after the commit: the state is there as soon as it arrives
    assert_eq!(accounts.peek(&1).unwrap(), Some(70));
    assert_eq!(accounts.peek(&2).unwrap(), Some(30));
    // concurrent callers: no lost update, every answer describes committed state
    std::thread::scope(|s| {
        for _ in 0..3 {
            let client = &client;
            s.spawn(move || {
                for _ in 0..10 {
                    client.call("transfer", &args(2, 3, 1)).unwrap();
                }
            });
        }
        for _ in 0..4 {
            let client = &client;
            s.spawn(move || {
                for _ in 0..10 {
                    client.call("transfer", &args(1, 3, 1)).unwrap();
                }
            });
        }
    });
    assert_eq!(accounts.peek(&1).unwrap(), Some(30));
    assert_eq!(accounts.peek(&2).unwrap(), Some(0));
    assert_eq!(accounts.peek(&3).unwrap(), Some(70));
    // an aborting body: 422, nothing committed
    let (code, msg) = refused(client.call("transfer", &args(2, 3, 5)));
    assert_eq!(code, 422, "{msg}");
    assert!(msg.contains("insufficient funds"), "{msg}");
    assert_eq!(accounts.peek(&3).unwrap(), Some(70));
}

#[test]
fn remote_procedure_attacks() {
    let db = Db::in_memory(Options {
        max_redo: 3,
        keep_locks_on_redo: false,
        ..Options::default()
    });
    let mut cfg = ServiceConfig::default();
    cfg.limits.max_args = 1024;
    cfg.max_procedure_calls = 1;
    let (_server, client, service, _dir) = serve(&db, cfg);

    // unknown procedure
    let (code, msg) = refused(client.call("nope", b""));
    assert_eq!(code, 404, "{msg}");

    // oversized arguments: refused by the decoder, the connection carries on
    let (code, msg) = refused(client.call("transfer", &vec![0u8; 1025]));
    assert_eq!(code, 400, "{msg}");
    let (code, _) = refused(client.call("transfer", &args(9, 8, 1)));
    assert_eq!(code, 422, "the same connection still serves");

    // a procedure that conflicts on every attempt: another transaction changes what
    // it read before it commits
    let hot = db.table::<u32, u64>("hot");
    let (db2, hot2) = (db.clone(), hot.clone());
    service.tx_procedure("always_conflicts", db.clone(), move |tx, _| {
        let v = hot2.get(tx, &0)?.unwrap_or(0);
        let (db3, hot3) = (db2.clone(), hot2.clone());
        std::thread::spawn(move || {
            db3.run(|tx| {
                let x = hot3.get(tx, &0)?.unwrap_or(0);
                hot3.put(tx, &0, &(x + 1))
            })
        })
        .join()
        .unwrap()?;
        hot2.put(tx, &0, &(v + 100))?;
        Ok(Vec::new())
    });
    let (code, msg) = refused(client.call("always_conflicts", b""));
    assert_eq!(code, 503, "{msg}");
    assert!(
        msg.contains("budget spent") && msg.contains("4 times"),
        "{msg}"
    );
    assert_eq!(
        hot.peek(&0).unwrap(),
        Some(4),
        "only the interfering writes committed"
    );

    // more calls at once than allowed (1): the second is refused with 429
    let (entered_tx, entered) = mpsc::channel::<()>();
    let (release_tx, release) = mpsc::channel::<()>();
    let release = Arc::new(Mutex::new(release));
    let entered_tx = Arc::new(Mutex::new(entered_tx));
    service.tx_procedure("slow", db.clone(), move |_, _| {
        entered_tx.lock().unwrap().send(()).unwrap();
        release
            .lock()
            .unwrap()
            .recv_timeout(Duration::from_secs(10))
            .unwrap();
        Ok(b"done".to_vec())
    });
    std::thread::scope(|s| {
        let first = s.spawn(|| client.call("slow", b""));
        entered.recv_timeout(Duration::from_secs(10)).unwrap();
        let (code, msg) = refused(client.call("transfer", &args(9, 8, 1)));
        assert_eq!(code, 429, "{msg}");
        release_tx.send(()).unwrap();
        assert_eq!(first.join().unwrap().unwrap(), b"done");
    });
    // and the slot is free again
    let (code, _) = refused(client.call("transfer", &args(9, 8, 1)));
    assert_eq!(code, 422);
}
