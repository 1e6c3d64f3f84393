//! The value type of the Raft state: routing entries (owned by `proxy`) beside the VIP table and per-member VIP settings.
//!
//! Keys name what a value is: `vip/table` holds the VIP assignment, `vip/member/<id>` a member's
//! VIP settings, every other key a routing [`Entry`]. A routing entry is stored exactly as before
//! VIPs existed (the enum is untagged and the VIP variants have their own tags), so a data
//! directory written by an earlier version reads back unchanged.

use raftgate_proxy::model::Entry;
use raftgate_vip::NodeId;
use raftgate_vip::Preference;
use raftgate_vip::Table;
use serde::Deserialize;
use serde::Serialize;

/// The key of the VIP assignment table.
pub const VIP_TABLE_KEY: &str = "vip/table";
const VIP_MEMBER_PREFIX: &str = "vip/member/";

/// The key of member `id`'s VIP settings.
pub fn vip_member_key(id: NodeId) -> String {
    format!("{VIP_MEMBER_PREFIX}{id}")
}

/// Whether `key` holds VIP state rather than routing.
pub fn is_vip_key(key: &str) -> bool {
    key.starts_with("vip/")
}

/// The member a `vip/member/<id>` key names.
pub fn vip_member_id(key: &str) -> Option<NodeId> {
    key.strip_prefix(VIP_MEMBER_PREFIX)?.parse().ok()
}

/// One value of the replicated state.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Replicated {
    Route(Entry),
    Vip(VipValue),
}

/// VIP state in the replicated store.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VipValue {
    Table(Table),
    Member(MemberRecord),
}

/// A member's VIP settings, as the leader plans with them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberRecord {
    /// From the member's own config; it writes this itself when it starts.
    #[serde(default)]
    pub preference: Preference,
    /// `raftgate ctl drain`: set by the operator, kept across restarts until `undrain`.
    #[serde(default)]
    pub drained: bool,
    /// The member is shutting down and hands its VIPs over first (set by itself on SIGTERM,
    /// cleared when it starts).
    #[serde(default)]
    pub stopping: bool,
}

impl MemberRecord {
    pub fn draining(&self) -> bool {
        self.drained || self.stopping
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routing_entries_keep_their_stored_form_and_vip_values_round_trip() {
        let route = Entry::Sni("cert-1".into());
        let stored = serde_json::to_string(&route).unwrap();
        let read: Replicated = serde_json::from_str(&stored).unwrap();
        assert_eq!(read, Replicated::Route(route));
        assert_eq!(serde_json::to_string(&read).unwrap(), stored);

        let member = Replicated::Vip(VipValue::Member(MemberRecord {
            preference: Preference::Avoid,
            drained: true,
            stopping: false,
        }));
        let text = serde_json::to_string(&member).unwrap();
        assert_eq!(serde_json::from_str::<Replicated>(&text).unwrap(), member);
        let table = Replicated::Vip(VipValue::Table(Table::default()));
        let text = serde_json::to_string(&table).unwrap();
        assert_eq!(serde_json::from_str::<Replicated>(&text).unwrap(), table);
        assert!(serde_json::from_str::<Replicated>(r#"{"nonsense": 1}"#).is_err());
    }

    #[test]
    fn keys() {
        assert!(is_vip_key(VIP_TABLE_KEY));
        assert!(is_vip_key(&vip_member_key(3)));
        assert_eq!(vip_member_id(&vip_member_key(3)), Some(3));
        assert_eq!(vip_member_id(VIP_TABLE_KEY), None);
        assert!(!is_vip_key("vhost/vip.example.com"));
    }
}
