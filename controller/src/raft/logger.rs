//! raft-rs logs through `slog`; this drain forwards its records to `tracing` (target
//! `flotilla::raft::rs`), with the record's key-values appended to the message. Records are
//! formatted only when `tracing` would keep them.

use std::fmt::{self, Write as _};

use slog::{Drain, Key, Level, OwnedKVList, Record, Serializer, KV};

/// A `slog::Logger` whose records go to `tracing`, tagged with the node's raft id.
pub(crate) fn logger(raft_id: u64) -> slog::Logger {
    slog::Logger::root(TracingDrain { raft_id }, slog::o!())
}

struct TracingDrain {
    raft_id: u64,
}

/// Collects key-values as ` key=value` pairs.
struct KvText(String);

impl Serializer for KvText {
    fn emit_arguments(&mut self, key: Key, val: &fmt::Arguments<'_>) -> slog::Result {
        // Writing into a String cannot fail.
        let _ = write!(self.0, " {key}={val}");
        Ok(())
    }
}

macro_rules! forward {
    ($level:expr, $raft_id:expr, $text:expr) => {
        match $level {
            tracing::Level::ERROR => {
                tracing::error!(target: "flotilla::raft::rs", raft_id = $raft_id, "{}", $text)
            }
            tracing::Level::WARN => {
                tracing::warn!(target: "flotilla::raft::rs", raft_id = $raft_id, "{}", $text)
            }
            tracing::Level::INFO => {
                tracing::info!(target: "flotilla::raft::rs", raft_id = $raft_id, "{}", $text)
            }
            tracing::Level::DEBUG => {
                tracing::debug!(target: "flotilla::raft::rs", raft_id = $raft_id, "{}", $text)
            }
            _ => tracing::trace!(target: "flotilla::raft::rs", raft_id = $raft_id, "{}", $text),
        }
    };
}

impl Drain for TracingDrain {
    type Ok = ();
    type Err = slog::Never;

    fn log(&self, record: &Record<'_>, values: &OwnedKVList) -> Result<(), slog::Never> {
        let level = match record.level() {
            Level::Critical | Level::Error => tracing::Level::ERROR,
            Level::Warning => tracing::Level::WARN,
            Level::Info => tracing::Level::INFO,
            Level::Debug => tracing::Level::DEBUG,
            Level::Trace => tracing::Level::TRACE,
        };
        let enabled = match level {
            tracing::Level::ERROR => {
                tracing::enabled!(target: "flotilla::raft::rs", tracing::Level::ERROR)
            }
            tracing::Level::WARN => {
                tracing::enabled!(target: "flotilla::raft::rs", tracing::Level::WARN)
            }
            tracing::Level::INFO => {
                tracing::enabled!(target: "flotilla::raft::rs", tracing::Level::INFO)
            }
            tracing::Level::DEBUG => {
                tracing::enabled!(target: "flotilla::raft::rs", tracing::Level::DEBUG)
            }
            _ => tracing::enabled!(target: "flotilla::raft::rs", tracing::Level::TRACE),
        };
        if !enabled {
            return Ok(());
        }
        let mut kv = KvText(format!("{}", record.msg()));
        // Serializing into a String cannot fail.
        let _ = record.kv().serialize(record, &mut kv);
        let _ = values.serialize(record, &mut kv);
        forward!(level, self.raft_id, kv.0);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_values_are_appended() {
        let mut kv = KvText("became leader".into());
        let _ = slog::b!("term" => 3u64, "id" => "n1").serialize(
            &slog::record!(Level::Info, "", &format_args!("x"), slog::b!()),
            &mut kv,
        );
        assert!(kv.0.starts_with("became leader"), "{}", kv.0);
        assert!(kv.0.contains(" term=3"), "{}", kv.0);
        assert!(kv.0.contains(" id=n1"), "{}", kv.0);
        // The logger accepts records without a subscriber installed.
        slog::info!(logger(1), "hello"; "k" => 1);
    }
}
