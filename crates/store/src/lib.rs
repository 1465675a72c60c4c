//! SQLite persistence: sessions, messages, statistics (nothing else talks SQL)
