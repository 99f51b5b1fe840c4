//! `relay room ...`: the control API from a shell. Each subcommand is one API request; the
//! answer is printed as aligned tables, or as the API's JSON with `--json`.

use std::{
    fmt::{Display, Write as _},
    net::SocketAddr,
    path::PathBuf,
};

use clap::{Args, Subcommand};
use relay::{
    http::{Client, ClientError},
    room::api::{
        Counters, EndpointPatch, EndpointSpec, EndpointView, MediaKind, Request, RoomSpec,
        RoomSummary, RoomView, SubscriptionSpec, SubscriptionView, TrackSpec, TrackView,
    },
};

#[derive(Args)]
pub(crate) struct RoomArgs {
    /// The control API: `http://` and the address of `relay run --api-listen`.
    #[arg(
        long,
        global = true,
        env = "RELAY_API",
        default_value = "http://127.0.0.1:8080",
        value_name = "URL"
    )]
    api: String,
    /// File holding the API's bearer token (`relay run --api-token-file`); readable by its
    /// owner only.
    #[arg(long, global = true, env = "RELAY_API_TOKEN_FILE", value_name = "FILE")]
    token_file: Option<PathBuf>,
    /// Print the API's JSON instead of tables.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: RoomCommand,
}

#[derive(Subcommand)]
enum RoomCommand {
    /// List the rooms.
    List,
    /// Create a room.
    Create {
        name: String,
        /// The tenant (`[[tenant]]` of the relay's configuration) whose limits the room's
        /// media spends.
        #[arg(long)]
        tenant: Option<String>,
        /// Endpoints the room may hold [default: 300].
        #[arg(long, value_name = "N")]
        max_endpoints: Option<u32>,
        /// Bits per second the room's publishers may send in all.
        #[arg(long, value_name = "BPS")]
        max_bitrate: Option<u64>,
        /// What the policy sees of it: `KEY=VALUE` (repeatable; a VALUE that is JSON, such
        /// as `true` or `3`, is taken as JSON, anything else as a string).
        #[arg(long = "attribute", value_name = "KEY=VALUE", value_parser = attribute)]
        attributes: Vec<(String, serde_json::Value)>,
    },
    /// Show a room: its endpoints, tracks and subscriptions, with their counters.
    Show { name: String },
    /// Delete a room and everything in it.
    Delete { name: String },
    /// Add, change or delete an endpoint (a port on the relay).
    #[command(subcommand)]
    Endpoint(EndpointCommand),
    /// Add or delete a track (a stream an endpoint publishes).
    #[command(subcommand)]
    Track(TrackCommand),
    /// Make ENDPOINT receive TRACK (or a simulcast source's layer), or change how.
    Subscribe {
        room: String,
        endpoint: String,
        track: String,
        /// For a simulcast source: which layer [default: the first declared].
        #[arg(long)]
        layer: Option<String>,
        /// Subscribed, but nothing sent until resumed.
        #[arg(long)]
        paused: bool,
    },
    /// Stop sending TRACK to ENDPOINT.
    Unsubscribe {
        room: String,
        endpoint: String,
        track: String,
    },
}

#[derive(Subcommand)]
enum EndpointCommand {
    /// Add an endpoint to ROOM.
    Add {
        room: String,
        name: String,
        /// The relay's port for its RTP [default: one from the media port range].
        #[arg(long)]
        port: Option<u16>,
        /// Where its media goes (and whence it must come) [default: latched from its first
        /// packet].
        #[arg(long, value_name = "IP:PORT")]
        remote: Option<SocketAddr>,
        /// RTCP on the next port rather than muxed with RTP.
        #[arg(long)]
        no_rtcp_mux: bool,
        /// Let a latched endpoint move to a new address sending its SSRC.
        #[arg(long)]
        relatch: bool,
        /// Seconds without a packet before it is removed (0: never) [default: 300].
        #[arg(long, value_name = "SECONDS")]
        idle_timeout: Option<u32>,
        /// Bits per second it may publish in all (its tracks together).
        #[arg(long, value_name = "BPS")]
        max_bitrate: Option<u64>,
        /// What the policy sees of it: `KEY=VALUE` (repeatable; a VALUE that is JSON, such
        /// as `true` or `3`, is taken as JSON, anything else as a string).
        #[arg(long = "attribute", value_name = "KEY=VALUE", value_parser = attribute)]
        attributes: Vec<(String, serde_json::Value)>,
    },
    /// Change an endpoint.
    Set {
        room: String,
        name: String,
        /// Pause (true) or resume (false) every video subscription of the endpoint.
        #[arg(long, value_name = "BOOL", action = clap::ArgAction::Set)]
        audio_only: Option<bool>,
    },
    /// Delete an endpoint, its tracks and subscriptions.
    Delete { room: String, name: String },
}

