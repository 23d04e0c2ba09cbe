//! A build's event log: the rawjson lines it produced, kept whole so a reader that comes late
//! replays them from the start, and closed once the build ends so every reader's stream ends.

use axum::body::Bytes;
use tokio::sync::watch;

#[derive(Debug, Default)]
struct Lines {
    lines: Vec<Bytes>,
    closed: bool,
}

#[derive(Debug)]
pub struct EventLog(watch::Sender<Lines>);

impl Default for EventLog {
    fn default() -> Self {
        EventLog(watch::Sender::new(Lines::default()))
    }
}

impl EventLog {
    /// Appends one event as an NDJSON line (ignored once the log is closed).
    pub fn push(&self, event: &serde_json::Value) {
        let mut line = event.to_string().into_bytes();
        line.push(b'\n');
        self.0.send_modify(|log| {
            if !log.closed {
                log.lines.push(Bytes::from(line));
            }
        });
    }

    /// Appends the last event and ends every reader's stream.
    pub fn close(&self, last: &serde_json::Value) {
        self.push(last);
        self.0.send_modify(|log| log.closed = true);
    }

    /// Every line from the first, then new ones as they come, until the log is closed.
    pub fn follow(
        &self,
    ) -> impl futures_util::Stream<Item = Result<Bytes, std::io::Error>> + use<> {
        let receiver = self.0.subscribe();
        futures_util::stream::unfold(
            (receiver, 0usize, false),
            |(mut receiver, next, ended)| async move {
                if ended {
                    return None;
                }
                loop {
                    let (read, chunk, closed) = {
                        let log = receiver.borrow_and_update();
                        let fresh = log.lines.get(next..).unwrap_or_default();
                        (next + fresh.len(), fresh.concat(), log.closed)
                    };
                    if !chunk.is_empty() {
                        return Some((Ok(Bytes::from(chunk)), (receiver, read, closed)));
                    }
                    if closed || receiver.changed().await.is_err() {
                        return None;
                    }
                }
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::StreamExt;

    #[tokio::test]
    async fn late_readers_replay_from_the_start_and_streams_end_at_close() {
        let log = EventLog::default();
        log.push(&serde_json::json!({"event": "queued"}));
        let early = log.follow();
        log.push(&serde_json::json!({"event": "running"}));
        log.close(&serde_json::json!({"event": "done"}));
        let late = log.follow();
        for stream in [early.boxed(), late.boxed()] {
            let chunks: Vec<_> = stream.map(|chunk| chunk.unwrap()).collect().await;
            let text = String::from_utf8(chunks.concat()).unwrap();
            assert_eq!(text.lines().count(), 3, "{text}");
            assert!(text.ends_with("{\"event\":\"done\"}\n"), "{text}");
        }
    }
}
