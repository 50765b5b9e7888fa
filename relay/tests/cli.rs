//! The binary's contract: invalid configuration exits 64 naming the field, `--check-config` validates without
//! binding, a listener that cannot be bound exits 1, an `https` route without CA certificates exits 64, the
//! production build has no demo, and secrets never appear in what it prints.

#![expect(
    clippy::unwrap_used,
    reason = "a test fails loudly at the first broken step"
)]

use std::path::PathBuf;
use std::process::{Command, Output};

const SECRET: &str = "sk-cli-CANARY-6b0d";

fn relay() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_relay"));
    c.env("CLI_TEST_VENDOR_KEY", SECRET).env_remove("RUST_LOG");
    // The machine's own proxy settings are not the test's.
    for var in ["HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY"] {
        c.env_remove(var).env_remove(var.to_ascii_lowercase());
    }
    c
}

/// A config file in a directory removed when the returned guard drops.
fn write_config(body: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("relay.toml");
    std::fs::write(&path, body).unwrap();
    (dir, path)
}

/// A valid config listening on `listen`, calling a vendor at `upstream`.
fn valid_at(listen: &str, upstream: &str, extra: &str) -> String {
    format!(
        "listen = \"{listen}\"\n{extra}\n[[clients]]\ntenant = \"t\"\nkey_sha256 = \"{}\"\n\n[[routes]]\n\
         path = \"/v1/chat/completions\"\nupstream = \"{upstream}/v1/chat/completions\"\n\
         auth = \"bearer\"\nsecret_env = \"CLI_TEST_VENDOR_KEY\"\n",
        "ab".repeat(32)
    )
}

fn valid(extra: &str) -> String {
    valid_at("127.0.0.1:8080", "http://127.0.0.1:9", extra)
}

fn run(cmd: &mut Command) -> (Output, String) {
    let out = cmd.output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!stderr.contains(SECRET), "printed the secret: {stderr}");
    (out, stderr)
}

#[test]
fn check_config_accepts_a_valid_file_without_binding() {
    // The configured address is taken: a relay that tried to bind it would fail.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let (_dir, path) = write_config(&valid_at(&addr, "http://127.0.0.1:9", ""));
    let (out, stderr) = run(relay().arg("--config").arg(&path).arg("--check-config"));
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("config ok"), "{stderr}");
}

#[test]
fn a_listener_that_cannot_be_bound_exits_non_zero() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let (_dir, path) = write_config(&valid_at(&addr, "http://127.0.0.1:9", ""));
    let (out, stderr) = run(relay().arg("--config").arg(&path));
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("cannot listen on {addr}")),
        "{stderr}"
    );
    assert!(out.stdout.is_empty(), "it must not say it is listening");
}

#[test]
fn an_https_route_without_ca_certificates_exits_64() {
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("empty.pem");
    std::fs::write(&empty, "").unwrap();
    let (_cfg, path) = write_config(&valid_at("127.0.0.1:8080", "https://api.example.com", ""));
    let no_roots = |cmd: &mut Command| {
        cmd.env("SSL_CERT_FILE", &empty)
            .env("SSL_CERT_DIR", dir.path());
    };
    let mut check = relay();
    no_roots(check.arg("--config").arg(&path).arg("--check-config"));
    let (out, stderr) = run(&mut check);
    assert_eq!(out.status.code(), Some(64), "{stderr}");
    assert!(
        stderr.contains("/v1/chat/completions") && stderr.contains("no CA certificates"),
        "{stderr}"
    );
    // The same file with a plain-http vendor needs no CA certificate.
    let (_cfg, plain) = write_config(&valid(""));
    let mut check = relay();
    no_roots(check.arg("--config").arg(&plain).arg("--check-config"));
    let (out, stderr) = run(&mut check);
    assert!(out.status.success(), "{stderr}");
}

