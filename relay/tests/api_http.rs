//! The control API over TCP on 127.0.0.1 in front of a fake room core: the bearer token,
//! each class of error, and the `relay room` command end to end.

mod api_support;

use std::process::Command;

use api_support::{FakeApi, TOKEN, authorized, send, token_file};
use relay::room::api::RoomView;

/// The token is required on every path (the 404 and 405 answers too), and only the
/// right one opens.
#[test]
fn every_request_needs_the_token() {
    let api = FakeApi::start();
    for (authorization, path) in [
        (None, "/v1/rooms"),
        (Some("Bearer wrong".to_owned()), "/v1/rooms"),
        (Some(format!("Bearer {TOKEN}x")), "/v1/rooms"),
        (Some(format!("Basic {TOKEN}")), "/v1/rooms"),
        (Some(format!("bearer{TOKEN}")), "/v1/rooms"),
        (None, "/no/such/path"),
    ] {
        let authorization = authorization.as_deref();
        let answer = send(&api, "GET", path, authorization, None);
        assert_eq!(answer.status, 401, "{authorization:?}");
        assert_eq!(answer.www_authenticate.as_deref(), Some("Bearer"));
        assert_eq!(answer.json["status"], 401);
        assert_eq!(answer.json["field"], "authorization");
    }
    let answer = authorized(&api, "GET", "/v1/rooms", None);
    assert_eq!(answer.status, 200);
    assert_eq!(answer.json, serde_json::json!([]));
}

/// Metrics and health probes need no token; the API beside them still does.
#[test]
fn probes_answer_without_the_token() {
    let api = FakeApi::start();
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let get = |path: &str, accept: Option<&str>| {
        let mut request = agent.get(format!("{}{path}", api.url()));
        if let Some(accept) = accept {
            request = request.header("Accept", accept);
        }
        let mut response = request.call().unwrap();
        let media = response
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_owned());
        let body = response.body_mut().read_to_string().unwrap();
        (response.status().as_u16(), media, body)
    };
    assert_eq!(get("/healthz", None).0, 200);
    let (status, _, body) = get("/readyz", None);
    assert_eq!(
        (status, body.as_str()),
        (503, "not ready\n"),
        "nothing said ready"
    );
    let (status, media, body) = get("/metrics", None);
    assert_eq!(status, 200);
    assert_eq!(media.as_deref(), Some(relay::metrics::PROMETHEUS_TEXT));
    assert!(body.contains("\nrelay_ready 0\n"), "{body}");
    let (_, media, body) = get(
        "/metrics",
        Some("application/openmetrics-text; version=1.0.0"),
    );
    assert_eq!(media.as_deref(), Some(relay::metrics::OPENMETRICS_TEXT));
    assert!(body.ends_with("# EOF\n"), "{body}");
    assert_eq!(send(&api, "GET", "/v1/rooms", None, None).status, 401);
}

