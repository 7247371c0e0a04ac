//! A JetStream cluster of `nats-server` processes on loopback.

use crate::server::{free_ports, NatsServer, NatsServerBuilder, Ports, Routes, StartError};
use crate::wait::try_wait_for;
use std::time::Duration;

/// How many sets of free ports to try when another process takes one between picking and binding.
const PORT_ATTEMPTS: usize = 5;

/// The cluster name every test cluster uses (`--cluster_name`).
const CLUSTER_NAME: &str = "eventbus-test";

/// A JetStream cluster of [`NatsServer`]s named `n1`, `n2`, ... on 127.0.0.1, each with its own
/// temporary store, all routed to each other.
///
/// Dropping it kills every server and removes the stores.
#[derive(Debug)]
pub struct NatsCluster {
    servers: Vec<NatsServer>,
    startup_timeout: Duration,
}

impl NatsCluster {
    /// Starts `size` servers (3 for R3 streams) and waits until every one is healthy and they
    /// agree on a JetStream meta leader that has all the others as current peers.
    pub async fn start(size: usize) -> NatsCluster {
        NatsServerBuilder::default().start_cluster(size).await
    }

    /// Options applied to every member; finish with
    /// [`start_cluster`](NatsServerBuilder::start_cluster).
    pub fn builder() -> NatsServerBuilder {
        NatsServerBuilder::default()
    }

    /// The cluster's name (`--cluster_name`).
    pub fn name(&self) -> &str {
        CLUSTER_NAME
    }

    /// Every member's client URL, in member order.
    pub fn urls(&self) -> Vec<String> {
        self.servers.iter().map(NatsServer::url).collect()
    }

    /// Every member's client URL but member `index`'s: where to connect while it is down.
    pub fn urls_except(&self, index: usize) -> Vec<String> {
        self.servers
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != index)
            .map(|(_, s)| s.url())
            .collect()
    }

    /// The index of the member named `name` (as a stream's leader is reported); panics if
    /// none is.
    pub fn index_of(&self, name: &str) -> usize {
        self.servers
            .iter()
            .position(|s| s.name() == name)
            .unwrap_or_else(|| panic!("{name} is not a member of the cluster"))
    }

    /// The members, `n1` first.
    pub fn servers(&self) -> &[NatsServer] {
        &self.servers
    }

    /// Member `index` (0-based: index 0 is `n1`).
    pub fn server(&self, index: usize) -> &NatsServer {
        &self.servers[index]
    }

    /// Member `index`, mutably, e.g. to [`stop`](NatsServer::stop) it yourself.
    pub fn server_mut(&mut self, index: usize) -> &mut NatsServer {
        &mut self.servers[index]
    }

    /// Connects a client that knows every member's URL; panics if it cannot.
    pub async fn connect(&self) -> async_nats::Client {
        async_nats::connect(self.urls())
            .await
            .unwrap_or_else(|e| panic!("connect to the cluster at {:?}: {e}", self.urls()))
    }

    /// Kills member `index` with SIGKILL, keeping its store.
    pub fn stop(&mut self, index: usize) {
        self.servers[index].stop();
    }

    /// Starts the stopped member `index` again on its ports and store, and waits until the whole
    /// cluster is healthy (see [`wait_healthy`](Self::wait_healthy)).
    pub async fn start_again(&mut self, index: usize) {
        self.servers[index].start_again().await;
        self.wait_healthy().await;
    }

    /// Kills member `index` with SIGKILL and starts it again, like
    /// [`NatsServer::restart`], then waits until the whole cluster is healthy.
    pub async fn restart(&mut self, index: usize) {
        self.stop(index);
        self.start_again(index).await;
    }

    /// The index of the JetStream meta leader, as the running members agree on it; `None` while
    /// they do not (e.g. during an election).
    pub async fn meta_leader(&self) -> Option<usize> {
        let leader = self.meta_status().await.ok()?.leader;
        self.servers
            .iter()
            .position(|server| server.name() == leader)
    }

    /// Waits until every running member answers `/healthz` with 200 and they agree on a meta
    /// leader; when every member runs, also until the leader sees all the others as current
    /// peers. Panics after the startup timeout with what was missing.
    pub async fn wait_healthy(&self) {
        let last = std::cell::RefCell::new(String::new());
        let healthy = try_wait_for(self.startup_timeout, || async {
            self.meta_status()
                .await
                .map_err(|reason| *last.borrow_mut() = reason)
                .ok()
        })
        .await;
        if healthy.is_none() {
            panic!(
                "cluster not healthy after {:?}: {}",
                self.startup_timeout,
                last.borrow()
            );
        }
    }

    /// The meta group as the running members see it, or why it is not (yet) healthy.
    async fn meta_status(&self) -> Result<MetaStatus, String> {
        let running: Vec<&NatsServer> = self
            .servers
            .iter()
            .filter(|server| server.pid().is_some())
            .collect();
        let mut leader: Option<String> = None;
        for server in &running {
            let health = crate::monitor::get(server.monitor_port(), "/healthz").await?;
            if health.status != 200 {
                return Err(format!("{} /healthz: {}", server.name(), health.body));
            }
            let jsz = server.monitor_json("/jsz").await?;
            let seen = jsz["meta_cluster"]["leader"].as_str().unwrap_or_default();
            if seen.is_empty() {
                return Err(format!("{} knows no meta leader", server.name()));
            }
            match &leader {
                Some(leader) if leader != seen => {
                    return Err(format!(
                        "{} says the meta leader is {seen}, not {leader}",
                        server.name()
                    ))
                }
                _ => leader = Some(seen.to_owned()),
            }
            if server.name() == seen && running.len() == self.servers.len() {
                let replicas = jsz["meta_cluster"]["replicas"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default();
                let current = replicas
                    .iter()
                    .filter(|peer| peer["current"] == true && peer["offline"] != true)
                    .count();
                if current + 1 < self.servers.len() {
                    return Err(format!(
                        "meta leader {seen} has {current} current peers of {}: {replicas:?}",
                        self.servers.len() - 1
                    ));
                }
            }
        }
        leader
            .map(|leader| MetaStatus { leader })
            .ok_or_else(|| "no member is running".to_owned())
    }
}

