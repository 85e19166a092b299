//! Thin gRPC handlers of `flotilla.control.v1`; one mapping from domain errors to `tonic::Status`.
