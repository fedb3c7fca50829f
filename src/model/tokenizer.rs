//! Byte-level tokenizer: every UTF-8 byte is a token, plus a few special tokens.

pub const BOS: u32 = 256;
pub const EOS: u32 = 257;
pub const PAD: u32 = 258;
pub const VOCAB_SIZE: usize = 259;

pub fn encode(text: &str) -> Vec<u32> {
    text.bytes().map(u32::from).collect()
}

/// The bytes of the byte tokens, special tokens skipped.
pub fn decode_bytes(tokens: &[u32]) -> Vec<u8> {
    tokens
        .iter()
        .filter_map(|&t| u8::try_from(t).ok())
        .collect()
}

/// Whether generating `token` after `pending` keeps the output valid UTF-8. `pending` holds the
/// bytes of a character begun but not finished (empty between characters). A byte must continue
/// or start a character validly; a special token only ends the text between characters.
pub fn keeps_utf8_valid(pending: &[u8], token: u32) -> bool {
    let Ok(byte) = u8::try_from(token) else {
        return pending.is_empty();
    };
    let mut candidate = [0u8; 4];
    let Some(slot) = candidate.get_mut(pending.len()) else {
        return false;
    };
    *slot = byte;
    candidate[..pending.len()].copy_from_slice(pending);
    match std::str::from_utf8(&candidate[..=pending.len()]) {
        Ok(_) => true,
        // No error length: valid so far, the character is just not finished.
        Err(e) => e.error_len().is_none(),
    }
}

/// The bytes at the end of `bytes` (valid UTF-8 up to them) that begin a character not yet
/// finished.
pub fn unfinished_character(bytes: &[u8]) -> &[u8] {
    match std::str::from_utf8(bytes) {
        Ok(_) => &[],
        Err(e) => &bytes[e.valid_up_to()..],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_utf8_and_skips_specials() {
        let text = "héllo, wörld ✓";
        let mut tokens = vec![BOS];
        tokens.extend(encode(text));
        tokens.push(EOS);
        assert_eq!(decode_bytes(&tokens), text.as_bytes());
        assert!(encode(text).iter().all(|&t| t < 256));
    }

    #[test]
    fn only_bytes_that_continue_valid_utf8_are_allowed() {
        // Between characters: ASCII and lead bytes, not continuation bytes or 0xFF.
        assert!(keeps_utf8_valid(&[], b'a'.into()));
        assert!(keeps_utf8_valid(&[], 0xE2));
        assert!(!keeps_utf8_valid(&[], 0x80));
        assert!(!keeps_utf8_valid(&[], 0xFF));
        assert!(!keeps_utf8_valid(&[], 0xC0), "overlong lead byte");
        assert!(keeps_utf8_valid(&[], EOS));
        // Inside "✓" (E2 9C 93): only continuation bytes, no end of text.
        assert!(keeps_utf8_valid(&[0xE2], 0x9C));
        assert!(keeps_utf8_valid(&[0xE2, 0x9C], 0x93));
        assert!(!keeps_utf8_valid(&[0xE2], b'a'.into()));
        assert!(!keeps_utf8_valid(&[0xE2], EOS));
        assert!(!keeps_utf8_valid(&[0xED], 0xA0), "a surrogate");
        assert_eq!(unfinished_character("a✓".as_bytes()), &[] as &[u8]);
        assert_eq!(unfinished_character(&[b'a', 0xE2, 0x9C]), &[0xE2, 0x9C]);
    }
}
