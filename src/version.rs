//! The protocol this build speaks, and the oldest it works beside: a
//! foundation that imports nothing, read by `proto` (the wire) and `state`
//! (what a command means at a level).

/// Bumped when the peer protocol or the meaning of a command changes.
/// Instances of `PROTOCOL_VERSION_MIN..=PROTOCOL_VERSION` work together in
/// one cluster (a rolling upgrade, one version at a time): what is new in a
/// version is used only once the cluster's level (`state::protocol_level`,
/// raised by the coordinator when every voter speaks it) has reached it.
/// 2: `Gossip` and `View` requests; `Command::Once` in log entries (a
/// version-1 instance could not apply it).
/// 6: `Command::CertRevoke` in log entries.
/// 7: `Response::Unavailable`, `Request::Live`; `Command::Placed` in log
/// entries.
/// 8: job folders, tickets and markers in a hotfolder job's `FileInput`
/// and triggers in a hotfolder's definition (an older instance would run
/// a job folder as a file); a batch's ids recorded for its request id.
/// 9: a retry clears the job's error (a replica applying it the old way
/// would hold another state); `Request::Backup` (client only).
/// 10: flat working folders for hotfolder jobs (`LEVEL_FLAT_WORK_AREA`).
pub const PROTOCOL_VERSION: u32 = 10;

/// The level from which a hotfolder job's working folder is made flat
/// (`node::work::work_area`): an instance of protocol 9 or older would not
/// find a claimed input there, and would publish the job without it.
pub const LEVEL_FLAT_WORK_AREA: u32 = 10;

/// The oldest protocol an instance of this version works beside: the one
/// before it, so a rolling upgrade goes one protocol at a time. (Instances
/// of protocol 8 and older knew no levels and refused any other version.)
pub const PROTOCOL_VERSION_MIN: u32 = PROTOCOL_VERSION - 1;

/// The protocol this instance speaks: `PROTOCOL_VERSION`, or, for the
/// rolling-upgrade test only, `CLARO_FAILPOINT_PROTOCOL_VERSION` within
/// `PROTOCOL_VERSION_MIN..=PROTOCOL_VERSION` (an instance that speaks, and
/// so lets the cluster's level rise to, no more than that).
pub fn protocol_version() -> u32 {
    static VERSION: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    *VERSION.get_or_init(|| {
        std::env::var("CLARO_FAILPOINT_PROTOCOL_VERSION")
            .ok()
            .and_then(|v| v.parse::<u32>().ok())
            .filter(|v| (PROTOCOL_VERSION_MIN..=PROTOCOL_VERSION).contains(v))
            .unwrap_or(PROTOCOL_VERSION)
    })
}
