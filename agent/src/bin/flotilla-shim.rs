//! `flotilla-shim`: the per-container supervisor started by `flotilla-agent` (see
//! `flotilla_agent::shim`). Not meant to be run by hand.
fn main() {
    let args: Vec<String> = std::env::args().collect();
    std::process::exit(flotilla_agent::shim::main_with_args(&args));
}
