//! A blocking control-socket client: one request in flight at a time.

use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use mediagw_shared::control::{
    Call, DEFAULT_MAX_SERVER_LINE, Hello, HelloReply, LineFramer, Op, PROTOCOL_VERSION, Request,
    ServerMessage, decode_reply, encode_request, parse_server_message,
};
use serde_json::Value;

use crate::error::{CtlError, SocketKind};

/// A connection to the control socket, handshake done.
///
/// [`call`](Self::call) sends one request and waits for the response with
/// its id, skipping pushed events (and stale responses) meanwhile; each call
/// waits at most the connection's timeout.
#[derive(Debug)]
pub struct Client {
    stream: UnixStream,
    framer: LineFramer,
    next_id: u64,
    timeout: Duration,
    server: HelloReply,
}

impl Client {
    /// Connects to `path` and says `hello`, checking the version.
    pub fn connect(path: &Path, timeout: Duration) -> Result<Self, CtlError> {
        let stream = UnixStream::connect(path).map_err(|source| CtlError::Connect {
            which: SocketKind::Control,
            path: path.to_owned(),
            source,
        })?;
        stream
            .set_write_timeout(Some(timeout))
            .map_err(|e| CtlError::io("control socket", e))?;
        let mut client = Self {
            stream,
            framer: LineFramer::new(DEFAULT_MAX_SERVER_LINE),
            next_id: 1,
            timeout,
            server: HelloReply {
                version: PROTOCOL_VERSION,
                server: String::new(),
                ops: Vec::new(),
            },
        };
        let reply = client.call(Hello::new(crate::CLIENT_NAME))?;
        if reply.version != PROTOCOL_VERSION {
            return Err(CtlError::Version {
                server: reply.version,
                client: PROTOCOL_VERSION,
            });
        }
        client.server = reply;
        Ok(client)
    }

    /// What the server said in `hello`.
    pub fn server(&self) -> &HelloReply {
        &self.server
    }

    /// Sends `request` and decodes its result.
    pub fn call<C: Call>(&mut self, request: C) -> Result<C::Reply, CtlError> {
        let result = self.call_value(request)?;
        decode_reply::<C>(result).map_err(|e| CtlError::Protocol(e.to_string()))
    }

    /// Sends `op` and returns its result as the server sent it (for
    /// `--json`: fields a newer server adds survive).
    pub fn call_value(&mut self, op: impl Into<Op>) -> Result<Value, CtlError> {
        let id = self.next_id;
        self.next_id += 1;
        let line = encode_request(&Request::new(id, op));
        self.stream
            .write_all(line.as_bytes())
            .map_err(|e| self.lost(e))?;
        self.read_response(id, crate::now() + self.timeout)
    }

    fn read_response(&mut self, id: u64, deadline: Instant) -> Result<Value, CtlError> {
        let mut buf = vec![0; 64 * 1024];
        loop {
            while let Some(line) = self.framer.next_line() {
                let line = line.map_err(|e| CtlError::Protocol(e.to_string()))?;
                let message =
                    parse_server_message(line).map_err(|e| CtlError::Protocol(e.0.clone()))?;
                match message {
                    ServerMessage::Response {
                        id: Some(got),
                        result,
                    } if got == id => return result.map_err(CtlError::Server),
                    // An error about a line the server could not read: with
                    // one request in flight, ours.
                    ServerMessage::Response {
                        id: None,
                        result: Err(e),
                    } => return Err(CtlError::Server(e)),
                    // Pushed events, and responses to requests we gave up on.
                    _ => {}
                }
            }
            let left = deadline.saturating_duration_since(crate::now());
            if left.is_zero() {
                return Err(self.timed_out());
            }
            self.stream
                .set_read_timeout(Some(left))
                .map_err(|e| CtlError::io("control socket", e))?;
            match self.stream.read(&mut buf) {
                Ok(0) => {
                    return Err(CtlError::Closed {
                        which: SocketKind::Control,
                        mid_message: self.framer.buffered() > 0,
                    });
                }
                Ok(n) => self.framer.push(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(self.lost(e)),
            }
        }
    }

    fn timed_out(&self) -> CtlError {
        CtlError::Timeout {
            which: SocketKind::Control,
            after: self.timeout,
        }
    }

    /// Maps a socket error: timeouts and resets get their own variants.
    fn lost(&self, e: io::Error) -> CtlError {
        match e.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => self.timed_out(),
            io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe => CtlError::Closed {
                which: SocketKind::Control,
                mid_message: self.framer.buffered() > 0,
            },
            _ => CtlError::io("control socket", e),
        }
    }
}
