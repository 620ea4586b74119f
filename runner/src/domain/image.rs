//! Image references as the engine reads them: a domain value that the build policy, the
//! settings (`RUNNER_BUILD_BASE_IMAGES`) and the builds' engine checks all compare.

/// An image reference normalised as the engine normalises it (distribution/reference's
/// `ParseNormalizedNamed`): `busybox` is `docker.io/library/busybox:latest`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageName {
    /// `docker.io/library/busybox`, `127.0.0.1:5000/team/tools`.
    pub repository: String,
    pub tag: String,
}

impl ImageName {
    /// `repository:tag`.
    pub fn full(&self) -> String {
        format!("{}:{}", self.repository, self.tag)
    }
}

/// A reference the engine could resolve by image ID rather than by name: the engine's image
/// lookup falls back to a search of image IDs by prefix (`0a`, `0237e`, `sha256:0237e`) when no
/// tag of that name exists, so such a word reaches any image on the engine, untagged ones
/// included.
fn id_like(reference: &str) -> bool {
    let hex = |s: &str| !s.is_empty() && s.len() <= 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    let lower = reference.to_ascii_lowercase();
    hex(&lower) || ["sha256:", "sha384:", "sha512:"].iter().any(|a| lower.starts_with(a))
}

/// A path component of a repository name: `[a-z0-9]+(?:(?:[._]|__|[-]*)[a-z0-9]+)*`.
fn path_component(c: &str) -> bool {
    let b = c.as_bytes();
    let alnum = |x: &u8| x.is_ascii_lowercase() || x.is_ascii_digit();
    if b.is_empty() || !alnum(&b[0]) || !alnum(&b[b.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        if alnum(&b[i]) {
            i += 1;
            continue;
        }
        let run = b[i..].iter().take_while(|x| !alnum(x)).count();
        let sep = &c[i..i + run];
        if !(sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|x| x == b'-')) {
            return false;
        }
        i += run;
    }
    true
}

/// A registry host: lowercase DNS labels (or an IPv4 address) and an optional `:port`.
fn domain_ok(d: &str) -> bool {
    let (host, port) = match d.rsplit_once(':') {
        Some((h, p)) => (h, Some(p)),
        None => (d, None),
    };
    let label = |l: &str| {
        !l.is_empty()
            && l.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    host.split('.').all(label)
        && port.is_none_or(|p| !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit()))
}

/// Reads an image reference as the engine would, refusing every spelling that names an image by
/// ID or digest rather than by repository and tag (and, stricter than the engine, capitals).
pub fn normalize_reference(reference: &str) -> Result<ImageName, String> {
    if id_like(reference) {
        return Err(format!(
            "{reference:?} looks like an image ID; name an image by repository and tag (the engine would search \
             every image's ID for it)"
        ));
    }
    if reference.contains('@') {
        return Err(format!("{reference:?} names an image by digest; name it by repository and tag"));
    }
    let (domain, rest) = match reference.split_once('/') {
        Some((first, rest)) if first.contains(['.', ':']) || first == "localhost" => (first, rest),
        _ => ("docker.io", reference),
    };
    let domain = if domain == "index.docker.io" { "docker.io" } else { domain };
    let (path, tag) = match rest.split_once(':') {
        Some((p, t)) => (p, t),
        None => (rest, "latest"),
    };
    let tag_ok = !tag.is_empty()
        && tag.len() <= 128
        && !tag.starts_with(['.', '-'])
        && tag.bytes().all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b));
    if !domain_ok(domain) || !path.split('/').all(path_component) || !tag_ok {
        return Err(format!("{reference:?} is not an image reference (repository names are lowercase)"));
    }
    let path = if domain == "docker.io" && !path.contains('/') { format!("library/{path}") } else { path.to_string() };
    let repository = format!("{domain}/{path}");
    if repository.len() > 255 {
        return Err(format!("{reference:?} is too long for an image name"));
    }
    Ok(ImageName { repository, tag: tag.to_string() })
}

/// A repository name without a tag (an entry of `RUNNER_BUILD_BASE_IMAGES`), normalised.
pub fn repository_name(name: &str) -> Result<String, String> {
    let n = normalize_reference(name)?;
    let last = name.rsplit('/').next().unwrap_or(name);
    if last.contains(':') {
        return Err(format!("{name:?}: name a repository without a tag (any tag of it is allowed)"));
    }
    Ok(n.repository)
}

/// `RUNNER_IMAGE_REGISTRY`: a registry host (`registry.internal:5000`), nothing else.
pub fn registry_host(value: &str) -> Result<String, String> {
    if value.is_empty()
        || value.contains('/')
        || !domain_ok(value)
        || (!value.contains(['.', ':']) && value != "localhost")
    {
        return Err(format!(
            "{value:?} is not a registry host; give a host name with a dot or a port (registry.internal:5000), \
             or localhost"
        ));
    }
    Ok(value.to_string())
}

/// Where a fleet node finds `reference` when its engine lacks it: a name without a registry
/// (`exercise-runner/python:abc`, `debian:bookworm-slim`) lives in the fleet's registry under the
/// same path (Docker Hub's official images under `library/`, as a mirror keeps them); a name that
/// says its registry is pulled from there. `None` for what cannot be named by tag.
pub fn in_registry(registry: &str, reference: &str) -> Option<ImageName> {
    let n = normalize_reference(reference).ok()?;
    match n.repository.strip_prefix("docker.io/") {
        Some(path) if !reference.starts_with("docker.io/") && !reference.starts_with("index.docker.io/") => {
            Some(ImageName { repository: format!("{registry}/{path}"), tag: n.tag })
        }
        _ => Some(n),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_registry_is_a_host_and_port() {
        assert_eq!(registry_host("10.124.0.2:5000").unwrap(), "10.124.0.2:5000");
        assert!(registry_host("registry.internal").is_ok());
        assert!(registry_host("localhost").is_ok());
        for bad in ["", "registry", "http://r.example:5000", "r.example/team", "R.example", "r.example:99999x"] {
            assert!(registry_host(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn images_without_a_registry_live_in_the_fleets_under_the_same_path() {
        let at = |r: &str| in_registry("10.124.0.2:5000", r).map(|n| n.full());
        assert_eq!(
            at("exercise-runner/python:0123abcd").as_deref(),
            Some("10.124.0.2:5000/exercise-runner/python:0123abcd")
        );
        assert_eq!(at("exercise-runner/base").as_deref(), Some("10.124.0.2:5000/exercise-runner/base:latest"));
        assert_eq!(at("debian:bookworm-slim").as_deref(), Some("10.124.0.2:5000/library/debian:bookworm-slim"));
        assert_eq!(at("library/debian:12").as_deref(), Some("10.124.0.2:5000/library/debian:12"));
        // A name that says its registry is pulled from there, the fleet's own included.
        assert_eq!(at("ghcr.io/acme/tools:1").as_deref(), Some("ghcr.io/acme/tools:1"));
        assert_eq!(at("10.124.0.2:5000/team/x:2").as_deref(), Some("10.124.0.2:5000/team/x:2"));
        assert_eq!(at("docker.io/library/busybox:1").as_deref(), Some("docker.io/library/busybox:1"));
        assert_eq!(at("busybox@sha256:0123"), None);
        assert_eq!(at("Not An Image"), None);
    }
}
