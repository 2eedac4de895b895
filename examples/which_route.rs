//! Which route and pool would ordergate pick for a request?
//!
//! ```sh
//! cargo run --example which_route -- conf/demo.toml POST /api/orders [HOST]
//! ```

use std::process::ExitCode;
use std::str::FromStr;

use http::Method;
use ordergate::config::Config;
use ordergate::state::State;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [file, method, path, rest @ ..] = args.as_slice() else {
        eprintln!("usage: which_route CONFIG METHOD PATH [HOST]");
        return ExitCode::from(2);
    };
    let config = match Config::load(file.as_ref()) {
        Ok(config) => config,
        Err(errors) => {
            for error in errors {
                eprintln!("{error}");
            }
            return ExitCode::FAILURE;
        }
    };
    let Ok(method) = Method::from_str(method) else {
        eprintln!("{method:?} is not an HTTP method");
        return ExitCode::from(2);
    };
    let snapshot = State::new(config, None).snapshot();
    let host = rest.first().map(String::as_str);
    let found = snapshot
        .routes
        .classify(host, path, &method)
        .and_then(|index| snapshot.routes.get(index));
    match found {
        Some(route) => {
            let pool = &snapshot.pools[route.config.pool];
            let backends: Vec<String> =
                pool.backends().iter().map(|b| b.addr.to_string()).collect();
            println!(
                "route {:?} -> pool {:?} ({})",
                route.config.name,
                pool.name,
                backends.join(", ")
            );
        }
        None => println!("no route: ordergate answers 404"),
    }
    ExitCode::SUCCESS
}
