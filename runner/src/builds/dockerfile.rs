//! An author's Dockerfile, read the way the engine reads it, and the policy it must meet.
//!
//! Why a parser and not line matching: `ADD <url>` makes the engine itself fetch the URL, from
//! the host's network namespace, so an `ADD http://127.0.0.1:...` reads the host's own services
//! and the build log hands the bytes back. Docker's parser has many ways to spell one instruction
//! (an escape token chosen by a directive, whitespace after it, comment and blank lines inside a
//! continued instruction, CRLF, `ONBUILD`, JSON form, quotes and variables expanded later), and
//! each one line matching missed was a way through. So [`parse`] follows the rules of
//! moby/buildkit's `frontend/dockerfile/parser` as vendored by the engine this runner drives
//! (Docker 20.10; the runner's `POST /build` sends no `version`, so the engine uses its classic
//! builder, whose parser has no heredocs), and [`check`] then applies a deliberately strict
//! policy: a clear subset where every accepted instruction means one thing to any Docker parser.
//!
//! Parser rules kept here (see `parser.go` and `split_command.go` there):
//! - lines are split on `\n`, one `\r` before it dropped; a UTF-8 BOM on the first line dropped;
//! - parser directives (`# key=value`, key case-insensitive, only `escape` and `syntax` known)
//!   count only at the very top: the first line that is not one (an instruction, a blank line,
//!   another comment, an unknown key) ends them; a repeated directive is an error;
//! - a line continues when it ends with the escape token followed by `[ \t]*`; the token and the
//!   blanks are removed and the next line is appended as it is (no space added); comment lines
//!   and blank lines inside a continued instruction are skipped;
//! - an instruction is its first word (up to `[\t\v\f\r ]`), case-insensitive; then `--flags`
//!   (words starting `--`, read byte by byte with Go's `unicode.IsSpace` on each byte), then the
//!   arguments.
//!
//! Whitespace: Go's `unicode.IsSpace` and Rust's `char::is_whitespace` are the same set (the
//! Unicode `White_Space` property); RE2's `\s` is `[\t\n\f\r ]`.

use crate::domain::{normalize_reference, repository_name, ImageName, Invalid};

/// One instruction, its continuation lines joined.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instruction {
    /// First and last line of the instruction in the file (1-based).
    pub line: usize,
    pub end_line: usize,
    /// The instruction's first word as written (`ADD`, `add`, ...).
    pub name: String,
    /// The `--flag` words before the arguments, as written.
    pub flags: Vec<String>,
    /// The rest of the instruction, trimmed.
    pub args: String,
}

impl Instruction {
    /// The instruction's name, lowercased, when it is plain ASCII letters (what Docker's
    /// `strings.ToLower` would make of it; other names are unknown instructions).
    pub fn keyword(&self) -> Option<String> {
        (!self.name.is_empty() && self.name.bytes().all(|b| b.is_ascii_alphabetic()))
            .then(|| self.name.to_ascii_lowercase())
    }
}

