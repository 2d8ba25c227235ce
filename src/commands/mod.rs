//! One module per subcommand: argument parsing lives in `crate::cli`, the work here.

pub mod apply;
pub mod diff;
pub mod manifests;
pub mod render;
pub mod validate;
pub mod diff_base;
