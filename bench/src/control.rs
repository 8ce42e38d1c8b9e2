//! A blocking control-socket client that can pipeline: the harness creates
//! and destroys thousands of endpoints, and measures how fast the daemon
//! does it, one request in flight or many.
//!
//! The protocol (every type, the framing) is `mediagw-shared`'s; this only
//! drives it over a `UnixStream`. Pushed events are skipped.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use mediagw_shared::control::{
    Call, DEFAULT_MAX_SERVER_LINE, ErrorBody, Hello, LineFramer, PROTOCOL_VERSION, Request,
    ServerMessage, decode_reply, encode_request, parse_server_message,
};
use serde_json::Value;

use crate::error::{BenchError, Context, Result};

/// A connection to the daemon's control socket, handshake done.
#[derive(Debug)]
pub struct Control {
    stream: UnixStream,
    framer: LineFramer,
    next_id: u64,
    buf: Vec<u8>,
}

impl Control {
    /// Connects and says `hello`. Every read waits at most `timeout`.
    pub fn connect(path: &Path, timeout: Duration) -> Result<Self> {
        let stream =
            UnixStream::connect(path).context(format_args!("connecting to {}", path.display()))?;
        stream.set_read_timeout(Some(timeout))?;
        stream.set_write_timeout(Some(timeout))?;
        let mut c = Self {
            stream,
            framer: LineFramer::new(DEFAULT_MAX_SERVER_LINE),
            next_id: 1,
            buf: vec![0; 256 * 1024],
        };
        let hello = c
            .call(Hello::new(concat!("rtpload/", env!("CARGO_PKG_VERSION"))))
            .map_err(|e| e.context("hello"))?;
        if hello.version != PROTOCOL_VERSION {
            return Err(BenchError::new(format!(
                "the daemon speaks control protocol {}, rtpload {}",
                hello.version, PROTOCOL_VERSION
            )));
        }
        Ok(c)
    }

    /// One request, one answer.
    pub fn call<C: Call>(&mut self, request: C) -> Result<C::Reply> {
        let mut out = self.pipeline(std::iter::once(request), 1)?;
        match out.pop() {
            Some(Ok(r)) => Ok(r),
            Some(Err(e)) => Err(BenchError::new(format!("{}: {}", e.code.name(), e.message))),
            None => Err(BenchError::new("no answer")),
        }
    }

    /// Sends `requests` with up to `depth` in flight and returns each
    /// answer (success or the server's error) in request order.
    pub fn pipeline<C: Call>(
        &mut self,
        requests: impl IntoIterator<Item = C>,
        depth: usize,
    ) -> Result<Vec<std::result::Result<C::Reply, ErrorBody>>> {
        let requests: Vec<C> = requests.into_iter().collect();
        let total = requests.len();
        let mut answers: Vec<Option<std::result::Result<C::Reply, ErrorBody>>> =
            (0..total).map(|_| None).collect();
        let mut pending: HashMap<u64, usize> = HashMap::with_capacity(depth.max(1));
        let mut iter = requests.into_iter().enumerate();
        let mut done = 0;
        let mut out = String::new();
        while done < total {
            out.clear();
            while pending.len() < depth.max(1) {
                let Some((i, req)) = iter.next() else { break };
                let id = self.next_id;
                self.next_id += 1;
                out.push_str(&encode_request(&Request::new(id, req)));
                pending.insert(id, i);
            }
            if !out.is_empty() {
                self.stream
                    .write_all(out.as_bytes())
                    .context("writing to the control socket")?;
            }
            let (id, result) = self.next_response()?;
            let Some(i) = id.and_then(|id| pending.remove(&id)) else {
                return Err(BenchError::new(format!(
                    "an answer to no request of ours: {id:?} {result:?}"
                )));
            };
            answers[i] = Some(match result {
                Ok(v) => Ok(decode_reply::<C>(v).context("decoding an answer")?),
                Err(e) => Err(e),
            });
            done += 1;
        }
        Ok(answers.into_iter().flatten().collect())
    }

    fn next_response(&mut self) -> Result<(Option<u64>, std::result::Result<Value, ErrorBody>)> {
        loop {
            while let Some(line) = self.framer.next_line() {
                let line = line.context("control line")?;
                match parse_server_message(line).context("control answer")? {
                    ServerMessage::Response { id, result } => return Ok((id, result)),
                    _ => continue,
                }
            }
            let n = self
                .stream
                .read(&mut self.buf)
                .context("reading the control socket")?;
            if n == 0 {
                return Err(BenchError::new("the daemon closed the control socket"));
            }
            self.framer.push(&self.buf[..n]);
        }
    }
}
