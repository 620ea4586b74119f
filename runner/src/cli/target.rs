//! Where the runner is and which token it takes, found as `runner serve` finds its settings.
//!
//! The settings are loaded exactly as `serve` loads them (`Settings::load_with`: defaults, under
//! `--config FILE`, under `RUNNER_*`), so a CLI started on the runner's machine with the same
//! settings needs nothing more:
//! - URL: `--url` / `RUNNER_URL`, else `public_url` (when it is `http://`: this binary speaks
//!   no TLS, and on the runner's machine the listen address is as good), else `http://` and the
//!   listen address (an unspecified address, `0.0.0.0` or `::`, as loopback).
//! - token: `api_token` (`RUNNER_API_TOKEN`, or the file's `api_token`), else the
//!   `<data_dir>/api-token` file that `serve` generates when none is configured. The CLI only
//!   reads that file, never creates it.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    path::Path,
};

use super::CliError;
use crate::config::Settings;

/// Where the URL came from, for error messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UrlSource {
    /// `--url` or `RUNNER_URL`.
    Given,
    PublicUrl,
    Listen,
}

/// Where the token came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenSource {
    /// `RUNNER_API_TOKEN` or the settings file's `api_token`.
    Settings,
    /// The file `runner serve` wrote.
    DataDir(std::path::PathBuf),
}

#[derive(Clone)]
pub struct Target {
    /// The base URL, without a trailing `/`.
    pub url: String,
    pub url_source: UrlSource,
    pub token: String,
    pub token_source: TokenSource,
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Target")
            .field("url", &self.url)
            .field("url_source", &self.url_source)
            .field("token", &"<redacted>")
            .field("token_source", &self.token_source)
            .finish()
    }
}

impl UrlSource {
    pub fn describe(&self) -> &'static str {
        match self {
            UrlSource::Given => "from --url or RUNNER_URL",
            UrlSource::PublicUrl => "RUNNER_PUBLIC_URL; set RUNNER_URL to choose another",
            UrlSource::Listen => "RUNNER_LISTEN; set RUNNER_URL to choose another",
        }
    }
}

impl Target {
    /// From this process's environment and `--config`/`RUNNER_CONFIG`.
    pub fn from_environment(config: Option<&Path>, url: Option<&str>) -> Result<Target, CliError> {
        Self::resolve(config, url, |k| std::env::var(k).ok())
    }

    /// From the settings file and an environment lookup; `url` is `--url`/`RUNNER_URL`.
    pub fn resolve(
        config: Option<&Path>,
        url: Option<&str>,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Target, CliError> {
        let settings = Settings::load_with(config, env)
            .map_err(|e| CliError::Setup(format!("the runner's settings cannot be read: {e:#}")))?;
        Self::of_settings(&settings, url)
    }

    pub fn of_settings(settings: &Settings, url: Option<&str>) -> Result<Target, CliError> {
        let (url, url_source) = match url.map(str::trim).filter(|u| !u.is_empty()) {
            Some(u) => (u.to_string(), UrlSource::Given),
            None if settings.public_url.starts_with("http://") => (settings.public_url.clone(), UrlSource::PublicUrl),
            None => (format!("http://{}", reachable(settings.listen)), UrlSource::Listen),
        };
        let url = url.trim_end_matches('/').to_string();
        match reqwest::Url::parse(&url) {
            Ok(u) if u.scheme() == "http" => {}
            Ok(u) if u.scheme() == "https" => {
                return Err(CliError::Setup(format!(
                    "{url}: this runner binary speaks plain HTTP only; give the runner's listen address \
                     (RUNNER_URL=http://127.0.0.1:8080) or go through a local TLS proxy"
                )))
            }
            _ => return Err(CliError::Setup(format!("{url:?} is not an http:// URL ({})", url_source.describe()))),
        }
        let (token, token_source) = match &settings.api_token {
            Some(t) => (t.expose().to_string(), TokenSource::Settings),
            None => {
                let path = settings.data_dir.join("api-token");
                (read_token_file(&path)?, TokenSource::DataDir(path))
            }
        };
        Ok(Target { url, url_source, token, token_source })
    }
}

/// The listen address as a client can dial it: an unspecified address is this machine.
fn reachable(listen: SocketAddr) -> SocketAddr {
    match listen.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), listen.port()),
        IpAddr::V6(ip) if ip.is_unspecified() => SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), listen.port()),
        _ => listen,
    }
}

