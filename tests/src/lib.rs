//! End-to-end test harness for cinfer.
//!
//! Will hold: helpers that spawn the real binaries (encfs, attest, proxy), Azurite and Triton, and the
//! acceptance test of the whole pipeline.
