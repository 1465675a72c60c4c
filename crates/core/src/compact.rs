use safe_coder_protocol::{ContentBlock, Message};

/// A cheap token estimate (about four bytes a token), used between API usage reports.
pub fn estimate_tokens(system: &str, messages: &[Message]) -> u64 {
    let mut bytes = system.len();
    for m in messages {
        for b in &m.content {
            bytes += match b {
                ContentBlock::Text { text } => text.len(),
                ContentBlock::ToolUse { name, input, .. } => name.len() + input.to_string().len(),
                ContentBlock::ToolResult { content, .. } => content.len(),
            } + 8;
        }
    }
    (bytes as u64).div_ceil(4)
}

/// The instruction sent when the conversation is compacted.
pub const SUMMARY_REQUEST: &str = "The conversation so far is about to be replaced by a summary because the context window is nearly full. \
Write that summary now: the user's goals and requests, what has been done (files created, edited, commands run and their results), \
decisions made, the current state, and what remains to do. Be specific (file names, function names, errors). Do not call tools.";

/// The header of the message that replaces the compacted turns.
pub const SUMMARY_HEADER: &str =
    "[Summary of the earlier conversation, compacted to save context]\n\n";
