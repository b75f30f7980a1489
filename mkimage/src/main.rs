//! `cinfer-mkimage`: not implemented yet.
fn main() {}
