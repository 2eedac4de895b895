//! `ordergate demo`: the shipped demo config, a simulated fleet on its backends'
//! addresses, and ordergate in front, with what to try printed.

use std::net::SocketAddr;

use crate::config::Config;
use crate::sim::{self, SimArgs};

/// The demo config, shipped as conf/demo.toml.
pub const DEMO_CONFIG: &str = include_str!("../conf/demo.toml");

/// Runs the demo until the process is stopped.
pub fn run(listen: SocketAddr) -> Result<(), String> {
    let mut config = Config::from_toml(DEMO_CONFIG).map_err(|errors| {
        let lines: Vec<String> = errors.iter().map(ToString::to_string).collect();
        format!("the embedded demo config is invalid:\n{}", lines.join("\n"))
    })?;
    config.server.listen = vec![listen];
    let mut backends: Vec<SocketAddr> = config
        .pools
        .iter()
        .flat_map(|pool| pool.backends.iter().map(|b| b.addr))
        .collect();
    backends.sort();
    backends.dedup();
    let fleet = sim::spawn(SimArgs::new(backends))?;
    let fleet: Vec<String> = fleet.iter().map(ToString::to_string).collect();
    println!("ordergate demo");
    println!("  simulated order backends: {}", fleet.join(", "));
    println!("  ordergate:                http://{listen}\n");
    println!("{}", config.summary());
    println!("Try:");
    println!("  curl -i http://{listen}/api/products/1");
    println!(
        "  curl -i -X POST -H 'content-type: application/json' -H 'Idempotency-Key: k1' -d '{{\"sku\":\"tea\",\"qty\":1}}' http://{listen}/api/orders"
    );
    println!(
        "  curl -i -X POST -H 'x-cart-id: cart-7' -d '{{}}' http://{listen}/api/orders   # run twice: same cart, same backend"
    );
    println!(
        "  curl -i http://{listen}/nowhere                             # no route: a friendly 404"
    );
    println!(
        "  curl -s http://{}/__sim/stats                    # what the fleet saw",
        fleet[0]
    );
    println!("Stop with Ctrl-C.");
    crate::server::run(config, crate::server::RunOptions::default())
}
