//! Accounts through a real server on loopback: registration, exact password
//! comparison, kick/refuse on a second login, throttling, admin commands,
//! aliases, persistence, and hostile input.

mod common;

use common::*;
use zs_services::{code, SecondLogin, Services};

#[test]
fn register_login_and_exact_passwords() {
    let rig = Rig::mem(cheap());
    let c = rig.client();
    let id = c.register("Ann", "Correct Horse").unwrap();
    assert_eq!(code_of(c.register("ann", "another one")), code::NAME_TAKEN);
    // Not logged in yet.
    assert_eq!(code_of(c.whoami()), code::NOT_LOGGED_IN);
    // Passwords are compared exactly: no case folding (ZNet's pitfall).
    assert_eq!(
        code_of(c.login("ann", "correct horse")),
        code::BAD_CREDENTIALS
    );
    assert_eq!(
        code_of(c.login("ann", "CORRECT HORSE")),
        code::BAD_CREDENTIALS
    );
    // An unknown user gets the same answer as a wrong password.
    assert_eq!(
        code_of(c.login("nobody", "Correct Horse")),
        code::BAD_CREDENTIALS
    );
    // Names are case-insensitive.
    let info = c.login("ANN", "Correct Horse").unwrap();
    assert_eq!(
        (info.user, info.name.as_str(), info.kicked),
        (id, "ann", false)
    );
    assert_eq!(c.whoami().unwrap(), (id, "ann".to_owned()));
    c.logout().unwrap();
    assert_eq!(code_of(c.whoami()), code::NOT_LOGGED_IN);
}

#[test]
fn user_of_survives_a_handler_storing_its_own_connection_state() {
    let rig = Rig::mem(cheap());
    let c = rig.user("ann");
    // The "scratch" command stores a String in the connection's state slot.
    assert_eq!(c.client().call("scratch", "mine").wait().unwrap(), "ok");
    assert_eq!(c.whoami().unwrap().1, "ann");
    let peer = rig.server.peers().pop().unwrap();
    assert_eq!(
        rig.services.accounts.user_of(&peer),
        rig.services.accounts.resolve("ann")
    );
    assert_eq!(peer.state::<String>().as_deref(), Some("mine"));
}

#[test]
fn second_login_kicks_the_older_session() {
    let rig = Rig::mem(cheap());
    rig.services
        .accounts
        .create_user("ann", "password1", false)
        .unwrap();
    let (first, inbox) = rig.client_inbox();
    first.login("ann", "password1").unwrap();
    let second = rig.client();
    let info = second.login("ann", "password1").unwrap();
    assert!(info.kicked);
    eventually("the first connection to close", || {
        !first.client().is_connected()
    });
    eventually("the kick signal", || inbox.was_kicked());
    assert_eq!(second.whoami().unwrap().1, "ann");
    assert_eq!(second.online().unwrap(), vec!["ann".to_owned()]);
}

#[test]
fn second_login_refused_when_configured() {
    let mut cfg = cheap();
    cfg.accounts.second_login = SecondLogin::Refuse;
    let rig = Rig::mem(cfg);
    rig.services
        .accounts
        .create_user("ann", "password1", false)
        .unwrap();
    let first = rig.client();
    first.login("ann", "password1").unwrap();
    let second = rig.client();
    assert_eq!(
        code_of(second.login("ann", "password1")),
        code::ALREADY_ONLINE
    );
    assert!(first.client().is_connected());
    assert_eq!(first.whoami().unwrap().1, "ann");
    // Once the first leaves, the second gets in.
    first.close();
    eventually("the refused login to succeed", || {
        second.login("ann", "password1").is_ok()
    });
}

