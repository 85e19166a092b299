//! Container log files in the CRI format (`kubelet`'s): one record per line,
//! `<RFC 3339 nano time> <stdout|stderr> <F|P> <content>\n`, `F` for a full line (its newline is
//! the record's), `P` for a partial one (a line longer than [`MAX_LINE`] or the last bytes before
//! the stream ended). The format is appendable, survives a crash at any byte (a torn last record
//! is skipped by the reader), and `tail`/`grep` work on it.

use std::time::{SystemTime, UNIX_EPOCH};

/// Longest line content kept in one record; longer lines are split into partial records.
pub const MAX_LINE: usize = 16 * 1024;

/// Which output stream a record came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

impl Stream {
    pub fn name(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }
}

/// One decoded log record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub time_unix_nano: i64,
    pub stream: Stream,
    /// Content with its newline when the record is a full line.
    pub data: Vec<u8>,
}

/// Nanoseconds since the epoch, now.
pub fn now_unix_nano() -> i64 {
    let d = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    d.as_secs() as i64 * 1_000_000_000 + i64::from(d.subsec_nanos())
}

/// RFC 3339 with nanoseconds, UTC (`2026-11-28T10:00:00.000000001Z`).
pub fn rfc3339_nano(t: i64) -> String {
    let secs = t.div_euclid(1_000_000_000);
    let nanos = t.rem_euclid(1_000_000_000) as u32;
    crate::runtime::state::rfc3339(secs, nanos)
}

/// Parses `rfc3339_nano`'s output (and second-precision variants) back to nanoseconds.
pub fn parse_rfc3339_nano(s: &str) -> Option<i64> {
    let s = s.strip_suffix('Z')?;
    let (date, time) = s.split_once('T')?;
    let mut d = date.splitn(3, '-');
    let y: i64 = d.next()?.parse().ok()?;
    let m: i64 = d.next()?.parse().ok()?;
    let day: i64 = d.next()?.parse().ok()?;
    let (hms, frac) = match time.split_once('.') {
        Some((a, b)) => (a, b),
        None => (time, ""),
    };
    let mut t = hms.splitn(3, ':');
    let hh: i64 = t.next()?.parse().ok()?;
    let mm: i64 = t.next()?.parse().ok()?;
    let ss: i64 = t.next()?.parse().ok()?;
    if !(1..=12).contains(&m) || !(1..=31).contains(&day) || hh > 23 || mm > 59 || ss > 60 {
        return None;
    }
    let mut nanos: i64 = 0;
    if !frac.is_empty() {
        if frac.len() > 9 || !frac.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        nanos = format!("{frac:0<9}").parse().ok()?;
    }
    // days from civil (Howard Hinnant)
    let y2 = if m <= 2 { y - 1 } else { y };
    let era = y2.div_euclid(400);
    let yoe = y2 - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some((days * 86_400 + hh * 3600 + mm * 60 + ss) * 1_000_000_000 + nanos)
}

/// Encodes one record.
pub fn encode(time_unix_nano: i64, stream: Stream, content: &[u8], full: bool) -> Vec<u8> {
    let ts = rfc3339_nano(time_unix_nano);
    let mut out = Vec::with_capacity(ts.len() + content.len() + 12);
    out.extend_from_slice(ts.as_bytes());
    out.push(b' ');
    out.extend_from_slice(stream.name().as_bytes());
    out.extend_from_slice(if full { b" F " } else { b" P " });
    out.extend_from_slice(content);
    out.push(b'\n');
    out
}

/// Decodes one line of a log file (without or with its trailing newline). `None` for a torn or
/// foreign line.
pub fn decode(line: &[u8]) -> Option<Record> {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    let mut parts = line.splitn(4, |b| *b == b' ');
    let ts = std::str::from_utf8(parts.next()?).ok()?;
    let stream = match parts.next()? {
        b"stdout" => Stream::Stdout,
        b"stderr" => Stream::Stderr,
        _ => return None,
    };
    let full = match parts.next()? {
        b"F" => true,
        b"P" => false,
        _ => return None,
    };
    let mut data = parts.next().unwrap_or_default().to_vec();
    if full {
        data.push(b'\n');
    }
    Some(Record {
        time_unix_nano: parse_rfc3339_nano(ts)?,
        stream,
        data,
    })
}

