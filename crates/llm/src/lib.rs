//! Model providers (Anthropic, OpenAI, Ollama): streaming decoders and retry
