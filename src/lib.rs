//! The `cloud4iot` command line: arguments, one function per subcommand, output formats,
//! `--watch` and exit codes. The work itself is in the workspace's crates:
//! `cloud4iot-core` (pure: load, validate, plan, render, diff), `cloud4iot-source` (git)
//! and `cloud4iot-kube` (cluster reads, server-side apply, manifests).

pub mod cli;
pub mod commands;
pub mod flags;
pub mod output;
pub mod watch;
