//! A conformance suite every [`Store`] backend must pass: call [`run`] on a fresh, empty store.
//! Panics (with a message naming the broken invariant) on the first failure.

use super::{
    AcmeAccount, AcmeEabKey, AcmeOrderRow, AuditEntry, AuditResult, AuthorityKind, AuthorityRecord,
    CaSettings, CertStatus, CertificateFilter, CertificateRecord, CertificateStatus, CrlDraft,
    CrossCertificate, Issuance, IssuedVia, IssuerLeaves, JobClaim, NewAuthority, NewCa,
    RevokedEntry, Store, StoreError, TokenRecord, TokenUse,
};
use crate::pki::Serial;

fn authority(id: &str, kind: AuthorityKind, serial: &str) -> AuthorityRecord {
    AuthorityRecord {
        id: id.into(),
        kind,
        env: (kind == AuthorityKind::Intermediate).then(|| id.to_string()),
        parent_id: (kind == AuthorityKind::Intermediate).then(|| "root".to_string()),
        serial: serial.into(),
        subject: format!("CN={id}"),
        cert_pem: format!("pem of {id}"),
        sealed_key: Some(format!("sealed key of {id}")),
        fingerprint: format!("{serial}{serial}"),
        not_before: 1_000,
        not_after: 1_000_000,
        created_at: 1_000,
        generation: 1,
        activates_at: None,
        retired_at: None,
        revoked_at: None,
        revocation_reason: None,
    }
}

fn audit(action: &str, at: i64, serial: Option<&str>) -> AuditEntry {
    AuditEntry {
        id: 0,
        at,
        actor: "cli:tester".into(),
        action: action.into(),
        env: Some("dev".into()),
        service: Some("api".into()),
        serial: serial.map(str::to_string),
        result: AuditResult::Ok,
        reason: None,
    }
}

fn cert(
    serial: &str,
    env: &str,
    service: &str,
    created_at: i64,
    not_after: i64,
) -> CertificateRecord {
    CertificateRecord {
        serial: serial.into(),
        issuer_id: env.into(),
        env: env.into(),
        service: service.into(),
        spiffe_id: format!("spiffe://example.internal/{env}/{service}"),
        dns_names: vec![format!("{service}.{env}.svc.example.internal")],
        ip_addresses: vec!["10.0.0.1".into()],
        key_type: "p256".into(),
        key_fingerprint: format!("key-{serial}"),
        fingerprint: format!("fp-{serial}"),
        not_before: created_at - 60,
        not_after,
        cert_pem: format!("pem {serial}"),
        issued_via: IssuedVia::Cli,
        issued_by: "cli:tester".into(),
        created_at,
        revoked_at: None,
        revocation_reason: None,
    }
}

fn serial(s: &str) -> Serial {
    s.parse().unwrap_or_else(|e| panic!("test serial {s}: {e}"))
}

