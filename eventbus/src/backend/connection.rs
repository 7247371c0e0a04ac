//! The connection to a NATS server: options from the configuration, and its observable state.

use std::time::Duration;

use tokio::sync::watch;

use crate::config::{Config, Credentials};
use crate::error::{Error, ErrorKind};

/// The state of the bus's connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ConnectionState {
    /// Connected to a server.
    Connected,
    /// The connection was lost; the client is reconnecting.
    Reconnecting,
    /// Closed: by a shutdown, or because reconnects were exhausted.
    Closed,
}

/// What the connection's event callback reports.
pub(crate) struct Connection {
    pub(crate) client: async_nats::Client,
    pub(crate) state: watch::Receiver<ConnectionState>,
    /// Set when reconnect attempts are exhausted.
    pub(crate) gave_up: watch::Receiver<bool>,
}

/// A server version, `(major, minor, patch)`.
pub(crate) fn parse_version(v: &str) -> Option<(u64, u64, u64)> {
    let v = v.trim().trim_start_matches('v');
    let core = v.split(['-', '+']).next()?;
    let mut it = core.split('.');
    let major = it.next()?.parse().ok()?;
    let minor = it.next()?.parse().ok()?;
    let patch = it.next().unwrap_or("0").parse().ok()?;
    Some((major, minor, patch))
}

/// The pause before connection attempt `attempts` (from 1): none before the first, which is
/// also the first connection of a start (the client counts both alike), then `wait`, 2 ×
/// `wait`, ... up to 8 × `wait`.
fn reconnect_delay(wait: Duration, attempts: usize) -> Duration {
    if attempts <= 1 {
        return Duration::ZERO;
    }
    let factor = (attempts - 1).min(8) as u32;
    wait.saturating_mul(factor).max(Duration::from_millis(10))
}

pub(crate) async fn connect(
    config: &Config,
    service: &str,
    urls: &[String],
) -> Result<Connection, Error> {
    let (state_tx, state) = watch::channel(ConnectionState::Connected);
    let (gave_up_tx, gave_up) = watch::channel(false);
    let mut opts = async_nats::ConnectOptions::new()
        .name(format!("eventbus:{service}"))
        .connection_timeout(config.reconnect.connect_timeout)
        .max_reconnects(config.reconnect.max_reconnects)
        .retain_servers_order();
    let wait = config.reconnect.reconnect_wait;
    opts = opts.reconnect_delay_callback(move |attempts| reconnect_delay(wait, attempts));
    let urls_for_log = urls.join(",");
    opts = opts.event_callback(move |event| {
        let state_tx = state_tx.clone();
        let gave_up_tx = gave_up_tx.clone();
        let urls = urls_for_log.clone();
        async move {
            use async_nats::Event;
            match event {
                Event::Connected => {
                    tracing::info!(target: "eventbus::connection", %urls, "connected");
                    state_tx.send_replace(ConnectionState::Connected);
                }
                Event::Disconnected => {
                    tracing::warn!(target: "eventbus::connection", %urls, "disconnected; reconnecting");
                    state_tx.send_replace(ConnectionState::Reconnecting);
                }
                Event::Closed => {
                    tracing::info!(target: "eventbus::connection", "connection closed");
                    state_tx.send_replace(ConnectionState::Closed);
                }
                Event::ClientError(async_nats::ClientError::MaxReconnects) => {
                    tracing::error!(target: "eventbus::connection", %urls, "reconnect attempts exhausted; giving up");
                    gave_up_tx.send_replace(true);
                    state_tx.send_replace(ConnectionState::Closed);
                }
                Event::LameDuckMode => {
                    tracing::warn!(target: "eventbus::connection", "server entered lame duck mode");
                }
                Event::Draining => {
                    tracing::info!(target: "eventbus::connection", "draining the connection");
                }
                Event::SlowConsumer(sid) => {
                    tracing::warn!(target: "eventbus::connection", sid, "slow consumer");
                }
                other => tracing::warn!(target: "eventbus::connection", event = %other, "connection event"),
            }
        }
    });
    opts = match &config.credentials {
        Credentials::None => opts,
        Credentials::UserPassword { user, password } => {
            opts.user_and_password(user.clone(), password.clone())
        }
        Credentials::Token(t) => opts.token(t.clone()),
        Credentials::NKey(seed) => opts.nkey(seed.clone()),
        Credentials::CredsFile(path) => opts.credentials_file(path).await.map_err(|e| {
            Error::new(
                ErrorKind::Config,
                format!("cannot read credentials file {}", path.display()),
            )
            .with_source(e)
        })?,
    };
    let tls = &config.tls;
    if tls.required {
        opts = opts.require_tls(true);
    }
    if let Some(ca) = &tls.ca_file {
        opts = opts.add_root_certificates(ca.clone()).require_tls(true);
    }
    match (&tls.cert_file, &tls.key_file) {
        (Some(c), Some(k)) => {
            opts = opts
                .add_client_certificate(c.clone(), k.clone())
                .require_tls(true)
        }
        (None, None) => {}
        _ => {
            return Err(Error::new(
                ErrorKind::Config,
                "a TLS client certificate needs both a cert file and a key file",
            ))
        }
    }
    let addrs: Vec<async_nats::ServerAddr> = urls
        .iter()
        .map(|u| {
            u.parse::<async_nats::ServerAddr>().map_err(|e| {
                Error::new(ErrorKind::Config, format!("invalid server URL {u:?}")).with_source(e)
            })
        })
        .collect::<Result<_, _>>()?;
    let client = opts.connect(addrs).await.map_err(|e| {
        Error::new(
            ErrorKind::Connect,
            format!("cannot connect to {}", urls.join(",")),
        )
        .with_source(e)
    })?;
    Ok(Connection {
        client,
        state,
        gave_up,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_attempt_does_not_wait_and_later_ones_wait_longer_up_to_eight_times() {
        let wait = Duration::from_secs(1);
        assert_eq!(
            reconnect_delay(wait, 1),
            Duration::ZERO,
            "a start connects at once"
        );
        assert_eq!(reconnect_delay(wait, 2), wait);
        assert_eq!(reconnect_delay(wait, 3), wait * 2);
        assert_eq!(reconnect_delay(wait, 50), wait * 8);
    }

    #[test]
    fn versions() {
        assert_eq!(parse_version("2.15.1"), Some((2, 15, 1)));
        assert_eq!(parse_version("v2.9.10"), Some((2, 9, 10)));
        assert_eq!(parse_version("2.11.0-beta.2"), Some((2, 11, 0)));
        assert_eq!(parse_version("x"), None);
    }
}
