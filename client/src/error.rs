//! Client errors: transport, server-reported, and integrity failures kept apart.

use tidelog_protocol::{ErrorCode, ProtocolError};

pub type Result<T, E = ClientError> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
    /// The server answered with an error code.
    #[error("server error {0}")]
    Server(ProtocolError),
    /// The server's bytes do not follow the protocol.
    #[error("protocol violation: {0}")]
    Protocol(String),
    /// A received batch failed its CRC or structure check: never handed to the caller.
    #[error("corrupt batch received: {0}")]
    Corrupt(String),
    #[error("timed out waiting for {0}")]
    Timeout(&'static str),
    #[error("connection closed")]
    Disconnected,
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
}

impl ClientError {
    /// The server's error code, if this is a server error.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            ClientError::Server(e) => Some(e.code),
            _ => None,
        }
    }
}
