//! One module per subcommand: argument parsing lives in `crate::cli`, the work here.

pub mod validate;
pub mod apply;
pub mod diff;
pub mod manifests;
pub mod plan;
pub mod render;
pub mod diff_base;
