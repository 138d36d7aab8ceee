//! Human and machine renderings of control answers, for the client and the demo.
//!
//! Owns: the member table's columns and the JSON shapes of `list_mem --json`
//! (`[{"id","addr","generation","incarnation","state"}]`) and `list_self --json`
//! (`{"id","addr","generation","incarnation"}`). `id` is `"addr#generation"`, `state` one of
//! `alive`, `suspect`, `dead`, `left`; and `stats` (a `GROUP  COUNTER  VALUE` table, or
//! `{"GROUP":{"COUNTER":VALUE,...},...}`). Other tools parse these: change them only on purpose.
//! Must never: print (callers decide where text goes) or talk to a node.

use std::fmt::Write as _;

use idunno_core::membership::{Member, NodeId};
use idunno_core::wire::StatsGroup;
use serde_json::{Value, json};

/// The member table: a header line, then one line per member, each ending in a newline.
pub fn members_table(members: &[Member]) -> String {
    let rows: Vec<[String; 5]> = members
        .iter()
        .map(|m| {
            [
                m.id.to_string(),
                m.id.addr.to_string(),
                m.id.generation.to_string(),
                m.incarnation.to_string(),
                m.state.to_string(),
            ]
        })
        .collect();
    let header = ["ID", "ADDR", "GENERATION", "INCARNATION", "STATE"];
    let mut widths = header.map(str::len);
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.len());
        }
    }
    let mut out = String::new();
    let mut line = |cells: [&str; 5]| {
        let mut text = String::new();
        for (i, (cell, width)) in cells.iter().zip(widths).enumerate() {
            if i + 1 == cells.len() {
                text.push_str(cell);
            } else {
                let _ = write!(text, "{cell:<width$}  ");
            }
        }
        out.push_str(&text);
        out.push('\n');
    };
    line(header);
    for row in &rows {
        line(row.each_ref().map(String::as_str));
    }
    out
}

/// One member as JSON.
pub fn member_json(member: &Member) -> Value {
    json!({
        "id": member.id.to_string(),
        "addr": member.id.addr.to_string(),
        "generation": member.id.generation,
        "incarnation": member.incarnation,
        "state": member.state.to_string(),
    })
}

/// The member list as one JSON array.
pub fn members_json(members: &[Member]) -> Value {
    Value::Array(members.iter().map(member_json).collect())
}

/// A node's identity as JSON.
pub fn self_json(id: NodeId, incarnation: u64) -> Value {
    json!({
        "id": id.to_string(),
        "addr": id.addr.to_string(),
        "generation": id.generation,
        "incarnation": incarnation,
    })
}

/// A node's identity as one human-readable line (no newline).
pub fn self_line(id: NodeId, incarnation: u64) -> String {
    format!(
        "id {id}  addr {}  generation {}  incarnation {incarnation}",
        id.addr, id.generation
    )
}

/// `stats`: one line per counter, `GROUP  COUNTER  VALUE`, groups in the node's order.
pub fn stats_table(groups: &[StatsGroup]) -> String {
    let width = groups
        .iter()
        .flat_map(|g| g.counters.iter().map(|(name, _)| name.len()))
        .max()
        .unwrap_or(0);
    let group_width = groups.iter().map(|g| g.name.len()).max().unwrap_or(0);
    let mut out = String::new();
    for group in groups {
        if group.counters.is_empty() {
            let _ = writeln!(out, "{}", group.name);
        }
        for (name, value) in &group.counters {
            let _ = writeln!(out, "{:group_width$}  {name:width$}  {value}", group.name);
        }
    }
    out
}

/// `stats --json`: `{"GROUP": {"COUNTER": VALUE, ...}, ...}`.
pub fn stats_json(groups: &[StatsGroup]) -> Value {
    let mut object = serde_json::Map::new();
    for group in groups {
        let counters: serde_json::Map<String, Value> = group
            .counters
            .iter()
            .map(|(name, value)| (name.clone(), json!(value)))
            .collect();
        object.insert(group.name.clone(), Value::Object(counters));
    }
    Value::Object(object)
}

#[cfg(test)]
mod tests {
    use super::*;
    use idunno_core::membership::MemberState;
    use idunno_core::time::Instant;

    fn member(port: u16, generation: u64, state: MemberState) -> Member {
        Member {
            id: NodeId::new(([127, 0, 0, 2], port).into(), generation),
            incarnation: 4,
            state,
            since: Instant::ZERO,
        }
    }

    #[test]
    fn the_table_has_a_header_and_aligned_rows() {
        let members = [
            member(4000, 17, MemberState::Alive),
            member(40312, 1_764_166_000_123, MemberState::Suspect),
        ];
        let table = members_table(&members);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 3);
        assert!(lines[0].starts_with("ID "));
        assert!(lines[1].starts_with("127.0.0.2:4000#17 "));
        assert!(lines[1].ends_with("alive"));
        assert!(lines[2].ends_with("suspect"));
        let column = |line: &str| line.find("127.0.0.2:4").or_else(|| line.find("ADDR"));
        assert_eq!(
            column(lines[0]),
            lines[1].find("  127.0.0.2:4000 ").map(|i| i + 2)
        );
    }

    #[test]
    fn json_shapes_match_the_documented_contract() {
        let m = member(40312, 1_764_166_000_123, MemberState::Dead);
        let value = members_json(&[m]);
        assert_eq!(
            value,
            json!([{
                "id": "127.0.0.2:40312#1764166000123",
                "addr": "127.0.0.2:40312",
                "generation": 1_764_166_000_123u64,
                "incarnation": 4,
                "state": "dead",
            }])
        );
        let me = self_json(m.id, 2);
        assert_eq!(me["id"], "127.0.0.2:40312#1764166000123");
        assert_eq!(me["addr"], "127.0.0.2:40312");
        assert_eq!(me["generation"], 1_764_166_000_123u64);
        assert_eq!(me["incarnation"], 2);
        assert_eq!(me.as_object().map(|o| o.len()), Some(4));
    }
}
