//! HTTP/1.1 on the API socket: one request at a time off the front of a
//! byte buffer (the head through `httparse`, the body by its
//! `Content-Length`), and responses with a JSON body.
//!
//! Only what the API needs is accepted: a request line, at most
//! [`MAX_HEADERS`] headers in at most [`MAX_HEAD`] bytes, and a body of at
//! most [`MAX_BODY`] bytes given by `Content-Length`. Anything else is an
//! [`HttpError`], which the connection answers and then closes (its
//! stream cannot be trusted to be in step any more).

use std::fmt;

/// The most bytes a request's line and headers may take.
pub const MAX_HEAD: usize = 8 * 1024;
/// The most headers a request may have.
pub const MAX_HEADERS: usize = 32;
/// The largest body a request may have.
pub const MAX_BODY: usize = 64 * 1024;

/// One request, read whole.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    /// The method as sent (`GET`, `PUT`, ...).
    pub method: String,
    /// The request target as sent (`/api/v1/vm.info`).
    pub path: String,
    /// The body (empty without `Content-Length`).
    pub body: Vec<u8>,
    /// Whether the client keeps the connection open after the response
    /// (HTTP/1.1 unless `Connection: close`; HTTP/1.0 only with
    /// `Connection: keep-alive`).
    pub keep_alive: bool,
}

/// What the front of a buffer holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Parsed {
    /// Not a whole request yet: read more.
    Incomplete,
    /// A request, which took the first `consumed` bytes.
    Complete {
        /// The request.
        request: Request,
        /// Its length in the buffer.
        consumed: usize,
    },
}

/// Why bytes are not a request the API takes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HttpError {
    /// The request line or a header is not HTTP (httparse's reason).
    Malformed(String),
    /// The line and headers are longer than [`MAX_HEAD`].
    HeadTooLarge,
    /// More than [`MAX_HEADERS`] headers.
    TooManyHeaders,
    /// A `Content-Length` that is not one decimal number, or two that
    /// differ.
    BadContentLength,
    /// A body longer than [`MAX_BODY`] (the length the client announced).
    BodyTooLarge(u64),
    /// `Transfer-Encoding` (chunked bodies) is not supported.
    TransferEncoding,
}

impl HttpError {
    /// The HTTP status that answers it.
    pub fn status(&self) -> u16 {
        match self {
            HttpError::Malformed(_) | HttpError::BadContentLength => 400,
            HttpError::HeadTooLarge | HttpError::TooManyHeaders => 431,
            HttpError::BodyTooLarge(_) => 413,
            HttpError::TransferEncoding => 501,
        }
    }
}

impl fmt::Display for HttpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HttpError::Malformed(why) => write!(f, "not an HTTP/1.x request: {why}"),
            HttpError::HeadTooLarge => {
                write!(f, "the request line and headers exceed {MAX_HEAD} bytes")
            }
            HttpError::TooManyHeaders => write!(f, "more than {MAX_HEADERS} headers"),
            HttpError::BadContentLength => write!(f, "Content-Length is not one decimal number"),
            HttpError::BodyTooLarge(n) => {
                write!(f, "a body of {n} bytes exceeds the limit of {MAX_BODY}")
            }
            HttpError::TransferEncoding => {
                write!(f, "Transfer-Encoding is not supported: send Content-Length")
            }
        }
    }
}

impl std::error::Error for HttpError {}

/// The first request in `buf`, if it is all there.
pub fn parse(buf: &[u8]) -> Result<Parsed, HttpError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let head_len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) if n > MAX_HEAD => return Err(HttpError::HeadTooLarge),
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() > MAX_HEAD => {
            return Err(HttpError::HeadTooLarge)
        }
        Ok(httparse::Status::Partial) => return Ok(Parsed::Incomplete),
        Err(httparse::Error::TooManyHeaders) => return Err(HttpError::TooManyHeaders),
        Err(e) => return Err(HttpError::Malformed(e.to_string())),
    };
    // A complete head always has a method, a path and a version.
    let (Some(method), Some(path), Some(version)) = (req.method, req.path, req.version) else {
        return Err(HttpError::Malformed("incomplete request line".into()));
    };
    let mut length: Option<u64> = None;
    let mut connection: Option<&[u8]> = None;
    for h in req.headers.iter() {
        if h.name.eq_ignore_ascii_case("content-length") {
            let v = std::str::from_utf8(h.value)
                .ok()
                .map(str::trim)
                .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|v| v.parse::<u64>().ok())
                .ok_or(HttpError::BadContentLength)?;
            if length.is_some_and(|l| l != v) {
                return Err(HttpError::BadContentLength);
            }
            length = Some(v);
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            return Err(HttpError::TransferEncoding);
        } else if h.name.eq_ignore_ascii_case("connection") {
            connection = Some(h.value);
        }
    }
    let length = length.unwrap_or(0);
    if length > MAX_BODY as u64 {
        return Err(HttpError::BodyTooLarge(length));
    }
    // Within MAX_HEAD + MAX_BODY: no overflow.
    let end = head_len + length as usize;
    if buf.len() < end {
        return Ok(Parsed::Incomplete);
    }
    let has = |word: &str| {
        connection.is_some_and(|v| {
            v.split(|b| *b == b',')
                .any(|t| t.trim_ascii().eq_ignore_ascii_case(word.as_bytes()))
        })
    };
    let keep_alive = if version == 0 {
        has("keep-alive")
    } else {
        !has("close")
    };
    Ok(Parsed::Complete {
        request: Request {
            method: method.to_string(),
            path: path.to_string(),
            body: buf[head_len..end].to_vec(),
            keep_alive,
        },
        consumed: end,
    })
}

