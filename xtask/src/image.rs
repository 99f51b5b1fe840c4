//! The OCI image of Relay, written without a container daemon: one layer holding the relay
//! binary, the glibc libraries it links (found with ldd, from this Debian host), the default
//! configuration and the directories it writes; the config, manifest and index beside it
//! in an OCI image layout, and the same layout as an `oci-archive` tarball.
//!
//! Reproducible: entries sorted, every mtime the commit's time (`SOURCE_DATE_EPOCH`), uid
//! and gid 0 without names, gzip without a timestamp; the same binary and libraries give
//! the same digest.

use std::{
    io::Write as _,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};
use sha2::{Digest as _, Sha256};

/// The image's name, as the Helm chart refers to it; its tag is the workspace version.
pub const NAME: &str = "relay";
pub const TAG: &str = env!("CARGO_PKG_VERSION");
/// Where the relay and its configuration are in the image.
pub const BINARY: &str = "/usr/bin/relay";
pub const CONFIG: &str = "/etc/relay/relay.toml";

const MANIFEST_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";
const CONFIG_TYPE: &str = "application/vnd.oci.image.config.v1+json";
const LAYER_TYPE: &str = "application/vnd.oci.image.layer.v1.tar+gzip";

/// What goes in the image.
pub struct Inputs<'a> {
    /// The relay binary (dynamically linked against glibc).
    pub relay: &'a Path,
    /// The default configuration, /etc/relay/relay.toml in the image.
    pub config: &'a Path,
    /// Seconds since the epoch: every file's mtime and the image's creation time.
    pub epoch: u64,
    /// The commit it is built from (a label).
    pub revision: &'a str,
}

/// What was written.
pub struct Built {
    /// The OCI image layout (`oci:DIR:TAG` for skopeo).
    pub layout: PathBuf,
    /// The same layout as one tarball (`oci-archive:FILE:TAG`).
    pub archive: PathBuf,
    /// `sha256:...` of the manifest: the image's identity.
    pub manifest_digest: String,
}

/// One entry of the layer.
enum Entry {
    Dir(u32),
    File(Vec<u8>, u32),
    Symlink(&'static str),
}

/// Writes the image layout `out/relay-oci` and the archive `out/relay-TAG.oci.tar`,
/// replacing what was there.
pub fn build(inputs: &Inputs, out: &Path) -> anyhow::Result<Built> {
    let entries = layer_entries(inputs)?;
    let tar = tar_of(&entries, inputs.epoch)?;
    let diff_id = sha256(&tar);
    let mut gz = flate2::GzBuilder::new().write(Vec::new(), flate2::Compression::default());
    gz.write_all(&tar)?;
    let layer = gz.finish()?;

    let layout = out.join(format!("{NAME}-oci"));
    if layout.exists() {
        std::fs::remove_dir_all(&layout)
            .with_context(|| format!("removing {}", layout.display()))?;
    }
    let blobs = layout.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).with_context(|| format!("creating {}", blobs.display()))?;
    let put = |bytes: &[u8], media_type: &str| -> anyhow::Result<serde_json::Value> {
        let digest = sha256(bytes);
        let file = blobs.join(digest.trim_start_matches("sha256:"));
        std::fs::write(&file, bytes).with_context(|| format!("writing {}", file.display()))?;
        Ok(serde_json::json!({ "mediaType": media_type, "digest": digest, "size": bytes.len() }))
    };
    let layer = put(&layer, LAYER_TYPE)?;
    let config = put(&to_json(&image_config(inputs, &diff_id)?), CONFIG_TYPE)?;
    let manifest = to_json(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": MANIFEST_TYPE,
        "config": config,
        "layers": [layer],
    }));
    let mut descriptor = put(&manifest, MANIFEST_TYPE)?;
    let manifest_digest = descriptor["digest"].as_str().unwrap_or_default().to_owned();
    descriptor["platform"] = serde_json::json!({ "architecture": "amd64", "os": "linux" });
    descriptor["annotations"] = serde_json::json!({
        // The tag (`oci:DIR:TAG`); containerd (`ctr images import`) names it by the other.
        "org.opencontainers.image.ref.name": TAG,
        "io.containerd.image.name": format!("docker.io/library/{NAME}:{TAG}"),
    });
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [descriptor],
    });
    std::fs::write(layout.join("index.json"), to_json(&index))?;
    std::fs::write(
        layout.join("oci-layout"),
        to_json(&serde_json::json!({ "imageLayoutVersion": "1.0.0" })),
    )?;

    let archive = out.join(format!("{NAME}-{TAG}.oci.tar"));
    std::fs::write(&archive, archive_of(&layout, inputs.epoch)?)
        .with_context(|| format!("writing {}", archive.display()))?;
    Ok(Built {
        layout,
        archive,
        manifest_digest,
    })
}

