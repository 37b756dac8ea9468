//! HTTP/1.1 framing for one request per connection (httparse), with size limits, and
//! responses in the exact form `ch-remote` parses (`HTTP/1.1 <code> \r\n`, no reason phrase).

/// Largest header block we accept.
pub const MAX_HEADER_BYTES: usize = 8 * 1024;
/// Largest body we accept.
pub const MAX_BODY_BYTES: usize = 64 * 1024;
const MAX_HEADERS: usize = 32;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpRequest {
    pub method: String,
    pub path: String,
    pub body: Vec<u8>,
}

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum HttpError {
    #[error("malformed HTTP request: {0}")]
    Malformed(String),
    #[error("request headers larger than {MAX_HEADER_BYTES} bytes")]
    HeadersTooLarge,
    #[error("request body larger than {MAX_BODY_BYTES} bytes")]
    BodyTooLarge,
    #[error("only HTTP/1.1 is supported")]
    Version,
    #[error("chunked or other transfer encodings are not supported; send Content-Length")]
    TransferEncoding,
    #[error("invalid Content-Length")]
    ContentLength,
}

impl HttpError {
    pub fn status(&self) -> u16 {
        match self {
            HttpError::HeadersTooLarge | HttpError::BodyTooLarge => 413,
            HttpError::TransferEncoding => 501,
            _ => 400,
        }
    }
}

/// Parses the bytes read so far. `Ok(None)`: incomplete, read more.
pub fn parse_request(buf: &[u8]) -> Result<Option<HttpRequest>, HttpError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let header_len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() > MAX_HEADER_BYTES => return Err(HttpError::HeadersTooLarge),
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(HttpError::HeadersTooLarge),
        Err(e) => return Err(HttpError::Malformed(e.to_string())),
    };
    if header_len > MAX_HEADER_BYTES {
        return Err(HttpError::HeadersTooLarge);
    }
    if req.version != Some(1) {
        return Err(HttpError::Version);
    }
    let mut content_length: Option<usize> = None;
    for h in req.headers.iter() {
        if h.name.eq_ignore_ascii_case("transfer-encoding") {
            return Err(HttpError::TransferEncoding);
        }
        if h.name.eq_ignore_ascii_case("content-length") {
            let text = std::str::from_utf8(h.value).map_err(|_| HttpError::ContentLength)?.trim();
            if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
                return Err(HttpError::ContentLength);
            }
            let n: usize = text.parse().map_err(|_| HttpError::ContentLength)?;
            if content_length.is_some_and(|c| c != n) {
                return Err(HttpError::ContentLength);
            }
            content_length = Some(n);
        }
    }
    let body_len = content_length.unwrap_or(0);
    if body_len > MAX_BODY_BYTES {
        return Err(HttpError::BodyTooLarge);
    }
    let available = buf.len() - header_len;
    if available < body_len {
        return Ok(None);
    }
    if available > body_len {
        return Err(HttpError::Malformed("more bytes than Content-Length (one request per connection)".into()));
    }
    Ok(Some(HttpRequest {
        method: req.method.unwrap_or_default().to_string(),
        path: req.path.unwrap_or_default().to_string(),
        body: buf[header_len..].to_vec(),
    }))
}

/// A response: status and optional JSON body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub body: Option<String>,
}

impl Response {
    pub fn no_content() -> Self {
        Self { status: 204, body: None }
    }

    /// A JSON body; non-ASCII characters are escaped (ch-remote checks UTF-8 per 256-byte
    /// read and would fail on a character split across reads).
    pub fn json(status: u16, body: String) -> Self {
        Self { status, body: Some(ascii_json(&body)) }
    }

    /// An error in Cloud Hypervisor's shape: a JSON array of strings.
    pub fn error(status: u16, message: &str) -> Self {
        Self::json(status, serde_json::json!([message]).to_string())
    }

    /// The bytes on the wire. The status line has no reason phrase (ch-remote rejects one);
    /// non-ASCII in bodies is escaped by serde_json's callers' choice of ASCII strings.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = format!("HTTP/1.1 {} \r\nServer: vfvmm\r\nConnection: close\r\n", self.status);
        match &self.body {
            Some(body) => {
                out.push_str("Content-Type: application/json\r\n");
                out.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
                out.push_str(body);
            }
            None => out.push_str("\r\n"),
        }
        out.into_bytes()
    }
}

