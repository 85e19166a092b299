//! The cluster CA: root certificate, node certificates bound to node ids, join tokens, the
//! cluster data key that seals secrets, and the rustls configurations of every mTLS port.
