//! The command line.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::sim::SimArgs;

/// `--version`: the crate version and the git revision it was built from.
const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (",
    env!("ORDERGATE_REVISION"),
    ")"
);

/// ordergate: a reverse proxy and load balancer for e-commerce order servers.
///
/// It spreads shopper traffic over pools of order backends and turns every failure
/// into a clear answer. Start with `ordergate demo`.
#[derive(Debug, Parser)]
#[command(name = "ordergate", version = VERSION, propagate_version = true)]
#[command(args_conflicts_with_subcommands = true)]
pub struct Cli {
    /// Config file to serve (same as `ordergate run -c FILE`).
    #[arg(short, long, value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// What to do.
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve shopper traffic as the config file says.
    Run {
        /// Config file (TOML); see conf/ordergate.toml for every key.
        #[arg(short, long, value_name = "FILE")]
        config: PathBuf,
        /// Take over the listening sockets of a running ordergate (graceful
        /// upgrade): start this, then send SIGQUIT to the old process.
        #[arg(long)]
        upgrade: bool,
    },
    /// Validate a config file: print every problem, or a summary when it is valid.
    Check {
        /// Config file (TOML) to validate.
        #[arg(short, long, value_name = "FILE")]
        config: PathBuf,
    },
    /// Start three simulated order backends and ordergate in front of them.
    Demo {
        /// Where ordergate listens for shoppers.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
    },
    /// Run the simulated order fleet on its own (for tests, benches and trying things).
    Sim(SimArgs),
}
