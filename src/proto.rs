//! Generated gRPC and protobuf types from `proto/threatmesh/v1`.

/// `threatmesh.v1`: envelopes, indicators, org cards, Exchange and Admin services.
pub mod v1 {
    tonic::include_proto!("threatmesh.v1");
}