#[test]
fn wrong_passwords_are_throttled_per_user_and_per_address() {
    let mut cfg = cheap();
    cfg.accounts.user_failures = 3;
    cfg.accounts.addr_failures = 6;
    let rig = Rig::mem(cfg);
    for n in ["ann", "bob", "cid"] {
        rig.services
            .accounts
            .create_user(n, "password1", false)
            .unwrap();
    }
    let c = rig.client();
    for _ in 0..3 {
        assert_eq!(code_of(c.login("ann", "guess")), code::BAD_CREDENTIALS);
    }
    // Throttled: even the right password is refused now, without being checked.
    let e = c.login("ann", "password1").unwrap_err();
    assert_eq!(e.code, code::THROTTLED, "{e}");
    assert!(e.message.contains("retry in"), "{e}");
    // Other users are still fine from this address (3 failures < 6)...
    c.login("bob", "password1").unwrap();
    // ...until the address itself is over its limit.
    for _ in 0..3 {
        assert_eq!(code_of(c.login("cid", "guess")), code::BAD_CREDENTIALS);
    }
    assert_eq!(code_of(c.login("bob", "password1")), code::THROTTLED);
    // An admin reset clears the user's counter (not the address's).
    let id = rig.services.accounts.resolve("ann").unwrap();
    rig.services.accounts.set_password(id, "password2").unwrap();
    assert_eq!(
        rig.services
            .accounts
            .authenticate("ann", "password2", None)
            .unwrap(),
        id
    );
}

#[test]
fn hostile_names_passwords_and_payloads_get_clear_errors() {
    let rig = Rig::mem(cheap());
    let c = rig.client();
    let long = "a".repeat(10_000);
    assert_eq!(code_of(c.register(&long, "password1")), code::INVALID);
    assert_eq!(code_of(c.login(&long, "password1")), code::INVALID);
    assert_eq!(
        code_of(c.register("ann", &"p".repeat(100_000))),
        code::INVALID
    );
    assert_eq!(code_of(c.login("ann", &"p".repeat(100_000))), code::INVALID);
    assert_eq!(code_of(c.register("ann", "short")), code::INVALID);
    for bad in ["../etc", "a b", "", "-x", "ann\0", "名前", "con/x"] {
        assert_eq!(
            code_of(c.register(bad, "password1")),
            code::INVALID,
            "{bad:?}"
        );
    }
    // Malformed payloads: missing fields, wrong types.
    let e = c
        .client()
        .call_stream("user.login", zs_wire::DataFrame::new().with(7u64))
        .wait()
        .unwrap_err();
    assert!(matches!(e, zs_core::Error::Remote { code: 400, .. }), "{e}");
    let e = c
        .client()
        .call_stream("user.register", zs_wire::DataFrame::new())
        .wait()
        .unwrap_err();
    assert!(matches!(e, zs_core::Error::Remote { code: 400, .. }), "{e}");
    // The server carries on.
    c.register("ann", "password1").unwrap();
    c.login("ann", "password1").unwrap();
}

#[test]
fn admin_commands_disable_reset_and_list() {
    let rig = Rig::mem(cheap());
    let pw = rig.services.ensure_admin("root").unwrap().unwrap();
    assert_eq!(rig.services.ensure_admin("root").unwrap(), None);
    let admin = rig.client();
    assert!(admin.login("root", &pw).unwrap().admin);
    let bob = rig.user("bob");
    // A plain user may not run admin commands.
    assert_eq!(code_of(bob.set_disabled("root", true)), code::FORBIDDEN);
    assert_eq!(
        code_of(bob.reset_password("root", "password9")),
        code::FORBIDDEN
    );
    assert_eq!(code_of(bob.list_users(0, 10)), code::FORBIDDEN);
    let list = admin.list_users(0, 10).unwrap();
    let names: Vec<_> = list
        .iter()
        .map(|u| (u.name.as_str(), u.admin, u.online))
        .collect();
    assert_eq!(names, vec![("root", true, true), ("bob", false, true)]);
    // Disabling logs bob out at once and refuses his logins.
    admin.set_disabled("bob", true).unwrap();
    eventually("bob's connection to close", || !bob.client().is_connected());
    let again = rig.client();
    assert_eq!(code_of(again.login("bob", "bob-password")), code::DISABLED);
    admin.set_disabled("bob", false).unwrap();
    again.login("bob", "bob-password").unwrap();
    // Reset, then a self change that checks the old password.
    admin.reset_password("bob", "new-password").unwrap();
    assert_eq!(
        code_of(again.change_password("bob-password", "x-password")),
        code::BAD_CREDENTIALS
    );
    again.change_password("new-password", "x-password").unwrap();
    let third = rig.client();
    third.login("bob", "x-password").unwrap();
    assert_eq!(
        code_of(admin.set_disabled("nobody", true)),
        code::NO_SUCH_USER
    );
    assert_eq!(code_of(admin.set_disabled("root", true)), code::FORBIDDEN);
}

