//! The codec of section payloads: postcard (a compact, stable serde binary format).
//!
//! Serialization stays here, at the edge: state types are plain data deriving serde, and a
//! decoded value is validated by its owner before use.

/// A payload that does not decode, or a value that does not encode.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    /// postcard refused the bytes (or the value).
    #[error("postcard: {0}")]
    Postcard(#[from] postcard::Error),
    /// The value ended before the payload did.
    #[error("{extra} bytes left after the value")]
    TrailingBytes {
        /// How many bytes were left.
        extra: usize,
    },
}

/// Encodes `value` as a section payload.
///
/// # Errors
/// [`CodecError::Postcard`] if serde refuses the value (a type postcard cannot represent).
pub fn encode<T: serde::Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, CodecError> {
    Ok(postcard::to_allocvec(value)?)
}

/// Decodes a section payload; every byte must belong to the value.
///
/// Allocation is bounded by the payload: postcard never preallocates more than the bytes left
/// can hold, and the payload itself was capped when the state file was read.
///
/// # Errors
/// [`CodecError::Postcard`] for bytes that are not a `T`, [`CodecError::TrailingBytes`] when
/// bytes remain after it.
pub fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    let (value, rest) = postcard::take_from_bytes(bytes)?;
    if !rest.is_empty() {
        return Err(CodecError::TrailingBytes { extra: rest.len() });
    }
    Ok(value)
}
