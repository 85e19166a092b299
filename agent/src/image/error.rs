//! Typed errors of the image store.
//!
//! Every variant names what it failed on (reference, digest, registry address or path) so that a
//! message read alone in a log says what to fix. Remote failures are classified here, once, from
//! `oci-client` errors: the rest of the module never matches on HTTP details.

use std::io;
use std::path::{Path, PathBuf};

use oci_client::errors::{OciDistributionError, OciErrorCode};

/// Errors of the image store, registry client, archives and bundles.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// The user gave a reference that does not parse.
    #[error(
        "invalid image reference {input:?}: {reason} (expected e.g. busybox, busybox:1.36, \
         127.0.0.1:5000/busybox:latest or repo@sha256:<64 hex digits>)"
    )]
    InvalidReference { input: String, reason: String },

    /// The image is not in the local store.
    #[error("image {reference} is not in the local store (pull, load or import it first)")]
    NotFound { reference: String },

    /// An image id (prefix) matches several images, or names an image that has several names.
    #[error("{input} is ambiguous: it matches {matches}; use a name (or a longer id)")]
    Ambiguous { input: String, matches: String },

    /// The registry could not be reached at all (connection refused, DNS, TLS, timeout).
    #[error("registry {registry} is unreachable: {reason}")]
    RegistryUnreachable { registry: String, reason: String },

    /// The registry answered 401.
    #[error("registry {registry} answered 401 unauthorized for {reference}: {hint}")]
    Unauthorized {
        registry: String,
        reference: String,
        hint: String,
    },

    /// The registry answered 404 (unknown repository, tag, manifest or blob).
    #[error(
        "{reference} not found in registry {registry} (404 unknown repository or tag): {detail}"
    )]
    RemoteNotFound {
        registry: String,
        reference: String,
        detail: String,
    },

    /// Any other answer of the registry.
    #[error("registry {registry} failed on {reference}: {detail}")]
    Registry {
        registry: String,
        reference: String,
        detail: String,
    },

    /// Content did not hash to the digest it was announced with; nothing of it was kept.
    #[error(
        "digest mismatch for {what}: expected {expected}, got {actual} (corrupted blob; nothing was kept)"
    )]
    DigestMismatch {
        what: String,
        expected: String,
        actual: String,
    },

    /// Content was longer than its descriptor said; nothing of it was kept.
    #[error("size mismatch for {what}: descriptor says {expected} bytes, got {actual}")]
    SizeMismatch {
        what: String,
        expected: u64,
        actual: String,
    },

    /// An unpacked layer's diff id differs from the image config's `rootfs.diff_ids`.
    #[error("layer {digest} unpacks to diff id {actual} but the image config expects {expected}")]
    DiffIdMismatch {
        digest: String,
        expected: String,
        actual: String,
    },

    /// A manifest, config or layer has a media type this store does not handle.
    #[error("unsupported media type {media_type} for {what}")]
    UnsupportedMediaType { media_type: String, what: String },

    /// An image index has no linux/amd64 entry.
    #[error("image index {reference} has no linux/amd64 manifest (it has: {available})")]
    NoMatchingPlatform {
        reference: String,
        available: String,
    },

    /// A digest string is malformed or uses another algorithm than sha256.
    #[error("invalid digest {digest:?} in {what}: expected sha256:<64 lower-case hex digits>")]
    InvalidDigest { digest: String, what: String },

    /// A manifest, index or config is not valid JSON of its kind.
    #[error("invalid {what}: {reason}")]
    InvalidContent { what: String, reason: String },

    /// A blob that a record or manifest references is not in the blob store.
    #[error("blob {digest} ({what}) is missing from the store {path}; pull the image again")]
    MissingBlob {
        digest: String,
        what: String,
        path: PathBuf,
    },

    /// The file system ran out of space; the partial files were removed.
    #[error("disk full while writing {path}; partial files were removed")]
    DiskFull { path: PathBuf },

    /// Any other I/O failure.
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    /// The store's lock is held by another process.
    #[error(
        "image store {root} is in use by another process (lock {lock} is held); stop it or use another --root"
    )]
    StoreLocked { root: PathBuf, lock: PathBuf },

    /// The store's index file does not parse.
    #[error("image index {path} is corrupted: {reason}")]
    CorruptIndex { path: PathBuf, reason: String },

    /// Applying a layer tar failed.
    #[error("unpack layer {digest}: {reason}")]
    Unpack { digest: String, reason: String },

    /// Preparing or removing an overlay snapshot failed.
    #[error("container rootfs {id}: {reason}")]
    Snapshot { id: String, reason: String },

    /// A container id that cannot be used as a file name.
    #[error(
        "invalid container id {id:?}: use 1-128 characters from [A-Za-z0-9_.-], starting with a letter or digit"
    )]
    InvalidContainerId { id: String },

    /// `create_rootfs` for an id that already has one.
    #[error("container rootfs {id} already exists; remove it first")]
    RootfsExists { id: String },

    /// An OCI layout archive that cannot be loaded.
    #[error("archive {path}: {reason}")]
    InvalidArchive { path: PathBuf, reason: String },

    /// A config change (`--change`) that does not parse.
    #[error(
        "invalid config change {change:?}: {reason} (expected CMD=..., ENTRYPOINT=..., ENV=K=V, WORKDIR=/dir, USER=uid[:gid] or EXPOSE=80/tcp)"
    )]
    InvalidChange { change: String, reason: String },

    /// A `User` value that the runtime cannot resolve yet.
    #[error(
        "unsupported user {user:?} in image {reference}: only numeric uid[:gid] is supported for now"
    )]
    UnsupportedUser { user: String, reference: String },

    /// An image with neither entrypoint nor cmd and no args given.
    #[error("image {reference} has no entrypoint or cmd; give the command to run")]
    NoCommand { reference: String },

    /// Building the runtime spec failed.
    #[error("runtime spec for {reference}: {reason}")]
    Spec { reference: String, reason: String },
}

