//! One module per subcommand: argument parsing lives in `crate::cli`, the work here.

pub mod diff;
pub mod manifests;
pub mod render;