#[test]
fn a_route_whose_trust_files_cannot_be_used_exits_64() {
    let dir = tempfile::tempdir().unwrap();
    let pki = mock_upstream::tls::Pki::new("cli test CA").unwrap();
    let (good, garbage) = (dir.path().join("ca.pem"), dir.path().join("garbage.pem"));
    std::fs::write(&good, pki.ca_pem()).unwrap();
    std::fs::write(&garbage, "not a certificate\n").unwrap();
    let https = valid_at("127.0.0.1:8080", "https://127.0.0.1:9", "");
    let route = |lines: &str| format!("{https}{lines}\n");
    let cases = [
        (
            "missing",
            route("ca_file = \"/nonexistent/ca.pem\""),
            "routes[0].ca_file",
        ),
        (
            "garbage",
            route(&format!("ca_file = {garbage:?}")),
            "holds no CA certificate",
        ),
        (
            "roots",
            route("tls_roots = \"ca_file\""),
            "routes[0].tls_roots",
        ),
        (
            "half",
            route(&format!("client_cert = {good:?}")),
            "routes[0].client_cert",
        ),
        (
            "key",
            route(&format!("client_cert = {good:?}\nclient_key = {garbage:?}")),
            "routes[0].client_key",
        ),
    ];
    for (name, body, expect) in cases {
        let (_cfg, path) = write_config(&body);
        let (out, stderr) = run(relay().arg("--config").arg(&path).arg("--check-config"));
        assert_eq!(out.status.code(), Some(64), "{name}: {stderr}");
        assert!(stderr.contains(expect), "{name}: {stderr}");
    }
    // A private CA alone: no system CA certificate is needed.
    let (_cfg, path) = write_config(&route(&format!(
        "ca_file = {good:?}\ntls_roots = \"ca_file\""
    )));
    let empty = dir.path().join("empty.pem");
    std::fs::write(&empty, "").unwrap();
    let (out, stderr) = run(relay()
        .arg("--config")
        .arg(&path)
        .arg("--check-config")
        .env("SSL_CERT_FILE", &empty)
        .env("SSL_CERT_DIR", dir.path().join("none")));
    assert!(out.status.success(), "{stderr}");
}

#[test]
fn a_proxy_that_cannot_be_used_exits_64_without_its_credentials() {
    let body = valid_at("127.0.0.1:8080", "https://127.0.0.1:9", "");
    let (_cfg, path) = write_config(&body);
    let env_cases = [
        ("HTTPS_PROXY", "socks5://u:pw-CANARY@proxy:1080"),
        ("https_proxy", "https://u:pw-CANARY@proxy:3128"),
        ("HTTP_PROXY", "http://"),
    ];
    for (var, value) in env_cases {
        let (out, stderr) = run(relay()
            .arg("--config")
            .arg(&path)
            .arg("--check-config")
            .env(var, value));
        assert_eq!(out.status.code(), Some(64), "{var}: {stderr}");
        assert!(stderr.contains(var), "{var}: {stderr}");
        assert!(!stderr.contains("CANARY"), "printed credentials: {stderr}");
    }
    let route_cases = [
        ("proxy = \"socks5://proxy:1080\"", "routes[0].proxy"),
        (
            "proxy = \"http://proxy:3128\"\nproxy_auth_file = \"/nonexistent\"",
            "routes[0].proxy_auth_file",
        ),
        (
            "proxy = \"none\"\nproxy_auth_file = \"/nonexistent\"",
            "routes[0].proxy_auth_file",
        ),
    ];
    for (lines, expect) in route_cases {
        let (_cfg, path) = write_config(&format!("{body}{lines}\n"));
        let (out, stderr) = run(relay().arg("--config").arg(&path).arg("--check-config"));
        assert_eq!(out.status.code(), Some(64), "{lines}: {stderr}");
        assert!(stderr.contains(expect), "{lines}: {stderr}");
    }
    // A bare host:port is an http:// proxy, as curl reads it.
    let (out, stderr) = run(relay()
        .arg("--config")
        .arg(&path)
        .arg("--check-config")
        .env("HTTPS_PROXY", "proxy.corp.example:3128"));
    assert!(out.status.success(), "{stderr}");
}

