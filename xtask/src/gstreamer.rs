//! GStreamer pipelines as rooms' real endpoints, the way people write them: an SRTP VP8
//! camera (`videotestsrc ! vp8enc ! rtpvp8pay ! srtpenc ! udpsink`) and its viewers
//! (`udpsrc ! srtpdec ! rtpvp8depay ! vp8dec`), each in a lab host.

use std::{
    io::{BufRead as _, BufReader},
    net::IpAddr,
    process::{Child, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use crate::lab::{Host, Lab};

/// An SRTP master key and salt (AES-CM-128 with HMAC-SHA1-80: 30 bytes), shared end to end
/// by camera and viewers; a relay never holds it.
pub const KEY: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d";

/// A viewer: SRTP VP8 of `ssrc` in on a UDP port, decoded; counts the frames.
pub struct Viewer {
    child: Child,
    frames: mpsc::Receiver<usize>,
}

impl Viewer {
    /// Starts on `port` of `host` and returns once the port is bound.
    pub fn start(lab: &Lab, host: Host, port: u16, ssrc: u32) -> anyhow::Result<Self> {
        let caps = format!(
            "application/x-srtp,media=(string)video,clock-rate=(int)90000,\
             encoding-name=(string)VP8,payload=(int)96,ssrc=(uint){ssrc},\
             srtp-key=(buffer){KEY},srtp-cipher=(string)aes-128-icm,\
             srtp-auth=(string)hmac-sha1-80,srtcp-cipher=(string)aes-128-icm,\
             srtcp-auth=(string)hmac-sha1-80,roc=(uint)0"
        );
        let mut child = lab
            .command(host, "gst-launch-1.0")
            .args([
                "-v",
                "udpsrc",
                &format!("port={port}"),
                &format!("caps={caps}"),
            ])
            .args(["!", "srtpdec", "!", "rtpvp8depay", "!", "vp8dec"])
            .args([
                "!",
                "identity",
                "silent=false",
                "!",
                "fakesink",
                "sync=false",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .context("gst-launch-1.0 (cargo xtask setup installs GStreamer)")?;
        let stdout = child.stdout.take().context("no stdout")?;
        let (tx, frames) = mpsc::channel();
        std::thread::spawn(move || {
            let mut n = 0;
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                // `identity` announces every decoded frame it passes on.
                if line.contains("last-message = chain") {
                    n += 1;
                    let _ = tx.send(n);
                }
            }
        });
        let viewer = Self { child, frames };
        lab.wait_udp_bound(host, port)?;
        Ok(viewer)
    }

    /// Waits until `want` frames were decoded, or 30 s; returns how many were.
    pub fn decoded(&self, want: usize) -> usize {
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut n = 0;
        while n < want {
            match self
                .frames
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            {
                Ok(count) => n = count,
                Err(_) => break,
            }
        }
        n
    }
}

impl Drop for Viewer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The camera: `frames` frames of VP8 at 30 fps as SRTP with `ssrc` from `host` to
/// `to`:`port`, from whatever source port the system picks; returns when all are sent.
pub fn camera(
    lab: &Lab,
    host: Host,
    to: IpAddr,
    port: u16,
    ssrc: u32,
    frames: usize,
) -> anyhow::Result<()> {
    camera_from(lab, host, 0, to, port, ssrc, frames)
}

/// As [`camera`], sending from port `from` (0: whatever the system picks), for a relay
/// endpoint whose remote is given rather than latched.
pub fn camera_from(
    lab: &Lab,
    host: Host,
    from: u16,
    to: IpAddr,
    port: u16,
    ssrc: u32,
    frames: usize,
) -> anyhow::Result<()> {
    let status = lab
        .command(host, "gst-launch-1.0")
        .args(["-q", "videotestsrc", &format!("num-buffers={frames}")])
        .args(["!", "video/x-raw,width=320,height=240,framerate=30/1"])
        .args(["!", "vp8enc", "deadline=1"])
        .args(["!", "rtpvp8pay", &format!("ssrc={ssrc}"), "pt=96"])
        .args(["!", "srtpenc", &format!("key={KEY}")])
        .args([
            "!",
            "udpsink",
            &format!("host={to}"),
            &format!("port={port}"),
            &format!("bind-port={from}"),
        ])
        .stdout(Stdio::null())
        .status()
        .context("gst-launch-1.0 (cargo xtask setup installs GStreamer)")?;
    if !status.success() {
        bail!("the GStreamer camera exited with {status}");
    }
    Ok(())
}
