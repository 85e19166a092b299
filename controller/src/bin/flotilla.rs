//! `flotilla`: the command line. All of it lives in `flotilla_controller::cli`.

fn main() {
    std::process::exit(flotilla_controller::cli::main());
}
