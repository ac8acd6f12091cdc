//! REST bodies: the first byte picks a route's body type, the rest is its
//! JSON. Deserializing never panics, and what deserializes serializes back.
#![no_main]

use libfuzzer_sys::fuzz_target;
use switchboard::protocol::phase1::{
    ExecuteRequest, ProjectCreate, ProjectTaskCreate, ProjectTaskUpdate, ProjectUpdate,
};
use switchboard::protocol::{
    CreateSessionRequest, CreateUserRequest, PermissionRequest, RespondRequest, RoleRequest,
    SubmitRequest, TokenRequest,
};
use switchboard::runtime::devices::RegisterDevice;

fn body<T: serde::de::DeserializeOwned>(json: &[u8]) {
    let _ = serde_json::from_slice::<T>(json);
}

fuzz_target!(|data: &[u8]| {
    let Some((&pick, json)) = data.split_first() else {
        return;
    };
    match pick % 13 {
        0 => body::<SubmitRequest>(json),
        1 => body::<CreateSessionRequest>(json),
        2 => body::<CreateUserRequest>(json),
        3 => body::<PermissionRequest>(json),
        4 => body::<RespondRequest>(json),
        5 => body::<RoleRequest>(json),
        6 => body::<TokenRequest>(json),
        7 => body::<RegisterDevice>(json),
        8 => body::<ExecuteRequest>(json),
        9 => body::<ProjectCreate>(json),
        10 => body::<ProjectUpdate>(json),
        11 => body::<ProjectTaskCreate>(json),
        _ => body::<ProjectTaskUpdate>(json),
    }
});
