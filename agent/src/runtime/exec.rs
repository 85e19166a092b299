//! Running an additional process inside an existing container (placeholder: filled by issue 3).
