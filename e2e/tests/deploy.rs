//! Deployment files are code: each one is checked here by the tool that reads it (`systemd-analyze verify`,
//! `shellcheck`) and by the rules it must keep (hardening, a stop timeout longer than the drain), and each check is
//! shown to fail on a deliberate break of the file, so that a check that passes everything cannot hide here.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};

fn root() -> Result<PathBuf> {
    Ok(Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .context("no workspace root")?
        .to_path_buf())
}

/// The value of a top-level `key = number` line of a TOML file.
fn toml_number(text: &str, key: &str) -> Result<u64> {
    text.lines()
        .filter_map(|l| l.split_once('='))
        .find(|(k, _)| k.trim() == key)
        .and_then(|(_, v)| v.trim().parse().ok())
        .with_context(|| format!("no `{key} = <number>` line"))
}

const VENDOR_KEY: &str = "vendor-key";
const VENDOR_KEY_VAR: &str = "VENDOR_KEY";
const CLIENT_KEY: &str = "client-key";

/// A mock vendor, and a relay config for it (its key in `VENDOR_KEY_VAR`, the client's [`CLIENT_KEY`]).
async fn mock_and_relay_config() -> Result<(testkit::proc::Proc, String)> {
    let mock = testkit::proc::start_mock(VENDOR_KEY).await?;
    let config = mock_upstream::relay_config(&mock_upstream::RelayToml {
        https: false,
        mock: mock.addr,
        top: "",
        tenant: "t",
        client_key: CLIENT_KEY,
        secret_env: VENDOR_KEY_VAR,
        route: "",
    });
    Ok((mock, config))
}

/// A streamed answer through `relay`: 200, ending with the terminal event (the relay's log in any failure).
async fn one_stream(relay: &testkit::proc::Proc) -> Result<()> {
    let res = testkit::client::chat(&relay.url(""), CLIENT_KEY, &[("x-mock-chunks", "3")])
        .send()
        .await
        .with_context(|| format!("the relay's log: {}", relay.logs()))?;
    let status = res.status();
    let body = res.text().await?;
    ensure!(
        status == 200 && body.ends_with("data: [DONE]\n\n"),
        "{status}: {body:?}; the relay's log: {}",
        relay.logs()
    );
    Ok(())
}

mod systemd {
    use super::*;

    const UNIT: &str = "deploy/systemd/ssegate.service";
    const INSTALLED_BINARY: &str = "/usr/local/bin/relay";