/// A parser directive from the top of the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Directive {
    /// Lowercased: `escape` or `syntax`.
    pub key: String,
    pub value: String,
    pub line: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dockerfile {
    pub escape: char,
    pub directives: Vec<Directive>,
    pub instructions: Vec<Instruction>,
    /// Comment lines outside the directive block that look like an `escape` or `syntax`
    /// directive (line, lowercased key). Docker 20.10 ignores them; another parser version
    /// (newer BuildKit knows `check`, so `# check=...` does not end its block) might not.
    pub stray_directives: Vec<(usize, String)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError {
    pub line: usize,
    pub message: String,
}

/// `\s` in Go's regular expressions.
fn re_space(c: char) -> bool {
    matches!(c, '\t' | '\n' | '\x0c' | '\r' | ' ')
}

/// The separator of an instruction's words (`tokenWhitespace`).
fn token_space(c: char) -> bool {
    matches!(c, '\t' | '\x0b' | '\x0c' | '\r' | ' ')
}

/// Go's `unicode.IsSpace(rune(b))` for one byte, as `extractBuilderFlags` applies it.
fn byte_space(b: u8) -> bool {
    matches!(b, b'\t' | b'\n' | 0x0b | 0x0c | b'\r' | b' ' | 0x85 | 0xa0)
}

/// Lines as Go's `bufio.ScanLines` gives them.
fn scan_lines(text: &str) -> Vec<&str> {
    let mut lines: Vec<&str> = text.split('\n').collect();
    if lines.last() == Some(&"") {
        lines.pop(); // the text ended with a newline (or was empty): no line after it
    }
    lines.into_iter().map(|l| l.strip_suffix('\r').unwrap_or(l)).collect()
}

fn is_comment(line: &str) -> bool {
    line.trim_start().starts_with('#')
}

/// `^#\s*([a-zA-Z][a-zA-Z0-9]*)\s*=\s*(.+?)\s*$`, written out: (key, value).
fn match_directive(token: &str) -> Option<(&str, &str)> {
    let rest = token.strip_prefix('#')?.trim_start_matches(re_space);
    let key_len = rest.bytes().take_while(|b| b.is_ascii_alphanumeric()).count();
    if key_len == 0 || !rest.as_bytes()[0].is_ascii_alphabetic() {
        return None;
    }
    let (key, rest) = rest.split_at(key_len);
    let rest = rest.trim_start_matches(re_space).strip_prefix('=')?;
    if rest.is_empty() {
        return None;
    }
    let value = rest.trim_start_matches(re_space);
    if value.is_empty() {
        // Only blanks: the lazy value takes the last one.
        let last = rest.chars().last().map(char::len_utf8).unwrap_or(0);
        return Some((key, &rest[rest.len() - last..]));
    }
    Some((key, value.trim_end_matches(re_space)))
}

/// A comment that looks like an `escape` or `syntax` directive, to whatever parser reads it.
fn directive_lookalike(line: &str) -> Option<String> {
    let rest = line.trim_start().strip_prefix('#')?.trim_start();
    let key_len = rest.bytes().take_while(|b| b.is_ascii_alphanumeric()).count();
    let (key, rest) = rest.split_at(key_len);
    let key = key.to_ascii_lowercase();
    (matches!(key.as_str(), "escape" | "syntax") && rest.trim_start().starts_with('=')).then_some(key)
}

struct Directives {
    escape: char,
    done: bool,
    found: Vec<Directive>,
}

impl Directives {
    fn possible_directive(&mut self, token: &str, line: usize) -> Result<(), ParseError> {
        if self.done {
            return Ok(());
        }
        let Some((key, value)) = match_directive(token) else {
            self.done = true;
            return Ok(());
        };
        let key = key.to_ascii_lowercase();
        if key != "escape" && key != "syntax" {
            self.done = true;
            return Ok(());
        }
        if self.found.iter().any(|d| d.key == key) {
            return Err(ParseError { line, message: format!("only one {key} parser directive can be used") });
        }
        if key == "escape" {
            self.escape = match value {
                "\\" => '\\',
                "`" => '`',
                other => {
                    return Err(ParseError {
                        line,
                        message: format!("invalid escape token {other:?}: it must be ` or \\"),
                    })
                }
            };
        }
        self.found.push(Directive { key, value: value.to_string(), line });
        Ok(())
    }
}

/// Removes a line-continuation token (`<escape>[ \t]*$`); whether the line ends here.
fn trim_continuation(line: &str, escape: char) -> (&str, bool) {
    let t = line.trim_end_matches([' ', '\t']);
    match t.strip_suffix(escape) {
        Some(kept) => (kept, false),
        None => (line, true),
    }
}

/// Splits `--flag` words off the front of an instruction's arguments (`extractBuilderFlags`):
/// byte by byte, as the engine does. Flags holding quotes or backslashes are read differently
/// by the engine (it unquotes them), which is why the policy refuses them rather than this
/// function emulating it.
fn extract_flags(rest: &str) -> (Vec<String>, String) {
    let b = rest.as_bytes();
    let mut flags = Vec::new();
    let mut pos = 0;
    loop {
        while pos < b.len() && byte_space(b[pos]) {
            pos += 1;
        }
        if pos == b.len() {
            return (flags, String::new());
        }
        if !(b[pos] == b'-' && b.get(pos + 1) == Some(&b'-')) {
            return (flags, String::from_utf8_lossy(&b[pos..]).into_owned());
        }
        let start = pos;
        while pos < b.len() && !byte_space(b[pos]) {
            pos += 1;
        }
        let word = String::from_utf8_lossy(&b[start..pos]).into_owned();
        if word == "--" {
            return (flags, String::from_utf8_lossy(&b[pos..]).into_owned());
        }
        flags.push(word);
    }
}

/// One (joined) line into an instruction (`splitCommand`).
fn split_command(line: &str, first: usize, last: usize) -> Instruction {
    let trimmed = line.trim();
    let (name, rest) = match trimmed.find(token_space) {
        Some(p) => (&trimmed[..p], trimmed[p..].trim_start_matches(token_space)),
        None => (trimmed, ""),
    };
    let (flags, args) = extract_flags(rest);
    Instruction { line: first, end_line: last, name: name.to_string(), flags, args: args.trim().to_string() }
}

/// Reads a Dockerfile into its directives and instructions, as the engine's parser would.
pub fn parse(text: &str) -> Result<Dockerfile, ParseError> {
    let lines = scan_lines(text);
    let mut d = Directives { escape: '\\', done: false, found: Vec::new() };
    let mut instructions = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let raw = if i == 0 { lines[0].strip_prefix('\u{feff}').unwrap_or(lines[0]) } else { lines[i] };
        let token = raw.trim_start();
        d.possible_directive(token, i + 1)?;
        let token = if token.starts_with('#') { "" } else { token };
        i += 1;
        let first = i;
        let (start, mut ended) = trim_continuation(token, d.escape);
        if ended && start.is_empty() {
            continue;
        }
        let mut line = start.to_string();
        while !ended && i < lines.len() {
            let raw = lines[i];
            d.possible_directive(raw, i + 1)?;
            i += 1;
            if is_comment(raw) || raw.trim_start().is_empty() {
                continue;
            }
            let (more, end) = trim_continuation(raw, d.escape);
            line.push_str(more);
            ended = end;
        }
        instructions.push(split_command(&line, first, i));
    }
    let directive_lines: Vec<usize> = d.found.iter().map(|d| d.line).collect();
    let stray_directives = lines
        .iter()
        .enumerate()
        .filter(|(n, _)| !directive_lines.contains(&(n + 1)))
        .filter_map(|(n, l)| directive_lookalike(l.strip_prefix('\u{feff}').unwrap_or(l)).map(|k| (n + 1, k)))
        .collect();
    Ok(Dockerfile { escape: d.escape, directives: d.found, instructions, stray_directives })
}

// ---- the policy ----

/// An image from outside the Dockerfile that a build uses. It must already be on the engine:
/// the engine would pull a missing one from the host's network namespace, and a pulled base
/// image's `ONBUILD` triggers would run unchecked. And it must be one the operator allows
/// ([`check_allowed`]): `COPY --from=<image>` reads any file of it, so an author naming another
/// exercise's image (or an app's private one) would print its hidden files in the build log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageUse {
    pub line: usize,
    pub reference: String,
    /// The reference as the engine reads it.
    pub name: ImageName,
    /// `FROM` runs the image's `ONBUILD` triggers; `COPY --from` does not.
    pub base: bool,
}

/// What a Dockerfile that meets the policy needs from the engine.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Checked {
    pub images: Vec<ImageUse>,
}

