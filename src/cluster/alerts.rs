//! What needs an operator now, from facts the shell gathers: the alerts
//! `claro status` lists and the dashboard shows as banners. Their names
//! and default thresholds are those of the Prometheus rules in
//! packaging/claro-alerts.yml, so both say the same. Pure: no I/O, no
//! clock (ages come in).

use crate::config::AlertsConf;
use crate::proto::{Alert, StatusView};

/// What the alerts are judged on, beside the status view.
#[derive(Debug, Clone, Default)]
pub struct Facts {
    /// Per hotfolder, how long its oldest file has waited for a server (s).
    pub hotfolder_waits_s: Vec<(String, u64)>,
    /// Jobs that ended in the last 15 minutes: (failed, all).
    pub jobs_ended: (u64, u64),
}

/// Jobs that must have ended in the window before a failure rate counts:
/// two failures of three jobs is no trend.
pub const JOBS_ENDED_MIN: u64 = 4;

/// The alerts of `view` and `facts` under `limits`, critical ones first.
pub fn evaluate(view: &StatusView, facts: &Facts, limits: &AlertsConf) -> Vec<Alert> {
    let mut out = Vec::new();
    if view.coordinator.is_none() {
        out.push(alert(
            "ClaroNoCoordinator",
            true,
            "cluster",
            "no coordinator: jobs are not placed and writes wait".into(),
        ));
    }
    for s in &view.servers {
        out.extend(server_alerts(s, view.commit_index, limits));
    }
    for (name, waited_s) in &facts.hotfolder_waits_s {
        if *waited_s > limits.hotfolder_stalled_s {
            let message = format!(
                "hotfolder {name}: a file has waited {waited_s} s for a server (over {} s): every slot is busy, or the servers are in maintenance or down",
                limits.hotfolder_stalled_s
            );
            out.push(alert("ClaroHotfolderStalled", false, name, message));
        }
    }
    let (failed, ended) = facts.jobs_ended;
    if ended >= JOBS_ENDED_MIN && failed * 100 > ended * limits.jobs_failing_percent {
        let message = format!(
            "{failed} of the {ended} jobs that ended in the last 15 minutes failed (over {} %)",
            limits.jobs_failing_percent
        );
        out.push(alert("ClaroJobsFailing", false, "jobs", message));
    }
    out.sort_by_key(|a| a.severity != "critical");
    out
}

fn server_alerts(
    s: &crate::proto::ServerStatus,
    commit_index: u64,
    limits: &AlertsConf,
) -> Vec<Alert> {
    let mut out = Vec::new();
    if !s.connected {
        let heard = match s.heard_ago_ms {
            Some(ms) => format!("last heard {} s ago", ms / 1000),
            None => "never heard since this instance started".into(),
        };
        out.push(alert(
            "ClaroInstanceDown",
            true,
            &s.name,
            format!("{} is down ({heard})", s.name),
        ));
        return out;
    }
    let behind = commit_index.saturating_sub(s.applied_index);
    if behind > limits.replica_behind_entries {
        let message = format!("{} is {behind} entries behind the commit index", s.name);
        out.push(alert("ClaroReplicaBehind", false, &s.name, message));
    }
    if let Some(free) = s.disk_free_percent {
        if u64::from(free) < limits.disk_free_percent_min {
            let message = format!("{}'s data directory has {free} % free", s.name);
            out.push(alert("ClaroDiskSpaceLow", free < 3, &s.name, message));
        }
    }
    out
}

fn alert(name: &str, critical: bool, subject: &str, message: String) -> Alert {
    Alert {
        name: name.into(),
        severity: if critical { "critical" } else { "warning" }.into(),
        subject: subject.into(),
        message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::ServerStatus;

    fn server(name: &str, connected: bool, applied: u64, free: Option<u8>) -> ServerStatus {
        ServerStatus {
            name: name.into(),
            address: String::new(),
            role: "server".into(),
            state: if connected { "follower" } else { "down" }.into(),
            connected,
            synchronized: connected,
            applied_index: applied,
            note: None,
            heard_ago_ms: Some(if connected { 100 } else { 12_000 }),
            protocol_version: Some(9),
            disk_free_percent: free,
        }
    }

    fn view(servers: Vec<ServerStatus>, coordinator: Option<&str>) -> StatusView {
        StatusView {
            cluster_id: Some("c".into()),
            coordinator: coordinator.map(str::to_string),
            term: 2,
            commit_index: 5_000,
            servers,
            answered_by: "srv1".into(),
            from_coordinator: true,
            protocol_level: 9,
            alerts: Vec::new(),
        }
    }

    fn names(a: &[Alert]) -> Vec<(&str, &str)> {
        a.iter()
            .map(|a| (a.name.as_str(), a.subject.as_str()))
            .collect()
    }

    #[test]
    fn a_healthy_cluster_has_no_alert() {
        let v = view(
            vec![
                server("srv1", true, 5_000, Some(50)),
                server("srv2", true, 4_990, Some(40)),
            ],
            Some("srv1"),
        );
        assert!(evaluate(&v, &Facts::default(), &AlertsConf::default()).is_empty());
    }

    #[test]
    fn each_condition_raises_its_alert_critical_first() {
        let v = view(
            vec![
                server("srv1", true, 5_000, Some(5)),
                server("srv2", true, 3_000, Some(50)),
                server("srv3", false, 0, None),
            ],
            None,
        );
        let facts = Facts {
            hotfolder_waits_s: vec![("prepress".into(), 1_000), ("proofs".into(), 10)],
            jobs_ended: (3, 10),
        };
        let a = evaluate(&v, &facts, &AlertsConf::default());
        assert_eq!(
            names(&a),
            [
                ("ClaroNoCoordinator", "cluster"),
                ("ClaroInstanceDown", "srv3"),
                ("ClaroDiskSpaceLow", "srv1"),
                ("ClaroReplicaBehind", "srv2"),
                ("ClaroHotfolderStalled", "prepress"),
                ("ClaroJobsFailing", "jobs"),
            ]
        );
        assert!(
            a[1].message.contains("srv3 is down (last heard 12 s ago)"),
            "{a:?}"
        );
        assert_eq!(a[2].severity, "warning", "5 % free: low, not critical");
    }

    #[test]
    fn thresholds_are_the_configs_and_a_few_failures_are_no_trend() {
        let v = view(vec![server("srv1", true, 5_000, Some(2))], Some("srv1"));
        let limits = AlertsConf {
            hotfolder_stalled_s: 5,
            jobs_failing_percent: 50,
            ..AlertsConf::default()
        };
        let facts = Facts {
            hotfolder_waits_s: vec![("h".into(), 6)],
            jobs_ended: (3, 3),
        };
        let a = evaluate(&v, &facts, &limits);
        assert_eq!(
            names(&a),
            [
                ("ClaroDiskSpaceLow", "srv1"),
                ("ClaroHotfolderStalled", "h")
            ]
        );
        assert_eq!(a[0].severity, "critical", "under 3 % free");
        let facts = Facts {
            hotfolder_waits_s: vec![],
            jobs_ended: (2, 4),
        };
        assert!(
            names(&evaluate(&v, &facts, &limits))
                .iter()
                .all(|(n, _)| *n != "ClaroJobsFailing"),
            "2 of 4 is not over 50 %"
        );
    }
}