/// Splits a byte stream into log records: whole lines as `F`, over-long lines as `P` chunks.
#[derive(Default)]
pub struct LineSplitter {
    pending: Vec<u8>,
}

impl LineSplitter {
    /// Feeds `data`; returns the encoded records it completes.
    pub fn push(&mut self, stream: Stream, data: &[u8], now: i64) -> Vec<u8> {
        let mut out = Vec::new();
        self.pending.extend_from_slice(data);
        loop {
            if let Some(pos) = self.pending.iter().position(|b| *b == b'\n') {
                if pos <= MAX_LINE {
                    out.extend(encode(now, stream, &self.pending[..pos], true));
                    self.pending.drain(..=pos);
                    continue;
                }
            }
            if self.pending.len() > MAX_LINE {
                out.extend(encode(now, stream, &self.pending[..MAX_LINE], false));
                self.pending.drain(..MAX_LINE);
                continue;
            }
            break;
        }
        out
    }

    /// The bytes left without a newline, as one partial record (at the end of the stream).
    pub fn flush(&mut self, stream: Stream, now: i64) -> Vec<u8> {
        if self.pending.is_empty() {
            return Vec::new();
        }
        let out = encode(now, stream, &self.pending, false);
        self.pending.clear();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_round_trip() {
        for t in [0i64, 1, 1_764_324_000_123_456_789, 951_782_400_000_000_000] {
            let s = rfc3339_nano(t);
            assert_eq!(parse_rfc3339_nano(&s), Some(t), "{s}");
        }
        assert_eq!(rfc3339_nano(1), "1970-01-01T00:00:00.000000001Z");
        assert_eq!(
            parse_rfc3339_nano("2000-02-29T00:00:00Z"),
            Some(951_782_400_000_000_000)
        );
        assert_eq!(
            parse_rfc3339_nano("2000-02-29T00:00:00.5Z"),
            Some(951_782_400_500_000_000)
        );
        for bad in [
            "",
            "2000-13-01T00:00:00Z",
            "2000-01-01 00:00:00Z",
            "x",
            "2000-01-01T00:00:00.1234567891Z",
        ] {
            assert_eq!(parse_rfc3339_nano(bad), None, "{bad}");
        }
    }

    #[test]
    fn lines_become_full_records_and_long_lines_partial_ones() {
        let mut s = LineSplitter::default();
        let out = s.push(Stream::Stdout, b"hello\nwor", 7);
        let recs: Vec<_> = out
            .split_inclusive(|b| *b == b'\n')
            .map(|l| decode(l).expect("rec"))
            .collect();
        assert_eq!(recs.len(), 1);
        assert_eq!(recs[0].data, b"hello\n");
        assert_eq!(recs[0].time_unix_nano, 7);
        let out = s.push(Stream::Stdout, b"ld\n", 8);
        assert_eq!(decode(&out).expect("rec").data, b"world\n");
        let long = vec![b'x'; MAX_LINE * 2 + 10];
        let out = s.push(Stream::Stderr, &long, 9);
        let recs: Vec<_> = out
            .split_inclusive(|b| *b == b'\n')
            .map(|l| decode(l).expect("rec"))
            .collect();
        assert_eq!(recs.len(), 2);
        assert!(recs
            .iter()
            .all(|r| r.data.len() == MAX_LINE && r.stream == Stream::Stderr));
        let tail = s.flush(Stream::Stderr, 10);
        assert_eq!(decode(&tail).expect("rec").data.len(), 10);
        assert!(s.flush(Stream::Stderr, 11).is_empty());
    }

    #[test]
    fn content_with_spaces_and_binary_survives_and_torn_lines_are_skipped() {
        let rec = encode(5, Stream::Stderr, b"a b  c \xff", true);
        let d = decode(&rec).expect("decode");
        assert_eq!(d.data, b"a b  c \xff\n");
        assert_eq!(d.stream, Stream::Stderr);
        assert_eq!(decode(b"2026-11-28T10:00:00.0"), None);
        assert_eq!(decode(b"garbage"), None);
        assert_eq!(decode(b"2026-11-28T10:00:00.000000000Z stdin F x"), None);
    }
}
