//! Container networking on one node (placeholder: filled by the networking work of issue 3).