const KNOWN: [&str; 18] = [
    "add",
    "arg",
    "cmd",
    "copy",
    "entrypoint",
    "env",
    "expose",
    "from",
    "healthcheck",
    "label",
    "maintainer",
    "onbuild",
    "run",
    "shell",
    "stopsignal",
    "user",
    "volume",
    "workdir",
];

/// Characters of an `ADD` argument: a plain path, nothing the engine would read as a URL, a git
/// address, a variable, a quote or an escape.
const ADD_CHARS: &str = ". _ - / + @ * ? , = % ~";

fn plain_path_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || "._-/+@*?,=%~".contains(c)
}

/// Characters of an image reference or a flag's value (`registry:5000/a/b:tag@sha256:...`).
fn plain_value_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || "._-/:@+,".contains(c)
}

/// Where an instruction is.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Context {
    /// A line of the author's Dockerfile.
    Dockerfile,
    /// The instruction after `ONBUILD` in the author's Dockerfile.
    Onbuild,
    /// An `ONBUILD` trigger of a base image, run when a build starts `FROM` it.
    Trigger,
}

struct Policy {
    context: Context,
    /// Names of the stages so far (lowercased); the last one is the current stage.
    stages: Vec<Option<String>>,
    images: Vec<ImageUse>,
}

/// A `<<` that starts a heredoc: exactly two `<` followed by something (not `<<<`, a
/// here-string). Stricter than BuildKit's word rule on purpose; a shift (`$((1<<3))`) is refused
/// too and belongs in a script.
fn has_heredoc(args: &str) -> bool {
    let b = args.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'<' {
            let run = b[i..].iter().take_while(|c| **c == b'<').count();
            if run == 2 && i + 2 < b.len() {
                return true;
            }
            i += run;
        } else {
            i += 1;
        }
    }
    false
}

/// A `--name=value` flag whose every character means the same to every parser; (name, value).
fn plain_flag(flag: &str) -> Result<(&str, &str), String> {
    let body = flag.strip_prefix("--").unwrap_or(flag);
    let Some((name, value)) = body.split_once('=') else {
        return Err(format!("the flag {flag:?} must be written --name=value"));
    };
    if name.is_empty() || !name.bytes().all(|b| b.is_ascii_lowercase() || b == b'-') {
        return Err(format!("the flag {flag:?} is not a plain --name=value"));
    }
    if value.contains('$') {
        return Err(format!("the flag {flag:?} uses a variable; write its value literally"));
    }
    if !value.chars().all(plain_value_char) {
        return Err(format!(
            "the flag {flag:?} holds quotes, escapes or other characters this runner does not accept in flags"
        ));
    }
    Ok((name, value))
}

fn check_image_ref(what: &str, reference: &str) -> Result<ImageName, String> {
    if reference.contains('$') {
        return Err(format!("{what} {reference:?} uses a variable; name the image literally"));
    }
    if reference.contains("://") || reference.is_empty() || !reference.chars().all(plain_value_char) {
        return Err(format!("{what} {reference:?} is not an image reference"));
    }
    normalize_reference(reference).map_err(|m| format!("{what} {m}"))
}

fn add_arg_problem(word: &str) -> Option<String> {
    let lower = word.to_ascii_lowercase();
    if lower.contains("://") {
        return Some(format!(
            "ADD from a URL ({word:?}) is not allowed: the engine would fetch it from the host's own network, \
             the host's loopback services included; download in a RUN step instead"
        ));
    }
    if lower.starts_with("git@") {
        return Some(format!(
            "ADD from a git repository ({word:?}) is not allowed; COPY files of the repository instead"
        ));
    }
    if word.contains('$') {
        return Some(format!("ADD with a variable ({word:?}) is not allowed: name the paths literally"));
    }
    if word.contains(['"', '\'', '\\', '`']) {
        return Some(format!(
            "ADD with quotes or escape characters ({word:?}) is not allowed: name the paths literally"
        ));
    }
    if !word.chars().all(plain_path_char) {
        return Some(format!(
            "ADD takes plain paths in the repository only (letters, digits and {ADD_CHARS}); {word:?} is not one"
        ));
    }
    None
}

impl Policy {
    fn new(context: Context) -> Self {
        Policy { context, stages: Vec::new(), images: Vec::new() }
    }

    fn allowed_flags(&self, ins: &Instruction, what: &str, allowed: &[&str]) -> Result<Vec<(String, String)>, String> {
        let mut out = Vec::new();
        for flag in &ins.flags {
            let (name, value) = plain_flag(flag)?;
            if !allowed.contains(&name) {
                return Err(if allowed.is_empty() {
                    format!("{what} --{name} is not allowed ({what} takes no flags here)")
                } else {
                    format!("{what} --{name} is not allowed (allowed: --{})", allowed.join(", --"))
                });
            }
            out.push((name.to_string(), value.to_string()));
        }
        Ok(out)
    }

    fn no_heredoc(&self, ins: &Instruction, what: &str) -> Result<(), String> {
        if has_heredoc(&ins.args) {
            return Err(format!(
                "{what} with a heredoc (`<<`) is not allowed: this engine's builder does not support heredocs and \
                 would read the lines after it as instructions; put the text in a file of the repository and COPY it"
            ));
        }
        Ok(())
    }

