//! Reading a container's log file for `logs`: filters by stream and time, `--tail`, and follow.

use std::fs::File;
use std::io::{BufRead, BufReader, Seek, SeekFrom};
use std::path::Path;

use crate::shim::logfile::{self, Record, Stream};

/// What to read.
#[derive(Debug, Clone, Default)]
pub struct Query {
    pub since: i64,
    pub until: i64,
    /// Last N records; negative: all.
    pub tail: i64,
    pub stdout: bool,
    pub stderr: bool,
}

impl Query {
    pub fn wants(&self, r: &Record) -> bool {
        let stream_ok = (!self.stdout && !self.stderr)
            || (self.stdout && r.stream == Stream::Stdout)
            || (self.stderr && r.stream == Stream::Stderr);
        stream_ok
            && (self.since == 0 || r.time_unix_nano >= self.since)
            && (self.until == 0 || r.time_unix_nano <= self.until)
    }
}

/// The records of `path` that `q` selects, and the offset after the last complete line read.
pub fn read(path: &Path, q: &Query) -> std::io::Result<(Vec<Record>, u64)> {
    let f = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((Vec::new(), 0)),
        Err(e) => return Err(e),
    };
    let (mut out, off) = read_from(f, 0, q)?;
    if q.tail >= 0 && out.len() as i64 > q.tail {
        out.drain(..out.len() - q.tail as usize);
    }
    Ok((out, off))
}

/// Complete records from byte `offset` on; returns them and the new offset (a torn last line
/// is left for the next call).
pub fn read_from(mut f: File, offset: u64, q: &Query) -> std::io::Result<(Vec<Record>, u64)> {
    f.seek(SeekFrom::Start(offset))?;
    let mut r = BufReader::new(f);
    let mut off = offset;
    let mut out = Vec::new();
    let mut line = Vec::new();
    loop {
        line.clear();
        let n = r.read_until(b'\n', &mut line)?;
        if n == 0 || line.last() != Some(&b'\n') {
            break;
        }
        off += n as u64;
        if let Some(rec) = logfile::decode(&line) {
            if q.wants(&rec) {
                out.push(rec);
            }
        }
    }
    Ok((out, off))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn tail_since_streams_and_torn_lines() {
        let tmp = tempfile::tempdir().expect("tmp");
        let p = tmp.path().join("log");
        let mut f = File::create(&p).expect("create");
        for i in 0..10i64 {
            let s = if i % 2 == 0 {
                Stream::Stdout
            } else {
                Stream::Stderr
            };
            f.write_all(&logfile::encode(
                i * 10,
                s,
                format!("line {i}").as_bytes(),
                true,
            ))
            .expect("w");
        }
        f.write_all(b"2026-11-28T10:00:00.000000000Z stdout F torn")
            .expect("w");
        let all = read(
            &p,
            &Query {
                tail: -1,
                ..Default::default()
            },
        )
        .expect("read")
        .0;
        assert_eq!(all.len(), 10);
        let last = read(
            &p,
            &Query {
                tail: 3,
                ..Default::default()
            },
        )
        .expect("read")
        .0;
        assert_eq!(last[0].data, b"line 7\n");
        let since = read(
            &p,
            &Query {
                tail: -1,
                since: 50,
                ..Default::default()
            },
        )
        .expect("read")
        .0;
        assert_eq!(since.len(), 5);
        let errs = read(
            &p,
            &Query {
                tail: -1,
                stderr: true,
                ..Default::default()
            },
        )
        .expect("read")
        .0;
        assert!(errs.iter().all(|r| r.stream == Stream::Stderr) && errs.len() == 5);
        let until = read(
            &p,
            &Query {
                tail: -1,
                until: 20,
                ..Default::default()
            },
        )
        .expect("read")
        .0;
        assert_eq!(until.len(), 3);
        // Follow: the torn line is picked up once complete.
        let (_, off) = read(
            &p,
            &Query {
                tail: -1,
                ..Default::default()
            },
        )
        .expect("read");
        f.write_all(b"\n").expect("w");
        let (more, _) = read_from(
            File::open(&p).expect("open"),
            off,
            &Query {
                tail: -1,
                ..Default::default()
            },
        )
        .expect("more");
        assert_eq!(more.len(), 1);
        assert_eq!(more[0].data, b"torn\n");
        assert_eq!(
            read(&tmp.path().join("none"), &Query::default())
                .expect("missing")
                .0
                .len(),
            0
        );
    }
}
