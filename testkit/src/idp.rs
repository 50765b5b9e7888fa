//! An identity provider for the JWT tests: signing keys made at start (RS256, ES256, EdDSA), the JWKS file the
//! relay reads, and tokens signed with any of the keys (or forged: `alg: none`, HMAC with a public key).

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header};
use serde_json::{Value, json};

/// The issuer and audience [`Idp::claims`] puts in tokens.
pub const ISSUER: &str = "https://idp.test";
pub const AUDIENCE: &str = "ssegate";

/// One signing key.
struct Key {
    kid: String,
    alg: Algorithm,
    signing: EncodingKey,
    public: Jwk,
}

/// Signing keys and the JWKS file with their public halves.
pub struct Idp {
    dir: tempfile::TempDir,
    keys: Vec<Key>,
}

impl Idp {
    /// Three keys, `rsa-1` (RS256), `ec-1` (ES256) and `ed-1` (EdDSA), all in the JWKS file.
    pub fn new() -> Result<Self> {
        let mut idp = Self {
            dir: tempfile::Builder::new().prefix("ssegate-idp-").tempdir()?,
            keys: Vec::new(),
        };
        for (kid, alg) in [
            ("rsa-1", Algorithm::RS256),
            ("ec-1", Algorithm::ES256),
            ("ed-1", Algorithm::EdDSA),
        ] {
            idp.add_key(kid, alg)?;
        }
        idp.publish(&["rsa-1", "ec-1", "ed-1"])?;
        Ok(idp)
    }

    /// The JWKS file.
    pub fn jwks_file(&self) -> PathBuf {
        self.dir.path().join("jwks.json")
    }

    /// The `[auth.jwt]` section for this provider (`extra` lines appended inside it).
    pub fn config_section(&self, extra: &str) -> String {
        format!(
            "[auth.jwt]\njwks_file = {:?}\nissuer = {ISSUER:?}\naudience = {AUDIENCE:?}\n{extra}\n",
            self.jwks_file().display().to_string()
        )
    }

    /// Makes a new key (not yet published).
    pub fn add_key(&mut self, kid: &str, alg: Algorithm) -> Result<()> {
        let rcgen_alg = match alg {
            Algorithm::RS256 => &rcgen::PKCS_RSA_SHA256,
            Algorithm::ES256 => &rcgen::PKCS_ECDSA_P256_SHA256,
            Algorithm::EdDSA => &rcgen::PKCS_ED25519,
            other => anyhow::bail!("no test key for {other:?}"),
        };
        let pair = rcgen::KeyPair::generate_for(rcgen_alg).context("generating a key")?;
        let (der, raw) = (pair.serialize_der(), pair.public_key_raw().to_vec());
        // jsonwebtoken signs RSA with a PKCS#1 key, EC and Ed25519 with PKCS#8 ones (rcgen's form); the public
        // halves come from rcgen's raw public key (PKCS#1 for RSA, the curve point otherwise).
        let (signing, verifying) = match alg {
            Algorithm::RS256 => (
                EncodingKey::from_rsa_der(&pkcs1_from_pkcs8(&der).context("RSA key")?),
                DecodingKey::from_rsa_der(&raw),
            ),
            Algorithm::ES256 => (
                EncodingKey::from_ec_der(&der),
                DecodingKey::from_ec_der(&raw),
            ),
            _ => (
                EncodingKey::from_ed_der(&der),
                DecodingKey::from_ed_der(&raw),
            ),
        };
        let mut public = Jwk::from_decoding_key(&verifying, Some(alg)).context("public JWK")?;
        public.common.key_id = Some(kid.to_owned());
        self.keys.push(Key {
            kid: kid.to_owned(),
            alg,
            signing,
            public,
        });
        Ok(())
    }

    /// Writes the JWKS file with the public keys of `kids`.
    pub fn publish(&self, kids: &[&str]) -> Result<()> {
        let keys = kids
            .iter()
            .map(|k| self.key(k).map(|k| k.public.clone()))
            .collect::<Result<_>>()?;
        write_atomically(
            &self.jwks_file(),
            &serde_json::to_string_pretty(&JwkSet { keys })?,
        )
    }

    fn key(&self, kid: &str) -> Result<&Key> {
        self.keys
            .iter()
            .find(|k| k.kid == kid)
            .with_context(|| format!("no key {kid}"))
    }

    /// Claims for `tenant` from this issuer to the relay, valid from a minute ago for five minutes.
    pub fn claims(tenant: &str) -> Value {
        let now = now();
        json!({"iss": ISSUER, "aud": AUDIENCE, "sub": "user-1", "tenant": tenant, "iat": now, "nbf": now - 60,
               "exp": now + 300})
    }

    /// `claims` signed with key `kid` by its own algorithm.
    pub fn sign(&self, kid: &str, claims: &Value) -> Result<String> {
        let key = self.key(kid)?;
        let mut header = Header::new(key.alg);
        header.kid = Some(kid.to_owned());
        Ok(jsonwebtoken::encode(&header, claims, &key.signing)?)
    }

    /// An unsigned token (`alg: none`) naming key `kid`.
    pub fn unsigned(kid: &str, claims: &Value) -> String {
        let part = |v: &Value| URL_SAFE_NO_PAD.encode(v.to_string());
        format!(
            "{}.{}.",
            part(&json!({"alg": "none", "typ": "JWT", "kid": kid})),
            part(claims)
        )
    }

    /// The classic confusion attack: HS256 with key `kid`'s public JWK (as the file serves it) as the HMAC secret.
    pub fn hmac_with_public_key(&self, kid: &str, claims: &Value) -> Result<String> {
        let secret = serde_json::to_vec(&self.key(kid)?.public)?;
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some(kid.to_owned());
        Ok(jsonwebtoken::encode(
            &header,
            claims,
            &EncodingKey::from_secret(&secret),
        )?)
    }
}

/// Seconds since the epoch.
pub fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// Replaces `path` in one step (a reader never sees half a file).
fn write_atomically(path: &Path, text: &str) -> Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

/// The PKCS#1 key inside a PKCS#8 `PrivateKeyInfo` (`SEQUENCE { INTEGER, SEQUENCE, OCTET STRING }`).
fn pkcs1_from_pkcs8(der: &[u8]) -> Option<Vec<u8>> {
    /// One DER element: its tag, its content and what follows it.
    fn element(b: &[u8]) -> Option<(u8, &[u8], &[u8])> {
        let (&tag, b) = b.split_first()?;
        let (&first, mut b) = b.split_first()?;
        let len = if first < 0x80 {
            usize::from(first)
        } else {
            let (bytes, rest) = b.split_at_checked(usize::from(first & 0x7f))?;
            b = rest;
            bytes.iter().fold(0, |n, &x| n << 8 | usize::from(x))
        };
        let (content, rest) = b.split_at_checked(len)?;
        Some((tag, content, rest))
    }
    let (_, info, _) = element(der)?;
    let (_, _, rest) = element(info)?;
    let (_, _, rest) = element(rest)?;
    let (tag, key, _) = element(rest)?;
    (tag == 0x04).then(|| key.to_vec())
}