/// Escapes every non-ASCII character of serialized JSON as `\uXXXX` (they only occur inside
/// strings, where the escape means the same).
pub fn ascii_json(json: &str) -> String {
    let mut out = String::with_capacity(json.len());
    for c in json.chars() {
        if c.is_ascii() {
            out.push(c);
        } else {
            let mut units = [0u16; 2];
            for unit in c.encode_utf16(&mut units) {
                out.push_str(&format!("\\u{unit:04x}"));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ch_remote_request_in_pieces() {
        let full = b"PUT /api/v1/vm.remove-device HTTP/1.1\r\nHost: localhost\r\nAccept: */*\r\nContent-Length: 12\r\n\r\n{\"id\":\"vf0\"}";
        for cut in [10, 40, 80, full.len() - 3] {
            assert_eq!(parse_request(&full[..cut]), Ok(None), "cut at {cut}");
        }
        let r = parse_request(full).unwrap().unwrap();
        assert_eq!((r.method.as_str(), r.path.as_str()), ("PUT", "/api/v1/vm.remove-device"));
        assert_eq!(r.body, b"{\"id\":\"vf0\"}");
        let ping =
            parse_request(b"GET /api/v1/vmm.ping HTTP/1.1\r\nHost: localhost\r\nAccept: */*\r\n\r\n").unwrap().unwrap();
        assert!(ping.body.is_empty());
    }

    #[test]
    fn framing_errors() {
        let cases: Vec<(Vec<u8>, HttpError)> = vec![
            (b"GARBAGE\r\n\r\n".to_vec(), HttpError::Malformed("invalid token".into())),
            (b"GET /x HTTP/1.0\r\n\r\n".to_vec(), HttpError::Version),
            (b"GET /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec(), HttpError::TransferEncoding),
            (b"PUT /x HTTP/1.1\r\nContent-Length: abc\r\n\r\n".to_vec(), HttpError::ContentLength),
            (b"PUT /x HTTP/1.1\r\nContent-Length: -1\r\n\r\n".to_vec(), HttpError::ContentLength),
            (b"PUT /x HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab".to_vec(), HttpError::ContentLength),
            (b"PUT /x HTTP/1.1\r\nContent-Length: 999999\r\n\r\n".to_vec(), HttpError::BodyTooLarge),
            (
                b"PUT /x HTTP/1.1\r\nContent-Length: 1\r\n\r\nab".to_vec(),
                HttpError::Malformed("more bytes than Content-Length (one request per connection)".into()),
            ),
        ];
        for (bytes, want) in cases {
            assert_eq!(parse_request(&bytes), Err(want.clone()), "{:?}", String::from_utf8_lossy(&bytes));
            assert!((400..600).contains(&want.status()));
        }
        let mut huge = b"GET /x HTTP/1.1\r\nX-Pad: ".to_vec();
        huge.extend(std::iter::repeat_n(b'a', MAX_HEADER_BYTES + 10));
        assert_eq!(parse_request(&huge), Err(HttpError::HeadersTooLarge));
        let many: String = (0..40).map(|i| format!("H{i}: v\r\n")).collect();
        assert_eq!(parse_request(format!("GET /x HTTP/1.1\r\n{many}\r\n").as_bytes()), Err(HttpError::HeadersTooLarge));
    }

    #[test]
    fn bodies_are_ascii() {
        let r = Response::error(400, "bad path /sys/é😀");
        let body = r.body.unwrap();
        assert!(body.is_ascii(), "{body}");
        let back: Vec<String> = serde_json::from_str(&body).unwrap();
        assert_eq!(back, vec!["bad path /sys/é😀".to_string()]);
    }

    #[test]
    fn responses_have_no_reason_phrase_and_exact_content_length() {
        let r = Response::error(404, "no device 'x'").to_bytes();
        let text = String::from_utf8(r).unwrap();
        assert!(text.starts_with("HTTP/1.1 404 \r\n"), "{text}");
        assert!(text.contains("Content-Length: 17\r\n\r\n[\"no device 'x'\"]"), "{text}");
        let text = String::from_utf8(Response::no_content().to_bytes()).unwrap();
        assert!(
            text.starts_with("HTTP/1.1 204 \r\n") && !text.contains("Content-Length") && text.ends_with("\r\n\r\n")
        );
    }
}
