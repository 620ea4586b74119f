//! An app's definition: the contract automated clients rely on (issue: "the definition reads
//! like this"). Secret values are write-only: they are split off into [`Secrets`] at once and
//! never serialised into a view or a log line.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::domain::{Invalid, Slug};

fn default_replicas() -> u32 {
    1
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Health {
    pub path: String,
    #[serde(default = "default_health_timeout")]
    pub timeout_secs: u64,
}

fn default_health_timeout() -> u64 {
    30
}

/// "At most `max` restarts within `within_secs`", then the service is failed and reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RestartPolicy {
    pub max: u32,
    pub within_secs: u64,
}

impl Default for RestartPolicy {
    fn default() -> Self {
        RestartPolicy { max: 3, within_secs: 30 }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ServiceSpec {
    pub command: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    #[serde(default = "default_replicas")]
    pub replicas: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<Health>,
    #[serde(default)]
    pub restart: RestartPolicy,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum WebhookFormat {
    /// `{"text": "..."}`, what Slack-compatible chats take.
    Slack,
    /// A JSON event, signed with `X-Runner-Signature-256` when a secret is set.
    Json,
}

#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WebhookInput {
    pub url: String,
    #[serde(default = "default_format")]
    pub format: WebhookFormat,
    #[serde(default)]
    pub secret: Option<String>,
}

fn default_format() -> WebhookFormat {
    WebhookFormat::Slack
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Webhook {
    pub url: String,
    pub format: WebhookFormat,
    pub signed: bool,
}

#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RegistryInput {
    pub username: String,
    /// Write-only; `null` or absent keeps the stored one.
    #[serde(default)]
    pub password: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Registry {
    pub username: String,
}

/// `PUT /v1/apps/{app}` body.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ManagedAppInput {
    pub image: String,
    #[serde(default)]
    pub host: Option<String>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Write-only. A `null` value keeps the value stored before; a key left out is removed.
    #[serde(default)]
    pub secrets: BTreeMap<String, Option<String>>,
    #[serde(default)]
    pub release: Option<Vec<String>>,
    #[serde(default)]
    pub writable: Vec<String>,
    pub services: BTreeMap<String, ServiceSpec>,
    /// Named volumes: name → mount path. They outlive deploys.
    #[serde(default)]
    pub volumes: BTreeMap<String, String>,
    #[serde(default)]
    pub registry: Option<RegistryInput>,
    #[serde(default)]
    pub notifications: Vec<WebhookInput>,
    #[serde(default)]
    pub memory_mb: Option<u64>,
}

/// What is stored (and shown) of an app, with no secret values in it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ManagedAppSpec {
    pub image: String,
    pub host: Option<String>,
    pub env: BTreeMap<String, String>,
    pub secret_keys: Vec<String>,
    pub release: Option<Vec<String>>,
    pub writable: Vec<String>,
    pub services: BTreeMap<String, ServiceSpec>,
    pub volumes: BTreeMap<String, String>,
    pub registry: Option<Registry>,
    pub notifications: Vec<Webhook>,
    pub memory_mb: u64,
}

impl ManagedAppSpec {
    /// The service the ingress sends traffic to: `web`, else the first with a port.
    pub fn web_service(&self) -> Option<(&String, &ServiceSpec)> {
        self.services
            .get_key_value("web")
            .filter(|(_, s)| s.port.is_some())
            .or_else(|| self.services.iter().find(|(_, s)| s.port.is_some()))
    }
}

/// The write-only part, stored apart from the spec.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Secrets {
    pub env: BTreeMap<String, String>,
    pub registry_password: Option<String>,
    /// Webhook URL → HMAC secret.
    pub webhooks: BTreeMap<String, String>,
}

impl Secrets {
    /// Every secret value (for redaction).
    pub fn values(&self) -> impl Iterator<Item = &str> {
        self.env.values().chain(self.registry_password.iter()).chain(self.webhooks.values()).map(String::as_str)
    }
}

fn bad(field: &str, why: impl std::fmt::Display) -> Invalid {
    Invalid::new("invalid_app", format!("{field}: {why}"))
}

