//! The test harness itself: servers start, keep their store across a crash, form clusters, and
//! a missing binary fails with the instruction to install one.

use async_nats::connection::State;
use async_nats::jetstream::{self, stream};
use eventbus_tests::{
    locate_nats_server, wait_for, wait_until, NatsCluster, NatsServer, BIN_ENV, MIN_VERSION,
};
use std::ffi::OsStr;
use std::time::Duration;

const TIMEOUT: Duration = Duration::from_secs(20);

fn orders_stream(replicas: usize) -> stream::Config {
    stream::Config {
        name: "ORDERS".to_owned(),
        subjects: vec!["orders.>".to_owned()],
        storage: stream::StorageType::File,
        num_replicas: replicas,
        ..Default::default()
    }
}

#[tokio::test]
async fn a_published_message_survives_a_server_crash() {
    let mut server = NatsServer::start().await;
    assert!(server.version() >= MIN_VERSION, "{:?}", server.version());
    assert_eq!(server.url(), format!("nats://127.0.0.1:{}", server.port()));

    let client = server.connect().await;
    let js = jetstream::new(client.clone());
    js.create_stream(orders_stream(1)).await.unwrap();
    let ack = js
        .publish("orders.created", "order 1".into())
        .await
        .unwrap()
        .await
        .unwrap();
    assert_eq!((ack.stream.as_str(), ack.sequence), ("ORDERS", 1));

    let port = server.port();
    server.restart().await;
    assert_eq!(server.port(), port);
    assert!(server.store_dir().join("jetstream").is_dir());

    wait_until(TIMEOUT, "the client reconnects after the crash", || async {
        client.connection_state() == State::Connected
    })
    .await;
    let stored = js
        .get_stream("ORDERS")
        .await
        .unwrap()
        .get_raw_message(1)
        .await
        .unwrap();
    assert_eq!(stored.subject.as_str(), "orders.created");
    assert_eq!(&stored.payload[..], b"order 1");
    assert_eq!(
        server.log().matches("Server is ready").count(),
        2,
        "one start and one restart"
    );
}

#[tokio::test]
async fn a_stopped_server_refuses_connections_until_started_again() {
    let mut server = NatsServer::start().await;
    server.stop();
    assert!(!server.is_running());
    assert!(tokio::net::TcpStream::connect(("127.0.0.1", server.port()))
        .await
        .is_err());

    server.start_again().await;
    assert!(server.is_running());
    let js = jetstream::new(server.connect().await);
    js.query_account().await.unwrap();
}

#[tokio::test]
async fn configuration_text_applies() {
    let server = NatsServer::builder()
        .config("authorization { token: s3cret }")
        .start()
        .await;

    assert!(async_nats::connect(server.url()).await.is_err());
    let client = async_nats::ConnectOptions::new()
        .token("s3cret".to_owned())
        .connect(server.url())
        .await
        .unwrap();
    client.flush().await.unwrap();
}

#[tokio::test]
async fn monitoring_endpoints_answer_json() {
    let server = NatsServer::start().await;
    let varz = server.monitor_json("/varz").await.unwrap();
    assert_eq!(varz["port"], server.port());
    assert_eq!(varz["server_name"], server.name());
    assert!(server.monitor_json("/no-such-endpoint").await.is_err());
}

#[tokio::test]
async fn three_node_cluster_replicates_an_r3_stream_across_a_member_crash() {
    let mut cluster = NatsCluster::start(3).await;
    assert_eq!(cluster.urls().len(), 3);
    assert!(cluster.meta_leader().await.is_some());

    let js = jetstream::new(cluster.connect().await);
    let mut orders = js.create_stream(orders_stream(3)).await.unwrap();
    // A stream just created reaches the other servers of the cluster a moment later: until the
    // one this client is connected to knows it, a publish finds no responders.
    let ack = wait_for(TIMEOUT, "the new stream takes a publish", || {
        let js = js.clone();
        async move {
            match js.publish("orders.created", "order 1".into()).await {
                Ok(ack) => match ack.await {
                    Ok(ack) => Some(ack),
                    Err(e) if e.kind() == jetstream::context::PublishErrorKind::StreamNotFound => {
                        None
                    }
                    Err(e) => panic!("publish to the new stream: {e}"),
                },
                Err(e) => panic!("send to the new stream: {e}"),
            }
        }
    })
    .await;
    assert_eq!(ack.sequence, 1);
    let info = orders.info().await.unwrap();
    let replicas = info.cluster.as_ref().unwrap().replicas.len();
    assert_eq!(
        replicas, 2,
        "a leader and two followers: {:?}",
        info.cluster
    );

    // Crash the stream's leader; the others elect a new one and keep the message.
    let leader = info.cluster.as_ref().unwrap().leader.clone().unwrap();
    let index = cluster
        .servers()
        .iter()
        .position(|server| server.name() == leader)
        .unwrap();
    cluster.restart(index).await;

    // The stream may be electing a leader while the old one comes back.
    let stored = wait_for(TIMEOUT, "the stream serves message 1 again", || async {
        js.get_stream("ORDERS")
            .await
            .ok()?
            .get_raw_message(1)
            .await
            .ok()
    })
    .await;
    assert_eq!(&stored.payload[..], b"order 1");
}

#[test]
fn a_missing_binary_gives_the_install_instruction() {
    let empty_dir = tempfile::tempdir().unwrap();
    let no_path = locate_nats_server(None, Some(empty_dir.path().as_os_str())).unwrap_err();
    assert!(
        no_path.contains("scripts/install-nats-server.sh"),
        "{no_path}"
    );
    assert!(no_path.contains(BIN_ENV), "{no_path}");

    let bad_env = locate_nats_server(Some(OsStr::new("/no/such/nats-server")), None).unwrap_err();
    assert!(bad_env.contains("/no/such/nats-server"), "{bad_env}");
    assert!(
        bad_env.contains("scripts/install-nats-server.sh"),
        "{bad_env}"
    );
}

#[test]
fn the_binary_comes_from_the_env_var_else_the_first_executable_on_path() {
    use std::os::unix::fs::PermissionsExt;
    let not_executable = tempfile::tempdir().unwrap();
    std::fs::write(not_executable.path().join("nats-server"), "").unwrap();
    let executable = tempfile::tempdir().unwrap();
    let bin = executable.path().join("nats-server");
    std::fs::write(&bin, "#!/bin/sh\n").unwrap();
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();

    let path = std::env::join_paths([not_executable.path(), executable.path()]).unwrap();
    assert_eq!(locate_nats_server(None, Some(&path)).unwrap(), bin);
    assert_eq!(
        locate_nats_server(Some(OsStr::new("")), Some(&path)).unwrap(),
        bin,
        "an empty variable counts as unset"
    );
    assert_eq!(
        locate_nats_server(Some(bin.as_os_str()), Some(OsStr::new(""))).unwrap(),
        bin
    );
    let in_env = not_executable.path().join("nats-server");
    assert!(locate_nats_server(Some(in_env.as_os_str()), Some(&path)).is_err());
}

#[tokio::test]
#[should_panic(expected = "scripts/install-nats-server.sh")]
async fn starting_a_missing_binary_panics_with_the_instruction() {
    NatsServer::builder()
        .binary("/no/such/nats-server")
        .start()
        .await;
}