/// Runs every check against `store`, which must be empty.
pub async fn run(store: &dyn Store) {
    store.ping().await.expect("ping answers");
    assert_eq!(
        store.settings().await.expect("settings"),
        None,
        "a fresh store has no CA"
    );

    let settings = CaSettings {
        trust_domain: "example.internal".into(),
        policy_path: "/etc/ca/policy.toml".into(),
        keys_sealed: true,
        root_offline: false,
        server_names: vec!["localhost".into(), "127.0.0.1".into()],
        created_at: 1_000,
        policy_sha256: Some("ab".repeat(32)),
        audit_key: None,
    };
    let ca = NewCa {
        settings: settings.clone(),
        authorities: vec![
            authority("root", AuthorityKind::Root, "01"),
            authority("dev", AuthorityKind::Intermediate, "02"),
            authority("prod", AuthorityKind::Intermediate, "03"),
            authority("_tls", AuthorityKind::Tls, "04"),
        ],
        audit: audit("init", 1_000, None),
    };
    store.initialize(&ca).await.expect("initialize");
    assert_eq!(store.settings().await.expect("settings"), Some(settings));
    match store.initialize(&ca).await {
        Err(StoreError::Conflict(_)) => {}
        other => panic!("a second initialize must conflict, got {other:?}"),
    }
    let auths = store.authorities().await.expect("authorities");
    let ids: Vec<&str> = auths.iter().map(|a| a.id.as_str()).collect();
    assert_eq!(
        ids,
        ["root", "dev", "prod", "_tls"],
        "root first, then intermediates by id, then the TLS issuer"
    );
    assert_eq!(
        store.authority("dev").await.expect("dev"),
        Some(ca.authorities[1].clone())
    );
    assert_eq!(store.authority("qa").await.expect("qa"), None);

    // Serials: authority serials count as used; reservation is exclusive.
    for used in ["01", "02"] {
        assert!(
            matches!(
                store.reserve_serials(&[serial(used)], 2_000).await,
                Err(StoreError::Conflict(_))
            ),
            "serial {used} of an authority must not be reusable"
        );
    }
    store
        .reserve_serials(&[serial("aa01")], 2_000)
        .await
        .expect("reserve");
    assert!(matches!(
        store.reserve_serials(&[serial("aa01")], 2_001).await,
        Err(StoreError::Conflict(_))
    ));
    // A block stands or falls whole: one taken serial, or one named twice, reserves none.
    for block in [["aa02", "aa01", "aa03"], ["aa02", "aa03", "aa02"]] {
        let block: Vec<Serial> = block.iter().map(|s| serial(s)).collect();
        match store.reserve_serials(&block, 2_001).await {
            Err(StoreError::Conflict(m)) => assert!(m.contains("aa0"), "{m}"),
            other => panic!("block {block:?}: {other:?}"),
        }
    }
    store
        .reserve_serials(&[serial("aa02"), serial("aa03")], 2_002)
        .await
        .expect("a refused block left some of its serials reserved");

    // Certificates: only reserved serials; row and audit commit together.
    let unreserved = cert("bb01", "dev", "api", 2_000, 9_000);
    assert!(
        store
            .insert_certificate(&unreserved, &audit("issue", 2_000, Some("bb01")))
            .await
            .is_err(),
        "a certificate with an unreserved serial must be refused"
    );
    assert_eq!(store.certificate(&serial("bb01")).await.expect("get"), None);

    let a = cert("aa01", "dev", "api", 2_000, 9_000);
    store
        .insert_certificate(&a, &audit("issue", 2_000, Some("aa01")))
        .await
        .expect("insert");
    assert_eq!(
        store.certificate(&serial("AA:01")).await.expect("get"),
        Some(a.clone())
    );
    assert!(matches!(
        store
            .insert_certificate(&a, &audit("issue", 2_000, Some("aa01")))
            .await,
        Err(StoreError::Conflict(_))
    ));

    let mut more = Vec::new();
    for (i, (env, service, not_after)) in [
        ("dev", "web", 3_000),
        ("prod", "api", 50_000),
        ("prod", "api", 60_000),
    ]
    .iter()
    .enumerate()
    {
        let s = format!("aa1{i}");
        store
            .reserve_serials(&[serial(&s)], 2_100)
            .await
            .expect("reserve");
        let c = cert(&s, env, service, 2_100 + i as i64, *not_after);
        store
            .insert_certificate(&c, &audit("issue", 2_100, Some(&s)))
            .await
            .expect("insert");
        more.push(c);
    }

    let list = |f: CertificateFilter| async move {
        store
            .list_certificates(&f)
            .await
            .expect("list")
            .into_iter()
            .map(|c| c.serial)
            .collect::<Vec<_>>()
    };
    let now = 5_000;
    assert_eq!(
        list(CertificateFilter {
            now,
            ..Default::default()
        })
        .await,
        ["aa12", "aa11", "aa10", "aa01"],
        "newest first"
    );
    assert_eq!(
        list(CertificateFilter {
            env: Some("prod".into()),
            now,
            ..Default::default()
        })
        .await,
        ["aa12", "aa11"]
    );
    assert_eq!(
        list(CertificateFilter {
            env: Some("dev".into()),
            service: Some("web".into()),
            now,
            ..Default::default()
        })
        .await,
        ["aa10"]
    );
    assert_eq!(
        list(CertificateFilter {
            status: Some(CertStatus::Expired),
            now,
            ..Default::default()
        })
        .await,
        ["aa10"],
        "not_after 3000 is expired at 5000"
    );
    assert_eq!(
        list(CertificateFilter {
            status: Some(CertStatus::Valid),
            now,
            ..Default::default()
        })
        .await,
        ["aa12", "aa11", "aa01"]
    );
    assert!(
        list(CertificateFilter {
            status: Some(CertStatus::Revoked),
            now,
            ..Default::default()
        })
        .await
        .is_empty()
    );
    assert_eq!(
        list(CertificateFilter {
            status: Some(CertStatus::Valid),
            not_after_before: Some(now + 50_000),
            now,
            ..Default::default()
        })
        .await,
        ["aa11", "aa01"],
        "expiring within the window"
    );
    assert_eq!(
        list(CertificateFilter {
            limit: Some(1),
            now,
            ..Default::default()
        })
        .await,
        ["aa12"]
    );
    assert_eq!(a.status(now), CertStatus::Valid);
    assert_eq!(more[0].status(now), CertStatus::Expired);

    // Audit: everything above was logged, in order, and `since` filters.
    store
        .append_audit(&AuditEntry {
            result: AuditResult::Denied,
            reason: Some("denied by policy rule `services.api.dns`".into()),
            ..audit("issue", 2_500, None)
        })
        .await
        .expect("append");
    let all = store.audit_entries(None, 1000).await.expect("audit");
    let actions: Vec<&str> = all.iter().map(|e| e.action.as_str()).collect();
    assert_eq!(
        actions,
        ["init", "issue", "issue", "issue", "issue", "issue"]
    );
    assert!(all.windows(2).all(|w| w[0].id < w[1].id), "ids increase");
    assert_eq!(all[1].serial.as_deref(), Some("aa01"));
    let since = store.audit_entries(Some(2_500), 1000).await.expect("audit");
    assert_eq!(since.len(), 1);
    assert_eq!(since[0].result, AuditResult::Denied);
    assert_eq!(store.audit_entries(None, 2).await.expect("audit").len(), 2);

    let live = store.count_live_certificates(now).await.expect("count");
    assert_eq!(live, [("dev".to_string(), 1), ("prod".to_string(), 2)]);

    tokens(store).await;
    revocation(store, now).await;
    crl_counters(store, now).await;
    group_commit(store).await;
    jobs(store).await;
    policy(store).await;
    audit_chain(store).await;
    rotation(store, now).await;
    acme(store, now).await;
}

