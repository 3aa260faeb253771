//! Hardened decode (`dhcp::wire::decode`, i.e. dhcproto behind our checks), then re-encode with
//! dhcproto: must never panic, the re-encoded message must decode to the same message, and
//! decode/encode must reach a fixed point after one round.

#![no_main]

use dhcproto::{Encodable, Encoder};
use libfuzzer_sys::fuzz_target;

fn encode(m: &dhcproto::v4::Message) -> Vec<u8> {
    let mut buf = Vec::new();
    m.encode(&mut Encoder::new(&mut buf))
        .expect("a decoded message encodes");
    buf
}

fuzz_target!(|data: &[u8]| {
    let Ok(first) = dhcp::wire::decode(data) else {
        return;
    };
    let bytes = encode(&first.message);
    let second = dhcp::wire::decode(&bytes).expect("a re-encoded message decodes");
    let again = encode(&second.message);
    assert_eq!(first.message, second.message, "decode(encode(m)) != m");
    assert!(second.rejected_options.is_empty(), "only faithful options are kept");
    assert!(
        bytes == again,
        "encode(decode(x)) is not a fixed point:\n{:?}\n{:?}",
        first.message,
        second.message
    );
});
