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
