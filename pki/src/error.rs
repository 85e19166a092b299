//! The CA's error type: every variant names the file, address, token part or value it is about,
//! and says what to do when the input came from the user.
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error("cannot {what}: {source}")]
    Cert {
        what: String,
        #[source]
        source: rcgen::Error,
    },
    #[error("invalid {what}: {reason}")]
    InvalidPem { what: &'static str, reason: String },
    #[error("invalid certificate: {0}")]
    InvalidCertificate(String),
    #[error("invalid certificate signing request: {0}")]
    InvalidCsr(String),
    #[error("invalid node id {0:?}: a node id is 1-63 ASCII letters, digits or '-', not starting or ending with '-'")]
    InvalidNodeId(String),
    #[error("invalid cluster id {0:?}: a cluster id is 1-64 ASCII letters, digits, '-' or '_'")]
    InvalidClusterId(String),
    #[error("malformed join token: {0}")]
    MalformedToken(String),
    #[error("join token was made for another cluster CA (token CA digest {token_digest}, this cluster's {cluster_digest}): the CA was rotated or the token belongs to another cluster; ask a manager for the current join token")]
    TokenForOtherCa {
        token_digest: String,
        cluster_digest: String,
    },
    #[error("invalid join token: it matches neither the current worker nor the current manager token (it may have been rotated); ask a manager for the current join token")]
    TokenRejected,
    #[error("cannot {what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid data key {path}: {reason}")]
    InvalidDataKeyFile { path: PathBuf, reason: String },
    #[error("invalid data key: {0}")]
    InvalidDataKey(String),
    #[error("cannot seal data: {0}")]
    Seal(String),
    #[error("cannot open sealed data: {0}")]
    Open(String),
    #[error("the system random number generator failed: {0}")]
    Random(String),
    #[error("cannot build the TLS configuration: {0}")]
    Tls(String),
    #[error("the controller at {addr} presented a CA whose digest does not match the join token (expected {expected}, got {got}): wrong address or a man-in-the-middle")]
    CaDigestMismatch {
        addr: String,
        expected: String,
        got: String,
    },
    #[error("cannot {what} from the controller at {addr}: {reason}")]
    Remote {
        what: &'static str,
        addr: String,
        reason: String,
    },
}

impl CaError {
    pub(crate) fn cert(what: impl Into<String>, source: rcgen::Error) -> Self {
        CaError::Cert {
            what: what.into(),
            source,
        }
    }

    pub(crate) fn io(what: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        CaError::Io {
            what,
            path: path.into(),
            source,
        }
    }
}
