//! LUKS2 header parsing (`encfs::legacy::luks2`): any bytes parse without panicking, as one header copy and as an
//! image holding both copies. Half the inputs get a valid binary header and checksum wrapped around them, so the
//! JSON metadata parser and the segment checks are reached too (random bytes almost never pass the checksum).
#![no_main]

use encfs::legacy::kdf::HashAlg;
use encfs::legacy::luks2::{BINARY_HEADER_LEN, LUKS_MAGIC, Luks2Header};
use libfuzzer_sys::fuzz_target;

const HDR_SIZE: usize = 0x4000;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let area = if mode & 1 == 0 {
        rest.to_vec()
    } else {
        // A checksummed primary header around `rest` as the JSON area.
        let mut h = vec![0u8; HDR_SIZE];
        h[..6].copy_from_slice(&LUKS_MAGIC);
        h[6..8].copy_from_slice(&2u16.to_be_bytes());
        h[8..16].copy_from_slice(&(HDR_SIZE as u64).to_be_bytes());
        h[72..78].copy_from_slice(b"sha256");
        let n = rest.len().min(HDR_SIZE - BINARY_HEADER_LEN);
        h[BINARY_HEADER_LEN..BINARY_HEADER_LEN + n].copy_from_slice(&rest[..n]);
        let sum = HashAlg::Sha256.digest(&[&h]);
        h[448..448 + sum.len()].copy_from_slice(&sum);
        h
    };
    if let Ok(h) = Luks2Header::parse(&area) {
        let _ = h.data_segment().map(|s| s.params(1 << 40));
    }
    // The same bytes as a whole image: both copies, the secondary search, the choice between them.
    let _ = Luks2Header::read(&area);
});
