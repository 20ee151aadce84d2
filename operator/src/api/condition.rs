//! `metav1.Condition` helpers: set a condition, keeping its transition time
//! while its status does not change.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

/// The condition every dbps resource reports.
pub const READY: &str = "Ready";

/// Sets `type_` in `conditions` to `status`/`reason`/`message`. The
/// transition time moves only when the status changes.
pub fn set_condition(
    conditions: &mut Vec<Condition>,
    type_: &str,
    status: bool,
    reason: &str,
    message: impl Into<String>,
    observed_generation: Option<i64>,
) {
    let status = if status { "True" } else { "False" }.to_string();
    let previous = conditions.iter().position(|c| c.type_ == type_);
    let last_transition_time = match previous.map(|i| &conditions[i]) {
        Some(old) if old.status == status => old.last_transition_time.clone(),
        _ => Time(k8s_openapi::jiff::Timestamp::now()),
    };
    let condition = Condition {
        type_: type_.to_string(),
        status,
        reason: reason.to_string(),
        message: message.into(),
        observed_generation,
        last_transition_time,
    };
    match previous {
        Some(i) => conditions[i] = condition,
        None => conditions.push(condition),
    }
}

/// The condition of `type_`, if set.
pub fn find_condition<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conditions.iter().find(|c| c.type_ == type_)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transition_time_moves_only_with_status() {
        let mut cs = Vec::new();
        set_condition(&mut cs, READY, false, "Provisioning", "starting", Some(1));
        let first = cs[0].last_transition_time.clone();
        std::thread::sleep(std::time::Duration::from_millis(5));
        set_condition(
            &mut cs,
            READY,
            false,
            "ServiceNotFound",
            "no service",
            Some(2),
        );
        assert_eq!(cs.len(), 1);
        assert_eq!(cs[0].last_transition_time, first);
        assert_eq!(cs[0].reason, "ServiceNotFound");
        set_condition(&mut cs, READY, true, "Ready", "ok", Some(2));
        assert_ne!(cs[0].last_transition_time, first);
        assert_eq!(find_condition(&cs, READY).unwrap().status, "True");
    }
}
