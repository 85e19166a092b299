//! Registry access through `oci-client`: client construction (http only for loopback or
//! configured-insecure registries), credentials, and progress events.

use std::fmt;

use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};

use super::error::ImageError;
use super::reference::is_loopback_registry;

/// Credentials for a registry. Debug output never shows the password.
#[derive(Clone, Default, PartialEq, Eq)]
pub enum Credentials {
    /// No credentials (anonymous; bearer tokens are still fetched if the registry asks).
    #[default]
    Anonymous,
    /// Username and password (sent as basic auth, or exchanged for a bearer token).
    Basic {
        /// User name.
        username: String,
        /// Password or token.
        password: String,
    },
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Credentials::Anonymous => f.write_str("Anonymous"),
            Credentials::Basic { username, .. } => f
                .debug_struct("Basic")
                .field("username", username)
                .field("password", &"<redacted>")
                .finish(),
        }
    }
}

impl Credentials {
    /// Make a 401 say whether credentials were missing or rejected.
    pub(super) fn explain(&self, err: ImageError) -> ImageError {
        match err {
            ImageError::Unauthorized {
                registry,
                reference,
                ..
            } => ImageError::Unauthorized {
                hint: match self {
                    Credentials::Anonymous => {
                        "the registry requires credentials; give --username and --password-stdin"
                            .to_string()
                    }
                    Credentials::Basic { username, .. } => {
                        format!("the credentials of user {username:?} were rejected")
                    }
                },
                registry,
                reference,
            },
            other => other,
        }
    }

    pub(super) fn to_auth(&self) -> RegistryAuth {
        match self {
            Credentials::Anonymous => RegistryAuth::Anonymous,
            Credentials::Basic { username, password } => {
                RegistryAuth::Basic(username.clone(), password.clone())
            }
        }
    }
}

/// Options of one pull.
#[derive(Debug, Clone, Default)]
pub struct PullOptions {
    /// Credentials for the image's registry.
    pub credentials: Credentials,
    /// Extra registries reached over plain http for this pull (beside the store's list).
    pub insecure_registries: Vec<String>,
}

/// Options of one push.
#[derive(Debug, Clone, Default)]
pub struct PushOptions {
    /// Credentials for the target registry.
    pub credentials: Credentials,
    /// Extra registries reached over plain http for this push (beside the store's list).
    pub insecure_registries: Vec<String>,
}

/// Events of a pull, in order per layer; layers proceed concurrently.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PullProgress {
    /// The reference resolved to a platform manifest.
    Resolved {
        /// The normalized reference.
        reference: String,
        /// Digest of the image manifest.
        manifest_digest: String,
        /// Number of layers.
        layers: usize,
        /// Sum of the layer blob sizes.
        total_bytes: u64,
    },
    /// Blob and unpacked layer are already in the store.
    LayerAlreadyPresent {
        /// Layer blob digest.
        digest: String,
        /// Blob size.
        size: u64,
    },
    /// A layer download starts.
    LayerStarted {
        /// Layer blob digest.
        digest: String,
        /// Blob size.
        size: u64,
    },
    /// Bytes of a layer received so far (sent about every MiB).
    LayerBytes {
        /// Layer blob digest.
        digest: String,
        /// Bytes so far.
        downloaded: u64,
        /// Blob size.
        size: u64,
    },
    /// A layer blob is downloaded and verified.
    LayerDownloaded {
        /// Layer blob digest.
        digest: String,
    },
    /// A layer is unpacked (or was already).
    LayerDone {
        /// Layer blob digest.
        digest: String,
        /// Its diff id.
        diff_id: String,
    },
    /// The record is written.
    Done {
        /// The normalized reference.
        reference: String,
        /// Digest of the image manifest.
        manifest_digest: String,
        /// Bytes downloaded by this pull.
        downloaded_bytes: u64,
    },
}

/// Events of a push.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PushProgress {
    /// The registry already has this blob.
    BlobExists {
        /// Blob digest.
        digest: String,
    },
    /// A blob was uploaded.
    BlobPushed {
        /// Blob digest.
        digest: String,
        /// Its size.
        size: u64,
    },
    /// The manifest was uploaded under the tag.
    ManifestPushed {
        /// Target reference.
        reference: String,
        /// Manifest digest.
        digest: String,
    },
}

/// A progress callback.
pub type ProgressFn<'a, P> = &'a (dyn Fn(P) + Send + Sync);

/// A client for the registry of `reference`: plain http when the registry is on loopback or in
/// `insecure`, https otherwise.
pub(super) fn client_for(reference: &Reference, insecure: &[String], concurrency: usize) -> Client {
    let registry = reference.resolve_registry();
    let http = is_loopback_registry(registry) || insecure.iter().any(|r| r == registry);
    let config = ClientConfig {
        protocol: if http {
            ClientProtocol::Http
        } else {
            ClientProtocol::Https
        },
        max_concurrent_download: concurrency.max(1),
        max_concurrent_upload: concurrency.max(1),
        connect_timeout: Some(std::time::Duration::from_secs(15)),
        read_timeout: Some(std::time::Duration::from_secs(120)),
        ..Default::default()
    };
    Client::new(config)
}