/// The ACME rows: single-use nonces, accounts unique per key and environment, EAB keys spent
/// once with the account, orders written with a version check.
async fn acme(store: &dyn Store, now: i64) {
    store.acme_put_nonce("n1", now + 10).await.expect("nonce");
    store.acme_put_nonce("n2", now - 1).await.expect("nonce");
    assert!(store.acme_take_nonce("n1", now).await.expect("take"));
    assert!(
        !store.acme_take_nonce("n1", now).await.expect("take"),
        "single use"
    );
    assert!(
        !store.acme_take_nonce("n2", now).await.expect("take"),
        "expired"
    );
    assert!(!store.acme_take_nonce("nope", now).await.expect("take"));
    store.acme_put_nonce("n3", now - 5).await.expect("nonce");
    assert_eq!(store.acme_prune(now).await.expect("prune"), 1);

    let eab = AcmeEabKey {
        kid: "kid1".into(),
        env: "staging".into(),
        service: "api".into(),
        created_at: now,
        expires_at: now + 100,
        created_by: "cli:tester".into(),
        used_at: None,
        account_id: None,
    };
    store
        .acme_create_eab(&eab, &audit("acme-eab-create", now, None))
        .await
        .expect("eab");
    assert_eq!(
        store.acme_eab("kid1").await.expect("eab"),
        Some(eab.clone())
    );
    let account = |id: &str, thumb: &str, kid: Option<&str>| AcmeAccount {
        id: id.into(),
        env: "staging".into(),
        service: "api".into(),
        jwk: format!("{{\"k\":\"{thumb}\"}}"),
        thumbprint: thumb.into(),
        status: "valid".into(),
        contact: vec!["mailto:ops@example.com".into()],
        eab_kid: kid.map(str::to_string),
        created_at: now,
    };
    let a1 = account("a1", "t1", Some("kid1"));
    store
        .acme_create_account(&a1, &audit("acme-account", now, None))
        .await
        .expect("account");
    assert_eq!(
        store.acme_account("a1").await.expect("get"),
        Some(a1.clone())
    );
    assert_eq!(
        store
            .acme_eab("kid1")
            .await
            .expect("eab")
            .and_then(|k| k.account_id),
        Some("a1".into())
    );
    match store
        .acme_create_account(
            &account("a2", "t2", Some("kid1")),
            &audit("acme-account", now, None),
        )
        .await
    {
        Err(StoreError::TokenUsedUp(_)) => {}
        other => panic!("an EAB key binds one account, got {other:?}"),
    }
    assert_eq!(store.acme_account("a2").await.expect("get"), None);
    match store
        .acme_create_account(
            &account("a3", "t1", None),
            &audit("acme-account", now, None),
        )
        .await
    {
        Err(StoreError::Conflict(_)) => {}
        other => panic!("one account per key and environment, got {other:?}"),
    }
    assert_eq!(
        store
            .acme_account_by_key("staging", "t1")
            .await
            .expect("by key"),
        Some(a1.clone())
    );
    assert_eq!(
        store
            .acme_account_by_key("dev", "t1")
            .await
            .expect("by key"),
        None
    );
    let a4 = account("a4", "t4", None);
    store
        .acme_create_account(&a4, &audit("acme-account", now, None))
        .await
        .expect("account");
    let mut moved = a4.clone();
    moved.thumbprint = "t1".into();
    match store
        .acme_update_account(&moved, &audit("acme-key-change", now, None))
        .await
    {
        Err(StoreError::Conflict(_)) => {}
        other => panic!("a key of another account, got {other:?}"),
    }
    let mut off = a4.clone();
    off.status = "deactivated".into();
    store
        .acme_update_account(&off, &audit("acme-account-update", now, None))
        .await
        .expect("update");
    assert_eq!(store.acme_account("a4").await.expect("get"), Some(off));
    assert_eq!(
        store
            .acme_accounts(Some("staging"))
            .await
            .expect("list")
            .iter()
            .map(|a| a.id.as_str())
            .collect::<Vec<_>>(),
        ["a1", "a4"]
    );
    assert!(
        store
            .acme_accounts(Some("dev"))
            .await
            .expect("list")
            .is_empty()
    );

    let order = AcmeOrderRow {
        id: "o1".into(),
        account_id: "a1".into(),
        env: "staging".into(),
        status: "pending".into(),
        expires_at: now + 100,
        document: "{}".into(),
        version: 1,
        cert_serial: None,
        created_at: now,
    };
    store.acme_create_order(&order).await.expect("order");
    let mut next = order.clone();
    next.version = 2;
    next.status = "valid".into();
    next.cert_serial = Some("c0ffee".into());
    assert!(store.acme_save_order(&next, 1).await.expect("save"));
    let mut stale = order.clone();
    stale.version = 2;
    stale.status = "invalid".into();
    assert!(
        !store.acme_save_order(&stale, 1).await.expect("save"),
        "a write based on an old version loses"
    );
    assert_eq!(
        store.acme_order("o1").await.expect("get"),
        Some(next.clone())
    );
    assert_eq!(
        store.acme_order_by_cert("c0ffee").await.expect("get"),
        Some(next)
    );
    assert_eq!(store.acme_orders_of("a1").await.expect("of"), ["o1"]);

    // Pruning: unfinished orders once expired, finished ones once their certificate expired
    // (aa10 expired at 3,000; aa11 lives). The valid order o1 names no stored certificate.
    let row = |id: &str, status: &str, expires_at: i64, cert: Option<&str>| AcmeOrderRow {
        id: id.into(),
        status: status.into(),
        expires_at,
        cert_serial: cert.map(str::to_string),
        ..order.clone()
    };
    for o in [
        row("stale", "pending", now - 1, None),
        row("waiting", "ready", now + 100, None),
        row("old-cert", "valid", now - 1, Some("aa10")),
        row("live-cert", "valid", now - 1, Some("aa11")),
    ] {
        store.acme_create_order(&o).await.expect("order");
    }
    assert_eq!(store.acme_prune(now).await.expect("prune"), 2);
    let mut left = store.acme_orders_of("a1").await.expect("of");
    left.sort();
    assert_eq!(left, ["live-cert", "o1", "waiting"]);
}

