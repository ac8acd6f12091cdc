//! `switchboard link`: the host side of remote agent hosts.
