//! Byte-level tokenizer: every UTF-8 byte is a token, plus a few special tokens.

pub const BOS: u32 = 256;
pub const EOS: u32 = 257;
pub const PAD: u32 = 258;
pub const VOCAB_SIZE: usize = 259;

pub fn encode(text: &str) -> Vec<u32> {
    text.bytes().map(u32::from).collect()
}

/// Decodes byte tokens, skipping special tokens; invalid UTF-8 becomes U+FFFD.
pub fn decode(tokens: &[u32]) -> String {
    let bytes: Vec<u8> = tokens
        .iter()
        .filter(|&&t| t < 256)
        .map(|&t| t as u8)
        .collect();
    String::from_utf8_lossy(&bytes).into_owned()
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
        assert_eq!(decode(&tokens), text);
        assert!(encode(text).iter().all(|&t| t < 256));
    }
}