/// Generations of authorities: one new generation per rotation, cross-certificates, retirement,
/// revocation on the root's CRL, and leaves counted per issuer.
async fn rotation(store: &dyn Store, now: i64) {
    let generation = |id: &str, kind: AuthorityKind, env: Option<&str>, n: i64, serial: &str| {
        let mut a = authority(id, kind, serial);
        a.env = env.map(str::to_string);
        a.generation = n;
        a.activates_at = Some(now + 10);
        a.created_at = now;
        a
    };
    let add = |record: AuthorityRecord| NewAuthority {
        record,
        cross: Vec::new(),
        retire: Vec::new(),
        revoke: None,
        audit: audit("ca-rotate", now, None),
    };
    let dev2 = generation("dev.2", AuthorityKind::Intermediate, Some("dev"), 2, "d002");
    store
        .add_authority(&add(dev2.clone()))
        .await
        .expect("dev.2");
    assert_eq!(store.authority("dev.2").await.expect("dev.2"), Some(dev2));
    // A second rotation racing for the same generation writes nothing.
    let twin = generation(
        "dev.2b",
        AuthorityKind::Intermediate,
        Some("dev"),
        2,
        "d0b2",
    );
    match store.add_authority(&add(twin)).await {
        Err(StoreError::Conflict(_)) => {}
        other => panic!("a second generation 2 of dev must conflict, got {other:?}"),
    }
    assert_eq!(store.authority("dev.2b").await.expect("lookup"), None);
    store
        .reserve_serials(&[serial("d0b2")], now)
        .await
        .expect("the losing rotation's serial was not kept");

    // A root rotation: the new root, the link certificates, the old root's retirement.
    let root2 = generation("root.2", AuthorityKind::Root, None, 2, "f002");
    let link = CrossCertificate {
        subject_id: "root.2".into(),
        issuer_id: "root".into(),
        serial: "f0c1".into(),
        cert_pem: "link pem".into(),
        not_before: now,
        not_after: now + 1_000,
        created_at: now,
    };
    store
        .add_authority(&NewAuthority {
            cross: vec![link.clone()],
            retire: vec![("root".into(), now + 100)],
            ..add(root2)
        })
        .await
        .expect("root.2");
    assert_eq!(store.cross_certificates().await.expect("links"), vec![link]);
    assert_eq!(
        store
            .authority("root")
            .await
            .expect("root")
            .and_then(|r| r.retired_at),
        Some(now + 100)
    );
    assert!(
        store.reserve_serials(&[serial("f0c1")], now).await.is_err(),
        "a link certificate's serial counts as used"
    );

    // A compromise: the new generation and the old one's revocation in one transaction; the
    // root's CRL lists it.
    let prod2 = generation(
        "prod.2",
        AuthorityKind::Intermediate,
        Some("prod"),
        2,
        "e002",
    );
    store
        .add_authority(&NewAuthority {
            revoke: Some(("prod".into(), now, "ca-compromise".into())),
            ..add(prod2)
        })
        .await
        .expect("prod.2");
    let prod = store.authority("prod").await.expect("prod").expect("prod");
    assert_eq!(
        (prod.revoked_at, prod.revocation_reason.as_deref()),
        (Some(now), Some("ca-compromise"))
    );
    let prod3 = generation(
        "prod.3",
        AuthorityKind::Intermediate,
        Some("prod"),
        3,
        "e003",
    );
    match store
        .add_authority(&NewAuthority {
            revoke: Some(("prod".into(), now, "ca-compromise".into())),
            ..add(prod3)
        })
        .await
    {
        Err(StoreError::Conflict(_)) => {}
        other => panic!("revoking a revoked authority must conflict, got {other:?}"),
    }
    assert_eq!(store.authority("prod.3").await.expect("lookup"), None);

    // Nothing a revoked issuer signed commits any more, and its item spends nothing.
    store
        .insert_token(&TokenRecord {
            id: "r1".into(),
            token_hash: "hash-r1".into(),
            env: "prod".into(),
            service: "api".into(),
            max_uses: 5,
            uses: 0,
            created_at: now,
            expires_at: now + 1_000,
            created_by: "cli:tester".into(),
            revoked_at: None,
        })
        .await
        .expect("token");
    store
        .reserve_serials(&[serial("ee01"), serial("ee02")], now)
        .await
        .expect("reserve");
    let item = |s: &str, issuer: &str| Issuance {
        cert: CertificateRecord {
            issuer_id: issuer.into(),
            ..cert(s, "prod", "api", now, now + 100)
        },
        audit: audit("enroll-after-revocation", now, Some(s)),
        token: Some(TokenUse {
            id: "r1".into(),
            at: now,
        }),
    };
    let results = store
        .commit_issuances(&[item("ee01", "prod"), item("ee02", "prod.2")])
        .await
        .expect("batch");
    assert!(
        matches!(&results[0], Err(StoreError::IssuerRevoked(id)) if id == "prod"),
        "a revoked issuer fails its item: {:?}",
        results[0]
    );
    assert!(results[1].is_ok(), "{:?}", results[1]);
    assert!(
        store
            .certificate(&serial("ee01"))
            .await
            .expect("get")
            .is_none()
    );
    assert_eq!(
        store.token("r1").await.expect("get").map(|t| t.uses),
        Some(1),
        "only the committed item spent a use"
    );
    let audited: Vec<Option<String>> = store
        .audit_entries(None, 10_000)
        .await
        .expect("audit")
        .into_iter()
        .filter(|e| e.action == "enroll-after-revocation")
        .map(|e| e.serial)
        .collect();
    assert_eq!(audited, [Some("ee02".to_string())]);
    let listed = std::sync::Mutex::new(Vec::new());
    let sign = |_: i64, entries: &[RevokedEntry]| -> Result<Vec<u8>, String> {
        *listed.lock().expect("lock") = entries.to_vec();
        Ok(vec![1])
    };
    store
        .generate_crl(
            &CrlDraft {
                issuer_id: "root".into(),
                this_update: now,
                next_update: now + 10,
                entries_after: None,
            },
            &sign,
        )
        .await
        .expect("root crl");
    let listed = listed.into_inner().expect("lock");
    assert_eq!(
        listed
            .iter()
            .map(|e| (e.serial.as_str(), e.reason.as_str()))
            .collect::<Vec<_>>(),
        [("03", "ca-compromise")],
        "the root CRL lists exactly the revoked intermediate"
    );

    // Retirement is recorded once.
    assert!(store.retire_authority("dev", now).await.expect("retire"));
    assert!(
        !store
            .retire_authority("dev", now + 5)
            .await
            .expect("retire")
    );
    assert_eq!(
        store
            .authority("dev")
            .await
            .expect("dev")
            .and_then(|a| a.retired_at),
        Some(now)
    );

    // Leaves per issuer: unexpired ones, and of those the unrevoked.
    let ids = ["d201", "d202"];
    store
        .reserve_serials(&ids.map(serial), now)
        .await
        .expect("reserve");
    for id in ids {
        let c = CertificateRecord {
            issuer_id: "dev.2".into(),
            ..cert(id, "dev", "rot", now, now + 500)
        };
        store
            .insert_certificate(&c, &audit("issue", now, Some(id)))
            .await
            .expect("insert");
    }
    store
        .revoke_certificate(
            &serial("d202"),
            now,
            "superseded",
            &audit("revoke", now, Some("d202")),
        )
        .await
        .expect("revoke");
    let leaves = store.issuer_leaves(now).await.expect("leaves");
    assert_eq!(
        leaves.get("dev.2"),
        Some(&IssuerLeaves {
            unexpired: 2,
            live: 1
        })
    );
    assert!(
        !store
            .issuer_leaves(now + 500)
            .await
            .expect("leaves")
            .contains_key("dev.2"),
        "expired leaves are not counted"
    );
}

