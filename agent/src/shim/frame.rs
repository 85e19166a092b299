//! The byte protocol on a shim's unix socket: frames `[kind: u8][len: u32 BE][payload]`.
//!
//! Client -> shim: stdin bytes, close stdin, terminal resize, start. Shim -> client: stdout and
//! stderr chunks, `started`, an error, and the final exit status (always the last frame). A
//! payload is at most [`MAX_PAYLOAD`] bytes; anything else is a protocol error, never a panic.

use std::io::{self, Read, Write};

/// Largest payload a frame may carry.
pub const MAX_PAYLOAD: usize = 1 << 20;

const STDIN: u8 = 0;
const STDOUT: u8 = 1;
const STDERR: u8 = 2;
const RESIZE: u8 = 3;
const CLOSE_STDIN: u8 = 4;
const START: u8 = 5;
const EXIT: u8 = 6;
const STARTED: u8 = 7;
const ERROR: u8 = 8;

/// A frame in either direction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    Stdin(Vec<u8>),
    CloseStdin,
    Resize { rows: u16, cols: u16 },
    Start,
    Stdout(Vec<u8>),
    Stderr(Vec<u8>),
    Started { pid: i32 },
    Error(String),
    Exit { code: i32, oom_killed: bool },
}

impl Frame {
    /// The frame's bytes on the wire.
    pub fn encode(&self) -> Vec<u8> {
        let (kind, payload): (u8, Vec<u8>) = match self {
            Frame::Stdin(d) => (STDIN, d.clone()),
            Frame::CloseStdin => (CLOSE_STDIN, Vec::new()),
            Frame::Resize { rows, cols } => {
                let mut p = rows.to_be_bytes().to_vec();
                p.extend_from_slice(&cols.to_be_bytes());
                (RESIZE, p)
            }
            Frame::Start => (START, Vec::new()),
            Frame::Stdout(d) => (STDOUT, d.clone()),
            Frame::Stderr(d) => (STDERR, d.clone()),
            Frame::Started { pid } => (STARTED, pid.to_be_bytes().to_vec()),
            Frame::Error(m) => (ERROR, m.as_bytes().to_vec()),
            Frame::Exit { code, oom_killed } => {
                let mut p = code.to_be_bytes().to_vec();
                p.push(u8::from(*oom_killed));
                (EXIT, p)
            }
        };
        let mut out = Vec::with_capacity(5 + payload.len());
        out.push(kind);
        out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        out.extend_from_slice(&payload);
        out
    }

    /// Decodes one frame from its kind and payload.
    pub fn decode(kind: u8, payload: Vec<u8>) -> io::Result<Frame> {
        let bad = |what: &str| io::Error::new(io::ErrorKind::InvalidData, what.to_string());
        Ok(match kind {
            STDIN => Frame::Stdin(payload),
            CLOSE_STDIN => Frame::CloseStdin,
            RESIZE => {
                let b: [u8; 4] = payload
                    .as_slice()
                    .try_into()
                    .map_err(|_| bad("resize frame must carry 4 bytes"))?;
                Frame::Resize {
                    rows: u16::from_be_bytes([b[0], b[1]]),
                    cols: u16::from_be_bytes([b[2], b[3]]),
                }
            }
            START => Frame::Start,
            STDOUT => Frame::Stdout(payload),
            STDERR => Frame::Stderr(payload),
            STARTED => {
                let b: [u8; 4] = payload
                    .as_slice()
                    .try_into()
                    .map_err(|_| bad("started frame must carry 4 bytes"))?;
                Frame::Started {
                    pid: i32::from_be_bytes(b),
                }
            }
            ERROR => Frame::Error(String::from_utf8_lossy(&payload).into_owned()),
            EXIT => {
                if payload.len() != 5 {
                    return Err(bad("exit frame must carry 5 bytes"));
                }
                Frame::Exit {
                    code: i32::from_be_bytes([payload[0], payload[1], payload[2], payload[3]]),
                    oom_killed: payload[4] != 0,
                }
            }
            k => return Err(bad(&format!("unknown frame kind {k}"))),
        })
    }