    /// Every value `key` has in the unit's `[Service]` section, in order.
    fn values<'a>(unit: &'a str, key: &str) -> Vec<&'a str> {
        let mut section = "";
        let mut out = Vec::new();
        for line in unit.lines().map(str::trim) {
            if line.starts_with('[') {
                section = line;
            } else if section == "[Service]" {
                if let Some((k, v)) = line.split_once('=') {
                    if k.trim() == key {
                        out.push(v.trim());
                    }
                }
            }
        }
        out
    }

    /// One value of `key`, which must be set exactly once.
    fn value<'a>(unit: &'a str, key: &str) -> Result<&'a str> {
        match values(unit, key).as_slice() {
            [v] => Ok(v),
            [] => bail!("{key}= is not set"),
            many => bail!("{key}= is set {} times", many.len()),
        }
    }

    /// What `systemd-analyze verify` says about `unit` (with the relay's path pointed at the built binary, which
    /// it checks is executable): an error, or any warning (an unknown key is only a warning, and is ignored by
    /// systemd, so a typo'd hardening line would silently do nothing).
    fn verify(analyze: &Path, unit: &str, relay: &Path) -> Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("ssegate.service");
        std::fs::write(
            &path,
            unit.replace(INSTALLED_BINARY, &relay.display().to_string()),
        )?;
        let out = Command::new(analyze).arg("verify").arg(&path).output()?;
        let said = String::from_utf8_lossy(&out.stderr).trim().to_owned();
        ensure!(
            out.status.success() && said.is_empty(),
            "systemd-analyze verify: {}: {said}",
            out.status
        );
        Ok(())
    }

    /// The rules the unit keeps beyond what systemd checks: an unprivileged user with no capabilities and nothing
    /// writable, readiness from the relay, a stop timeout longer than the relay's drain, files enough for
    /// `max_streams`, secrets as credentials.
    fn policy(unit: &str, example: &str) -> Result<()> {
        for (key, want) in [
            ("Type", "notify"),
            ("NotifyAccess", "all"),
            ("NoNewPrivileges", "yes"),
            ("ProtectSystem", "strict"),
            ("ProtectHome", "yes"),
            ("PrivateTmp", "yes"),
            ("CapabilityBoundingSet", ""),
            ("AmbientCapabilities", ""),
            ("Restart", "on-failure"),
            ("KillSignal", "SIGTERM"),
        ] {
            let got = value(unit, key)?;
            ensure!(got == want, "{key}={got}, want {key}={want}");
        }
        let dynamic = values(unit, "DynamicUser") == ["yes"];
        let user = values(unit, "User");
        ensure!(
            dynamic || matches!(user.as_slice(), [u] if !["root", "0"].contains(u)),
            "the service must run as DynamicUser=yes or a User= other than root"
        );
        ensure!(
            !values(unit, "LoadCredential").is_empty(),
            "vendor secrets must come as LoadCredential="
        );
        let stop: u64 = value(unit, "TimeoutStopSec")?
            .parse()
            .context("TimeoutStopSec in whole seconds")?;
        let grace_ms = super::toml_number(example, "shutdown_grace_ms")?;
        ensure!(
            stop * 1000 > grace_ms,
            "TimeoutStopSec={stop} does not exceed the drain grace ({grace_ms} ms): systemd would kill the streams \
             the drain lets finish"
        );
        let files: u64 = value(unit, "LimitNOFILE")?.parse()?;
        let streams = super::toml_number(example, "max_streams")?;
        ensure!(
            files >= 2 * streams,
            "LimitNOFILE={files} is less than two sockets per stream for max_streams = {streams}"
        );
        Ok(())
    }

    fn check(analyze: &Path, unit: &str, example: &str, relay: &Path) -> Result<()> {
        policy(unit, example)?;
        verify(analyze, unit, relay)
    }

    fn parts() -> Result<Option<(PathBuf, String, String, PathBuf)>> {
        let Some(analyze) =
            testkit::proc::installed("systemd-analyze", "SSEGATE_REQUIRE_SYSTEMD", "systemd")
        else {
            return Ok(None);
        };
        let root = root()?;
        let unit = std::fs::read_to_string(root.join(UNIT))?;
        let example = std::fs::read_to_string(root.join("deploy/relay.example.toml"))?;
        let relay = testkit::proc::binary("relay", "SSEGATE_RELAY_BIN")?;
        Ok(Some((analyze, unit, example, relay)))
    }

    #[test]
    fn the_unit_verifies_and_keeps_its_hardening() -> Result<()> {
        let Some((analyze, unit, example, relay)) = parts()? else {
            return Ok(());
        };
        check(&analyze, &unit, &example, &relay)
    }

    /// One deliberate break per rule: each must fail the check.
    #[test]
    fn each_deliberate_break_of_the_unit_fails_its_check() -> Result<()> {
        let Some((analyze, unit, example, relay)) = parts()? else {
            return Ok(());
        };
        let breaks: [(&str, &str, &str); 7] = [
            ("a typo'd key", "NoNewPrivileges=yes", "NoNewPrivilege=yes"),
            ("a hardening line removed", "ProtectSystem=strict\n", ""),
            ("root", "DynamicUser=yes", "DynamicUser=no\nUser=root"),
            (
                "a capability kept",
                "CapabilityBoundingSet=\n",
                "CapabilityBoundingSet=CAP_NET_ADMIN\n",
            ),
            (
                "a stop timeout shorter than the drain",
                "TimeoutStopSec=45",
                "TimeoutStopSec=10",
            ),
            ("no readiness", "Type=notify", "Type=simple"),
            (
                "a missing binary",
                "ExecStart=/usr/local/bin/relay",
                "ExecStart=/usr/local/bin/relay-typo",
            ),
        ];
        for (what, from, to) in breaks {
            ensure!(unit.contains(from), "{what}: the unit has no `{from}`");
            let broken = unit.replacen(from, to, 1);
            let got = check(&analyze, &broken, &example, &relay);
            ensure!(got.is_err(), "{what} passed the check");
        }
        Ok(())
    }

    /// `Type=notify`: the relay sends `READY=1` (and `MAINPID=`, which an upgraded successor needs) to
    /// `NOTIFY_SOCKET` once it serves, and not before its listener accepts.
    #[tokio::test]
    async fn the_relay_tells_systemd_it_is_ready_once_it_serves() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("notify");
        let socket = tokio::net::UnixDatagram::bind(&path)?;
        let (_mock, config) = mock_and_relay_config().await?;
        let notify = path.display().to_string();
        let relay = testkit::proc::start_relay(
            &config,
            &[(VENDOR_KEY_VAR, VENDOR_KEY), ("NOTIFY_SOCKET", &notify)],
            "info",
        )
        .await?;
        let mut buf = vec![0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(10), socket.recv(&mut buf))
            .await
            .context("no notification within 10 s")??;
        let said = String::from_utf8_lossy(&buf[..n]).into_owned();
        let pid = relay.pid().context("relay pid")?;
        ensure!(
            said.lines().any(|l| l == "READY=1")
                && said.lines().any(|l| l == format!("MAINPID={pid}")),
            "notification {said:?}"
        );
        // Ready means serving: a stream works now.
        one_stream(&relay).await
    }
}

