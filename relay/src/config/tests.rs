use super::*;
use std::time::Duration;

const SECRET: &str = "sk-test-CANARY-0123";

fn env(extra: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut v = vec![("VENDOR_KEY".to_owned(), SECRET.to_owned())];
    v.extend(
        extra
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
    );
    v
}

fn toml_with(route_extra: &str, top_extra: &str) -> String {
    format!(
        r#"{top_extra}
[[clients]]
tenant = "acme"
key_sha256 = "{}"

[[routes]]
path = "/v1/chat/completions"
upstream = "https://api.example.com/v1/chat/completions"
auth = "bearer"
secret_env = "VENDOR_KEY"
{route_extra}
"#,
        hex::encode(<sha2::Sha256 as sha2::Digest>::digest(b"client-key"))
    )
}

fn load(
    route_extra: &str,
    top_extra: &str,
    extra_env: &[(&str, &str)],
) -> Result<Config, ConfigError> {
    Config::from_toml(&toml_with(route_extra, top_extra), &env(extra_env))
}

fn err(route_extra: &str, top_extra: &str, extra_env: &[(&str, &str)]) -> String {
    let e = load(route_extra, top_extra, extra_env)
        .unwrap_err()
        .to_string();
    assert!(!e.contains(SECRET), "error leaks the secret: {e}");
    e
}

