//! The connection to the cluster's control API for the cluster commands (`cluster`, `node`,
//! `service`, `secret`, `config`): the context picks the manager and the TLS material
//! (mutual TLS with the admin certificate, the server verified against the cluster CA as
//! "manager.flotilla"), and failed calls become the lines the CLI prints.
//!
//! Invariants: a call that never reached a manager reads "cannot reach the cluster at ADDR
//! (context NAME): CAUSE — is flotilla-controller running there?"; any other failure is the
//! controller's own message as "Error response from controller: MESSAGE" (docker's wording),
//! printed without the generic "Error: " prefix ([`error_line`]).

use tonic::transport::Channel;

use flotilla_proto::control::v1::control_client::ControlClient;

use super::client::root_cause;
use super::context::{self, LoadedContext};
use super::Ctx;

use crate::ca;

const MAX_MESSAGE: usize = 64 * 1024 * 1024;

/// Dials the context's manager with mutual TLS. The channel is lazy: an unreachable manager
/// shows as the first call's error (see [`controller_error`]).
pub async fn connect(ctx: &LoadedContext) -> anyhow::Result<ControlClient<Channel>> {
    let cfg = ca::client_config(&ctx.ca_pem, Some((&ctx.cert_pem, &ctx.key_pem))).map_err(|e| {
        anyhow::anyhow!(
            "the TLS files of context {} are not usable: {e} (recreate the context with `flotilla context create`)",
            ctx.meta.name
        )
    })?;
    tracing::debug!(addr = %ctx.meta.controller, context = %ctx.meta.name, "connecting to the cluster");
    let channel = ca::channel(&ctx.meta.controller, cfg);
    Ok(ControlClient::new(channel).max_decoding_message_size(MAX_MESSAGE))
}

/// A connection to the cluster, with what error messages need.
#[derive(Clone)]
pub struct Cluster {
    client: ControlClient<Channel>,
    /// The manager's address, from the context.
    pub addr: String,
    /// The context's name.
    pub context: String,
}

impl Cluster {
    /// Resolves the context (`--context`, `FLOTILLA_CONTEXT`, current) and connects.
    pub async fn open(ctx: &Ctx) -> anyhow::Result<Cluster> {
        let dir = context::config_dir()?;
        let loaded = context::resolve(&dir, ctx.context.as_deref())?;
        let client = connect(&loaded).await?;
        Ok(Cluster {
            client,
            addr: loaded.meta.controller,
            context: loaded.meta.name,
        })
    }

    /// A client for one call (cheap: the channel is shared).
    pub fn api(&self) -> ControlClient<Channel> {
        self.client.clone()
    }

    /// Turns a failed call into the error the CLI prints.
    pub fn err(&self, s: tonic::Status) -> anyhow::Error {
        controller_error(&self.addr, &self.context, s)
    }
}

/// A status the controller answered with.
#[derive(Debug, thiserror::Error)]
#[error("Error response from controller: {message}")]
pub struct ControllerError {
    pub code: tonic::Code,
    pub message: String,
}

/// The message when no manager answered.
pub fn unreachable_message(addr: &str, context: &str, cause: &str) -> String {
    format!(
        "cannot reach the cluster at {addr} (context {context}): {cause} — is flotilla-controller running there?"
    )
}

/// See [`Cluster::err`].
pub fn controller_error(addr: &str, context: &str, s: tonic::Status) -> anyhow::Error {
    use std::error::Error as _;
    if matches!(
        s.code(),
        tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::Cancelled
    ) {
        if let Some(src) = s.source() {
            return anyhow::anyhow!(unreachable_message(addr, context, &root_cause(src)));
        }
    }
    let message = if s.code() == tonic::Code::Unimplemented {
        format!(
            "the server at {addr} does not implement this call of flotilla's control API (it answered UNIMPLEMENTED): is it a flotilla-controller of the same version?"
        )
    } else if s.message().is_empty() {
        s.code().description().to_string()
    } else {
        s.message().to_string()
    };
    ControllerError {
        code: s.code(),
        message,
    }
    .into()
}

fn code_of(e: &anyhow::Error) -> Option<tonic::Code> {
    e.downcast_ref::<ControllerError>().map(|c| c.code)
}

/// Whether the controller said NOT_FOUND.
pub fn is_not_found(e: &anyhow::Error) -> bool {
    code_of(e) == Some(tonic::Code::NotFound)
}

/// Whether an update was refused because the object changed since it was read.
pub fn is_conflict(e: &anyhow::Error) -> bool {
    match e.downcast_ref::<ControllerError>() {
        Some(c) => {
            c.code == tonic::Code::Aborted
                || (c.code == tonic::Code::FailedPrecondition
                    && c.message.contains("changed since it was read"))
        }
        None => false,
    }
}

/// The line printed for a failed command: the controller's answers as docker prints the
/// daemon's ("Error response from controller: ..."), anything else as "Error: ...".
pub fn error_line(e: &anyhow::Error) -> String {
    let text = format!("{e:#}");
    if text.starts_with("Error response from controller: ") {
        text
    } else {
        format!("Error: {text}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages() {
        let e = controller_error(
            "m1:4242",
            "prod",
            tonic::Status::not_found("no such node: x"),
        );
        assert_eq!(
            e.to_string(),
            "Error response from controller: no such node: x"
        );
        assert_eq!(
            error_line(&e),
            "Error response from controller: no such node: x"
        );
        assert!(is_not_found(&e));
        assert!(!is_conflict(&e));
        assert_eq!(error_line(&anyhow::anyhow!("bad flag")), "Error: bad flag");
        let wrapped = super::super::with_exit(125, e);
        assert_eq!(
            error_line(&wrapped),
            "Error response from controller: no such node: x"
        );
        let e = controller_error(
            "m1:4242",
            "prod",
            tonic::Status::aborted("service web changed since it was read"),
        );
        assert!(is_conflict(&e));
        let e = controller_error(
            "m1:4242",
            "prod",
            tonic::Status::failed_precondition(
                "node n1 changed since it was read (version 3, now 5): retry",
            ),
        );
        assert!(is_conflict(&e));
        let e = controller_error("m", "c", tonic::Status::unimplemented(""));
        assert!(e.to_string().contains("UNIMPLEMENTED"));
        assert_eq!(
            unreachable_message("m1:4242", "prod", "Connection refused (os error 111)"),
            "cannot reach the cluster at m1:4242 (context prod): Connection refused (os error 111) — is flotilla-controller running there?"
        );
    }

    #[tokio::test]
    async fn nothing_listening_says_cannot_reach() {
        // A port nobody listens on: bind one, learn its number, close it.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        // A plain channel: what is tested is the mapping of a transport failure.
        let channel = tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{port}"))
            .unwrap()
            .connect_lazy();
        let mut c = ControlClient::new(channel);
        let s = c
            .get_cluster(flotilla_proto::control::v1::GetClusterRequest {})
            .await
            .unwrap_err();
        let e = controller_error(&format!("127.0.0.1:{port}"), "lab", s);
        let text = e.to_string();
        assert!(
            text.starts_with(&format!(
                "cannot reach the cluster at 127.0.0.1:{port} (context lab): "
            )),
            "{text}"
        );
        assert!(
            text.ends_with("is flotilla-controller running there?"),
            "{text}"
        );
    }
}