    /// Checks one instruction; the message does not name the line (the caller does).
    fn check(&mut self, ins: &Instruction) -> Result<(), String> {
        let Some(kw) = ins.keyword().filter(|k| KNOWN.contains(&k.as_str())) else {
            return Err(format!("unknown instruction {:?}", ins.name));
        };
        let prefix = if self.context == Context::Onbuild { "ONBUILD " } else { "" };
        let what = format!("{prefix}{}", kw.to_ascii_uppercase());
        if self.context == Context::Dockerfile && self.stages.is_empty() && kw != "from" && kw != "arg" {
            return Err(format!(
                "{what} before the first FROM: a Dockerfile starts with FROM (ARG may come before it)"
            ));
        }
        match kw.as_str() {
            "from" => self.from(ins, &what),
            "add" => {
                self.allowed_flags(ins, &what, &["chown", "chmod"])?;
                self.no_heredoc(ins, &what)?;
                if ins.args.starts_with('[') {
                    return Err(format!("{what} in JSON form is not allowed: write {what} <source>... <destination>"));
                }
                let words: Vec<&str> = ins.args.split(token_space).filter(|w| !w.is_empty()).collect();
                if let Some(problem) = words.iter().find_map(|w| add_arg_problem(w)) {
                    return Err(format!("{prefix}{problem}"));
                }
                if words.len() < 2 {
                    return Err(format!("{what} needs a source and a destination"));
                }
                Ok(())
            }
            "copy" => {
                let flags = self.allowed_flags(ins, &what, &["chown", "chmod", "from"])?;
                self.no_heredoc(ins, &what)?;
                if let Some((_, from)) = flags.iter().find(|(n, _)| n == "from") {
                    self.copy_from(ins, &what, from)?;
                }
                Ok(())
            }
            "run" => {
                if !ins.flags.is_empty() {
                    return Err(format!(
                        "{what} {} is not allowed: RUN takes no flags here (BuildKit's --mount, --network and \
                         --security would reach past the build's limits)",
                        ins.flags[0]
                    ));
                }
                self.no_heredoc(ins, &what)
            }
            "onbuild" => self.onbuild(ins),
            "maintainer" if self.context != Context::Dockerfile => {
                Err(format!("{what} isn't allowed as an ONBUILD trigger"))
            }
            _ => Ok(()),
        }
    }

    fn from(&mut self, ins: &Instruction, what: &str) -> Result<(), String> {
        if self.context != Context::Dockerfile {
            return Err(format!("{what} isn't allowed as an ONBUILD trigger"));
        }
        if let Some(flag) = ins.flags.first() {
            return Err(format!(
                "{what} {flag} is not allowed: FROM takes no flags here (engine versions differ on whether \
                 --platform pulls an image of another platform)"
            ));
        }
        let words: Vec<&str> = ins.args.split(token_space).filter(|w| !w.is_empty()).collect();
        let (image, name) = match words.as_slice() {
            [image] => (*image, None),
            [image, kw_as, name] if kw_as.eq_ignore_ascii_case("as") => (*image, Some(name.to_ascii_lowercase())),
            _ => return Err("FROM takes an image and optionally AS <name>".to_string()),
        };
        if let Some(n) = &name {
            let ok = n.starts_with(|c: char| c.is_ascii_lowercase())
                && n.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "-_.".contains(c));
            if !ok {
                return Err(format!("FROM ... AS {n:?}: a stage name is a letter, then letters, digits, - _ ."));
            }
        }
        let lower = image.to_ascii_lowercase();
        let earlier_stage = self.stages.iter().flatten().any(|s| *s == lower);
        if !earlier_stage && image != "scratch" {
            let name = check_image_ref("FROM", image)?;
            self.images.push(ImageUse { line: ins.line, reference: image.to_string(), name, base: true });
        } else if image.contains('$') {
            return Err(format!("FROM {image:?} uses a variable; name the image literally"));
        }
        self.stages.push(name);
        Ok(())
    }

    fn copy_from(&mut self, ins: &Instruction, what: &str, from: &str) -> Result<(), String> {
        if self.context != Context::Dockerfile {
            return Err(format!("{what} --from is not allowed in an ONBUILD trigger"));
        }
        let current = self.stages.len().saturating_sub(1);
        if let Ok(index) = from.parse::<usize>() {
            if index >= current {
                return Err(format!("{what} --from={from}: there is no earlier stage {from}"));
            }
            return Ok(());
        }
        let lower = from.to_ascii_lowercase();
        if self.stages[..current].iter().flatten().any(|s| *s == lower) {
            return Ok(());
        }
        let name = check_image_ref(&format!("{what} --from"), from)?;
        self.images.push(ImageUse { line: ins.line, reference: from.to_string(), name, base: false });
        Ok(())
    }

    fn onbuild(&mut self, ins: &Instruction) -> Result<(), String> {
        if self.context != Context::Dockerfile {
            return Err("ONBUILD ONBUILD isn't allowed".to_string());
        }
        if let Some(flag) = ins.flags.first() {
            return Err(format!("ONBUILD {flag} is not allowed"));
        }
        if ins.args.is_empty() {
            return Err("ONBUILD needs an instruction".to_string());
        }
        // The trigger is checked like any instruction, so its own problem is the one named.
        let trigger = split_command(&ins.args, ins.line, ins.end_line);
        let mut inner = Policy::new(Context::Onbuild);
        inner.stages = self.stages.clone();
        inner.check(&trigger)?;
        Err("ONBUILD is not allowed: an exercise image must not carry triggers into later builds".to_string())
    }
}

fn invalid(message: String) -> Invalid {
    Invalid::new("invalid_dockerfile", message)
}