async fn audit_chain(store: &dyn Store) {
    let entries = store.audit_chain(0, 100_000).await.expect("chain");
    assert!(entries.len() > 10);
    let mut prev = "genesis".to_string();
    for c in &entries {
        assert_eq!(
            c.prev_hash.as_deref(),
            Some(prev.as_str()),
            "entry {} links to the one before it",
            c.entry.id
        );
        let hash = super::audit_hash(&prev, &c.entry);
        assert_eq!(c.entry_hash.as_deref(), Some(hash.as_str()));
        prev = hash;
    }
    let last = entries.last().expect("entries");
    assert_eq!(
        store.audit_head().await.expect("head"),
        (last.entry.id, prev.clone())
    );
    let page = store.audit_chain(last.entry.id - 2, 1).await.expect("page");
    assert_eq!(page.len(), 1);
    assert_eq!(page[0].entry.id, last.entry.id - 1);

    let sign = |id: i64, hash: &str, at: i64| format!("mac {id} {hash} {at}");
    let cp = store
        .audit_checkpoint(77_000, &sign)
        .await
        .expect("checkpoint");
    assert_eq!(
        (cp.last_id, cp.last_hash.as_str(), cp.at),
        (last.entry.id, prev.as_str(), 77_000)
    );
    assert_eq!(cp.mac, format!("mac {} {prev} 77000", last.entry.id));
    store
        .append_audit(&audit("after-checkpoint", 77_001, None))
        .await
        .expect("append");
    let cps = store.audit_checkpoints().await.expect("checkpoints");
    assert_eq!(cps, std::slice::from_ref(&cp));
    let (head_id, _) = store.audit_head().await.expect("head");
    assert!(head_id > cp.last_id, "appends move the head on");

    assert!(store.set_audit_key("sealed audit key").await.expect("set"));
    assert!(
        !store.set_audit_key("another").await.expect("set"),
        "the first audit key stays"
    );
    assert_eq!(
        store
            .settings()
            .await
            .expect("settings")
            .expect("a CA")
            .audit_key
            .as_deref(),
        Some("sealed audit key")
    );
}

