//! A minimal client for the API socket (what `vfctl` uses).

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot connect to {path}: {source}")]
    Connect { path: String, source: std::io::Error },
    #[error("API socket I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("malformed response from the VMM: {0}")]
    BadResponse(String),
}

/// Status and body of a response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientResponse {
    pub status: u16,
    pub body: String,
}

impl ClientResponse {
    pub fn ok(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// The server's error messages (a JSON array of strings), or the raw body.
    pub fn error_message(&self) -> String {
        serde_json::from_str::<Vec<String>>(&self.body).map(|m| m.join("; ")).unwrap_or_else(|_| self.body.clone())
    }
}

/// Sends one request and reads the whole response.
pub fn request(socket: &Path, method: &str, endpoint: &str, body: Option<&str>) -> Result<ClientResponse, ClientError> {
    let mut stream = UnixStream::connect(socket)
        .map_err(|source| ClientError::Connect { path: socket.display().to_string(), source })?;
    stream.set_read_timeout(Some(Duration::from_secs(120)))?;
    let mut req = format!("{method} /api/v1/{endpoint} HTTP/1.1\r\nHost: localhost\r\nAccept: */*\r\n");
    if let Some(b) = body {
        req.push_str(&format!("Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{b}", b.len()));
    } else {
        req.push_str("\r\n");
    }
    stream.write_all(req.as_bytes())?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    parse_response(&raw)
}

pub fn parse_response(raw: &[u8]) -> Result<ClientResponse, ClientError> {
    let text = String::from_utf8_lossy(raw);
    let (head, body) = text.split_once("\r\n\r\n").ok_or_else(|| ClientError::BadResponse("no header end".into()))?;
    let status_line = head.lines().next().unwrap_or_default();
    let status = status_line
        .strip_prefix("HTTP/1.1 ")
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| ClientError::BadResponse(status_line.to_string()))?;
    Ok(ClientResponse { status, body: body.to_string() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn responses_parse_with_and_without_reason() {
        let r = parse_response(b"HTTP/1.1 404 \r\nContent-Length: 7\r\n\r\n[\"no\"]x").unwrap();
        assert_eq!((r.status, r.ok()), (404, false));
        assert_eq!(parse_response(b"HTTP/1.1 204 No Content\r\n\r\n").unwrap().status, 204);
        let e = ClientResponse { status: 400, body: "[\"a\",\"b\"]".into() };
        assert_eq!(e.error_message(), "a; b");
        assert!(parse_response(b"garbage").is_err());
    }
}