mod shell {
    use super::*;

    /// Every shell script in the repository: `*.sh` and the CI entry point.
    fn scripts(root: &Path) -> Result<Vec<PathBuf>> {
        let mut out = vec![root.join(".ci/run")];
        for dir in ["scripts", "deploy"] {
            let mut stack = vec![root.join(dir)];
            while let Some(d) = stack.pop() {
                for entry in std::fs::read_dir(&d)? {
                    let p = entry?.path();
                    if p.is_dir() {
                        stack.push(p);
                    } else if p.extension().is_some_and(|e| e == "sh") {
                        out.push(p);
                    }
                }
            }
        }
        out.sort();
        Ok(out)
    }

    fn shellcheck(bin: &Path, script: &Path) -> Result<()> {
        let out = Command::new(bin)
            .args(["--severity=style", "--external-sources"])
            .arg(script)
            .output()?;
        ensure!(
            out.status.success(),
            "shellcheck {}:\n{}",
            script.display(),
            String::from_utf8_lossy(&out.stdout)
        );
        Ok(())
    }

    #[test]
    fn every_shell_script_passes_shellcheck() -> Result<()> {
        let Some(bin) =
            testkit::proc::installed("shellcheck", "SSEGATE_REQUIRE_SHELLCHECK", "shellcheck")
        else {
            return Ok(());
        };
        let root = root()?;
        let scripts = scripts(&root)?;
        ensure!(scripts.len() > 3, "found only {scripts:?}");
        let failed: Vec<String> = scripts
            .iter()
            .filter_map(|s| shellcheck(&bin, s).err().map(|e| e.to_string()))
            .collect();
        ensure!(failed.is_empty(), "{}", failed.join("\n"));
        // The deliberate break: an unquoted path, the classic `rm -rf $DIR/` bug.
        let dir = tempfile::tempdir()?;
        let broken = dir.path().join("broken.sh");
        std::fs::write(&broken, "#!/bin/sh\nDIR=$1\nrm -rf $DIR/build\n")?;
        ensure!(
            shellcheck(&bin, &broken).is_err(),
            "shellcheck passed an unquoted rm -rf"
        );
        Ok(())
    }
}

mod image {
    use super::*;
    use serde_json::Value;

    /// The image archive `scripts/image.sh` wrote (`.ci/run` builds it and names it in `SSEGATE_IMAGE`); `None`
    /// (skip) without one, unless `SSEGATE_REQUIRE_IMAGE=1`.
    fn archive() -> Option<PathBuf> {
        match std::env::var_os("SSEGATE_IMAGE") {
            Some(p) => Some(PathBuf::from(p)),
            None => {
                assert!(
                    std::env::var("SSEGATE_REQUIRE_IMAGE").as_deref() != Ok("1"),
                    "SSEGATE_REQUIRE_IMAGE=1 but no SSEGATE_IMAGE: build it with scripts/image.sh"
                );
                testkit::proc::skipped(
                    "no container image (scripts/image.sh builds one; SSEGATE_IMAGE=<its archive>)",
                );
                None
            }
        }
    }

    /// An unpacked image: its config (`config` of the OCI image config) and its root filesystem.
    struct Unpacked {
        config: Value,
        rootfs: PathBuf,
        _dir: tempfile::TempDir,
    }

    fn blob(layout: &Path, digest: &str) -> PathBuf {
        layout.join("blobs").join(digest.replace(':', "/"))
    }

    fn json(path: &Path) -> Result<Value> {
        Ok(serde_json::from_slice(&std::fs::read(path)?)?)
    }