async fn jobs(store: &dyn Store) {
    let claim = |owner: &str, period: i64, now: i64| JobClaim {
        job: "crl-refresh".into(),
        period,
        owner: owner.into(),
        now,
        lease_until: now + 60,
    };
    assert!(store.claim_job(&claim("a", 900, 900)).await.expect("claim"));
    assert!(
        !store.claim_job(&claim("b", 900, 901)).await.expect("claim"),
        "a period is claimed once"
    );
    assert!(
        !store
            .claim_job(&claim("b", 1_800, 950))
            .await
            .expect("claim"),
        "no overlap: the next period waits while the last run holds its lease"
    );
    store
        .finish_job(&claim("a", 900, 900), 905)
        .await
        .expect("finish");
    assert!(
        !store
            .claim_job(&claim("b", 900, 2_000))
            .await
            .expect("claim"),
        "a finished period is never run again"
    );
    assert!(
        store
            .claim_job(&claim("b", 1_800, 1_801))
            .await
            .expect("claim"),
        "the next period is free once the last run finished"
    );
    assert!(
        !store
            .claim_job(&claim("a", 2_700, 1_860))
            .await
            .expect("claim"),
        "within its lease the owner holds the job"
    );
    assert!(
        store
            .claim_job(&claim("a", 2_700, 1_862))
            .await
            .expect("claim"),
        "an owner that never finished loses the job when its lease runs out"
    );
    store
        .finish_job(&claim("b", 1_800, 1_801), 1_900)
        .await
        .expect("a former owner's finish is a no-op");
    assert!(
        !store
            .claim_job(&claim("c", 3_600, 1_900))
            .await
            .expect("claim"),
        "still held by its new owner: the stale owner's finish did not count"
    );
    assert!(
        !store
            .claim_job(&claim("c", 600, 5_000))
            .await
            .expect("claim"),
        "an earlier period than the last claimed is never run"
    );
}

async fn policy(store: &dyn Store) {
    let hash = "cd".repeat(32);
    store
        .publish_policy(&hash, &audit("policy-publish", 9_000, None))
        .await
        .expect("publish");
    let settings = store.settings().await.expect("settings").expect("a CA");
    assert_eq!(settings.policy_sha256.as_deref(), Some(hash.as_str()));
    let last = store.audit_entries(Some(9_000), 10).await.expect("audit");
    assert!(last.iter().any(|e| e.action == "policy-publish"));
}

async fn group_commit(store: &dyn Store) {
    for (id, max_uses) in [("g1", 1), ("g2", 2)] {
        store
            .insert_token(&TokenRecord {
                id: id.into(),
                token_hash: format!("hash-{id}"),
                env: "ci".into(),
                service: "api".into(),
                max_uses,
                uses: 0,
                created_at: 1_000,
                expires_at: 10_000,
                created_by: "cli:tester".into(),
                revoked_at: None,
            })
            .await
            .expect("token");
    }
    assert!(store.spend_token("g1", 5_000).await.expect("spend"));

    // Serials reserved in bulk, all or nothing.
    let bulk: Vec<Serial> = ["cc01", "cc02", "cc03", "cc04"].map(serial).to_vec();
    store.reserve_serials(&bulk, 3_000).await.expect("reserve");
    assert!(
        matches!(
            store
                .reserve_serials(&[serial("cc05"), serial("cc01")], 3_000)
                .await,
            Err(StoreError::Conflict(_))
        ),
        "a batch holding a used serial is refused"
    );
    store
        .reserve_serials(&[serial("cc05")], 3_000)
        .await
        .expect("the refused batch reserved nothing");

    let item = |s: &str, token: Option<&str>| Issuance {
        cert: cert(s, "dev", "api", 3_000, 9_000),
        audit: audit("batch-enroll", 3_000, Some(s)),
        token: token.map(|t| TokenUse {
            id: t.into(),
            at: 5_000,
        }),
    };
    let results = store
        .commit_issuances(&[
            item("cc01", Some("g2")),
            item("cc02", Some("g1")),
            item("aa01", None),
            item("dd01", None),
            item("cc03", Some("g2")),
            item("cc04", Some("g2")),
        ])
        .await
        .expect("the batch commits");
    assert!(results[0].is_ok(), "{:?}", results[0]);
    assert!(
        matches!(results[1], Err(StoreError::TokenUsedUp(_))),
        "a used-up token fails its item: {:?}",
        results[1]
    );
    assert!(
        matches!(results[2], Err(StoreError::Conflict(_))),
        "a stored serial fails its item: {:?}",
        results[2]
    );
    assert!(
        matches!(results[3], Err(StoreError::NotFound(_))),
        "an unreserved serial fails its item: {:?}",
        results[3]
    );
    assert!(results[4].is_ok(), "{:?}", results[4]);
    assert!(
        matches!(results[5], Err(StoreError::TokenUsedUp(_))),
        "the third use of a two-use token fails: {:?}",
        results[5]
    );
    for (s, stored) in [
        ("cc01", true),
        ("cc02", false),
        ("cc03", true),
        ("cc04", false),
        ("dd01", false),
    ] {
        assert_eq!(
            store.certificate(&serial(s)).await.expect("get").is_some(),
            stored,
            "{s}"
        );
    }
    assert_eq!(
        store.token("g2").await.expect("get").map(|t| t.uses),
        Some(2),
        "each committed item spent exactly one use; failed items spent none"
    );
    let audited: Vec<Option<String>> = store
        .audit_entries(None, 10_000)
        .await
        .expect("audit")
        .into_iter()
        .filter(|e| e.action == "batch-enroll")
        .map(|e| e.serial)
        .collect();
    assert_eq!(
        audited,
        [Some("cc01".to_string()), Some("cc03".to_string())],
        "failed items leave no audit entry"
    );
    let again = store
        .commit_issuances(&[item("cc02", None)])
        .await
        .expect("batch");
    assert!(
        again[0].is_ok(),
        "a reserved serial whose item failed can still be stored: {:?}",
        again[0]
    );
    assert!(
        store
            .commit_issuances(&[])
            .await
            .expect("empty batch")
            .is_empty()
    );
}