/// Result alias of the image module.
pub type Result<T, E = ImageError> = std::result::Result<T, E>;

impl ImageError {
    /// An I/O error on `path`; ENOSPC becomes [`ImageError::DiskFull`].
    pub(crate) fn io(op: &'static str, path: impl AsRef<Path>, source: io::Error) -> Self {
        if source.raw_os_error() == Some(libc::ENOSPC) {
            return ImageError::DiskFull {
                path: path.as_ref().to_path_buf(),
            };
        }
        ImageError::Io {
            op,
            path: path.as_ref().to_path_buf(),
            source,
        }
    }

    /// Classify an `oci-client` error of an operation on `reference` at `registry`.
    pub(crate) fn from_remote(err: OciDistributionError, registry: &str, reference: &str) -> Self {
        let registry = registry.to_string();
        let reference = reference.to_string();
        match err {
            OciDistributionError::UnauthorizedError { .. }
            | OciDistributionError::AuthenticationFailure(_) => ImageError::Unauthorized {
                registry,
                reference,
                hint: "credentials missing or rejected".to_string(),
            },
            OciDistributionError::RegistryError { envelope, url } => {
                let detail = envelope
                    .errors
                    .iter()
                    .map(|e| format!("{:?}: {}", e.code, e.message))
                    .collect::<Vec<_>>()
                    .join("; ");
                let detail = format!("{detail} ({url})");
                let not_found = envelope.errors.iter().any(|e| {
                    matches!(
                        e.code,
                        OciErrorCode::ManifestUnknown
                            | OciErrorCode::NameUnknown
                            | OciErrorCode::NotFound
                            | OciErrorCode::BlobUnknown
                    )
                });
                let unauthorized = envelope
                    .errors
                    .iter()
                    .any(|e| matches!(e.code, OciErrorCode::Unauthorized));
                if not_found {
                    ImageError::RemoteNotFound {
                        registry,
                        reference,
                        detail,
                    }
                } else if unauthorized {
                    ImageError::Unauthorized {
                        registry,
                        reference,
                        hint: format!("credentials were rejected: {detail}"),
                    }
                } else {
                    ImageError::Registry {
                        registry,
                        reference,
                        detail,
                    }
                }
            }
            OciDistributionError::ServerError { code, url, message } => match code {
                401 => ImageError::Unauthorized {
                    registry,
                    reference,
                    hint: "credentials were rejected".to_string(),
                },
                404 => ImageError::RemoteNotFound {
                    registry,
                    reference,
                    detail: format!("{url}: {}", message.trim()),
                },
                _ => ImageError::Registry {
                    registry,
                    reference,
                    detail: format!("http {code} from {url}: {}", message.trim()),
                },
            },
            OciDistributionError::ImageManifestNotFoundError(detail) => {
                ImageError::RemoteNotFound {
                    registry,
                    reference,
                    detail,
                }
            }
            OciDistributionError::DigestError(e) => match e {
                oci_client::errors::DigestError::VerificationError { expected, actual } => {
                    ImageError::DigestMismatch {
                        what: format!("{reference} from {registry}"),
                        expected,
                        actual,
                    }
                }
                other => ImageError::Registry {
                    registry,
                    reference,
                    detail: other.to_string(),
                },
            },
            OciDistributionError::UnsupportedMediaTypeError(media_type)
            | OciDistributionError::IncompatibleLayerMediaTypeError(media_type) => {
                ImageError::UnsupportedMediaType {
                    media_type,
                    what: reference,
                }
            }
            OciDistributionError::IoError(e) => {
                if e.raw_os_error() == Some(libc::ENOSPC) {
                    ImageError::DiskFull {
                        path: PathBuf::from("(blob download)"),
                    }
                } else {
                    ImageError::Registry {
                        registry,
                        reference,
                        detail: e.to_string(),
                    }
                }
            }
            OciDistributionError::RequestError(e) => {
                let chain = error_chain(&e);
                let status = e.status().map(|s| s.as_u16());
                if status == Some(401) {
                    ImageError::Unauthorized {
                        registry,
                        reference,
                        hint: "credentials missing or rejected".to_string(),
                    }
                } else if status == Some(404) {
                    ImageError::RemoteNotFound {
                        registry,
                        reference,
                        detail: chain,
                    }
                } else if e.is_connect() || e.is_timeout() {
                    let mut reason = chain;
                    if reason.contains("tls") || reason.contains("certificate") {
                        reason.push_str(
                            " (if this registry speaks plain http, mark it insecure with \
                             --insecure-registry)",
                        );
                    }
                    ImageError::RegistryUnreachable { registry, reason }
                } else {
                    ImageError::Registry {
                        registry,
                        reference,
                        detail: chain,
                    }
                }
            }
            other => ImageError::Registry {
                registry,
                reference,
                detail: error_chain(&other),
            },
        }
    }
}

/// `error: cause: cause` of an error and its sources, on one line.
pub(crate) fn error_chain(err: &dyn std::error::Error) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}
