//! `flotilla-controller`: a cluster manager (filled in by issue 4).
fn main() {}