#[derive(Subcommand)]
enum TrackCommand {
    /// Add a track that an endpoint of ROOM publishes.
    Add {
        room: String,
        name: String,
        /// The publishing endpoint.
        #[arg(long)]
        endpoint: String,
        /// Its SSRC (1-4294967295).
        #[arg(long)]
        ssrc: u32,
        #[arg(long, value_enum)]
        kind: Kind,
        /// Simulcast: the source (camera) this track is a layer of.
        #[arg(long)]
        source: Option<String>,
        /// Simulcast: this layer's label (high, low, ...).
        #[arg(long)]
        layer: Option<String>,
    },
    /// Delete a track and its subscriptions.
    Delete { room: String, name: String },
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum Kind {
    Audio,
    Video,
}

/// Runs the subcommand; `Err` is what to print after `error: ` before exiting 1.
pub(crate) fn run(args: RoomArgs) -> Result<(), String> {
    let token_file = args.token_file.ok_or(
        "no token: give --token-file FILE or RELAY_API_TOKEN_FILE (the file of `relay run \
         --api-token-file`)",
    )?;
    let token = relay::config::read_token("token-file", &token_file).map_err(|e| e.to_string())?;
    let client = Client::new(&args.api, &token);
    let request = request(args.command);
    let answer = client.call(&request).map_err(|e| match e {
        ClientError::Api(e) => e.to_string(),
        ClientError::Transport { .. } => format!("cannot reach the API: {e}"),
    })?;
    if args.json {
        if let Some(json) = answer {
            println!("{json:#}");
        }
        return Ok(());
    }
    let shown = match answer {
        Some(json) => human(&request, json).map_err(|e| format!("unexpected answer: {e}"))?,
        None => deleted(&request),
    };
    print!("{shown}");
    Ok(())
}

/// `--attribute KEY=VALUE`.
fn attribute(text: &str) -> Result<(String, serde_json::Value), String> {
    let (key, value) = text
        .split_once('=')
        .filter(|(k, _)| !k.is_empty())
        .ok_or_else(|| format!("{text:?}: expected KEY=VALUE"))?;
    let value = serde_json::from_str(value).unwrap_or_else(|_| value.into());
    Ok((key.to_owned(), value))
}

fn request(command: RoomCommand) -> Request {
    match command {
        RoomCommand::List => Request::ListRooms,
        RoomCommand::Create {
            name,
            tenant,
            max_endpoints,
            max_bitrate,
            attributes,
        } => Request::CreateRoom(RoomSpec {
            name,
            tenant,
            max_endpoints,
            max_bitrate_bps: max_bitrate,
            attributes: attributes.into_iter().collect(),
        }),
        RoomCommand::Show { name } => Request::GetRoom { room: name },
        RoomCommand::Delete { name } => Request::DeleteRoom { room: name },
        RoomCommand::Endpoint(EndpointCommand::Add {
            room,
            name,
            port,
            remote,
            no_rtcp_mux,
            relatch,
            idle_timeout,
            max_bitrate,
            attributes,
        }) => Request::CreateEndpoint {
            room,
            spec: EndpointSpec {
                name,
                port,
                remote,
                rtcp_mux: !no_rtcp_mux,
                relatch,
                idle_timeout_secs: idle_timeout.unwrap_or(300),
                max_bitrate_bps: max_bitrate,
                attributes: attributes.into_iter().collect(),
            },
        },
        RoomCommand::Endpoint(EndpointCommand::Set {
            room,
            name,
            audio_only,
        }) => Request::UpdateEndpoint {
            room,
            endpoint: name,
            patch: EndpointPatch { audio_only },
        },
        RoomCommand::Endpoint(EndpointCommand::Delete { room, name }) => Request::DeleteEndpoint {
            room,
            endpoint: name,
        },
        RoomCommand::Track(TrackCommand::Add {
            room,
            name,
            endpoint,
            ssrc,
            kind,
            source,
            layer,
        }) => Request::CreateTrack {
            room,
            spec: TrackSpec {
                name,
                endpoint,
                ssrc,
                kind: match kind {
                    Kind::Audio => MediaKind::Audio,
                    Kind::Video => MediaKind::Video,
                },
                source,
                layer,
            },
        },
        RoomCommand::Track(TrackCommand::Delete { room, name }) => {
            Request::DeleteTrack { room, track: name }
        }
        RoomCommand::Subscribe {
            room,
            endpoint,
            track,
            layer,
            paused,
        } => Request::Subscribe {
            room,
            endpoint,
            track,
            spec: SubscriptionSpec { layer, paused },
        },
        RoomCommand::Unsubscribe {
            room,
            endpoint,
            track,
        } => Request::Unsubscribe {
            room,
            endpoint,
            track,
        },
    }
}

/// The answer to `request` as tables.
fn human(request: &Request, json: serde_json::Value) -> Result<String, serde_json::Error> {
    Ok(match request {
        Request::ListRooms => rooms(&serde_json::from_value::<Vec<RoomSummary>>(json)?),
        Request::CreateRoom(_) | Request::GetRoom { .. } => room(&serde_json::from_value(json)?),
        Request::CreateEndpoint { .. } | Request::UpdateEndpoint { .. } => {
            endpoints(&[serde_json::from_value(json)?])
        }
        Request::CreateTrack { .. } => tracks(&[serde_json::from_value(json)?]),
        Request::Subscribe { .. } => subscriptions(&[serde_json::from_value(json)?]),
        Request::DeleteRoom { .. }
        | Request::DeleteEndpoint { .. }
        | Request::DeleteTrack { .. }
        | Request::Unsubscribe { .. } => deleted(request),
    })
}

fn deleted(request: &Request) -> String {
    match request {
        Request::DeleteRoom { room } => format!("deleted room {room}\n"),
        Request::DeleteEndpoint { room, endpoint } => {
            format!("deleted endpoint {endpoint} of room {room}\n")
        }
        Request::DeleteTrack { room, track } => format!("deleted track {track} of room {room}\n"),
        Request::Unsubscribe {
            room,
            endpoint,
            track,
        } => format!("unsubscribed {endpoint} from {track} in room {room}\n"),
        _ => "done\n".to_owned(),
    }
}

fn rooms(list: &[RoomSummary]) -> String {
    table(
        &["ROOM", "TENANT", "ENDPOINTS", "TRACKS", "SUBSCRIPTIONS"],
        list.iter().map(|r| {
            vec![
                r.name.clone(),
                or_dash(r.tenant.as_ref()),
                r.endpoints.to_string(),
                r.tracks.to_string(),
                r.subscriptions.to_string(),
            ]
        }),
    )
}

fn room(room: &RoomView) -> String {
    let mut out = table(
        &["ROOM", "TENANT", "MAX-ENDPOINTS", "MAX-BITRATE"],
        [vec![
            room.name.clone(),
            or_dash(room.tenant.as_ref()),
            room.max_endpoints.to_string(),
            or_dash(room.max_bitrate_bps.as_ref()),
        ]],
    );
    for (title, section) in [
        ("endpoints", endpoints(&room.endpoints)),
        ("tracks", tracks(&room.tracks)),
        ("subscriptions", subscriptions(&room.subscriptions)),
    ] {
        write!(out, "\n{title}:\n{section}").expect("a String takes any text");
    }
    out
}

fn endpoints(list: &[EndpointView]) -> String {
    table(
        &[
            "ENDPOINT",
            "LOCAL",
            "RTCP",
            "REMOTE",
            "LATCHED",
            "RELATCH",
            "AUDIO-ONLY",
            "IDLE-S",
            "MAX-BPS",
        ],
        list.iter().map(|e| {
            vec![
                e.name.clone(),
                e.local.to_string(),
                if e.rtcp_mux {
                    "mux".to_owned()
                } else {
                    or_dash(e.local_rtcp.as_ref())
                },
                or_dash(e.remote.as_ref()),
                yes_no(e.latched),
                yes_no(e.relatch),
                yes_no(e.audio_only),
                e.idle_timeout_secs.to_string(),
                or_dash(e.max_bitrate_bps.as_ref()),
            ]
        }),
    )
}

fn tracks(list: &[TrackView]) -> String {
    table(
        &[
            "TRACK", "ENDPOINT", "SSRC", "KIND", "SOURCE", "LAYER", "PACKETS", "BYTES", "DROPPED",
        ],
        list.iter().map(|t| {
            let mut row = vec![
                t.name.clone(),
                t.endpoint.clone(),
                t.ssrc.to_string(),
                match t.kind {
                    MediaKind::Audio => "audio",
                    MediaKind::Video => "video",
                }
                .to_owned(),
                or_dash(t.source.as_ref()),
                or_dash(t.layer.as_ref()),
            ];
            row.extend(counters(t.received));
            row
        }),
    )
}

fn subscriptions(list: &[SubscriptionView]) -> String {
    table(
        &[
            "ENDPOINT", "TRACK", "LAYER", "PAUSED", "SSRC", "PACKETS", "BYTES", "DROPPED",
        ],
        list.iter().map(|s| {
            let mut row = vec![
                s.endpoint.clone(),
                s.track.clone(),
                or_dash(s.layer.as_ref()),
                yes_no(s.paused),
                or_dash(s.ssrc.as_ref()),
            ];
            row.extend(counters(s.sent));
            row
        }),
    )
}

fn counters(c: Counters) -> [String; 3] {
    [
        c.packets.to_string(),
        c.bytes.to_string(),
        c.dropped.to_string(),
    ]
}

fn or_dash(value: Option<&impl Display>) -> String {
    value.map_or_else(|| "-".to_owned(), ToString::to_string)
}

fn yes_no(value: bool) -> String {
    if value { "yes" } else { "no" }.to_owned()
}

/// Columns left-aligned to their widest cell, two spaces apart; `(none)` for no rows.
fn table(headers: &[&str], rows: impl IntoIterator<Item = Vec<String>>) -> String {
    let rows: Vec<Vec<String>> = rows.into_iter().collect();
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let line = |cells: &mut dyn Iterator<Item = &str>| {
        let mut line = String::new();
        for (cell, width) in cells.zip(&widths) {
            write!(line, "{cell:<width$}  ").expect("a String takes any text");
        }
        format!("{}\n", line.trim_end())
    };
    let mut out = line(&mut headers.iter().copied());
    if rows.is_empty() {
        out.push_str("(none)\n");
    }
    for row in &rows {
        out.push_str(&line(&mut row.iter().map(String::as_str)));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_their_columns() {
        let shown = table(
            &["A", "LONG-HEADER", "C"],
            [
                vec!["wide-cell".to_owned(), "x".to_owned(), "1".to_owned()],
                vec!["b".to_owned(), "y".to_owned(), "22".to_owned()],
            ],
        );
        assert_eq!(
            shown,
            "A          LONG-HEADER  C\n\
             wide-cell  x            1\n\
             b          y            22\n"
        );
        assert_eq!(table(&["A"], []), "A\n(none)\n");
    }
}