#[test]
fn aliases_log_in_as_their_user() {
    let rig = Rig::mem(cheap());
    let ann = rig.user("ann");
    let _bob = rig.user("bob");
    ann.add_alias("Annie").unwrap();
    assert_eq!(code_of(ann.add_alias("bob")), code::NAME_TAKEN);
    let c = rig.client();
    let info = c.login("annie", "ann-password").unwrap();
    assert_eq!(info.name, "ann");
    // Registering an alias as a name is refused.
    assert_eq!(
        code_of(rig.client().register("annie", "password1")),
        code::NAME_TAKEN
    );
    c.remove_alias("annie").unwrap();
    assert_eq!(
        code_of(rig.client().login("annie", "ann-password")),
        code::BAD_CREDENTIALS
    );
    assert_eq!(code_of(c.remove_alias("annie")), code::NO_SUCH_USER);
    for i in 0..8 {
        c.add_alias(&format!("a{i}")).unwrap();
    }
    assert_eq!(code_of(c.add_alias("a8")), code::INVALID);
}

#[test]
fn registration_closed_unless_admin() {
    let mut cfg = cheap();
    cfg.accounts.open_registration = false;
    let rig = Rig::mem(cfg);
    let c = rig.client();
    assert_eq!(code_of(c.register("ann", "password1")), code::FORBIDDEN);
    let pw = rig.services.ensure_admin("root").unwrap().unwrap();
    c.login("root", &pw).unwrap();
    c.register("ann", "password1").unwrap();
}

#[test]
fn accounts_persist_across_reopen() {
    let dir = tempfile::tempdir().unwrap();
    {
        let s = Services::open_dir(dir.path(), cheap()).unwrap();
        let id = s.accounts.create_user("ann", "password1", false).unwrap();
        s.accounts.add_alias(id, "annie").unwrap();
        s.accounts.set_password(id, "password2").unwrap();
    }
    let s = Services::open_dir(dir.path(), cheap()).unwrap();
    let id = s.accounts.resolve("annie").unwrap();
    assert_eq!(
        s.accounts.authenticate("ann", "password2", None).unwrap(),
        id
    );
    assert_eq!(
        s.accounts
            .authenticate("ann", "password1", None)
            .unwrap_err()
            .code,
        code::BAD_CREDENTIALS
    );
    // One process at a time: the store is locked.
    assert!(Services::open_dir(dir.path(), cheap()).is_err());
}

#[test]
fn registrations_are_throttled_per_address_but_not_for_admins() {
    let mut cfg = cheap();
    cfg.accounts.registrations_per_addr = 3;
    let rig = Rig::mem(cfg);
    let c = rig.client();
    for i in 0..3 {
        c.register(&format!("u{i}"), "password1").unwrap();
    }
    let e = c.register("u3", "password1").unwrap_err();
    assert_eq!(e.code, code::THROTTLED, "{e}");
    // Failed attempts count too (each may cost a hash).
    assert_eq!(
        code_of(rig.client().register("u0", "password1")),
        code::THROTTLED
    );
    let pw = rig.services.ensure_admin("root").unwrap().unwrap();
    let admin = rig.client();
    admin.login("root", &pw).unwrap();
    admin.register("u3", "password1").unwrap();
    admin.register("u4", "password1").unwrap();
}

