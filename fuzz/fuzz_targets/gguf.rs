//! A GGUF file's bytes: the header, metadata and tensor table parsed and checked, then the model
//! configuration and the tokenizer built from what parsed. Errors are fine; a panic, an
//! overflow or an allocation past the input's size is a bug.
#![no_main]

use libfuzzer_sys::fuzz_target;
use specd_engine::gguf::GgufFile;
use specd_engine::tokenizer::Tokenizer;

fuzz_target!(|data: &[u8]| {
    let Ok(f) = GgufFile::from_bytes(std::path::Path::new("fuzz.gguf"), data) else {
        return;
    };
    let _ = specd_engine::model::config::from_gguf(&f, None);
    if let Ok(t) = Tokenizer::from_gguf(&f) {
        if let Ok(ids) = t.encode("Hello, world! 12 × 7 = 84", true) {
            let _ = t.decode(&ids);
        }
        let _ = t.apply_chat_template("What is 2+2?");
    }
});