    /// Unpacks an OCI archive by the spec, with nothing but tar: index → manifest → config and layers, each layer
    /// extracted over the last.
    fn unpack(archive: &Path) -> Result<Unpacked> {
        let dir = tempfile::Builder::new()
            .prefix("ssegate-image-")
            .tempdir()?;
        let layout = dir.path().join("layout");
        let rootfs = dir.path().join("rootfs");
        std::fs::create_dir_all(&layout)?;
        std::fs::create_dir_all(&rootfs)?;
        let tar = |args: &[&std::ffi::OsStr]| -> Result<()> {
            let out = Command::new("tar").args(args).output()?;
            ensure!(
                out.status.success(),
                "tar: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            Ok(())
        };
        tar(&[
            "-xf".as_ref(),
            archive.as_os_str(),
            "-C".as_ref(),
            layout.as_os_str(),
        ])?;
        let index = json(&layout.join("index.json"))?;
        let manifest_digest = index["manifests"][0]["digest"]
            .as_str()
            .context("index.json names no manifest")?;
        let manifest = json(&blob(&layout, manifest_digest))?;
        let config_digest = manifest["config"]["digest"].as_str().context("no config")?;
        let config = json(&blob(&layout, config_digest))?["config"].clone();
        for layer in manifest["layers"].as_array().context("no layers")? {
            let digest = layer["digest"].as_str().context("a layer without digest")?;
            let path = blob(&layout, digest);
            tar(&[
                "-xf".as_ref(),
                path.as_os_str(),
                "-C".as_ref(),
                rootfs.as_os_str(),
            ])?;
        }
        Ok(Unpacked {
            config,
            rootfs,
            _dir: dir,
        })
    }

    /// Every file of the root filesystem, as `/`-rooted paths.
    fn files(rootfs: &Path) -> Result<Vec<String>> {
        let mut out = Vec::new();
        let mut stack = vec![rootfs.to_path_buf()];
        while let Some(d) = stack.pop() {
            for entry in std::fs::read_dir(&d)? {
                let p = entry?.path();
                if p.is_dir() && !p.is_symlink() {
                    stack.push(p);
                } else {
                    let rel = p.strip_prefix(rootfs)?.display().to_string();
                    out.push(format!("/{rel}"));
                }
            }
        }
        out.sort();
        Ok(out)
    }

    /// The image's rules: a numeric non-root user, the relay as entry point, the OCI labels, and nothing in it but
    /// the relay, the CA bundle and the config (no shell, no package manager).
    fn check(config: &Value, files: &[String]) -> Result<()> {
        let user = config["User"].as_str().unwrap_or("");
        let uid = user.split(':').next().unwrap_or("");
        ensure!(
            uid.parse::<u32>().is_ok_and(|u| u != 0),
            "the image's user must be numeric and not root: {user:?}"
        );
        ensure!(
            config["Entrypoint"] == serde_json::json!(["/usr/local/bin/relay"]),
            "entry point {}",
            config["Entrypoint"]
        );
        for label in ["source", "version", "licenses", "revision"] {
            let key = format!("org.opencontainers.image.{label}");
            let value = config["Labels"][&key].as_str().unwrap_or("");
            ensure!(
                !value.is_empty() && value != "unknown",
                "label {key} is {value:?}"
            );
        }
        let want = [
            "/etc/ssegate/relay.toml",
            "/etc/ssl/certs/ca-certificates.crt",
            "/usr/local/bin/relay",
        ];
        ensure!(
            files == want,
            "the image must hold only {want:?}, holds {files:?}"
        );
        Ok(())
    }

    /// As root, runs `args` as the image's user with the unpacked root filesystem as `/`.
    fn in_image(u: &Unpacked) -> std::process::Command {
        let user = u.config["User"]
            .as_str()
            .unwrap_or("65532:65532")
            .to_owned();
        // Found before the environment is cleared (a cleared PATH would leave `chroot` unfound).
        let chroot = ["/usr/sbin/chroot", "/usr/bin/chroot"]
            .into_iter()
            .find(|p| Path::new(p).is_file())
            .unwrap_or("chroot");
        let mut cmd = std::process::Command::new(chroot);
        cmd.arg(format!("--userspec={user}"))
            .arg(&u.rootfs)
            .arg("/usr/local/bin/relay")
            .env_clear();
        cmd
    }

    fn is_root() -> bool {
        std::fs::read_to_string("/proc/self/status")
            .unwrap_or_default()
            .lines()
            .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"))
    }

    #[test]
    fn the_image_holds_only_the_relay_and_runs_it_as_non_root() -> Result<()> {
        let Some(archive) = archive() else {
            return Ok(());
        };
        let size = std::fs::metadata(&archive)?.len();
        eprintln!(
            "image archive: {} ({:.1} MB)",
            archive.display(),
            size as f64 / 1e6
        );
        ensure!(size < 25_000_000, "the image is {size} bytes, over 25 MB");
        let u = unpack(&archive)?;
        check(&u.config, &files(&u.rootfs)?)?;
        ensure!(
            is_root(),
            "running the image's binary needs chroot, as root (CI is)"
        );
        let out = in_image(&u).arg("--version").output()?;
        let said = String::from_utf8_lossy(&out.stdout);
        ensure!(
            out.status.success() && said.starts_with("relay "),
            "--version: {}: {said}",
            out.status
        );
        // The shipped config, checked with the image's own binary, its secret mounted as a file.
        let secrets = u.rootfs.join("run/secrets/ssegate");
        std::fs::create_dir_all(&secrets)?;
        std::fs::write(secrets.join("openai-api-key"), "sk-test")?;
        let out = in_image(&u)
            .args(["--config", "/etc/ssegate/relay.toml", "--check-config"])
            .output()?;
        ensure!(
            out.status.success(),
            "--check-config on the shipped config: {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(())
    }

    /// The deliberate breaks: root, a shell, a missing label: each fails the check.
    #[test]
    fn each_deliberate_break_of_the_image_fails_its_check() -> Result<()> {
        let Some(archive) = archive() else {
            return Ok(());
        };
        let u = unpack(&archive)?;
        let files = files(&u.rootfs)?;
        check(&u.config, &files)?;
        let mut root = u.config.clone();
        root["User"] = "0:0".into();
        ensure!(check(&root, &files).is_err(), "root passed");
        let mut named = u.config.clone();
        named["User"] = "relay".into();
        ensure!(check(&named, &files).is_err(), "a named user passed");
        let mut shell = files.clone();
        shell.push("/bin/sh".into());
        ensure!(check(&u.config, &shell).is_err(), "a shell passed");
        let mut unlabelled = u.config.clone();
        unlabelled["Labels"]["org.opencontainers.image.licenses"] = Value::Null;
        ensure!(
            check(&unlabelled, &files).is_err(),
            "no licenses label passed"
        );
        Ok(())
    }

    /// The image's binary, run from its root filesystem, serves a stream from the mock vendor, which it reaches by
    /// name (`localhost`, from the `/etc/hosts` a container runtime provides): the static binary resolves names
    /// with no shared library.
    #[tokio::test]
    async fn the_image_serves_a_stream_from_its_root_filesystem() -> Result<()> {
        let Some(archive) = archive() else {
            return Ok(());
        };
        ensure!(
            is_root(),
            "running the image's binary needs chroot, as root (CI is)"
        );
        let u = unpack(&archive)?;
        let (mock, config) = mock_and_relay_config().await?;
        let by_name = config.replace(&mock.addr.ip().to_string(), "localhost");
        ensure!(
            by_name != config,
            "the config names the mock by address: {config}"
        );
        std::fs::write(u.rootfs.join("etc/ssegate/test.toml"), by_name)?;
        std::fs::write(u.rootfs.join("etc/hosts"), "127.0.0.1 localhost\n")?;
        let mut cmd = tokio::process::Command::from(in_image(&u));
        cmd.args(["--config", "/etc/ssegate/test.toml"])
            .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
            .env(VENDOR_KEY_VAR, VENDOR_KEY)
            .env("RUST_LOG", "info");
        let relay = testkit::proc::spawn_listening(cmd, "image-relay", 1).await?;
        one_stream(&relay).await
    }
}

mod kubernetes {
    use super::*;
    use std::sync::OnceLock;

    /// kubernetes-validate, pinned: its schemas (Kubernetes 1.37 by default) are what `--strict` checks against.
    const VALIDATE: &str = "1.37.0";
    const REQUIRE_PYTHON: &str = "SSEGATE_REQUIRE_PYTHON";

    /// A Python with kubernetes-validate (and its jsonschema and PyYAML), in a virtual environment made once under
    /// `target/k8s-venv`; `None` to skip.
    fn python() -> Result<Option<PathBuf>> {
        static PYTHON: OnceLock<Result<Option<PathBuf>, String>> = OnceLock::new();
        PYTHON
            .get_or_init(|| prepare().map_err(|e| format!("{e:#}")))
            .clone()
            .map_err(anyhow::Error::msg)
    }

    fn prepare() -> Result<Option<PathBuf>> {
        let check = format!(
            "import jsonschema, yaml, sys; from importlib.metadata import version; \
             sys.exit(version('kubernetes-validate') != '{VALIDATE}')"
        );
        let package = format!("kubernetes-validate=={VALIDATE}");
        let venv = root()?.join("target/k8s-venv");
        testkit::python::venv(&venv, &[&package], &check, REQUIRE_PYTHON)
    }

    /// `scripts/check-kubernetes.py` on the kit at `kit`: every overlay rendered by kubectl, validated strictly,
    /// and held to the deployment rules.
    fn check(python: &Path, kit: &Path) -> Result<()> {
        let root = root()?;
        let out = Command::new(python)
            .arg(root.join("scripts/check-kubernetes.py"))
            .arg(kit)
            .arg(root.join("deploy/prometheus/ssegate-rules.yml"))
            .arg(root.join("relay/src/metrics.rs"))
            .output()?;
        ensure!(
            out.status.success(),
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(())
    }

    fn parts() -> Result<Option<PathBuf>> {
        if testkit::proc::installed("kubectl", "SSEGATE_REQUIRE_KUBECTL", "kubectl").is_none() {
            return Ok(None);
        }
        python()
    }

    #[test]
    fn every_overlay_renders_validates_and_keeps_the_rules() -> Result<()> {
        let Some(python) = parts()? else {
            return Ok(());
        };
        check(&python, &root()?.join("deploy/kubernetes"))
    }

    /// A copy of the kit with `from` replaced by `to` in `file`.
    fn broken(file: &str, from: &str, to: &str) -> Result<tempfile::TempDir> {
        let dir = tempfile::tempdir()?;
        let out = Command::new("cp")
            .arg("-r")
            .arg(root()?.join("deploy/kubernetes/."))
            .arg(dir.path())
            .output()?;
        ensure!(
            out.status.success(),
            "cp: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let path = dir.path().join(file);
        let text = std::fs::read_to_string(&path)?;
        ensure!(text.contains(from), "{file} has no `{from}` to break");
        std::fs::write(&path, text.replacen(from, to, 1))?;
        Ok(dir)
    }

    /// One deliberate break per kind of check: each must fail.
    #[test]
    fn each_deliberate_break_of_the_kit_fails_its_check() -> Result<()> {
        let Some(python) = parts()? else {
            return Ok(());
        };
        let deployment = "base/deployment.yaml";
        let breaks = [
            (
                "a probe path typo",
                deployment,
                "path: /readyz",
                "path: /readz",
            ),
            (
                "a field typo (strict schema)",
                deployment,
                "readOnlyRootFilesystem: true",
                "readOnlyRootFileSystem: true",
            ),
            ("root", deployment, "runAsUser: 65532", "runAsUser: 0"),
            (
                "a capability kept",
                deployment,
                "drop: [\"ALL\"]",
                "drop: [\"NET_RAW\"]",
            ),
            (
                "a writable root filesystem",
                deployment,
                "readOnlyRootFilesystem: true",
                "readOnlyRootFilesystem: false",
            ),
            (
                "a grace shorter than the drain",
                deployment,
                "terminationGracePeriodSeconds: 315",
                "terminationGracePeriodSeconds: 30",
            ),
            (
                "memory under max_streams' cost",
                deployment,
                "memory: 96Mi",
                "memory: 32Mi",
            ),
            (
                "a custom resource typo",
                "overlays/replicas/servicemonitor.yaml",
                "interval: 15s",
                "intervall: 15s",
            ),
            (
                "an autoscaler on CPU",
                "overlays/replicas/horizontalpodautoscaler.yaml",
                "type: Pods\n      pods:\n        metric:\n          name: ssegate_streams_in_flight\n        target:\n          type: AverageValue\n          averageValue: \"1200\"",
                "type: Resource\n      resource:\n        name: cpu\n        target:\n          type: Utilization\n          averageUtilization: 70",
            ),
            (
                "alert rules drifting from deploy/prometheus",
                "overlays/replicas/prometheusrule.yaml",
                "for: 10m",
                "for: 20m",
            ),
            (
                "a kustomization naming a missing file",
                "base/kustomization.yaml",
                "- service.yaml",
                "- services.yaml",
            ),
        ];
        for (what, file, from, to) in breaks {
            let kit = broken(file, from, to)?;
            ensure!(
                check(&python, kit.path()).is_err(),
                "{what} passed the check"
            );
        }
        Ok(())
    }
}
