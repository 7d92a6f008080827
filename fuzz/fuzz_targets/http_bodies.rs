//! The HTTP API's body and query parsers, on the same bytes.
#![no_main]

use claro::node::inputs::{
    hotfolder_definition, job_query, script_addition, setting_write, submission, token_request,
    transfer_target,
};
use claro::web::access::Role;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    for role in [Role::Viewer, Role::Operator, Role::Admin] {
        let _ = submission(role, data);
    }
    let _ = transfer_target(data);
    let _ = script_addition(data, 1);
    let _ = setting_write("key", data);
    let _ = token_request(data);
    let _ = hotfolder_definition(data);
    let _ = job_query(&String::from_utf8_lossy(data));
});
