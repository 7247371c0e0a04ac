//! Start-up: validate, connect, provision, start one worker per handler, and hand back the
//! [`Bus`] that owns them.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use async_nats::jetstream::consumer::IntoConsumerConfig;
use tokio::sync::{watch, Notify};

use super::builder::Selection;
use super::{Builder, Bus, Inner, Running};
use crate::backend::Backend;
use crate::config::AckPolicy;
use crate::dispatch::{self, Worker};
use crate::error::{chain, Error, ErrorKind};
use crate::observe::metrics::HandlerMetrics;
use crate::provision;
use crate::publish::Publisher;
use crate::stats::{self, Sources, Watched};
use crate::topology::ConsumerPlan;

impl Builder {
    /// Validates the registry, connects, provisions streams and consumers, and starts the
    /// chosen handlers: none unless [`Builder::all_handlers`] or [`Builder::only_handlers`]
    /// says which, so a program that links handlers but only publishes (a CLI, a driver, an
    /// HTTP front) does not consume their events.
    ///
    /// The returned [`Bus`] owns the handlers' workers: dropping its last clone stops them as
    /// [`Bus::shutdown`] does (in a task of its own), so keep it for as long as the service runs.
    ///
    /// With `EVENTBUS_PRINT_TOPOLOGY=1` (unless [`Builder::no_env`]) it prints the topology
    /// and ends the process (exit status 0) without connecting; a topology that is not valid
    /// is returned as the error instead. With `EVENTBUS_PRINT_ASYNCAPI=1`, the same with the
    /// AsyncAPI document ([`Builder::asyncapi`]) of the bus it would start.
    pub async fn start(mut self) -> Result<Bus, Error> {
        if self.print_asyncapi() {
            // The document of the bus this would start: no handler unless chosen.
            if matches!(self.selection, Selection::Default) {
                self.selection = Selection::Only(Vec::new());
            }
            let document = self.asyncapi()?;
            println!(
                "{}",
                serde_json::to_string_pretty(&document).expect("a JSON value serializes")
            );
            std::process::exit(0);
        }
        if self.print_topology() {
            let t = self.resolve()?.plan()?.2;
            println!("{t}");
            std::process::exit(0);
        }
        let (config, service, topology) = self.resolve()?.plan()?;
        // The recorder first: the metrics' handles are taken from it as they are registered.
        #[cfg(feature = "http")]
        let listener = match config.http_addr {
            Some(addr) => {
                crate::http::install_recorder();
                Some(crate::http::listen(addr).await?)
            }
            None => None,
        };
        #[cfg(not(feature = "http"))]
        if let Some(addr) = config.http_addr {
            return Err(Error::new(
                ErrorKind::Config,
                format!("an HTTP endpoint is asked for on {addr} (EVENTBUS_HTTP_ADDR or Builder::http), but eventbus was built without its `http` feature"),
            ));
        }
        let observer = self.observer.take();
        let states = std::mem::take(&mut self.states);
        let connected = Backend::connect(&config, &service).await?;
        let backend = connected.backend;
        let stream_names = provision::streams(&backend, &topology).await?;
        let stream_of = |plan: &ConsumerPlan| {
            stream_names
                .get(&plan.stream)
                .cloned()
                .unwrap_or_else(|| plan.stream.clone())
        };
        // The shape of the streams where a handler's filter depends on it
        // (`provision::filtered_on_server`); the in-process broker has no slow path.
        let version = backend.server_version();
        let mut shapes = HashMap::new();
        if backend.broker().is_none() {
            for c in &topology.consumers {
                let stream = stream_of(c);
                if provision::adapts(c, &stream) && !shapes.contains_key(&stream) {
                    // Not knowing it (no permission to read messages, say) is no reason not
                    // to start: the consumer then reads the whole stream, as it always could.
                    let shape = match backend.stream_figures(&stream).await {
                        Ok(f) => provision::stream_shape(&backend, &stream, &f).await,
                        Err(e) => Err(e),
                    };
                    match shape {
                        Ok(shape) => {
                            shapes.insert(stream, shape);
                        }
                        Err(e) => {
                            tracing::warn!(target: "eventbus::provision", %stream, error = %chain(&e), "cannot look at the stream's shape; its handlers' consumers read it whole")
                        }
                    }
                }
            }
        }
        let filtered = |plan: &ConsumerPlan, stream: &str| {
            provision::filtered_on_server(plan, stream, shapes.get(stream), version)
        };
        // The durable consumers, 16 requests at a time: a service with a hundred handlers
        // starts in a few round trips' time, not a hundred.
        let mut provisions = Vec::new();
        for c in topology.consumers.iter().filter(|c| c.durable) {
            let stream = stream_of(c);
            let on_server = filtered(c, &stream);
            let backend = &backend;
            provisions.push(async move {
                provision::consumer(backend, &stream, c, &c.name, on_server).await
            });
        }
        let mut problems = Vec::new();
        let mut provisioned = futures::StreamExt::buffered(futures::stream::iter(provisions), 16);
        while let Some(result) = futures::StreamExt::next(&mut provisioned).await {
            if let Err(e) = result {
                problems.push(chain(&e));
            }
        }
        drop(provisioned);
        if !problems.is_empty() {
            return Err(Error::new(ErrorKind::Incompatible, problems.join("\n")));
        }
        let publisher = Publisher::new(backend.clone(), service.clone(), &config);
        let (stop, stop_rx) = watch::channel(false);
        let mut running = Running {
            stop,
            workers: Vec::new(),
            ephemeral: Vec::new(),
        };
        let mut watched = Vec::new();
        let alive = Arc::new(AtomicUsize::new(0));
        for plan in &topology.consumers {
            let stream_name = stream_of(plan);
            let on_server = filtered(plan, &stream_name);
            let name = if plan.durable {
                plan.name.clone()
            } else {
                let name = format!(
                    "{}-{}",
                    plan.name,
                    &uuid::Uuid::now_v7().simple().to_string()[20..]
                );
                let config =
                    provision::consumer_config(plan, &name, on_server).into_consumer_config();
                backend.put_consumer(&stream_name, config, false).await?;
                running.ephemeral.push((stream_name.clone(), name.clone()));
                name
            };
            // Subscribed before the first pull (see dispatch/rescue.rs).
            let given_up = match plan.ack {
                AckPolicy::Explicit => Some(backend.given_up(&stream_name, &name).await?),
                AckPolicy::None => None,
            };
            let puller = backend
                .puller(&stream_name, &name, connected.state.clone(), plan.ack_wait)
                .await?;
            let metrics = Arc::new(HandlerMetrics::new(&service, &plan.handler, &stream_name));
            let repull = Arc::new(Notify::new());
            let mut watch = Watched::new(
                plan.handler.clone(),
                stream_name.clone(),
                name.clone(),
                metrics.clone(),
                repull.clone(),
            );
            if backend.broker().is_none() && provision::adapts(plan, &stream_name) {
                watch = watch.refiltered(plan.clone(), on_server);
            }
            watched.push(watch);
            let worker = Arc::new(Worker {
                plan: plan.clone(),
                stream: stream_name,
                consumer_name: name,
                publisher: publisher.clone(),
                states: states.clone(),
                observer: observer.clone(),
                metrics,
                repull,
            });
            let counted = Alive::count(&alive);
            let run = dispatch::run(
                worker,
                puller,
                given_up,
                stop_rx.clone(),
                config.shutdown_grace,
            );
            running.workers.push(tokio::spawn(async move {
                let _alive = counted;
                run.await
            }));
        }
        let mut streams: Vec<String> = topology
            .streams
            .iter()
            .map(|s| {
                stream_names
                    .get(&s.name)
                    .cloned()
                    .unwrap_or_else(|| s.name.clone())
            })
            .collect();
        streams.dedup();
        let stats = Arc::new(Sources {
            backend: backend.clone(),
            streams,
            dlq: config.dlq_stream.clone(),
            handlers: watched,
            shapes: std::sync::Mutex::new(shapes),
        });
        if backend.broker().is_none() && !config.stats_interval.is_zero() {
            tokio::spawn(stats::poll(
                stats.clone(),
                config.stats_interval,
                stop_rx.clone(),
            ));
        }
        let watching = stats::watch_connection(service.clone(), connected.state.clone());
        let mut stopped = stop_rx.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = watching => {}
                _ = stopped.wait_for(|s| *s) => {}
            }
        });
        #[cfg(feature = "http")]
        let http_addr = match listener {
            Some(listener) => {
                let health = crate::http::Health {
                    state: connected.state.clone(),
                    stopping: stop_rx.clone(),
                    workers: running.workers.len(),
                    alive: alive.clone(),
                };
                // The service's AsyncAPI document, made once (see "Contracts").
                let document =
                    serde_json::to_string(&crate::contract::document(&topology, &config))
                        .expect("a JSON value serializes");
                let document: crate::http::Document = Arc::new(move || document.clone());
                Some(crate::http::serve(
                    listener,
                    health,
                    stats.clone(),
                    Some(document),
                ))
            }
            None => None,
        };
        #[cfg(not(feature = "http"))]
        let http_addr = None;
        tracing::info!(
            target: "eventbus",
            service = %service,
            server = %connected.server,
            handlers = topology.consumers.len(),
            streams = topology.streams.len(),
            "eventbus started"
        );
        Ok(Bus {
            inner: Arc::new(Inner {
                publisher,
                service,
                config,
                topology,
                state: connected.state,
                gave_up: connected.gave_up,
                _keep_alive: connected._keep_alive,
                running: std::sync::Mutex::new(Some(running)),
                stats,
                http_addr,
                shut_down: tokio::sync::Mutex::new(false),
            }),
        })
    }
}

/// A running worker, counted in `alive` until its task ends (however it ends).
struct Alive(Arc<AtomicUsize>);

impl Alive {
    fn count(alive: &Arc<AtomicUsize>) -> Alive {
        alive.fetch_add(1, Ordering::Relaxed);
        Alive(alive.clone())
    }
}

impl Drop for Alive {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}
