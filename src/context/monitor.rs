//! The context monitor: one alert per crossing of the alert ratio, driven by the payloads as they
//! are built (nothing polls).

use std::collections::HashMap;

use parking_lot::Mutex;

use super::ContextAlert;

/// Tracks each session's usage of its window and alerts once when it crosses the alert ratio.
///
/// After an alert the session is disarmed until its usage drops below the ratio again (after a
/// compaction), so a session that stays above the ratio is reported once, not on every payload.
#[derive(Debug)]
pub struct ContextMonitor {
    alert_ratio: f64,
    /// Per session: `true` while above the ratio (alerted, disarmed).
    above: Mutex<HashMap<String, bool>>,
}

impl ContextMonitor {
    /// A monitor alerting at `alert_ratio` (0 to 1) of the window.
    pub fn new(alert_ratio: f64) -> Self {
        ContextMonitor {
            alert_ratio,
            above: Mutex::new(HashMap::new()),
        }
    }

    /// The ratio at which it alerts.
    pub fn alert_ratio(&self) -> f64 {
        self.alert_ratio
    }

    /// Records a session's usage; returns an alert when this record crosses the ratio from below.
    pub fn record(&self, session: &str, used: usize, window: usize) -> Option<ContextAlert> {
        let ratio = if window == 0 {
            1.0
        } else {
            used as f64 / window as f64
        };
        let crossed = ratio >= self.alert_ratio;
        let mut above = self.above.lock();
        let was_above = above.get(session).copied().unwrap_or(false);
        if crossed == was_above {
            return None;
        }
        above.insert(session.to_string(), crossed);
        if !crossed {
            return None;
        }
        tracing::warn!(
            session,
            used,
            window,
            ratio,
            "context usage crossed the alert ratio"
        );
        Some(ContextAlert {
            session: session.to_string(),
            used,
            window,
            ratio,
        })
    }

    /// Whether a session is above the ratio (alerted and not yet back below).
    pub fn is_above(&self, session: &str) -> bool {
        self.above.lock().get(session).copied().unwrap_or(false)
    }

    /// Forgets a session.
    pub fn forget(&self, session: &str) {
        self.above.lock().remove(session);
    }
}
