//! The binary's contract: invalid configuration exits 64 naming the field, `--check-config` validates without
//! binding, and secrets never appear in what it prints.

#![expect(
    clippy::unwrap_used,
    reason = "a test fails loudly at the first broken step"
)]

use std::process::Command;

const SECRET: &str = "sk-cli-CANARY-6b0d";

fn relay() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_relay"));
    c.env("CLI_TEST_VENDOR_KEY", SECRET).env_remove("RUST_LOG");
    c
}

fn write_config(name: &str, body: &str) -> std::path::PathBuf {
    let path = std::env::temp_dir().join(format!("ssegate-cli-{}-{name}.toml", std::process::id()));
    std::fs::write(&path, body).unwrap();
    path
}

fn valid(extra: &str) -> String {
    format!(
        "listen = \"127.0.0.1:1\"\n{extra}\n[[clients]]\ntenant = \"t\"\nkey_sha256 = \"{}\"\n\n[[routes]]\n\
         path = \"/v1/chat/completions\"\nupstream = \"https://api.example.com/v1/chat/completions\"\n\
         auth = \"bearer\"\nsecret_env = \"CLI_TEST_VENDOR_KEY\"\n",
        "ab".repeat(32)
    )
}

#[test]
fn check_config_accepts_a_valid_file_without_binding() {
    // Port 1 needs privileges to bind; --check-config must not try.
    let path = write_config("ok", &valid(""));
    let out = relay()
        .arg("--config")
        .arg(&path)
        .arg("--check-config")
        .output()
        .unwrap();
    std::fs::remove_file(&path).unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("config ok"));
}

#[test]
fn invalid_config_exits_64_naming_the_field() {
    let cases = [
        ("unknown", valid("flavour = \"x\""), "flavour"),
        (
            "badlisten",
            valid("").replace("127.0.0.1:1", "nowhere"),
            "listen",
        ),
        (
            "nosecret",
            valid("").replace("CLI_TEST_VENDOR_KEY", "CLI_TEST_MISSING"),
            "routes[0].secret",
        ),
        ("syntax", "listen = ".to_owned(), "TOML"),
    ];
    for (name, body, expect) in cases {
        let path = write_config(name, &body);
        let out = relay().arg("--config").arg(&path).output().unwrap();
        std::fs::remove_file(&path).unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "{name}: {stderr}");
        assert!(stderr.contains(expect), "{name}: {stderr}");
        assert!(!stderr.contains(SECRET), "{name} printed the secret");
        assert!(
            out.stdout.is_empty(),
            "{name}: nothing may be bound or announced"
        );
    }
}

#[test]
fn environment_override_errors_exit_64_too() {
    let path = write_config("env", &valid(""));
    let out = relay()
        .arg("--config")
        .arg(&path)
        .env("RELAY_MAX_REQUEST_BODY_BYTES", "huge")
        .output()
        .unwrap();
    std::fs::remove_file(&path).unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("RELAY_MAX_REQUEST_BODY_BYTES"));
}

#[test]
fn missing_config_file_exits_64() {
    let out = relay()
        .args(["--config", "/nonexistent/relay.toml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/relay.toml"));
}

#[test]
fn shipped_config_files_validate() {
    let deploy = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy");
    let out = relay()
        .arg("--config")
        .arg(format!("{deploy}/relay.dev.toml"))
        .arg("--check-config")
        .env("SSEGATE_DEV_VENDOR_KEY", SECRET)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "relay.dev.toml: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    // The example reads one key from a file; point that at a temporary one.
    let secret_file = write_config("example-secret", SECRET);
    let example = std::fs::read_to_string(format!("{deploy}/relay.example.toml"))
        .unwrap()
        .replace("/run/secrets/vendor-key", secret_file.to_str().unwrap());
    let path = write_config("example", &example);
    let out = relay()
        .arg("--config")
        .arg(&path)
        .arg("--check-config")
        .env("OPENAI_API_KEY", SECRET)
        .env("OPENAI_BACKUP_KEY", SECRET)
        .output()
        .unwrap();
    std::fs::remove_file(&path).unwrap();
    std::fs::remove_file(&secret_file).unwrap();
    assert!(
        out.status.success(),
        "relay.example.toml: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