/// A response: a status and a JSON body.
#[derive(Clone, Debug, PartialEq)]
pub struct Response {
    /// The HTTP status.
    pub status: u16,
    /// The body.
    pub body: serde_json::Value,
    /// For 405: the methods the path takes (the `Allow` header).
    pub allow: Option<&'static str>,
}

impl Response {
    /// 200 with `body`.
    pub fn ok(body: serde_json::Value) -> Self {
        Self {
            status: 200,
            body,
            allow: None,
        }
    }

    /// An error: `status`, and a body `{"error": code, "message": message}`.
    pub fn error(status: u16, code: &str, message: impl Into<String>) -> Self {
        Self {
            status,
            body: serde_json::json!({ "error": code, "message": message.into() }),
            allow: None,
        }
    }

    /// The error code of an error response (`None` for a success).
    pub fn error_code(&self) -> Option<&str> {
        self.body.get("error").and_then(serde_json::Value::as_str)
    }

    /// The bytes to send, with `Connection: close` unless `keep_alive`.
    pub fn encode(&self, keep_alive: bool) -> Vec<u8> {
        // Serializing a `Value` cannot fail.
        let body = serde_json::to_string(&self.body).unwrap_or_default() + "\n";
        let mut head = format!(
            "HTTP/1.1 {} {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n",
            self.status,
            reason(self.status),
            body.len()
        );
        if let Some(allow) = self.allow {
            head += &format!("Allow: {allow}\r\n");
        }
        if !keep_alive {
            head += "Connection: close\r\n";
        }
        head += "\r\n";
        let mut out = head.into_bytes();
        out.extend_from_slice(body.as_bytes());
        out
    }
}

/// The reason phrase of the statuses the API sends.
fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        409 => "Conflict",
        413 => "Payload Too Large",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        _ => "",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn complete(buf: &[u8]) -> (Request, usize) {
        match parse(buf) {
            Ok(Parsed::Complete { request, consumed }) => (request, consumed),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_request_with_a_body_is_read_whole_and_the_next_is_left() {
        let two = b"PUT /api/v1/vm.pause HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}GET /a HTTP/1.1\r\n\r\n";
        let (r, used) = complete(two);
        assert_eq!(r.method, "PUT");
        assert_eq!(r.path, "/api/v1/vm.pause");
        assert_eq!(r.body, b"{}");
        assert!(r.keep_alive);
        let (r2, used2) = complete(&two[used..]);
        assert_eq!((r2.method.as_str(), r2.body.len()), ("GET", 0));
        assert_eq!(used + used2, two.len());
    }

    #[test]
    fn partial_requests_ask_for_more() {
        let full = b"PUT /x HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello";
        for cut in 0..full.len() {
            assert_eq!(parse(&full[..cut]), Ok(Parsed::Incomplete), "cut at {cut}");
        }
        assert!(matches!(parse(full), Ok(Parsed::Complete { .. })));
    }

    #[test]
    fn connection_close_and_http_1_0_end_the_connection() {
        let (r, _) = complete(b"GET / HTTP/1.1\r\nConnection: Close\r\n\r\n");
        assert!(!r.keep_alive);
        let (r, _) = complete(b"GET / HTTP/1.0\r\n\r\n");
        assert!(!r.keep_alive);
        let (r, _) = complete(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
        assert!(r.keep_alive);
    }

    #[test]
    fn what_the_api_does_not_take_is_refused_with_a_status() {
        let cases: [(&[u8], u16); 7] = [
            (b"GARBAGE\r\n\r\n", 400),
            (b"GET / HTTP/2.0\r\n\r\n", 400),
            (b"PUT / HTTP/1.1\r\nContent-Length: -1\r\n\r\n", 400),
            (
                b"PUT / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
                400,
            ),
            (b"PUT / HTTP/1.1\r\nContent-Length: 99999999\r\n\r\n", 413),
            (b"PUT / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n", 501),
            (&[b'G'; MAX_HEAD + 1], 431),
        ];
        for (bytes, status) in cases {
            let e = parse(bytes).expect_err(&String::from_utf8_lossy(bytes));
            assert_eq!(e.status(), status, "{e}");
        }
        let many = format!(
            "GET / HTTP/1.1\r\n{}\r\n",
            "A: b\r\n".repeat(MAX_HEADERS + 1)
        );
        assert_eq!(parse(many.as_bytes()), Err(HttpError::TooManyHeaders));
    }

    #[test]
    fn responses_carry_their_length_and_json() {
        let r = Response::error(404, "not_found", "no such path");
        let bytes = String::from_utf8(r.encode(false)).unwrap();
        let (head, body) = bytes.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 404 Not Found\r\n"), "{head}");
        assert!(head.contains(&format!("Content-Length: {}", body.len())));
        assert!(head.contains("Connection: close"));
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(v["error"], "not_found");
        assert_eq!(r.error_code(), Some("not_found"));
    }
}