#[test]
fn errors_are_json_with_their_status_and_field() {
    let api = FakeApi::start();
    assert_eq!(
        authorized(&api, "POST", "/v1/rooms", Some(r#"{"name":"ward"}"#)).status,
        201
    );
    let track = "/v1/rooms/ward/tracks";
    for (method, path, body, status, field) in [
        ("POST", "/v1/rooms", Some("{not json"), 400, Some("body")),
        (
            "POST",
            "/v1/rooms",
            Some(r#"{"name":"x","colour":1}"#),
            400,
            Some("colour"),
        ),
        (
            "POST",
            "/v1/rooms",
            Some(r#"{"tenant":"north"}"#),
            400,
            Some("name"),
        ),
        (
            "POST",
            track,
            Some(r#"{"name":"t","endpoint":"e","ssrc":"x","kind":"audio"}"#),
            400,
            Some("ssrc"),
        ),
        (
            "POST",
            "/v1/rooms/ward/endpoints",
            Some(r#"{"name":"e","remote":"nowhere"}"#),
            400,
            Some("remote"),
        ),
        (
            "POST",
            "/v1/rooms",
            Some(r#"{"name":"ward"}"#),
            409,
            Some("name"),
        ),
        ("GET", "/v1/rooms/icu", None, 404, Some("room")),
        (
            "POST",
            track,
            Some(r#"{"name":"t","endpoint":"e","ssrc":1,"kind":"audio"}"#),
            404,
            Some("endpoint"),
        ),
        ("GET", "/v1/nothing", None, 404, None),
        ("GET", "/v1/rooms/ward/tracks/t/x", None, 404, None),
        ("PUT", "/v1/rooms", Some("{}"), 405, None),
        ("GET", track, None, 405, None),
    ] {
        let answer = authorized(&api, method, path, body);
        let what = format!("{method} {path} {body:?}: {}", answer.json);
        assert_eq!(answer.status, status, "{what}");
        assert_eq!(answer.json["status"], status, "{what}");
        assert_eq!(answer.json["field"].as_str(), field, "{what}");
        assert!(answer.json["message"].is_string(), "{what}");
    }
    // Over 64 KiB, however well formed.
    let big = format!(r#"{{"name":"ward2","tenant":"{}"}}"#, "x".repeat(65 * 1024));
    let answer = authorized(&api, "POST", "/v1/rooms", Some(&big));
    assert_eq!(answer.status, 413, "{}", answer.json);
    assert_eq!(answer.json["status"], 413);
    // Nothing changed by any of them.
    let rooms = authorized(&api, "GET", "/v1/rooms", None).json;
    assert_eq!(rooms.as_array().map(Vec::len), Some(1), "{rooms}");
}

#[test]
fn a_gone_core_is_503() {
    let api = FakeApi::without_core();
    let answer = authorized(&api, "GET", "/v1/rooms", None);
    assert_eq!(answer.status, 503);
    assert_eq!(answer.json["status"], 503);
}

/// `relay room ...` against the server: what it prints, and how it fails.
struct Cli {
    url: String,
    token_file: std::path::PathBuf,
}

impl Cli {
    /// The CLI of `api`, with a token file of its own (`scope`: the test's name).
    fn new(api: &FakeApi, scope: &str) -> Self {
        Self {
            url: api.url(),
            token_file: token_file(scope),
        }
    }

    /// Runs `relay room ARGS` (split at spaces): exit code, stdout, stderr.
    fn run(&self, args: &str) -> (i32, String, String) {
        let out = Command::new(env!("CARGO_BIN_EXE_relay"))
            .arg("room")
            .args(args.split_whitespace())
            .args(["--api", &self.url])
            .env("RELAY_API_TOKEN_FILE", &self.token_file)
            .output()
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8(out.stdout).unwrap(),
            String::from_utf8(out.stderr).unwrap(),
        )
    }

    /// Runs `args`, which must succeed, and returns what it printed.
    fn ok(&self, args: &str) -> String {
        let (code, stdout, stderr) = self.run(args);
        assert_eq!(code, 0, "relay room {args}: {stderr}");
        stdout
    }
}

#[test]
fn the_cli_drives_the_api() {
    let api = FakeApi::start();
    let cli = Cli::new(&api, "cli");
    let created = cli.ok("create surgery --tenant north --max-endpoints 40");
    assert!(
        created.starts_with("ROOM     TENANT  MAX-ENDPOINTS  MAX-BITRATE\nsurgery  north   40")
    );
    let added = cli.ok("endpoint add surgery camera --port 40000 --remote 192.0.2.10:5004");
    assert!(
        added.contains("camera    192.0.2.1:40000  mux   192.0.2.10:5004"),
        "{added}"
    );
    cli.ok("endpoint add surgery class-1 --no-rtcp-mux --idle-timeout 60");
    cli.ok(
        "track add surgery cam-high --endpoint camera --ssrc 1234 --kind video \
         --source cam --layer high",
    );
    let subscribed = cli.ok("subscribe surgery class-1 cam-high --layer high");
    assert!(
        subscribed.contains("class-1   cam-high  high   no      1234"),
        "{subscribed}"
    );
    let set = cli.ok("endpoint set surgery class-1 --audio-only true");
    assert!(set.contains(" yes "), "{set}");

    let shown = cli.ok("show surgery");
    for expected in [
        "endpoints:\nENDPOINT  LOCAL            RTCP             REMOTE           LATCHED  RELATCH  AUDIO-ONLY  IDLE-S",
        "class-1   192.0.2.1:40002  192.0.2.1:40003  -                no       no       yes         60",
        "tracks:\nTRACK     ENDPOINT  SSRC  KIND   SOURCE  LAYER  PACKETS  BYTES    DROPPED\n\
         cam-high  camera    1234  video  cam     high   1200     1440000  3",
        "subscriptions:\nENDPOINT  TRACK     LAYER  PAUSED  SSRC  PACKETS  BYTES    DROPPED\n\
         class-1   cam-high  high   no      1234  1200     1440000  0",
    ] {
        assert!(shown.contains(expected), "{expected}\nnot in\n{shown}");
    }
    let json: RoomView = serde_json::from_str(&cli.ok("show surgery --json")).unwrap();
    assert_eq!(json.name, "surgery");
    assert_eq!((json.endpoints.len(), json.tracks.len()), (2, 1));
    assert!(json.endpoints[1].audio_only);
    let list = cli.ok("list");
    assert_eq!(
        list,
        "ROOM     TENANT  ENDPOINTS  TRACKS  SUBSCRIPTIONS\nsurgery  north   2          1       1\n"
    );
    let list: serde_json::Value = serde_json::from_str(&cli.ok("--json list")).unwrap();
    assert_eq!(list[0]["subscriptions"], 1);

    assert_eq!(
        cli.ok("unsubscribe surgery class-1 cam-high"),
        "unsubscribed class-1 from cam-high in room surgery\n"
    );
    cli.ok("track delete surgery cam-high");
    cli.ok("endpoint delete surgery camera");
    assert_eq!(cli.ok("delete surgery"), "deleted room surgery\n");
    assert_eq!(
        cli.ok("list"),
        "ROOM  TENANT  ENDPOINTS  TRACKS  SUBSCRIPTIONS\n(none)\n"
    );
}

#[test]
fn the_cli_prints_api_errors_and_exits_1() {
    let api = FakeApi::start();
    let cli = Cli::new(&api, "cli-errors");
    cli.ok("create surgery");
    cli.ok("endpoint add surgery class-1");
    let (code, stdout, stderr) = cli.run("show icu");
    assert_eq!((code, stdout.as_str()), (1, ""));
    assert_eq!(stderr, "error: 404 room: no room named \"icu\"\n");
    let (code, _, stderr) = cli.run("track add surgery t --endpoint class-1 --ssrc 0 --kind audio");
    assert_eq!(
        (code, stderr.as_str()),
        (1, "error: 400 ssrc: 0 is not an SSRC\n")
    );
    // The wrong token, and nobody listening.
    let wrong = Cli::new(&api, "cli-wrong");
    std::fs::write(&wrong.token_file, "nope").unwrap();
    let (code, _, stderr) = wrong.run("list");
    assert_eq!(code, 1);
    assert!(stderr.starts_with("error: 401 authorization: "), "{stderr}");
    drop(api);
    let (code, _, stderr) = cli.run("list");
    assert_eq!(code, 1);
    assert!(
        stderr.starts_with("error: cannot reach the API: "),
        "{stderr}"
    );
}