/// The image's configuration: how it runs, what it exposes, what it is.
fn image_config(inputs: &Inputs, diff_id: &str) -> anyhow::Result<serde_json::Value> {
    let created = jiff::Timestamp::from_second(i64::try_from(inputs.epoch)?)
        .context("SOURCE_DATE_EPOCH out of range")?
        .to_string();
    let ports: serde_json::Map<String, serde_json::Value> =
        ["3478/udp", "3478/tcp", "5349/tcp", "9478/tcp"]
            .into_iter()
            .map(|p| (p.to_owned(), serde_json::json!({})))
            .collect();
    Ok(serde_json::json!({
        "created": created,
        "architecture": "amd64",
        "os": "linux",
        "config": {
            "Entrypoint": [BINARY],
            "Cmd": ["run", "--config", CONFIG],
            "Env": ["PATH=/usr/bin"],
            "WorkingDir": "/",
            "StopSignal": "SIGTERM",
            // STUN/TURN (UDP, TCP), TLS, metrics and probes. Relayed ports are a range:
            // run with the host's network (as the Helm chart does).
            "ExposedPorts": ports,
            "Volumes": { "/var/lib/relay": {} },
            "Labels": {
                "org.opencontainers.image.title": NAME,
                "org.opencontainers.image.description":
                    "Relay: a TURN and media relay whose XDP program forwards media in the kernel",
                "org.opencontainers.image.version": TAG,
                "org.opencontainers.image.revision": inputs.revision,
                "org.opencontainers.image.created": created,
                "org.opencontainers.image.licenses": "MIT OR Apache-2.0",
            },
        },
        "rootfs": { "type": "layers", "diff_ids": [diff_id] },
        "history": [{ "created": created, "created_by": "cargo xtask image" }],
    }))
}

/// The layer's entries by path (no leading `/`), parents included.
fn layer_entries(inputs: &Inputs) -> anyhow::Result<std::collections::BTreeMap<String, Entry>> {
    let mut entries = std::collections::BTreeMap::new();
    let read = |p: &Path| std::fs::read(p).with_context(|| format!("reading {}", p.display()));
    entries.insert(
        BINARY[1..].to_owned(),
        Entry::File(read(inputs.relay)?, 0o755),
    );
    entries.insert(
        CONFIG[1..].to_owned(),
        Entry::File(read(inputs.config)?, 0o644),
    );
    // Debian's merged /usr: the loader's /lib64 path and /lib resolve into /usr.
    entries.insert("lib".to_owned(), Entry::Symlink("usr/lib"));
    entries.insert("lib64".to_owned(), Entry::Symlink("usr/lib64"));
    for lib in linked_libraries(inputs.relay)? {
        let inside = lib
            .strip_prefix("/usr")
            .unwrap_or(&lib)
            .strip_prefix("/")
            .unwrap_or(&lib);
        let path = Path::new("usr").join(inside);
        // The file itself, not the host's symlink chain to it.
        entries.insert(
            path.to_string_lossy().into_owned(),
            Entry::File(read(&lib)?, 0o755),
        );
    }
    entries.insert("var/lib/relay".to_owned(), Entry::Dir(0o700));
    entries.insert("tmp".to_owned(), Entry::Dir(0o1777));
    let parents: Vec<String> = entries
        .keys()
        .flat_map(|p| {
            Path::new(p)
                .ancestors()
                .skip(1)
                .filter(|a| !a.as_os_str().is_empty())
                .map(|a| a.to_string_lossy().into_owned())
                .collect::<Vec<_>>()
        })
        .collect();
    for parent in parents {
        entries.entry(parent).or_insert(Entry::Dir(0o755));
    }
    Ok(entries)
}

