//! Start-up: validate, connect, provision, start one worker per handler, and hand back the
//! [`Bus`] that owns them.

use std::sync::Arc;

use async_nats::jetstream::consumer::IntoConsumerConfig;
use tokio::sync::watch;

use super::builder::Selection;
use super::{Builder, Bus, Inner, Running};
use crate::backend::Backend;
use crate::config::AckPolicy;
use crate::dispatch::{self, Worker};
use crate::error::{chain, Error, ErrorKind};
use crate::provision;
use crate::publish::Publisher;

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
        let observer = self.observer.take();
        let states = std::mem::take(&mut self.states);
        let connected = Backend::connect(&config, &service).await?;
        let backend = connected.backend;
        let stream_names = provision::streams(&backend, &topology).await?;
        let mut problems = Vec::new();
        for c in topology.consumers.iter().filter(|c| c.durable) {
            let stream = stream_names
                .get(&c.stream)
                .cloned()
                .unwrap_or_else(|| c.stream.clone());
            if let Err(e) = provision::consumer(&backend, &stream, c).await {
                problems.push(chain(&e));
            }
        }
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
        for plan in &topology.consumers {
            let stream_name = stream_names
                .get(&plan.stream)
                .cloned()
                .unwrap_or_else(|| plan.stream.clone());
            let name = if plan.durable {
                plan.name.clone()
            } else {
                let name = format!(
                    "{}-{}",
                    plan.name,
                    &uuid::Uuid::now_v7().simple().to_string()[20..]
                );
                let config =
                    provision::consumer_config(plan, &stream_name, &name).into_consumer_config();
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
            let worker = Arc::new(Worker {
                plan: plan.clone(),
                stream: stream_name,
                consumer_name: name,
                publisher: publisher.clone(),
                states: states.clone(),
                observer: observer.clone(),
            });
            running.workers.push(tokio::spawn(dispatch::run(
                worker,
                puller,
                given_up,
                stop_rx.clone(),
                config.shutdown_grace,
            )));
        }
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
                shut_down: tokio::sync::Mutex::new(false),
            }),
        })
    }
}
