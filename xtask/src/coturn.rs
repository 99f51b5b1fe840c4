//! coturn's own tools as real peers in the lab: `turnutils_peer` as the far end of an
//! allocation (it echoes what it receives) and `turnutils_uclient` as the TURN client, with
//! the figures it prints when it is done.

use std::process::Stdio;

use anyhow::Context as _;

use crate::lab::{Background, Host, Lab};

/// Starts `turnutils_peer` on `host`, listening on `addrs` at `port`, and returns once its
/// socket is bound (it prints nothing when ready). Killed when the guard drops.
pub fn start_peer(lab: &Lab, host: Host, addrs: &[&str], port: u16) -> anyhow::Result<Background> {
    let mut command = lab.command(host, "turnutils_peer");
    for a in addrs {
        command.args(["-L", a]);
    }
    let peer = command
        .args(["-p", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting turnutils_peer (`cargo xtask setup` installs coturn)")?;
    let peer = Background(peer);
    lab.wait_udp_bound(host, port)?;
    Ok(peer)
}

/// The shape of a `turnutils_uclient` session.
#[derive(Clone, Copy, Debug)]
pub struct Session {
    /// Messages per client (`-n`).
    pub messages: u32,
    /// Concurrent clients (`-m`).
    pub clients: u32,
    /// Bytes per message (`-l`).
    pub length: u32,
    /// The peer's port (`-r`).
    pub peer_port: u16,
}

/// What `turnutils_uclient` reported at the end.
#[derive(Clone, Debug)]
pub struct Report {
    pub sent: u32,
    pub received: u32,
    pub lost: u32,
    /// Average round trip in ms (uclient counts whole milliseconds).
    pub rtt_ms: Option<f64>,
    /// Everything it printed, for failure messages.
    pub output: String,
}

impl Report {
    /// Every message out and back, none lost. Client-to-client runs (`-y`) without `-c`
    /// count the RTCP pair's messages too: more than one per message and client.
    pub const fn is_clean(&self, session: &Session) -> bool {
        let want = session.messages * session.clients;
        self.sent >= want && self.received == self.sent && self.lost == 0
    }

    /// The last lines of the output, for a failure message.
    pub fn tail(&self) -> String {
        self.output
            .lines()
            .rev()
            .take(15)
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// Runs `turnutils_uclient` on `host` with `session` and `flags` (credentials, transport,
/// peer address, server address) and reads its closing figures. Without `-c` in `flags`,
/// uclient runs as it does by default: an RTP and an RTCP allocation per client, the second
/// through a RESERVATION-TOKEN (EVEN-PORT with R).
pub fn uclient(lab: &Lab, host: Host, session: &Session, flags: &[&str]) -> anyhow::Result<Report> {
    let out = lab
        .command(host, "turnutils_uclient")
        .args([
            "-n",
            &session.messages.to_string(),
            "-m",
            &session.clients.to_string(),
        ])
        .args([
            "-l",
            &session.length.to_string(),
            "-r",
            &session.peer_port.to_string(),
        ])
        .args(flags)
        .output()
        .context("running turnutils_uclient (`cargo xtask setup` installs coturn)")?;
    let output =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    Ok(Report {
        sent: field(&output, "tot_send_msgs=")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0),
        received: field(&output, "tot_recv_msgs=")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0),
        lost: field(&output, "Total lost packets ")
            .and_then(|v| v.parse().ok())
            .unwrap_or(u32::MAX),
        rtt_ms: field(&output, "Average round trip delay ").and_then(|v| v.parse().ok()),
        output,
    })
}

/// The number after the last occurrence of `key` in `output`.
fn field<'a>(output: &'a str, key: &str) -> Option<&'a str> {
    output.lines().rev().find_map(|l| {
        let rest = &l[l.find(key)? + key.len()..];
        rest.split(|c: char| !(c.is_ascii_digit() || c == '.'))
            .next()
            .filter(|v| !v.is_empty())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_uclient_closing_figures() {
        let text = "0: : start_mclient: msz=2, tot_send_msgs=5, tot_recv_msgs=4\n\
            7: : start_mclient: tot_send_msgs=200, tot_recv_msgs=199\n\
            7: : Total lost packets 1 (0.500000%), total send dropped 0 (0.000000%)\n\
            7: : Average round trip delay 0.250000 ms; min = 0 ms, max = 1 ms\n";
        assert_eq!(field(text, "tot_send_msgs="), Some("200"));
        assert_eq!(field(text, "tot_recv_msgs="), Some("199"));
        assert_eq!(field(text, "Total lost packets "), Some("1"));
        assert_eq!(field(text, "Average round trip delay "), Some("0.250000"));
        assert_eq!(field(text, "absent="), None);
    }
}
