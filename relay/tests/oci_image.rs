//! The OCI image `cargo xtask image` writes (xtask/src/image.rs), here from the relay built
//! for these tests: built twice, the same digest and the same archive bytes; skopeo reads
//! the layout and the archive and finds the entrypoint, labels and platform; the layer,
//! unpacked with tar and entered with chroot, runs the relay, which reads its default
//! configuration. Needs root (chroot), skopeo and tar (`cargo xtask setup`).

use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
};

use serde_json::Value;
use xtask::image::{Built, Inputs};

const RELAY: &str = env!("CARGO_BIN_EXE_relay");
const WORKSPACE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/..");

fn build(out: &Path) -> Built {
    let workspace = Path::new(WORKSPACE);
    let revision = xtask::image::revision(workspace).unwrap();
    let inputs = Inputs {
        relay: Path::new(RELAY),
        config: &workspace.join("appliance/relay.toml"),
        epoch: xtask::image::source_date_epoch(workspace).unwrap(),
        revision: &revision,
    };
    xtask::image::build(&inputs, out).unwrap()
}

fn run(program: &str, args: &[&str]) -> Output {
    Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{program}: {e} (`cargo xtask setup` installs it)"))
}

fn skopeo_json(args: &[&str]) -> Value {
    let out = run("skopeo", args);
    assert!(
        out.status.success(),
        "skopeo {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The blob `digest` of the layout.
fn blob(layout: &Path, digest: &str) -> PathBuf {
    layout
        .join("blobs/sha256")
        .join(digest.trim_start_matches("sha256:"))
}

#[test]
fn the_image_is_reproducible_readable_by_skopeo_and_runs_the_relay() {
    let (one, two) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let first = build(one.path());
    let second = build(two.path());
    println!("manifest {}", first.manifest_digest);
    assert_eq!(
        first.manifest_digest, second.manifest_digest,
        "reproducible"
    );
    assert!(
        std::fs::read(&first.archive).unwrap() == std::fs::read(&second.archive).unwrap(),
        "the archives differ"
    );

    let tag = xtask::image::TAG;
    let layout = format!("oci:{}:{tag}", first.layout.display());
    let archive = format!("oci-archive:{}:{tag}", first.archive.display());
    for reference in [&layout, &archive] {
        let image = skopeo_json(&["inspect", reference]);
        assert_eq!(
            image["Digest"],
            first.manifest_digest.as_str(),
            "{reference}"
        );
        assert_eq!(image["Architecture"], "amd64");
        assert_eq!(image["Os"], "linux");
        assert_eq!(image["Labels"]["org.opencontainers.image.version"], tag);
        assert_eq!(image["Labels"]["org.opencontainers.image.title"], "relay");
        assert_eq!(image["Layers"].as_array().map(Vec::len), Some(1), "{image}");
    }
    let config = skopeo_json(&["inspect", "--config", &layout]);
    assert_eq!(
        config["config"]["Entrypoint"],
        serde_json::json!(["/usr/bin/relay"])
    );
    assert_eq!(
        config["config"]["Cmd"],
        serde_json::json!(["run", "--config", "/etc/relay/relay.toml"])
    );
    assert!(
        config["config"]["ExposedPorts"]["3478/udp"].is_object(),
        "{config}"
    );

    // The layer, unpacked by GNU tar (not by the code that wrote it), as a root file system.
    let manifest: Value = serde_json::from_slice(
        &std::fs::read(blob(&first.layout, first.manifest_digest.as_str())).unwrap(),
    )
    .unwrap();
    let layer = blob(
        &first.layout,
        manifest["layers"][0]["digest"].as_str().unwrap(),
    );
    let root = tempfile::tempdir().unwrap();
    let root_str = root.path().to_str().unwrap();
    let out = run("tar", &["-xzf", layer.to_str().unwrap(), "-C", root_str]);
    assert!(out.status.success(), "{out:?}");
    let version = run("chroot", &[root_str, "/usr/bin/relay", "--version"]);
    assert!(
        version.status.success(),
        "relay --version in the image: {version:?}"
    );
    assert_eq!(
        String::from_utf8_lossy(&version.stdout).trim(),
        format!("relay {tag}")
    );
    // The image's command reads the shipped configuration, which wants its secret file.
    let default = run(
        "chroot",
        &[
            root_str,
            "/usr/bin/relay",
            "run",
            "--config",
            "/etc/relay/relay.toml",
        ],
    );
    let stderr = String::from_utf8_lossy(&default.stderr);
    assert!(!default.status.success());
    assert!(
        stderr.contains("static-auth-secret-file") && stderr.contains("/etc/relay/turn-secret"),
        "{stderr}"
    );
}
