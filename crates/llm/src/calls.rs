//! Turning the tool calls assembled from a stream into content blocks, repairing what
//! real servers get wrong: calls without ids, and several calls with one id (LiteLLM's
//! Anthropic endpoint splits one call into one block per token, all with one id). A
//! history with duplicate ids is rejected by the real APIs on the next request.

use std::collections::HashMap;

use safe_coder_protocol::{ContentBlock, StreamEvent, ToolInput};

use crate::transport::OnEvent;

/// One tool call as streamed: its arguments still as text.
#[derive(Debug, Default)]
pub(crate) struct RawCall {
    pub id: String,
    pub name: String,
    pub arguments: String,
}

/// A fresh tool-call id, for servers that send none.
pub(crate) fn new_call_id() -> String {
    format!("call_{:016x}", fastrand::u64(..))
}

/// The calls as `ToolUse` blocks, in order. Calls sharing an id are merged into one
/// call when they are pieces of one (same name, and only their joined arguments form a
/// JSON object); otherwise each gets its own id. Either repair is reported with a
/// [`StreamEvent::Warning`].
pub(crate) fn into_blocks(calls: Vec<RawCall>, on_event: OnEvent<'_>) -> Vec<ContentBlock> {
    // Group by id, in order of first appearance.
    let mut groups: Vec<Vec<RawCall>> = Vec::new();
    let mut by_id: HashMap<String, usize> = HashMap::new();
    for mut call in calls {
        if call.id.is_empty() {
            call.id = new_call_id();
        }
        match by_id.get(&call.id) {
            Some(&g) => groups[g].push(call),
            None => {
                by_id.insert(call.id.clone(), groups.len());
                groups.push(vec![call]);
            }
        }
    }
    let mut taken: std::collections::HashSet<String> = by_id.keys().cloned().collect();
    let mut out = Vec::new();
    for mut group in groups {
        if group.len() == 1 {
            let call = group.remove(0);
            out.push(block(call.id, call.name, &call.arguments));
            continue;
        }
        let n = group.len();
        let id = group[0].id.clone();
        let name = group
            .iter()
            .map(|c| c.name.as_str())
            .find(|n| !n.is_empty())
            .unwrap_or_default()
            .to_string();
        let same_name = group.iter().all(|c| c.name.is_empty() || c.name == name);
        let joined: String = group.iter().map(|c| c.arguments.as_str()).collect();
        let pieces_alone_valid = group
            .iter()
            .all(|c| ToolInput::parse(&c.arguments).as_json().is_some());
        let merged = ToolInput::parse(&joined);
        if same_name && merged.as_json().is_some() && !pieces_alone_valid {
            on_event(StreamEvent::Warning {
                message: format!(
                    "the model server sent {n} tool-call pieces with the id `{id}`; they were joined into one `{name}` call"
                ),
            });
            out.push(ContentBlock::ToolUse {
                id,
                name,
                input: merged,
            });
            continue;
        }
        on_event(StreamEvent::Warning {
            message: format!(
                "the model server sent {n} tool calls with the same id `{id}`; each was given its own id so the conversation stays valid"
            ),
        });
        for (k, call) in group.into_iter().enumerate() {
            let id = if k == 0 {
                call.id
            } else {
                let mut suffix = k + 1;
                let mut fresh = format!("{}_{suffix}", call.id);
                while taken.contains(&fresh) {
                    suffix += 1;
                    fresh = format!("{}_{suffix}", call.id);
                }
                taken.insert(fresh.clone());
                fresh
            };
            out.push(block(id, call.name, &call.arguments));
        }
    }
    out
}

fn block(id: String, name: String, arguments: &str) -> ContentBlock {
    ContentBlock::ToolUse {
        id,
        name,
        input: ToolInput::parse(arguments),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn raw(id: &str, name: &str, arguments: &str) -> RawCall {
        RawCall {
            id: id.into(),
            name: name.into(),
            arguments: arguments.into(),
        }
    }

    fn decode(calls: Vec<RawCall>) -> (Vec<(String, String, ToolInput)>, Vec<StreamEvent>) {
        let mut events = Vec::new();
        let blocks = into_blocks(calls, &mut |e| events.push(e));
        let calls = blocks
            .into_iter()
            .map(|b| match b {
                ContentBlock::ToolUse { id, name, input } => (id, name, input),
                other => panic!("{other:?}"),
            })
            .collect();
        (calls, events)
    }

    #[test]
    fn pieces_of_one_call_are_merged_with_a_warning() {
        let (calls, events) = decode(vec![
            raw("t1", "read_file", "{\"pa"),
            raw("t1", "read_file", "th\": \"a"),
            raw("t1", "", ".txt\"}"),
        ]);
        assert_eq!(calls.len(), 1);
        assert_eq!(calls[0].0, "t1");
        assert_eq!(calls[0].2, ToolInput::Json(json!({"path": "a.txt"})));
        assert!(
            matches!(&events[..], [StreamEvent::Warning { message }] if message.contains("joined"))
        );
    }

    #[test]
    fn distinct_calls_with_one_id_get_unique_ids() {
        let (calls, events) = decode(vec![
            raw("t1", "read_file", "{\"path\":\"a\"}"),
            raw("t1", "bash", "{\"command\":\"ls\"}"),
            raw("t1_2", "bash", "{}"),
            raw("", "bash", "{}"),
        ]);
        let ids: Vec<&str> = calls.iter().map(|c| c.0.as_str()).collect();
        assert_eq!(ids.len(), 4);
        let unique: std::collections::HashSet<&&str> = ids.iter().collect();
        assert_eq!(unique.len(), 4, "{ids:?}");
        assert_eq!(ids[0], "t1");
        assert_eq!(calls[1].1, "bash");
        assert_eq!(events.len(), 1);
    }

    #[test]
    fn unique_ids_pass_untouched() {
        let (calls, events) = decode(vec![raw("a", "x", ""), raw("b", "y", "{\"k\":1}")]);
        assert_eq!(calls[0].2, ToolInput::Json(json!({})));
        assert_eq!(calls[1].0, "b");
        assert!(events.is_empty());
    }
}
