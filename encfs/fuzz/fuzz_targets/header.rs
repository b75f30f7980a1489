//! Header parsing: any 4096 bytes decode without panicking, and whatever decodes re-encodes to the same bytes.
#![no_main]

use encfs::format::{HEADER_LEN, Header};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut buf = [0u8; HEADER_LEN];
    let n = data.len().min(HEADER_LEN);
    buf[..n].copy_from_slice(&data[..n]);
    if let Ok(h) = Header::decode(&buf) {
        let again = h.encode().expect("a decoded header encodes");
        assert_eq!(again, buf, "decode then encode must be the identity");
    }
});