/// Parses a Dockerfile and applies the build policy: no instruction makes the engine fetch
/// anything (no remote or variable `ADD` source, no heredoc, no `# syntax=`, no `RUN` flags, no
/// `ONBUILD`), and every image it uses from outside is listed for the engine check.
pub fn check(text: &str) -> Result<Checked, Invalid> {
    let df = parse(text).map_err(|e| invalid(format!("Dockerfile line {}: {}", e.line, e.message)))?;
    if let Some(d) = df.directives.iter().find(|d| d.key == "syntax") {
        return Err(invalid(format!(
            "Dockerfile line {}: the `# syntax=` directive is not allowed: it makes BuildKit load a frontend \
             (a parser) from an image the Dockerfile names",
            d.line
        )));
    }
    if let Some((line, key)) = df.stray_directives.first() {
        return Err(invalid(format!(
            "Dockerfile line {line}: this `# {key}=` comment is not a parser directive here (directives come first, \
             before any instruction, blank line or other comment); move it to the top or remove it"
        )));
    }
    if df.instructions.is_empty() {
        return Err(invalid("the Dockerfile has no instructions".to_string()));
    }
    let mut policy = Policy::new(Context::Dockerfile);
    for ins in &df.instructions {
        policy.check(ins).map_err(|m| invalid(format!("Dockerfile line {}: {m}", ins.line)))?;
    }
    if policy.stages.is_empty() {
        return Err(invalid("the Dockerfile has no FROM".to_string()));
    }
    Ok(Checked { images: policy.images })
}

/// Refuses every image the Dockerfile uses from outside whose repository is not one the
/// operator allows (`RUNNER_BUILD_BASE_IMAGES`, any tag). Decided on the names alone, before
/// the engine is asked anything: the answer is the same whether such an image exists or not.
pub fn check_allowed(checked: &Checked, allowed: &[String]) -> Result<(), Invalid> {
    let repositories: Vec<String> = allowed.iter().filter_map(|a| repository_name(a).ok()).collect();
    for use_ in &checked.images {
        if !repositories.contains(&use_.name.repository) {
            let list = if allowed.is_empty() { "none".to_string() } else { allowed.join(", ") };
            return Err(invalid(format!(
                "Dockerfile line {}: {} {} is not an image builds here may use: FROM and COPY --from name images \
                 of the repositories this runner allows (RUNNER_BUILD_BASE_IMAGES: {list}), by tag",
                use_.line,
                if use_.base { "FROM" } else { "COPY --from" },
                use_.reference
            )));
        }
    }
    Ok(())
}

