//! `when` conditions (derive::condition): parse and compile any text. Must return an error,
//! never panic or overflow the stack (deep nesting has a depth limit).
#![no_main]

use libfuzzer_sys::fuzz_target;
use weir::derive::condition::Condition;
use weir::parse::{FieldRef, PathTrie};

fuzz_target!(|data: &[u8]| {
    let Ok(src) = std::str::from_utf8(data) else {
        return;
    };
    let mut trie = PathTrie::new();
    let _ = Condition::new(src, &mut |p| FieldRef::resolve(p, &mut trie));
});
