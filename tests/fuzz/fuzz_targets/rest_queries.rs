//! REST query strings: the first byte picks a route's query type, the rest is
//! the query string, decoded as axum's `Query` does (serde_urlencoded).
#![no_main]

use libfuzzer_sys::fuzz_target;
use switchboard::protocol::phase1::{ProjectListQuery, ProjectTaskListQuery};
use switchboard::protocol::{CreateSessionRequest, EventsQuery, TaskListQuery};
use switchboard::runtime::audit::AuditFilter;
use switchboard::runtime::hosts::CountQuery;

fn query<T: serde::de::DeserializeOwned>(q: &[u8]) {
    let _ = serde_urlencoded::from_bytes::<T>(q);
}

fuzz_target!(|data: &[u8]| {
    let Some((&pick, q)) = data.split_first() else {
        return;
    };
    match pick % 7 {
        0 => query::<TaskListQuery>(q),
        1 => query::<EventsQuery>(q),
        2 => query::<AuditFilter>(q),
        3 => query::<CountQuery>(q),
        4 => query::<ProjectListQuery>(q),
        5 => query::<ProjectTaskListQuery>(q),
        _ => query::<CreateSessionRequest>(q),
    }
});