/// Checks the `ONBUILD` triggers of a base image a build starts `FROM` (at `line`): each one is
/// run by the engine as a Dockerfile of its own, so each is parsed as one (default escape token,
/// as the engine does) and must meet the same policy.
pub fn check_triggers(image: &str, line: usize, triggers: &[String]) -> Result<(), Invalid> {
    for trigger in triggers {
        let refuse = |m: String| {
            invalid(format!(
                "Dockerfile line {line}: the base image {image} has the ONBUILD trigger {trigger:?}, which this \
                 runner does not run: {m}"
            ))
        };
        let df = parse(trigger).map_err(|e| refuse(e.message))?;
        if !df.directives.is_empty() || !df.stray_directives.is_empty() {
            return Err(refuse("parser directives are not allowed in a trigger".to_string()));
        }
        let mut policy = Policy::new(Context::Trigger);
        policy.stages.push(None); // the trigger runs inside the stage that names the image
        for ins in &df.instructions {
            policy.check(ins).map_err(refuse)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = "FROM exercise-runner/base:latest\n";

    fn refused(text: &str) -> String {
        match check(text) {
            Ok(c) => panic!("accepted: {text:?} ({c:?})"),
            Err(e) => {
                assert_eq!(e.code, "invalid_dockerfile", "{text:?}");
                e.message
            }
        }
    }

    fn names(df: &Dockerfile) -> Vec<(usize, String, String)> {
        df.instructions.iter().map(|i| (i.line, i.name.clone(), i.args.clone())).collect()
    }

    #[test]
    fn continuation_lines_join_as_the_engine_joins_them() {
        let df = parse("FROM a\nRUN echo \\\n  one \\ \t\n# a comment inside\n\n   \n two\nCMD x\n").unwrap();
        assert_eq!(
            names(&df),
            vec![
                (1, "FROM".into(), "a".into()),
                (2, "RUN".into(), "echo   one  two".into()),
                (8, "CMD".into(), "x".into()),
            ]
        );
        assert_eq!(df.instructions[1].end_line, 7);
        // CRLF: one \r before each \n is dropped; the continuation still works.
        let df = parse("FROM a\r\nADD \\\r\n  b c\r\n").unwrap();
        assert_eq!(names(&df)[1], (2, "ADD".into(), "b c".into()));
        // A \r that is not just before \n stays part of the line (and is a word separator).
        let df = parse("FROM a\rADD b c\n").unwrap();
        assert_eq!(df.instructions.len(), 1);
        // A continuation at the end of the file ends the instruction.
        assert_eq!(names(&parse("FROM a\nRUN x \\").unwrap())[1], (2, "RUN".into(), "x".into()));
        // Only the last escape token continues; "\\\\" at the end leaves one backslash.
        assert_eq!(parse("FROM a\nRUN x \\\\\nCMD y\n").unwrap().instructions[1].args, "x \\CMD y");
    }

    #[test]
    fn directives_count_only_at_the_very_top() {
        let df = parse("# escape=`\nFROM a\nADD b `\n c\n").unwrap();
        assert_eq!(df.escape, '`');
        assert_eq!(names(&df)[1].2, "b  c");
        // Keys are case-insensitive, blanks around = allowed, leading blanks too.
        assert_eq!(parse("  #  ESCAPE =  `  \nFROM a\n").unwrap().escape, '`');
        assert_eq!(parse("\u{feff}# Escape=`\nFROM a\n").unwrap().escape, '`');
        // After a blank line, a comment, an unknown key or an instruction: a plain comment.
        for text in [
            "\n# escape=`\nFROM a\n",
            "# hello\n# escape=`\nFROM a\n",
            "# foo=bar\n# escape=`\nFROM a\n",
            "# check=skip=all\n# escape=`\nFROM a\n",
            "FROM a\n# escape=`\n",
        ] {
            let df = parse(text).unwrap();
            assert_eq!(df.escape, '\\', "{text:?}");
            assert_eq!(df.stray_directives.len(), 1, "{text:?}");
        }
        assert!(parse("# escape=`\n# escape=\\\nFROM a\n").unwrap_err().message.contains("only one escape"));
        assert!(parse("# escape=x\nFROM a\n").unwrap_err().message.contains("invalid escape"));
        assert!(parse("# escape= \nFROM a\n").is_err(), "a blank value is a blank token, not none");
        let df = parse("# syntax=docker/dockerfile:1\n# escape=`\nFROM a\n").unwrap();
        assert_eq!(df.directives.iter().map(|d| d.key.as_str()).collect::<Vec<_>>(), ["syntax", "escape"]);
        assert_eq!(df.escape, '`');
    }

    #[test]
    fn flags_split_off_like_the_engine_does() {
        let ins = &parse("FROM a\nCOPY --chown=1:1  --from=b  src dst\n").unwrap().instructions[1];
        assert_eq!(ins.flags, ["--chown=1:1", "--from=b"]);
        assert_eq!(ins.args, "src dst");
        let ins = &parse("FROM a\nADD -- --x y\n").unwrap().instructions[1];
        assert!(ins.flags.is_empty());
        assert_eq!(ins.args, "--x y");
        // Byte-wise: the second byte of "à" (0xA0) ends a flag word, as in the engine.
        let ins = &parse("FROM a\nCOPY --from=à x y\n").unwrap().instructions[1];
        assert_eq!(ins.flags.len(), 1);
        assert!(check("FROM a\nCOPY --from=à x y\n").is_err());
    }

    #[test]
    fn ordinary_dockerfiles_pass() {
        let defaults = crate::config::Settings::defaults().build_base_images;
        for name in ["python-fizzbuzz", "shell-wordcount", "redis-counter"] {
            let path = format!("{}/../exercise-images/examples/{name}/Dockerfile", env!("CARGO_MANIFEST_DIR"));
            let text = std::fs::read_to_string(&path).unwrap();
            let c = check(&text).unwrap_or_else(|e| panic!("{name}: {}", e.message));
            let name_ = ImageName { repository: "docker.io/exercise-runner/base".into(), tag: "latest".into() };
            assert_eq!(
                c.images,
                [ImageUse { line: 1, reference: "exercise-runner/base:latest".into(), name: name_, base: true }],
                "{name}"
            );
            check_allowed(&c, &defaults).unwrap_or_else(|e| panic!("{name}: {}", e.message));
        }
        // The tests' image is allowed by default too.
        check_allowed(&check("FROM exercise-runner/busybox:latest\n").unwrap(), &defaults).unwrap();
        let c = check(
            "ARG V=1\nFROM exercise-runner/base:latest AS build\nRUN make\nFROM busybox\n\
             COPY --from=build /out /out\nCOPY --from=0 /a /b\nCOPY --from=tools:1 /t /t\n\
             ADD --chown=1000:1000 app.tar.gz /opt/\nADD a*.txt b/ /dst/\nCOPY [\"a b\", \"/c\"]\n\
             RUN cat <<< x\nHEALTHCHECK --interval=5s CMD true\nFROM build\n",
        )
        .unwrap();
        let refs: Vec<(&str, bool)> = c.images.iter().map(|i| (i.reference.as_str(), i.base)).collect();
        assert_eq!(refs, [("exercise-runner/base:latest", true), ("busybox", true), ("tools:1", false)]);
        let names: Vec<String> = c.images.iter().map(|i| i.name.full()).collect();
        assert_eq!(
            names,
            ["docker.io/exercise-runner/base:latest", "docker.io/library/busybox:latest", "docker.io/library/tools:1"]
        );
        assert!(check("FROM scratch\nCOPY a /a\n").unwrap().images.is_empty());
    }

    /// Every spelling of a remote ADD the issue lists, and more.
    #[test]
    fn no_spelling_of_a_remote_add_passes() {
        let url = "http://127.0.0.1:8080/secret";
        let cases = [
            format!("{BASE}ADD {url} /opt/x\n"),
            format!("{BASE}add HTTPS://example.org/a /x\n"),
            format!("{BASE}AdD\t{url}\t/x\n"),
            format!("{BASE}ADD \\\n{url} /opt/x\n"),
            format!("{BASE}ADD \\ \n{url} /opt/x\n"),
            format!("{BASE}ADD \\\t \n{url} /opt/x\n"),
            format!("{BASE}ADD \\\r\n{url} /opt/x\r\n"),
            format!("# escape=`\n{BASE}ADD `\n{url} /opt/x\n"),
            format!("# ESCAPE=`\n{BASE}ADD ` \n{url} /opt/x\n"),
            format!("# escape=`\r\n{BASE}ADD `\r\n{url} /opt/x\r\n"),
            format!("{BASE}ADD \\\n# a comment\n\n{url} /opt/x\n"),
            format!("{BASE}ADD ht\\\ntp://127.0.0.1:8080/secret /opt/x\n"),
            format!("{BASE}ADD --chown=1 \\\n  {url} /x\n"),
            format!("{BASE}ADD [\"{url}\", \"/x\"]\n"),
            format!("{BASE}ADD [\"http\\u003a//127.0.0.1/a\", \"/x\"]\n"),
            format!("{BASE}ADD \"{url}\" /x\n"),
            format!("{BASE}ADD \"h\"ttp://127.0.0.1/a /x\n"),
            format!("{BASE}ADD h\\ttp://127.0.0.1/a /x\n"),
            format!("{BASE}ARG U={url}\nADD $U /x\n"),
            format!("{BASE}ARG U={url}\nADD ${{U}} /x\n"),
            format!("{BASE}ENV U={url}\nADD ${{U:-x}} /x\n"),
            format!("{BASE}ARG H=http\nADD $H://127.0.0.1/a /x\n"),
            format!("{BASE}ADD git@github.com:a/b.git /x\n"),
            format!("{BASE}ADD https://github.com/a/b.git#main /x\n"),
            format!("{BASE}ONBUILD ADD {url} /x\n"),
            format!("{BASE}onbuild  add \\\n {url} /x\n"),
            format!("{BASE}ADD <<EOF /x\n{url}\nEOF\n"),
            format!("{BASE}RUN <<EOF\necho\nEOF\nADD {url} /x\n"),
            format!("{BASE}ADD {url}\u{a0}/x\n"),
        ];
        for text in &cases {
            refused(text);
        }
        let m = refused(&format!("{BASE}RUN true\nADD \\ \n{url} /opt/x\n"));
        assert!(m.starts_with("Dockerfile line 3: ADD from a URL"), "{m}");
        let m = refused(&format!("{BASE}ONBUILD ADD {url} /x\n"));
        assert!(m.contains("line 2: ONBUILD ADD from a URL"), "{m}");
        assert!(refused(&format!("{BASE}ADD [\"a\", \"/x\"]\n")).contains("JSON form"));
        assert!(refused(&format!("{BASE}ARG U={url}\nADD $U /x\n")).contains("variable"));
        assert!(refused(&format!("{BASE}ADD \"a\" /x\n")).contains("quotes"));
        assert!(refused(&format!("{BASE}ADD <<EOF /x\nhi\nEOF\n")).contains("heredoc"));
    }

    #[test]
    fn directives_and_triggers_that_change_the_parser_are_refused() {
        assert!(refused("# syntax=docker/dockerfile:1\nFROM x\n").contains("syntax"));
        assert!(refused("# SYNTAX = evil/frontend\nFROM x\n").contains("syntax"));
        assert!(refused("# escape=`\n# Syntax=evil\nFROM x\n").contains("syntax"));
        // Not at the top: not a directive to Docker 20.10, but another parser might read it.
        assert!(refused("# hello\n# syntax=evil\nFROM x\n").contains("line 2"));
        assert!(refused("# check=skip=all\n# escape=`\nFROM x\nADD `\n http://x/y /z\n").contains("line 2"));
        assert!(refused("#!/usr/bin/env docker\n# syntax=evil\nFROM x\n").contains("line 2"));
        assert!(refused("// syntax=evil\nFROM x\n").contains("unknown instruction"));
        assert!(refused("{\"syntax\": \"evil\"}\n").contains("unknown instruction"));
        assert!(refused("# escape=x\nFROM x\n").contains("line 1"));
        assert!(refused("FROM x\nONBUILD RUN make\n").contains("ONBUILD is not allowed"));
        assert!(refused("FROM x\nONBUİLD RUN make\n").contains("unknown instruction"));
        assert!(refused("FROM x\nRUN --network=host curl x\n").contains("RUN takes no flags"));
        assert!(refused("FROM x\nRUN --mount=type=secret,id=x cat /run/secrets/x\n").contains("RUN takes no flags"));
        assert!(refused("FROM x\nRUN cat <<'EOF'\nx\nEOF\n").contains("heredoc"));
        assert!(refused("FROM x\nCOPY <<-EOF /x\nx\nEOF\n").contains("heredoc"));
        assert!(refused("FROM x\nADD\u{a0}http://x/y /z\n").contains("unknown instruction"));
        assert!(refused("RUN x\n").contains("before the first FROM"));
        assert!(refused("").contains("no instructions"));
        assert!(refused("# just a comment\n\n").contains("no instructions"));
        assert!(refused("FROM x b\n").contains("AS <name>"));
    }

    #[test]
    fn images_from_outside_are_plain_references() {
        assert!(refused("ARG B=x\nFROM $B\n").contains("variable"));
        assert!(refused("FROM http://evil/x\n").contains("not an image reference"));
        assert!(refused("FROM x\nCOPY --from=$X /a /b\n").contains("variable"));
        assert!(
            refused("FROM x\nCOPY --from /a /b\n").contains("--name=value"),
            "the engine versions disagree on this form"
        );
        assert!(refused("FROM x\nCOPY --from=\"x\" /a /b\n").contains("quotes"));
        assert!(refused("FROM x\nCOPY --from=0 /a /b\n").contains("no earlier stage"));
        assert!(refused("FROM x\nCOPY --link /a /b\n").contains("must be written"));
        assert!(refused("FROM x\nCOPY --parents=true /a /b\n").contains("not allowed"));
        assert!(refused("FROM x\nADD --checksum=sha256:0 x /b\n").contains("not allowed"));
        let c = check("FROM 127.0.0.1:5000/secret/app:1\nCOPY --from=localhost:5000/x /a /b\n").unwrap();
        assert_eq!(c.images.len(), 2, "listed, so the engine check refuses them unless they are already there");
    }

    /// The engine resolves a reference it has no tag for by searching image IDs, so a prefix
    /// reaches any image on the engine: no spelling of an ID or digest passes, in FROM or
    /// COPY --from.
    #[test]
    fn images_are_named_by_repository_and_tag_never_by_id_or_digest() {
        let id = "0237e5cd1c0d4c8d18f8df88a9b2c3d4e5f60718293a4b5c6d7e8f9012345678";
        for r in [
            "0",
            "0a",
            "0237e",
            "0237E",
            id,
            &id[..12],
            &format!("sha256:{id}"),
            "sha256:0237e",
            "SHA256:0237e",
            "sha512:ab",
            &format!("busybox@sha256:{id}"),
            &format!("exercise-runner/base:latest@sha256:{id}"),
        ] {
            let m = refused(&format!("FROM {r}\n"));
            assert!(m.contains("image ID") || m.contains("digest"), "FROM {r}: {m}");
            if r.bytes().all(|b| b.is_ascii_digit()) {
                continue; // COPY --from=<digits> is a stage index
            }
            let m = refused(&format!("FROM exercise-runner/base\nCOPY --from={r} /opt/exercise/ /loot/\n"));
            assert!(m.contains("image ID") || m.contains("digest"), "COPY --from={r}: {m}");
            assert!(m.starts_with("Dockerfile line 2: COPY --from"), "{m}");
        }
        // Not hex, or not alone: names, as the engine reads them too.
        for ok in ["0237g", "cafe-1", "a0237e/x", "0237e:1"] {
            check(&format!("FROM {ok}\n")).unwrap_or_else(|e| panic!("{ok}: {}", e.message));
        }
        // A stage named like an ID is a stage, not an image.
        let c =
            check("FROM exercise-runner/base AS cafe\nFROM exercise-runner/base\nCOPY --from=cafe /a /b\n").unwrap();
        assert_eq!(c.images.len(), 2);
        assert!(refused("FROM --platform=linux/amd64 exercise-runner/base\n").contains("FROM takes no flags"));
        assert!(refused("FROM --platform=$BUILDPLATFORM x\n").contains("FROM takes no flags"));
        assert!(refused("FROM exercise-runner/base\nCOPY --from=0 /a /b\n").contains("no earlier stage"));
        for bad in ["Exercise-Runner/base", "a//b", "a/-b", "a:", "a:-x", "-a", "a..b", "a___b", "Host.Example:5000/x"]
        {
            refused(&format!("FROM {bad}\n"));
        }
    }

    #[test]
    fn references_normalize_as_the_engine_reads_them() {
        let n = |r: &str| normalize_reference(r).map(|n| n.full()).unwrap_or_else(|e| panic!("{r}: {e}"));
        assert_eq!(n("busybox"), "docker.io/library/busybox:latest");
        assert_eq!(n("library/busybox:1"), "docker.io/library/busybox:1");
        assert_eq!(n("docker.io/busybox"), "docker.io/library/busybox:latest");
        assert_eq!(n("index.docker.io/library/busybox"), "docker.io/library/busybox:latest");
        assert_eq!(n("exercise-runner/base"), "docker.io/exercise-runner/base:latest");
        assert_eq!(n("docker.io/exercise-runner/base:latest"), "docker.io/exercise-runner/base:latest");
        assert_eq!(n("localhost/x"), "localhost/x:latest");
        assert_eq!(n("127.0.0.1:5000/team/tools:2.1"), "127.0.0.1:5000/team/tools:2.1");
        assert_eq!(n("registry.example.org/a/b_c__d-e--f.g"), "registry.example.org/a/b_c__d-e--f.g:latest");
        assert_eq!(repository_name("busybox").unwrap(), "docker.io/library/busybox");
        assert_eq!(repository_name("127.0.0.1:5000/x").unwrap(), "127.0.0.1:5000/x");
        assert!(repository_name("busybox:1").is_err());
        assert!(repository_name("0237e").is_err());
    }

    /// Only the operator's repositories, any tag, compared on the normalised name; the message
    /// is the same for an image that exists and one that does not (no engine is asked).
    #[test]
    fn only_allowed_repositories_may_be_used_from_outside() {
        let allowed = ["exercise-runner/base".to_string(), "debian".to_string()];
        let ok = |text: &str| check_allowed(&check(text).unwrap(), &allowed);
        for text in [
            "FROM exercise-runner/base\n",
            "FROM docker.io/exercise-runner/base:latest\n",
            "FROM index.docker.io/exercise-runner/base:v2\n",
            "FROM debian:bookworm-slim\nCOPY --from=library/debian:12 /a /b\n",
            "FROM docker.io/library/debian\n",
            "FROM scratch\nCOPY a /a\n",
        ] {
            ok(text).unwrap_or_else(|e| panic!("{text:?}: {}", e.message));
        }
        for (text, line) in [
            ("FROM exercise-runner/shell-wordcount:f839ed45656e\n", 1),
            ("FROM exercise-runner/base\nCOPY --from=exercise-runner/answer:a1ff1da21199 /opt/exercise/ /loot/\n", 2),
            ("FROM exercise-runner/base-evil\n", 1),
            ("FROM evil.example/exercise-runner/base\n", 1),
            ("FROM localhost:5000/exercise-runner/base\n", 1),
            ("FROM 127.0.0.1:5000/secret/app:1\n", 1),
            ("FROM exercise-runner/debian\n", 1),
        ] {
            let e = ok(text).unwrap_err();
            assert_eq!(e.code, "invalid_dockerfile");
            assert!(e.message.starts_with(&format!("Dockerfile line {line}: ")), "{text:?}: {}", e.message);
            assert!(e.message.contains("RUNNER_BUILD_BASE_IMAGES: exercise-runner/base, debian"), "{}", e.message);
        }
        let e = check_allowed(&check("FROM busybox\n").unwrap(), &[]).unwrap_err();
        assert!(e.message.contains("RUNNER_BUILD_BASE_IMAGES: none"), "{}", e.message);
    }

    #[test]
    fn base_image_triggers_meet_the_same_policy() {
        let ok = ["RUN make".to_string(), "COPY . /src".to_string(), "ADD app.tar /opt/".to_string()];
        check_triggers("base", 1, &ok).unwrap();
        for bad in [
            "ADD http://127.0.0.1/x /x",
            "ADD \\\nhttp://127.0.0.1/x /x",
            "# escape=`\nADD `\nhttp://127.0.0.1/x /x",
            "add $U /x",
            "COPY --from=other /a /b",
            "ONBUILD RUN x",
            "FROM x",
            "RUN --network=host true",
            "FOO bar",
        ] {
            let e = check_triggers("evil:1", 3, &[bad.to_string()]).unwrap_err();
            assert_eq!(e.code, "invalid_dockerfile");
            assert!(e.message.starts_with("Dockerfile line 3: the base image evil:1"), "{}", e.message);
        }
    }
}