fn read_token_file(path: &Path) -> Result<String, CliError> {
    let hint = "set RUNNER_API_TOKEN, or run this on the runner's machine with its settings \
                (the same RUNNER_DATA_DIR, or --config FILE)";
    match std::fs::read_to_string(path) {
        Ok(t) if !t.trim().is_empty() => Ok(t.trim().to_string()),
        Ok(_) => Err(CliError::Setup(format!("no API token: {} is empty; {hint}", path.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(CliError::Setup(format!(
            "no API token: RUNNER_API_TOKEN is not set and {} does not exist (`runner serve` writes it on \
             its first start); {hint}",
            path.display()
        ))),
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => Err(CliError::Setup(format!(
            "no API token: {} is not readable by this user (it is the runner's, mode 0600); run as the \
             runner's user or set RUNNER_API_TOKEN",
            path.display()
        ))),
        Err(e) => Err(CliError::Setup(format!("no API token: reading {}: {e}", path.display()))),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        move |k| map.get(k).cloned()
    }

    #[test]
    fn the_url_is_the_flag_then_the_public_url_then_the_listen_address() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().display().to_string();
        let base = [("RUNNER_DATA_DIR", data.as_str()), ("RUNNER_API_TOKEN", "t")];

        let t = Target::resolve(None, None, env(&base)).unwrap();
        assert_eq!((t.url.as_str(), &t.url_source), ("http://127.0.0.1:8080", &UrlSource::Listen));

        let listen_any = [base[0], base[1], ("RUNNER_LISTEN", "0.0.0.0:9090")];
        assert_eq!(Target::resolve(None, None, env(&listen_any)).unwrap().url, "http://127.0.0.1:9090");
        let listen_v6 = [base[0], base[1], ("RUNNER_LISTEN", "[::]:9090")];
        assert_eq!(Target::resolve(None, None, env(&listen_v6)).unwrap().url, "http://[::1]:9090");

        let public =
            [base[0], base[1], ("RUNNER_LISTEN", "0.0.0.0:9090"), ("RUNNER_PUBLIC_URL", "http://runner.lan:80/")];
        let t = Target::resolve(None, None, env(&public)).unwrap();
        assert_eq!((t.url.as_str(), &t.url_source), ("http://runner.lan:80", &UrlSource::PublicUrl));
        // An https public URL is skipped (no TLS here): the listen address is dialled instead.
        let https =
            [base[0], base[1], ("RUNNER_LISTEN", "0.0.0.0:9090"), ("RUNNER_PUBLIC_URL", "https://runner.example")];
        assert_eq!(Target::resolve(None, None, env(&https)).unwrap().url, "http://127.0.0.1:9090");

        let t = Target::resolve(None, Some("http://10.0.0.5:8080/"), env(&public)).unwrap();
        assert_eq!((t.url.as_str(), &t.url_source), ("http://10.0.0.5:8080", &UrlSource::Given));
        let e = Target::resolve(None, Some("https://runner.example"), env(&public)).unwrap_err();
        assert!(e.to_string().contains("plain HTTP"), "{e}");
        assert_eq!(e.exit(), super::super::Exit::Usage);
        let e = Target::resolve(None, Some("runner.example:8080"), env(&public)).unwrap_err();
        assert!(e.to_string().contains("not an http:// URL"), "{e}");
    }

    #[test]
    fn the_token_is_the_settings_then_the_file_serve_wrote_in_the_data_dir() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().display().to_string();
        let only_dir = [("RUNNER_DATA_DIR", data.as_str())];

        // Nothing yet: a message that says where it looked and what to do; exit 2.
        let e = Target::resolve(None, None, env(&only_dir)).unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("api-token") && msg.contains(&data) && msg.contains("RUNNER_API_TOKEN"), "{msg}");
        assert_eq!(e.exit(), super::super::Exit::Usage);

        // What `runner serve` generates is what the CLI finds.
        let mut served = Settings::load_with(None, env(&only_dir)).unwrap();
        served.resolve_secrets().unwrap();
        let generated = served.api_token.unwrap().expose().to_string();
        let t = Target::resolve(None, None, env(&only_dir)).unwrap();
        assert_eq!(t.token, generated);
        assert_eq!(t.token_source, TokenSource::DataDir(dir.path().join("api-token")));

        // RUNNER_API_TOKEN wins over the file.
        let t = Target::resolve(None, None, env(&[only_dir[0], ("RUNNER_API_TOKEN", "from-env")])).unwrap();
        assert_eq!((t.token.as_str(), &t.token_source), ("from-env", &TokenSource::Settings));
        assert!(!format!("{t:?}").contains("from-env"), "Debug shows the token");
    }

    #[test]
    fn a_settings_file_gives_the_data_dir_listen_and_token_under_the_environment() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        std::fs::create_dir(&data).unwrap();
        std::fs::write(data.join("api-token"), "file-token\n").unwrap();
        let config = dir.path().join("runner.toml");
        std::fs::write(&config, format!("data_dir = {:?}\nlisten = \"0.0.0.0:7070\"\n", data.display().to_string()))
            .unwrap();

        let t = Target::resolve(Some(&config), None, env(&[])).unwrap();
        assert_eq!((t.url.as_str(), t.token.as_str()), ("http://127.0.0.1:7070", "file-token"));
        // The environment wins over the file, as for `serve`.
        let t = Target::resolve(Some(&config), None, env(&[("RUNNER_LISTEN", "127.0.0.1:7171")])).unwrap();
        assert_eq!(t.url, "http://127.0.0.1:7171");
        // A token in the file wins over the data directory's.
        std::fs::write(&config, format!("data_dir = {:?}\napi_token = \"configured\"\n", data.display().to_string()))
            .unwrap();
        assert_eq!(Target::resolve(Some(&config), None, env(&[])).unwrap().token, "configured");
        // A settings file the runner would refuse is refused here too, naming the problem.
        std::fs::write(&config, "listen_adress = \"0.0.0.0:1\"\n").unwrap();
        let e = Target::resolve(Some(&config), None, env(&[])).unwrap_err();
        assert!(e.to_string().contains("listen_adress"), "{e}");
        assert_eq!(e.exit(), super::super::Exit::Usage);
    }
}