async fn revocation(store: &dyn Store, now: i64) {
    // aa11 and aa12 are prod/api (not_after 50000, 60000); aa10 is dev/web, expired at 3000.
    let revoke_audit = audit("revoke", now, Some("aa11"));
    store
        .revoke_certificate(&serial("aa11"), now, "key-compromise", &revoke_audit)
        .await
        .expect("revoke");
    match store
        .revoke_certificate(&serial("aa11"), now, "superseded", &revoke_audit)
        .await
    {
        Err(StoreError::Conflict(_)) => {}
        other => panic!("revoking twice must conflict, got {other:?}"),
    }
    match store
        .revoke_certificate(&serial("ffff"), now, "superseded", &revoke_audit)
        .await
    {
        Err(StoreError::NotFound(_)) => {}
        other => panic!("revoking an unknown serial must be NotFound, got {other:?}"),
    }
    let rec = store
        .certificate(&serial("aa11"))
        .await
        .expect("get")
        .expect("exists");
    assert_eq!(
        (rec.revoked_at, rec.revocation_reason.as_deref()),
        (Some(now), Some("key-compromise"))
    );
    assert_eq!(rec.status(now), CertStatus::Revoked);
    for s in ["aa11", "aa12"] {
        let rec = store.certificate(&serial(s)).await.expect("get");
        let status = store.certificate_status(&serial(s)).await.expect("status");
        assert_eq!(
            status,
            rec.map(|r| CertificateStatus {
                issuer_id: r.issuer_id,
                revoked_at: r.revoked_at,
                revocation_reason: r.revocation_reason,
            }),
            "{s}"
        );
    }
    assert_eq!(
        store
            .certificate_status(&serial("ffff"))
            .await
            .expect("status"),
        None
    );
    store
        .revoke_certificate(
            &serial("aa10"),
            now,
            "superseded",
            &audit("revoke", now, Some("aa10")),
        )
        .await
        .expect("revoke an expired one");
    let entries = store.revoked_entries("prod", now).await.expect("entries");
    assert_eq!(
        entries,
        [RevokedEntry {
            serial: "aa11".into(),
            revoked_at: now,
            reason: "key-compromise".into()
        }]
    );
    assert!(
        store
            .revoked_entries("dev", now)
            .await
            .expect("entries")
            .is_empty(),
        "expired before the cut-off: dropped"
    );
    assert_eq!(
        store
            .revoked_entries("dev", 0)
            .await
            .expect("entries")
            .len(),
        1,
        "within the lookback: kept"
    );
    let audits = store.audit_entries(None, 1000).await.expect("audit");
    assert_eq!(
        audits.iter().filter(|e| e.action == "revoke").count(),
        2,
        "one entry per successful revocation"
    );

    // CRLs: numbers from a counter row, 1, 2, ... per issuer, entries read in the same
    // transaction, the result stored as the issuer's current CRL.
    assert_eq!(store.crl("dev").await.expect("crl"), None);
    let draft = |issuer: &str, entries_after: Option<i64>| CrlDraft {
        issuer_id: issuer.into(),
        this_update: now,
        next_update: now + 10,
        entries_after,
    };
    let seen = std::sync::Mutex::new(Vec::new());
    let sign = |number: i64, entries: &[RevokedEntry]| -> Result<Vec<u8>, String> {
        seen.lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((number, entries.len()));
        Ok(vec![number as u8; 3])
    };
    let first = store
        .generate_crl(&draft("dev", Some(0)), &sign)
        .await
        .expect("crl 1");
    assert_eq!((first.number, first.der.clone()), (1, vec![1u8; 3]));
    let second = store
        .generate_crl(&draft("dev", Some(now)), &sign)
        .await
        .expect("crl 2");
    assert_eq!(second.number, 2);
    assert_eq!(
        store
            .generate_crl(&draft("prod", Some(now)), &sign)
            .await
            .expect("prod")
            .number,
        1,
        "numbers are per issuer"
    );
    assert_eq!(
        store
            .generate_crl(&draft("root", None), &sign)
            .await
            .expect("root")
            .number,
        1
    );
    assert_eq!(
        *seen.lock().unwrap_or_else(|e| e.into_inner()),
        [(1, 1), (2, 0), (1, 1), (1, 0)],
        "entries as of each generation, none for the root"
    );
    assert_eq!(store.crl("dev").await.expect("crl"), Some(second.clone()));
    let failing = |_: i64, _: &[RevokedEntry]| -> Result<Vec<u8>, String> { Err("no key".into()) };
    assert!(matches!(
        store.generate_crl(&draft("dev", Some(now)), &failing).await,
        Err(StoreError::Signing(_))
    ));
    assert_eq!(
        store.crl("dev").await.expect("crl"),
        Some(second),
        "a failed signature changes nothing"
    );
    assert_eq!(
        store
            .generate_crl(&draft("dev", Some(now)), &sign)
            .await
            .expect("crl 3")
            .number,
        3,
        "the number of a rolled-back generation was never published, so it is handed out again"
    );
    assert!(matches!(
        store.generate_crl(&draft("nope", None), &sign).await,
        Err(StoreError::Database(_))
    ));

    assert_eq!(store.prune_tokens(20_000).await.expect("prune"), 4);
    assert!(store.list_tokens(None).await.expect("list").is_empty());
}

