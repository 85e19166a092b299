//! Lifecycle events: a broadcast to live subscribers plus a bounded history for `--since`.

use std::collections::VecDeque;
use std::sync::Mutex;

use flotilla_proto::agent::v1 as pb;
use tokio::sync::broadcast;

/// Events kept for replay.
const HISTORY: usize = 1024;

pub struct Events {
    tx: broadcast::Sender<pb::Event>,
    history: Mutex<VecDeque<pb::Event>>,
}

impl Default for Events {
    fn default() -> Self {
        Events {
            tx: broadcast::channel(1024).0,
            history: Mutex::new(VecDeque::with_capacity(HISTORY)),
        }
    }
}

impl Events {
    pub fn emit(&self, typ: &str, action: &str, id: &str, name: &str, attrs: &[(&str, String)]) {
        let ev = pb::Event {
            time_unix_nano: crate::shim::logfile::now_unix_nano(),
            r#type: typ.into(),
            action: action.into(),
            id: id.into(),
            name: name.into(),
            attributes: attrs
                .iter()
                .map(|(k, v)| (k.to_string(), v.clone()))
                .collect(),
        };
        tracing::info!(r#type = typ, action, id, name, "event");
        {
            let mut h = self.history.lock().unwrap_or_else(|p| p.into_inner());
            if h.len() == HISTORY {
                h.pop_front();
            }
            h.push_back(ev.clone());
        }
        let _ = self.tx.send(ev);
    }

    /// Retained events at or after `since` (0: none) and a receiver for the next ones.
    pub fn subscribe(&self, since: i64) -> (Vec<pb::Event>, broadcast::Receiver<pb::Event>) {
        let h = self.history.lock().unwrap_or_else(|p| p.into_inner());
        let rx = self.tx.subscribe();
        let past = if since > 0 {
            h.iter()
                .filter(|e| e.time_unix_nano >= since)
                .cloned()
                .collect()
        } else {
            Vec::new()
        };
        (past, rx)
    }
}

/// Whether `ev` passes every `key=value` filter (type, container/name, id, event/action, image).
pub fn matches(ev: &pb::Event, filters: &[(String, String)]) -> bool {
    filters.iter().all(|(k, v)| match k.as_str() {
        "type" => &ev.r#type == v,
        "event" | "action" => ev.action == *v || ev.action.starts_with(&format!("{v}:")),
        "container" | "name" => &ev.name == v || ev.id.starts_with(v.as_str()),
        "id" => ev.id.starts_with(v.as_str()),
        "image" => ev.attributes.get("image") == Some(v),
        _ => ev.attributes.get(k) == Some(v),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn history_replays_and_filters_match() {
        let ev = Events::default();
        ev.emit(
            "container",
            "start",
            "abc123",
            "web",
            &[("image", "busybox".into())],
        );
        let (past, _rx) = ev.subscribe(1);
        assert_eq!(past.len(), 1);
        let (none, _rx) = ev.subscribe(0);
        assert!(none.is_empty());
        let f = |k: &str, v: &str| vec![(k.to_string(), v.to_string())];
        assert!(matches(&past[0], &f("type", "container")));
        assert!(matches(&past[0], &f("container", "web")));
        assert!(matches(&past[0], &f("container", "abc")));
        assert!(matches(&past[0], &f("image", "busybox")));
        assert!(!matches(&past[0], &f("event", "die")));
    }
}
