//! One module per subcommand: argument parsing lives in `crate::cli`, the work here.

pub mod agent;
pub mod apply;
pub mod diff;
pub mod diff_base;
pub mod inputs;
pub mod manifests;
pub mod plan;
pub mod render;
pub mod run;
pub mod simulate;
pub mod status;
pub mod validate;
