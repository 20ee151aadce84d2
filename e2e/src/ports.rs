//! Free loopback ports for local servers.

use std::net::{Ipv4Addr, TcpListener};

use crate::Error;

/// A TCP port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> Result<u16, Error> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .map_err(|e| Error::io("bind a loopback port", e))?;
    Ok(listener
        .local_addr()
        .map_err(|e| Error::io("read bound port", e))?
        .port())
}
