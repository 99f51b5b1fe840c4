//! What the relay tells systemd under `Type=notify` (the `sd-notify` crate speaks the
//! protocol): READY=1 when it serves (the moment `/readyz` turns 200), WATCHDOG=1 from the
//! control task's loop while `WatchdogSec=` is set (a control plane stuck anywhere stops the
//! pings and systemd restarts the relay; the pinned XDP program forwards meanwhile),
//! STOPPING=1 when it starts to stop. Without `$NOTIFY_SOCKET` (not under systemd) each
//! message is a no-op.

use std::time::{Duration, Instant};

use sd_notify::NotifyState;

pub(crate) struct Notifier {
    /// How often to ping: half of `$WATCHDOG_USEC`, as sd_watchdog_enabled(3) advises, so a
    /// late ping still lands in time. None: no watchdog asked for.
    interval: Option<Duration>,
    next_ping: Option<Instant>,
    /// A failed send is logged once, not on every ping.
    failed: bool,
}

impl Notifier {
    /// The watchdog systemd asked for in `$WATCHDOG_USEC` (for this process, if
    /// `$WATCHDOG_PID` says whom).
    pub(crate) fn from_env() -> Self {
        Self::new(sd_notify::watchdog_enabled())
    }

    fn new(watchdog: Option<Duration>) -> Self {
        Self {
            interval: watchdog.filter(|w| !w.is_zero()).map(|w| w / 2),
            next_ping: None,
            failed: false,
        }
    }

    /// READY=1 with the ready line as the unit's status; starts the watchdog's pings.
    pub(crate) fn ready(&mut self, status: &str, now: Instant) {
        self.send(&[NotifyState::Ready, NotifyState::Status(status)]);
        self.next_ping = self.interval.map(|i| now + i);
    }

    /// When the next ping is due, for the control task to wake by.
    pub(crate) fn due(&self) -> Option<Instant> {
        self.next_ping
    }

    /// WATCHDOG=1 if a ping is due at `now`.
    pub(crate) fn ping_if_due(&mut self, now: Instant) {
        if let (Some(due), Some(interval)) = (self.next_ping, self.interval) {
            if now >= due {
                self.send(&[NotifyState::Watchdog]);
                self.next_ping = Some(now + interval);
            }
        }
    }

    /// STOPPING=1; no pings after it (systemd stops watching once it is stopping).
    pub(crate) fn stopping(&mut self) {
        self.send(&[NotifyState::Stopping]);
        self.next_ping = None;
    }

    fn send(&mut self, state: &[NotifyState]) {
        if let Err(e) = sd_notify::notify(state) {
            if !std::mem::replace(&mut self.failed, true) {
                log::warn!("cannot notify the service manager at $NOTIFY_SOCKET: {e}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::Notifier;

    /// Pings every half watchdog period from the ready moment on, none before it, none
    /// without a watchdog, none once stopping.
    #[test]
    fn pings_at_half_the_watchdog_period_between_ready_and_stopping() {
        let t0 = Instant::now();
        let mut n = Notifier::new(Some(Duration::from_secs(10)));
        assert_eq!(n.due(), None, "no ping before ready");
        n.ready("serving", t0);
        assert_eq!(n.due(), Some(t0 + Duration::from_secs(5)));
        n.ping_if_due(t0 + Duration::from_secs(4));
        assert_eq!(n.due(), Some(t0 + Duration::from_secs(5)), "not due yet");
        n.ping_if_due(t0 + Duration::from_secs(6));
        assert_eq!(
            n.due(),
            Some(t0 + Duration::from_secs(11)),
            "next from the ping"
        );
        n.stopping();
        assert_eq!(n.due(), None);

        let mut off = Notifier::new(None);
        off.ready("serving", t0);
        assert_eq!(off.due(), None);
        let mut zero = Notifier::new(Some(Duration::ZERO));
        zero.ready("serving", t0);
        assert_eq!(zero.due(), None);
    }
}
