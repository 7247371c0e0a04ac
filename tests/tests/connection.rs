//! How a bus reaches its server (README, "A service with two handlers, and its configuration"): token and nkey credentials, TLS (server-only
//! and mutual, from the builder and from `EVENTBUS_TLS_*`), and a replicated stream on a
//! three-node cluster that keeps handling events after its leader dies.
//!
//! Every test starts its own server (or cluster); certificates and nkeys are generated at test
//! time. Every handler of this file is registered in the test binary, so each bus names the
//! handlers it runs; each test has an aggregate (`cn_*`) of its own.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use async_nats::jetstream;
use eventbus::prelude::*;
use eventbus::{Config, Credentials, ErrorKind, StreamOptions, TlsConfig};
use eventbus_tests::{wait_for, wait_until, NatsCluster, NatsServer, Retries};

/// How long any one condition may take to come true.
const TIMEOUT: Duration = Duration::from_secs(30);

/// A publishing-only builder for `url` that ignores the environment.
fn publisher(url: impl Into<String>, service: &str) -> eventbus::Builder {
    eventbus::builder()
        .no_env()
        .url(url)
        .service(service)
        .without_handlers()
}

/// Starts `builder`, publishes one event and checks the stream it landed in.
async fn starts_and_publishes<E: EventSet>(builder: eventbus::Builder, event: &E, stream: &str) {
    let bus = builder
        .start()
        .await
        .unwrap_or_else(|e| panic!("start: {e}"));
    let published = bus
        .publish(event)
        .await
        .unwrap_or_else(|e| panic!("publish: {e}"));
    assert_eq!(published.stream, stream);
    bus.shutdown().await.unwrap();
}

/// Starts `builder` expecting a connection error.
async fn fails_to_connect(builder: eventbus::Builder, what: &str) {
    match builder.start().await {
        Ok(bus) => {
            bus.shutdown().await.ok();
            panic!("{what}: start() succeeded, expected a Connect error");
        }
        Err(e) => assert_eq!(e.kind(), ErrorKind::Connect, "{what}: {e}"),
    }
}

// ---------------------------------------------------------------------------------------------
// Token
// ---------------------------------------------------------------------------------------------

#[derive(DomainEvent, Serialize, Deserialize, Debug, Clone)]
#[event(aggregate = "cn_token", name = "noted")]
struct TokenNoted {
    #[event(aggregate_id)]
    id: String,
}

