//! FUSE request parsing (both transports): any bytes, as a `/dev/fuse` message or as an io_uring entry's header,
//! operation struct and payload, parse or are refused without panicking; what parses is consistent with its bytes.
#![no_main]

use encfs::fuse::proto::{self, Request};
use libfuzzer_sys::fuzz_target;

fn check(req: &Request<'_>, within: &[u8]) {
    if let Request::Lookup { name } = req {
        assert!(!name.contains(&0), "a name stops at its NUL");
        let inside = within.as_ptr_range();
        assert!(name.is_empty() || inside.contains(&name.as_ptr()), "a name borrows the request's bytes");
    }
}

fuzz_target!(|data: &[u8]| {
    if let Ok((h, req)) = proto::parse_message(data) {
        assert_eq!(h.len as usize, data.len(), "the declared length is the received one");
        check(&req, data);
    }
    if data.len() >= 260 {
        let (in_out, rest) = data.split_at(128);
        let (op_in, rest) = rest.split_at(128);
        let (len, payload) = rest.split_at(4);
        let payload_len = u32::from_le_bytes(len.try_into().unwrap()) as usize;
        if let Ok((_, req)) = proto::parse_uring(in_out, op_in, payload, payload_len) {
            assert!(payload_len <= payload.len(), "the payload length is within the buffer");
            check(&req, payload);
        }
    }
});
