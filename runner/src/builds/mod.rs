//! Exercise builds: repository in, proven image version out.

pub mod archive;
pub mod manifest;
