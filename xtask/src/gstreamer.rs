//! GStreamer pipelines as rooms' real endpoints, the way people write them: an SRTP VP8
//! camera (`videotestsrc ! vp8enc ! rtpvp8pay ! srtpenc ! udpsink`) and its viewers
//! (`udpsrc ! srtpdec ! rtpvp8depay ! vp8dec`), each in a lab host; a [`Publisher`] of
//! several SSRCs from one socket (opus audio, VP8 video, simulcast layers) and a
//! [`Subscriber`] that decodes each SSRC it is sent on one port (`rtpssrcdemux`).

use std::{
    collections::HashMap,
    io::{BufRead as _, BufReader},
    net::{IpAddr, SocketAddr},
    process::{Child, Stdio},
    sync::{Arc, Condvar, Mutex, mpsc},
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
        let caps = Codec::Vp8.srtp_caps(ssrc);
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

/// The codecs of the media a [`Publisher`] sends and a [`Subscriber`] decodes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Codec {
    /// Opus audio, 48 kHz, payload type 111.
    Opus,
    /// VP8 video, payload type 96.
    Vp8,
}

impl Codec {
    /// The caps an SRTP receiver needs for `ssrc` of this codec: what the SDP (or an
    /// operator) would tell it, with the room's [`KEY`]; `srtpdec` decrypts only the SSRC
    /// its caps name.
    fn srtp_caps(self, ssrc: u32) -> String {
        let (media, clock_rate, name, payload) = match self {
            Self::Opus => ("audio", 48_000, "OPUS", 111),
            Self::Vp8 => ("video", 90_000, "VP8", 96),
        };
        format!(
            "application/x-srtp,media=(string){media},clock-rate=(int){clock_rate},\
             encoding-name=(string){name},payload=(int){payload},ssrc=(uint){ssrc},\
             srtp-key=(buffer){KEY},srtp-cipher=(string)aes-128-icm,\
             srtp-auth=(string)hmac-sha1-80,srtcp-cipher=(string)aes-128-icm,\
             srtcp-auth=(string)hmac-sha1-80,roc=(uint)0"
        )
    }

    /// Depayloader and decoder, as `gst-launch-1.0` arguments. The VP8 depayloader waits
    /// for a keyframe after a gap (a subscriber's video paused, or a layer's first packets),
    /// as a player that shows no broken pictures does: video comes back at the publisher's
    /// next keyframe.
    fn decoder(self) -> &'static [&'static str] {
        match self {
            Self::Opus => &["rtpopusdepay", "!", "opusdec"],
            Self::Vp8 => &["rtpvp8depay", "wait-for-keyframe=true", "!", "vp8dec"],
        }
    }
}

/// One SSRC a [`Subscriber`] decodes, under a name its counts are asked by.
#[derive(Clone, Copy, Debug)]
pub struct Stream<'a> {
    pub name: &'a str,
    pub ssrc: u32,
    pub codec: Codec,
}

/// What each named stream of a [`Subscriber`] decoded: the size in bytes of each buffer,
/// in order (a raw frame's size tells its resolution), and a signal for each new one.
type Decoded = Arc<(Mutex<HashMap<String, Vec<usize>>>, Condvar)>;

/// A room endpoint's receiver in one GStreamer pipeline: everything arrives on one UDP
/// port, so `rtpssrcdemux` splits it by SSRC, and each SSRC has its own
/// `srtpdec ! depayloader ! decoder` (its key context is per SSRC). A room switching the
/// subscriber's layer or pausing its video changes which SSRCs arrive; this sees it as a
/// browser or `rtpbin` does: each SSRC is a stream of its own.
pub struct Subscriber {
    child: Child,
    decoded: Decoded,
}

