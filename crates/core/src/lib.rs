//! The session and turn loop: model requests, tool calls, approvals, commits, events