    /// Reads one frame; `Ok(None)` at a clean end of stream.
    pub fn read_from(r: &mut impl Read) -> io::Result<Option<Frame>> {
        let mut head = [0u8; 5];
        match r.read_exact(&mut head[..1]) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
            Err(e) => return Err(e),
        }
        r.read_exact(&mut head[1..])?;
        let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
        if len > MAX_PAYLOAD {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("frame of {len} bytes exceeds the {MAX_PAYLOAD}-byte limit"),
            ));
        }
        let mut payload = vec![0u8; len];
        r.read_exact(&mut payload)?;
        Frame::decode(head[0], payload).map(Some)
    }

    /// Writes the frame in one call.
    pub fn write_to(&self, w: &mut impl Write) -> io::Result<()> {
        w.write_all(&self.encode())
    }
}

/// Incremental decoder for a non-blocking reader: feed bytes, take whole frames.
#[derive(Default)]
pub struct Decoder {
    buf: Vec<u8>,
}

impl Decoder {
    pub fn feed(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// The next complete frame, if the buffer holds one.
    pub fn next_frame(&mut self) -> io::Result<Option<Frame>> {
        if self.buf.len() < 5 {
            return Ok(None);
        }
        let len = u32::from_be_bytes([self.buf[1], self.buf[2], self.buf[3], self.buf[4]]) as usize;
        if len > MAX_PAYLOAD {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("frame of {len} bytes exceeds the {MAX_PAYLOAD}-byte limit"),
            ));
        }
        if self.buf.len() < 5 + len {
            return Ok(None);
        }
        let kind = self.buf[0];
        let payload = self.buf[5..5 + len].to_vec();
        self.buf.drain(..5 + len);
        Frame::decode(kind, payload).map(Some)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_frame_round_trips() {
        let frames = [
            Frame::Stdin(b"abc".to_vec()),
            Frame::CloseStdin,
            Frame::Resize { rows: 24, cols: 80 },
            Frame::Start,
            Frame::Stdout(vec![0, 255, 10]),
            Frame::Stderr(Vec::new()),
            Frame::Started { pid: 4242 },
            Frame::Error("boom".into()),
            Frame::Exit {
                code: 137,
                oom_killed: true,
            },
        ];
        let mut wire = Vec::new();
        for f in &frames {
            f.write_to(&mut wire).expect("write");
        }
        let mut r = wire.as_slice();
        for f in &frames {
            assert_eq!(Frame::read_from(&mut r).expect("read").as_ref(), Some(f));
        }
        assert_eq!(Frame::read_from(&mut r).expect("eof"), None);
        // The incremental decoder gets the same frames byte by byte.
        let mut d = Decoder::default();
        let mut got = Vec::new();
        for b in &wire {
            d.feed(&[*b]);
            while let Some(f) = d.next_frame().expect("decode") {
                got.push(f);
            }
        }
        assert_eq!(got, frames);
    }

    #[test]
    fn malformed_frames_are_errors() {
        assert!(Frame::decode(99, vec![]).is_err());
        assert!(Frame::decode(RESIZE, vec![1, 2, 3]).is_err());
        assert!(Frame::decode(EXIT, vec![0; 4]).is_err());
        let mut huge = vec![STDOUT];
        huge.extend_from_slice(&(MAX_PAYLOAD as u32 + 1).to_be_bytes());
        assert!(Frame::read_from(&mut huge.as_slice()).is_err());
        let mut d = Decoder::default();
        d.feed(&huge);
        assert!(d.next_frame().is_err());
        // A truncated frame is an error for the blocking reader, "not yet" for the decoder.
        let partial = Frame::Stdout(b"hello".to_vec()).encode();
        assert!(Frame::read_from(&mut &partial[..7]).is_err());
        let mut d = Decoder::default();
        d.feed(&partial[..7]);
        assert_eq!(d.next_frame().expect("partial"), None);
    }
}
