//! The tap at the end of the flow pipeline: the recent records (bounded) and the live stream
//! that `septa flows` reads over the agent's socket.

use std::sync::Arc;

use tokio::io::AsyncWriteExt;

use crate::server::write_json_line;

/// Recent flow records (bounded) and the live stream, for `septa flows`.
#[derive(Clone)]
pub struct FlowTap {
    recent: Arc<std::sync::Mutex<std::collections::VecDeque<crate::flows::FlowRecord>>>,
    live: tokio::sync::broadcast::Sender<crate::flows::FlowRecord>,
}

/// Records kept for queries without `follow`.
pub(crate) const RECENT_FLOWS: usize = 10_000;

impl FlowTap {
    pub(crate) fn new() -> Self {
        Self {
            recent: Default::default(),
            live: tokio::sync::broadcast::channel(4096).0,
        }
    }

    pub(crate) fn push(&self, r: &crate::flows::FlowRecord) {
        if let Ok(mut q) = self.recent.lock() {
            if q.len() == RECENT_FLOWS {
                q.pop_front();
            }
            q.push_back(r.clone());
        }
        let _ = self.live.send(r.clone());
    }

    /// Stream matching records to a client: the backlog, then (with `follow`) live ones.
    pub(crate) async fn serve(
        &self,
        w: &mut tokio::net::unix::OwnedWriteHalf,
        filter: api::protocol::FlowFilter,
        last: usize,
        follow: bool,
    ) {
        // Subscribe before reading the backlog, so nothing falls between the two.
        let mut rx = self.live.subscribe();
        let backlog: Vec<crate::flows::FlowRecord> = self
            .recent
            .lock()
            .map(|q| q.iter().filter(|r| filter.matches(r)).cloned().collect())
            .unwrap_or_default();
        let skip = backlog.len().saturating_sub(last);
        for r in backlog.into_iter().skip(skip) {
            if write_json_line(w, &r).await.is_err() {
                return;
            }
        }
        if !follow {
            let _ = w.write_all(b"\n").await;
            return;
        }
        loop {
            match rx.recv().await {
                Ok(r) if filter.matches(&r) => {
                    if write_json_line(w, &r).await.is_err() {
                        return;
                    }
                }
                Ok(_) => {}
                Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                    metrics::counter!("septa_flow_query_records_skipped_total").increment(n);
                }
                Err(_) => return,
            }
        }
    }
}
