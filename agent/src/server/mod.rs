//! Thin gRPC handlers (`flotilla.agent.v1`) over the engine, and the listener set-up (unix socket,
//! optional loopback TCP). One mapping from engine errors to `tonic::Status`, here.

mod containers;
mod exec;
mod images;
mod networks;
mod system;
mod volumes;

use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;

use flotilla_proto::agent::v1 as pb;
use tokio_stream::Stream;
use tonic::Status;

use crate::engine::{Engine, EngineError, Kind};

pub use containers::ContainersService;
pub use images::ImagesService;
pub use networks::NetworksService;
pub use system::SystemService;
pub use volumes::VolumesService;

/// A boxed server stream.
pub type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

/// The one mapping from engine errors to gRPC statuses.
pub fn status(e: EngineError) -> Status {
    let code = match e.kind {
        Kind::NotFound => tonic::Code::NotFound,
        Kind::Conflict => tonic::Code::AlreadyExists,
        Kind::Precondition => tonic::Code::FailedPrecondition,
        Kind::Invalid => tonic::Code::InvalidArgument,
        Kind::Exhausted => tonic::Code::ResourceExhausted,
        Kind::Unavailable => tonic::Code::Unavailable,
        Kind::Unauthenticated => tonic::Code::Unauthenticated,
        Kind::Internal => tonic::Code::Internal,
    };
    Status::new(code, e.msg)
}

impl From<EngineError> for Status {
    fn from(e: EngineError) -> Self {
        status(e)
    }
}

/// All services of the agent API on one router.
pub fn router(engine: Arc<Engine>) -> tonic::service::Routes {
    tonic::service::Routes::new(pb::system_server::SystemServer::new(SystemService::new(
        engine.clone(),
    )))
    .add_service(pb::images_server::ImagesServer::new(ImagesService::new(
        engine.clone(),
    )))
    .add_service(pb::containers_server::ContainersServer::new(
        ContainersService::new(engine.clone()),
    ))
    .add_service(pb::networks_server::NetworksServer::new(
        NetworksService::new(engine.clone()),
    ))
    .add_service(pb::volumes_server::VolumesServer::new(VolumesService::new(
        engine,
    )))
}

/// Binds the agent's unix socket: mode 0660, refusing to steal the socket of a live agent.
pub async fn bind_unix(path: &Path) -> std::io::Result<tokio::net::UnixListener> {
    use std::os::unix::fs::PermissionsExt;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    if path.exists() {
        if tokio::net::UnixStream::connect(path).await.is_ok() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AddrInUse,
                format!("another agent is already serving on {}", path.display()),
            ));
        }
        std::fs::remove_file(path)?;
    }
    let l = tokio::net::UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))?;
    Ok(l)
}

/// A stream from an mpsc receiver.
pub fn stream_of<T: Send + 'static>(
    rx: tokio::sync::mpsc::Receiver<Result<T, Status>>,
) -> BoxStream<T> {
    Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))
}