fn env_key_ok(k: &str) -> bool {
    !k.is_empty()
        && k.len() <= 128
        && !k.as_bytes()[0].is_ascii_digit()
        && k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

fn argv_ok(v: &[String]) -> bool {
    !v.is_empty() && v.len() <= 64 && v.iter().all(|a| !a.is_empty() && a.len() <= 4096 && !a.contains('\0'))
}

fn abs_path_ok(p: &str) -> bool {
    p.starts_with('/')
        && p.len() > 1
        && p.len() <= 200
        && !p.split('/').any(|c| c == ".." || c == ".")
        && p.bytes().all(|b| b.is_ascii_alphanumeric() || b"/_-.".contains(&b))
}

pub fn validate(
    name: &str,
    input: ManagedAppInput,
    previous: Option<&Secrets>,
) -> Result<(ManagedAppSpec, Secrets), Invalid> {
    Slug::parse(name).map_err(|e| Invalid::new("invalid_app_name", e.message.replace("exercise slug", "app name")))?;
    crate::exercises::check_image_reference(&input.image).map_err(|e| bad("image", e.message))?;
    let tail = input.image.rsplit('/').next().unwrap_or("");
    if tail.contains(':') || input.image.contains('@') {
        return Err(bad("image", "give the repository without a tag; the version comes with each deploy"));
    }
    if let Some(h) = &input.host {
        let ok = !h.is_empty()
            && h.len() <= 253
            && h.split('.').all(|l| !l.is_empty() && l.len() <= 63 && !l.starts_with('-'))
            && h.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-');
        if !ok {
            return Err(bad("host", format!("{h:?} is not a lowercase host name")));
        }
    }
    let mut total = 0;
    for (k, v) in &input.env {
        if !env_key_ok(k) {
            return Err(bad("env", format!("{k:?} is not a variable name")));
        }
        total += k.len() + v.len();
    }
    let old = previous.cloned().unwrap_or_default();
    let mut secrets = Secrets::default();
    for (k, v) in input.secrets {
        if !env_key_ok(&k) {
            return Err(bad("secrets", format!("{k:?} is not a variable name")));
        }
        if input.env.contains_key(&k) {
            return Err(bad("secrets", format!("{k:?} is also in env")));
        }
        let value = match v {
            Some(v) => v,
            None => old
                .env
                .get(&k)
                .cloned()
                .ok_or_else(|| bad("secrets", format!("{k:?} is null but no value was stored")))?,
        };
        total += k.len() + value.len();
        secrets.env.insert(k, value);
    }
    if total > 256 * 1024 {
        return Err(bad("env", "env and secrets are over 256 KiB together"));
    }
    if let Some(r) = &input.release {
        if !argv_ok(r) {
            return Err(bad("release", "must be a non-empty argument vector"));
        }
    }
    for p in &input.writable {
        if !abs_path_ok(p) || p == "/" {
            return Err(bad("writable", format!("{p:?} is not an absolute, normalised path")));
        }
    }
    if input.services.is_empty() || input.services.len() > 16 {
        return Err(bad("services", "define 1 to 16 services"));
    }
    for (name, s) in &input.services {
        let name_ok = !name.is_empty()
            && name.len() <= 32
            && name.as_bytes()[0].is_ascii_lowercase()
            && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if !name_ok {
            return Err(bad("services", format!("{name:?} is not a service name ([a-z][a-z0-9-]*)")));
        }
        let f = |what: &str| format!("services.{name}.{what}");
        if !argv_ok(&s.command) {
            return Err(bad(&f("command"), "must be a non-empty argument vector"));
        }
        if s.port == Some(0) {
            return Err(bad(&f("port"), "must be 1-65535"));
        }
        if !(1..=20).contains(&s.replicas) {
            return Err(bad(&f("replicas"), "must be 1-20"));
        }
        if let Some(h) = &s.health {
            if s.port.is_none() {
                return Err(bad(&f("health"), "a health check needs the service's port"));
            }
            if !h.path.starts_with('/')
                || h.path.len() > 200
                || h.path.chars().any(|c| c.is_whitespace() || c.is_control())
            {
                return Err(bad(&f("health.path"), "must be a path starting with /"));
            }
            if !(1..=600).contains(&h.timeout_secs) {
                return Err(bad(&f("health.timeout_secs"), "must be 1-600"));
            }
        }
        if s.restart.max > 100 || !(1..=86400).contains(&s.restart.within_secs) {
            return Err(bad(&f("restart"), "max must be 0-100 and within_secs 1-86400"));
        }
    }
    for (v, path) in &input.volumes {
        let ok = !v.is_empty()
            && v.len() <= 32
            && v.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if !ok || !abs_path_ok(path) {
            return Err(bad("volumes", format!("{v:?}: {path:?} needs a [a-z0-9-] name and an absolute path")));
        }
    }
    let registry = match input.registry {
        None => None,
        Some(r) => {
            if r.username.is_empty() || r.username.len() > 256 {
                return Err(bad("registry.username", "must be 1-256 characters"));
            }
            secrets.registry_password = match r.password {
                Some(p) => Some(p),
                None => old.registry_password.clone(),
            };
            Some(Registry { username: r.username })
        }
    };
    let mut notifications = Vec::new();
    for w in input.notifications {
        let ok = (w.url.starts_with("http://") || w.url.starts_with("https://"))
            && w.url.len() <= 2000
            && !w.url.chars().any(|c| c.is_whitespace() || c.is_control());
        if !ok {
            return Err(bad("notifications", format!("{:?} is not an http(s) URL", w.url)));
        }
        let secret = w.secret.or_else(|| old.webhooks.get(&w.url).cloned());
        if let Some(s) = &secret {
            secrets.webhooks.insert(w.url.clone(), s.clone());
        }
        notifications.push(Webhook { url: w.url, format: w.format, signed: secret.is_some() });
    }
    if notifications.len() > 8 {
        return Err(bad("notifications", "at most 8 webhooks"));
    }
    let memory_mb = input.memory_mb.unwrap_or(1024);
    if !(32..=65536).contains(&memory_mb) {
        return Err(bad("memory_mb", "must be 32-65536"));
    }
    let spec = ManagedAppSpec {
        image: input.image,
        host: input.host,
        env: input.env,
        secret_keys: secrets.env.keys().cloned().collect(),
        release: input.release,
        writable: input.writable,
        services: input.services,
        volumes: input.volumes,
        registry,
        notifications,
        memory_mb,
    };
    Ok((spec, secrets))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(v: serde_json::Value) -> ManagedAppInput {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn the_documented_definition_is_accepted_and_secrets_split_off() {
        let def = serde_json::json!({"image": "registry.example.com/acme/web",
         "host": "www.example.com",
         "env": {"RAILS_ENV": "production"},
         "secrets": {"SECRET_KEY_BASE": "s3cr3t"},
         "release": ["bin/rails", "db:migrate"],
         "writable": ["/tmp", "/var/tmp"],
         "services": {
           "web": {"command": ["bundle", "exec", "unicorn_rails", "-p", "8080"], "port": 8080, "replicas": 2,
                   "health": {"path": "/up", "timeout_secs": 30}, "restart": {"max": 3, "within_secs": 30}},
           "worker": {"command": ["bundle", "exec", "rake", "jobs:work"]}}});
        let (spec, secrets) = validate("web", input(def), None).unwrap();
        assert_eq!(spec.secret_keys, vec!["SECRET_KEY_BASE"]);
        assert!(!serde_json::to_string(&spec).unwrap().contains("s3cr3t"));
        assert_eq!(secrets.env["SECRET_KEY_BASE"], "s3cr3t");
        assert_eq!(spec.web_service().unwrap().0, "web");
        assert_eq!(spec.services["worker"].replicas, 1);
        // A null secret keeps the stored value.
        let again = serde_json::json!({"image": "r/web", "secrets": {"SECRET_KEY_BASE": null},
            "services": {"web": {"command": ["x"]}}});
        let (_, kept) = validate("web", input(again), Some(&secrets)).unwrap();
        assert_eq!(kept.env["SECRET_KEY_BASE"], "s3cr3t");
    }

    #[test]
    fn errors_name_the_field() {
        let cases = [
            (serde_json::json!({"image": "r/web:v1", "services": {"web": {"command": ["x"]}}}), "image"),
            (serde_json::json!({"image": "r/web", "services": {}}), "services"),
            (serde_json::json!({"image": "r/web", "env": {"1X": "a"}, "services": {"web": {"command": ["x"]}}}), "env"),
            (
                serde_json::json!({"image": "r/web", "services": {"web": {"command": ["x"], "health": {"path": "/up"}}}}),
                "services.web.health",
            ),
            (serde_json::json!({"image": "r/web", "services": {"web": {"command": []}}}), "services.web.command"),
            (
                serde_json::json!({"image": "r/web", "host": "Bad Host", "services": {"web": {"command": ["x"]}}}),
                "host",
            ),
            (
                serde_json::json!({"image": "r/web", "secrets": {"A": null}, "services": {"web": {"command": ["x"]}}}),
                "secrets",
            ),
        ];
        for (v, field) in cases {
            let e = validate("web", input(v.clone()), None).unwrap_err();
            assert!(e.message.starts_with(field), "{v}: {}", e.message);
        }
    }
}
