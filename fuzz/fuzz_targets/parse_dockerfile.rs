//! The parser must never panic, and a parsed file must dump without panicking.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(source) = std::str::from_utf8(data)
        && let Ok(ast) = imgb_frontend::parser::parse(source)
    {
        let _ = ast.dump();
    }
});