/// A file that loads (plain data, valid) but whose runtime objects cannot be built at startup: why.
fn startup_err(top_extra: &str) -> String {
    let config = load("", top_extra, &[]).expect("the file itself is valid");
    match crate::startup::prepare(config) {
        Ok(_) => panic!("startup accepted {top_extra}"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn minimal_file_gets_documented_defaults() {
    let c = load("", "", &[]).unwrap();
    assert_eq!(c.listen, "127.0.0.1:8080".parse().unwrap());
    assert_eq!(c.admin_listen, "127.0.0.1:9464".parse().unwrap());
    assert!(c.metrics, "metrics on unless switched off");
    assert!(!load("", "[metrics]\nenabled = false", &[]).unwrap().metrics);
    assert_eq!(c.max_request_body_bytes, 1 << 20);
    assert!(c.audit.enabled);
    assert_eq!(c.audit.max_text_bytes, 4096);
    let r = &c.routes[0];
    assert_eq!(r.connect_timeout, Duration::from_secs(5));
    assert_eq!(r.first_byte_timeout, Duration::from_secs(60));
    let (name, value) = r.targets[0].secret.header();
    assert_eq!(name, http::header::AUTHORIZATION);
    assert_eq!(value.to_str().unwrap(), format!("Bearer {SECRET}"));
    assert!(value.is_sensitive());
}

#[test]
fn debug_output_redacts_the_secret() {
    let c = load("", "", &[]).unwrap();
    let shown = format!("{c:?}");
    assert!(!shown.contains(SECRET), "{shown}");
    assert!(shown.contains("REDACTED"));
}

#[test]
fn unknown_keys_are_rejected_with_their_path() {
    assert!(err("", "colour = \"blue\"", &[]).contains("colour"));
    let e = err("retries = 3", "", &[]);
    assert!(e.contains("routes[0]") && e.contains("retries"), "{e}");
}

#[test]
fn bad_values_name_the_field() {
    assert!(err("", "listen = \"nowhere\"", &[]).contains("`listen`"));
    assert!(err("connect_timeout_ms = 0", "", &[]).contains("routes[0].connect_timeout_ms"));
    assert!(err("", "max_request_body_bytes = 0", &[]).contains("max_request_body_bytes"));
    let e = err("first_byte_timeout_ms = \"soon\"", "", &[]);
    assert!(e.contains("routes[0].first_byte_timeout_ms"), "{e}");
}

#[test]
fn upstream_must_be_absolute_http_without_userinfo() {
    for bad in [
        "ftp://x/y",
        "/relative",
        "https://user:pw@host/x",
        "not a url",
    ] {
        let text = toml_with("", "").replace("https://api.example.com/v1/chat/completions", bad);
        let e = Config::from_toml(&text, &env(&[])).unwrap_err().to_string();
        assert!(e.contains("routes[0].upstream"), "{bad}: {e}");
    }
}

#[test]
fn secret_comes_from_exactly_one_place() {
    let text = toml_with("", "").replace("VENDOR_KEY", "MISSING_KEY");
    let e = Config::from_toml(&text, &env(&[])).unwrap_err().to_string();
    assert!(
        e.contains("routes[0].secret") && e.contains("MISSING_KEY"),
        "{e}"
    );
    let e = err("secret_file = \"/nonexistent\"", "", &[]);
    assert!(e.contains("exactly one"), "{e}");
}

#[test]
fn secret_file_is_read_and_trimmed() {
    let dir = std::env::temp_dir().join(format!("ssegate-secret-{}", std::process::id()));
    std::fs::write(&dir, format!("{SECRET}\n")).unwrap();
    let text = toml_with("", "").replace(
        "secret_env = \"VENDOR_KEY\"",
        &format!("secret_file = \"{}\"", dir.display()),
    );
    let c = Config::from_toml(
        &text.replace("auth = \"bearer\"", "auth = \"x-api-key\""),
        &env(&[]),
    )
    .unwrap();
    std::fs::remove_file(&dir).unwrap();
    let (name, value) = c.routes[0].targets[0].secret.header();
    assert_eq!(
        (name.as_str(), value.to_str().unwrap()),
        ("x-api-key", SECRET)
    );
}

#[test]
fn environment_overrides_the_file() {
    let c = load(
        "",
        "listen = \"127.0.0.1:1\"",
        &[
            ("RELAY_LISTEN", "127.0.0.1:9999"),
            ("RELAY_AUDIT__ENABLED", "false"),
            ("OTHER", "x"),
        ],
    )
    .unwrap();
    assert_eq!(c.listen.port(), 9999);
    assert!(!c.audit.enabled);
}

#[test]
fn bad_environment_override_names_the_variable() {
    let e = err("", "", &[("RELAY_COLOUR", "blue")]);
    assert!(e.contains("colour"), "{e}");
    let e = err("", "", &[("RELAY_AUDIT__MAX_TEXT_BYTES", "lots")]);
    assert!(
        e.contains("audit.max_text_bytes") && e.contains("RELAY_AUDIT__MAX_TEXT_BYTES"),
        "{e}"
    );
}

#[test]
fn a_bad_value_from_the_environment_names_its_variable() {
    // Values that parse but do not validate: the variable is named like a parse error's.
    for (var, value, field) in [
        ("RELAY_MAX_STREAMS", "0", "max_streams"),
        (
            "RELAY_MAX_STREAMS_PER_TENANT",
            "0",
            "max_streams_per_tenant",
        ),
        ("RELAY_LISTEN", "localhost", "listen"),
        ("RELAY_WRITE_TIMEOUT_MS", "0", "write_timeout_ms"),
        (
            "RELAY_AUDIT__MAX_TEXT_BYTES",
            "99999999",
            "audit.max_text_bytes",
        ),
        ("RELAY_STORE__TIMEOUT_MS", "0", "store.timeout_ms"),
        (
            "RELAY_TENANT_DEFAULTS__TOKENS_PER_DAY",
            "0",
            "tenant_defaults.tokens_per_day",
        ),
    ] {
        let top = if field.starts_with("store.") {
            "[store]\nurl = \"redis://127.0.0.1:1\""
        } else {
            ""
        };
        let e = err("", top, &[(var, value)]);
        assert!(
            e.contains(&format!("`{field}` (from environment variable {var})")),
            "{var}: {e}"
        );
    }
}

#[test]
fn a_bad_value_from_the_file_names_the_file_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("relay.toml");
    let check = |text: String, field: &str| {
        std::fs::write(&path, text).unwrap();
        let e = Config::load(&path, &env(&[])).unwrap_err().to_string();
        let want = format!("`{field}` (in {})", path.display());
        assert!(e.contains(&want), "{e}");
    };
    check(toml_with("", "max_streams = 0"), "max_streams");
    check(
        toml_with("idle_timeout_ms = 0", ""),
        "routes[0].idle_timeout_ms",
    );
    check(toml_with("", "max_streams = \"many\""), "max_streams");
    // A syntax error names the file too.
    std::fs::write(&path, "listen = ").unwrap();
    let e = Config::load(&path, &env(&[])).unwrap_err().to_string();
    assert!(e.contains(&path.display().to_string()), "{e}");
    // The same value from the environment names the variable, not the file.
    std::fs::write(&path, toml_with("", "")).unwrap();
    let e = Config::load(&path, &env(&[("RELAY_MAX_STREAMS", "0")]))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("RELAY_MAX_STREAMS") && !e.contains("relay.toml"),
        "{e}"
    );
}

#[test]
fn client_keys_must_be_sha256_digests() {
    let text = toml_with("", "").replace(
        &hex::encode(<sha2::Sha256 as sha2::Digest>::digest(b"client-key")),
        "not-a-digest",
    );
    let e = Config::from_toml(&text, &env(&[])).unwrap_err().to_string();
    assert!(e.contains("clients[0].key_sha256"), "{e}");
    let no_clients = toml_with("", "").replace("[[clients]]", "[unused_table]");
    assert!(Config::from_toml(&no_clients, &env(&[])).is_err());
}

#[test]
fn forward_headers_cannot_smuggle_credentials_or_hop_by_hop() {
    assert!(load("forward_headers = [\"x-mock-*\", \"X-Custom\"]", "", &[]).is_ok());
    for bad in [
        "authorization",
        "connection",
        "x-*",
        "transfer-encoding",
        "bad header",
        "*",
    ] {
        let e = err(&format!("forward_headers = [\"{bad}\"]"), "", &[]);
        assert!(e.contains("routes[0].forward_headers"), "{bad}: {e}");
    }
}

#[test]
fn route_paths_are_unique_and_not_reserved() {
    let twice = format!(
        "{}\n{}",
        toml_with("", ""),
        toml_with("", "")
            .split("[[routes]]")
            .nth(1)
            .map(|r| format!("[[routes]]{r}"))
            .unwrap()
    );
    assert!(
        Config::from_toml(&twice, &env(&[]))
            .unwrap_err()
            .to_string()
            .contains("routes[1].path")
    );
    let health =
        toml_with("", "").replace("path = \"/v1/chat/completions\"", "path = \"/healthz\"");
    assert!(Config::from_toml(&health, &env(&[])).is_err());
}

#[test]
fn stream_limits_have_documented_defaults() {
    let c = load("", "", &[]).unwrap();
    let r = &c.routes[0];
    assert_eq!(r.idle_timeout, Duration::from_secs(120));
    assert_eq!(r.total_timeout, Duration::from_secs(30 * 60));
    assert_eq!(r.keepalive_interval, Some(Duration::from_secs(15)));
    assert_eq!(r.max_event_bytes, 8 << 20);
    assert_eq!((r.targets.len(), r.max_attempts), (1, 1));
    let l = c.limits;
    assert_eq!(l.header_read_timeout, Duration::from_secs(30));
    assert_eq!(l.max_header_bytes, 64 << 10);
    assert_eq!(l.write_timeout, Duration::from_secs(30));
    assert_eq!(l.shutdown_grace, Duration::from_secs(30));
    assert_eq!((l.max_streams, l.max_streams_per_tenant), (10_000, 1_000));
}

#[test]
fn keepalives_must_come_before_the_idle_timeout() {
    let e = err(
        "idle_timeout_ms = 10000\nkeepalive_interval_ms = 10000",
        "",
        &[],
    );
    assert!(e.contains("routes[0].keepalive_interval_ms"), "{e}");
    let off = load(
        "idle_timeout_ms = 10000\nkeepalive_interval_ms = 0",
        "",
        &[],
    )
    .unwrap();
    assert_eq!(off.routes[0].keepalive_interval, None);
}

#[test]
fn terminal_event_is_one_short_line() {
    assert!(load("terminal_event = \"data: [DONE]\"", "", &[]).is_ok());
    for bad in ["\"\"", "\"a\\nb\"", &format!("\"{}\"", "x".repeat(65))] {
        let e = err(&format!("terminal_event = {bad}"), "", &[]);
        assert!(e.contains("routes[0].terminal_event"), "{bad}: {e}");
    }
}

#[test]
fn failover_endpoints_are_validated_like_the_first() {
    let ok = load(
        "[[routes.failover]]\nupstream = \"https://backup.example.com/v1\"\nsecret_env = \"VENDOR_KEY\"",
        "",
        &[],
    )
    .unwrap();
    assert_eq!(
        (ok.routes[0].targets.len(), ok.routes[0].max_attempts),
        (2, 2)
    );
    let e = err(
        "[[routes.failover]]\nupstream = \"ftp://x\"\nsecret_env = \"VENDOR_KEY\"",
        "",
        &[],
    );
    assert!(e.contains("routes[0].failover[0].upstream"), "{e}");
    let e = err(
        "[[routes.failover]]\nupstream = \"https://b.example.com\"\nsecret_env = \"NOPE\"",
        "",
        &[],
    );
    assert!(e.contains("routes[0].failover[0].secret"), "{e}");
    let e = err("max_attempts = 2", "", &[]);
    assert!(e.contains("routes[0].max_attempts"), "{e}");
}

/// A listener limit: its key, the smallest and largest values allowed, and where the loaded value is.
type Bounded = (&'static str, u64, u64, fn(&ServerLimits) -> u64);

/// Every listener limit at both edges of its range: the last value in is taken as given, the first one out is
/// refused naming its own field (not a neighbour's), from the file and from the environment alike.
#[test]
fn listener_limits_are_bounded() {
    let day_ms = 24 * 3600 * 1000_u64;
    let cases: [Bounded; 6] = [
        ("max_header_bytes", 8192, 1 << 20, |l| {
            l.max_header_bytes as u64
        }),
        ("header_read_timeout_ms", 1, day_ms, |l| {
            l.header_read_timeout.as_millis() as u64
        }),
        ("write_timeout_ms", 1, day_ms, |l| {
            l.write_timeout.as_millis() as u64
        }),
        ("shutdown_grace_ms", 1, day_ms, |l| {
            l.shutdown_grace.as_millis() as u64
        }),
        ("max_streams", 1, u64::from(u32::MAX), |l| {
            u64::from(l.max_streams)
        }),
        ("max_streams_per_tenant", 1, u64::from(u32::MAX), |l| {
            u64::from(l.max_streams_per_tenant)
        }),
    ];
    for (key, low, high, read) in cases {
        for inside in [low, high] {
            let c = load("", &format!("{key} = {inside}"), &[])
                .unwrap_or_else(|e| panic!("{key} = {inside}: {e}"));
            assert_eq!(read(&c.limits), inside, "{key}");
        }
        let var = format!("RELAY_{}", key.to_ascii_uppercase());
        for outside in [low - 1, high + 1] {
            let e = err("", &format!("{key} = {outside}"), &[]);
            assert!(
                e.contains(&format!("`{key}`")) || e.contains(key),
                "{key} = {outside}: {e}"
            );
            for other in cases
                .iter()
                .map(|c| c.0)
                .filter(|o| *o != key && !key.starts_with(o))
            {
                assert!(!e.contains(other), "{key} = {outside} names {other}: {e}");
            }
            let e = err("", "", &[(&var, &outside.to_string())]);
            assert!(e.contains(&var), "{var}={outside}: {e}");
        }
    }
}

#[test]
fn workers_default_to_one_per_cpu_and_are_bounded() {
    let cpus = std::thread::available_parallelism().map_or(1, usize::from);
    assert_eq!(load("", "", &[]).unwrap().workers, cpus);
    assert_eq!(load("", "workers = 3", &[]).unwrap().workers, 3);
    let from_env = load("", "", &[("RELAY_WORKERS", "1")]).unwrap();
    assert_eq!(from_env.workers, 1);
    assert!(err("", "workers = 5000", &[]).contains("workers"));
    assert!(!load("", "", &[]).unwrap().pin_connections);
}

#[test]
fn the_admin_listener_needs_an_address_of_its_own() {
    let e = err("", "admin_listen = \"localhost:9464\"", &[]);
    assert!(
        e.contains("admin_listen") && e.contains("not an IP:port"),
        "{e}"
    );
    let e = err("", "admin_listen = \"127.0.0.1:8080\"", &[]);
    assert!(
        e.contains("admin_listen") && e.contains("also `listen`"),
        "{e}"
    );
    let e = err("", "", &[("RELAY_ADMIN_LISTEN", "nowhere")]);
    assert!(e.contains("admin_listen") && e.contains("nowhere"), "{e}");
    // Port 0 for both is two free ports, not one.
    let c = load(
        "",
        "listen = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"",
        &[],
    )
    .unwrap();
    assert_eq!(c.admin_listen.port(), 0);
}

#[test]
fn jwt_settings_are_checked_at_load_and_the_jwks_file_read_at_startup() {
    let idp = testkit::idp::Idp::new().unwrap();
    let section = |extra: &str| idp.config_section(extra);
    let c = load("", &section("[[tenants]]\nname = \"globex\""), &[]).unwrap();
    let summary = crate::startup::prepare(c.clone()).unwrap().summary();
    assert!(summary.contains("JWTs checked against 3 keys"), "{summary}");
    let names: Vec<&str> = c.tenants.iter().map(|t| &**t).collect();
    assert_eq!(names, ["globex", "acme"]);
    let cases = [
        (
            "algorithms = [\"HS256\"]",
            "auth.jwt.algorithms",
            "HMAC and `none` are never accepted",
        ),
        (
            "algorithms = [\"none\"]",
            "auth.jwt.algorithms",
            "is not one of RS256, ES256, EdDSA",
        ),
        ("algorithms = []", "auth.jwt.algorithms", "at least one"),
        ("leeway_secs = 3600", "auth.jwt.leeway_secs", "at most 300"),
        (
            "tenant_claim = \"\"",
            "auth.jwt.tenant_claim",
            "must not be empty",
        ),
    ];
    for (extra, field, reason) in cases {
        let e = err("", &section(extra), &[]);
        assert!(e.contains(field) && e.contains(reason), "{extra}: {e}");
    }
    let missing =
        "[auth.jwt]\njwks_file = \"/nonexistent/jwks.json\"\nissuer = \"i\"\naudience = \"a\"";
    let e = startup_err(missing);
    assert!(
        e.contains("auth.jwt.jwks_file") && e.contains("cannot read"),
        "{e}"
    );
    let e = err("", &section("[[tenants]]\nname = \"\""), &[]);
    assert!(e.contains("tenants[0].name"), "{e}");
}

#[test]
fn request_rates_come_from_the_tenant_or_the_defaults_and_zero_is_refused() {
    let top = "[tenant_defaults]\nrequests_per_minute = 600\n[[tenants]]\nname = \"slow\"\nrequests_per_minute = 6";
    let c = load("", top, &[]).unwrap();
    let rpm = |t: &str| c.tenant_limits.get(t).and_then(|l| l.requests_per_minute);
    assert_eq!((rpm("slow"), rpm("acme")), (Some(6), Some(600)));
    let none = load("", "", &[]).unwrap();
    assert!(
        none.tenant_limits
            .values()
            .all(|l| *l == crate::limit::Limits::default())
    );
    let e = err(
        "",
        "[[tenants]]\nname = \"slow\"\nrequests_per_minute = 0",
        &[],
    );
    assert!(
        e.contains("tenants[0].requests_per_minute") && e.contains("at least 1"),
        "{e}"
    );
    let e = err("", "[tenant_defaults]\nrequests_per_minute = 0", &[]);
    assert!(e.contains("tenant_defaults.requests_per_minute"), "{e}");
}

#[test]
fn store_settings_name_the_field_when_wrong() {
    let cluster = "[store]\ncluster_nodes = [\"redis://10.0.0.1:7000\", \"redis://10.0.0.2:7000\"]";
    let c = load("", cluster, &[]).unwrap().store.unwrap();
    assert!(matches!(&c.servers, StoreServers::Cluster(nodes) if nodes.len() == 2));
    let ok = load("", "[store]\nurl = \"unix:///run/redis.sock\"", &[]).unwrap();
    let store = ok.store.unwrap();
    assert_eq!(store.timeout, Duration::from_millis(50));
    assert_eq!(store.on_error, crate::limit::store::OnStoreError::Allow);
    let cases = [
        ("url = \"http://redis\"", "store.url"),
        ("url = \"redis://h\"\ntimeout_ms = 0", "store.timeout_ms"),
        (
            "url = \"redis://h\"\nkey_prefix = \"a{b}\"",
            "store.key_prefix",
        ),
        (
            "url = \"redis://h\"\non_store_error = \"maybe\"",
            "on_store_error",
        ),
        (
            "url = \"redis://h\"\nstream_lease_ms = 200",
            "store.stream_lease_ms",
        ),
        (
            "url = \"redis://h\"\ntimeout_ms = 500\nstream_lease_ms = 1000",
            "store.stream_lease_ms",
        ),
        ("timeout_ms = 50", "store.url"),
        (
            "url = \"redis://h\"\ncluster_nodes = [\"redis://a:1\"]",
            "store.url",
        ),
        (
            "cluster_nodes = [\"redis://a:1\", \"http://b\"]",
            "store.cluster_nodes[1]",
        ),
        (
            "url = \"redis://h\"\nca_file = \"/etc/hostname\"",
            "store.ca_file",
        ),
    ];
    for (lines, field) in cases {
        let e = err("", &format!("[store]\n{lines}"), &[]);
        assert!(e.contains(field), "{lines}: {e}");
    }
}

/// The CA file is read at startup with rustls' PEM reader: a file that merely contains the PEM header line is no
/// certificate, and a real one is taken.
#[test]
fn the_store_ca_file_must_hold_pem_certificates() {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path.display().to_string()
    };
    let fake = write(
        "fake.pem",
        "-----BEGIN CERTIFICATE-----\nnot base64 at all!\n-----END CERTIFICATE-----\n",
    );
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["redis.test".into()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let real = write("ca.pem", &cert.pem());
    let store = |ca: &str| format!("[store]\nurl = \"rediss://h\"\nca_file = \"{ca}\"");
    for (ca, reason) in [
        ("/nonexistent/ca.pem".to_owned(), "cannot read"),
        ("/etc/hostname".to_owned(), "holds no PEM certificate"),
        (fake, "is not PEM"),
    ] {
        let e = startup_err(&store(&ca));
        assert!(
            e.contains("store.ca_file") && e.contains(reason),
            "{ca}: {e}"
        );
    }
    let c = load("", &store(&real), &[]).unwrap();
    assert!(crate::startup::prepare(c).is_ok());
}

#[test]
fn store_urls_never_print_their_password() {
    let c = load("", "[store]\nurl = \"redis://:hunter2@10.0.0.1:6379\"", &[]).unwrap();
    let shown = format!("{c:?}");
    assert!(
        !shown.contains("hunter2") && shown.contains("10.0.0.1:6379"),
        "{shown}"
    );
}

#[test]
fn a_tenant_may_set_its_own_concurrent_streams() {
    let c = load("", "[[tenants]]\nname = \"big\"\nmax_streams = 50", &[]).unwrap();
    let streams = |t: &str| c.tenant_limits.get(t).and_then(|l| l.max_streams);
    assert_eq!(streams("big"), Some(50));
    assert_eq!(streams("acme"), None);
    let e = err("", "[[tenants]]\nname = \"big\"\nmax_streams = 0", &[]);
    assert!(e.contains("tenants[0].max_streams"), "{e}");
}

#[test]
fn token_limits_come_from_the_tenant_or_the_defaults_one_by_one() {
    let top = "[tenant_defaults]\ntokens_per_minute = 1000\ntokens_per_month = 90000\n\
[[tenants]]\nname = \"small\"\ntokens_per_minute = 10\ntokens_per_day = 500";
    let c = load("", top, &[]).unwrap();
    let small = c.tenant_limits["small"].tokens;
    assert_eq!(
        (small.per_minute, small.per_day, small.per_month),
        (Some(10), Some(500), Some(90000))
    );
    let acme = c.tenant_limits["acme"].tokens;
    assert_eq!(
        (acme.per_minute, acme.per_day, acme.per_month),
        (Some(1000), None, Some(90000))
    );
    for (lines, field) in [
        (
            "[tenant_defaults]\ntokens_per_day = 0",
            "tenant_defaults.tokens_per_day",
        ),
        (
            "[[tenants]]\nname = \"x\"\ntokens_per_minute = 0",
            "tenants[0].tokens_per_minute",
        ),
        ("admin_key_sha256 = \"abc\"", "admin_key_sha256"),
    ] {
        let e = err("", lines, &[]);
        assert!(e.contains(field) && !e.is_empty(), "{lines}: {e}");
    }
}

/// A route of `dialect` to `upstream`, with no `auth` or `terminal_event`: the dialect's.
fn dialect_route(dialect: &str, upstream: &str) -> Result<Route, ConfigError> {
    let text = format!(
        r#"[[clients]]
tenant = "acme"
key_sha256 = "{}"

[[routes]]
path = "/x"
dialect = "{dialect}"
upstream = "{upstream}"
secret_env = "VENDOR_KEY"
"#,
        hex::encode(<sha2::Sha256 as sha2::Digest>::digest(b"client-key"))
    );
    Config::from_toml(&text, &env(&[])).map(|c| c.routes[0].clone())
}

#[test]
fn a_dialect_sets_the_credential_header_end_and_trace_name() {
    let cases = [
        (
            "openai",
            "https://api.openai.com/v1/chat/completions",
            "authorization",
            Some("data: [DONE]"),
            "openai",
        ),
        (
            "anthropic",
            "https://api.anthropic.com/v1/messages",
            "x-api-key",
            Some("event: message_stop"),
            "anthropic",
        ),
        (
            "azure-openai",
            "https://r.openai.azure.com/openai/deployments/{model}/chat/completions?api-version=2024-10-21",
            "api-key",
            Some("data: [DONE]"),
            "az.ai.openai",
        ),
        (
            "gemini",
            "https://generativelanguage.googleapis.com/v1beta/models/{model}:streamGenerateContent?alt=sse",
            "x-goog-api-key",
            None,
            "gcp.gemini",
        ),
    ];
    for (dialect, upstream, header, terminal, system) in cases {
        let r = dialect_route(dialect, upstream).unwrap_or_else(|e| panic!("{dialect}: {e}"));
        let (name, value) = r.targets[0].secret.header();
        assert_eq!(name.as_str(), header, "{dialect}");
        let bearer = value.to_str().unwrap().starts_with("Bearer ");
        assert_eq!(bearer, dialect == "openai", "{dialect}");
        assert_eq!(r.terminal_event.as_deref(), terminal, "{dialect}");
        assert_eq!(r.gen_ai_system, system, "{dialect}");
        assert_eq!(
            r.targets[0].model_in_path,
            upstream.contains("{model}"),
            "{dialect}"
        );
        assert_eq!(r.dialect.spec().name, dialect);
    }
    // Without a dialect a route keeps its old meaning: OpenAI's, no terminal line unless configured.
    let c = load("", "", &[]).unwrap();
    assert_eq!(
        (c.routes[0].dialect, c.routes[0].terminal_event.as_deref()),
        (Dialect::Openai, None)
    );
    let c = load("gen_ai_system = \"anthropic\"", "", &[]).unwrap();
    assert_eq!(c.routes[0].dialect, Dialect::Anthropic);
}

#[test]
fn a_dialect_s_path_form_is_checked_at_load() {
    let e = dialect_route(
        "azure-openai",
        "https://r.openai.azure.com/openai/deployments/d/chat/completions",
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("routes[0].upstream") && e.contains("api-version"),
        "{e}"
    );
    let e = dialect_route(
        "gemini",
        "https://g.example/v1beta/models/{model}:streamGenerateContent",
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("alt=sse"), "{e}");
    // Gemini's non-streaming method needs no alt=sse.
    dialect_route(
        "gemini",
        "https://g.example/v1beta/models/gemini-2.0-flash:generateContent",
    )
    .unwrap();
    let e = dialect_route("openai", "https://a.example/{model}/{x}")
        .unwrap_err()
        .to_string();
    assert!(e.contains("placeholder"), "{e}");
    let e = dialect_route("cohere", "https://a.example/v1")
        .unwrap_err()
        .to_string();
    assert!(e.contains("dialect"), "{e}");
}