impl Subscriber {
    /// Starts on `port` of `host`, decoding `streams`, and returns once the port is bound.
    pub fn start(lab: &Lab, host: Host, port: u16, streams: &[Stream]) -> anyhow::Result<Self> {
        let mut args = vec!["-v".to_owned(), "udpsrc".to_owned(), format!("port={port}")];
        args.extend(
            ["caps=application/x-rtp", "!", "rtpssrcdemux", "name=demux"].map(String::from),
        );
        for s in streams {
            // No queue: every branch runs in udpsrc's thread. With a thread per branch,
            // `gst-launch-1.0 -v` loses and repeats some of the identities' notifications
            // (seen: 262 of 300 buffers announced), and the counts would be wrong.
            args.push(format!("demux.src_{}", s.ssrc));
            args.extend(["!", "capssetter", "join=false", "replace=true"].map(String::from));
            args.push(format!("caps={}", s.codec.srtp_caps(s.ssrc)));
            args.extend(["!", "srtpdec", "!"].map(String::from));
            args.extend(s.codec.decoder().iter().map(ToString::to_string));
            args.extend(
                ["!", "identity", &format!("name={}", s.name), "silent=false"].map(String::from),
            );
            // Not waiting to preroll either: in the one thread, a sink that waited
            // for a buffer would hold up the others.
            args.extend(["!", "fakesink", "sync=false", "async=false"].map(String::from));
        }
        let mut child = lab
            .command(host, "gst-launch-1.0")
            .args(&args)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .context("gst-launch-1.0 (cargo xtask setup installs GStreamer)")?;
        let stdout = child.stdout.take().context("no stdout")?;
        let decoded: Decoded = Arc::default();
        let counts = Arc::clone(&decoded);
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some((name, bytes)) = decoded_buffer(&line) {
                    let (sizes, signal) = &*counts;
                    sizes
                        .lock()
                        .unwrap()
                        .entry(name.to_owned())
                        .or_default()
                        .push(bytes);
                    signal.notify_all();
                }
            }
        });
        let subscriber = Self { child, decoded };
        lab.wait_udp_bound(host, port)?;
        Ok(subscriber)
    }

    /// The sizes in bytes of the buffers stream `name` decoded so far, in order.
    pub fn frames(&self, name: &str) -> Vec<usize> {
        self.decoded
            .0
            .lock()
            .unwrap()
            .get(name)
            .cloned()
            .unwrap_or_default()
    }

    /// How many buffers stream `name` decoded so far.
    pub fn count(&self, name: &str) -> usize {
        self.frames(name).len()
    }

    /// Waits until stream `name` decoded at least `want` buffers, or 30 s; returns how
    /// many it did.
    pub fn wait_for(&self, name: &str, want: usize) -> usize {
        let deadline = Instant::now() + Duration::from_secs(30);
        let (sizes, signal) = &*self.decoded;
        let mut sizes = sizes.lock().unwrap();
        loop {
            let n = sizes.get(name).map_or(0, Vec::len);
            let left = deadline.saturating_duration_since(Instant::now());
            if n >= want || left.is_zero() {
                return n;
            }
            sizes = signal.wait_timeout(sizes, left).unwrap().0;
        }
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The identity element's name and the buffer's size from a line `gst-launch-1.0 -v`
/// prints for each buffer an `identity silent=false` passes on, such as
/// `/GstPipeline:pipeline0/GstIdentity:video: last-message = chain   ******* (video:sink)
/// (115200 bytes, dts: ...`.
fn decoded_buffer(line: &str) -> Option<(&str, usize)> {
    let (element, message) = line.split_once(": last-message = chain")?;
    let name = element.rsplit_once("GstIdentity:")?.1;
    let bytes = message.split_once(") (")?.1.split_once(" bytes")?.0;
    Some((name, bytes.parse().ok()?))
}

/// One VP8 encoding of a [`Publisher`]'s picture: its only video, or one simulcast layer.
#[derive(Clone, Copy, Debug)]
pub struct Layer {
    pub ssrc: u32,
    pub width: u32,
    pub height: u32,
    pub kbps: u32,
}

/// A publisher that sends, from one UDP socket, SRTP with the room's [`KEY`]: opus audio
/// (20 ms packets) and one picture (`videotestsrc`, 30 fps) encoded once per [`Layer`], each
/// SSRC through its own `srtpenc` into one `udpsink`, as a hardware encoder or a phone
/// sends its streams. It sends until dropped.
pub struct Publisher {
    child: Child,
}

impl Publisher {
    /// Starts on `host`, sending from port `from` (0: whatever the system picks) to `to`:
    /// audio of SSRC `audio` if given, and `video`'s layers.
    pub fn start(
        lab: &Lab,
        host: Host,
        from: u16,
        to: SocketAddr,
        audio: Option<u32>,
        video: &[Layer],
    ) -> anyhow::Result<Self> {
        let mut args: Vec<String> = vec!["-q".into(), "funnel".into(), "name=out".into()];
        args.extend(
            [
                "!",
                "udpsink",
                &format!("host={}", to.ip()),
                &format!("port={}", to.port()),
                &format!("bind-port={from}"),
            ]
            .map(String::from),
        );
        let srtp = ["!", "srtpenc", &format!("key={KEY}"), "!", "out."].map(String::from);
        if let Some(ssrc) = audio {
            args.extend(
                [
                    "audiotestsrc",
                    "samplesperbuffer=960",
                    "!",
                    "audio/x-raw,rate=48000,channels=1",
                    "!",
                    "opusenc",
                    "frame-size=20",
                    "!",
                    "rtpopuspay",
                    &format!("ssrc={ssrc}"),
                    "pt=111",
                ]
                .map(String::from),
            );
            args.extend(srtp.iter().cloned());
        }
        if !video.is_empty() {
            args.extend(
                [
                    "videotestsrc",
                    "!",
                    "video/x-raw,width=320,height=240,framerate=30/1",
                    "!",
                    "tee",
                    "name=picture",
                ]
                .map(String::from),
            );
        }
        for layer in video {
            args.extend(
                [
                    "picture.",
                    "!",
                    "queue",
                    "!",
                    "videoscale",
                    "!",
                    &format!("video/x-raw,width={},height={}", layer.width, layer.height),
                    "!",
                    "vp8enc",
                    "deadline=1",
                    &format!("target-bitrate={}", layer.kbps * 1000),
                    // A keyframe every second, as a camera serving rooms is set up: a
                    // subscriber whose video resumes (audio-only ended, another layer
                    // chosen) can decode again only from a keyframe, and without RTCP
                    // nobody asks for one.
                    "keyframe-max-dist=30",
                    "!",
                    "rtpvp8pay",
                    &format!("ssrc={}", layer.ssrc),
                    "pt=96",
                ]
                .map(String::from),
            );
            args.extend(srtp.iter().cloned());
        }
        let child = lab
            .command(host, "gst-launch-1.0")
            .args(&args)
            .stdout(Stdio::null())
            .spawn()
            .context("gst-launch-1.0 (cargo xtask setup installs GStreamer)")?;
        Ok(Self { child })
    }
}

impl Drop for Publisher {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::decoded_buffer;

    #[test]
    fn a_decoded_buffer_line_gives_the_identity_and_the_size() {
        let line = "/GstPipeline:pipeline0/GstIdentity:video: last-message = chain   \
                    ******* (video:sink) (115200 bytes, dts: none, pts: 0:00:01.042828706, \
                    duration: none, offset: -1, offset_end: -1, flags: 00000040 discont , \
                    meta: none) 0x7fc850008c60";
        assert_eq!(decoded_buffer(line), Some(("video", 115_200)));
        let event = "/GstPipeline:pipeline0/GstIdentity:audio: last-message = event   \
                     ******* (audio:sink) E (type: stream-start (10254), ...";
        assert_eq!(decoded_buffer(event), None);
    }
}