#[tokio::test]
async fn a_token_connects_and_a_wrong_or_missing_token_fails_start() {
    let server = NatsServer::builder()
        .config(r#"authorization { token: "s3cret" }"#)
        .start()
        .await;
    let with = |token: &str| {
        publisher(server.url(), "cn-token").credentials(Credentials::Token(token.into()))
    };

    starts_and_publishes(with("s3cret"), &TokenNoted { id: "1".into() }, "CN_TOKEN").await;
    fails_to_connect(with("wrong"), "a wrong token").await;
    fails_to_connect(publisher(server.url(), "cn-token"), "no token").await;
}

// ---------------------------------------------------------------------------------------------
// NKey
// ---------------------------------------------------------------------------------------------

#[derive(DomainEvent, Serialize, Deserialize, Debug, Clone)]
#[event(aggregate = "cn_nkey", name = "noted")]
struct NKeyNoted {
    #[event(aggregate_id)]
    id: String,
}

#[tokio::test]
async fn an_nkey_seed_connects_and_another_seed_fails_start() {
    let user = nkeys::KeyPair::new_user();
    let stranger = nkeys::KeyPair::new_user();
    let server = NatsServer::builder()
        .config(format!(
            r#"authorization {{ users = [ {{ nkey: "{}" }} ] }}"#,
            user.public_key()
        ))
        .start()
        .await;
    let with = |pair: &nkeys::KeyPair| {
        let seed = pair.seed().expect("a generated pair has a seed");
        assert!(seed.starts_with("SU"), "a user seed: {seed}");
        publisher(server.url(), "cn-nkey").credentials(Credentials::NKey(seed))
    };

    starts_and_publishes(with(&user), &NKeyNoted { id: "1".into() }, "CN_NKEY").await;
    fails_to_connect(with(&stranger), "an unknown nkey").await;
    fails_to_connect(publisher(server.url(), "cn-nkey"), "no nkey").await;
}

// ---------------------------------------------------------------------------------------------
// TLS
// ---------------------------------------------------------------------------------------------

/// A CA, a server certificate for 127.0.0.1 and localhost and a client certificate signed by
/// it, as PEM files in a temporary directory.
struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    fn generate() -> Pki {
        use rcgen::{
            BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
            KeyPair, KeyUsagePurpose,
        };
        let dir = tempfile::Builder::new()
            .prefix("eventbus-pki-")
            .tempdir()
            .unwrap();
        let write = |name: &str, pem: String| std::fs::write(dir.path().join(name), pem).unwrap();

        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.distinguished_name
            .push(DnType::CommonName, "eventbus test CA");
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca_key = KeyPair::generate().unwrap();
        write("ca.pem", ca.self_signed(&ca_key).unwrap().pem());
        let issuer = Issuer::new(ca, ca_key);

        let leaf = |names: Vec<String>, cn: &str, usage: ExtendedKeyUsagePurpose, file: &str| {
            let mut params = CertificateParams::new(names).unwrap();
            params.distinguished_name.push(DnType::CommonName, cn);
            params.extended_key_usages = vec![usage];
            params.key_usages = vec![
                KeyUsagePurpose::DigitalSignature,
                KeyUsagePurpose::KeyEncipherment,
            ];
            let key = KeyPair::generate().unwrap();
            let cert = params.signed_by(&key, &issuer).unwrap();
            write(&format!("{file}-cert.pem"), cert.pem());
            write(&format!("{file}-key.pem"), key.serialize_pem());
        };
        leaf(
            vec!["127.0.0.1".into(), "localhost".into()],
            "nats-server",
            ExtendedKeyUsagePurpose::ServerAuth,
            "server",
        );
        leaf(
            vec!["client.eventbus.test".into()],
            "eventbus client",
            ExtendedKeyUsagePurpose::ClientAuth,
            "client",
        );
        Pki { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn ca(&self) -> PathBuf {
        self.path("ca.pem")
    }

    fn client_cert(&self) -> PathBuf {
        self.path("client-cert.pem")
    }

    fn client_key(&self) -> PathBuf {
        self.path("client-key.pem")
    }

    /// The server's `tls { }` block; `verify` requires a client certificate signed by the CA.
    fn server_config(&self, verify: bool) -> String {
        let quoted = |p: &Path| format!("{:?}", p.display().to_string());
        format!(
            "tls {{\n  cert_file: {}\n  key_file: {}\n  ca_file: {}\n  verify: {verify}\n  timeout: 5\n}}\n",
            quoted(&self.path("server-cert.pem")),
            quoted(&self.path("server-key.pem")),
            quoted(&self.ca()),
        )
    }

    /// TLS settings trusting the CA, with the client certificate if `mutual`.
    fn client(&self, mutual: bool) -> TlsConfig {
        TlsConfig {
            ca_file: Some(self.ca()),
            cert_file: mutual.then(|| self.client_cert()),
            key_file: mutual.then(|| self.client_key()),
            ..Default::default()
        }
    }
}

fn tls_url(server: &NatsServer) -> String {
    format!("tls://127.0.0.1:{}", server.port())
}

#[derive(DomainEvent, Serialize, Deserialize, Debug, Clone)]
#[event(aggregate = "cn_tls", name = "noted")]
struct TlsNoted {
    #[event(aggregate_id)]
    id: String,
}

/// The TLS state the server reports for the bus's connection, from `/connz`.
async fn server_sees_tls(server: &NatsServer, name: &str) -> serde_json::Value {
    let connz = server.monitor_json("/connz").await.unwrap();
    connz["connections"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["name"] == name).cloned())
        .unwrap_or_else(|| panic!("a connection named {name} in /connz: {connz}"))
}

#[tokio::test]
async fn server_only_tls_connects_with_the_ca_and_fails_without_it() {
    let pki = Pki::generate();
    let server = NatsServer::builder()
        .config(pki.server_config(false))
        .start()
        .await;

    // A tls:// URL and the CA.
    starts_and_publishes(
        publisher(tls_url(&server), "cn-tls-url").tls(pki.client(false)),
        &TlsNoted { id: "1".into() },
        "CN_TLS",
    )
    .await;

    // A nats:// URL, the CA and `required`; the connection is encrypted.
    let bus = publisher(server.url(), "cn-tls-required")
        .tls(TlsConfig {
            required: true,
            ..pki.client(false)
        })
        .start()
        .await
        .unwrap();
    bus.publish(&TlsNoted { id: "2".into() }).await.unwrap();
    let conn = server_sees_tls(&server, "eventbus:cn-tls-required").await;
    assert!(
        conn["tls_version"].as_str().is_some_and(|v| !v.is_empty()),
        "the connection uses TLS: {conn}"
    );
    bus.shutdown().await.unwrap();

    // A client certificate is fine where the server does not ask for one.
    starts_and_publishes(
        publisher(tls_url(&server), "cn-tls-mutual").tls(pki.client(true)),
        &TlsNoted { id: "3".into() },
        "CN_TLS",
    )
    .await;

    // Without the CA the server's certificate is not trusted.
    fails_to_connect(
        publisher(tls_url(&server), "cn-tls-noca").tls(TlsConfig {
            required: true,
            ..Default::default()
        }),
        "tls:// without the CA",
    )
    .await;
    fails_to_connect(
        publisher(server.url(), "cn-tls-plain"),
        "nats:// without any TLS settings",
    )
    .await;
}

#[tokio::test]
async fn mutual_tls_needs_the_client_certificate_and_the_ca() {
    let pki = Pki::generate();
    let server = NatsServer::builder()
        .config(pki.server_config(true))
        .start()
        .await;

    starts_and_publishes(
        publisher(tls_url(&server), "cn-mtls").tls(pki.client(true)),
        &TlsNoted { id: "1".into() },
        "CN_TLS",
    )
    .await;
    // Only `ca_file` and the client certificate, a nats:// URL: TLS is implied.
    starts_and_publishes(
        publisher(server.url(), "cn-mtls-implied").tls(pki.client(true)),
        &TlsNoted { id: "2".into() },
        "CN_TLS",
    )
    .await;

    fails_to_connect(
        publisher(tls_url(&server), "cn-mtls-nocert").tls(pki.client(false)),
        "no client certificate against verify: true",
    )
    .await;
    fails_to_connect(
        publisher(tls_url(&server), "cn-mtls-noca").tls(TlsConfig {
            ca_file: None,
            ..pki.client(true)
        }),
        "a client certificate but not the CA",
    )
    .await;

    // A certificate without its key is a configuration error, not a connection attempt.
    let e = publisher(tls_url(&server), "cn-mtls-nokey")
        .tls(TlsConfig {
            key_file: None,
            ..pki.client(true)
        })
        .start()
        .await
        .expect_err("a cert file without a key file fails start()");
    assert_eq!(e.kind(), ErrorKind::Config, "{e}");
}

#[tokio::test]
async fn mutual_tls_from_eventbus_tls_variables() {
    let pki = Pki::generate();
    let server = NatsServer::builder()
        .config(pki.server_config(true))
        .start()
        .await;
    let ca = pki.ca().display().to_string();
    let cert = pki.client_cert().display().to_string();
    let key = pki.client_key().display().to_string();
    let url = server.url();
    let vars = |with_cert: bool| {
        let mut vars: Vec<(&str, &str)> = vec![
            ("EVENTBUS_URL", &url),
            ("EVENTBUS_SERVICE", "cn-tls-env"),
            ("EVENTBUS_TLS_CA", &ca),
            ("EVENTBUS_TLS_REQUIRED", "true"),
        ];
        if with_cert {
            vars.extend([("EVENTBUS_TLS_CERT", &*cert), ("EVENTBUS_TLS_KEY", &*key)]);
        }
        Config::from_lookup(|k| {
            vars.iter()
                .find(|(name, _)| *name == k)
                .map(|(_, v)| v.to_string())
        })
        .unwrap()
    };

    let config = vars(true);
    assert_eq!(
        config.tls,
        TlsConfig {
            required: true,
            ca_file: Some(pki.ca()),
            cert_file: Some(pki.client_cert()),
            key_file: Some(pki.client_key()),
        }
    );
    let bus = eventbus::builder()
        .no_env()
        .config(config)
        .without_handlers()
        .start()
        .await
        .unwrap_or_else(|e| panic!("start from EVENTBUS_TLS_*: {e}"));
    assert_eq!(bus.service(), "cn-tls-env");
    let published = bus.publish(&TlsNoted { id: "env".into() }).await.unwrap();
    assert_eq!(published.stream, "CN_TLS");
    let conn = server_sees_tls(&server, "eventbus:cn-tls-env").await;
    assert!(
        conn["tls_version"].as_str().is_some_and(|v| !v.is_empty()),
        "the connection uses TLS: {conn}"
    );
    bus.shutdown().await.unwrap();

    fails_to_connect(
        eventbus::builder()
            .no_env()
            .config(vars(false))
            .without_handlers(),
        "EVENTBUS_TLS_CA without EVENTBUS_TLS_CERT/KEY against verify: true",
    )
    .await;
}

// ---------------------------------------------------------------------------------------------
// Replicas on a cluster
// ---------------------------------------------------------------------------------------------

#[derive(DomainEvent, Serialize, Deserialize, Debug, Clone)]
#[event(aggregate = "cn_replica", name = "noted")]
struct ReplicaNoted {
    #[event(aggregate_id)]
    id: String,
    n: u32,
}

static REPLICA: Mutex<BTreeSet<u32>> = Mutex::new(BTreeSet::new());

#[event_handler]
async fn cn_replica_handler(event: ReplicaNoted) -> Result<(), HandlerError> {
    REPLICA.lock().unwrap().insert(event.n);
    Ok(())
}

/// The stream's leader and its replicas (name, current), once it has a leader.
async fn stream_leader(js: &jetstream::Context, stream: &str) -> Option<(String, Vec<bool>)> {
    let mut s = js.get_stream(stream).await.ok()?;
    let info = s.info().await.ok()?;
    assert_eq!(
        info.config.num_replicas, 3,
        "the stream's configured replicas"
    );
    let cluster = info.cluster.clone()?;
    let leader = cluster.leader.filter(|l| !l.is_empty())?;
    Some((leader, cluster.replicas.iter().map(|r| r.current).collect()))
}

#[tokio::test]
async fn a_stream_with_three_replicas_on_a_cluster_survives_its_leader() {
    const N: u32 = 20;
    let mut cluster = NatsCluster::start(3).await;
    let bus = eventbus::builder()
        .no_env()
        .url(cluster.urls().join(","))
        .service("cn-replica")
        .only_handlers(["cn_replica_handler"])
        .reconnect_wait(Duration::from_millis(100))
        .stream(
            "cn_replica",
            StreamOptions {
                replicas: Some(3),
                ..Default::default()
            },
        )
        .start()
        .await
        .unwrap();

    let js = jetstream::new(cluster.connect().await);
    let (leader, replicas) = wait_for(TIMEOUT, "CN_REPLICA has a leader", || {
        stream_leader(&js, "CN_REPLICA")
    })
    .await;
    assert_eq!(replicas.len(), 2, "two replicas besides the leader");
    let consumer = js
        .get_stream("CN_REPLICA")
        .await
        .unwrap()
        .consumer_info("cn-replica-cn_replica_handler")
        .await
        .unwrap()
        .clone();
    assert!(
        consumer
            .cluster
            .as_ref()
            .is_some_and(|c| c.replicas.len() == 2),
        "the handler's consumer is replicated too: {:?}",
        consumer.cluster
    );

    for n in 0..N {
        bus.publish(&ReplicaNoted {
            id: format!("r{n}"),
            n,
        })
        .await
        .unwrap();
    }
    wait_until(TIMEOUT, "the first events are handled", || async {
        REPLICA.lock().unwrap().len() >= N as usize
    })
    .await;

    let leader_index = cluster.index_of(&leader);
    cluster.stop(leader_index);
    let survivors = cluster.urls_except(leader_index);
    let js = jetstream::new(async_nats::connect(survivors).await.unwrap());
    wait_until(TIMEOUT, "CN_REPLICA elects another leader", || async {
        stream_leader(&js, "CN_REPLICA")
            .await
            .is_some_and(|(l, _)| l != leader)
    })
    .await;

    for n in N..2 * N {
        let event = ReplicaNoted {
            id: format!("r{n}"),
            n,
        };
        // Retried by the bus itself (same message id) while it moves to a surviving server.
        bus.publish(&event)
            .await
            .unwrap_or_else(|e| panic!("publish event {n} after the leader died: {e}"));
    }
    wait_until(
        TIMEOUT,
        "events published after the leader died are handled",
        || async { REPLICA.lock().unwrap().len() >= 2 * N as usize },
    )
    .await;
    assert_eq!(
        *REPLICA.lock().unwrap(),
        (0..2 * N).collect::<BTreeSet<_>>()
    );
    bus.shutdown().await.unwrap();
}

#[derive(DomainEvent, Serialize, Deserialize, Debug, Clone)]
#[event(aggregate = "cn_away", name = "noted")]
struct AwayNoted {
    #[event(aggregate_id)]
    id: String,
}

/// How many messages `stream` holds, once its server answers.
async fn stored_count(js: &jetstream::Context, stream: &str) -> u64 {
    wait_for(TIMEOUT, &format!("{stream} answers"), || async {
        let mut s = js.get_stream(stream).await.ok()?;
        Some(s.info().await.ok()?.state.messages)
    })
    .await
}

/// A publish to a stream whose only server is away finds nobody to answer ("no responders"),
/// though the stream exists: it is sent again, and stored once that server is back, instead of
/// failing as if no stream stored its subject. (The same answer meets a publish through one
/// server of a cluster before a stream just created there has reached it.)
#[tokio::test]
async fn a_publish_to_a_stream_whose_server_is_away_is_stored_once_it_is_back() {
    let mut cluster = NatsCluster::start(3).await;
    let bus = eventbus::builder()
        .config(Config {
            publish_timeout: Duration::from_secs(1),
            // Sent again while nobody answers: up to 20 s for the server to come back.
            publish_unavailable_wait: Duration::from_secs(20),
            ..Config::default()
        })
        .no_env()
        .url(cluster.urls().join(","))
        .service("cn-away")
        .without_handlers()
        .reconnect_wait(Duration::from_millis(100))
        .max_reconnects(None)
        .start()
        .await
        .unwrap();
    let js = jetstream::new(cluster.connect().await);
    let node = wait_for(TIMEOUT, "CN_AWAY is placed on a server", || async {
        let mut stream = js.get_stream("CN_AWAY").await.ok()?;
        let info = stream.info().await.ok()?;
        info.cluster.clone()?.leader.filter(|l| !l.is_empty())
    })
    .await;
    let index = cluster.index_of(&node);
    cluster.stop(index);

    let retries = Retries::default();
    let publish = tokio::spawn(retries.attach({
        let bus = bus.clone();
        async move { bus.publish(&AwayNoted { id: "a-1".into() }).await }
    }));
    wait_until(
        TIMEOUT,
        "the publish found nobody and is sent again",
        || async { retries.count() >= 1 },
    )
    .await;
    cluster.start_again(index).await;
    let published = tokio::time::timeout(TIMEOUT, publish)
        .await
        .expect("the publish completes once the stream's server is back")
        .expect("the publishing task")
        .expect("the event is stored");
    assert_eq!(published.stream, "CN_AWAY");
    let stored = stored_count(&js, "CN_AWAY").await;
    assert_eq!(stored, 1, "one copy");

    // The same for publish_all: each event is sent again until the server is back.
    cluster.stop(index);
    let retries = Retries::default();
    let events: Vec<AwayNoted> = (2..=50)
        .map(|n| AwayNoted {
            id: format!("a-{n}"),
        })
        .collect();
    let publish = tokio::spawn(retries.attach({
        let bus = bus.clone();
        async move { bus.publish_all(&events).await }
    }));
    wait_until(
        TIMEOUT,
        "publish_all found nobody and sends again",
        || async { retries.count() >= 1 },
    )
    .await;
    cluster.start_again(index).await;
    let results = tokio::time::timeout(TIMEOUT, publish)
        .await
        .expect("publish_all completes once the stream's server is back")
        .expect("the publishing task");
    for (i, r) in results.iter().enumerate() {
        assert!(r.is_ok(), "event {i}: {r:?}");
    }
    let stored = stored_count(&js, "CN_AWAY").await;
    assert_eq!(stored, 50, "one copy of each");
    bus.shutdown().await.unwrap();
}

#[derive(DomainEvent, Serialize, Deserialize, Debug, Clone)]
#[event(aggregate = "cn_elect", name = "noted")]
struct ElectNoted {
    #[event(aggregate_id)]
    id: String,
    n: u32,
}

/// A stream leader killed while events are published: the publishes that time out, and those
/// that then find nobody to answer while the stream elects a new leader, are sent again (same
/// ids) until the new leader takes them, within `publish_unavailable_wait`. None is reported as
/// not stored: before, "no responders" after a timeout counted as definite, and "nobody
/// answers" was retried for about 150 ms against elections of several seconds.
#[tokio::test]
async fn publishing_through_a_stream_leader_election_stores_every_event_once() {
    const N: u32 = 30_000;
    let mut cluster = NatsCluster::start(3).await;
    let bus = eventbus::builder()
        .no_env()
        .url(cluster.urls().join(","))
        .service("cn-elect")
        .without_handlers()
        .reconnect_wait(Duration::from_millis(100))
        .max_reconnects(None)
        .stream(
            "cn_elect",
            StreamOptions {
                replicas: Some(3),
                ..Default::default()
            },
        )
        .start()
        .await
        .unwrap();
    let js = jetstream::new(cluster.connect().await);
    let (leader, _) = wait_for(TIMEOUT, "CN_ELECT has a leader", || {
        stream_leader(&js, "CN_ELECT")
    })
    .await;
    let leader_index = cluster.index_of(&leader);
    let survivors = cluster.urls_except(leader_index);

    let events: Vec<ElectNoted> = (0..N)
        .map(|n| ElectNoted {
            id: format!("e{}", n % 100),
            n,
        })
        .collect();
    let all = tokio::spawn({
        let bus = bus.clone();
        async move { bus.publish_all(&events).await }
    });
    let before_kill = wait_for(TIMEOUT, "the first events are stored", || async {
        let mut s = js.get_stream("CN_ELECT").await.ok()?;
        let stored = s.info().await.ok()?.state.messages;
        (stored >= 1000).then_some(stored)
    })
    .await;
    cluster.stop(leader_index);
    // One more publish, sent while the stream has no leader.
    let single = bus
        .publish(&ElectNoted {
            id: "single".into(),
            n: N,
        })
        .await;

    let results = tokio::time::timeout(Duration::from_secs(120), all)
        .await
        .expect("publish_all ends")
        .expect("the publishing task");
    let failed: Vec<String> = results
        .iter()
        .enumerate()
        .filter_map(|(i, r)| r.as_ref().err().map(|e| format!("event {i}: {e:?}")))
        .collect();
    assert!(
        before_kill < u64::from(N),
        "the leader died while events were being published ({before_kill} of {N} stored)"
    );
    assert!(
        failed.is_empty(),
        "{} of {N} events failed through the election, e.g. {:?}",
        failed.len(),
        &failed[..failed.len().min(3)]
    );
    single.unwrap_or_else(|e| panic!("the publish sent during the election: {e:?}"));
    let js = jetstream::new(async_nats::connect(survivors).await.unwrap());
    let stored = stored_count(&js, "CN_ELECT").await;
    assert_eq!(stored, u64::from(N) + 1, "each event stored once");
    bus.shutdown().await.unwrap();
}
