//! Index parsing (the plaintext after the seal is opened): never panics or over-allocates, and whatever decodes
//! re-encodes to the same bytes.
#![no_main]

use encfs::format::Index;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(idx) = Index::decode(data) {
        assert_eq!(idx.encode(), data, "decode then encode must be the identity");
        let _ = idx.path_of(idx.entries.len().saturating_sub(1));
    }
});