/// After [`revocation`]: dev's counter at 3, prod's and root's at 1, none for `_tls`.
async fn crl_counters(store: &dyn Store, now: i64) {
    let sign = |number: i64, _: &[RevokedEntry]| -> Result<Vec<u8>, String> {
        Ok(number.to_be_bytes().to_vec())
    };
    let draft = |issuer: &str| CrlDraft {
        issuer_id: issuer.into(),
        this_update: now,
        next_update: now + 10,
        entries_after: Some(now),
    };
    let counters = |v: &[(&str, i64)]| -> Vec<(String, i64)> {
        v.iter().map(|(i, n)| (i.to_string(), *n)).collect()
    };
    assert_eq!(
        store.raise_crl_numbers(2).await.expect("raise"),
        counters(&[("_tls", 2), ("dev", 3), ("prod", 2), ("root", 2)]),
        "raised to the floor, created where missing, never lowered"
    );
    assert_eq!(
        store
            .generate_crl(&draft("prod"), &sign)
            .await
            .expect("crl")
            .number,
        3
    );
    let floor = 1_700_000_000_000;
    assert_eq!(
        store.raise_crl_numbers(floor).await.expect("raise"),
        counters(&[
            ("_tls", floor),
            ("dev", floor),
            ("prod", floor),
            ("root", floor)
        ])
    );
    let next = store.generate_crl(&draft("dev"), &sign).await.expect("crl");
    assert_eq!(next.number, floor + 1);
    assert_eq!(store.crl("dev").await.expect("crl"), Some(next));
    assert_eq!(
        store.raise_crl_numbers(5).await.expect("raise")[1],
        ("dev".to_string(), floor + 1),
        "a lower floor changes nothing"
    );
}

async fn tokens(store: &dyn Store) {
    let token = |id: &str, max_uses: u32, expires_at: i64| TokenRecord {
        id: id.into(),
        token_hash: format!("hash-{id}"),
        env: "ci".into(),
        service: "api".into(),
        max_uses,
        uses: 0,
        created_at: 1_000,
        expires_at,
        created_by: "cli:tester".into(),
        revoked_at: None,
    };
    let single = token("t1", 1, 10_000);
    store.insert_token(&single).await.expect("insert");
    assert!(matches!(
        store.insert_token(&single).await,
        Err(StoreError::Conflict(_))
    ));
    assert_eq!(store.token("t1").await.expect("get"), Some(single.clone()));
    assert_eq!(store.token("nope").await.expect("get"), None);

    assert!(
        !store.spend_token("t1", 10_000).await.expect("spend"),
        "expired at 10000"
    );
    assert!(store.spend_token("t1", 5_000).await.expect("spend"));
    assert!(
        !store.spend_token("t1", 5_000).await.expect("spend"),
        "single use"
    );
    assert!(!store.spend_token("nope", 5_000).await.expect("spend"));

    let multi = token("t2", 3, 10_000);
    store.insert_token(&multi).await.expect("insert");
    for _ in 0..3 {
        assert!(store.spend_token("t2", 5_000).await.expect("spend"));
    }
    assert!(
        !store.spend_token("t2", 5_000).await.expect("spend"),
        "cap reached"
    );

    let revocable = token("t3", 5, 10_000);
    store.insert_token(&revocable).await.expect("insert");
    assert!(store.revoke_token("t3", 6_000).await.expect("revoke"));
    assert!(
        !store.revoke_token("t3", 6_001).await.expect("revoke"),
        "already revoked"
    );
    assert!(
        !store.spend_token("t3", 6_500).await.expect("spend"),
        "revoked"
    );

    let usable: Vec<String> = store
        .list_tokens(Some(5_000))
        .await
        .expect("list")
        .into_iter()
        .map(|t| t.id)
        .collect();
    assert!(
        usable.is_empty(),
        "t1 and t2 used up, t3 revoked: {usable:?}"
    );
    let fresh = token("t4", 2, 10_000);
    store.insert_token(&fresh).await.expect("insert");
    let usable: Vec<String> = store
        .list_tokens(Some(5_000))
        .await
        .expect("list")
        .into_iter()
        .map(|t| t.id)
        .collect();
    assert_eq!(usable, ["t4"]);
    assert_eq!(store.list_tokens(None).await.expect("list").len(), 4);
}
