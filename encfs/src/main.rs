//! `cinfer-encfs`: not implemented yet.
fn main() {}
