//! The image store: OCI images by digest, pulled from and pushed to registries, loaded from and
//! saved to OCI layout archives, imported from rootfs tarballs, and laid out as copy-on-write
//! overlay root filesystems for containers.
//!
//! Owns everything under the store root (default `/var/lib/flotilla/images`; layout in
//! [`store`]). Invariants, kept by every operation:
//! - content is addressed by sha256 and verified before it gets its final name; partial content
//!   lives only under temp names that [`ImageStore::open`] deletes;
//! - an image record is written only after all its content is complete, and content is deleted
//!   only once no record, container snapshot or running operation needs it (derived, never
//!   counted), so a crash at any point leaves a store that opens cleanly and a re-pull that
//!   finishes the work;
//! - one process owns a store at a time (a lock file), tasks within it share an [`ImageStore`].
//!
//! Registry access goes through `oci-client` (token dance, basic auth, manifest and blob
//! endpoints); OCI types come from `oci-spec`. Layer application is [`unpack`], overlay mounts
//! are [`snapshot`].

pub mod archive;
pub mod blobs;
pub mod bundle;
pub mod digest;
pub mod error;
pub mod import;
pub mod layers;
pub mod manifest;
pub mod pull;
pub mod push;
pub mod records;
pub mod reference;
pub mod remote;
pub mod rootfs;
pub mod snapshot;
pub mod store;
pub mod unpack;

pub use error::{ImageError, Result};
pub use import::ConfigChange;
pub use records::{ImageRecord, LayerRecord};
pub use remote::{Credentials, PullOptions, PullProgress, PushOptions, PushProgress};
pub use store::{
    GcReport, ImageInspect, ImageStore, Recovery, RemoveReport, StoreConfig,
    DEFAULT_CONCURRENT_DOWNLOADS, DEFAULT_ROOT,
};