#[test]
fn invalid_config_exits_64_naming_the_field() {
    let cases = [
        ("unknown", valid("flavour = \"x\""), "flavour"),
        (
            "badlisten",
            valid("").replace("127.0.0.1:8080", "nowhere"),
            "listen",
        ),
        (
            "nosecret",
            valid("").replace("CLI_TEST_VENDOR_KEY", "CLI_TEST_MISSING"),
            "routes[0].secret",
        ),
        ("syntax", "listen = ".to_owned(), "TOML"),
        (
            "adminparse",
            valid("admin_listen = \"nowhere\""),
            "admin_listen",
        ),
        (
            "adminsame",
            valid("admin_listen = \"127.0.0.1:8080\""),
            "admin_listen",
        ),
        (
            "otlp",
            valid("[otel]\nendpoint = \"collector:4318\""),
            "otel.endpoint",
        ),
    ];
    for (name, body, expect) in cases {
        let (_dir, path) = write_config(&body);
        let (out, stderr) = run(relay().arg("--config").arg(&path));
        assert_eq!(out.status.code(), Some(64), "{name}: {stderr}");
        assert!(stderr.contains(expect), "{name}: {stderr}");
        assert!(
            out.stdout.is_empty(),
            "{name}: nothing may be bound or announced"
        );
    }
}

#[test]
fn environment_override_errors_exit_64_too() {
    let (_dir, path) = write_config(&valid(""));
    let mut cmd = relay();
    cmd.arg("--config")
        .arg(&path)
        .env("RELAY_MAX_REQUEST_BODY_BYTES", "huge");
    let (out, stderr) = run(&mut cmd);
    assert_eq!(out.status.code(), Some(64));
    assert!(stderr.contains("RELAY_MAX_REQUEST_BODY_BYTES"), "{stderr}");
}

#[test]
fn a_value_that_fails_validation_names_its_variable_or_file() {
    let (_dir, path) = write_config(&valid("max_streams = 0"));
    let (out, stderr) = run(relay().arg("--config").arg(&path));
    assert_eq!(out.status.code(), Some(64), "{stderr}");
    let file = format!("`max_streams` (in {})", path.display());
    assert!(stderr.contains(&file), "{stderr}");

    let (_dir, path) = write_config(&valid(""));
    let mut cmd = relay();
    cmd.arg("--config")
        .arg(&path)
        .env("RELAY_SHUTDOWN_GRACE_MS", "0");
    let (out, stderr) = run(&mut cmd);
    assert_eq!(out.status.code(), Some(64), "{stderr}");
    assert!(
        stderr.contains("`shutdown_grace_ms` (from environment variable RELAY_SHUTDOWN_GRACE_MS)"),
        "{stderr}"
    );
}

#[test]
fn an_otlp_endpoint_from_the_environment_that_is_not_a_url_exits_64() {
    let (_dir, path) = write_config(&valid(""));
    let mut cmd = relay();
    cmd.arg("--config")
        .arg(&path)
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", "collector:4318");
    let (out, stderr) = run(&mut cmd);
    assert_eq!(out.status.code(), Some(64), "{stderr}");
    assert!(
        stderr.contains("OTEL_EXPORTER_OTLP_ENDPOINT") && stderr.contains("otel.endpoint"),
        "{stderr}"
    );
}

#[test]
fn missing_config_file_exits_64() {
    let (out, stderr) = run(relay().args(["--config", "/nonexistent/relay.toml"]));
    assert_eq!(out.status.code(), Some(64));
    assert!(stderr.contains("/nonexistent/relay.toml"), "{stderr}");
}

#[test]
fn shipped_config_files_validate() {
    let deploy = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy");
    let mut cmd = relay();
    cmd.arg("--config")
        .arg(format!("{deploy}/relay.dev.toml"))
        .arg("--check-config")
        .env("SSEGATE_DEV_VENDOR_KEY", SECRET);
    let (out, stderr) = run(&mut cmd);
    assert!(out.status.success(), "relay.dev.toml: {stderr}");

    // The example reads one key from a file; point that at a temporary one.
    let (_secret_dir, secret_file) = write_config(SECRET);
    let example = std::fs::read_to_string(format!("{deploy}/relay.example.toml"))
        .unwrap()
        .replace("/run/secrets/vendor-key", secret_file.to_str().unwrap());
    let (_dir, path) = write_config(&example);
    let mut cmd = relay();
    cmd.arg("--config")
        .arg(&path)
        .arg("--check-config")
        .env("OPENAI_API_KEY", SECRET)
        .env("OPENAI_BACKUP_KEY", SECRET)
        .env("ANTHROPIC_API_KEY", SECRET)
        .env("AZURE_OPENAI_API_KEY", SECRET)
        .env("GEMINI_API_KEY", SECRET);
    let (out, stderr) = run(&mut cmd);
    assert!(out.status.success(), "relay.example.toml: {stderr}");
}
