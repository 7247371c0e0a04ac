//! A minimal HTTP/1.0 client for the server's monitoring endpoints (`/healthz`, `/jsz`, ...).

use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How long one request may take; the monitor is on loopback, so this only bounds a hung server.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// A response: the status code and the body.
#[derive(Debug)]
pub(crate) struct Response {
    pub(crate) status: u16,
    pub(crate) body: String,
}

/// `GET http://127.0.0.1:{port}{path}`.
pub(crate) async fn get(port: u16, path: &str) -> Result<Response, String> {
    let request = async {
        let mut stream = TcpStream::connect(("127.0.0.1", port)).await?;
        let head = format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\n\r\n");
        stream.write_all(head.as_bytes()).await?;
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).await?;
        Ok::<_, std::io::Error>(raw)
    };
    let raw = tokio::time::timeout(REQUEST_TIMEOUT, request)
        .await
        .map_err(|_| format!("GET {path} on port {port} timed out"))?
        .map_err(|e| format!("GET {path} on port {port}: {e}"))?;
    parse(&raw).ok_or_else(|| {
        format!(
            "GET {path} on port {port}: malformed response {:?}",
            String::from_utf8_lossy(&raw)
        )
    })
}

/// `GET` a JSON endpoint; a non-200 status is an error carrying the body.
pub(crate) async fn get_json(port: u16, path: &str) -> Result<serde_json::Value, String> {
    let response = get(port, path).await?;
    if response.status != 200 {
        return Err(format!(
            "GET {path} on port {port}: status {}: {}",
            response.status, response.body
        ));
    }
    serde_json::from_str(&response.body)
        .map_err(|e| format!("GET {path} on port {port}: {e}: {}", response.body))
}

fn parse(raw: &[u8]) -> Option<Response> {
    let text = String::from_utf8_lossy(raw);
    let (head, body) = text.split_once("\r\n\r\n")?;
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    Some(Response {
        status,
        body: body.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_status_and_body() {
        let response = parse(b"HTTP/1.0 503 Service Unavailable\r\nContent-Type: application/json\r\n\r\n{\"status\":\"unavailable\"}").unwrap();
        assert_eq!(response.status, 503);
        assert_eq!(response.body, "{\"status\":\"unavailable\"}");
    }

    #[test]
    fn rejects_a_truncated_response() {
        assert!(parse(b"HTTP/1.0 200 OK\r\nContent-Length: 3").is_none());
    }
}
