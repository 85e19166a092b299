//! Machine drivers and the SSH bootstrap. Empty until the provisioning issue.