#[test]
fn attached_connections_act_as_the_user_while_the_session_lasts() {
    let mut cfg = cheap();
    cfg.accounts.max_attached = 2;
    let rig = Rig::mem(cfg);
    let ann = rig.user("ann");
    let uid = ann.whoami().unwrap().0;
    let ticket = ann.ticket().unwrap();
    assert_eq!(ticket.len(), 32);
    // A wrong ticket, another user's name, or no session: refused.
    let x = rig.client();
    let mut wrong = ticket.clone();
    wrong[0] ^= 1;
    assert_eq!(code_of(x.attach("ann", &wrong)), code::BAD_CREDENTIALS);
    rig.services
        .accounts
        .create_user("bob", "bob-password", false)
        .unwrap();
    assert_eq!(code_of(x.attach("bob", &ticket)), code::BAD_CREDENTIALS);
    assert_eq!(code_of(x.whoami()), code::NOT_LOGGED_IN);
    // Attached: acts as ann, without kicking her session.
    assert_eq!(x.attach("ANN", &ticket).unwrap(), uid);
    assert_eq!(x.whoami().unwrap(), (uid, "ann".to_owned()));
    assert_eq!(ann.whoami().unwrap().0, uid, "the session stays");
    // An attached connection issues no tickets; a session attaches at most
    // `max_attached`.
    assert_eq!(code_of(x.ticket()), code::NOT_LOGGED_IN);
    let y = rig.client();
    y.attach("ann", &ticket).unwrap();
    let z = rig.client();
    assert_eq!(code_of(z.attach("ann", &ticket)), zs_core::code::TOO_LARGE);
    // A new ticket replaces the old one.
    let t2 = ann.ticket().unwrap();
    assert_eq!(code_of(z.attach("ann", &ticket)), code::BAD_CREDENTIALS);
    // The session ends (logout): every attached connection loses the user.
    ann.logout().unwrap();
    assert_eq!(code_of(x.whoami()), code::NOT_LOGGED_IN);
    assert_eq!(code_of(y.whoami()), code::NOT_LOGGED_IN);
    assert_eq!(code_of(z.attach("ann", &t2)), code::BAD_CREDENTIALS);
    // A new session of ann: the old attachments stay dead.
    ann.login("ann", "ann-password").unwrap();
    assert_eq!(code_of(x.whoami()), code::NOT_LOGGED_IN);
    // Kicked by a second login: attached connections of the old session too.
    let t3 = ann.ticket().unwrap();
    z.attach("ann", &t3).unwrap();
    assert_eq!(z.whoami().unwrap().0, uid);
    let ann2 = rig.client();
    ann2.login("ann", "ann-password").unwrap();
    eventually("the kick", || z.whoami().is_err());
    assert_eq!(code_of(z.whoami()), code::NOT_LOGGED_IN);
}

#[test]
fn wrong_tickets_are_throttled_per_address() {
    let mut cfg = cheap();
    cfg.accounts.addr_failures = 3;
    let rig = Rig::mem(cfg);
    let ann = rig.user("ann");
    let ticket = ann.ticket().unwrap();
    let x = rig.client();
    for _ in 0..3 {
        assert_eq!(code_of(x.attach("ann", &[0u8; 32])), code::BAD_CREDENTIALS);
    }
    // Even the right ticket waits out the window now.
    assert_eq!(code_of(x.attach("ann", &ticket)), code::THROTTLED);
    // Oversized tickets are refused like wrong ones.
    let big = vec![7u8; 100_000];
    assert!(x.attach("ann", &big).is_err());
}

#[test]
fn tickets_expire() {
    let mut cfg = cheap();
    cfg.accounts.ticket_ttl = std::time::Duration::from_millis(200);
    let rig = Rig::mem(cfg);
    let ann = rig.user("ann");
    let ticket = ann.ticket().unwrap();
    std::thread::sleep(std::time::Duration::from_millis(400));
    assert_eq!(
        code_of(rig.client().attach("ann", &ticket)),
        code::BAD_CREDENTIALS
    );
}