/// What [`NatsCluster::meta_status`] found.
struct MetaStatus {
    leader: String,
}

/// Starts a cluster of `size` members with `builder`'s options.
pub(crate) async fn start(builder: NatsServerBuilder, size: usize) -> NatsCluster {
    assert!(size >= 1, "a cluster needs at least one server");
    let mut last_failure = String::new();
    for _ in 0..PORT_ATTEMPTS {
        let ports = free_ports(3 * size);
        let routes = Routes {
            cluster_name: CLUSTER_NAME.to_owned(),
            ports: ports.chunks(3).map(|chunk| chunk[2]).collect(),
        };
        let mut servers: Vec<NatsServer> = ports
            .chunks(3)
            .enumerate()
            .map(|(index, chunk)| {
                let ports = Ports {
                    client: chunk[0],
                    monitor: chunk[1],
                    cluster: Some(chunk[2]),
                };
                builder.prepare(&format!("n{}", index + 1), ports, Some(&routes))
            })
            .collect();
        // A member is healthy only once the meta group has formed: spawn all, then wait.
        servers.iter_mut().for_each(NatsServer::spawn);
        let mut port_taken = None;
        for server in &mut servers {
            match server.wait_ready().await {
                Ok(()) => {}
                Err(StartError::PortTaken(log)) => {
                    port_taken = Some(log);
                    break;
                }
                Err(StartError::Failed(message)) => panic!("{message}"),
            }
        }
        if let Some(log) = port_taken {
            last_failure = log;
            continue;
        }
        let cluster = NatsCluster {
            servers,
            startup_timeout: builder.startup_timeout,
        };
        cluster.wait_healthy().await;
        return cluster;
    }
    panic!("nats-server cluster could not bind free ports in {PORT_ATTEMPTS} attempts:\n{last_failure}")
}