/// The shared libraries `binary` loads, the loader included, as ldd finds them here.
fn linked_libraries(binary: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let out = Command::new("ldd")
        .arg(binary)
        .output()
        .context("running ldd (package libc-bin)")?;
    if !out.status.success() {
        bail!(
            "ldd {}: {}",
            binary.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let mut libs = Vec::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        // `libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)`, `/lib64/ld-linux-x86-64.so.2
        // (0x...)`, `linux-vdso.so.1 (0x...)` (in the kernel: nothing to copy).
        let path = match line.split_once("=>") {
            Some((_, right)) => right.split_whitespace().next(),
            None => line.split_whitespace().next(),
        };
        match path {
            Some(p) if p.starts_with('/') => libs.push(PathBuf::from(p)),
            Some("not") => bail!("ldd {}: {line}", binary.display()),
            _ => {}
        }
    }
    if !libs
        .iter()
        .any(|l| l.to_string_lossy().contains("ld-linux"))
    {
        bail!(
            "{} is not dynamically linked against glibc (ldd found no loader)",
            binary.display()
        );
    }
    Ok(libs)
}

/// A tar of `entries`, in their (sorted) order, with fixed metadata.
fn tar_of(
    entries: &std::collections::BTreeMap<String, Entry>,
    epoch: u64,
) -> anyhow::Result<Vec<u8>> {
    let mut tar = tar::Builder::new(Vec::new());
    for (path, entry) in entries {
        let mut header = tar::Header::new_ustar();
        header.set_mtime(epoch);
        header.set_uid(0);
        header.set_gid(0);
        match entry {
            Entry::Dir(mode) => {
                header.set_entry_type(tar::EntryType::Directory);
                header.set_mode(*mode);
                header.set_size(0);
                tar.append_data(&mut header, format!("{path}/"), std::io::empty())?;
            }
            Entry::File(bytes, mode) => {
                header.set_entry_type(tar::EntryType::Regular);
                header.set_mode(*mode);
                header.set_size(bytes.len() as u64);
                tar.append_data(&mut header, path, bytes.as_slice())?;
            }
            Entry::Symlink(target) => {
                header.set_entry_type(tar::EntryType::Symlink);
                header.set_mode(0o777);
                header.set_size(0);
                tar.append_link(&mut header, path, target)?;
            }
        }
    }
    Ok(tar.into_inner()?)
}

/// The layout directory as a tarball, sorted, with fixed metadata (an `oci-archive`).
fn archive_of(layout: &Path, epoch: u64) -> anyhow::Result<Vec<u8>> {
    let mut entries = std::collections::BTreeMap::new();
    let mut dirs = vec![layout.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir)? {
            let path = entry?.path();
            let name = path.strip_prefix(layout)?.to_string_lossy().into_owned();
            if path.is_dir() {
                entries.insert(name, Entry::Dir(0o755));
                dirs.push(path);
            } else {
                entries.insert(name, Entry::File(std::fs::read(&path)?, 0o644));
            }
        }
    }
    tar_of(&entries, epoch)
}

/// `SOURCE_DATE_EPOCH` if set, else the time of the commit `HEAD` of `workspace`.
pub fn source_date_epoch(workspace: &Path) -> anyhow::Result<u64> {
    if let Ok(value) = std::env::var("SOURCE_DATE_EPOCH") {
        return value
            .trim()
            .parse()
            .with_context(|| format!("SOURCE_DATE_EPOCH={value:?} is not a number of seconds"));
    }
    git(workspace, &["log", "-1", "--format=%ct"])?
        .parse()
        .context("git log: not a commit time")
}

/// The commit `HEAD` of `workspace`.
pub fn revision(workspace: &Path) -> anyhow::Result<String> {
    git(workspace, &["rev-parse", "HEAD"])
}

fn git(workspace: &Path, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new("git")
        .args(args)
        .current_dir(workspace)
        .output()
        .context("running git")?;
    if !out.status.success() {
        bail!(
            "git {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{:x}", Sha256::digest(bytes))
}

/// JSON as stored in the image: serde_json's maps are sorted, so the bytes are stable.
fn to_json(value: &serde_json::Value) -> Vec<u8> {
    serde_json::to_vec(value).expect("JSON values serialize")
}
